// The cluster as dual-stack and as IPv6-only (test/controlplane/network.ts): the chart's
// node-runner starts and serves on each node's primary address (IPv6 on an IPv6-only node), a
// mesh pod on one node gets Istio's rules for its families (IPv6 rules only where Istio gives
// them: an IPv6-only pod, or a dual-stack pod whose proxy is dual-stack), and a pod on the other
// node reaching it over each family lands on its proxy exactly where those rules say. Names
// resolve through CoreDNS in the cluster's families.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, test } from "node:test";
import type * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { waitFor } from "../controlplane/harness.ts";
import type { IpFamily } from "../controlplane/network.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { missingRealNodeReason, onNode as onNodeOf, podPids, podRef, realNodeStackFixture, RUNNER_LABEL } from "../support/real-node-stack.ts";

const missing = missingRealNodeReason();
const NS = "shop";

for (const family of ["dual", "ipv6"] as const satisfies readonly IpFamily[]) {
  describe(
    `${family === "dual" ? "a dual-stack" : "an IPv6-only"} cluster of two real nodes [needs root, control plane, node binaries, istiod and images]`,
    skipUnlessCI(missing),
    () => {
      const s = realNodeStackFixture(missing, family, { family, namespaces: [NS] });
      const onNode = (index: number, pod: k8s.V1Pod): k8s.V1Pod => onNodeOf(s().nodes[index], pod);
      const inPod = (pod: k8s.V1Pod, argv: string[]): string =>
        execFileSync("nsenter", [`--net=/proc/${podPids(pod)[0] ?? 0}/ns/net`, "--", ...argv], { encoding: "utf8", timeout: 15_000 });

      test("the node-runners serve on each node's primary address; a mesh pod gets Istio's rules for its families; traffic from the other node over each family lands on its proxy", async () => {
        const { core, nodes, meshPod, appContainer, waitRunning, nodeOf } = s();
        const runners = (await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL })).items;
        for (const node of nodes) {
          const runner = runners.find((r) => r.spec?.nodeName === node.name);
          assert.equal(runner?.status?.hostIP, node.ip, `${node.name}'s runner on its primary address`);
          if (family === "ipv6") assert.match(nodeOf(runner).containerLog(podRef(runner), "node-runner"), /\[fd00:90::/);
        }
        // A proxy is dual-stack when its mesh config says so (ISTIO_DUAL_STACK in its environment).
        const dualStackProxy = { "proxy.istio.io/config": JSON.stringify({ proxyMetadata: { ISTIO_DUAL_STACK: "true" } }) };
        const servers =
          family === "dual"
            ? ([
                ["mesh-server", {}, false],
                ["mesh-server-ds", dualStackProxy, true],
              ] as const)
            : ([["mesh-server", {}, true]] as const);
        let clients = 0;
        for (const [name, annotations, v6Rules] of servers) {
          await core.createNamespacedPod({ namespace: NS, body: onNode(0, meshPod(name, appContainer("server"), { annotations })) });
          const server = await waitRunning(NS, name);
          const ips = server.status?.podIPs?.map((p) => p.ip) ?? [];
          assert.equal(ips.length, family === "dual" ? 2 : 1, JSON.stringify(ips));
          assert.equal((await core.readNamespacedPod({ namespace: NS, name })).metadata?.annotations?.[MARK.status], STATUS_INITIALIZED);
          // Istio writes IPv4 rules always, and IPv6 rules for an IPv6-only pod or a dual-stack proxy.
          assert.match(inPod(server, ["iptables-save"]), /-A ISTIO_INBOUND/, `${name}: IPv4 rules`);
          if (v6Rules) assert.match(inPod(server, ["ip6tables-save"]), /-A ISTIO_INBOUND/, `${name}: IPv6 rules`);
          else assert.doesNotMatch(inPod(server, ["ip6tables-save"]), /ISTIO/, `${name}: no IPv6 rules (its proxy listens on IPv4 only)`);

          for (const ip of ips) {
            const client = `client-${clients++}`;
            await core.createNamespacedPod({
              namespace: NS,
              body: onNode(1, { metadata: { name: client }, spec: { automountServiceAccountToken: false, containers: [appContainer("client", ip)] } }),
            });
            const running = await waitRunning(NS, client);
            assert.notEqual(running.spec?.nodeName, server.spec?.nodeName);
            const log = () => nodeOf(running).containerLog(podRef(running), "app");
            await waitFor(`${client} answered over ${ip}`, 20_000, () => log().includes("answer"));
            const intercepted = !ip.includes(":") || v6Rules;
            assert.match(
              log(),
              intercepted ? /answer inbound 15006/ : /answer app/,
              `${name} over ${ip}: ${intercepted ? "intercepted by its proxy" : "not intercepted, as Istio leaves it"}`,
            );
          }
        }
      });

      test("the kubernetes Service's name resolves through CoreDNS in the cluster's families", async () => {
        const { core } = s();
        const server = await core.readNamespacedPod({ namespace: NS, name: "mesh-server" });
        const dns = s().cluster.network.dnsServiceIp;
        const answer = inPod(server, [
          process.execPath,
          "-e",
          `const r = new (require("dns").promises.Resolver)(); r.setServers([${JSON.stringify(dns)}]); Promise.allSettled([r.resolve4("kubernetes.default.svc.cluster.local"), r.resolve6("kubernetes.default.svc.cluster.local")]).then((a) => console.log(a.map((x) => x.status === "fulfilled" ? x.value.join(",") : "-").join(" ")))`,
        ]).trim();
        assert.equal(answer, family === "ipv6" ? "- fd00:96::1" : "10.96.0.1 -");
      });
    },
  );
}
