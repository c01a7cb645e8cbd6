# The Python sandbox runner image: python3 (stdlib only) and the runner, nothing else.
#
# Build context: control/runners (only the runner file is copied), e.g.
#   docker build -f docker/python-runner.Dockerfile \
#     --build-arg BASE_IMAGE=reflow-microsandbox/debian-base:bookworm \
#     -t reflow-microsandbox/python-runner:latest control/runners
# scripts/build-images.sh does exactly this (cached). BASE_IMAGE defaults to the official
# image for machines that can pull; machines that cannot use the local debootstrap base
# (scripts/build-base-image.sh). Any Debian-like base with python3 >= 3.11 works.
#
# The control plane runs one container per sandbox from this image with no network, a
# read-only root, a size-capped tmpfs /tmp, all capabilities dropped, no-new-privileges,
# the engine's default seccomp profile, pids/memory/CPU limits, and as the unprivileged
# user below (control/sandbox/docker_backend.py). The runner speaks length-prefixed JSON
# frames over the container's stdin/stdout and exits when its stdin closes.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The official image has python3 already; a bare Debian base gets Debian's.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && groupadd --gid 10001 runner \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin runner

COPY python_runner.py /opt/reflow/python_runner.py

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp LANG=C.UTF-8
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title="reflow-microsandbox python runner" \
      org.opencontainers.image.description="Runs one Python Reflow actor per container"
CMD ["python3", "-I", "/opt/reflow/python_runner.py"]
