//go:build tools

// Package tools pins the command this module builds.
package tools

import _ "knative.dev/eventing/cmd/apiserver_receive_adapter"
