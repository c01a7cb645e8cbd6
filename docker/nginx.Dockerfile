# The load balancer of the docker-compose stack: Debian's nginx-light on the local base
# image (nothing is pulled). The balancer configuration is compose/nginx-loadbalancer.conf,
# rendered from templates/nginx-loadbalancer.conf.j2 like the Ansible role's, mounted
# into conf.d/ (Debian's nginx.conf includes it from its http block).
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
# For orchestrators whose replicas change address (Docker Swarm, Kubernetes): run
# `nginx-upstream-sync` instead of nginx; it runs nginx and keeps its upstreams equal to
# the ready replicas (docker/nginx_upstream_sync.py). Compose keeps plain nginx.
COPY nginx_upstream_sync.py /usr/local/bin/nginx-upstream-sync
EXPOSE 8080
STOPSIGNAL SIGQUIT
LABEL org.opencontainers.image.title="reflow-microsandbox compose nginx"
CMD ["nginx", "-g", "daemon off;"]
