# One Prometheus exporter from Debian for the docker-compose stack, on the local base image
# (nothing is pulled): EXPORTER_PACKAGE is prometheus-redis-exporter,
# prometheus-nginx-exporter or prometheus-node-exporter, the same packages the Ansible
# roles install on hosts. The entrypoint is the exporter itself; docker-compose.yml gives
# each its flags.
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm
FROM ${BASE_IMAGE}
ARG EXPORTER_PACKAGE
RUN test -n "${EXPORTER_PACKAGE}" \
 && apt-get update \
 && apt-get install -y --no-install-recommends "${EXPORTER_PACKAGE}" \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && ln -s "/usr/bin/${EXPORTER_PACKAGE}" /usr/local/bin/exporter \
 && /usr/local/bin/exporter --help >/dev/null 2>&1
# The packages create the unprivileged "prometheus" user their systemd units run as.
USER prometheus
LABEL org.opencontainers.image.title="reflow-microsandbox compose exporter"
ENTRYPOINT ["/usr/local/bin/exporter"]
