import assert from "node:assert/strict";
import { test } from "node:test";
import { istioInjectors } from "./doctor.ts";
import { uninstallBlocker } from "./uninstall-check.ts";

// Pure; the chart's hook on a live cluster: test/node/e2e.test.ts (its last test).
const injector = (name: string, config: string, values = "{}") => ({ metadata: { name }, data: { config, values } });

test("istiod's injector ConfigMaps, one per revision: the template found as a key of templates, CNI mode from the values", () => {
  const found = istioInjectors([
    injector("istio-sidecar-injector", "defaultTemplates:\n- sidecar\n- podnet\ntemplates:\n  sidecar: |\n    x\n  podnet: |\n    y\n"),
    injector(
      "istio-sidecar-injector-canary",
      "defaultTemplates:\n- sidecar\n- podnet\ntemplates:\n  sidecar: |\n    x\n",
      '{"pilot":{"cni":{"enabled":true}}}',
    ),
    injector("istio", "podnet: not an injector"),
    injector("istio-sidecar-injector-broken", "templates:\n  podnet: |\n", "{not json"),
  ]);
  assert.deepEqual(found, [
    { name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: false },
    { name: "istio-sidecar-injector-canary", hasTemplate: false, cniEnabled: true },
    { name: "istio-sidecar-injector-broken", hasTemplate: true, cniEnabled: false },
  ]);
});

test("the uninstall stops while a revision injects the template, naming it and the way on; goes on otherwise", () => {
  assert.equal(uninstallBlocker([{ name: "istio-sidecar-injector", hasTemplate: false }], "istio-system"), undefined);
  assert.equal(uninstallBlocker([], "istio-system"), undefined);
  const blocker = uninstallBlocker(
    [
      { name: "istio-sidecar-injector", hasTemplate: false },
      { name: "istio-sidecar-injector-canary", hasTemplate: true },
    ],
    "istio-system",
  );
  assert.match(blocker ?? "", /^istio-system\/istio-sidecar-injector-canary still inject the podnet template: .*README, Uninstall.*helm uninstall --no-hooks$/);
});
