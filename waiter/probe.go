package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// probePortFor is the port the probe connects to: preferred, unless the pod's capture excludes
// it from outbound capture (Istio returns those before its loopback rule), then the next lower
// port that is neither excluded nor one Istio's loopback rule itself exempts (53, 15008).
// 0 when every outbound port is excluded ("*"): no probe can pass, the mark is the signal.
func probePortFor(preferred int, excludeOutboundPorts string) int {
	excluded := map[int]bool{53: true, 15008: true}
	for _, item := range strings.Split(excludeOutboundPorts, ",") {
		item = strings.TrimSpace(item)
		if item == "*" {
			return 0
		}
		if port, err := strconv.Atoi(item); err == nil {
			excluded[port] = true
		}
	}
	for port := preferred; port > 1024; port-- {
		if !excluded[port] {
			return port
		}
	}
	return 0
}

// interceptionProbe proves that outbound redirection works in this netns: it listens on the
// inbound capture port and connects, as the proxy's UID, to a loopback address and port where
// nothing listens. Istio's rules send the proxy's own loopback traffic to a non-127.0.0.1
// address through ISTIO_IN_REDIRECT, so only a working redirect completes the connection.
type interceptionProbe struct {
	capturePort int
	target      string // ip:port
	timeout     time.Duration
	token       string
	listener    net.Listener
}

func newInterceptionProbe(capturePort int, target string, timeout time.Duration) *interceptionProbe {
	return &interceptionProbe{capturePort: capturePort, target: target, timeout: timeout, token: fmt.Sprintf("podnet-probe-%d-%d", os.Getpid(), time.Now().UnixNano())}
}

// listen opens the capture port once; a failure is retried at the next attempt.
func (p *interceptionProbe) listen() error {
	if p.listener != nil {
		return nil
	}
	l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.capturePort)))
	if err != nil {
		return fmt.Errorf("cannot listen on 127.0.0.1:%d: %v", p.capturePort, err)
	}
	p.listener = l
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, p.token)
			_ = conn.Close()
		}
	}()
	return nil
}

// try makes one attempt within at most limit; nil means interception works.
func (p *interceptionProbe) try(limit time.Duration) error {
	if err := p.listen(); err != nil {
		return err
	}
	timeout := min(p.timeout, max(limit, time.Millisecond))
	conn, err := net.DialTimeout("tcp4", p.target, timeout)
	if err != nil {
		return fmt.Errorf("connection to %s was not redirected (%v)", p.target, errnoOf(err))
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	received, err := io.ReadAll(io.LimitReader(conn, int64(len(p.token))+1))
	if err != nil {
		return fmt.Errorf("no answer from %s within %s", p.target, timeout)
	}
	if string(received) != p.token {
		return fmt.Errorf("a connection completed, but not through the capture port")
	}
	return nil
}

func (p *interceptionProbe) close() {
	if p.listener != nil {
		_ = p.listener.Close()
	}
}

// errnoOf shortens "dial tcp4 127.0.0.2:15999: connect: connection refused" to its cause.
func errnoOf(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
