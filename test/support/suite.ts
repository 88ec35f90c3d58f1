// A real control plane for one describe() block: started before its tests (with Knative's CRDs
// when asked), stopped after. Tests call the returned function to get it.
import { after, before } from "node:test";
import { startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { assertAvailable } from "./environment.ts";

export function controlPlaneForSuite(missing: string | undefined, options: { crds?: boolean } = {}): () => ControlPlane {
  let cp: ControlPlane | undefined;
  before(async () => {
    assertAvailable(missing);
    cp = await startControlPlane();
    if (options.crds === true) await cp.installCrds();
  });
  after(async () => {
    await cp?.stop();
  });
  return () => {
    if (cp === undefined) throw new Error("the control plane did not start");
    return cp;
  };
}
