// Owner groups by name: iptables and nft resolve a name with getgrnam in the node-runner's own
// filesystem (the helper runs them there), so a name is usable only if that /etc/group has it.
// Checked before anything is applied: an unknown name is the pod's configuration, not a tool
// failure (422), and no tool's wording has to be read to tell.
import { readFileSync } from "node:fs";
import type { CaptureConfig } from "../contract/capture-config.ts";

export const GROUP_FILE = "/etc/group";

/** The group names a capture config uses that `groupFile` does not define (GIDs are always usable). */
export function unknownOwnerGroups(capture: CaptureConfig, groupFile = GROUP_FILE): string[] {
  const include = capture.ownerGroupsInclude === "*" ? [] : capture.ownerGroupsInclude;
  const names = [...include, ...capture.ownerGroupsExclude].filter((g) => !/^[0-9]+$/.test(g));
  if (names.length === 0) return [];
  let known: Set<string>;
  try {
    known = new Set(
      readFileSync(groupFile, "utf8")
        .split("\n")
        .map((line) => line.split(":", 1)[0] ?? ""),
    );
  } catch {
    known = new Set();
  }
  return [...new Set(names)].filter((name) => !known.has(name));
}
