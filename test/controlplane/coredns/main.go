// CoreDNS, the test cluster's DNS (test/controlplane/cluster.ts), built from its module into a
// local image by test/controlplane/images.sh with only the plugins coredns.yaml's Corefile names:
// CoreDNS's own way to choose plugins at build time (its plugin.cfg generates such imports). The
// full set, cloud DNS providers' SDKs and all, is about 1,400 packages to compile; this is 800.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
