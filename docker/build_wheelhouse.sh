#!/usr/bin/env bash
# Wheels of engram-memory and everything it needs (torch's CPU wheel included) into docker/wheelhouse,
# so images build with no network: the Dockerfiles install from it with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip wheel --quiet --wheel-dir docker/wheelhouse ".[worker]"
ls docker/wheelhouse | sed 's/^/  /'
