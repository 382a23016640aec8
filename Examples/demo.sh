#!/usr/bin/env bash
# The main job on the embedded example, as far as it exists today: a publisher key, two signed
# releases of Examples/myapp published into a local repository, the repository verified, and
# the ordered plan that upgrades an installed 1.0 tree to 1.1. (Serving and syncing join as
# they land.)
set -euo pipefail
upgrade=${1:-upgrade}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== publisher key"
"$upgrade" keygen --output "$work/publisher.key"

echo "== publish myapp 1.0 and 1.1"
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.0 --key "$work/publisher.key" "$here/myapp-1.0"
"$upgrade" publish --repo "$work/repo" --product myapp --version 1.1 --key "$work/publisher.key" \
    --health-check bin/myapp "$here/myapp-1.1"
"$upgrade" releases --repo "$work/repo"

echo "== verify the repository against the public key"
"$upgrade" verify-repo --repo "$work/repo" --trust "$work/publisher.key.pub"

echo "== an installed 1.0 tree, and the plan from it to the published 1.1"
cp -a "$here/myapp-1.0" "$work/installed"
"$upgrade" diff "$work/installed" "$work/repo/releases/myapp/1.1/manifest" --no-stat-cache --summary
