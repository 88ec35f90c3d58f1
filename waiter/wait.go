package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

// Exit codes, documented in docs/reference.md (and the README's troubleshooting).
const (
	exitOK              = 0
	exitTimeout         = 10
	exitProbeFailed     = 11
	exitBadAnnotations  = 12
	exitOwnNetnsUnknown = 13
	exitRefused         = 14
	exitUsage           = 64
)

// markedWithoutInterception is how long the probe may keep failing once the pod is marked for
// this netns: the mark is written after the rules, so a mark without working rules is a spoof
// or a broken apply.
const markedWithoutInterception = 2 * time.Second

type waitOptions struct {
	annotationsFile string
	timeout         time.Duration
	poll            time.Duration // re-read interval of the file when there is no probe
	probeEvery      time.Duration // the probe, not the annotation, is the signal
	probe           *interceptionProbe
	ownNetnsLink    string
	log             func(string)
}

type waitResult struct {
	code   int
	reason string
}

var netnsLink = regexp.MustCompile(`^net:\[(\d+)\]$`)

// netnsInodeOf reads the inode of a network namespace link such as /proc/self/ns/net.
func netnsInodeOf(link string) (string, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return "", err
	}
	m := netnsLink.FindStringSubmatch(target)
	if m == nil {
		return "", fmt.Errorf("%s is not a network namespace link: %s", link, target)
	}
	return m[1], nil
}

func readAnnotations(file string) (map[string]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	text, err := io.ReadAll(io.LimitReader(f, maxAnnotationsFileBytes+1))
	if err != nil {
		return nil, err
	}
	return parseAnnotationsFile(string(text))
}

// probeForPod moves the probe's target off a port the pod's capture excludes (the annotations
// file as the container starts); nil when no probe can pass.
func probeForPod(o waitOptions) *interceptionProbe {
	if o.probe == nil {
		return nil
	}
	annotations, _ := readAnnotations(o.annotationsFile) // missing or unreadable: the wait loop reports it
	host, portText, _ := splitTarget(o.probe.target)
	preferred := atoiOr(portText, 0)
	port := probePortFor(preferred, annotations[excludeOutboundPortsKey])
	if port == 0 {
		o.log("every outbound port is excluded from capture: no probe can pass, waiting for the mark")
		return nil
	}
	if port != preferred {
		o.log(fmt.Sprintf("outbound port %d is excluded from capture: probing %s:%d", preferred, host, port))
		o.probe.target = fmt.Sprintf("%s:%d", host, port)
	}
	return o.probe
}

// watchDir wakes the wait loop when the kubelet swaps the downward API directory's symlink;
// without inotify the loop still polls.
func watchDir(dir string) (wake <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		return ch, func() {}
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_CREATE|syscall.IN_MOVED_TO|syscall.IN_CLOSE_WRITE|syscall.IN_DELETE); err != nil {
		_ = syscall.Close(fd)
		return ch, func() {}
	}
	file := os.NewFile(uintptr(fd), "inotify")
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := file.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { _ = file.Close() }
}

// waitForInterception waits until redirection works in this network namespace, proven by the
// probe every few ms (the annotation the kubelet refreshes late is not waited for); without a
// probe, until the mark names this netns. It returns the exit code and a one-line reason.
func waitForInterception(o waitOptions) waitResult {
	own, err := netnsInodeOf(o.ownNetnsLink)
	if err != nil {
		return waitResult{exitOwnNetnsUnknown, fmt.Sprintf("cannot read this pod's network namespace: %v", err)}
	}
	probe := probeForPod(o)
	if probe != nil {
		defer probe.close()
	}
	deadline := time.Now().Add(o.timeout)
	wake, stopWatch := watchDir(filepath.Dir(o.annotationsFile))
	defer stopWatch()
	var lastState markState
	var markedSince time.Time
	lastProbe := "not tried"
	for {
		if probe != nil {
			err := probe.try(time.Until(deadline))
			if err == nil {
				if lastState == markInitialized {
					return waitResult{exitOK, "initialized; interception verified"}
				}
				return waitResult{exitOK, "interception verified (before the mark reached this pod)"}
			}
			lastProbe = err.Error()
		}
		state := markNotYet
		var current mark
		annotations, err := readAnnotations(o.annotationsFile)
		switch {
		case errors.Is(err, errAnnotationsFile):
			return waitResult{exitBadAnnotations, fmt.Sprintf("malformed annotations file %s: %v", o.annotationsFile, err)}
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return waitResult{exitBadAnnotations, fmt.Sprintf("cannot read %s: %v", o.annotationsFile, err)}
		default:
			current = markOf(annotations)
			state = markStateOf(current, own)
		}
		if state != lastState {
			what := string(state)
			if state == markOtherNetns {
				what = "the mark names another network namespace (sandbox re-created)"
			}
			o.log(fmt.Sprintf("waiting: %s (own netns %s)", what, own))
		}
		lastState = state
		if state == markSkipped {
			// The policy keeps the pod out of the mesh: it starts without interception. Only the
			// node-runner writes the mark, on the function's signed request.
			return waitResult{exitOK, "not meshed: " + current.reason}
		}
		if state == markRefused {
			// Only the node-runner writes the mark, and a refusal can only make the pod fail: trusted at once.
			return waitResult{exitRefused, "refused by the podnet controller: " + current.reason}
		}
		if state == markInitialized {
			if probe == nil {
				if o.probe == nil {
					return waitResult{exitOK, "initialized (probe disabled)"}
				}
				return waitResult{exitOK, "initialized (no probe possible: every outbound port is excluded)"}
			}
			if markedSince.IsZero() {
				markedSince = time.Now()
			}
			if time.Since(markedSince) > markedWithoutInterception {
				return waitResult{exitProbeFailed, "marked initialized but interception does not work: " + lastProbe}
			}
		} else {
			markedSince = time.Time{}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return waitResult{exitTimeout, fmt.Sprintf("timed out after %d ms: interception not in place in network namespace %s (mark: %s; probe: %s)", o.timeout.Milliseconds(), own, state, lastProbe)}
		}
		interval := o.probeEvery
		if probe == nil {
			interval = o.poll
		}
		timer := time.NewTimer(min(interval, left))
		select {
		case <-timer.C:
		case <-wake:
			timer.Stop()
		}
	}
}
