#!/usr/bin/env bash
# A key rotation end to end, on loopback: a repository with a root of trust (an offline root
# key, a release key), a client given root 1 once, then the release key is revoked and replaced
# in root 2, 1.1 is published with the new key, and the client follows with no change to its
# --trust. Usage: Examples/rotate-key.sh [path/to/upgrade]
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

echo "== keys: root (offline), release 1, release 2"
keyid() { "$upgrade" keygen --output "$work/$1.key" | sed -n 's/.*(key id \([0-9a-f]*\)).*/\1/p'; }
keyid root >/dev/null
release1=$(keyid release1)
keyid release2 >/dev/null

echo "== release 1.0 and root 1 (the root key signs roots; release1 signs releases and channels)"
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.0 --key "$work/release1.key" "$here/myapp-1.0" >/dev/null
"$upgrade" root init --repo "$work/repo" --key "$work/root.key" --release-key "$work/release1.key.pub"

"$upgrade" serve --repo "$work/repo" --listen 127.0.0.1:0 --log-level warning > "$work/serve.out" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(awk '/^listening on /{print $3}' "$work/serve.out")
# The client is given root 1 once; it never needs another --trust.
sync() { "$upgrade" sync --server "$url" --product myapp --root "$work/installed" --trust "$work/repo/roots/1.json" "$@"; }

echo "== the client installs 1.0"
sync

echo "== release1 is revoked and release2 takes its place (root 2, signed by the root key)"
"$upgrade" root revoke --repo "$work/repo" --key "$work/root.key" \
    --release-key "$work/release2.key.pub" --channel-key "$work/release2.key.pub" \
    "$release1"

echo "== the revoked key can no longer publish; the new one can"
if "$upgrade" publish --repo "$work/repo" --product myapp --version 1.1 --key "$work/release1.key" "$here/myapp-1.1" 2>&1; then
    echo "unexpected: the revoked key published" >&2
    exit 1
fi
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.1 --key "$work/release2.key" "$here/myapp-1.1" >/dev/null

echo "== the client walks to root 2 and installs 1.1 signed by the new key"
sync
"$work/installed/bin/myapp"
ls "$work/installed/.upgrade/roots"
