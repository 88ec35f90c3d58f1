package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestKubeletAnnotationsFile(t *testing.T) {
	text := strings.Join([]string{
		`kubectl.kubernetes.io/last-applied-configuration="{\"a\":1}\n"`,
		`pod-network-controller.istio.io/netns="4026532246"`,
		`pod-network-controller.istio.io/status="initialized"`,
		`sidecar.istio.io/status="{\"containers\":[\"istio-proxy\"]}"`,
		`weird="tab\there \u00e9 \U0001f600 \x41 \101"`,
	}, "\n")
	a, err := parseAnnotationsFile(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}\n",
		"pod-network-controller.istio.io/status":           "initialized",
		"weird":                                            "tab\there é 😀 A A",
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("%s = %q, want %q", k, a[k], v)
		}
	}
	// A mark under the legacy names (an older node-runner's) is read during the transition.
	for inode, state := range map[string]markState{"4026532246": markInitialized, "4026532999": markOtherNetns} {
		if got := markStateOf(markOf(a), inode); got != state {
			t.Errorf("markStateOf(%s) = %s, want %s", inode, got, state)
		}
	}
	if got := markStateOf(markOf(map[string]string{}), "1"); got != markNotYet {
		t.Errorf("empty: %s", got)
	}
}

func TestCurrentMarkWinsOverLegacy(t *testing.T) {
	both := map[string]string{
		legacyMarkStatusKey: statusInitialized, legacyMarkNetnsKey: "1",
		markStatusKey: statusRefused, markReasonKey: "bad port",
	}
	if m := markOf(both); m.status != statusRefused || m.reason != "bad port" || markStateOf(m, "1") != markRefused {
		t.Errorf("current names must win: %+v", m)
	}
	current := map[string]string{markStatusKey: statusInitialized, markNetnsKey: "7"}
	if got := markStateOf(markOf(current), "7"); got != markInitialized {
		t.Errorf("current: %s", got)
	}
}

func TestMalformedAnnotationsFiles(t *testing.T) {
	for what, text := range map[string]string{
		"truncated value":    `pod-network-controller.istio.io/status="initial`,
		"no quotes":          `pod-network-controller.istio.io/status=initialized`,
		"no key":             `="x"`,
		"bad escape":         `a="\q"`,
		"short hex escape":   `a="\x4"`,
		"dangling backslash": `a="abc\"`,
		"inner quote":        `a="a"b"`,
		"garbage line":       "\x00\x01binary",
		"surrogate escape":   `a="\ud800"`,
		"raw string":         "a=`raw`",
		"char literal":       `a='x'`,
		"bad key":            `-a="x"`,
		"oversize":           `a="` + strings.Repeat("x", maxAnnotationsFileBytes) + `"`,
	} {
		if _, err := parseAnnotationsFile(text); !errors.Is(err, errAnnotationsFile) {
			t.Errorf("%s: got %v, want a malformed-file error", what, err)
		}
	}
}

// The kubelet writes each line with fmt's %q: any value survives it.
func FuzzQuotedValueRoundTrip(f *testing.F) {
	for _, seed := range []string{"", "initialized", "a\"b\\c", "\x00\xff\n\t", "é😀", "\u2028"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		a, err := parseAnnotationsFile(fmt.Sprintf("%v=%q\n", "k8s.io/key", value))
		if err != nil {
			t.Fatal(err)
		}
		if a["k8s.io/key"] != value {
			t.Fatalf("got %q, want %q", a["k8s.io/key"], value)
		}
	})
}

// Arbitrary text is parsed or refused with a malformed-file error, nothing else.
func FuzzAnnotationsFile(f *testing.F) {
	for _, seed := range []string{"", "a=\"b\"\n", "=", "a=\"\\", "\n\n", "a=\"x\"\nb"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if _, err := parseAnnotationsFile(text); err != nil && !errors.Is(err, errAnnotationsFile) {
			t.Fatal(err)
		}
	})
}

func TestProbePort(t *testing.T) {
	for _, c := range []struct {
		preferred int
		excluded  string
		want      int
	}{
		{15999, "", 15999},
		{15999, "15020", 15999},
		{15999, "15999, 15998 ,80", 15997},
		{15009, "15009", 15007}, // 15008 is exempt from Istio's loopback rule
		{15999, "*", 0},
		{15999, "80,*", 0},
		{1026, "1026,1025", 0},
	} {
		if got := probePortFor(c.preferred, c.excluded); got != c.want {
			t.Errorf("probePortFor(%d, %q) = %d, want %d", c.preferred, c.excluded, got, c.want)
		}
	}
}

// Any annotation text gives an allowed port or none.
func FuzzProbePort(f *testing.F) {
	f.Add("15999,15998", 15999)
	f.Add(" * ", 2000)
	f.Fuzz(func(t *testing.T, text string, preferred int) {
		if preferred < 1025 || preferred > 65535 {
			return
		}
		port := probePortFor(preferred, text)
		listed := map[string]bool{}
		for _, item := range strings.Split(text, ",") {
			listed[strings.TrimSpace(item)] = true
		}
		if listed["*"] {
			if port != 0 {
				t.Fatalf("%q: port %d with *", text, port)
			}
			return
		}
		if port != 0 && (port > preferred || port <= 1024 || port == 15008 || port == 53 || listed[strconv.Itoa(port)]) {
			t.Fatalf("%q from %d: port %d not allowed", text, preferred, port)
		}
	})
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--timeout=0"}, {"--timeout=-1"}, {"--timeout=NaN"}, {"--timeout=Inf"}, {"--timeout=abc"},
		{"--poll=0"}, {"--probe-every=x"}, {"--capture-port=0"}, {"--capture-port=65536"}, {"--capture-port=1.5"},
		{"--probe-target=localhost:1"}, {"--probe-target=127.0.0.2"}, {"--probe-target=127.0.0.2:0"},
		{"--probe-target=[::1]:15999"}, {"--unknown"}, {"extra"}, {"--no-probe=maybe"},
	} {
		if code := run(args, io.Discard); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestSkippedMark(t *testing.T) {
	m := markOf(map[string]string{markStatusKey: statusSkipped, markReasonKey: "the policy skips this pod"})
	if got := markStateOf(m, "1"); got != markSkipped || m.reason != "the policy skips this pod" {
		t.Errorf("skipped: %s %+v", got, m)
	}
}
