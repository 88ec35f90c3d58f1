#!/bin/sh
# Entry point of the test nodes' stand-in for Istio's proxyv2 image (test/controlplane/images.sh).
# Istio's image runs pilot-agent with the container's arguments: its init containers
# (istio-init: `istio-iptables ...`; istio-validation in CNI mode: `istio-iptables
# --run-validation ...`) get the real pilot-agent, built from Istio's module. Anything else is the
# istio-proxy container, whose Envoy is the recorder (no Envoy is built here).
case "${1:-}" in
  istio-iptables) exec /usr/local/bin/pilot-agent "$@" ;;
  *) exec node /proxy-recorder.mjs ;;
esac
