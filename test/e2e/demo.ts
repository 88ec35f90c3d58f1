// npm run demo — the whole system on this machine: a real kube-apiserver, Knative's real
// ApiServerSource adapter, the decision function, a node-runner, and real network namespaces
// as pods. Creates mesh and non-mesh pods and shows, for each, the decision and its reason,
// the rules applied, the mark, the waiter's result and a traffic proof. Needs root.
import { execFileSync, spawnSync } from "node:child_process";
import path from "node:path";
import { MARK } from "../../contract/mark.ts";
import { decide } from "../../functions/decision.ts";
import { parsePod } from "../../functions/pod.ts";
import { parsePolicy } from "../../functions/policy.ts";
import { missingBinariesReason } from "../controlplane/harness.ts";
import { startStack, type Stack } from "../support/stack.ts";
import { testPodsUnavailableReason } from "../support/test-pods.ts";
import { connectFrom, startListener } from "../support/traffic.ts";

const root = path.resolve(import.meta.dirname, "../..");
const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

const cannot = testPodsUnavailableReason();
if (cannot !== undefined) {
  const asRoot = process.getuid?.() === 0 ? "" : " Run it as root (sudo npm run demo).";
  say(`demo: ${cannot}.${asRoot} \`npm run pnc -- plan examples/injected-pod.yaml\` works without.`);
  process.exit(1);
}
if (missingBinariesReason() !== undefined) {
  say("demo: building the control plane first (etcd, kube-apiserver, Knative's adapter; about 12 minutes on 2 cores, once)");
  const build = spawnSync(path.join(root, "test/controlplane/build.sh"), { stdio: "inherit" });
  if (build.status !== 0) process.exit(1);
}

let stack: Stack | undefined;
let stopping = false;
async function cleanup(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    say("\ncleaning up: processes, namespaces, cgroups");
    await stack?.stop().catch(() => undefined);
  }
  process.exit(code);
}
process.on("SIGINT", () => void cleanup(130));
process.on("SIGTERM", () => void cleanup(143));

const policyText = "mode: enforce\nrevision: demo\n";

interface Scenario {
  readonly namespace: string;
  readonly name: string;
  readonly what: string;
  readonly annotations?: Record<string, string>;
  readonly injected?: boolean;
  readonly hostNetwork?: boolean;
}

const scenarios: Scenario[] = [
  { namespace: "shop", name: "web-1", what: "mesh pod (REDIRECT)" },
  {
    namespace: "shop",
    name: "ledger-0",
    what: "mesh pod (TPROXY, one port excluded)",
    annotations: { "sidecar.istio.io/interceptionMode": "TPROXY", "traffic.sidecar.istio.io/excludeInboundPorts": "9901" },
  },
  { namespace: "shop", name: "batch-7", what: "not in the mesh", injected: false },
  { namespace: "shop", name: "node-agent", what: "hostNetwork pod", hostNetwork: true },
  { namespace: "kube-system", name: "coredns-x", what: "excluded namespace" },
  { namespace: "shop", name: "sneaky", what: "hostile annotation", annotations: { "traffic.sidecar.istio.io/excludeInterfaces": "eth0 -j ACCEPT" } },
];

try {
  const t0 = Date.now();
  stack = await startStack({
    policy: policyText,
    log: (l) => {
      say(`  · ${l}`);
    },
  });
  say(
    `local cluster up in ${((Date.now() - t0) / 1000).toFixed(1)} s: kube-apiserver ${stack.cp.server}, node-runner :${stack.runner.port}, function :${stack.fn.port}\n`,
  );
  const policy = parsePolicy(policyText, "podnet-system");

  for (const s of scenarios) {
    say(`── ${s.namespace}/${s.name}: ${s.what}`);
    const pod = await stack.createPod({
      namespace: s.namespace,
      name: s.name,
      ...(s.annotations === undefined ? {} : { annotations: s.annotations }),
      ...(s.injected === undefined ? {} : { injected: s.injected }),
      ...(s.hostNetwork === undefined ? {} : { hostNetwork: s.hostNetwork }),
    });
    const apiPod = parsePod(JSON.parse(JSON.stringify(await stack.core.readNamespacedPod({ namespace: s.namespace, name: s.name }))) as unknown);
    const decision = decide({ pod: apiPod, policy });
    say(`   decision: ${decision.action} (${decision.reason})${decision.action === "error" ? `\n     ${decision.detail}` : ""}`);

    if (decision.action !== "apply") {
      await new Promise((r) => setTimeout(r, 1500));
      // A hostNetwork pod has no namespace of its own: the node's is the one that must stay untouched.
      const rules = s.hostNetwork === true ? execFileSync("iptables-save", { encoding: "utf8" }) : pod.sandbox.exec(["iptables-save"]);
      const where = s.hostNetwork === true ? "the node's namespace (the pod's)" : "its namespace";
      say(`   rules in ${where}: ${/ISTIO/.test(rules) ? "PRESENT (unexpected!)" : "none — left alone"}`);
      if (decision.action === "error") {
        const events = await stack.core.listNamespacedEvent({ namespace: s.namespace });
        const e = events.items.find((x) => x.involvedObject.uid === pod.uid && x.reason === "NetworkInitFailed");
        say(`   Event: ${e === undefined ? "(none yet)" : `${e.type ?? ""} ${e.reason ?? ""}: ${(e.message ?? "").slice(0, 140)}`}`);
      }
      say("");
      continue;
    }

    const created = Date.now();
    let annotations: Record<string, string> = {};
    while (Date.now() - created < 15_000) {
      annotations = (await stack.core.readNamespacedPod({ namespace: s.namespace, name: s.name })).metadata?.annotations ?? {};
      if (annotations[MARK.status] === "initialized") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    say(
      `   mark after ${Date.now() - created} ms: status=${annotations[MARK.status] ?? "-"} netns=${annotations[MARK.netns] ?? "-"} rules=${annotations[MARK.rules] ?? "-"}`,
    );
    const rules = pod.sandbox
      .exec(["iptables-save"])
      .split("\n")
      .filter((l) => l.includes("ISTIO"));
    say(`   rules: ${rules.length} lines, e.g.`);
    for (const l of rules.filter((r) => /^-A (OUTPUT|PREROUTING)/.test(r)).slice(0, 4)) say(`     ${l}`);
    const envoy = [await startListener(pod.sandbox, 15001, "envoy-outbound"), await startListener(pod.sandbox, 15006, "envoy-inbound")];
    say(
      `   traffic: app (uid 1000) → 203.0.113.9:443 lands on ${connectFrom(pod.sandbox, "203.0.113.9", 443, 1000)}; proxy (uid 1337) → same: ${connectFrom(pod.sandbox, "203.0.113.9", 443, 1337)} (not captured)`,
    );
    for (const l of envoy) l.kill();
    say("");
  }
  say(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s.`);
  await cleanup(0);
} catch (err) {
  say(`demo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  await cleanup(1);
}
