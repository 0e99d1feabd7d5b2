# The user image: what a user pod (a notebook, a training script) needs to submit jobs with the
# Python client from inside the cluster: python3 and the cerebras_appliance package with its
# dependencies (pydantic, kubernetes, tqdm; kubernetes is a core dependency, not an extra).
# The same layers as images/worker.Dockerfile up to the last stage (Docker's cache shares
# them); it differs in its entrypoint: plain python3, not the worker's.
#   docker build -f images/user.Dockerfile -t appliance-operator/user:0.1.0 .
# (build context: the repository root; images/user.Dockerfile.dockerignore trims it)
# Run it under a service account bound to the Role of examples/user-rbac.yaml, with
# APPLIANCE_BACKEND / APPLIANCE_NAMESPACE / APPLIANCE_WORKER_IMAGE in its env (README, "From a
# notebook or a pod"); its own code goes in a layer FROM this image, or a mounted volume.

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
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      /usr/local/lib/python3.11/dist-packages
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/appliance
CMD ["python3"]
