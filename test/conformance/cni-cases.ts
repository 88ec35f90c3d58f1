// The pods of istio-cni's golden test (TestIPTablesRuleGeneration in Istio's
// cni/pkg/plugin/plugin_dryrun_test.go): Istio builds one pod (containers test, istio-proxy,
// istio-validate) and varies its annotations, the proxy's env and its runAsUser/runAsGroup; the
// golden of each is read from the istio.io/istio module (load.ts). Istio's test keeps the pod's
// IP in its mock netns; here it is the pod's status, as the function reads it.
const CUSTOM_UID = 1000670000;
const CUSTOM_GID = 1000670001;
const STATUS = { "sidecar.istio.io/status": "true" };

interface CniCase {
  readonly name: string;
  readonly golden: string;
  readonly annotations?: Record<string, string>;
  readonly proxyEnv?: { name: string; value: string }[];
  readonly runAsUser?: number;
  readonly runAsGroup?: number;
}

const CASES: readonly CniCase[] = [
  { name: "basic", golden: "basic.txt.golden" },
  {
    name: "include-exclude-ip",
    golden: "include-exclude-ip.txt.golden",
    annotations: { "traffic.sidecar.istio.io/includeOutboundIPRanges": "127.0.0.0/8", "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8" },
  },
  {
    name: "include-exclude-ports",
    golden: "include-exclude-ports.txt.golden",
    annotations: {
      "traffic.sidecar.istio.io/includeInboundPorts": "1111,2222",
      "traffic.sidecar.istio.io/excludeInboundPorts": "3333,4444",
      "traffic.sidecar.istio.io/excludeOutboundPorts": "5555,6666",
    },
  },
  { name: "tproxy", golden: "tproxy.txt.golden", annotations: { "sidecar.istio.io/interceptionMode": "TPROXY" } },
  { name: "DNS", golden: "dns.txt.golden", proxyEnv: [{ name: "ISTIO_META_DNS_CAPTURE", value: "true" }] },
  { name: "invalid-drop", golden: "invalid-drop.txt.golden", proxyEnv: [{ name: "INVALID_DROP", value: "true" }] },
  { name: "custom-uid", golden: "custom-uid.txt.golden", runAsUser: CUSTOM_UID, runAsGroup: CUSTOM_GID },
  { name: "custom-uid-zero", golden: "basic.txt.golden", runAsUser: 0 },
  {
    name: "custom-uid-tproxy",
    golden: "custom-uid-tproxy.txt.golden",
    annotations: { "sidecar.istio.io/interceptionMode": "TPROXY" },
    runAsUser: CUSTOM_UID,
    runAsGroup: CUSTOM_GID,
  },
];

/** Each case as the pod Istio's test builds. */
export function cniCasePods(): { name: string; golden: string; pod: Record<string, unknown> }[] {
  return CASES.map((c) => ({
    name: c.name,
    golden: c.golden,
    pod: {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "test-pod", namespace: "test-ns", annotations: { ...STATUS, ...c.annotations } },
      spec: {
        containers: [
          { name: "test" },
          {
            name: "istio-proxy",
            env: c.proxyEnv ?? [],
            securityContext: {
              ...(c.runAsUser === undefined ? {} : { runAsUser: c.runAsUser }),
              ...(c.runAsGroup === undefined ? {} : { runAsGroup: c.runAsGroup }),
            },
          },
          { name: "istio-validate" },
        ],
      },
      status: { podIP: "10.0.0.2", podIPs: [{ ip: "10.0.0.2" }] },
    },
  }));
}
