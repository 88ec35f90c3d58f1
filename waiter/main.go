// podnet-wait, the waiter init container (docs/reference.md, "The waiter init container"): the pod's first
// init container, the proxy's UID, no capabilities, no API token. It proves, every few ms, that
// redirection works in its own network namespace and exits 0 as soon as it does, so that Envoy
// and the application start only with interception in place. A stale or forged annotation cannot
// fool the probe, and the kubelet's late refresh of the annotations file costs nothing; the file
// still tells it why it waits and, without a probe, is the signal.
//
// It is Go, not TypeScript like the rest, because every mesh pod pulls its image: one static
// binary from scratch is about 2 MB, where the smallest Node runtime is about 100 MB; and the
// kubelet writes the file with Go's %q, which strconv.Unquote reads back exactly.
//
//	--annotations <file>      downward API annotations file          /etc/istio/pod/annotations
//	--timeout <seconds>       give up after                          120
//	--poll <ms>               re-read interval without a probe        500
//	--probe-every <ms>        probe interval (the probe is the signal) 10
//	--capture-port <port>     inbound capture port to listen on      15006
//	--probe-target <ip:port>  loopback address nothing listens on    127.0.0.2:15999
//	--no-probe                skip the interception probe
//	--termination-log <file>  one-line reason of the exit              /dev/termination-log
package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	log := func(line string) { fmt.Fprintf(stderr, "podnet-wait: %s\n", line) }
	flags := flag.NewFlagSet("podnet-wait", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	annotations := flags.String("annotations", "/etc/istio/pod/annotations", "")
	timeout := flags.String("timeout", "120", "")
	poll := flags.String("poll", "500", "")
	probeEvery := flags.String("probe-every", "10", "")
	capturePort := flags.String("capture-port", "15006", "")
	probeTarget := flags.String("probe-target", "127.0.0.2:15999", "")
	noProbe := flags.Bool("no-probe", false, "")
	terminationLog := flags.String("termination-log", "/dev/termination-log", "")
	if err := flags.Parse(args); err != nil {
		log(err.Error())
		return exitUsage
	}
	if flags.NArg() > 0 {
		log(fmt.Sprintf("unexpected argument %q", flags.Arg(0)))
		return exitUsage
	}
	timeoutS, ok1 := positive(*timeout)
	pollMs, ok2 := positive(*poll)
	probeMs, ok3 := positive(*probeEvery)
	port, err := strconv.Atoi(*capturePort)
	ok4 := err == nil && port >= 1 && port <= 65535
	_, _, ok5 := splitTarget(*probeTarget)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		log("--timeout, --poll and --probe-every must be positive numbers, --capture-port a port, --probe-target an IPv4 ip:port")
		return exitUsage
	}
	var probe *interceptionProbe
	if !*noProbe {
		probe = newInterceptionProbe(port, *probeTarget, 3*time.Second)
	}
	started := time.Now()
	result := waitForInterception(waitOptions{
		annotationsFile: *annotations,
		timeout:         seconds(timeoutS),
		poll:            millis(pollMs),
		probeEvery:      millis(probeMs),
		probe:           probe,
		ownNetnsLink:    "/proc/self/ns/net",
		log:             log,
	})
	log(fmt.Sprintf("%s (after %d ms)", result.reason, time.Since(started).Milliseconds()))
	// Every exit says why (kubectl describe shows it): a pod let through without rules too.
	_ = os.WriteFile(*terminationLog, []byte(result.reason+"\n"), 0o644) // no termination log outside a container
	return result.code
}

// positive parses a finite number above zero (seconds or milliseconds, fractions allowed).
func positive(text string) (float64, bool) {
	v, err := strconv.ParseFloat(text, 64)
	return v, err == nil && v > 0 && !math.IsInf(v, 0) && v < 1e9
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
func millis(v float64) time.Duration  { return time.Duration(v * float64(time.Millisecond)) }

// splitTarget validates an IPv4 ip:port.
func splitTarget(target string) (host, port string, ok bool) {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return "", "", false
	}
	ip := net.ParseIP(host)
	p := atoiOr(port, 0)
	return host, port, ip != nil && ip.To4() != nil && p >= 1 && p <= 65535
}

func atoiOr(text string, fallback int) int {
	if v, err := strconv.Atoi(text); err == nil {
		return v
	}
	return fallback
}
