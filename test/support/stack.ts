// The whole system on one machine: the real control plane (with RBAC and the admission
// policy), a node-runner for the simulated node, the decision function, Knative's
// ApiServerSource adapter, and real test pods as the node's sandboxes. Used by the end-to-end
// tests, the demo and the latency benchmark.
import { writeFileSync } from "node:fs";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { startControlPlane, type Adapter, type ControlPlane } from "../controlplane/harness.ts";
import { FUNCTION_AUDIENCE, manifestV8Flags, scratchDir, senderToken, signingKeyDirs, startFunction, startNodeRunner, type Component } from "./components.ts";
import { createMeshPod, type MeshPod } from "./mesh-pods.ts";
import { TestPods } from "./test-pods.ts";

export const STACK_NODE = "node-a";

export interface Stack {
  readonly cp: ControlPlane;
  readonly pods: TestPods;
  readonly core: k8s.CoreV1Api;
  readonly keys: ReturnType<typeof signingKeyDirs>;
  readonly policyFile: string;
  runner: Component;
  fn: Component;
  adapter: Adapter | undefined;
  createPod(options: { namespace: string; name: string; annotations?: Record<string, string>; injected?: boolean; hostNetwork?: boolean }): Promise<MeshPod>;
  startAdapter(): Promise<void>;
  /** Bearer tokens of the sources' OIDC identities, for events sent by hand. */
  readonly tokens: { readonly pods: string; readonly resync: string };
  restartNodeRunner(): Promise<void>;
  stop(): Promise<void>;
}

export async function startStack(
  options: {
    policy?: string;
    log?: (line: string) => void;
    withAdapter?: boolean;
    functionEnv?: NodeJS.ProcessEnv;
    /** Compiled JavaScript (dist/, built first) with the manifests' V8 flags, as the images run: benchmarks. */
    compiled?: boolean;
  } = {},
): Promise<Stack> {
  const log = options.log ?? ((): void => undefined);
  const cp = await startControlPlane({ log });
  const scratch = scratchDir("stack");
  const pods = TestPods.create();
  const flags = manifestV8Flags();
  const runnerBuild = options.compiled === true ? { compiled: { nodeArgs: flags.nodeRunner } } : {};
  try {
    const keys = signingKeyDirs(scratch.dir);
    const policyFile = path.join(scratch.dir, "policy.yaml");
    writeFileSync(policyFile, options.policy ?? "mode: enforce\n");
    const stateDir = path.join(scratch.dir, "state");
    log("node-runner starting");
    const runner = await startNodeRunner(cp, { nodeName: STACK_NODE, publicKeysDir: keys.publicDir, stateDir, cgroupRoot: pods.cgroupRoot, ...runnerBuild });
    log("decision function starting");
    const fn = await startFunction(cp, {
      signingKeysDir: keys.privateDir,
      policyFile,
      nodeRunnerPort: runner.port,
      ...(options.functionEnv === undefined ? {} : { env: options.functionEnv }),
      ...(options.compiled === true ? { compiled: { nodeArgs: flags.function } } : {}),
    });
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const tokens = { pods: await senderToken(cp, "ApiServerSource"), resync: await senderToken(cp, "PingSource") };
    const stack: Stack = {
      tokens,
      cp,
      pods,
      core,
      keys,
      policyFile,
      runner,
      fn,
      adapter: undefined,
      createPod: async (o) => {
        await cp.ensureNamespace(o.namespace);
        return createMeshPod(core, pods, { ...o, nodeName: STACK_NODE });
      },
      startAdapter: async () => {
        stack.adapter = await cp.startAdapter({ sink: `${stack.fn.url}/`, labelSelector: "security.istio.io/tlsMode=istio", audience: FUNCTION_AUDIENCE });
      },
      restartNodeRunner: async () => {
        await stack.runner.stop();
        stack.runner = await startNodeRunner(cp, {
          nodeName: STACK_NODE,
          publicKeysDir: keys.publicDir,
          stateDir,
          cgroupRoot: pods.cgroupRoot,
          port: stack.runner.port,
          ...runnerBuild,
        });
      },
      stop: async () => {
        await stack.adapter?.stop();
        await stack.fn.stop();
        await stack.runner.stop();
        await pods.destroy();
        await cp.stop();
        scratch.remove();
      },
    };
    if (options.withAdapter !== false) await stack.startAdapter();
    return stack;
  } catch (err) {
    await pods.destroy();
    await cp.stop();
    scratch.remove();
    throw err;
  }
}
