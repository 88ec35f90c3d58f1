//go:build tools

// Package tools pins CoreDNS, the test cluster's DNS (test/controlplane/cluster.ts), built from
// its module into a local image by test/controlplane/images.sh.
package tools

import _ "github.com/coredns/coredns"
