#!/usr/bin/env bash
# A deployment step that upgrades one host and acts on the result: reads `upgrade sync --json`
# (one upgrade-output/1 document, also on failure; docs/format.md) and the documented exit code.
#   usage: deploy.sh CONFIG.toml [SERVICE]
set -uo pipefail
config=${1:?usage: deploy.sh CONFIG.toml [SERVICE]}
service=${2:-}

report=$(upgrade sync --config "$config" --json)
status=$?
case $status in
    0) ;;
    8) echo "health check failed; the host was rolled back to its previous release" >&2; exit 1 ;;
    10) echo "update server unreachable; try again later" >&2; exit 1 ;;
    11) echo "the server has no such product or channel; check $config" >&2; exit 1 ;;
    75) echo "another upgrade is running on this host" >&2; exit 1 ;;
    *)
        why=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["error"]["message"])' <<<"$report" 2>/dev/null)
        echo "upgrade failed with exit code $status: ${why:-see above}" >&2
        exit 1
        ;;
esac

result=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["result"])' <<<"$report")
version=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("toVersion") or "")' <<<"$report")
bytes=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytesDownloaded"])' <<<"$report")
if [[ $result == "installed" ]]; then
    echo "upgraded to $version ($bytes bytes downloaded)"
    [[ -n $service ]] && systemctl restart "$service"
else
    echo "already at $version"
fi
