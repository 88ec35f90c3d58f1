// The images' programs as `npm run build` makes them: each runs from a directory holding only
// the build and package.json (an image has no node_modules), and the licences of what was
// bundled travel with it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import type { Metafile } from "esbuild";
import { BIN } from "../test/controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../test/support/environment.ts";
import { buildPrograms, bundledPackageDirs, KUBECTL_PLUGIN } from "./build.ts";

const missingKubectl = existsSync(BIN.kubectl) ? undefined : "kubectl not built: run test/controlplane/build.sh";

const root = path.resolve(import.meta.dirname, "..");

test("bundledPackageDirs: the innermost package of each input, scoped or nested, once; the project's own files are none", () => {
  const input = { bytes: 1, imports: [] };
  const metafile: Metafile = {
    inputs: {
      "node-runner/main.ts": input,
      "node_modules/zod/v4/core/schemas.js": input,
      "node_modules/zod/v4/classic/external.js": input,
      "node_modules/@opentelemetry/api/build/src/index.js": input,
      "node_modules/body-parser/node_modules/iconv-lite/lib/index.js": input,
      "node_modules/express/index.js": input,
    },
    outputs: {},
  };
  assert.deepEqual(bundledPackageDirs(metafile), [
    "node_modules/@opentelemetry/api",
    "node_modules/body-parser/node_modules/iconv-lite",
    "node_modules/express",
    "node_modules/zod",
  ]);
});

test("buildPrograms refuses to empty a directory that holds something other than a build", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-build-"));
  try {
    writeFileSync(path.join(dir, "precious.txt"), "keep me");
    await assert.rejects(buildPrograms(dir), /holds files that are not a build/);
    assert.equal(readFileSync(path.join(dir, "precious.txt"), "utf8"), "keep me");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe("the built programs, in a directory of their own", () => {
  let dir = "";
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-build-"));
    // Module resolution would find a node_modules in any parent directory: there must be none.
    for (let d = path.dirname(dir); ; d = path.dirname(d)) {
      assert.ok(!existsSync(path.join(d, "node_modules")), `${d}/node_modules would hide a missing dependency`);
      if (d === path.dirname(d)) break;
    }
    await buildPrograms(dir);
    copyFileSync(path.join(root, "package.json"), path.join(dir, "package.json")); // "type": "module", as in the image
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const run = (program: string, args: string[] = []): { status: number | null; output: string } => {
    const r = spawnSync(process.execPath, [path.join(dir, program), ...args], {
      cwd: dir,
      encoding: "utf8",
      env: { PATH: process.env.PATH ?? "" },
      timeout: 30_000,
    });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  };

  test("pnc: its usage, exit 0", () => {
    const r = run("cli/pnc.js", ["--help"]);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /pnc plan/);
  });

  test(
    "kubectl podnet: the real kubectl finds the build's kubectl-podnet on PATH and runs pnc with the arguments after `podnet`",
    skipUnlessCI(missingKubectl),
    () => {
      assertAvailable(missingKubectl);
      const env = { PATH: `${path.join(dir, "cli")}:${path.dirname(process.execPath)}:/usr/bin:/bin`, HOME: dir };
      const list = spawnSync(BIN.kubectl, ["plugin", "list"], { encoding: "utf8", env });
      assert.match(list.stdout, new RegExp(path.join(dir, "cli", KUBECTL_PLUGIN)), list.stderr);
      const r = spawnSync(BIN.kubectl, ["podnet", "plan", path.join(root, "examples/injected-pod.yaml")], { encoding: "utf8", env, cwd: os.tmpdir() });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /-A ISTIO_OUTPUT/);
      // No kubeconfig: the cluster commands say so in one line (exit 64).
      const doctor = spawnSync(BIN.kubectl, ["podnet", "doctor"], { encoding: "utf8", env: { ...env, KUBECONFIG: "" }, cwd: os.tmpdir() });
      assert.deepEqual([doctor.status, doctor.stderr.trim()], [64, "pnc doctor: no kubeconfig: give --kubeconfig, set KUBECONFIG, or write ~/.kube/config"]);
    },
  );

  test("node-runner: every module loads; it stops at its first missing setting, exit 2", () => {
    const r = run("node-runner/main.js");
    assert.equal(r.status, 2, r.output);
    assert.match(r.output, /--node-name \(or NODE_NAME\) is required/);
    assert.doesNotMatch(r.output, /ERR_MODULE_NOT_FOUND|Cannot find/);
  });

  test("decision function: every module loads; outside a cluster it says it has no API server", () => {
    const r = run("functions/main.js");
    assert.match(r.output, /API server connection: not in a cluster/);
    assert.doesNotMatch(r.output, /ERR_MODULE_NOT_FOUND|Cannot find/);
  });

  test("THIRD-PARTY-NOTICES.txt names each bundled package with its licence text", () => {
    const notices = readFileSync(path.join(dir, "THIRD-PARTY-NOTICES.txt"), "utf8");
    for (const name of ["zod", "express", "pino", "prom-client", "cloudevents", "yaml"]) {
      const version = (JSON.parse(readFileSync(path.join(root, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
      assert.ok(notices.includes(`${name}@${version} (`), `${name}@${version} is not in the notices`);
    }
    assert.match(notices, /Permission is hereby granted, free of charge/); // the MIT licence's text, not only its name
  });
});
