# Shared by the smoke tests (sourced): a Docker engine, the local base image, and a wheelhouse with
# the current checkout's engram-memory wheel (rebuilt every run: a stale wheel means stale images).
# Expects SMOKE_NAME (the log prefix) from the caller; defines started, BASE_TAG, log(), COMPOSE,
# rounds_of and wait_rounds.
started=$(date +%s)
BASE_TAG=${ENGRAM_BASE_IMAGE:-engram-base:bookworm}
log() { echo "[$SMOKE_NAME $(($(date +%s) - started))s] $*"; }
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { log "installing docker.io"; apt-get install -y -q docker.io >/dev/null; }
  log "starting dockerd"
  (dockerd >/tmp/engram-smoke-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else
  command -v docker-compose >/dev/null || apt-get install -y -q docker-compose >/dev/null
  COMPOSE=(docker-compose)
fi

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
  rootfs=$(mktemp -d /tmp/engram-rootfs.XXXX)
  log "debootstrap bookworm into $rootfs (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    http://deb.debian.org/debian >/tmp/engram-smoke-debootstrap.log
  tar -C "$rootfs" -c . | docker import - "$BASE_TAG" >/dev/null
  rm -rf "$rootfs"
fi
log "base image $BASE_TAG: $(docker image inspect --format '{{.Size}}' "$BASE_TAG") bytes"

if [ -z "$(ls docker/wheelhouse 2>/dev/null)" ]; then
  log "building the wheelhouse"
  docker/build_wheelhouse.sh >/tmp/engram-smoke-wheels.log 2>&1 || { tail -20 /tmp/engram-smoke-wheels.log; exit 1; }
else
  log "refreshing engram-memory's own wheel"
  rm -f docker/wheelhouse/engram_memory-*.whl
  python3 -m pip wheel --quiet --no-deps --wheel-dir docker/wheelhouse . >/tmp/engram-smoke-wheels.log 2>&1 \
    || { tail -20 /tmp/engram-smoke-wheels.log; exit 1; }
fi


# Worker progress, for the callers' checks: $workers (container ids) is read when they run.
rounds_of() { docker logs "$1" 2>/dev/null | grep -c '"msg": "round"' || true; }
wait_rounds() {  # every worker reports more than $1 rounds, within ROUNDS_WAIT_S seconds
  for _ in $(seq "${ROUNDS_WAIT_S:-180}"); do
    ok=1; for w in $workers; do [ "$(rounds_of "$w")" -gt "$1" ] || ok=0; done
    [ $ok = 1 ] && return 0; sleep 1
  done
  echo "workers did not report rounds"; for w in $workers; do docker logs "$w" | tail -5; done; return 1
}
