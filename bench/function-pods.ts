// The pods bench:function's events name, the same in the load generator and in the function's
// process (whose in-memory API server answers with them): a UID derived from the name.
import { createHash } from "node:crypto";
import { meshPodObject } from "../test/support/apiserversource.ts";

export function benchPod(name: string, options: { annotations?: Record<string, string> } = {}): ReturnType<typeof meshPodObject> {
  const hex = createHash("sha256").update(name).digest("hex");
  const uid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
  return meshPodObject(name, { uid, ...options });
}
