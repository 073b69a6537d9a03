#!/usr/bin/env bash
# Build the image and check it serves: /healthz turns healthy, a chat completion answers, the
# process runs as a non-root user. Needs a Docker daemon (none on the CI VMs: it says so and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker info >/dev/null 2>&1; then
  echo "docker_smoke: no Docker daemon here; nothing built" >&2
  exit 0
fi
docker build -t kakeya:smoke .
id=$(docker run -d -p 127.0.0.1:18000:8000 kakeya:smoke)
trap 'docker rm -f "$id" >/dev/null' EXIT
for _ in $(seq 60); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && break
  sleep 2
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
[ "$(docker exec "$id" id -u)" != 0 ]
curl -sf 127.0.0.1:18000/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}' | grep -q Paris
echo "docker_smoke: ok"
