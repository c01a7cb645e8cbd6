# Prometheus for the docker-compose stack: Debian's prometheus on the local base image
# (nothing is pulled). The configuration is compose/prometheus.yml, rendered from
# templates/prometheus.yml.j2 like the Ansible role's, with a DNS service discovery job
# that finds every replica of the microsandbox service.
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o prometheus -g prometheus -m 0750 /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
LABEL org.opencontainers.image.title="reflow-microsandbox compose prometheus"
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090"]
