# syntax=docker/dockerfile:1
# etcd-config-sidecar image: a virtualenv with the runtime dependencies and the package, on a slim
# Python base, running as a numeric non-root user. Build: docker build -t etcd-config-sidecar:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: resolve and install everything into /opt/venv --------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A venv without pip or setuptools: the final image gets only what the program imports. The
# base image's pip installs into it from outside (pip --python).
RUN python -m venv --without-pip /opt/venv

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes, not on
# every source edit. [project].dependencies plus the `kubernetes` extra (Kubernetes Events and
# `fleet`, imported only when used); no test tools.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["kubernetes"]))' > /tmp/requirements.txt \
    && pip --python /opt/venv/bin/python install --no-compile -r /tmp/requirements.txt

# The package itself, without touching the dependencies installed above. Then byte-compile
# everything once: the root filesystem is read-only at run time, so Python could not write its
# caches there and every start would compile again.
COPY README.md LICENSE ./
COPY sidecar/ ./sidecar/
RUN pip --python /opt/venv/bin/python install --no-compile --no-deps . \
    && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib \
    && /opt/venv/bin/etcd-config-sidecar --help > /dev/null

# --- runtime: the venv on a clean base; no compilers, no pip installs --------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="etcd-config-sidecar" \
      org.opencontainers.image.description="Mirrors etcd v3 keys into a config file on a shared volume" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/venv /opt/venv

# Numeric, so kubelet can verify runAsNonRoot without reading /etc/passwd. The process writes only
# to the output directory (a mounted volume), so readOnlyRootFilesystem works.
USER 65532:65532
WORKDIR /

# /health, /ready, /metrics, /v1/*. Probes are Kubernetes' job, hence no HEALTHCHECK.
EXPOSE 9180

ENTRYPOINT ["etcd-config-sidecar"]
CMD ["run"]
