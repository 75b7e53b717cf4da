package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Commands a program runs from the manager process.
//
// The manager is a child subreaper, and its process table reaps every
// child of the process (wait4(-1)): workers, and the orphans reparented
// to it. A child started with os/exec is reaped there too, and os/exec's
// Wait then fails with "waitid: no child processes" and no exit status.
// So a hook, or anything else in a program that runs a Supervisor, runs
// a command through the process table: RunCommand. This file is the
// caller's side; proccommand.go is the process table's.

// Command is a program to run with RunCommand.
type Command struct {
	// Path is the program: a path, or a name looked up in Env's PATH (the
	// manager's PATH if Env has none). Required.
	Path string
	// Args are its arguments, without argv[0] (which is Path).
	Args []string
	// Env is its environment, "KEY=value"; nil: what the workers inherit
	// (the manager's, without systemd's and gotyledon's own variables).
	Env []string
	// Dir is its working directory; "": the manager's.
	Dir string
}

// CommandResult is how a command ended.
type CommandResult struct {
	// Status says how it ended: "exit code 0", "killed by SIGKILL".
	Status string
	// ExitCode is its exit code, or -1 if a signal ended it.
	ExitCode int
	// Output is what it wrote to stdout and stderr, interleaved as
	// written, up to MaxCommandOutput bytes; Truncated says there was more.
	Output    []byte
	Truncated bool
}

// MaxCommandOutput bounds the output RunCommand keeps of a command; the
// rest is read and dropped.
const MaxCommandOutput = 1 << 20

// ErrCommandFailed is wrapped by RunCommand's error when the command ran
// and exited with a code other than 0 or was ended by a signal; the
// result says how.
var ErrCommandFailed = errors.New("command failed")

// commandRequested: start req in the process table (forwarded as is).
type commandRequested struct{ req commandReq }

// commandCancelRequested: kill command id's process group.
type commandCancelRequested struct{ id uint64 }

func (commandRequested) isEvent()       {}
func (commandCancelRequested) isEvent() {}

// RunCommand runs c as a child of the manager, through the process table,
// and returns once it has exited and its output has been read: a nil error
// if it exited 0, one wrapping ErrCommandFailed otherwise (the result says
// how it ended). The command gets /dev/null as stdin, a process group of
// its own, and SIGKILL if the manager dies; when it exits, what it left in
// its group is killed, and its output is read for at most a second more.
//
// If ctx ends first, the command's process group is killed, and RunCommand
// returns ctx's error once it is reaped. A command that cannot start
// returns that error. It is safe from any goroutine and from a hook; once
// the loop has ended (the last worker of a shutdown is gone) it returns an
// error wrapping ErrStopped at once. Use it instead of os/exec in a program
// that runs a Supervisor (see the package's notes in command.go).
func (s *Supervisor) RunCommand(ctx context.Context, c Command) (CommandResult, error) {
	if c.Path == "" {
		return CommandResult{}, errors.New("run command: no program given")
	}
	env := c.Env
	if env == nil {
		env = s.baseEnv
	}
	id := s.nextCommand.Add(1)
	reply := make(chan commandDone, 1)
	req := commandReq{id: id, path: c.Path, argv: append([]string{c.Path}, c.Args...), env: slices.Clone(env), dir: c.Dir, reply: reply}
	if !s.inbox.put(commandRequested{req: req}) {
		return CommandResult{}, fmt.Errorf("run %s: %w", c.Path, ErrStopped)
	}
	var cancelled error
	select {
	case d := <-reply:
		return d.result(c.Path)
	case <-ctx.Done():
		cancelled = ctx.Err()
		s.inbox.put(commandCancelRequested{id: id})
	case <-s.tableEnded:
		return CommandResult{}, fmt.Errorf("run %s: %w", c.Path, ErrStopped)
	case <-s.finished:
		return CommandResult{}, fmt.Errorf("run %s: %w", c.Path, ErrStopped)
	}
	select {
	case d := <-reply:
		res, _ := d.result(c.Path)
		return res, fmt.Errorf("run %s: %w", c.Path, cancelled)
	case <-s.tableEnded:
	case <-s.finished:
	}
	return CommandResult{}, fmt.Errorf("run %s: %w", c.Path, cancelled)
}

// result turns the process table's report into RunCommand's answer.
func (d commandDone) result(path string) (CommandResult, error) {
	if d.err != nil {
		return CommandResult{}, fmt.Errorf("run %s: %w", path, d.err)
	}
	r := CommandResult{Status: describeStatus(d.status), ExitCode: d.status.ExitStatus(), Output: d.output, Truncated: d.truncated}
	if d.status.Signaled() {
		r.ExitCode = -1
	}
	if !d.status.Exited() || d.status.ExitStatus() != 0 {
		return r, fmt.Errorf("run %s: %s: %w", path, r.Status, ErrCommandFailed)
	}
	return r, nil
}

// commandDone is how the process table reports a command's end.
type commandDone struct {
	status    unix.WaitStatus
	output    []byte
	truncated bool
	err       error // it could not be started
}
