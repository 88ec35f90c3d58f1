// A child logger that pino builds only when something is logged through it. pino serialises a
// child's bindings when the child is made (about 10 µs); a skipped event or a verified request
// makes one or two and most log nothing at the level in force, yet they are made per event
// (docs/performance.md). Until the first line at an enabled level, level checks and disabled
// levels are answered from the parent, which the child inherits its level from.
import type { Bindings, Logger } from "pino";

const LEVEL_METHODS = new Set(["trace", "debug", "info", "warn", "error", "fatal"]);
const noop = (): void => {};

export function deferredChild(parent: Logger, bindings: Bindings): Logger {
  let child: Logger | undefined;
  const made = (): Logger => (child ??= parent.child(bindings));
  return new Proxy(parent, {
    get(target, key) {
      if (child === undefined) {
        if (key === "level" || key === "levelVal") return Reflect.get(target, key, target) as unknown;
        if (key === "isLevelEnabled") return target.isLevelEnabled.bind(target);
        if (typeof key === "string" && LEVEL_METHODS.has(key) && !target.isLevelEnabled(key)) return noop;
      }
      const logger = made();
      const value = Reflect.get(logger, key, logger) as unknown;
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(logger) : value;
    },
    // A level set on it is the child's own, never the parent's.
    set(_target, key, value) {
      return Reflect.set(made(), key, value);
    },
  });
}
