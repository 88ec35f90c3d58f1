// The budget on a node full of the largest pods (issue 27): pods stay bound to a node while
// Failed or Pending, and any tenant can make them as large as etcd allows. The compiled
// node-runner, with its DaemonSet's V8 flags (a 48 MB heap), must check every one of them at
// once and stay up (it reads no pod: each check's answer is the pod's metadata), and the
// compiled function (its Service's 96 MB heap) must resync them; before the lists were
// streamed, both read whole lists (or pages of 500) into their heaps.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { buildPrograms } from "../../scripts/build.ts";
import { missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { deliver, pingEvent } from "../support/apiserversource.ts";
import { APPLY_PATH } from "../../contract/apply-request.ts";
import { applyRequestFor, manifestV8Flags, sendSigned, senderToken, signingKeyDirs, startFunction, startNodeRunner } from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { largestPod } from "../support/large-objects.ts";
import { metricSum } from "../support/metrics.ts";
import { peakRssMiB } from "../support/processes.ts";

const unavailable = missingBinariesReason();
const root = path.resolve(import.meta.dirname, "../..");
const NS = "crowded";
const NODE = "node-full";
/** A node's most pods (the kubelet's default maxPods). */
const PODS = 250;
/** Each pod a little under etcd's request limit (1.5 MiB), with the API server's own fields to come. */
const POD_BYTES = 1400 * 1024;

describe(
  "budget: the node-runner checks and the function lists a node of the largest pods within their heaps [needs control plane]",
  skipUnlessCI(unavailable),
  () => {
    let cp: ControlPlane;
    let dir: string;
    before(async () => {
      assertAvailable(unavailable);
      cp = await startControlPlane();
      dir = mkdtempSync(path.join(os.tmpdir(), "pnct-budget-"));
      await buildPrograms(path.join(root, "dist"));
      await cp.ensureNamespace(NS);
      const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
      const names = Array.from({ length: PODS }, (_, i) => `large-${i}`);
      // A few at a time: each is 1.4 MiB through the API server and etcd.
      for (let i = 0; i < names.length; i += 8) {
        await Promise.all(
          names.slice(i, i + 8).map((name) => {
            const pod = largestPod({
              name,
              namespace: NS,
              node: NODE,
              annotations: { "example.com/blob": "a".repeat(200 * 1024) },
              fill: "env",
              bytes: POD_BYTES,
            });
            // As a client creates it: no status, no server-set metadata; then its IP, as its kubelet reports it.
            const { resourceVersion: _version, uid: _uid, ...metadata } = pod.metadata;
            return core
              .createNamespacedPod({ namespace: NS, body: { metadata, spec: pod.spec } })
              .then(() =>
                core.patchNamespacedPodStatus(
                  { name, namespace: NS, body: { status: pod.status } },
                  k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
                ),
              );
          }),
        );
      }
    });
    after(async () => {
      await cp.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    test(`${PODS} pods of 1.4 MiB (350 MiB, 200 KiB of annotations each) bound to the node: all checked at once, the runner stays up`, async (t) => {
      const keys = signingKeyDirs(dir, "fn-1");
      const runner = await startNodeRunner(cp, {
        nodeName: NODE,
        publicKeysDir: keys.publicDir,
        stateDir: path.join(dir, "state"),
        cgroupRoot: dir,
        compiled: { nodeArgs: manifestV8Flags().nodeRunner },
      });
      try {
        assert.ok(
          manifestV8Flags().nodeRunner.some((f) => f.startsWith("--max-old-space-size=")),
          "the DaemonSet's heap limit is applied",
        );
        const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
        const listed = await core.listNamespacedPod({ namespace: NS, limit: PODS });
        const replies = await Promise.all(
          listed.items.map((pod) =>
            sendSigned(
              runner,
              APPLY_PATH,
              applyRequestFor(NODE, { namespace: NS, name: pod.metadata?.name ?? "", uid: pod.metadata?.uid ?? "", ips: ["10.251.0.10"] }),
              { keyid: "fn-1", privateKey: keys.signingKey.privateKey },
            ),
          ),
        );
        // Each passed its identity check (the API server's answer, metadata only) and then found no
        // sandbox on this machine: the node has none of these pods' processes.
        const reasons = new Map<string, number>();
        for (const r of replies) reasons.set(`${r.status} ${String(r.body.reason)}`, (reasons.get(`${r.status} ${String(r.body.reason)}`) ?? 0) + 1);
        assert.deepEqual([...reasons], [["503 netns-not-found", PODS]]);
        assert.equal(runner.process.exitCode, null, "still running");
        assert.doesNotMatch(runner.log(), /heap out of memory/);
        t.diagnostic(`node-runner peak RSS: ${peakRssMiB(runner.process.pid)} MiB`);
      } finally {
        await runner.stop();
      }
    });

    test(`the function's resync lists the same ${PODS} mesh pods within its Service's heap, and holds every one in its queue at once`, async (t) => {
      const keys = signingKeyDirs(dir, "fn-2");
      // Its node-runner does not answer (nothing listens on port 1): every pod stays queued, retried.
      const fn = await startFunction(cp, { signingKeysDir: keys.privateDir, nodeRunnerPort: 1, compiled: { nodeArgs: manifestV8Flags().function } });
      try {
        assert.ok(
          manifestV8Flags().function.some((f) => f.startsWith("--max-old-space-size=")),
          "the Service's heap limit is applied",
        );
        const res = await deliver(`${fn.url}/`, pingEvent(), await senderToken(cp, "PingSource"));
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.deepEqual(res.body.resync, { seen: PODS, queued: PODS, skipped: 0, failed: 0 });
        // The queue holds each pod's decision, not the pod: 250 pods of 1.4 MiB would not fit in 96 MB.
        assert.equal(metricSum(await fn.metrics(), "podnet_function_dispatch_queue_pods"), PODS);
        assert.equal(fn.process.exitCode, null, "still running");
        t.diagnostic(`function peak RSS: ${peakRssMiB(fn.process.pid)} MiB`);
      } finally {
        await fn.stop();
      }
    });
  },
);
