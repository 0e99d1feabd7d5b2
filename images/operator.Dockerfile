# The operator image for Docker-based clusters (kind, minikube): the worker image's recipe with
# the `operator` extra (kopf, prometheus-client); entrypoint `python3 -m appliance_operator`.
#   docker build -f images/operator.Dockerfile -t appliance-operator/operator:0.1.0 .

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
      --target /site "/src[operator]" \
 && rm -rf /site/bin

FROM base
COPY --from=build /site /usr/local/lib/python3.11/dist-packages
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      /usr/local/lib/python3.11/dist-packages
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/appliance
ENTRYPOINT ["python3", "-m", "appliance_operator"]
