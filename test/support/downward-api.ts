// The downward API annotations file as kubelet writes it: one key="value" line per
// annotation, sorted by key, each value quoted as Go's strconv.Quote does.
import { renameSync, writeFileSync } from "node:fs";

export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (cp < 0x20 || cp === 0x7f) out += `\\x${cp.toString(16).padStart(2, "0")}`;
    else if (cp > 0xffff) out += `\\U${cp.toString(16).padStart(8, "0")}`;
    else if (cp > 0x7e) out += `\\u${cp.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

export function annotationsFileText(annotations: Readonly<Record<string, string>>): string {
  return `${Object.keys(annotations)
    .sort()
    .map((k) => `${k}=${goQuote(annotations[k] ?? "")}`)
    .join("\n")}\n`;
}

/** Write it atomically (kubelet swaps a symlink), readable by the waiter's UID. */
export function writeAnnotationsFile(file: string, annotations: Readonly<Record<string, string>>): void {
  writeFileSync(`${file}.tmp`, annotationsFileText(annotations), { mode: 0o644 });
  renameSync(`${file}.tmp`, file);
}
