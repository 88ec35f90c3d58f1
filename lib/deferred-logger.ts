// A child logger that pino builds only when something is logged through it. pino serialises a
// child's bindings when the child is made (about 10 µs); a skipped event or a verified request
// makes one or two and most log nothing at the level in force, yet they are made per event
// (docs/performance.md). Until the first line at an enabled level, level checks and disabled
// levels are answered from the parent, which the child inherits its level from.
import type { Bindings, Logger } from "pino";

const LEVEL_METHODS = new Set(["trace", "debug", "info", "warn", "error", "fatal"]);
const noop = (): void => {};

/** What a deferred child holds: the proxy's target. One handler serves them all (nothing is made per child but this). */
interface Deferred {
  readonly parent: Logger;
  readonly bindings: Bindings;
  child: Logger | undefined;
}

const made = (d: Deferred): Logger => (d.child ??= d.parent.child(d.bindings));

const handler: ProxyHandler<Deferred> = {
  get(d, key) {
    if (d.child === undefined) {
      if (key === "level" || key === "levelVal") return Reflect.get(d.parent, key, d.parent) as unknown;
      if (key === "isLevelEnabled") return d.parent.isLevelEnabled.bind(d.parent);
      if (typeof key === "string" && LEVEL_METHODS.has(key) && !d.parent.isLevelEnabled(key)) return noop;
    }
    const logger = made(d);
    const value = Reflect.get(logger, key, logger) as unknown;
    return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(logger) : value;
  },
  // A level set on it is the child's own, never the parent's.
  set(d, key, value) {
    return Reflect.set(made(d), key, value);
  },
};

export function deferredChild(parent: Logger, bindings: Bindings): Logger {
  return new Proxy<Deferred>({ parent, bindings, child: undefined }, handler) as unknown as Logger;
}
