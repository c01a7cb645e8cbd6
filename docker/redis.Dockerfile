# Redis for the docker-compose stack, from Debian's redis-server on the local base image
# (nothing is pulled). The configuration is compose/redis.conf, rendered from
# templates/redis.conf.j2 like the Ansible role's; the password comes from the
# environment at start (REDIS_PASSWORD), never from a file in the repository.
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o redis -g redis -m 0750 /data
USER redis
WORKDIR /data
EXPOSE 6379
LABEL org.opencontainers.image.title="reflow-microsandbox compose redis"
CMD ["sh", "-c", "exec redis-server /etc/redis/microsandbox.conf --requirepass \"$REDIS_PASSWORD\""]
