# The control-plane image for the docker-compose stack: reflow-microsandbox installed in a
# virtualenv, with bubblewrap, libseccomp and Node.js so it runs sandboxes in-container.
#
# Build context: the repository root. The project and its dependencies come as wheels from
# build/wheelhouse (scripts/build-control-plane-image.sh fills it with the host's pip, so
# the build needs no registry and no PyPI); with an empty wheelhouse pip installs from
# the source tree and PyPI instead, for machines that can reach it.
#
# Sandboxes: docker-compose.yml runs this image with the Docker backend through the
# engine's socket. The image also carries bubblewrap for `docker run` with the bubblewrap
# backend, which needs `--security-opt seccomp=unconfined --security-opt
# systempaths=unconfined` (no added capability) and root in the container (each sandbox
# runs as a uid of its own). docs/deploy.md weighs the two.
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The bracket makes the wheelhouse optional: the wheels (if any) land in /src beside
# pyproject.toml, which always matches.
COPY build/wheelhous[e] pyproject.toml README.md /src/
COPY control /src/control
RUN python3 -m venv /opt/microsandbox \
 && if ls /src/reflow_microsandbox-*.whl >/dev/null 2>&1; then \
      /opt/microsandbox/bin/pip install --no-cache-dir --no-index --find-links /src \
        reflow-microsandbox; \
    else \
      /opt/microsandbox/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/microsandbox/bin/reflow-microsandbox --help >/dev/null

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap libseccomp2 nodejs ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -m 0750 /var/lib/microsandbox
COPY --from=build /opt/microsandbox /opt/microsandbox

ENV PATH=/opt/microsandbox/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
# Root in the container, with what compose grants (cap_drop: ALL for the Docker backend):
# the bubblewrap backend switches each sandbox to a host uid of its own.
WORKDIR /var/lib/microsandbox
EXPOSE 5555 5556 9090
# The start period only forgives failures (a passing check reports healthy at once): it
# is long enough for a first start on a busy machine, which compose's depends_on waits for.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:5555/health', timeout=2)"]
LABEL org.opencontainers.image.title="reflow-microsandbox control plane"
ENTRYPOINT ["reflow-microsandbox"]
CMD ["serve", "--config", "/etc/microsandbox/microsandbox.yaml"]
