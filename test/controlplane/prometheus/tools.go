//go:build tools

// Wrapper module: builds Prometheus' promtool, to check and unit-test the chart's alerting rules
// and to lint the components' metrics pages.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
