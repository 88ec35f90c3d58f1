// podnet-netns-exec, the node-runner's command helper: a small long-lived process that runs
// the commands of an apply inside a network namespace (docs/architecture.md §7). The
// node-runner is a large Node process; a spawn from it, or from any Node process, costs
// milliseconds of CPU. This one enters the namespace on one of its own threads (setns) and
// forks the command from that thread: one exec per command, no nsenter.
//
// Protocol: one JSON request per line on stdin, {id, netns, argv, input} (or {id, netns,
// builtin: "nft-tables"}: the namespace's nftables tables, no command); one JSON answer per
// line on stdout, {id, code, stdout, stderr, failure}, in any order; failure names why the
// command did not run to its own exit (netns-gone, tool-missing, timeout, killed), so that
// the node-runner never reads another program's stderr to tell. `netns` is a path that names the
// namespace the node-runner holds open (/proc/<node-runner>/fd/<n>): the namespace it resolved
// and checked, whatever happens to the pod's processes meanwhile. It exits when stdin ends and
// the commands it was given have.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

const commandTimeout = 10 * time.Second

// A request line is at most this long (an iptables-restore input is a few KB; the node-runner
// caps its requests far below this).
const maxRequestBytes = 16 << 20

type request struct {
	ID    *int     `json:"id"`
	Netns string   `json:"netns"`
	Argv  []string `json:"argv"`
	Input string   `json:"input"`
	// "nft-tables": no command; the namespace's nftables tables, listed by this process.
	Builtin string `json:"builtin"`
}

type reply struct {
	ID      int    `json:"id"`
	Code    int    `json:"code"`
	Stdout  string `json:"stdout"`
	Stderr  string `json:"stderr"`
	Failure string `json:"failure,omitempty"`
}

// Why a command did not run to its own exit (reply.Failure); "" when it did, whatever its code.
const (
	failureNetnsGone   = "netns-gone"
	failureToolMissing = "tool-missing"
	failureTimeout     = "timeout"
	failureKilled      = "killed"
)

// A command's output kept at most (each stream): iptables-save of a pod's namespace is a few
// KB; more than this is not a pod's rules, and is not held in memory here or in the node-runner.
const maxOutputBytes = 4 << 20

// cappedBuffer keeps the first maxOutputBytes written and counts the rest.
type cappedBuffer struct {
	bytes.Buffer
	dropped int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := maxOutputBytes - b.Len()
	if room >= len(p) {
		return b.Buffer.Write(p)
	}
	if room > 0 {
		b.Buffer.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *cappedBuffer) text() string {
	if b.dropped == 0 {
		return b.String()
	}
	return fmt.Sprintf("%s\n[%d bytes more not kept]", b.String(), b.dropped)
}

// The main goroutine keeps the main thread: a command's goroutine never runs there, so the
// thread the kernel shows as the process (/proc/<pid>/ns/net) stays in the node's namespace.
func init() { runtime.LockOSThread() }

func main() {
	var mu sync.Mutex
	var inFlight sync.WaitGroup
	out := bufio.NewWriter(os.Stdout)
	answer := func(r reply) {
		line, _ := json.Marshal(r)
		mu.Lock()
		defer mu.Unlock()
		_, _ = out.Write(append(line, '\n'))
		_ = out.Flush()
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), maxRequestBytes)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil || req.ID == nil || req.Netns == "" || (len(req.Argv) == 0) == (req.Builtin == "") || (req.Builtin != "" && req.Builtin != "nft-tables") {
			continue // not from the node-runner
		}
		inFlight.Add(1)
		go func(req request) {
			defer inFlight.Done()
			answer(runInNetns(*req.ID, req.Netns, req.Argv, req.Input, req.Builtin))
		}(req)
	}
	// The node-runner is gone: so is the reason to exist, once what it asked for has ended.
	inFlight.Wait()
}

// runInNetns runs argv in the network namespace at netnsPath with input on its stdin. The
// exit code follows nsenter's conventions (127 when the command cannot be started, 128 when
// killed); Failure says which of those it was.
func runInNetns(id int, netnsPath string, argv []string, input string, builtin string) reply {
	done := make(chan reply, 1)
	go func() {
		// The thread enters the namespace and is never unlocked: it ends with this goroutine,
		// so no other goroutine ever runs in that namespace. Go starts new threads from a clean
		// template thread while this one is locked, so they do not inherit it either.
		runtime.LockOSThread()
		fd, err := syscall.Open(netnsPath, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			done <- reply{ID: id, Code: 127, Stderr: fmt.Sprintf("cannot open the network namespace %s: %v", netnsPath, err), Failure: failureNetnsGone}
			return
		}
		_, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0)
		_ = syscall.Close(fd)
		if errno != 0 {
			done <- reply{ID: id, Code: 127, Stderr: fmt.Sprintf("cannot enter the network namespace %s: %v", netnsPath, errno), Failure: failureNetnsGone}
			return
		}
		if builtin == "nft-tables" {
			tables, err := listNftTables()
			if err != nil {
				done <- reply{ID: id, Code: 1, Stderr: err.Error()}
				return
			}
			done <- reply{ID: id, Code: 0, Stdout: tables}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader(input)
		var stdout, stderr cappedBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run() // forked from this thread: the command starts in the namespace
		var exitErr *exec.ExitError
		switch {
		case err == nil:
			done <- reply{ID: id, Code: 0, Stdout: stdout.text(), Stderr: stderr.text()}
		case errors.As(err, &exitErr):
			if status, ok := exitErr.Sys().(syscall.WaitStatus); ok && status.Signaled() {
				failure := failureKilled
				if ctx.Err() != nil {
					failure = failureTimeout
				}
				done <- reply{ID: id, Code: 128, Stdout: stdout.text(), Stderr: stderr.text() + "killed by " + status.Signal().String(), Failure: failure}
				return
			}
			done <- reply{ID: id, Code: exitErr.ExitCode(), Stdout: stdout.text(), Stderr: stderr.text()}
		default:
			done <- reply{ID: id, Code: 127, Stdout: stdout.text(), Stderr: err.Error(), Failure: failureToolMissing}
		}
	}()
	return <-done
}
