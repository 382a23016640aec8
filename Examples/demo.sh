#!/usr/bin/env bash
# The main job on the embedded example, as far as it exists today: a publisher key, two signed
# releases of Examples/myapp published into a local repository and verified, release 1.0
# installed into a fresh root, then upgraded to 1.1 from an offline bundle as one transaction.
# (Serving over HTTP and `upgrade sync` replace the bundle step when they land.)
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
"$upgrade" verify-repo --repo "$work/repo" --trust "$work/publisher.key.pub"

echo "== install 1.0 into an empty root"
"$upgrade" bundle --repo "$work/repo" --product myapp --to 1.0 --output "$work/myapp-1.0.bundle"
"$upgrade" apply --root "$work/root" --trust "$work/publisher.key.pub" "$work/myapp-1.0.bundle"
"$work/root/bin/myapp"

echo "== upgrade 1.0 -> 1.1 from an offline bundle"
"$upgrade" bundle --repo "$work/repo" --product myapp --from 1.0 --to 1.1 --output "$work/myapp-1.1.bundle"
"$upgrade" apply --root "$work/root" --trust "$work/publisher.key.pub" "$work/myapp-1.1.bundle"
"$work/root/bin/myapp"
"$upgrade" status --root "$work/root" | grep -E '^(product|version|sequence|rollbackAvailable):'
"$upgrade" verify --root "$work/root" && echo "tree matches the installed release"
