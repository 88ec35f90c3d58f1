// The policy in force: loaded from a mounted file and reloaded when it changes. A new document
// that fails validation is refused with a log line and a metric; the last good policy stays.
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { watchMount } from "../lib/watch-mount.ts";
import { parsePolicy, PolicyError, type Policy } from "./policy.ts";
import { errorMessage } from "../lib/errors.ts";

export class PolicyStore {
  private policy: Policy;
  private unwatch: (() => void) | undefined;
  /** The last refused document: refused once, not again on every poll. */
  private refusedText: string | undefined;

  private constructor(
    private readonly file: string | undefined,
    private readonly controllerNamespace: string | undefined,
    private readonly log: Logger,
    private readonly onRefused: () => void,
    private readonly onLoaded: (policy: Policy) => void,
    initial: Policy,
  ) {
    this.policy = initial;
  }

  /** Load the policy (the built-in default when `file` is undefined); an invalid first document is fatal. */
  static async open(options: {
    file: string | undefined;
    controllerNamespace?: string;
    log: Logger;
    onRefused?: () => void;
    onLoaded?: (policy: Policy) => void;
  }): Promise<PolicyStore> {
    const text = options.file === undefined ? "" : await readFile(options.file, "utf8");
    const initial = parsePolicy(text, options.controllerNamespace);
    const store = new PolicyStore(
      options.file,
      options.controllerNamespace,
      options.log,
      options.onRefused ?? (() => undefined),
      options.onLoaded ?? (() => undefined),
      initial,
    );
    store.onLoaded(initial);
    options.log.info({ policy: initial.id, mode: initial.document.mode }, "policy loaded");
    return store;
  }

  get current(): Policy {
    return this.policy;
  }

  /** Watch the file's directory (ConfigMap mounts swap a symlink) and poll as a fallback. */
  watch(pollMs = 10_000): void {
    if (this.file === undefined) return;
    this.unwatch = watchMount(path.dirname(this.file), () => void this.reload(), { pollMs, log: this.log });
  }

  stop(): void {
    this.unwatch?.();
  }

  async reload(): Promise<void> {
    if (this.file === undefined) return;
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      this.log.error({ err: errorMessage(err), file: this.file }, "cannot read the policy; keeping the last good one");
      this.onRefused();
      return;
    }
    if (text === this.refusedText) return;
    try {
      const next = parsePolicy(text, this.controllerNamespace);
      this.refusedText = undefined;
      if (next.id === this.policy.id) return;
      this.log.info({ from: this.policy.id, to: next.id, mode: next.document.mode }, "policy reloaded");
      this.policy = next;
      this.onLoaded(next);
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      this.refusedText = text;
      this.log.error({ err: err.message, file: this.file, inForce: this.policy.id }, "policy refused; keeping the last good one");
      this.onRefused();
    }
  }
}
