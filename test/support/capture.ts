// Derive and validate in one step, as the decision does, for tests that start from a pod.
import { parseCaptureConfig, type CaptureConfig } from "../../contract/capture-config.ts";
import { deriveCaptureInput } from "../../functions/capture-from-pod.ts";
import type { Pod } from "../../functions/pod.ts";

/** The capture config for a pod, or a `CaptureConfigError` naming the bad annotation. */
export function captureConfigFromPod(pod: Pod): CaptureConfig {
  const { input, sources, issues } = deriveCaptureInput(pod);
  return parseCaptureConfig(input, sources, issues);
}
