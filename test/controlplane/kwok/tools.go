//go:build tools

// Wrapper module: builds kwok (sigs.k8s.io/kwok), which plays the kubelets of a large simulated
// cluster against the real API server, for npm run bench:scale.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
