# Shared by the smoke tests (sourced): a Docker engine, the local base image, and a wheelhouse with
# the current checkout's engram-memory wheel (rebuilt every run: a stale wheel means stale images).
# Expects SMOKE_NAME (the log prefix) from the caller; defines started, BASE_TAG, log(), COMPOSE,
# rounds_of and wait_rounds.
started=$(date +%s)
BASE_TAG=${ENGRAM_BASE_IMAGE:-engram-base:bookworm}
log() { echo "[$SMOKE_NAME $(($(date +%s) - started))s] $*"; }
apt_install() {  # Debian packages, with the package lists refreshed once
  [ -n "${apt_updated:-}" ] || { apt-get update -q >/dev/null; apt_updated=1; }
  apt-get install -y -q "$@" >/dev/null
}
started_dockerd=""
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { log "installing docker.io"; apt_install docker.io; }
  log "starting dockerd (stopped again at the end)"
  dockerd >/tmp/engram-smoke-dockerd.log 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
stop_engine() {  # the callers' exit trap: a dockerd this script started does not outlive it
  [ -z "$started_dockerd" ] || { kill "$started_dockerd" 2>/dev/null; wait "$started_dockerd" 2>/dev/null || true; }
}
# compose v2 is `docker compose`; Debian bookworm's docker.io ships v1, `docker-compose`
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else
  command -v docker-compose >/dev/null || apt_install docker-compose
  COMPOSE=(docker-compose)
fi
log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || apt_install debootstrap
  rootfs=$(mktemp -d /tmp/engram-rootfs.XXXX)
  log "debootstrap bookworm into $rootfs (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    http://deb.debian.org/debian >/tmp/engram-smoke-debootstrap.log
  tar -C "$rootfs" -c . | docker import - "$BASE_TAG" >/dev/null
  rm -rf "$rootfs"
fi
log "base image $BASE_TAG: $(docker image inspect --format '{{.Size}}' "$BASE_TAG") bytes"

if [ -f docker/wheelhouse/deps/worker.txt ] && cmp -s <(python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["worker"]))') docker/wheelhouse/deps/worker.txt; then
  log "refreshing engram-memory's own wheel (the dependency wheels are current)"
  docker/build_wheelhouse.sh --project >/tmp/engram-smoke-wheels.log 2>&1 || { tail -20 /tmp/engram-smoke-wheels.log; exit 1; }
else
  log "building the wheelhouse"
  docker/build_wheelhouse.sh >/tmp/engram-smoke-wheels.log 2>&1 || { tail -20 /tmp/engram-smoke-wheels.log; exit 1; }
fi
log "building the images (docker/build_images.sh)"
ENGRAM_BASE_IMAGE=$BASE_TAG docker/build_images.sh >/tmp/engram-smoke-build.log 2>&1 || { tail -30 /tmp/engram-smoke-build.log; exit 1; }


# Worker progress, for the callers' checks: $workers (container ids) is read when they run.
rounds_of() { docker logs "$1" 2>/dev/null | grep -c '"msg": "round"' || true; }
wait_rounds() {  # every worker reports more than $1 rounds, within ROUNDS_WAIT_S seconds
  for _ in $(seq "${ROUNDS_WAIT_S:-180}"); do
    ok=1; for w in $workers; do [ "$(rounds_of "$w")" -gt "$1" ] || ok=0; done
    [ $ok = 1 ] && return 0; sleep 1
  done
  echo "workers did not report rounds"; for w in $workers; do docker logs "$w" | tail -5; done; return 1
}
