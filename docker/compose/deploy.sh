#!/usr/bin/env sh
# Deploy the compose example to POOL (blue or green): shift all traffic there, drain the
# other pool, stop its container once idle. Runs tidegate's CLI inside the tidegate
# container, so nothing but Docker is needed on the host.
#   docker/compose/deploy.sh green        docker/compose/deploy.sh blue
set -eu
to=${1:?usage: deploy.sh blue|green}
case "$to" in blue) old=green ;; green) old=blue ;; *) echo "blue or green" >&2; exit 2 ;; esac
dir=$(dirname "$0")/..
if docker compose version >/dev/null 2>&1; then dc="docker compose"; else dc=docker-compose; fi
compose="$dc -p ${COMPOSE_PROJECT_NAME:-tidegate-demo} -f $dir/compose.yaml"
$compose start "app-$to"
$compose exec -T tidegate tidegate deploy app --to "$to" --health-timeout 60s --drain-timeout 5m
$compose stop "app-$old"
