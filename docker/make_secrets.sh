#!/usr/bin/env bash
# The memory service's two tokens for docker-compose, as compose secrets: docker/secrets/read_token
# (workers read with it) and docker/secrets/admin_token (only the loader writes with it). Run once;
# existing tokens are kept. The folder is private to this user (0700) and ignored by git; the files
# are world-readable inside it because compose bind-mounts them for the containers' own user.
set -euo pipefail
dir=${ENGRAM_SECRETS_DIR:-"$(dirname "$0")/secrets"}
mkdir -p "$dir" && chmod 700 "$dir"
for name in read_token admin_token; do
  if [ ! -s "$dir/$name" ]; then
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$dir/$name"
    chmod 644 "$dir/$name"
    echo "made $dir/$name"
  fi
done
