package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// procTable is the only code in the manager process that forks, waits for
// or signals a child. It runs on one goroutine locked to one OS thread for
// as long as the supervisor runs, for two reasons:
//
//   - Pdeathsig. The kernel sends a child its parent-death signal when the
//     thread that forked it exits, not the process (golang/go#27505). Forking
//     from a thread that lives as long as the manager makes the signal mean
//     "the manager is gone". When run returns, the thread exits with it, and
//     any child still alive then is killed.
//
//   - Exit statuses and pids. wait4(-1) reaps every child, workers and the
//     orphans reparented to us as subreaper alike, so it must have one owner
//     or statuses are stolen. Forks, reaps and signals being serialised on
//     one goroutine also closes the pid-reuse race: a pid is tracked from the
//     moment its fork returns until the moment it is reaped, and no signal is
//     ever sent to a pid that has been reaped (and so may have been reused).
//
// The table never blocks on the loop: it posts results to the loop's
// mailbox. It knows processes by token (one per start of a worker), so the
// loop never has to reason about pids being reused.
type procTable struct {
	log   *zap.Logger
	now   func() time.Time
	inbox *mailbox[procRequest]
	post  func(event) // into the loop's mailbox; never blocks

	devNull     *os.File // every worker's stdin
	managerPipe *os.File // read end handed to Go workers as fd 3
	bufs        readBuffers

	byPid   map[int]uint64 // live (unreaped) children we started → token
	byToken map[uint64]int
}

// procRequest is a message to the process table: a spawn or a signal.
type procRequest struct {
	token uint64
	spawn *spawnSpec     // start a process for token
	sig   syscall.Signal // or send sig to token's process group
}

// run serves requests and reaps children until quit is closed. It returns
// only after releasing its OS thread to die, which kills, by their
// parent-death signal, any child still running.
func (p *procTable) run(quit <-chan struct{}, sigchld <-chan os.Signal) {
	runtime.LockOSThread() // never unlocked: see the type's comment
	var batch []procRequest
	for {
		select {
		case <-quit:
			return
		case <-sigchld:
			p.reap()
		case <-p.inbox.wake:
			batch = p.inbox.take(batch)
			for _, req := range batch {
				if req.spawn != nil {
					p.spawn(req.token, req.spawn)
				} else {
					p.signal(req.token, req.sig)
				}
			}
			// A child may have died while we forked; its SIGCHLD is
			// buffered, but reaping now keeps exit order close to real.
			p.reap()
		}
	}
}

// spawn forks and execs one worker. The process gets its own process group
// (so a stop signal reaches its children too), SIGKILL as its parent-death
// signal, /dev/null as stdin, and pipes for stdout and stderr that are read
// to the end and logged line by line.
func (p *procTable) spawn(token uint64, s *spawnSpec) {
	pid, err := p.forkExec(s)
	if err != nil {
		p.post(startFailed{token: token, err: err, at: p.now()})
		return
	}
	p.byPid[pid] = token
	p.byToken[token] = pid
	p.post(workerStarted{token: token, pid: pid, at: p.now()})
}

func (p *procTable) forkExec(s *spawnSpec) (pid int, err error) {
	path, err := lookPath(s.argv0, s.env, s.dir)
	if err != nil {
		return 0, fmt.Errorf("start %s worker %d: %w", s.service, s.id, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("start %s worker %d: stdout pipe: %w", s.service, s.id, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return 0, fmt.Errorf("start %s worker %d: stderr pipe: %w", s.service, s.id, err)
	}
	// Fd also puts the write ends back in blocking mode, which the worker
	// shares with us: a worker must block, not fail, when its pipe is full.
	files := []uintptr{p.devNull.Fd(), outW.Fd(), errW.Fd()}
	if s.goWorker {
		files = append(files, p.managerPipe.Fd())
	}
	pid, err = syscall.ForkExec(path, s.argv, &syscall.ProcAttr{
		Dir:   s.dir,
		Env:   s.env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	})
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if s.dir != "" && errors.Is(err, syscall.ENOENT) {
			if _, serr := os.Stat(s.dir); serr != nil {
				return 0, fmt.Errorf("start %s worker %d: chdir %s: %w", s.service, s.id, s.dir, serr)
			}
		}
		return 0, fmt.Errorf("start %s worker %d: exec %s: %w", s.service, s.id, path, err)
	}
	log := p.log.With(zap.String("service", s.service), zap.Int("worker", s.id), zap.Int("pid", pid))
	// Logged here rather than by the loop, so that it always comes before
	// the worker's first line of output.
	log.Info("worker started", zap.Int("restarts", s.restarts))
	go logOutput(outR, log.With(zap.String("stream", "stdout")), &p.bufs)
	go logOutput(errR, log.With(zap.String("stream", "stderr")), &p.bufs)
	return pid, nil
}

// signal sends sig to the process group of token's process, if that process
// has not been reaped yet; otherwise it does nothing, so it is safe to ask
// twice, or after the process has exited.
func (p *procTable) signal(token uint64, sig syscall.Signal) {
	pid, ok := p.byToken[token]
	if !ok {
		return
	}
	// The leader is unreaped, so its pid is still the group's id and cannot
	// belong to anyone else.
	if err := unix.Kill(-pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		p.log.Error("signal worker", zap.Int("pid", pid), zap.Stringer("signal", sig), zap.Error(err))
	}
}

// reap collects every child that has exited: workers are reported to the
// loop; anything else is an orphan a worker left behind, reparented to us as
// the child subreaper, and is only logged.
func (p *procTable) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none has exited
		}
		at := p.now()
		token, ours := p.byPid[pid]
		if !ours {
			p.log.Debug("reaped orphan", zap.Int("pid", pid), zap.String("status", describeStatus(ws)))
			continue
		}
		delete(p.byPid, pid)
		delete(p.byToken, token)
		// Whatever the worker left in its process group goes with it. No
		// fork can happen between the reap above and this kill (both run
		// here), so the group id cannot have been reused by one of ours.
		_ = unix.Kill(-pid, unix.SIGKILL)
		p.post(workerExited{token: token, pid: pid, status: ws, at: at})
	}
}

// describeStatus renders an exit status the way the logs show it.
func describeStatus(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit code " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s := "killed by " + unix.SignalName(ws.Signal())
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	default:
		return fmt.Sprintf("status %#x", uint32(ws))
	}
}

// startProcTable starts the process table's goroutine. SIGCHLD is
// subscribed before it returns, so no exit is missed.
func startProcTable(p *procTable) (stop func()) {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(quit, sigchld)
	}()
	return func() {
		close(quit)
		<-done
		signal.Stop(sigchld)
	}
}
