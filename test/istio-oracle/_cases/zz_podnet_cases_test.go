// This file is not part of Istio. The project's build (test/controlplane/build.sh) copies it into
// a copy of Istio's capture packages (istio-iptables and istio-nftables) and runs it, so that the
// conformance suites take their inputs from Istio's own test table: each case of
// getCommonTestCases, applied to constructTestConfig as Istio's golden test does, written as JSON
// in the oracle's flat form.
package capture

import (
	"encoding/json"
	"os"
	"testing"
)

// flatConfig is the oracle's input form (test/istio-oracle/main.go), the field names this
// project's capture config uses.
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

func TestPodnetExportCases(t *testing.T) {
	out := os.Getenv("PODNET_CASES_OUT")
	if out == "" {
		t.Skip("PODNET_CASES_OUT is not set")
	}
	type exported struct {
		Name   string     `json:"name"`
		Golden string     `json:"golden"`
		Config flatConfig `json:"config"`
	}
	cases := []exported{}
	for _, tc := range getCommonTestCases() {
		c := constructTestConfig()
		tc.config(c)
		cases = append(cases, exported{Name: tc.name, Golden: tc.name + ".golden", Config: flatConfig{
			ProxyPort: c.ProxyPort, InboundCapturePort: c.InboundCapturePort, InboundTunnelPort: c.InboundTunnelPort,
			ProxyUID: c.ProxyUID, ProxyGID: c.ProxyGID, InboundInterceptionMode: c.InboundInterceptionMode,
			InboundPortsInclude: c.InboundPortsInclude, InboundPortsExclude: c.InboundPortsExclude,
			OutboundIPRangesInclude: c.OutboundIPRangesInclude, OutboundIPRangesExclude: c.OutboundIPRangesExclude,
			OutboundPortsInclude: c.OutboundPortsInclude, OutboundPortsExclude: c.OutboundPortsExclude,
			ExcludeInterfaces: c.ExcludeInterfaces, RerouteVirtualInterfaces: c.RerouteVirtualInterfaces,
			InboundTProxyMark: c.InboundTProxyMark, InboundTProxyRouteTable: c.InboundTProxyRouteTable,
			OwnerGroupsInclude: c.OwnerGroupsInclude, OwnerGroupsExclude: c.OwnerGroupsExclude,
			HostIPv4LoopbackCidr: c.HostIPv4LoopbackCidr, RedirectDNS: c.RedirectDNS, CaptureAllDNS: c.CaptureAllDNS,
			DNSServersV4: nonNil(c.DNSServersV4), DNSServersV6: nonNil(c.DNSServersV6), DropInvalid: c.DropInvalid,
			EnableIPv6: c.EnableIPv6, DualStack: c.DualStack,
		}})
	}
	data, err := json.MarshalIndent(cases, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
