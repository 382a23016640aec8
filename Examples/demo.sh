#!/usr/bin/env bash
# The main job on the embedded example: scan the two example releases of myapp and show the
# ordered plan that upgrades 1.0 to 1.1. (Publishing, serving and syncing join as they land.)
set -euo pipefail
upgrade=${1:-upgrade}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== manifest of myapp 1.0"
"$upgrade" manifest "$here/myapp-1.0" --no-stat-cache --output "$work/myapp-1.0.manifest"
"$upgrade" manifest "$work/myapp-1.0.manifest" --json | grep -E '"(digest|files|bytes)"'

echo "== plan from 1.0 to 1.1"
"$upgrade" diff "$work/myapp-1.0.manifest" "$here/myapp-1.1" --no-stat-cache --summary
