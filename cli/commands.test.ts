import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { parse as parseYaml } from "yaml";
import { EXIT, runPnc, type Io } from "./commands.ts";

const root = path.resolve(import.meta.dirname, "..");
const example = (name: string): string => path.join(root, "examples", name);

function run(argv: string[], stdin = ""): { code: number; out: string; err: string } {
  let out = "";
  let err = "";
  const io: Io = {
    stdout: (t) => (out += t),
    stderr: (t) => (err += t),
    readFile: (p) => readFileSync(p, "utf8"),
    readStdin: () => stdin,
    writeFile: () => undefined,
  };
  const code = runPnc(argv, io);
  return { code, out, err };
}

describe("pnc plan", () => {
  test("an injected pod gets Istio's default rule set", () => {
    const { code, out, err } = run(["plan", example("injected-pod.yaml")]);
    assert.equal(code, EXIT.ok, err);
    assert.match(out, /^# pod shop\/web-1: iptables-restore --noflush \(IPv4\)\n\* nat\n/);
    assert.match(out, /-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n/);
    assert.match(out, /-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n# rules [0-9a-f]{16}: the mark's .*\n$/);
    assert.doesNotMatch(out, /ip6tables/);
  });

  test("TPROXY dual-stack pod: both families and the route steps", () => {
    const { code, out } = run(["plan", example("tproxy-dual-stack-pod.yaml")]);
    assert.equal(code, EXIT.ok);
    assert.match(out, /\(IPv4\)\n\* mangle\n/);
    assert.match(out, /\(IPv6\)\n\* mangle\n/);
    assert.match(out, /ip -4 rule add fwmark 1337 lookup 133\n/);
    assert.match(out, /ip -6 route add local default dev lo table 133\n/);
    const v4only = run(["plan", example("tproxy-dual-stack-pod.yaml"), "--family", "v4"]).out;
    assert.doesNotMatch(v4only, /IPv6|ip -6/);
  });

  test("--family v6 previews IPv6 rules for an IPv4 pod", () => {
    const { out } = run(["plan", example("injected-pod.yaml"), "--family", "v6"]);
    assert.match(out, /\(IPv6\)\n/);
    assert.match(out, /-s ::6\/128/);
    assert.doesNotMatch(out, /\(IPv4\)/);
  });

  test("--backend nftables prints one transaction", () => {
    const { code, out } = run(["plan", example("injected-pod.yaml"), "--backend", "nftables"]);
    assert.equal(code, EXIT.ok);
    assert.match(out, /add table inet istio-proxy-nat\nflush table inet istio-proxy-nat\n/);
  });

  test("the rules digest the mark and the Event will carry, per backend", () => {
    for (const backend of ["iptables-nft", "iptables-legacy", "nftables"]) {
      const { code, out } = run(["plan", example("injected-pod.yaml"), "--backend", backend]);
      assert.equal(code, EXIT.ok);
      const digest = new RegExp(`\\n# rules ([0-9a-f]{16}): the mark's podnet\\.github\\.io/rules once applied with ${backend}\\n$`).exec(out)?.[1];
      assert.ok(digest !== undefined, out);
      assert.equal(
        (JSON.parse(run(["plan", example("injected-pod.yaml"), "--backend", backend, "--json"]).out) as { rulesDigest: string }).rulesDigest,
        digest,
      );
    }
  });

  test("--json is machine-readable", () => {
    const { out } = run(["plan", example("injected-pod.yaml"), "--json"]);
    const parsed = JSON.parse(out) as { pod: string; capture: { inboundPortsExclude: string }; iptables: { v4: string; v6: null } };
    assert.equal(parsed.pod, "shop/web-1");
    assert.equal(parsed.capture.inboundPortsExclude, "15020,15021,15090");
    assert.match(parsed.iptables.v4, /^\* nat\n/);
    assert.equal(parsed.iptables.v6, null);
  });

  test("invalid annotations: readable error naming each annotation, exit 2, no rules printed", () => {
    const { code, out, err } = run(["plan", example("invalid-annotations-pod.yaml")]);
    assert.equal(code, EXIT.invalidCapture);
    assert.equal(out, "");
    assert.match(err, /annotation traffic\.sidecar\.istio\.io\/excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
    assert.match(err, /annotation traffic\.sidecar\.istio\.io\/excludeOutboundPorts: "70000" is invalid/);
    assert.match(err, /annotation traffic\.sidecar\.istio\.io\/excludeOutboundIPRanges: "10\.96\.0\.1" is invalid: a CIDR needs a prefix length/);
  });

  test("reads JSON from stdin", () => {
    const pod = { apiVersion: "v1", kind: "Pod", metadata: { name: "j", namespace: "x" }, spec: { containers: [{ name: "istio-proxy" }] } };
    const { code, out } = run(["plan", "-"], JSON.stringify(pod));
    assert.equal(code, EXIT.ok);
    assert.match(out, /# pod x\/j/);
  });

  test("bad input and usage errors have their own exit codes", () => {
    assert.equal(run(["plan", "/nonexistent/pod.yaml"]).code, EXIT.badInput);
    assert.equal(run(["plan", "-"], "kind: Service\nmetadata: {}\n").code, EXIT.badInput);
    assert.equal(run(["plan", "-"], "a: [\n").code, EXIT.badInput);
    assert.equal(run(["plan", "-"], "---\nmetadata: {}\n---\nmetadata: {}\n").code, EXIT.badInput);
    assert.equal(run(["plan", "-"], "").code, EXIT.badInput);
    assert.equal(run(["plan", "-"], "metadata: 5\n").code, EXIT.badInput);
    assert.equal(run(["plan"]).code, EXIT.usage);
    assert.equal(run(["plan", "a", "b"]).code, EXIT.usage);
    assert.equal(run(["plan", "-", "--backend", "pf"]).code, EXIT.usage);
    assert.equal(run(["plan", "-", "--family", "v5"]).code, EXIT.usage);
    assert.equal(run(["plan", "-", "--bogus"]).code, EXIT.usage);
    assert.equal(run(["frobnicate"]).code, EXIT.usage);
    assert.equal(run([]).code, EXIT.usage);
    assert.equal(run(["help"]).code, EXIT.ok);
  });

  test("property: any text on stdin ends in ok, invalid-capture or bad-input, never an internal error", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 200 }),
          fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
          fc
            .record({ metadata: fc.record({ annotations: fc.dictionary(fc.string({ maxLength: 60 }), fc.string({ unit: "binary", maxLength: 30 })) }) })
            .map((v) => JSON.stringify(v)),
        ),
        (text) => {
          const { code, err } = run(["plan", "-"], text);
          assert.ok([EXIT.ok, EXIT.invalidCapture, EXIT.badInput].includes(code as 0 | 2 | 3), `exit ${code}: ${err}`);
        },
      ),
      { numRuns: 1500 },
    );
  });

  test("the real CLI process: exit codes and output streams", () => {
    const cli = path.join(root, "cli", "pnc.ts");
    const ok = execFileSync(process.execPath, ["--import", "tsx", cli, "plan", example("injected-pod.yaml")], { cwd: root, encoding: "utf8" });
    assert.match(ok, /^# pod shop\/web-1/);
    const bad = spawnSync(process.execPath, ["--import", "tsx", cli, "plan", example("invalid-annotations-pod.yaml")], { cwd: root, encoding: "utf8" });
    assert.equal(bad.status, EXIT.invalidCapture);
    assert.equal(bad.stdout, "");
    assert.match(bad.stderr, /excludeInterfaces/);
  });

  test("the real CLI process: keys generate creates the output folder (private file 0600)", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-keys-"));
    try {
      const out = path.join(dir, "not", "there", "podnet-keys");
      execFileSync(process.execPath, ["--import", "tsx", path.join(root, "cli", "pnc.ts"), "keys", "generate", "--out", out], { cwd: root, encoding: "utf8" });
      assert.equal(statSync(path.join(out, "signing-keys.secret.yaml")).mode & 0o777, 0o600);
      assert.match(readFileSync(path.join(out, "public-keys.configmap.yaml"), "utf8"), /kind: ConfigMap/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("pnc decide: apply, skip and error with their reasons", () => {
    const apply = run(["decide", example("injected-pod.yaml")]);
    assert.equal(apply.code, EXIT.ok);
    assert.match(apply.out, /^apply \(needs-rules\): pod shop\/web-1 on node worker-3 \(192\.168\.10\.13\); policy sha256:[0-9a-f]{12}, enforce\n$/);
    const withPolicy = JSON.parse(run(["decide", example("tproxy-dual-stack-pod.yaml"), "--policy", example("policy.yaml"), "--json"]).out) as {
      policy: string;
      capture: { outboundIPRangesExclude: string };
    };
    assert.match(withPolicy.policy, /^example-1@sha256:/);
    assert.equal(withPolicy.capture.outboundIPRangesExclude, "169.254.169.254/32");
    const refused = run(["decide", example("invalid-annotations-pod.yaml")]);
    assert.equal(refused.code, EXIT.invalidCapture);
    assert.match(refused.err, /excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
    const ns = 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    istio-pod-network-controller/initialize: "true"\n';
    const plainPod = JSON.stringify({
      kind: "Pod",
      metadata: { name: "p", namespace: "shop" },
      spec: { nodeName: "n1", containers: [{ name: "app" }] },
      status: { hostIP: "10.0.0.1", podIPs: [{ ip: "10.1.0.2" }] },
    });
    assert.match(run(["decide", "-"], plainPod).out, /^skip \(not-sidecar-injected\)/);
    let out = "";
    const code = runPnc(["decide", "-", "--namespace", "/ns.yaml"], {
      stdout: (t) => (out += t),
      stderr: () => undefined,
      readFile: () => ns,
      readStdin: () => plainPod,
      writeFile: () => undefined,
    });
    assert.equal(code, EXIT.ok);
    assert.match(out, /^apply \(needs-rules\)/);
    assert.equal(run(["decide", example("injected-pod.yaml"), "--policy", example("injected-pod.yaml")]).code, EXIT.invalidPolicy);
  });

  test("pnc decide --policy takes the cluster's ConfigMap as kubectl prints it (its policy.yaml), or refuses one without it", () => {
    const configMap = path.join(root, "config/function/policy.configmap.yaml");
    const inCluster = JSON.parse(run(["decide", example("injected-pod.yaml"), "--policy", configMap, "--json"]).out) as { policy: string; mode: string };
    const document = /policy\.yaml: \|\n([\s\S]*)$/.exec(readFileSync(configMap, "utf8"))?.[1]?.replace(/^ {4}/gm, "") ?? "";
    let fromDocument = "";
    runPnc(["decide", example("injected-pod.yaml"), "--policy", "/policy.yaml", "--json"], {
      stdout: (t) => (fromDocument += t),
      stderr: () => undefined,
      readFile: (p) => (p === "/policy.yaml" ? document : readFileSync(p, "utf8")),
      readStdin: () => "",
      writeFile: () => undefined,
    });
    assert.equal(inCluster.policy, (JSON.parse(fromDocument) as { policy: string }).policy, "the same policy as its document");
    assert.equal(inCluster.mode, "enforce");
    let err = "";
    const code = runPnc(["decide", example("injected-pod.yaml"), "--policy", "/cm.yaml"], {
      stdout: () => undefined,
      stderr: (t) => (err += t),
      readFile: (p) => (p === "/cm.yaml" ? "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: other }\ndata: { other.yaml: x }\n" : readFileSync(p, "utf8")),
      readStdin: () => "",
      writeFile: () => undefined,
    });
    assert.equal(code, EXIT.badInput);
    assert.match(err, /a ConfigMap without data\.policy\.yaml/);
  });
});

describe("pnc plan: Istio parity", () => {
  const podWith = (annotations: Record<string, string>, env: object[] = []) =>
    JSON.stringify({
      metadata: { name: "p", namespace: "n", annotations: { "sidecar.istio.io/status": "{}", ...annotations } },
      spec: { containers: [{ name: "app" }, { name: "istio-proxy", env }] },
      status: { podIPs: [{ ip: "10.0.0.2" }] },
    });

  test("a pod Istio refuses (an empty list item) exits 2 naming the annotation, and prints no rules", () => {
    const { code, out, err } = run(["plan", "-"], podWith({ "traffic.sidecar.istio.io/excludeOutboundPorts": "80," }));
    assert.equal(code, EXIT.invalidCapture);
    assert.equal(out, "");
    assert.match(err, /annotation traffic\.sidecar\.istio\.io\/excludeOutboundPorts: "80," is invalid: .*empty item/);
  });

  test("a non-boolean env flag is read as false, with a warning on stderr", () => {
    const { code, out, err } = run(["plan", "-"], podWith({}, [{ name: "ISTIO_META_DNS_CAPTURE", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } }]));
    assert.equal(code, EXIT.ok, err);
    assert.doesNotMatch(out, /15053/);
    assert.match(err, /warning: istio-proxy env ISTIO_META_DNS_CAPTURE: "\(valueFrom\)" is set with valueFrom/);
  });
});

describe("pnc istio-template", () => {
  const template = path.join(root, "config/istio/podnet-injection-template.yaml");

  test("the template with the install's waiter image as the default; everything else as written", () => {
    const { code, out, err } = run(["istio-template", "--template", template, "--waiter-image", "registry.example:5000/team/podnet-waiter:0.1.0"]);
    assert.equal(code, EXIT.ok, err);
    const original = readFileSync(template, "utf8");
    assert.equal(out, original.replace("`ghcr.io/podnet/waiter:0.1.0`", "`registry.example:5000/team/podnet-waiter:0.1.0`"));
    const digest = `ghcr.io/podnet/waiter@sha256:${"a".repeat(64)}`;
    assert.match(run(["istio-template", "--template", template, "--waiter-image", digest]).out, new RegExp(`\`${digest.replace(/[.]/g, "\\.")}\``));
  });

  test("without --waiter-image, the template as written", () => {
    assert.equal(run(["istio-template", "--template", template]).out, readFileSync(template, "utf8"));
  });

  test("--istio-operator: an IstioOperator overlay with the istiod values' settings, CNI mode as a component, and the template", () => {
    const values = path.join(root, "config/istio/istiod-values.yaml");
    const r = run(["istio-template", "--template", template, "--values", values, "--istio-operator", "--waiter-image", "registry.example/w:1"]);
    assert.equal(r.code, EXIT.ok, r.err);
    const overlay = parseYaml(r.out) as {
      kind: string;
      spec: { components: { cni: { enabled: boolean } }; values: { sidecarInjectorWebhook: { defaultTemplates: string[]; templates: { podnet: string } } } };
    };
    assert.equal(overlay.kind, "IstioOperator");
    assert.equal(overlay.spec.components.cni.enabled, false);
    assert.deepEqual(overlay.spec.values.sidecarInjectorWebhook.defaultTemplates, ["sidecar", "podnet"]);
    assert.match(overlay.spec.values.sidecarInjectorWebhook.templates.podnet, /`registry\.example\/w:1`/);
    const wrong = run(["istio-template", "--template", template, "--values", example("injected-pod.yaml"), "--istio-operator"]);
    assert.deepEqual([wrong.code, wrong.out], [EXIT.badInput, ""]);
    assert.match(wrong.err, /do not set cni.enabled/);
  });

  test("refused, with nothing printed: a file that is not the template, an unreadable file", () => {
    const other = run(["istio-template", "--template", example("injected-pod.yaml"), "--waiter-image", "a/b:1"]);
    assert.deepEqual([other.code, other.out], [EXIT.badInput, ""]);
    assert.match(other.err, /0 times, not once/);
    assert.equal(run(["istio-template", "--template", "/nonexistent", "--waiter-image", "a/b:1"]).code, EXIT.badInput);
  });

  test("property: any image text is written as given or refused with nothing printed; nothing can break out of the template's quotes", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 80 }), fc.constantFrom("a/b:1`}}{{", "x` `y", "ghcr.io/p/w:1 }}", "ghcr.io/p/w:1\n- name: x")), (image) => {
        const r = run(["istio-template", "--template", template, "--waiter-image", image]);
        if (r.code === EXIT.ok) {
          assert.ok(!/[`{}"'\s\\]/.test(image), image);
          assert.ok(r.out.includes(`\`${image}\``));
        } else {
          // A value that starts with "-" reads as an option: a usage error.
          assert.ok(r.code === EXIT.badInput || (r.code === EXIT.usage && image.startsWith("-")), `${r.code}: ${image}`);
          assert.equal(r.out, "");
        }
      }),
      { numRuns: 1000 },
    );
  });
});
