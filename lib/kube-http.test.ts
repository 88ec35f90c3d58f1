// The node-runner's kubeconfig and in-cluster configuration: what it accepts, and a clear
// KubeconfigError for anything else.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import fc from "fast-check";
import { ApiError, inClusterConnection, KubeconfigError, kubeconfigConnection, ListItemSplitter } from "./kube-http.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-kubeconfig-"));
const write = (name: string, text: string): string => {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
};
const kubeconfig = (user: string) => `apiVersion: v1
kind: Config
current-context: local
clusters:
  - name: local
    cluster:
      server: https://127.0.0.1:6443
      certificate-authority-data: ${Buffer.from("CA PEM").toString("base64")}
users:
  - name: runner
    user:
${user}
contexts:
  - name: local
    context: { cluster: local, user: runner }
`;

describe("kube-http configuration", () => {
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test("a kubeconfig with a token, or a token file (read for each call: rotated tokens)", async () => {
    const c = await kubeconfigConnection(write("a", kubeconfig("      token: abc")));
    assert.equal(c.server.href, "https://127.0.0.1:6443/");
    assert.equal(c.ca?.toString(), "CA PEM");
    assert.equal(c.token(), "abc");
    const tokenFile = write("token", "first\n");
    const f = await kubeconfigConnection(write("b", kubeconfig(`      tokenFile: ${tokenFile}`)));
    assert.equal(f.token(), "first");
    writeFileSync(tokenFile, "second");
    assert.equal(f.token(), "second");
  });

  test("no token, no context, or not a kubeconfig: KubeconfigError naming the file", async () => {
    await assert.rejects(
      kubeconfigConnection(write("c", kubeconfig("      username: admin"))),
      (err: unknown) => err instanceof KubeconfigError && /no token/.test(err.message),
    );
    await assert.rejects(kubeconfigConnection(write("d", "clusters: []\nusers: []\ncontexts: []\n")), KubeconfigError);
    await assert.rejects(kubeconfigConnection(write("e", "{{{")), KubeconfigError);
    await assert.rejects(kubeconfigConnection(write("f", kubeconfig("      token: abc").replace("https://127.0.0.1:6443", "not a url"))), KubeconfigError);
  });

  test("property: any text is a connection or a KubeconfigError, nothing else", async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 300 }), async (text) => {
        const file = write("prop", text);
        try {
          await kubeconfigConnection(file);
        } catch (err) {
          assert.ok(err instanceof KubeconfigError, String(err));
        }
      }),
      { numRuns: 300 },
    );
  });

  test("in-cluster without KUBERNETES_SERVICE_HOST says so", () => {
    assert.throws(
      () => inClusterConnection({}),
      (err: unknown) => err instanceof KubeconfigError && /KUBERNETES_SERVICE_HOST/.test(err.message),
    );
  });
});

describe("ListItemSplitter: a list streamed item by item", () => {
  const splitInto = (text: string, cuts: number[]): Buffer[] => {
    const bytes = Buffer.from(text);
    const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
    const pieces: Buffer[] = [];
    let at = 0;
    for (const p of [...points, bytes.length]) {
      pieces.push(bytes.subarray(at, p));
      at = p;
    }
    return pieces;
  };

  test("property: any list, cut anywhere, gives its items and its metadata, in order", () => {
    const item = fc.jsonValue({ maxDepth: 4 }).map((v) => ({ metadata: { name: "x", note: '}]\\"{[' }, value: v }));
    fc.assert(
      fc.property(fc.array(item, { maxLength: 12 }), fc.string(), fc.array(fc.nat(), { maxLength: 20 }), (items, cont, cuts) => {
        const text = JSON.stringify({ kind: "PodList", apiVersion: "v1", metadata: { resourceVersion: "42", continue: cont }, items });
        const got: unknown[] = [];
        const splitter = new ListItemSplitter((i) => got.push(i));
        for (const piece of splitInto(text, cuts)) splitter.push(piece);
        assert.deepEqual(splitter.end(), { continue: cont, resourceVersion: "42" });
        assert.deepEqual(got, (JSON.parse(text) as { items: unknown[] }).items);
      }),
    );
  });

  test("a truncated list is an error, not a short page", () => {
    const splitter = new ListItemSplitter(() => undefined);
    splitter.push(Buffer.from('{"kind":"PodList","metadata":{},"items":[{"a":1},{"b":'));
    assert.throws(() => splitter.end(), ApiError);
  });
});
