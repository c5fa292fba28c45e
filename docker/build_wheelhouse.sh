#!/usr/bin/env bash
# Wheels of engram-memory and everything it needs (torch's CPU wheel included), so images build
# with no network (the Dockerfiles install from them with --no-index):
#   docker/wheelhouse/deps/     every dependency, with service.txt and worker.txt listing what each
#                               image installs (rebuilt only when pyproject.toml's dependencies change)
#   docker/wheelhouse/project/  engram-memory's own wheel (`--project`: only this, in seconds)
# The images install deps/ in one layer and project/ in the next, so a new project wheel reuses
# the (torch-sized) dependency layer.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=docker/wheelhouse/deps project=docker/wheelhouse/project
mkdir -p "$deps" "$project"
rm -f "$project"/*.whl
if [ "${1:-}" != "--project" ]; then
  python3 -m pip wheel --quiet --wheel-dir "$deps" ".[worker]"
  python3 - "$deps" <<'PY'
import sys, tomllib
deps = sys.argv[1]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
service = project["dependencies"]
worker = service + project["optional-dependencies"]["worker"]
open(f"{deps}/service.txt", "w").write("\n".join(service) + "\n")
open(f"{deps}/worker.txt", "w").write("\n".join(worker) + "\n")
PY
fi
mv "$deps"/engram_memory-*.whl "$project"/ 2>/dev/null || \
  python3 -m pip wheel --quiet --no-deps --wheel-dir "$project" .
ls "$deps" "$project" | sed 's/^/  /'
