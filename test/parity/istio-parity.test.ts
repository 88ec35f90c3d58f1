// Differential test against Istio's own code (test/istio-oracle): the same pod through
// istio-cni's sidecar path (NewRedirect, then the iptables and nftables configurators with
// Istio's dependency stub and nftables mock) and through this project's derivation and
// renderers. The oracle must first reproduce Istio's own goldens (from its module); then random pods must
// get the same accept/refuse verdict and, when accepted, the same rules for both backends.
// Disagreements are allowed only where docs/testing.md, "Parity with Istio", lists a deliberate
// deviation, and each is counted.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import { CaptureConfigError, parseCaptureConfig } from "../../contract/capture-config.ts";
import { ANNOTATION, deriveCaptureInput, LIST_ANNOTATIONS, PROXY_ENV } from "../../functions/capture-from-pod.ts";
import { parsePod } from "../../functions/pod.ts";
import { renderIptables } from "../../node-runner/rules/iptables.ts";
import { renderNftables } from "../../node-runner/rules/nftables.ts";
import { blocksByTable, captureTranscript, loadConfigCases, loadPodCases, missingConformanceReason } from "../conformance/load.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { IstioOracle, missingOracleReason } from "../support/istio-oracle.ts";

const RUNS = Number(process.env.PARITY_RUNS ?? 2000);
const SEED = Number(process.env.PARITY_SEED ?? 20261125);
const missing = missingOracleReason() ?? missingConformanceReason();

// ---- random pods ------------------------------------------------------------------------

// Valid values (most pods), and hostile ones: one annotation of about a third of the pods
// gets a hostile item or value, so both verdicts are exercised.
const validPorts = ["80", "443", "8080", "3306", "15001", "15006", "15020", "0", "65535"];
const hostilePorts = ["65536", "080", "*", "-1", "http", " 80", "80 ", "", "1e3", "+80"];
const validCidrs = [
  "10.0.0.0/8",
  "10.1.2.3/8",
  "192.168.0.0/16",
  "0.0.0.0/0",
  "127.0.0.1/32",
  "127.0.0.0/8",
  "::/0",
  "fd00::/8",
  "FD00:0:0::1/64",
  "2001:db8::1/128",
  "2001:0db8::/32",
  "::ffff:127.0.0.1/128",
  "::ffff:10.0.0.0/104",
  "::1/128",
  "::1.2.3.4/128",
];
const hostileCidrs = ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/08", "010.0.0.0/8", "fe80::1%eth0/64", "*", "", " 10.0.0.0/8", "10.0.0.0/8\n-A OUTPUT"];
const validIfaces = ["eth0", "eth1", "net1", "veth-a.b_c", "abcdefghijklmno", "Eth0"];
const hostileIfaces = ["0eth", "1", "abcdefghijklmnop", "eth+", "!eth0", "-eth", " eth0", "", "eth0 -j ACCEPT", "e\nth", "eth0\t"];

const listOf = (items: readonly string[], min = 1) => fc.array(fc.constantFrom(...items), { minLength: min, maxLength: 4 }).map((xs) => xs.join(","));
const withWholes = (arb: fc.Arbitrary<string>, wholes: readonly string[]) =>
  fc.oneof({ weight: 1, arbitrary: fc.constantFrom(...wholes) }, { weight: 4, arbitrary: arb });
const hostileList = (valid: readonly string[], hostile: readonly string[], wholes: readonly string[]) =>
  fc.oneof(
    fc.constantFrom(...wholes),
    fc.tuple(listOf(valid, 0), fc.constantFrom(...hostile), listOf(valid, 0)).map(([a, h, b]) => [a, h, b].filter((x, i) => x !== "" || i === 1).join(",")),
  );

type Kind = "ports" | "cidrs" | "ifaces";
const ANNOTATION_KINDS: Record<string, { kind: Kind; wildcard: boolean }> = {
  [ANNOTATION.includeOutboundIPRanges]: { kind: "cidrs", wildcard: true },
  [ANNOTATION.excludeOutboundIPRanges]: { kind: "cidrs", wildcard: false },
  [ANNOTATION.includeInboundPorts]: { kind: "ports", wildcard: true },
  [ANNOTATION.excludeInboundPorts]: { kind: "ports", wildcard: false },
  [ANNOTATION.includeOutboundPorts]: { kind: "ports", wildcard: false },
  [ANNOTATION.excludeOutboundPorts]: { kind: "ports", wildcard: false },
  [ANNOTATION.excludeInterfaces]: { kind: "ifaces", wildcard: false },
  [ANNOTATION.rerouteVirtualInterfaces]: { kind: "ifaces", wildcard: false },
  [ANNOTATION.kubevirtInterfaces]: { kind: "ifaces", wildcard: false },
};
const POOLS: Record<Kind, { valid: readonly string[]; hostile: readonly string[] }> = {
  ports: { valid: validPorts, hostile: hostilePorts },
  cidrs: { valid: validCidrs, hostile: hostileCidrs },
  ifaces: { valid: validIfaces, hostile: hostileIfaces },
};

const validAnnotations = fc.record(
  {
    [ANNOTATION.interceptionMode]: fc.constantFrom("REDIRECT", "TPROXY"),
    ...Object.fromEntries(
      Object.entries(ANNOTATION_KINDS).map(([key, { kind, wildcard }]) => [key, withWholes(listOf(POOLS[kind].valid), wildcard ? ["", "*"] : [""])]),
    ),
  },
  { requiredKeys: [] },
);
const hostileAnnotation = fc.oneof(
  fc.constantFrom("NONE", "tproxy", "", "REDIRECT ").map((v) => [ANNOTATION.interceptionMode, v] as const),
  fc.constantFrom(...Object.entries(ANNOTATION_KINDS)).chain(([key, { kind }]) => {
    return hostileList(POOLS[kind].valid, POOLS[kind].hostile, [",", " ", "*,80", "*,10.0.0.0/8", "*"]).map((v) => [key, v] as const);
  }),
);
const annotationsArb = fc
  .tuple(validAnnotations, fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: hostileAnnotation }))
  .map(([valid, hostile]) => (hostile === null ? valid : { ...valid, [hostile[0]]: hostile[1] }));

const envValue = fc.oneof(
  fc.constantFrom("true", "false", "1", "0", "True", "FALSE", "t", "yes", "", "on").map((value) => ({ value })),
  fc.constant({ valueFrom: { fieldRef: { fieldPath: "metadata.name" } } }),
);
const envArb = fc.record({ [PROXY_ENV.dnsCapture]: envValue, [PROXY_ENV.invalidDrop]: envValue, [PROXY_ENV.dualStack]: envValue }, { requiredKeys: [] });
const idArb = fc.option(fc.oneof(fc.constantFrom(0, 1337, 1000670000), fc.integer({ min: 1, max: 2147483647 })), { nil: undefined });
const ipsArb = fc.constantFrom(["10.0.0.2"], ["fd00::2"], ["10.0.0.2", "fd00::2"], ["fd00::2", "10.0.0.2"], ["10.244.3.17", "2001:db8::17"]);

const podArb = fc
  .record({ annotations: annotationsArb, env: envArb, uid: idArb, gid: idArb, ips: ipsArb, native: fc.boolean() })
  .map(({ annotations, env, uid, gid, ips, native }) => {
    const proxy = {
      name: "istio-proxy",
      env: Object.entries(env).map(([name, v]) => ({ name, ...v })),
      securityContext: { ...(uid === undefined ? {} : { runAsUser: uid }), ...(gid === undefined ? {} : { runAsGroup: gid }) },
      ...(native ? { restartPolicy: "Always" } : {}),
    };
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "parity", namespace: "shop", annotations: { "sidecar.istio.io/status": "{}", ...annotations } },
      spec: native ? { initContainers: [proxy], containers: [{ name: "app" }] } : { containers: [{ name: "app" }, proxy] },
      status: { podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) },
    };
  });

// ---- the project's side -----------------------------------------------------------------

type ProjectVerdict = { accepted: true; iptables: string; nft: string } | { accepted: false; error: CaptureConfigError };

function project(pod: unknown): ProjectVerdict {
  try {
    const derived = deriveCaptureInput(parsePod(pod));
    const config = parseCaptureConfig(derived.input, derived.sources, derived.issues);
    const ipt = renderIptables(config);
    return { accepted: true, iptables: captureTranscript(ipt.v4.restore, ipt.v6?.restore ?? null), nft: renderNftables(config).script.trim() };
  } catch (err) {
    if (err instanceof CaptureConfigError) return { accepted: false, error: err };
    throw err;
  }
}

// ---- deliberate deviations (docs/testing.md, "Parity with Istio") ----------------------------------

const LIST_KEYS = LIST_ANNOTATIONS.map((a) => a.key);
const PORT_KEYS = [ANNOTATION.includeInboundPorts, ANNOTATION.excludeInboundPorts, ANNOTATION.includeOutboundPorts, ANNOTATION.excludeOutboundPorts];

/** Why the project may refuse a pod Istio accepts, or undefined when it may not. */
function deliberateDeviation(annotations: Record<string, string>): string | undefined {
  const values = LIST_KEYS.map((k) => annotations[k]).filter((v): v is string => v !== undefined);
  // Istio trims items when it validates them but renders them untrimmed.
  if (values.some((v) => /[\s\u0085]/.test(v))) return "whitespace in a list";
  const portItemsOf = PORT_KEYS.map((k) => annotations[k])
    .filter((v): v is string => v !== undefined)
    .flatMap((v) => v.split(","));
  if (portItemsOf.some((p) => /^0[0-9]+$/.test(p))) return "port with a leading zero";
  // Istio validates "*" in these and renders `--dport *`; only includeInboundPorts has a wildcard.
  if ([ANNOTATION.excludeInboundPorts, ANNOTATION.includeOutboundPorts, ANNOTATION.excludeOutboundPorts].some((k) => annotations[k] === "*")) {
    return "wildcard in a port list that has none";
  }
  return undefined;
}

/** The annotation istio-cni names in its refusal (NewRedirect's registry names). */
const ISTIO_NAMES: Record<string, string> = {
  redirectMode: ANNOTATION.interceptionMode,
  includeIPCidrs: ANNOTATION.includeOutboundIPRanges,
  excludeIPCidrs: ANNOTATION.excludeOutboundIPRanges,
  excludeInboundPorts: ANNOTATION.excludeInboundPorts,
  includeInboundPorts: ANNOTATION.includeInboundPorts,
  excludeOutboundPorts: ANNOTATION.excludeOutboundPorts,
  includeOutboundPorts: ANNOTATION.includeOutboundPorts,
  excludeInterfaces: ANNOTATION.excludeInterfaces,
  "reroute-virtual-interfaces": ANNOTATION.rerouteVirtualInterfaces,
  kubevirtInterfaces: ANNOTATION.kubevirtInterfaces,
};

function refusedAnnotation(message: string): string | undefined {
  const name = /annotation value error for value (\S+);/.exec(message)?.[1];
  return name === undefined ? undefined : ISTIO_NAMES[name];
}

describe("parity with Istio's own code (differential, istio-cni + istio-iptables + istio-nftables)", () => {
  if (missing !== undefined) {
    test("istio parity", skipUnlessCI(missing), () => {
      assertAvailable(missing);
    });
    return;
  }
  let oracle: IstioOracle;
  before(() => {
    oracle = new IstioOracle();
  });
  after(() => {
    oracle.close();
  });

  test("harness: the oracle reproduces Istio's own goldens (capture, nft, cni)", async () => {
    const wrong: string[] = [];
    for (const c of loadConfigCases("capture")) {
      const a = await oracle.ask({ capture: c.config });
      if (a.iptables !== c.golden.trim()) wrong.push(`capture/${c.name}: ${a.refused ?? a.error ?? "differs"}`);
    }
    for (const c of loadConfigCases("nft")) {
      const a = await oracle.ask({ nft: c.config });
      if (a.nft !== c.golden.trim()) wrong.push(`nft/${c.name}: ${a.refused ?? a.error ?? "differs"}`);
    }
    for (const c of loadPodCases()) {
      const a = await oracle.ask({ pod: c.pod });
      assert.ok(a.iptables !== undefined, `cni/${c.name}: ${a.refused ?? a.error}`);
      if (!isDeepEqual(blocksByTable(a.iptables), blocksByTable(c.golden))) wrong.push(`cni/${c.name}: differs`);
    }
    assert.deepEqual(wrong, [], "harness error: the oracle does not reproduce Istio's goldens, so it cannot judge the project");
  });

  test(`${RUNS} random pods: same verdict, same iptables and nftables rules (seed ${SEED})`, async () => {
    const tally = { bothAccepted: 0, bothRefused: 0, deviations: new Map<string, number>() };
    await fc.assert(
      fc.asyncProperty(podArb, async (pod) => {
        const theirs = await oracle.ask({ pod });
        assert.equal(theirs.error, undefined, `oracle error: ${theirs.error}`);
        const ours = project(pod);
        const annotations = pod.metadata.annotations as Record<string, string>;
        if (theirs.refused !== undefined) {
          assert.ok(!ours.accepted, `Istio refuses (${theirs.refused}) but the project accepts`);
          const named = refusedAnnotation(theirs.refused);
          if (named !== undefined) {
            assert.ok(
              ours.error.issues.some((i) => i.source === `annotation ${named}`),
              `Istio refuses annotation ${named} (${theirs.refused}); the project's refusal names ${ours.error.issues.map((i) => i.source ?? i.field).join(", ")}`,
            );
          }
          tally.bothRefused++;
          return;
        }
        if (!ours.accepted) {
          const why = deliberateDeviation(annotations);
          assert.ok(why !== undefined, `Istio accepts but the project refuses: ${ours.error.message}`);
          tally.deviations.set(why, (tally.deviations.get(why) ?? 0) + 1);
          return;
        }
        assert.equal(ours.iptables, theirs.iptables, "iptables rules differ");
        assert.equal(theirs.nftRefused, undefined, `Istio's nftables configurator refuses: ${theirs.nftRefused}`);
        assert.equal(ours.nft, theirs.nft?.trim(), "nftables rules differ");
        tally.bothAccepted++;
      }),
      { numRuns: RUNS, seed: SEED, includeErrorInReport: true },
    );
    const deviations = [...tally.deviations].map(([k, n]) => `${k}: ${n}`).join(", ") || "none";
    console.log(
      `# parity: ${RUNS} pods (seed ${SEED}): ${tally.bothAccepted} same rules, ${tally.bothRefused} refused by both, deliberate deviations: ${deviations}`,
    );
  });
});

function isDeepEqual(a: unknown, b: unknown): boolean {
  try {
    assert.deepEqual(a, b);
    return true;
  } catch {
    return false;
  }
}
