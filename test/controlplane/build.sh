#!/usr/bin/env bash
# Builds the real control-plane binaries the tests and the demo run, from the Go module proxy,
# into a cache outside the repository: etcd, kube-apiserver and Knative's ApiServerSource
# receive adapter; and Istio's capture code as a test oracle. A binary is rebuilt only when its wrapper module (go.mod/go.sum) changes.
#
#   PNC_CACHE_DIR   cache directory (default: ~/.cache/pnc-controlplane)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${PNC_CACHE_DIR:-$HOME/.cache/pnc-controlplane}"
mkdir -p "$cache/bin"

# name, wrapper module directory, package
components=(
  "etcd etcd go.etcd.io/etcd/server/v3"
  "kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver"
  "apiserver_receive_adapter knative knative.dev/eventing/cmd/apiserver_receive_adapter"
  "kustomize kustomize sigs.k8s.io/kustomize/kustomize/v5"
)

for entry in "${components[@]}"; do
  read -r name dir pkg <<<"$entry"
  stamp="$(cat "$here/$dir/go.mod" "$here/$dir/go.sum" | sha256sum | cut -c1-16)"
  out="$cache/bin/$name"
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "controlplane: $name is up to date ($out)"
    continue
  fi
  echo "controlplane: building $name from $pkg (measured on 2 cores: etcd 1.5 min, kube-apiserver 8 min, adapter 2.5 min)"
  start=$(date +%s)
  # Progress: one dot every 15 s while the compiler runs.
  ( while sleep 15; do printf '.'; done ) & ticker=$!
  if ! (cd "$here/$dir" && go build -trimpath -o "$out.tmp" "$pkg"); then
    kill "$ticker" 2>/dev/null || true
    echo
    echo "controlplane: building $name failed" >&2
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  mv "$out.tmp" "$out"
  echo "$stamp" >"$out.stamp"
  echo
  echo "controlplane: built $name in $(( $(date +%s) - start )) s"
done
# Istio's own traffic-capture code (istio-cni's sidecar path, istio-iptables, istio-nftables) as a
# JSON-lines oracle for the differential tests (test/parity). One file is added to Istio's
# cni/pkg/plugin package with `go build -overlay`; the overlay needs a vendored copy, since
# files in the module cache cannot be replaced, and Istio's own files stay untouched.
oracle_dir="$here/../istio-oracle"
oracle_stamp="$(cat "$oracle_dir/go.mod" "$oracle_dir/go.sum" "$oracle_dir/main.go" "$oracle_dir/_overlay/"*.go | sha256sum | cut -c1-16)"
oracle_out="$cache/bin/istio-oracle"
if [ -x "$oracle_out" ] && [ "$(cat "$oracle_out.stamp" 2>/dev/null)" = "$oracle_stamp" ]; then
  echo "controlplane: istio-oracle is up to date ($oracle_out)"
else
  echo "controlplane: building istio-oracle from istio.io/istio (measured on 2 cores: about 4.5 min)"
  start=$(date +%s)
  src="$cache/src/istio-oracle"
  rm -rf "$src" && mkdir -p "$src"
  cp "$oracle_dir/go.mod" "$oracle_dir/go.sum" "$oracle_dir/main.go" "$src/"
  (cd "$src" && go mod vendor)
  overlay='{"Replace":{'
  sep=''
  for f in "$oracle_dir/_overlay/"*.go; do
    overlay+="$sep\"$src/vendor/istio.io/istio/cni/pkg/plugin/$(basename "$f")\":\"$f\""
    sep=','
  done
  echo "$overlay}}" >"$src/overlay.json"
  ( while sleep 15; do printf '.'; done ) & ticker=$!
  if ! (cd "$src" && go build -mod=vendor -trimpath -overlay overlay.json -o "$oracle_out.tmp" .); then
    kill "$ticker" 2>/dev/null || true
    echo "controlplane: building istio-oracle failed" >&2
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  rm -rf "$src/vendor"
  mv "$oracle_out.tmp" "$oracle_out"
  echo "$oracle_stamp" >"$oracle_out.stamp"
  echo
  echo "controlplane: built istio-oracle in $(( $(date +%s) - start )) s"
fi

# A command-line tool installed straight from its module at a version (go install), stamped
# with that version, into the cache: name, version, package, -ldflags, expected build time.
install_tool() {
  local name="$1" version="$2" package="$3" ldflags="$4" expected="$5"
  local out="$cache/bin/$name"
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$version" ]; then
    echo "controlplane: $name is up to date ($out)"
    return
  fi
  echo "controlplane: building $name $version (measured on 2 cores: $expected)"
  local start ticker
  start=$(date +%s)
  ( while sleep 15; do printf '.'; done ) & ticker=$!
  if ! GOBIN="$cache/bin" go install -trimpath -ldflags "$ldflags" "$package@$version"; then
    kill "$ticker" 2>/dev/null || true
    echo "controlplane: building $name failed" >&2
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  echo "$version" >"$out.stamp"
  echo
  echo "controlplane: built $name in $(( $(date +%s) - start )) s"
}

# istioctl from the same Istio version: its offline `manifest generate` renders Istio's own
# injector configuration and `kube-inject` runs Istio's real injector (template merge and
# reordering) for the injection-template tests (test/istio).
istio_version="$(awk '($1=="require" && $2=="istio.io/istio") {print $3} ($1=="istio.io/istio") {print $2}' "$oracle_dir/go.mod" | head -1)"
install_tool istioctl "$istio_version" istio.io/istio/istioctl/cmd/istioctl \
  "-X istio.io/istio/pkg/version.buildVersion=$istio_version" "about 2 min with the oracle's modules downloaded"

# helm, for the chart tests (charts/podnet) and Istio's own istiod chart with this project's values.
helm_version=v3.22.0
install_tool helm "$helm_version" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$helm_version" "about 2 min"

# Knative's CRDs, from the same module versions, so that this repository's manifests can be
# applied to the local API server for real.
eventing_version="$(awk '$1=="require" && $2=="knative.dev/eventing" {print $3}' "$here/knative/go.mod")"
serving_version="${PNC_KNATIVE_SERVING_VERSION:-$eventing_version}"
mkdir -p "$cache/crds"
if [ "$(cat "$cache/crds/.versions" 2>/dev/null)" != "$eventing_version $serving_version" ]; then
  echo "controlplane: fetching Knative CRDs (eventing $eventing_version, serving $serving_version)"
  eventing_dir="$(cd "$here/knative" && go mod download -json "knative.dev/eventing@$eventing_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  serving_dir="$(cd "$here/knative" && go mod download -json "knative.dev/serving@$serving_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  rm -f "$cache/crds/"*.yaml
  for crd in apiserversource pingsource broker trigger; do
    cp "$eventing_dir/config/core/resources/$crd.yaml" "$cache/crds/eventing-$crd.yaml"
  done
  for crd in service configuration revision route; do
    cp "$serving_dir/config/core/300-resources/$crd.yaml" "$cache/crds/serving-$crd.yaml"
  done
  chmod u+w "$cache/crds/"*.yaml
  echo "$eventing_version $serving_version" >"$cache/crds/.versions"
fi

du -sh "$cache" | awk '{print "controlplane: cache size " $1 " (" $2 ")"}'
