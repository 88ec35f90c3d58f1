// This file is not part of Istio. The project's differential tests add it to Istio's
// cni/pkg/plugin package with `go build -overlay` (Istio's own files stay untouched), so that
// the oracle can drive the plugin's unexported parts (getNs, the iptables and nftables
// InterceptRuleMgr) exactly as the CNI plugin does for a sidecar pod.

package plugin

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"istio.io/istio/tools/common/config"
	"istio.io/istio/tools/istio-iptables/pkg/dependencies"
	nftbuilder "istio.io/istio/tools/istio-nftables/pkg/builder"
	nftcapture "istio.io/istio/tools/istio-nftables/pkg/capture"
)

type oracleNetNs struct{}

func (oracleNetNs) Do(toRun func(ns.NetNS) error) error { return toRun(oracleNetNs{}) }
func (oracleNetNs) Set() error                          { return nil }
func (oracleNetNs) Path() string                        { return "/var/run/netns/podnet-oracle" }
func (oracleNetNs) Fd() uintptr                         { return 0 }
func (oracleNetNs) Close() error                        { return nil }

// OracleResult is what Istio's sidecar CNI path produces for one pod.
type OracleResult struct {
	// Refused is Istio's error when it refuses the pod (NewRedirect or Program failed).
	Refused string
	// IptablesTranscript is every command the iptables dependency stub recorded, one per line
	// (the form of Istio's capture goldens).
	IptablesTranscript string
	// Nft is the nftables transaction (knftables Transaction.String()), "" when refused.
	Nft string
	// NftRefused is set when only the nftables configurator refused the pod.
	NftRefused string
}

// podAddrs makes the pod's IPs the "local addresses" Istio reads inside the pod's netns
// (config.getLocalIP): IPv4 first, as the kernel lists them.
func podAddrs(pod *corev1.Pod) func() ([]net.Addr, error) {
	return func() ([]net.Addr, error) {
		var v4, v6 []net.Addr
		for _, ip := range pod.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				return nil, err
			}
			n := &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
			if a.Is4() {
				v4 = append(v4, n)
			} else {
				v6 = append(v6, n)
			}
		}
		return append(v4, v6...), nil
	}
}

// OracleProgramPod runs Istio's istio-cni sidecar path for pod: ExtractPodInfo, NewRedirect,
// then the iptables InterceptRuleMgr in dry-run mode (Istio's dependency stub) and the same
// configuration through Istio's nftables configurator with Istio's nftables mock.
func OracleProgramPod(pod *corev1.Pod, dryRunFile string) OracleResult {
	getNs = func(string) (ns.NetNS, error) { return oracleNetNs{}, nil }
	config.LocalIPAddrs = podAddrs(pod)

	redirect, err := NewRedirect(ExtractPodInfo(pod))
	if err != nil {
		return OracleResult{Refused: err.Error()}
	}

	if err := os.WriteFile(dryRunFile, nil, 0o600); err != nil {
		return OracleResult{Refused: "oracle harness: " + err.Error()}
	}
	os.Setenv(dependencies.DryRunFilePath.Name, dryRunFile)
	if err := newIPTables().Program(pod.Name, "/var/run/netns/podnet-oracle", redirect); err != nil {
		return OracleResult{Refused: err.Error()}
	}
	transcript, err := os.ReadFile(dryRunFile)
	if err != nil {
		return OracleResult{Refused: "oracle harness: " + err.Error()}
	}

	// (*nftables).Program builds its config like this and then calls nft.ProgramNftables,
	// which only applies through the real nft binary; the oracle stops at the transaction,
	// built by Istio's configurator against Istio's nftables mock, as Istio's goldens are.
	cfg := config.DefaultConfig()
	cfg.HostFilesystemPodNetwork = true
	cfg.NetworkNamespace = "/var/run/netns/podnet-oracle"
	cfg.ProxyPort = redirect.targetPort
	cfg.ProxyUID = redirect.noRedirectUID
	cfg.ProxyGID = redirect.noRedirectGID
	cfg.InboundInterceptionMode = redirect.redirectMode
	cfg.OutboundIPRangesInclude = redirect.includeIPCidrs
	cfg.InboundPortsExclude = redirect.excludeInboundPorts
	cfg.InboundPortsInclude = redirect.includeInboundPorts
	cfg.ExcludeInterfaces = redirect.excludeInterfaces
	cfg.OutboundPortsExclude = redirect.excludeOutboundPorts
	cfg.OutboundPortsInclude = redirect.includeOutboundPorts
	cfg.OutboundIPRangesExclude = redirect.excludeIPCidrs
	cfg.RerouteVirtualInterfaces = redirect.rerouteVirtualInterfaces
	cfg.RedirectDNS = redirect.dnsRedirect
	cfg.CaptureAllDNS = redirect.dnsRedirect
	cfg.DropInvalid = redirect.invalidDrop
	cfg.DualStack = redirect.dualStack
	result := OracleResult{IptablesTranscript: strings.TrimSpace(string(transcript))}
	if err := cfg.FillConfigFromEnvironment(); err != nil {
		result.NftRefused = err.Error()
		return result
	}
	nft, err := OracleNftables(cfg)
	if err != nil {
		result.NftRefused = err.Error()
		return result
	}
	result.Nft = nft
	return result
}

// OracleNftables runs Istio's nftables configurator for cfg against Istio's nftables mock and
// returns the transaction text.
func OracleNftables(cfg *config.Config) (string, error) {
	mock := nftbuilder.NewMockNftables("", "")
	configurator, err := nftcapture.NewNftablesConfigurator(cfg, func(knftables.Family, string) (nftbuilder.NftablesAPI, error) {
		return mock, nil
	})
	if err != nil {
		return "", err
	}
	tx, err := configurator.Run()
	if err != nil {
		return "", fmt.Errorf("%w", err)
	}
	return mock.Dump(tx), nil
}
