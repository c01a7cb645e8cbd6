# The Node.js sandbox runner image: node and the runner (plain Node, no npm packages).
#
# Build context: control/runners (only the runner file is copied), e.g.
#   docker build -f docker/node-runner.Dockerfile \
#     --build-arg BASE_IMAGE=reflow-microsandbox/debian-base:bookworm \
#     -t reflow-microsandbox/node-runner:latest control/runners
# scripts/build-images.sh does exactly this (cached). BASE_IMAGE defaults to the official
# image (Node 20) for machines that can pull; on the local debootstrap base
# (scripts/build-base-image.sh) Node comes from Debian's nodejs package (Node 18 in
# bookworm), which the runner supports.
#
# The control plane runs one container per sandbox from this image with the same
# restrictions as the Python image (see python-runner.Dockerfile and
# control/sandbox/docker_backend.py).
ARG BASE_IMAGE=node:20-bookworm-slim
FROM ${BASE_IMAGE}

# The official image has node already; a bare Debian base gets Debian's nodejs (no npm).
RUN if ! command -v node >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends nodejs \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && groupadd --gid 10001 runner \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin runner

COPY node_runner.js /opt/reflow/node_runner.js

ENV HOME=/tmp LANG=C.UTF-8 NODE_ENV=production
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title="reflow-microsandbox node runner" \
      org.opencontainers.image.description="Runs one JavaScript Reflow actor per container"
CMD ["node", "/opt/reflow/node_runner.js"]
