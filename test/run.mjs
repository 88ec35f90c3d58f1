#!/usr/bin/env node
// Runs every *.test.ts in the repository with node's built-in test runner (through tsx), so
// that each run ends with its pass/fail/skip counts. Node 20's runner does not expand globs.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
const skipDirs = new Set(["node_modules", ".git", "dist"]);

function find(dir) {
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (!skipDirs.has(entry.name)) found.push(...find(path.join(dir, entry.name)));
    } else if (entry.name.endsWith(".test.ts")) {
      found.push(path.relative(root, path.join(dir, entry.name)));
    }
  }
  return found;
}

const filter = process.argv.slice(2);
const files = find(root)
  .filter((f) => filter.length === 0 || filter.some((part) => f.includes(part)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filter.join(" ")}`);
  process.exit(1);
}
const result = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", "--test-concurrency=1", ...files], {
  cwd: root,
  stdio: "inherit",
});
process.exit(result.status ?? 1);
