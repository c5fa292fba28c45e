#!/usr/bin/env bash
# Smoke test of the docker-compose stack on a machine with no image registry and no outside network
# for the containers: everything runs on the host's loopback (docker-compose.host.yml).
#   1. a Docker engine (Debian's docker.io installed and dockerd started if none answers);
#   2. a local base image: debootstrap Debian bookworm with Python 3.11, `docker import`ed;
#   3. a wheelhouse of engram-memory and its dependencies (docker/build_wheelhouse.sh);
#   4. build, `up --scale worker=2` (the loader loads through AdminService with the admin token), wait
#      for the memory service's gRPC health check; a call without the admin token writes nothing;
#   5. a worker reports rounds with rows served by the service and its hit rate;
#   6. kill the memory-service container: the workers log a clear error; start it: they recover;
#   7. tear everything down (containers, network, volume).
# Needs root (debootstrap, dockerd). Prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=engram-smoke SMOKE_NAME=smoke
source docker/smoke_setup.sh  # started, BASE_TAG, log(); engine, base image, wheelhouse

docker/make_secrets.sh >/dev/null  # the read and admin tokens, compose secrets
export ENGRAM_BASE_IMAGE=$BASE_TAG ENGRAM_TARGET=127.0.0.1:${ENGRAM_PORT:-50051} ENGRAM_ROUNDS=0
compose=("${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker-compose.host.yml)
cleanup() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; stop_engine; }
trap cleanup EXIT
log "up, 2 workers"
"${compose[@]}" up -d --no-build --scale worker=2 >/tmp/engram-smoke-up.log 2>&1 || {
  tail -30 /tmp/engram-smoke-up.log
  for s in loader memory; do echo "--- $s"; "${compose[@]}" logs --tail 20 "$s"; done
  exit 1; }

memory=$("${compose[@]}" ps -q memory)
wait_healthy() {
  for _ in $(seq 180); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$memory")" = healthy ] && return 0
    sleep 1
  done
  echo "the memory service never became healthy"; docker logs "$memory" | tail -20; return 1
}
wait_healthy
log "memory service healthy"
# closed by default: without a token nothing reads, with the read token nothing writes
python3 - "$ENGRAM_TARGET" "$(cat docker/secrets/read_token)" <<'PY'
import subprocess, sys
target, token = sys.argv[1:]
def call(method, metadata):
    args = ["docker", "run", "--rm", "--network", "host", "--entrypoint", "/opt/engram/bin/python",
            "engram-memory/service:" + __import__("os").environ.get("ENGRAM_TAG", "dev"), "-c",
            "import grpc, sys; from protos import pb2\n"
            f"ch = grpc.insecure_channel({target!r})\n"
            "try:\n"
            f"    ch.unary_unary({method!r})(pb2.DropVersionRequest(table='layer1', version=1, force=True).SerializeToString() if 'Drop' in {method!r} else b'', timeout=10, metadata={metadata!r})\n"
            "    print('OK')\n"
            "except grpc.RpcError as e:\n"
            "    print(e.code().name)"]
    return subprocess.run(args, capture_output=True, text=True).stdout.strip()
checks = {"ListTables without a token": call("/engram_memory.v1.MemoryService/ListTables", None),
          "DropVersion with the read token": call("/engram_memory.v1.AdminService/DropVersion", [("authorization", "Bearer " + token)]),
          "ListTables with the read token": call("/engram_memory.v1.MemoryService/ListTables", [("authorization", "Bearer " + token)])}
print("  " + "; ".join(f"{k}: {v}" for k, v in checks.items()))
assert list(checks.values()) == ["UNAUTHENTICATED", "PERMISSION_DENIED", "OK"], checks
PY

workers=$("${compose[@]}" ps -q worker)
wait_rounds 0
w1=$(echo "$workers" | head -1)
report=$(docker logs "$w1" | grep '"msg": "round"' | tail -1)
log "worker report: $report"
python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["rows_from_service"] > 0 or r["rows_served_total"] > 0, r
assert 0 <= r["device_hit_rate"] <= 1, r
PY

log "killing the memory service"
errors_of() { docker logs "$1" 2>&1 | grep -c '"level": "ERROR"' || true; }
errors_before=$(errors_of "$w1")  # e.g. from waiting for the loader's second table at start
docker kill "$memory" >/dev/null
for _ in $(seq 60); do
  [ "$(errors_of "$w1")" -gt "$errors_before" ] && break; sleep 1
done
docker logs "$w1" 2>&1 | grep '"level": "ERROR"' | tail -1 | sed 's/^/  worker: /'
[ "$(errors_of "$w1")" -gt "$errors_before" ] || { echo "workers reported no error"; exit 1; }
before=$(rounds_of "$w1")
log "starting it again"
docker start "$memory" >/dev/null
wait_healthy
wait_rounds "$before"
log "workers recovered: $(rounds_of "$w1") rounds on worker 1"
log "PASS in $(($(date +%s) - started)) s"
