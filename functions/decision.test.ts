import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { MARK, STATUS_REFUSED } from "../contract/mark.ts";
import { decide, skipDecision, WAITER_CONTAINER, type Decision } from "./decision.ts";
import { parsePod, type Pod } from "./pod.ts";
import { parsePolicy } from "./policy.ts";

const UID = "6c0e5c7e-3f0a-4b8e-9d59-2f1b7c1d0a11";
const defaults = parsePolicy("", "podnet-system");

interface Container {
  name: string;
  env?: { name: string; value: string }[];
  restartPolicy?: string;
  command?: string[];
}
interface RawPod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
    deletionTimestamp?: string;
  };
  spec: { nodeName?: string; hostNetwork?: boolean; containers: Container[]; initContainers: Container[] };
  status: {
    phase: string;
    hostIP?: string;
    podIPs: { ip: string }[];
    initContainerStatuses?: { name: string; restartCount?: number; state: { running: { startedAt: string } } }[];
  };
}

function meshPod(change: (p: RawPod) => void = () => undefined): Pod {
  const pod: RawPod = {
    metadata: {
      name: "web-1",
      namespace: "shop",
      uid: UID,
      resourceVersion: "7",
      labels: { "security.istio.io/tlsMode": "istio" },
      annotations: { "sidecar.istio.io/status": "{}" },
    },
    spec: { nodeName: "worker-3", containers: [{ name: "web" }, { name: "istio-proxy", env: [] }], initContainers: [{ name: WAITER_CONTAINER }] },
    status: { phase: "Pending", hostIP: "192.168.10.13", podIPs: [{ ip: "10.244.3.17" }] },
  };
  change(pod);
  return parsePod(pod);
}

const reasonOf = (d: Decision): string => `${d.action}:${d.reason}`;

describe("decide", () => {
  test("an injected, bound pod with an IP needs rules", () => {
    const d = decide({ pod: meshPod(), policy: defaults });
    assert.equal(reasonOf(d), "apply:needs-rules");
    assert.ok(d.action === "apply");
    assert.deepEqual(d.pod, { namespace: "shop", name: "web-1", uid: UID, ips: ["10.244.3.17"] });
    assert.equal(d.node, "worker-3");
    assert.equal(d.hostIP, "192.168.10.13");
    assert.equal(d.capture.inboundPortsExclude, "15020,15021,15090");
  });

  const skips: [string, (p: RawPod) => void, string][] = [
    [
      "no istio-proxy container",
      (p) => {
        p.spec.containers = [{ name: "web" }];
      },
      "skip:not-sidecar-injected",
    ],
    [
      "no sidecar status annotation",
      (p) => {
        delete p.metadata.annotations["sidecar.istio.io/status"];
      },
      "skip:not-sidecar-injected",
    ],
    [
      "istio-init present (it sets its own rules)",
      (p) => {
        p.spec.initContainers.push({ name: "istio-init" });
      },
      "skip:istio-init-present",
    ],
    [
      "inject label false",
      (p) => {
        p.metadata.labels["sidecar.istio.io/inject"] = "false";
      },
      "skip:injection-disabled",
    ],
    [
      "inject annotation false",
      (p) => {
        p.metadata.annotations["sidecar.istio.io/inject"] = "false";
      },
      "skip:injection-disabled",
    ],
    [
      "DISABLE_ENVOY",
      (p) => {
        p.spec.containers = [{ name: "web" }, { name: "istio-proxy", env: [{ name: "DISABLE_ENVOY", value: "true" }] }];
      },
      "skip:envoy-disabled",
    ],
    [
      "interception mode NONE",
      (p) => {
        p.metadata.annotations["sidecar.istio.io/interceptionMode"] = "NONE";
      },
      "skip:interception-none",
    ],
    [
      "hostNetwork",
      (p) => {
        p.spec.hostNetwork = true;
      },
      "skip:host-network",
    ],
    [
      "kube-system",
      (p) => {
        p.metadata.namespace = "kube-system";
      },
      "skip:namespace-excluded",
    ],
    [
      "the controller's own namespace",
      (p) => {
        p.metadata.namespace = "podnet-system";
      },
      "skip:namespace-excluded",
    ],
    [
      "not bound yet",
      (p) => {
        delete p.spec.nodeName;
      },
      "skip:not-bound",
    ],
    [
      "no hostIP yet",
      (p) => {
        delete p.status.hostIP;
      },
      "skip:no-host-ip",
    ],
    [
      "no pod IP yet",
      (p) => {
        p.status.podIPs = [];
      },
      "skip:no-pod-ip",
    ],
    [
      "terminating",
      (p) => {
        p.metadata.deletionTimestamp = "2026-11-25T10:00:00Z";
      },
      "skip:terminating",
    ],
    [
      "finished",
      (p) => {
        p.status.phase = "Succeeded";
      },
      "skip:finished",
    ],
    [
      "already initialized",
      (p) => {
        p.metadata.annotations[MARK.status] = "initialized";
      },
      "skip:already-initialized",
    ],
  ];
  for (const [what, change, expected] of skips) {
    test(what, () => {
      assert.equal(reasonOf(decide({ pod: meshPod(change), policy: defaults })), expected);
    });
  }

  test("deleted pods are skipped", () => {
    assert.equal(reasonOf(decide({ pod: meshPod(), policy: defaults, deleted: true })), "skip:deleted");
  });

  test("a native sidecar (istio-proxy among init containers) counts", () => {
    const pod = meshPod((p) => {
      p.spec.containers = [{ name: "web" }];
      p.spec.initContainers.push({ name: "istio-proxy", restartPolicy: "Always" });
    });
    assert.equal(reasonOf(decide({ pod, policy: defaults })), "apply:needs-rules");
  });

  test("a marked pod whose waiter still waits well after is re-dispatched (sandbox re-created)", () => {
    const now = Date.parse("2026-11-25T12:00:00Z");
    const pod = (startedAt: string) =>
      meshPod((p) => {
        p.metadata.annotations[MARK.status] = "initialized";
        p.status.initContainerStatuses = [{ name: WAITER_CONTAINER, state: { running: { startedAt } } }];
      });
    assert.equal(reasonOf(decide({ pod: pod("2026-11-25T11:59:50Z"), policy: defaults, now })), "skip:already-initialized");
    assert.equal(reasonOf(decide({ pod: pod("2026-11-25T11:58:00Z"), policy: defaults, now })), "apply:waiter-still-waiting");
  });

  test("a marked pod whose waiter runs again (restartCount > 0: a re-created sandbox runs its init containers again) is re-dispatched at once", () => {
    const pod = meshPod((p) => {
      p.metadata.annotations[MARK.status] = "initialized";
      p.status.initContainerStatuses = [{ name: WAITER_CONTAINER, restartCount: 1, state: { running: { startedAt: "2026-11-25T11:59:59Z" } } }];
    });
    assert.equal(reasonOf(decide({ pod, policy: defaults, now: Date.parse("2026-11-25T12:00:00Z") })), "apply:waiter-still-waiting");
  });

  test("the original controller's opt-in annotation, on the pod or its namespace", () => {
    const plain = meshPod((p) => {
      p.spec.containers = [{ name: "web" }];
      delete p.metadata.annotations["sidecar.istio.io/status"];
    });
    assert.equal(reasonOf(decide({ pod: plain, policy: defaults })), "skip:not-sidecar-injected");
    assert.equal(
      reasonOf(decide({ pod: plain, policy: defaults, namespace: { annotations: { "istio-pod-network-controller/initialize": "true" } } })),
      "apply:needs-rules",
    );
    const annotated = meshPod((p) => {
      p.spec.containers = [{ name: "web" }];
      p.metadata.annotations = { "istio-pod-network-controller/initialize": "true" };
    });
    assert.equal(reasonOf(decide({ pod: annotated, policy: defaults })), "apply:needs-rules");
    assert.equal(reasonOf(decide({ pod: annotated, policy: parsePolicy("legacyOptIn: false") })), "skip:not-sidecar-injected");
  });

  test("invalid annotations: an error with the annotation named", () => {
    const d = decide({
      pod: meshPod((p) => {
        p.metadata.annotations["traffic.sidecar.istio.io/excludeInterfaces"] = "eth0 -j ACCEPT";
      }),
      policy: defaults,
    });
    assert.equal(reasonOf(d), "error:invalid-capture");
    assert.ok(d.action === "error");
    assert.match(d.detail, /annotation traffic\.sidecar\.istio\.io\/excludeInterfaces: "eth0 -j ACCEPT"/);
  });

  test("invalid annotations on a pod whose waiter waits: refuse, so that its node-runner marks it refused with the one-line reason; once the mark says so, only an error", () => {
    const invalid = (p: RawPod): void => {
      p.metadata.annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] = "99999";
      p.spec.initContainers = [{ name: WAITER_CONTAINER, command: ["/podnet-wait"] }];
    };
    const d = decide({ pod: meshPod(invalid), policy: defaults });
    assert.equal(reasonOf(d), "refuse:invalid-capture");
    assert.ok(d.action === "refuse");
    assert.deepEqual([d.node, d.hostIP, d.pod.uid], ["worker-3", "192.168.10.13", UID]);
    assert.match(d.refusal, /^invalid capture configuration: annotation traffic\.sidecar\.istio\.io\/excludeOutboundPorts: "99999"/);
    assert.doesNotMatch(d.refusal, /\n/);
    const told = meshPod((p) => {
      invalid(p);
      p.metadata.annotations[MARK.status] = STATUS_REFUSED;
      p.metadata.annotations[MARK.reason] = d.refusal;
    });
    assert.equal(reasonOf(decide({ pod: told, policy: defaults })), "error:invalid-capture");
    // A reason that differs (the annotations changed since): told again.
    const stale = meshPod((p) => {
      invalid(p);
      p.metadata.annotations[MARK.status] = STATUS_REFUSED;
      p.metadata.annotations[MARK.reason] = "invalid capture configuration: something else";
    });
    assert.equal(reasonOf(decide({ pod: stale, policy: defaults })), "refuse:invalid-capture");
  });

  test("policy: namespaces, selector and capture overrides", () => {
    const policy = parsePolicy(`
namespaces: { include: [shop, payments] }
podSelector: { matchLabels: { team: a } }
capture:
  defaults: { outboundPortsExclude: "15020,9000" }
  namespaces: { shop: { dropInvalid: true } }
`);
    assert.equal(
      reasonOf(
        decide({
          pod: meshPod((p) => {
            p.metadata.namespace = "other";
          }),
          policy,
        }),
      ),
      "skip:namespace-not-included",
    );
    assert.equal(reasonOf(decide({ pod: meshPod(), policy })), "skip:selector-mismatch");
    const d = decide({
      pod: meshPod((p) => {
        p.metadata.labels.team = "a";
      }),
      policy,
    });
    assert.ok(d.action === "apply");
    assert.equal(d.capture.outboundPortsExclude, "15020,9000");
    assert.equal(d.capture.dropInvalid, true);
  });

  test("skipDecision is decide up to its skips: the same skip, or undefined where decide applies or refuses the capture config", () => {
    const invalidCapture = (p: RawPod): void => {
      p.metadata.annotations["traffic.sidecar.istio.io/excludeInterfaces"] = "eth0 -j ACCEPT";
    };
    const changes = [...skips.map(([, change]) => change), invalidCapture];
    fc.assert(
      fc.property(fc.subarray(changes.map((_, i) => i)), fc.boolean(), (picked, deleted) => {
        const pod = meshPod((p) => {
          for (const i of picked) changes[i]?.(p);
        });
        const full = decide({ pod, policy: defaults, deleted });
        assert.deepEqual(skipDecision({ pod, policy: defaults, deleted }), full.action === "skip" ? full : undefined);
      }),
    );
    assert.equal(reasonOf(decide({ pod: meshPod(invalidCapture), policy: defaults })), "error:invalid-capture");
  });
});
