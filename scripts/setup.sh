#!/usr/bin/env bash
# Everything this project needs on a fresh machine, once: the Debian packages the test pods and
# the node-runner use, the local control plane and Istio tools built from the Go module proxy
# (cached in ~/.cache/pnc-controlplane), and the npm packages. `npm run demo` and `.ci/run` both
# start here.
#
#   scripts/setup.sh          install what is missing (npm ci only when node_modules is stale)
#   scripts/setup.sh --ci     the same, always with a clean `npm ci`
set -euo pipefail
cd "$(dirname "$0")/.."

# containerd, runc, buildah and mmdebstrap: the real test node (test/controlplane/node.ts) and its images.
packages=(iproute2 iptables nftables util-linux openssl containerd runc buildah mmdebstrap)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  elif command -v dpkg >/dev/null; then
    echo "setup: missing Debian packages; run this once, then again:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo "== control plane and Istio tools (built from the Go module proxy, cached)"
test/controlplane/build.sh
if [ "$(id -u)" = 0 ]; then
  echo "== images for the test node (built locally, cached)"
  test/controlplane/images.sh
fi

if [ "${1:-}" = "--ci" ] || [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm packages"
  npm ci --no-audit --no-fund
fi
