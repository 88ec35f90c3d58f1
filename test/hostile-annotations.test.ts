// Property: whatever a pod's annotations and proxy env say, the rule engine either renders
// rules made only of validated values (in their value positions) and fixed vocabulary, or
// refuses the pod with a CaptureConfigError. Nothing else is ever thrown.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { CaptureConfigError, DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../contract/capture-config.ts";
import { checkCidr, checkGroup, checkInterfaceName, checkListenPort, checkMark, checkNumericId, checkPort } from "../contract/tokens.ts";
import { ANNOTATION, PROXY_ENV } from "../functions/capture-from-pod.ts";
import { captureConfigFromPod } from "./support/capture.ts";
import { parsePod } from "../functions/pod.ts";
import { renderIptables } from "../node-runner/rules/iptables.ts";
import { renderNftables } from "../node-runner/rules/nftables.ts";

const SAFE_LINE = /^[A-Za-z0-9_.:/,{}!=*; -]+$/;

const isCidrOrHost = (t: string): boolean => checkCidr(t).ok;
const isPortList = (t: string): boolean => t.split(",").every((p) => checkPort(p).ok);
const isMarkWithMask = (t: string): boolean => /^[0-9]+\/0xffffffff$/.test(t) && checkMark(t.split("/")[0] ?? "").ok;

// Options whose next token is a value, and the check that value must pass.
const IPTABLES_VALUES: Record<string, (t: string) => boolean> = {
  "-i": (t) => checkInterfaceName(t).ok,
  "-o": (t) => checkInterfaceName(t).ok,
  "-d": isCidrOrHost,
  "-s": isCidrOrHost,
  "--dport": (t) => checkPort(t).ok,
  "--sport": (t) => checkPort(t).ok,
  "--dports": isPortList,
  "--uid-owner": (t) => checkNumericId(t).ok,
  "--gid-owner": (t) => checkGroup(t).ok,
  "--to-ports": (t) => checkListenPort(t).ok,
  "--to-port": (t) => checkListenPort(t).ok,
  "--on-port": (t) => checkListenPort(t).ok,
  "--set-mark": (t) => checkMark(t).ok,
  "--mark": (t) => checkMark(t).ok,
  "--tproxy-mark": isMarkWithMask,
};

const NFT_VALUES: Record<string, (t: string) => boolean> = {
  iifname: (t) => checkInterfaceName(t).ok,
  oifname: (t) => checkInterfaceName(t).ok,
  saddr: isCidrOrHost,
  daddr: isCidrOrHost,
  dport: (t) => checkPort(t).ok,
  sport: (t) => checkPort(t).ok,
  skuid: (t) => checkNumericId(t).ok,
  skgid: (t) => checkGroup(t).ok,
  to: (t) => t.startsWith(":") && checkListenPort(t.slice(1)).ok,
  set: (t) => checkMark(t).ok || t === "mark" || t === "ct",
  mark: (t) => checkMark(t).ok,
};

/** Tokens outside value positions; returns the ones that are not validated values. */
function fixedWords(line: string, values: Record<string, (t: string) => boolean>): string[] {
  assert.match(line, SAFE_LINE, `unsafe characters in ${JSON.stringify(line)}`);
  const tokens = line.split(" ");
  const words: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i] as string;
    words.push(token);
    const check = values[token];
    if (check === undefined) continue;
    let j = i + 1;
    if (tokens[j] === "!=" || tokens[j] === "!") words.push(tokens[j++] as string);
    if (tokens[j] === "{") {
      // nft anonymous set: { 53, 15008 }
      words.push("{");
      for (j++; tokens[j] !== "}" && j < tokens.length; j++) {
        assert.ok(checkPort((tokens[j] as string).replace(/,$/, "")).ok, `unvalidated set item in ${line}`);
      }
      words.push("}");
      i = j;
      continue;
    }
    const value = tokens[j];
    if (value !== undefined && check(value)) i = j;
  }
  return words;
}

function vocabulary(lines: string[], values: Record<string, (t: string) => boolean>): Set<string> {
  return new Set(lines.flatMap((l) => fixedWords(l, values)));
}

// Vocabulary from trusted configs that between them turn every feature on.
const trusted = [
  {
    inboundInterceptionMode: "TPROXY",
    redirectDNS: true,
    captureAllDNS: true,
    dropInvalid: true,
    enableIPv6: true,
    excludeInterfaces: "eth9",
    rerouteVirtualInterfaces: "net1",
    outboundPortsInclude: "80",
    outboundPortsExclude: "81",
    inboundPortsExclude: "82",
    outboundIPRangesExclude: "10.0.0.0/8,fd00::/8",
  },
  {
    redirectDNS: true,
    dnsServersV4: ["10.96.0.10"],
    dnsServersV6: ["fd00::a"],
    enableIPv6: true,
    inboundPortsInclude: "80,81",
    outboundIPRangesInclude: "10.0.0.0/8,fd00::/8",
    rerouteVirtualInterfaces: "net1",
    ownerGroupsInclude: "1,2",
  },
  { inboundInterceptionMode: "TPROXY", inboundPortsInclude: "80", ownerGroupsExclude: "3", outboundIPRangesInclude: "" },
].map((overrides) => parseCaptureConfig({ ...DEFAULT_CAPTURE_CONFIG, ...overrides }));
const iptablesWords = vocabulary(
  trusted.flatMap((c) => {
    const p = renderIptables(c);
    return [p.v4.restore, p.v6?.restore ?? ""]
      .join("\n")
      .split("\n")
      .filter((l) => l !== "");
  }),
  IPTABLES_VALUES,
);
const nftWords = vocabulary(
  trusted.flatMap((c) =>
    renderNftables(c)
      .script.split("\n")
      .filter((l) => l !== ""),
  ),
  NFT_VALUES,
);

const hostileText = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.constantFrom(
    "eth0 -j ACCEPT",
    "-j",
    "eth0\n-A OUTPUT -j ACCEPT",
    "*",
    ",",
    "1,,2",
    "10.0.0.0/8,*",
    "::/0",
    "0.0.0.0/0",
    "65535,0",
    "a;b",
    "$(id)",
    "`id`",
    "eth+",
    "!lo",
    "TPROXY",
    "NONE",
    "1e3",
    "0x50",
    " 80",
    "eth0 ",
    "\u0000",
    "é",
  ),
  fc.array(fc.constantFrom("80", "10.0.0.0/8", "fd00::/8", "eth1", "15020", "-1", "99999", ""), { maxLength: 4 }).map((xs) => xs.join(",")),
);

const annotationKeys = Object.values(ANNOTATION);
const envNames = Object.values(PROXY_ENV);

const hostilePod = fc.record({
  annotations: fc.dictionary(fc.constantFrom(...annotationKeys), hostileText, { maxKeys: 5 }),
  env: fc.array(fc.record({ name: fc.constantFrom(...envNames), value: fc.oneof(hostileText, fc.constantFrom("true", "false", "1")) }), { maxLength: 3 }),
  runAsUser: fc.option(fc.integer({ min: -5, max: 2 ** 33 })),
  ipv6: fc.boolean(),
});

describe("hostile annotations", () => {
  test("property: validated rules or a CaptureConfigError, never anything else", () => {
    let rendered = 0;
    let refused = 0;
    fc.assert(
      fc.property(hostilePod, ({ annotations, env, runAsUser, ipv6 }) => {
        const pod = parsePod({
          metadata: { name: "p", namespace: "n", annotations: { "sidecar.istio.io/status": "{}", ...annotations } },
          spec: {
            containers: [{ name: "app" }, { name: "istio-proxy", env, securityContext: runAsUser === null ? {} : { runAsUser } }],
          },
          status: { podIPs: ipv6 ? [{ ip: "10.0.0.2" }, { ip: "fd00::2" }] : [{ ip: "10.0.0.2" }] },
        });
        let config;
        try {
          config = captureConfigFromPod(pod);
        } catch (err) {
          if (!(err instanceof CaptureConfigError)) throw err;
          assert.ok(err.issues.length > 0);
          for (const issue of err.issues) assert.ok(issue.source !== undefined || issue.field !== "", "issue without a field or source");
          refused++;
          return;
        }
        rendered++;
        const ipt = renderIptables(config);
        for (const line of [ipt.v4.restore, ipt.v6?.restore ?? ""]
          .join("\n")
          .split("\n")
          .filter((l) => l !== "")) {
          for (const w of fixedWords(line, IPTABLES_VALUES))
            assert.ok(iptablesWords.has(w), `unexpected token ${JSON.stringify(w)} in ${JSON.stringify(line)}`);
        }
        for (const line of renderNftables(config)
          .script.split("\n")
          .filter((l) => l !== "")) {
          for (const w of fixedWords(line, NFT_VALUES)) assert.ok(nftWords.has(w), `unexpected token ${JSON.stringify(w)} in ${JSON.stringify(line)}`);
        }
      }),
      { numRuns: 3000 },
    );
    // Both outcomes must actually be exercised for the property to mean anything.
    assert.ok(rendered > 100 && refused > 100, `rendered ${rendered}, refused ${refused}`);
  });

  test("the smuggled-arguments interface name is refused, naming the annotation", () => {
    const pod = parsePod({
      metadata: { annotations: { "sidecar.istio.io/status": "{}", [ANNOTATION.excludeInterfaces]: "eth0 -j ACCEPT" } },
      spec: { containers: [{ name: "istio-proxy" }] },
    });
    assert.throws(
      () => captureConfigFromPod(pod),
      (err: unknown) => {
        assert.ok(err instanceof CaptureConfigError);
        assert.match(err.message, /annotation traffic\.sidecar\.istio\.io\/excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
        return true;
      },
    );
  });
});
