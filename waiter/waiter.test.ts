import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { goQuote } from "../test/support/downward-api.ts";
import { AnnotationsFileError, markState, parseAnnotationsFile, probePortFor } from "./waiter.ts";

describe("downward API annotations file", () => {
  test("kubelet's format: key=\"Go-quoted value\" lines", () => {
    const text = [
      'kubectl.kubernetes.io/last-applied-configuration="{\\"a\\":1}\\n"',
      'pod-network-controller.istio.io/netns="4026532246"',
      'pod-network-controller.istio.io/status="initialized"',
      'sidecar.istio.io/status="{\\"containers\\":[\\"istio-proxy\\"]}"',
      'weird="tab\\there \\u00e9 \\U0001f600 \\x41 \\101"',
      "",
    ].join("\n");
    const a = parseAnnotationsFile(text);
    assert.equal(a.get("pod-network-controller.istio.io/status"), "initialized");
    assert.equal(a.get("kubectl.kubernetes.io/last-applied-configuration"), '{"a":1}\n');
    assert.equal(a.get("weird"), "tab\there é 😀 A A");
    assert.equal(markState(a, "4026532246"), "initialized");
    assert.equal(markState(a, "4026532999"), "other-netns");
    assert.equal(markState(new Map(), "1"), "not-yet");
  });

  const malformed: [string, string][] = [
    ["truncated value", 'pod-network-controller.istio.io/status="initial'],
    ["no quotes", "pod-network-controller.istio.io/status=initialized"],
    ["no key", '="x"'],
    ["bad escape", 'a="\\q"'],
    ["short hex escape", 'a="\\x4"'],
    ["dangling backslash", 'a="abc\\"'],
    ["inner quote", 'a="a"b"'],
    ["garbage line", "\u0000\u0001binary"],
    ["surrogate escape", 'a="\\ud800"'],
  ];
  for (const [what, text] of malformed) {
    test(`malformed: ${what}`, () => {
      assert.throws(() => parseAnnotationsFile(text), AnnotationsFileError);
    });
  }

  test("oversize files are refused", () => {
    assert.throws(() => parseAnnotationsFile(`a="${"x".repeat(1024 * 1024)}"`), /larger than/);
  });

  test("property: any value survives Go quoting and parsing", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 100 }), (value) => {
        const clean = Buffer.from(value, "utf8").toString("utf8"); // lone surrogates become U+FFFD, as in a real file
        assert.equal(parseAnnotationsFile(`k8s.io/key=${goQuote(clean)}\n`).get("k8s.io/key"), clean);
      }),
      { numRuns: 2000 },
    );
  });

  test("property: arbitrary text is parsed or refused with AnnotationsFileError, nothing else", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 300 }), (text) => {
        try {
          parseAnnotationsFile(text);
        } catch (err) {
          if (!(err instanceof AnnotationsFileError)) throw err;
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe("the probe's target port", () => {
  test("moves off ports the pod excludes from outbound capture; none when all are", () => {
    assert.equal(probePortFor(15999, undefined), 15999);
    assert.equal(probePortFor(15999, "15020"), 15999);
    assert.equal(probePortFor(15999, "15999, 15998 ,80"), 15997);
    assert.equal(probePortFor(15009, "15009"), 15007, "15008 is exempt from Istio's loopback rule");
    assert.equal(probePortFor(15999, "*"), null);
    assert.equal(probePortFor(15999, "80,*"), null);
  });

  test("property: any annotation text gives an allowed port or none, never an exception", () => {
    fc.assert(
      fc.property(fc.string(), fc.integer({ min: 1025, max: 65535 }), (text, preferred) => {
        const port = probePortFor(preferred, text);
        const listed = text.split(",").map((p) => p.trim());
        if (listed.includes("*")) return port === null;
        return port === null || (port <= preferred && port > 1024 && port !== 15008 && !listed.map(Number).includes(port));
      }),
    );
  });
});
