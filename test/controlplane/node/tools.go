//go:build tools

// Package tools pins the commands this module builds: the node agent, the two controllers a
// real node needs (DaemonSets, ServiceAccounts, kube-root-ca.crt, scheduling), kube-proxy
// (Services on the nodes) and kubectl.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
