#!/usr/bin/env bash
# Three machines on one host, multicast pinned to 127.0.0.1 (never a real interface):
# a server with releases 1.0 and 2.0, peer A at 2.0 running `upgrade share`, client B at 1.0
# syncing with --peers auto. Then the server stops and client C (at 1.0) upgrades from A alone
# with --offline. Prints where B's and C's bytes came from.
#   Examples/peers.sh [UPGRADE_BINARY] [TREE_1.0 TREE_2.0]   (default: Examples/myapp-1.0/1.1)
set -euo pipefail
upgrade=${1:-upgrade}
here=$(cd "$(dirname "$0")" && pwd)
v1=${2:-$here/myapp-1.0}
v2=${3:-$here/myapp-1.1}
work=$(mktemp -d)
group=239.255.77.77:$((20000 + RANDOM % 40000))
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

started() { # FILE: waits for "listening on URL" and prints the URL
    for _ in $(seq 200); do grep -q '^listening on ' "$1" 2>/dev/null && break; sleep 0.05; done
    awk '/^listening on /{print $3}' "$1"
}
report() { # JSON FILE, LABEL
    python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
peers = r["bytesFromPeers"]; payload = r["bytesDownloaded"]
print(f"{sys.argv[2]}: {r['fromVersion']} -> {r['toVersion']}: payload {payload:,} bytes: "
      f"{peers:,} from peers, {payload - peers:,} from the server; {r['bytesReceived']:,} bytes received in all")
PY
}

"$upgrade" keygen --output "$work/k" >/dev/null
"$upgrade" publish --repo "$work/repo" --product demo --version 1.0 --key "$work/k" "$v1" >/dev/null
"$upgrade" publish --repo "$work/repo" --product demo --version 2.0 --key "$work/k" "$v2" >/dev/null
"$upgrade" bundle --repo "$work/repo" --product demo --to 1.0 --output "$work/1.0.bundle" >/dev/null
"$upgrade" serve --repo "$work/repo" --listen 127.0.0.1:0 --log-level error >"$work/serve.out" &
server=$!
pids+=("$server")
url=$(started "$work/serve.out")
trust=(--product demo --trust "$work/k.pub")
peerflags=(--peers auto --announce "$group" --interface 127.0.0.1 --peer-wait 1)

"$upgrade" sync --server "$url" "${trust[@]}" --root "$work/a"
"$upgrade" share --root "$work/a" --listen 127.0.0.1:0 --announce "$group" --interface 127.0.0.1 \
    --interval 1 --log-level warning >"$work/share.out" &
pids+=("$!")
echo "peer A at 2.0 shares on $(started "$work/share.out")"

"$upgrade" apply --root "$work/b" --trust "$work/k.pub" "$work/1.0.bundle" >/dev/null
"$upgrade" sync --server "$url" "${trust[@]}" --root "$work/b" "${peerflags[@]}" --json >"$work/b.json"
report "$work/b.json" "B (server and peer A)"

kill "$server"
"$upgrade" apply --root "$work/c" --trust "$work/k.pub" "$work/1.0.bundle" >/dev/null
"$upgrade" sync "${trust[@]}" --root "$work/c" "${peerflags[@]}" --offline --json >"$work/c.json"
report "$work/c.json" "C (server stopped, --offline)"
"$upgrade" verify --root "$work/b" && "$upgrade" verify --root "$work/c" && echo "B and C verify clean at 2.0"
