// What the images run, built from the TypeScript sources: one ES module per program (the
// node-runner, the decision function, the `pnc` CLI) with its npm dependencies bundled in, so an
// image carries no node_modules, and the licences of what was bundled beside them.
//
// Why a bundle rather than tsc's file per module: V8 keeps every loaded module's source text in
// the heap, and for each script a stack trace touches, the offsets of its lines. The modules'
// sources with their indentation and comments were about 4 MiB of each component's heap and
// their line tables 1.4 MiB; without whitespace, in one file, the node-runner's peak RSS in the
// 200-pod burst is about 2 MiB lower and the function's 2–8 (docs/performance.md, "Memory"). Names are kept
// (stack traces stay readable); the source maps beside the bundles give file and line with
// `node --enable-source-maps`.
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { build, type Metafile } from "esbuild";

const root = path.resolve(import.meta.dirname, "..");
const DEFAULT_OUT = path.join(root, "dist");
const NOTICES = "THIRD-PARTY-NOTICES.txt";
/** Entry points, and where each lands in dist/ (the paths the manifests and images name). */
const COMPONENTS = {
  "node-runner/main": "node-runner/main.ts",
  "functions/main": "functions/main.ts",
} as const;
/**
 * The CLI is split where it imports dynamically: @kubernetes/client-node (7 MiB of source) is a
 * chunk of its own, read only by the commands that reach a cluster, so `pnc plan` stays as small
 * and quick as it was. The components stay one file each (above).
 */
const CLI = { "cli/pnc": "cli/pnc.ts" } as const;
/** The CLI under the name kubectl looks for its `podnet` plugin by. */
export const KUBECTL_PLUGIN = "kubectl-podnet";

/** The npm packages (their directories under node_modules) that a build took files from. */
export function bundledPackageDirs(metafile: Metafile): string[] {
  const dirs = new Set<string>();
  for (const input of Object.keys(metafile.inputs)) {
    // The innermost node_modules names the package: a/node_modules/b/node_modules/@s/c/x.js → .../@s/c
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m?.[1] !== undefined) dirs.add(m[1]);
  }
  return [...dirs].sort();
}

/** One notice per bundled package: its name, version, licence and licence text. */
function thirdPartyNotices(packageDirs: readonly string[]): string {
  return packageDirs
    .map((dir) => {
      const manifest = JSON.parse(readFileSync(path.join(root, dir, "package.json"), "utf8")) as { name?: string; version?: string; license?: string };
      const licenceFile = readdirSync(path.join(root, dir)).find((f) => /^(licen[cs]e|copying)(\.|$)/i.test(f));
      const text =
        licenceFile === undefined
          ? `(no licence file in the package; its package.json says: ${manifest.license ?? "nothing"})`
          : readFileSync(path.join(root, dir, licenceFile), "utf8").trim();
      return `${manifest.name ?? dir}@${manifest.version ?? "?"} (${manifest.license ?? "unknown"})\n\n${text}\n`;
    })
    .join(`\n${"-".repeat(78)}\n\n`);
}

/** Bundles the programs into `out` (emptied first); returns what it wrote, for the log. */
export async function buildPrograms(out: string): Promise<string> {
  // Emptied only when it is dist/, a build's or empty: an --outdir typed wrong must not cost a directory.
  if (out !== DEFAULT_OUT && existsSync(out) && readdirSync(out).length > 0 && !existsSync(path.join(out, NOTICES))) {
    throw new Error(`build: ${out} holds files that are not a build; give an empty directory`);
  }
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const options = {
    absWorkingDir: root,
    outdir: out,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    minifyWhitespace: true,
    sourcemap: "linked",
    metafile: true,
    logLevel: "warning",
    // Bundled CommonJS packages call require() for Node's own modules; an ES module has none.
    banner: { js: 'import { createRequire as __podnetCreateRequire } from "node:module"; const require = __podnetCreateRequire(import.meta.url);' },
  } as const;
  const results = [
    await build({ ...options, entryPoints: { ...COMPONENTS } }),
    await build({ ...options, entryPoints: { ...CLI }, splitting: true, chunkNames: "cli/chunks/[name]-[hash]" }),
  ];
  // The CLI runs as a program of its own (its source's hashbang asks for tsx, which a build needs
  // not), and as kubectl's plugin `kubectl podnet`: kubectl runs kubectl-podnet found on PATH.
  const cli = path.join(out, "cli", "pnc.js");
  writeFileSync(cli, readFileSync(cli, "utf8").replace(/^#!.*\n/, "#!/usr/bin/env node\n"));
  chmodSync(cli, 0o755);
  symlinkSync("pnc.js", path.join(out, "cli", KUBECTL_PLUGIN));
  const inputs = Object.assign({}, ...results.map((r) => r.metafile.inputs)) as Metafile["inputs"];
  const packages = bundledPackageDirs({ inputs, outputs: {} });
  writeFileSync(path.join(out, NOTICES), thirdPartyNotices(packages));
  const bytes = results
    .flatMap((r) => Object.entries(r.metafile.outputs))
    .filter(([file]) => file.endsWith(".js"))
    .map(([file, o]) => `${path.relative(out, path.join(root, file))} ${(o.bytes / 1024).toFixed(0)} KiB`);
  return `${bytes.join(", ")}; ${packages.length} npm packages bundled (${NOTICES})`;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === path.resolve(import.meta.filename)) {
  const { values } = parseArgs({ options: { outdir: { type: "string", default: DEFAULT_OUT } } });
  console.log(`build: ${await buildPrograms(path.resolve(values.outdir))}`);
}
