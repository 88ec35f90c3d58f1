// istio-oracle: Istio's own traffic-capture code behind a JSON-lines interface, for the
// project's differential tests. Each input line is one request; each output line its answer.
//
//	{"pod": {...v1.Pod...}}          → istio-cni's sidecar path (NewRedirect + Program)
//	{"capture": {...flat config...}} → istio-iptables' configurator with the dependency stub
//	{"nft": {...flat config...}}     → istio-nftables' configurator with the nftables mock
//
// The flat config uses the field names of the project's capture config (contract/capture-config.ts).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/cni/pkg/plugin"
	"istio.io/istio/pkg/log"
	"istio.io/istio/tools/common/config"
	"istio.io/istio/tools/istio-iptables/pkg/capture"
	dep "istio.io/istio/tools/istio-iptables/pkg/dependencies"
)

type flatConfig struct {
	ProxyPort                string   `json:"proxyPort"`
	InboundCapturePort       string   `json:"inboundCapturePort"`
	InboundTunnelPort        string   `json:"inboundTunnelPort"`
	ProxyUID                 string   `json:"proxyUID"`
	ProxyGID                 string   `json:"proxyGID"`
	InboundInterceptionMode  string   `json:"inboundInterceptionMode"`
	InboundPortsInclude      string   `json:"inboundPortsInclude"`
	InboundPortsExclude      string   `json:"inboundPortsExclude"`
	OutboundIPRangesInclude  string   `json:"outboundIPRangesInclude"`
	OutboundIPRangesExclude  string   `json:"outboundIPRangesExclude"`
	OutboundPortsInclude     string   `json:"outboundPortsInclude"`
	OutboundPortsExclude     string   `json:"outboundPortsExclude"`
	ExcludeInterfaces        string   `json:"excludeInterfaces"`
	RerouteVirtualInterfaces string   `json:"rerouteVirtualInterfaces"`
	InboundTProxyMark        string   `json:"inboundTProxyMark"`
	InboundTProxyRouteTable  string   `json:"inboundTProxyRouteTable"`
	OwnerGroupsInclude       string   `json:"ownerGroupsInclude"`
	OwnerGroupsExclude       string   `json:"ownerGroupsExclude"`
	HostIPv4LoopbackCidr     string   `json:"hostIPv4LoopbackCidr"`
	RedirectDNS              bool     `json:"redirectDNS"`
	CaptureAllDNS            bool     `json:"captureAllDNS"`
	DNSServersV4             []string `json:"dnsServersV4"`
	DNSServersV6             []string `json:"dnsServersV6"`
	DropInvalid              bool     `json:"dropInvalid"`
	EnableIPv6               bool     `json:"enableIPv6"`
	DualStack                bool     `json:"dualStack"`
}

func (f flatConfig) config() *config.Config {
	return &config.Config{
		ProxyPort: f.ProxyPort, InboundCapturePort: f.InboundCapturePort, InboundTunnelPort: f.InboundTunnelPort,
		ProxyUID: f.ProxyUID, ProxyGID: f.ProxyGID, InboundInterceptionMode: f.InboundInterceptionMode,
		InboundPortsInclude: f.InboundPortsInclude, InboundPortsExclude: f.InboundPortsExclude,
		OutboundIPRangesInclude: f.OutboundIPRangesInclude, OutboundIPRangesExclude: f.OutboundIPRangesExclude,
		OutboundPortsInclude: f.OutboundPortsInclude, OutboundPortsExclude: f.OutboundPortsExclude,
		ExcludeInterfaces: f.ExcludeInterfaces, RerouteVirtualInterfaces: f.RerouteVirtualInterfaces,
		InboundTProxyMark: f.InboundTProxyMark, InboundTProxyRouteTable: f.InboundTProxyRouteTable,
		OwnerGroupsInclude: f.OwnerGroupsInclude, OwnerGroupsExclude: f.OwnerGroupsExclude,
		HostIPv4LoopbackCidr: f.HostIPv4LoopbackCidr, RedirectDNS: f.RedirectDNS, CaptureAllDNS: f.CaptureAllDNS,
		DNSServersV4: f.DNSServersV4, DNSServersV6: f.DNSServersV6, DropInvalid: f.DropInvalid,
		EnableIPv6: f.EnableIPv6, DualStack: f.DualStack,
	}
}

type request struct {
	Pod     *corev1.Pod `json:"pod"`
	Capture *flatConfig `json:"capture"`
	Nft     *flatConfig `json:"nft"`
}

type answer struct {
	Refused    string `json:"refused,omitempty"`
	Iptables   string `json:"iptables,omitempty"`
	Nft        string `json:"nft,omitempty"`
	NftRefused string `json:"nftRefused,omitempty"`
	Error      string `json:"error,omitempty"`
}

func handle(req request, dryRunFile string) answer {
	switch {
	case req.Pod != nil:
		r := plugin.OracleProgramPod(req.Pod, dryRunFile)
		return answer{Refused: r.Refused, Iptables: r.IptablesTranscript, Nft: r.Nft, NftRefused: r.NftRefused}
	case req.Capture != nil:
		stub := &dep.DependenciesStub{}
		c, err := capture.NewIptablesConfigurator(req.Capture.config(), stub)
		if err == nil {
			err = c.Run()
		}
		if err != nil {
			return answer{Refused: err.Error()}
		}
		return answer{Iptables: strings.TrimSpace(strings.Join(stub.ExecutedAll, "\n"))}
	case req.Nft != nil:
		out, err := plugin.OracleNftables(req.Nft.config())
		if err != nil {
			return answer{Refused: err.Error()}
		}
		return answer{Nft: strings.TrimSpace(out)}
	}
	return answer{Error: "request needs one of pod, capture, nft"}
}

func main() {
	// Istio logs every rule it builds; the answers are the output.
	for _, s := range log.Scopes() {
		s.SetOutputLevel(log.NoneLevel)
	}
	dir, err := os.MkdirTemp("", "istio-oracle-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	dryRunFile := filepath.Join(dir, "dry-run.txt")

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		var a answer
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			a = answer{Error: "bad request: " + err.Error()}
		} else {
			a = handle(req, dryRunFile)
		}
		if err := out.Encode(a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
