#!/usr/bin/env bash
# Smoke test of docker-compose.sharded.yml (2 shards x 2 replicas, host network, offline):
#   1. engine, base image and wheelhouse as in smoke_test.sh (docker/smoke_setup.sh);
#   2. build, `up --scale worker=2`, wait for the 4 replicas' gRPC health checks;
#   3. the workers report rounds through ClusterClient;
#   4. kill one replica of shard 0: the workers keep reporting rounds, with no error (failover);
#   5. kill both replicas of shard 1: the workers log a clear error; start one: they recover;
#   6. tear everything down (containers, volumes).
# Needs root (dockerd). Prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=engram-sharded SMOKE_NAME=sharded
source docker/smoke_setup.sh  # started, BASE_TAG, log(); engine, base image, wheelhouse

export ENGRAM_BASE_IMAGE=$BASE_TAG ENGRAM_ROUNDS=0
compose=("${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.sharded.yml)
cleanup() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; stop_engine; }
trap cleanup EXIT
log "up: 4 loaders, 4 replicas, 2 workers"
"${compose[@]}" up -d --no-build --scale worker=2 >/tmp/engram-sharded-up.log 2>&1 || { tail -30 /tmp/engram-sharded-up.log; exit 1; }

container() { "${compose[@]}" ps -q "$1"; }
wait_healthy() {
  for _ in $(seq 240); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$(container "$1")")" = healthy ] && return 0
    sleep 1
  done
  echo "$1 never became healthy"; docker logs "$(container "$1")" | tail -20; return 1
}
for replica in memory-0a memory-0b memory-1a memory-1b; do wait_healthy "$replica"; done
log "4 replicas healthy"

workers=$("${compose[@]}" ps -q worker)
errors_of() { docker logs "$1" 2>&1 | grep -c '"level": "ERROR"' || true; }
ROUNDS_WAIT_S=240
wait_rounds 0
w1=$(echo "$workers" | head -1)
log "worker report: $(docker logs "$w1" | grep '"msg": "round"' | tail -1)"

log "killing one replica of shard 0 (memory-0a)"
errors=$(errors_of "$w1"); before=$(rounds_of "$w1")
docker kill "$(container memory-0a)" >/dev/null
wait_rounds $((before + 2))
[ "$(errors_of "$w1")" = "$errors" ] || { echo "a worker logged an error although shard 0 had a replica"; exit 1; }
log "workers carried on through the failover: $(rounds_of "$w1") rounds, no error"

log "killing both replicas of shard 1"
docker kill "$(container memory-1a)" "$(container memory-1b)" >/dev/null
for _ in $(seq 90); do [ "$(errors_of "$w1")" -gt "$errors" ] && break; sleep 1; done
[ "$(errors_of "$w1")" -gt "$errors" ] || { echo "workers reported no error with shard 1 down"; exit 1; }
docker logs "$w1" 2>&1 | grep '"level": "ERROR"' | tail -1 | cut -c1-300 | sed 's/^/  worker: /'
before=$(rounds_of "$w1")
log "starting memory-1a again"
docker start "$(container memory-1a)" >/dev/null
wait_healthy memory-1a
wait_rounds "$before"
log "workers recovered: $(rounds_of "$w1") rounds on worker 1"
log "PASS in $(($(date +%s) - started)) s"
