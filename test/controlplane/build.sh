#!/usr/bin/env bash
# Builds the upstream tools the tests and the demo run, from the Go module proxy, into a cache
# outside the repository: etcd, kube-apiserver, one Knative release (Eventing and Serving, with
# its config), kustomize, Prometheus' promtool and kwok (from the wrapper modules in this folder), Traefik as Serving's
# ingress, Istio's capture code as the parity oracle, istioctl, istiod (pilot-discovery) with
# Istio's base and istiod charts, and helm; for the real nodes: kubelet, kube-proxy,
# kube-controller-manager, kube-scheduler, the CNI plugins, a pause program and CoreDNS. A tool is rebuilt only when its module (or version) changes.
#
#   PNC_CACHE_DIR   cache directory (default: ~/.cache/pnc-controlplane)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${PNC_CACHE_DIR:-$HOME/.cache/pnc-controlplane}"
mkdir -p "$cache/bin"

# build_tool <name> <stamp> <expected time> <command...>: rebuild $cache/bin/<name> unless its
# stamp matches; the command writes the binary to the path in $BUILD_OUT. Prints progress (a dot
# every 15 s) and the time the build took.
build_tool() {
  local name="$1" stamp="$2" expected="$3"
  shift 3
  local out="$cache/bin/$name"
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "controlplane: $name is up to date ($out)"
    return
  fi
  echo "controlplane: building $name (measured on 2 cores: $expected)"
  local start ticker
  start=$(date +%s)
  ( while sleep 15; do printf '.'; done ) & ticker=$!
  if ! BUILD_OUT="$out.tmp" "$@"; then
    kill "$ticker" 2>/dev/null || true
    echo
    echo "controlplane: building $name failed" >&2
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  rm -rf "$out" # a directory (the Istio testdata) is replaced, not moved into
  mv "$out.tmp" "$out"
  echo "$stamp" >"$out.stamp"
  echo
  echo "controlplane: built $name in $(( $(date +%s) - start )) s"
}

# A package of a wrapper module in this folder (its go.mod pins the versions), stamped with the
# module's requirements and the build's flags.
build_wrapped() { # <wrapper dir> <package> [go build flags...]
  local dir="$1" package="$2"
  shift 2
  (cd "$here/$dir" && go build -trimpath "$@" -o "$BUILD_OUT" "$package")
}
wrapped() { # <name> <wrapper dir> <package> <expected time> [go build flags...]
  local name="$1" dir="$2" package="$3" expected="$4"
  shift 4
  build_tool "$name" "$(cat "$here/$dir/go.mod" "$here/$dir/go.sum" | sha256sum | cut -c1-16)$*" "$expected" build_wrapped "$dir" "$package" "$@"
}
wrapped etcd etcd go.etcd.io/etcd/server/v3 "1.5 min"
# kube-apiserver, stamped with its Kubernetes version (unstamped it reports v0.0.0-master, which
# kubectl version cannot parse).
apiserver_version="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3} $1=="k8s.io/kubernetes" {print $2}' "$here/kube-apiserver/go.mod" | head -1)"
apiserver_minor="$(echo "$apiserver_version" | cut -d. -f2)"
build_apiserver() {
  (cd "$here/kube-apiserver" && go build -trimpath -ldflags "-X k8s.io/component-base/version.gitVersion=$apiserver_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$apiserver_minor -X k8s.io/component-base/version.gitTreeState=clean" -o "$BUILD_OUT" k8s.io/kubernetes/cmd/kube-apiserver)
}
build_tool kube-apiserver "$(cat "$here/kube-apiserver/go.mod" "$here/kube-apiserver/go.sum" | sha256sum | cut -c1-16)-$apiserver_version" "7-8 min" build_apiserver
# One Knative release's commands (test/controlplane/knative pins Eventing and Serving at the same
# knative.dev/pkg), static as ko builds them, for images.sh: <cache>/bin/knative/{eventing,serving}/<command>.
# The control-plane tests run the same ApiServerSource adapter binary on the host.
build_knative() {
  local eventing=(controller webhook mtping apiserver_receive_adapter broker/ingress broker/filter mtchannel_broker in_memory/channel_controller in_memory/channel_dispatcher)
  local serving=(controller webhook autoscaler activator queue)
  mkdir -p "$BUILD_OUT/eventing" "$BUILD_OUT/serving"
  (cd "$here/knative" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BUILD_OUT/eventing/" "${eventing[@]/#/knative.dev/eventing/cmd/}") || return 1
  (cd "$here/knative" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BUILD_OUT/serving/" "${serving[@]/#/knative.dev/serving/cmd/}")
}
build_tool knative "$(cat "$here/knative/go.mod" "$here/knative/go.sum" | sha256sum | cut -c1-16)" "about 4 min" build_knative
# That release's own configuration (the config/ YAML its release files are made from, images still
# ko:// references), with Knative Networking's and Caching's at the versions Serving pins (the
# release links them into Serving's config/, and module zips drop links):
# <cache>/bin/knative-config/{eventing,serving,networking,caching}/.
copy_knative_config() {
  local module dir
  for module in eventing serving networking caching; do
    dir="$(cd "$here/knative" && go list -m -f '{{.Dir}}' "knative.dev/$module")" || return 1
    mkdir -p "$BUILD_OUT/$module" && cp -r "$dir/config/." "$BUILD_OUT/$module/" || return 1
    # Eventing's release adds these ConfigMaps (the images of its integrations) to config/core.
    if [ "$module" = eventing ]; then cp "$dir/third_party/eventing-integrations-latest/"*.yaml "$BUILD_OUT/eventing/core/configmaps/"; fi
  done
  chmod -R u+w "$BUILD_OUT"
}
build_tool knative-config "$(cat "$here/knative/go.mod" "$here/knative/go.sum" | sha256sum | cut -c1-16)-2" "seconds" copy_knative_config
# Traefik, the ingress Knative Serving routes through on the test cluster: Go, so it runs here
# (Knative's usual ingresses are Envoy, which cannot be had), with its Knative provider (a real
# KIngress implementation). Built as its own main module (its go.mod's replace directives apply
# only there) from a writable copy of the module, with the stand-ins of test/controlplane/traefik
# for three modules the proxy here does not serve (its README says which and why).
traefik_version=v3.7.13
traefik_dir="$here/traefik"
build_traefik() {
  local mod lego src="$cache/src/traefik"
  mod="$(go mod download -json "github.com/traefik/traefik/v3@$traefik_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')" || return 1
  rm -rf "$src" && mkdir -p "$(dirname "$src")" && cp -r "$mod" "$src" && chmod -R u+w "$src" || return 1
  lego="$(awk '$1=="github.com/go-acme/lego/v5" {print $2}' "$src/go.mod" | head -1)"
  (cd "$src" && go mod download -json "github.com/go-acme/lego/v5@$lego" "github.com/abbot/go-http-auth@v0.4.0" >/dev/null) || return 1
  cp -r "$(go env GOMODCACHE)/github.com/go-acme/lego/v5@$lego" "$src/_lego"
  cp -r "$(go env GOMODCACHE)/github.com/abbot/go-http-auth@v0.4.0" "$src/_go-http-auth"
  chmod -R u+w "$src/_lego" "$src/_go-http-auth"
  rm -f "$src/_lego/providers/dns/"*_test.go
  cp "$traefik_dir/lego-dns/"*.go "$src/_lego/providers/dns/"
  cp "$traefik_dir/go-http-auth/"* "$src/_go-http-auth/"
  mkdir -p "$src/pkg/config/dynamic/ext" && cp "$traefik_dir/ext/"* "$src/pkg/config/dynamic/ext/"
  (cd "$src" && go mod edit -replace github.com/go-acme/lego/v5=./_lego -replace github.com/abbot/go-http-auth=./_go-http-auth &&
    CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$traefik_version" -o "$BUILD_OUT" ./cmd/traefik) || return 1
  rm -rf "$src"
}
build_tool traefik "$traefik_version-$(cat "$traefik_dir"/*/* | sha256sum | cut -c1-16)" "about 5 min" build_traefik
wrapped kustomize kustomize sigs.k8s.io/kustomize/kustomize/v5 "under a minute"
# Prometheus' promtool: checks and unit-tests the alerting rules, lints the metrics pages. Static as
# Prometheus' release builds it, and without the service-discovery plugins (Prometheus' own
# remove_all_sd build tag: cloud SDKs nothing here uses; measured alone, cold: 176 s with it, 407
# without).
CGO_ENABLED=0 wrapped promtool prometheus github.com/prometheus/prometheus/cmd/promtool "2.5 min" -tags remove_all_sd
# kwok: the kubelets of a simulated 1,000-node cluster, for npm run bench:scale.
wrapped kwok kwok sigs.k8s.io/kwok/cmd/kwok "about 1 min"

# Istio, one version (the oracle's go.mod pins it): every command static, as Istio's release builds
# them (CGO_ENABLED=0), so that they share one build cache: pilot-discovery compiles the shared
# packages, the others mostly link (measured: istioctl 136 s alone, 58 s after it; the oracle 183
# s alone, 7 s after it).
oracle_dir="$here/../istio-oracle"
istio_version="$(awk '($1=="require" && $2=="istio.io/istio") {print $3} ($1=="istio.io/istio") {print $2}' "$oracle_dir/go.mod" | head -1)"

# A command-line tool installed straight from its module at a version, stamped with it.
install_module() { # <binary name> <package@version> <ldflags>
  local bin
  bin="$(mktemp -d)"
  GOBIN="$bin" go install -trimpath -ldflags "$3" "$2" && mv "$bin/$1" "$BUILD_OUT" && rmdir "$bin"
}
install_static() { CGO_ENABLED=0 install_module "$@"; }

# istiod (pilot-discovery): packed into a local image by images.sh and installed in the test
# cluster by Istio's own istiod chart (from the same module), so that its injection webhook injects
# labelled namespaces and it publishes istio-ca-root-cert, as in production.
build_tool pilot-discovery "$istio_version" "about 4.5 min" \
  install_static pilot-discovery "istio.io/istio/pilot/cmd/pilot-discovery@$istio_version" "-s -w -X istio.io/istio/pkg/version.buildVersion=$istio_version"
# Istio's own two ways of setting up interception, for the comparison with this project on the same
# nodes (issue 32, bench:node): pilot-agent (its `istio-iptables` is what the istio-init container
# runs) and istio-cni's CNI plugin and node agent.
for istio_cmd in pilot/cmd/pilot-agent cni/cmd/istio-cni cni/cmd/install-cni; do
  build_tool "$(basename "$istio_cmd")" "$istio_version" "15 s with pilot-discovery's build cache" \
    install_static "$(basename "$istio_cmd")" "istio.io/istio/$istio_cmd@$istio_version" "-s -w -X istio.io/istio/pkg/version.buildVersion=$istio_version"
done
# istioctl: its offline `manifest generate` renders Istio's own injector configuration and
# `kube-inject` runs Istio's real injector (template merge and reordering) for the
# injection-template tests (test/istio).
build_tool istioctl "$istio_version static" "about 1 min with pilot-discovery's build cache" \
  install_static istioctl "istio.io/istio/istioctl/cmd/istioctl@$istio_version" "-X istio.io/istio/pkg/version.buildVersion=$istio_version"

# Istio's own traffic-capture code (istio-cni's sidecar path, istio-iptables, istio-nftables) as a
# JSON-lines oracle for the differential tests (test/parity). One file is added to Istio's
# cni/pkg/plugin package with `go build -overlay`; the overlay needs a vendored copy, since
# files in the module cache cannot be replaced, and Istio's own files stay untouched. (With
# -trimpath a vendored package has the same build-cache key as the module's: only the overlaid
# package and main are compiled here.)
build_oracle() {
  local src="$cache/src/istio-oracle" overlay='{"Replace":{' sep=''
  rm -rf "$src" && mkdir -p "$src"
  cp "$oracle_dir/go.mod" "$oracle_dir/go.sum" "$oracle_dir/main.go" "$src/"
  (cd "$src" && go mod vendor) || return 1
  for f in "$oracle_dir/_overlay/"*.go; do
    overlay+="$sep\"$src/vendor/istio.io/istio/cni/pkg/plugin/$(basename "$f")\":\"$f\""
    sep=','
  done
  echo "$overlay}}" >"$src/overlay.json"
  (cd "$src" && CGO_ENABLED=0 go build -mod=vendor -trimpath -overlay overlay.json -o "$BUILD_OUT" .) || return 1
  rm -rf "$src/vendor"
}
build_tool istio-oracle "static-$(cat "$oracle_dir/go.mod" "$oracle_dir/go.sum" "$oracle_dir/main.go" "$oracle_dir/_overlay/"*.go | sha256sum | cut -c1-16)" \
  "seconds with pilot-discovery's build cache" build_oracle
# Istio's own base (CRDs), istiod and istio-cni charts, from the same module:
# <cache>/bin/istio-charts/{base,istio-discovery,istio-cni}.
copy_istio_charts() {
  local mod
  mod="$(cd "$oracle_dir" && go mod download istio.io/istio && go list -m -f '{{.Dir}}' istio.io/istio)" || return 1
  mkdir -p "$BUILD_OUT" && cp -r "$mod/manifests/charts/base" "$mod/manifests/charts/istio-control/istio-discovery" "$mod/manifests/charts/istio-cni" "$BUILD_OUT/" &&
    chmod -R u+w "$BUILD_OUT"
}
build_tool istio-charts "$istio_version base istio-discovery istio-cni" "seconds" copy_istio_charts

# Istio's own conformance data for test/conformance and the parity test's harness check, from the
# same istio.io/istio module as the oracle: the goldens of istio-iptables, istio-nftables and
# istio-cni's plugin, and the inputs of the first two, exported from Istio's own test table
# (getCommonTestCases) by one added test run in a writable copy of the module (files in the
# module cache cannot be added to, and `go mod vendor` leaves tests out). A directory:
# <cache>/bin/istio-testdata/{capture,nft,cni}/.
build_istio_testdata() {
  local mod src="$cache/src/istio-testdata" suite dir
  mod="$(cd "$oracle_dir" && go mod download istio.io/istio && go list -m -f '{{.Dir}}' istio.io/istio)" || return 1
  rm -rf "$src" && mkdir -p "$(dirname "$src")" && cp -r "$mod" "$src" && chmod -R u+w "$src" || return 1
  mkdir -p "$BUILD_OUT/capture" "$BUILD_OUT/nft" "$BUILD_OUT/cni"
  for suite in capture:tools/istio-iptables/pkg/capture nft:tools/istio-nftables/pkg/capture; do
    dir="${suite#*:}"
    suite="${suite%%:*}"
    cp "$oracle_dir/_cases/zz_podnet_cases_test.go" "$src/$dir/"
    (cd "$src" && PODNET_CASES_OUT="$BUILD_OUT/$suite/cases.json" go test -count=1 -run TestPodnetExportCases "./$dir") || return 1
    cp "$src/$dir/testdata/"*.golden "$BUILD_OUT/$suite/"
  done
  cp "$src/cni/pkg/plugin/testdata/"*.golden "$BUILD_OUT/cni/"
  cp "$src/LICENSE" "$BUILD_OUT/"
  rm -rf "$src"
}
build_tool istio-testdata "$istio_version $(sha256sum <"$oracle_dir/_cases/zz_podnet_cases_test.go" | cut -c1-16)" "about 30 s with the oracle's modules downloaded" \
  build_istio_testdata

# helm, for the chart tests (charts/podnet) and Istio's own istiod chart with this project's values.
helm_version=v3.22.0
build_tool helm "$helm_version" "about 2 min" \
  install_module helm "helm.sh/helm/v3/cmd/helm@$helm_version" "-X helm.sh/helm/v3/internal/version.version=$helm_version"

# The node side of the test cluster (test/controlplane/node.ts): kubelet, and the two controllers
# a real node needs (DaemonSets, ServiceAccount tokens' CA ConfigMap, scheduling), from the same
# Kubernetes version as kube-apiserver, stamped with it (else they report v0.0.0-master).
k8s_version="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/node/go.mod")"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"
build_k8s() { # <package>
  (cd "$here/node" && go build -trimpath -ldflags "$k8s_ldflags" -o "$BUILD_OUT" "$1")
}
k8s_stamp="$(cat "$here/node/go.mod" "$here/node/go.sum" | sha256sum | cut -c1-16)-$k8s_version"
build_tool kubelet "$k8s_stamp" "about 2 min" build_k8s k8s.io/kubernetes/cmd/kubelet
build_tool kube-controller-manager "$k8s_stamp" "about 2 min" build_k8s k8s.io/kubernetes/cmd/kube-controller-manager
build_tool kube-scheduler "$k8s_stamp" "about 1 min" build_k8s k8s.io/kubernetes/cmd/kube-scheduler
# kube-proxy (nftables mode) in every node's network namespace: ClusterIP Services on the cluster.
build_tool kube-proxy "$k8s_stamp" "about 1 min" build_k8s k8s.io/kubernetes/cmd/kube-proxy
# kubectl, to look at the cluster started by `npm run cluster:up` (and the tests' kubectl checks).
build_tool kubectl "$k8s_stamp" "about 1 min" build_k8s k8s.io/kubernetes/cmd/kubectl

# The CNI plugins the test node's pods use (a bridge with host-local addresses, and loopback).
cni_version=v1.9.1
mkdir -p "$cache/bin/cni"
for plugin in main/bridge main/loopback ipam/host-local; do
  build_tool "cni/$(basename "$plugin")" "$cni_version" "under a minute" \
    install_module "$(basename "$plugin")" "github.com/containernetworking/plugins/plugins/$plugin@$cni_version" "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version"
done

# CoreDNS, the test cluster's DNS (test/controlplane/cluster.ts): static, packed into a local
# image by test/controlplane/images.sh and run as a Deployment with a ClusterIP Service.
# Only the plugins its Corefile names (test/controlplane/coredns/main.go).
build_coredns() {
  (cd "$here/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BUILD_OUT" .)
}
build_tool coredns "$(cat "$here/coredns/go.mod" "$here/coredns/go.sum" "$here/coredns/main.go" | sha256sum | cut -c1-16)" "about 1.5 min" build_coredns

# The sandbox process of the test node's pods (test/controlplane/pause): static, packed into a
# local image by test/controlplane/images.sh.
build_pause() {
  (cd "$here/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BUILD_OUT" .)
}
build_tool pause "$(cat "$here/pause/go.mod" "$here/pause/main.go" | sha256sum | cut -c1-16)" "seconds" build_pause

# Knative's CRDs, from the same module versions, so that this repository's manifests can be
# applied to the local API server for real.
knative_module() { # <module>: its version in the Knative wrapper's go.mod
  awk -v m="$1" '($1=="require" && $2==m) {print $3} ($1==m) {print $2}' "$here/knative/go.mod" | head -1
}
eventing_version="$(knative_module knative.dev/eventing)"
serving_version="$(knative_module knative.dev/serving)"
mkdir -p "$cache/crds"
if [ "$(cat "$cache/crds/.versions" 2>/dev/null)" != "$eventing_version $serving_version" ]; then
  echo "controlplane: fetching Knative CRDs (eventing $eventing_version, serving $serving_version)"
  eventing_dir="$(cd "$here/knative" && go mod download -json "knative.dev/eventing@$eventing_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  serving_dir="$(cd "$here/knative" && go mod download -json "knative.dev/serving@$serving_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  rm -f "$cache/crds/"eventing-*.yaml "$cache/crds/"serving-*.yaml
  for crd in apiserversource pingsource broker trigger; do
    cp "$eventing_dir/config/core/resources/$crd.yaml" "$cache/crds/eventing-$crd.yaml"
  done
  for crd in service configuration revision route; do
    cp "$serving_dir/config/core/300-resources/$crd.yaml" "$cache/crds/serving-$crd.yaml"
  done
  chmod u+w "$cache/crds/"*.yaml
  echo "$eventing_version $serving_version" >"$cache/crds/.versions"
fi
# prometheus-operator's PodMonitor and PrometheusRule, for the chart's monitoring objects (the
# newest version of its main module the proxy lists).
prometheus_operator_version=v0.85.0
if [ "$(cat "$cache/crds/.monitoring-version" 2>/dev/null)" != "$prometheus_operator_version" ]; then
  echo "controlplane: fetching prometheus-operator's CRDs ($prometheus_operator_version)"
  operator_dir="$(cd "$here/prometheus" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  for crd in podmonitors prometheusrules; do
    cp "$operator_dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$cache/crds/monitoring-$crd.yaml"
  done
  chmod u+w "$cache/crds/"monitoring-*.yaml
  echo "$prometheus_operator_version" >"$cache/crds/.monitoring-version"
fi
# cert-manager's Certificate and Issuer, for the chart's tls.certManager objects (its controller
# cannot be built here: its cmd/controller module is not served by the proxy).
cert_manager_version=v1.21.2
if [ "$(cat "$cache/crds/.cert-manager-version" 2>/dev/null)" != "$cert_manager_version" ]; then
  echo "controlplane: fetching cert-manager's CRDs ($cert_manager_version)"
  cert_manager_dir="$(cd "$here/prometheus" && go mod download -json "github.com/cert-manager/cert-manager@$cert_manager_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  for crd in certificates issuers; do
    cp "$cert_manager_dir/deploy/crds/cert-manager.io_$crd.yaml" "$cache/crds/cert-manager-$crd.yaml"
  done
  chmod u+w "$cache/crds/"cert-manager-*.yaml
  echo "$cert_manager_version" >"$cache/crds/.cert-manager-version"
fi

du -sh "$cache" | awk '{print "controlplane: cache size " $1 " (" $2 ")"}'
