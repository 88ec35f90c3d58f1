// The versions of Istio and Knative the tests here run (docs/testing.md), for `pnc doctor` to
// compare an install's with. cli/doctor.test.ts keeps them equal to the wrapper modules'.

/** Knative's releases are tagged knative-v1.<minor>; its Go modules v0.<minor + 27>. */
export const KNATIVE_MODULE_MINOR_OFFSET = 27;

export const TESTED_VERSIONS = {
  /** Knative Serving and Eventing (test/controlplane/knative/go.mod: knative.dev/serving and eventing v0.50.0). */
  knative: { release: "1.23" },
  /**
   * Istio: no release can be fetched here (the module proxy serves istio.io/istio only at
   * main-branch pseudo-versions), so none is tested: the tests run main of 2026-08-27, 1.31 in
   * development (test/istio-oracle/go.mod). Istio's development charts label istiod 1.0.0.
   */
  istio: { releases: [] as readonly string[], development: "main of 2026-08-27 (1.31 in development)", developmentLabel: "1.0.0" },
} as const;
