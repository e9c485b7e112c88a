# PostgreSQL for the fleet's Docker test, from Debian's packages on the same base image as
# tidegate's (built locally by scripts/docker-base when no registry answers).
FROM debian:bookworm-slim
RUN echo 'deb http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# Trust on the test network only: the container lives on a network the test creates.
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
      'mkdir -p /tmp/pg && chown postgres /tmp/pg' \
      'runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D /tmp/pg/data -U tidegate -A trust >/dev/null' \
      'echo "host all all 0.0.0.0/0 trust" >> /tmp/pg/data/pg_hba.conf' \
      'exec runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres -D /tmp/pg/data -c listen_addresses=* -c fsync=off' \
      > /usr/local/bin/pg-start && chmod +x /usr/local/bin/pg-start
EXPOSE 5432
CMD ["/usr/local/bin/pg-start"]
