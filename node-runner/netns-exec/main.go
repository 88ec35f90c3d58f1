// podnet-netns-exec, the node-runner's command helper: a small long-lived process that runs
// the commands of an apply inside a network namespace (README, "The apply engine"). The
// node-runner is a large Node process; a spawn from it, or from any Node process, costs
// milliseconds of CPU. This one enters the namespace on one of its own threads (setns) and
// forks the command from that thread: one exec per command, no nsenter.
//
// Protocol: one JSON request per line on stdin, {id, netns, argv, input} (or {id, netns,
// builtin: "nft-tables"}: the namespace's nftables tables, no command); one JSON answer per
// line on stdout, {id, code, stdout, stderr}, in any order. `netns` is a path that names the
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
	ID     int    `json:"id"`
	Code   int    `json:"code"`
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
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
			code, stdout, stderr := runInNetns(req.Netns, req.Argv, req.Input, req.Builtin)
			answer(reply{ID: *req.ID, Code: code, Stdout: stdout, Stderr: stderr})
		}(req)
	}
	// The node-runner is gone: so is the reason to exist, once what it asked for has ended.
	inFlight.Wait()
}

// runInNetns runs argv in the network namespace at netnsPath with input on its stdin. The
// exit code follows nsenter's conventions as the node-runner reads them: 127 when the command
// cannot be started, 128 plus nothing when killed (the reason in stderr).
func runInNetns(netnsPath string, argv []string, input string, builtin string) (int, string, string) {
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		// The thread enters the namespace and is never unlocked: it ends with this goroutine,
		// so no other goroutine ever runs in that namespace. Go starts new threads from a clean
		// template thread while this one is locked, so they do not inherit it either.
		runtime.LockOSThread()
		fd, err := syscall.Open(netnsPath, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			done <- result{127, "", fmt.Sprintf("cannot open the network namespace %s: %v", netnsPath, err)}
			return
		}
		_, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0)
		_ = syscall.Close(fd)
		if errno != 0 {
			done <- result{127, "", fmt.Sprintf("cannot enter the network namespace %s: %v", netnsPath, errno)}
			return
		}
		if builtin == "nft-tables" {
			tables, err := listNftTables()
			if err != nil {
				done <- result{1, "", err.Error()}
				return
			}
			done <- result{0, tables, ""}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader(input)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run() // forked from this thread: the command starts in the namespace
		var exitErr *exec.ExitError
		switch {
		case err == nil:
			done <- result{0, stdout.String(), stderr.String()}
		case errors.As(err, &exitErr):
			if status, ok := exitErr.Sys().(syscall.WaitStatus); ok && status.Signaled() {
				done <- result{128, stdout.String(), stderr.String() + "killed by " + status.Signal().String()}
				return
			}
			done <- result{exitErr.ExitCode(), stdout.String(), stderr.String()}
		default:
			done <- result{127, stdout.String(), err.Error()}
		}
	}()
	r := <-done
	return r.code, r.stdout, r.stderr
}
