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
)

// markStateOf tells whether the pod is marked initialized for the netns with inode own, or
// refused (for whatever netns: a refusal is about the pod's configuration).
func markStateOf(annotations map[string]string, own string) markState {
	if annotations[markStatusKey] == statusRefused {
		return markRefused
	}
	if annotations[markStatusKey] != statusInitialized {
		return markNotYet
	}
	if annotations[markNetnsKey] == own {
		return markInitialized
	}
	return markOtherNetns
}
