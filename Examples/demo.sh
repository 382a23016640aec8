#!/usr/bin/env bash
# The main job end to end on the embedded example: a publisher key, release 1.0 of
# Examples/myapp published into a local repository, `upgrade serve` on a free loopback port, a
# tree synced to 1.0, release 1.1 published, the tree synced from 1.0 to 1.1, a summary, and the
# server stopped.
set -euo pipefail
upgrade=${1:-upgrade}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== publisher key and release 1.0"
"$upgrade" keygen --output "$work/publisher.key" >/dev/null
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.0 --key "$work/publisher.key" "$here/myapp-1.0"

echo "== upgrade serve on a free loopback port"
"$upgrade" serve --repo "$work/repo" --listen 127.0.0.1:0 --log-level warning > "$work/serve.out" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(awk '/^listening on /{print $3}' "$work/serve.out")
echo "serving $url"

sync() { "$upgrade" sync --server "$url" --product myapp --root "$work/installed" --trust "$work/publisher.key.pub" "$@"; }

echo "== first install: sync an empty root"
sync
"$work/installed/bin/myapp"

echo "== publish 1.1 (with a health check) and sync again"
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.1 --key "$work/publisher.key" \
    --health-check bin/myapp "$here/myapp-1.1"
sync --dry-run
sync
"$work/installed/bin/myapp"

echo "== a second sync has nothing to do and prints nothing"
sync
"$upgrade" status --root "$work/installed" | grep -E '^(installed|last success):'
echo "== the fleet view (the server's store, $work/repo-fleet.sqlite)"
"$upgrade" fleet --server "$url"
echo "== server metrics"
curl -s "$url/metrics" 2>/dev/null | grep -E '^upgrade_(plans|sync_reports)_total' || true
