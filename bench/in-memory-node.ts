// The node side of a node-runner answered from memory, for the benchmarks whose node-runners are
// stand-ins (bench:function, bench:scale): every pod's netns is found, open and programmed at
// once. `digest`: the rules digest an apply reports (default: a fixed one).
import type { CaptureConfig } from "../contract/capture-config.ts";
import type { NodeRunnerDeps } from "../node-runner/server.ts";

export function inMemoryNode(
  digest: (config: CaptureConfig) => string = () => "0123456789abcdef",
): Pick<NodeRunnerDeps, "resolveNetns" | "stillInhabited" | "openNetns" | "applierFor"> {
  return {
    resolveNetns: () => Promise.resolve({ found: true, netns: { inode: "4026532000", path: "/proc/1/ns/net", pid: 1, processes: 1, hostInode: "4026531840" } }),
    stillInhabited: () => true,
    openNetns: (netns) => ({ fd: -1, inode: netns.inode, legacyTables: () => false, close: () => undefined }),
    applierFor: () =>
      Promise.resolve({
        untouched: false,
        digest,
        apply: (config) => Promise.resolve({ result: "applied" as const, digest: digest(config) }),
        remove: () => Promise.resolve("absent" as const),
      }),
  };
}
