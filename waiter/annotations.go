package main

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// maxAnnotationsFileBytes bounds what is read: the API server caps a pod's annotations at
// 256 KiB, so anything much larger is not a kubelet file.
const maxAnnotationsFileBytes = 1024 * 1024

var errAnnotationsFile = errors.New("malformed annotations file")

var annotationKey = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./-]*$`)

// parseAnnotationsFile reads the kubelet's downward API annotations file: one key="value" line
// per annotation, the value formatted with %q (strconv.Quote), so strconv.Unquote is its exact
// inverse. Errors wrap errAnnotationsFile and name the line.
func parseAnnotationsFile(text string) (map[string]string, error) {
	if len(text) > maxAnnotationsFileBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", errAnnotationsFile, maxAnnotationsFileBytes)
	}
	out := map[string]string{}
	lines := strings.Split(text, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for i, line := range lines {
		key, quoted, found := strings.Cut(line, "=")
		if !found || key == "" {
			return nil, fmt.Errorf(`%w: line %d: expected key="value"`, errAnnotationsFile, i+1)
		}
		if !annotationKey.MatchString(key) {
			return nil, fmt.Errorf("%w: line %d: invalid annotation key", errAnnotationsFile, i+1)
		}
		// Unquote also takes `raw` and 'c' literals; the kubelet writes only "double-quoted".
		if !strings.HasPrefix(quoted, `"`) {
			return nil, fmt.Errorf("%w: line %d: value is not a quoted string", errAnnotationsFile, i+1)
		}
		value, err := strconv.Unquote(quoted)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: value is not a Go-quoted string", errAnnotationsFile, i+1)
		}
		out[key] = value
	}
	return out, nil
}

type markState string

const (
	markInitialized markState = "initialized"
	markNotYet      markState = "not-yet"
	markOtherNetns  markState = "other-netns"
	markRefused     markState = "refused"
	markSkipped     markState = "skipped"
)

// mark is the pod's mark: status, netns and reason under the current names when it has a status
// there, else under the legacy ones (a pod an older node-runner marked; contract/mark.ts readMark).
type mark struct{ status, netns, reason string }

func markOf(annotations map[string]string) mark {
	if _, current := annotations[markStatusKey]; current {
		return mark{annotations[markStatusKey], annotations[markNetnsKey], annotations[markReasonKey]}
	}
	return mark{annotations[legacyMarkStatusKey], annotations[legacyMarkNetnsKey], annotations[legacyMarkReasonKey]}
}

// markStateOf tells whether the pod is marked initialized for the netns with inode own, or
// refused or skipped (for whatever netns: both are about the pod, not where it runs).
func markStateOf(m mark, own string) markState {
	if m.status == statusRefused {
		return markRefused
	}
	if m.status == statusSkipped {
		return markSkipped
	}
	if m.status != statusInitialized {
		return markNotYet
	}
	if m.netns == own {
		return markInitialized
	}
	return markOtherNetns
}
