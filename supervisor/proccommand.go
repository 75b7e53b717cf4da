package supervisor

// The process table's side of RunCommand (command.go): it forks the
// command, reaps it with everything else, reads its output to the end and
// answers the caller.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// commandReq: start a command and answer reply (buffered) once it has
// exited and its output is read.
type commandReq struct {
	id    uint64
	path  string
	argv  []string
	env   []string
	dir   string
	reply chan<- commandDone
}

// commandCancel: kill the command's process group, if it still runs.
type commandCancel struct{ id uint64 }

// commandOutput: the command's output reached end of file (or its pipe
// was closed); data is what was kept of it.
type commandOutput struct {
	id        uint64
	data      []byte
	truncated bool
}

// commandGraceOver: the command exited outputGrace ago and something it
// left outside its group still holds its output.
type commandGraceOver struct{ id uint64 }

func (commandReq) isProcMsg()       {}
func (commandCancel) isProcMsg()    {}
func (commandOutput) isProcMsg()    {}
func (commandGraceOver) isProcMsg() {}

// command is a running command as the process table sees it.
type command struct {
	id     uint64
	pid    int // also its process group id
	reply  chan<- commandDone
	outR   *os.File
	cgroup string // its own cgroup; "" without one
	reaped bool
	status unix.WaitStatus
	// read: its output is at end of file; output and truncated are what
	// was kept.
	read      bool
	output    []byte
	truncated bool
	grace     func() bool
}

// startCommand forks and execs req's command.
func (p *procTable) startCommand(req commandReq) {
	if p.cmds == nil {
		p.cmds, p.cmdByPid = make(map[uint64]*command), make(map[int]*command)
	}
	path, err := lookPath(req.path, req.env, req.dir)
	if err != nil {
		req.reply <- commandDone{err: err}
		return
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		req.reply <- commandDone{err: fmt.Errorf("output pipe: %w", err)}
		return
	}
	pid, cgroup, err := p.forkInCgroup("c-"+strconv.FormatUint(req.id, 10), path, req.argv, &syscall.ProcAttr{
		Dir:   req.dir,
		Env:   req.env,
		Files: []uintptr{p.devNull.Fd(), outW.Fd(), outW.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	})
	outW.Close()
	if err != nil {
		outR.Close()
		if req.dir != "" && errors.Is(err, syscall.ENOENT) {
			if _, serr := os.Stat(req.dir); serr != nil {
				err = fmt.Errorf("chdir %s: %w", req.dir, serr)
			}
		}
		req.reply <- commandDone{err: fmt.Errorf("exec %s: %w", path, err)}
		return
	}
	p.log.Debug("command started", zap.Int("pid", pid), zap.Strings("argv", req.argv))
	c := &command{id: req.id, pid: pid, reply: req.reply, outR: outR, cgroup: cgroup}
	p.cmds[c.id], p.cmdByPid[pid] = c, c
	id := c.id
	go func() {
		data, truncated := readLimited(outR, MaxCommandOutput)
		p.inbox.put(commandOutput{id: id, data: data, truncated: truncated})
	}()
}

// readLimited reads r to its end (or an error), keeping the first max
// bytes.
func readLimited(r io.Reader, max int) (data []byte, truncated bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			keep := min(n, max-len(data))
			data = append(data, buf[:keep]...)
			truncated = truncated || keep < n
		}
		if err != nil {
			return data, truncated
		}
	}
}

// commandExited records that c was reaped with ws. What it left in its
// process group is killed, as for a worker that died on its own.
func (p *procTable) commandExited(c *command, ws unix.WaitStatus) {
	delete(p.cmdByPid, c.pid)
	c.reaped, c.status = true, ws
	_ = p.sys.kill(-c.pid, unix.SIGKILL)
	if c.cgroup != "" {
		p.cg.kill(c.cgroup)
	}
	p.commandTryFinish(c)
}

// commandTryFinish answers c's caller once c is reaped and its output
// read; while only the output is missing, something outside its group
// holds it, and it gets outputGrace.
func (p *procTable) commandTryFinish(c *command) {
	switch {
	case !c.reaped:
	case c.read:
		if c.grace != nil {
			c.grace()
		}
		c.outR.Close()
		if c.cgroup != "" {
			p.removeCgroup(c.cgroup)
		}
		delete(p.cmds, c.id)
		c.reply <- commandDone{status: c.status, output: c.output, truncated: c.truncated}
	case c.grace == nil:
		id := c.id
		c.grace = p.sys.afterFunc(p.outputGrace, func() { p.inbox.put(commandGraceOver{id: id}) })
	}
}

// handleCommand serves the process table's messages about commands.
func (p *procTable) handleCommand(m procMsg) {
	switch m := m.(type) {
	case commandReq:
		p.startCommand(m)
	case commandCancel:
		if c := p.cmds[m.id]; c != nil && !c.reaped {
			_ = p.sys.kill(-c.pid, unix.SIGKILL)
			if c.cgroup != "" {
				p.cg.kill(c.cgroup)
			}
		}
	case commandOutput:
		if c := p.cmds[m.id]; c != nil {
			c.read, c.output, c.truncated = true, m.data, m.truncated
			p.commandTryFinish(c)
		}
	case commandGraceOver:
		if c := p.cmds[m.id]; c != nil && !c.read {
			p.log.Warn("command exited but its output is still open: a process outside its group holds it; closing it", zap.Int("pid", c.pid))
			c.outR.Close() // its reader then reports what it read
		}
	}
}
