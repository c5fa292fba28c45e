#!/usr/bin/env bash
# Build both images from the wheelhouse (docker/build_wheelhouse.sh first), with the names
# docker-compose uses: engram-memory/service:$ENGRAM_TAG and engram-memory/worker:$ENGRAM_TAG.
# Each image's `deps` stage is tagged too (engram-memory/<name>-deps:$ENGRAM_TAG), so the next build
# after a new project wheel reuses it (torch is not reinstalled); images left untagged by a rebuild
# are removed. Offline: ENGRAM_BASE_IMAGE=engram-base:bookworm (the smoke test builds that base).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${ENGRAM_TAG:-dev} base=${ENGRAM_BASE_IMAGE:-python:3.11-slim-bookworm}
[ -n "$(ls docker/wheelhouse/project/*.whl 2>/dev/null)" ] || { echo "no wheelhouse: run docker/build_wheelhouse.sh first"; exit 1; }
for name in service worker; do
  args=(--build-arg "BASE=$base" --build-arg "TORCH_INDEX=${ENGRAM_TORCH_INDEX:-}" -f "docker/$name.Dockerfile")
  docker build -q "${args[@]}" --target deps -t "engram-memory/$name-deps:$tag" . >/dev/null
  docker build -q "${args[@]}" -t "engram-memory/$name:$tag" . >/dev/null
  echo "built engram-memory/$name:$tag ($(docker image inspect --format '{{.Size}}' "engram-memory/$name:$tag") bytes)"
done
# what a rebuild left without a tag: earlier builds of these images and their stages
docker image prune -f --filter label=engram-memory.stage=deps >/dev/null
docker image prune -f --filter label=engram-memory.image >/dev/null
