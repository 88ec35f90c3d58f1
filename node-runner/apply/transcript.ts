// The apply engine's conversation with the kernel, recorded and replayed: every command it runs
// in a netns (argv, stdin) and what came back. Recorded once from real namespaces (root, the
// apply tests), replayed without root, so that the engine's behaviour — apply, unchanged, drift
// repair, replace, remove — is pinned by golden transcripts and the kernel only confirms it
// (Istio's DependenciesStub plays this part for istio-iptables).
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig, type CaptureConfig } from "../../contract/capture-config.ts";
import { nsenterRunner, type CommandResult, type NetnsRunner, type NetnsTarget } from "./commands.ts";
import type { ApplyEngine, ApplyOutcome } from "./engine.ts";
import { commandOps } from "./namespace-ops.ts";
import type { RecordStore } from "./records.ts";
import { BACKEND, type BackendName } from "../backends.ts";

export interface TranscriptEntry {
  readonly argv: readonly string[];
  readonly stdin: string;
  readonly code: number;
  readonly stdout: string;
}

export interface Transcript {
  readonly backend: TranscriptBackend;
  /** The outcome of each step of the scenario, in order. */
  readonly outcomes: readonly string[];
  readonly commands: readonly TranscriptEntry[];
}

export type TranscriptBackend = BackendName;

/** Wraps a runner and keeps every call (for recording from real namespaces). */
export function recordingRunner(inner: NetnsRunner): { run: NetnsRunner; entries: TranscriptEntry[] } {
  const entries: TranscriptEntry[] = [];
  return {
    entries,
    run: async (netns, argv, input) => {
      const r = await inner(netns, argv, input);
      entries.push({ argv: [...argv], stdin: input ?? "", code: r.code, stdout: r.stdout });
      return r;
    },
  };
}

/** Answers from a transcript; any call other than the next recorded one fails the replay. */
export function replayRunner(entries: readonly TranscriptEntry[]): { run: NetnsRunner; done: () => void } {
  let next = 0;
  return {
    run: (_netns, argv, input): Promise<CommandResult> => {
      const want = entries[next];
      if (want === undefined) throw new Error(`unexpected command #${next + 1}: ${argv.join(" ")}`);
      const same = JSON.stringify([want.argv, want.stdin]) === JSON.stringify([argv, input ?? ""]);
      if (!same)
        throw new Error(`command #${next + 1} differs:\n  recorded: ${want.argv.join(" ")}\n${want.stdin}\n  now:      ${argv.join(" ")}\n${input ?? ""}`);
      next++;
      return Promise.resolve({ code: want.code, stdout: want.stdout, stderr: "" });
    },
    done: () => {
      if (next !== entries.length) throw new Error(`${entries.length - next} recorded command(s) were not run`);
    },
  };
}

/** An engine driven as the node-runner drives it, each call's commands through `run` (nsenter by default) in `netns`. */
export function drivenEngine(
  engine: ApplyEngine,
  run: NetnsRunner = nsenterRunner,
): {
  apply(netns: NetnsTarget, podUid: string, config: CaptureConfig): Promise<ApplyOutcome>;
  remove(netns: NetnsTarget, podUid: string): Promise<"removed" | "absent">;
} {
  return {
    apply: (netns, podUid, config) => engine.apply(commandOps(run, netns), netns.inode, podUid, config),
    remove: (netns, podUid) => engine.remove(commandOps(run, netns), netns.inode, podUid),
  };
}

const config = (overrides: object = {}): CaptureConfig => parseCaptureConfig({ ...DEFAULT_CAPTURE_CONFIG, ...overrides });

/**
 * The scenario the transcripts record: apply; the same again (unchanged); drift (a rule of the
 * runner's deleted from outside, by `drift`) and its repair; a different config (replace); back;
 * remove; remove again (absent).
 */
export async function transcriptScenario(
  backend: TranscriptBackend,
  run: NetnsRunner,
  records: RecordStore,
  netns: NetnsTarget,
  podUid: string,
  drift: () => void,
): Promise<string[]> {
  const applier = drivenEngine(BACKEND[backend].engine(records), run);
  const outcomes: string[] = [];
  outcomes.push((await applier.apply(netns, podUid, config())).result);
  outcomes.push((await applier.apply(netns, podUid, config())).result);
  drift();
  outcomes.push((await applier.apply(netns, podUid, config())).result);
  outcomes.push((await applier.apply(netns, podUid, config({ inboundInterceptionMode: "TPROXY", excludeInterfaces: "eth9", dropInvalid: true }))).result);
  outcomes.push((await applier.apply(netns, podUid, config())).result);
  outcomes.push(await applier.remove(netns, podUid));
  outcomes.push(await applier.remove(netns, podUid));
  return outcomes;
}
