# The worker image (kind, minikube, any cluster): Debian bookworm + python3 + this repository's
# packages and their runtime deps, uid 65532, byte-compiled. hack/kind/images.sh builds it.
#   docker build -f images/worker.Dockerfile -t appliance-operator/worker:0.1.0 .
# (build context: the repository root; images/worker.Dockerfile.dockerignore trims it)

FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 appliance \
 && useradd --uid 65532 --gid 65532 --home-dir /home/appliance --create-home \
      --shell /usr/sbin/nologin appliance

FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY client /src/client
COPY operator /src/operator
RUN python3 -m pip install --no-cache-dir --no-compile --break-system-packages \
      --target /site /src \
 && rm -rf /site/bin

FROM base
COPY --from=build /site /usr/local/lib/python3.11/dist-packages
# Byte-compiled once here: workers run as non-root on a read-only site-packages, so Python
# could never cache bytecode at start-up.
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      /usr/local/lib/python3.11/dist-packages
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/appliance
ENTRYPOINT ["python3", "-m", "cerebras_appliance.worker"]
