package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// procTable is the only code in the manager process that forks, waits for
// or signals a child (but for the wait of the cgroup sentinel it leaves
// behind as it ends: sentinelRelease). It runs on one goroutine locked to
// one OS thread from the supervisor's start until the shutdown's final
// sweep has left no child and every command is answered, for two reasons:
//
//   - Pdeathsig. The kernel sends a child its parent-death signal when the
//     thread that forked it exits, not the process (golang/go#27505). Forking
//     from a thread that lives as long as the manager makes the signal mean
//     "the manager is gone". When run returns, the thread exits with it, and
//     any child still alive then gets its parent-death signal.
//
//   - Exit statuses and pids. wait4(-1) reaps every child, workers and the
//     orphans reparented to us as subreaper alike, so it must have one owner
//     or statuses are stolen. Forks, reaps and signals being serialised on
//     one goroutine also closes the pid-reuse race: a pid is tracked from the
//     moment its fork returns until the moment it is reaped, and a group
//     whose leader has been reaped is signalled only while a child of ours
//     is in it and its id has not been handed out again (see signal).
//
// The table never blocks on the loop: it posts results to the loop's
// mailbox. It knows processes by token (one per start of a worker), so the
// loop never has to reason about pids.
//
// A worker's life here ends when two things have happened: its process was
// reaped, and its stdout and stderr reached end of file, so that every line
// it wrote is logged before its exit is. Only then is workerExited posted.
// Something outside the worker's process group (a daemon it started) may
// hold the pipes open for ever; outputGrace bounds that wait.
type procTable struct {
	log     *zap.Logger
	sys     *procOS // every fork, wait, signal, /proc read and timer; nil: startProcTable sets the real one
	now     func() time.Time
	inbox   *mailbox[procMsg]
	post    func(event) // into the loop's mailbox; never blocks
	sigchld chan os.Signal
	// exitNext: the process exits once the table has ended
	// (Options.ExitAfterRun). The table then leaves SIGCHLD caught, and
	// the sentinel it told to leave unreaped (whoever adopts it reaps
	// it), rather than spend the process's last moments on either: a
	// round trip to the runtime's signal thread, and a thread blocked in
	// waitid.
	exitNext bool

	devNull     *os.File // every worker's stdin
	managerPipe *os.File // read end handed to Go workers as fd 3
	bufs        readBuffers
	outputGrace time.Duration

	procs map[uint64]*proc // started and not yet finished, by token
	byPid map[int]*proc    // started and not yet reaped, by pid
	// cmds are the commands of RunCommand not yet answered, by id;
	// cmdByPid those not yet reaped (proccommand.go). Made on first use.
	cmds     map[uint64]*command
	cmdByPid map[int]*command
	// cg is the manager's cgroup subtree, each worker and command in a
	// cgroup of its own (cgroup.go); nil without one. sentinelPipe is the
	// write end of the sentinel's standard input (nil once it is told to
	// leave), and sentinelPid its pid.
	cg           *cgroupTree
	sentinelPipe *os.File
	sentinelPid  int
	// cgPending are workers' cgroups not yet empty when their workers
	// finished, removed when they are; uncontained: some worker runs
	// outside a cgroup of its own (its cgroup could not be made), so
	// leftovers are looked for among the manager's children too.
	cgPending   []string
	uncontained bool
	// swept: the shutdown's sweep is done; the table ends once the
	// commands it killed are answered (ended).
	swept bool
	// sentinelGrace is how long the sentinel waits between its SIGTERM
	// and its SIGKILL: the configuration's shutdown_timeout. sentinelName
	// is its argv[0], its title in ps.
	sentinelGrace time.Duration
	sentinelName  string
}

// proc is one worker process as the process table sees it.
type proc struct {
	token   uint64
	pid     int // also its process group id: workers lead their own group
	outputs [2]*os.File
	open    int  // output streams not yet at end of file
	stop    bool // a stop was asked for: the group is spared at the leader's exit
	killed  bool // the group was sent SIGKILL, or is empty: nothing in it holds the output
	reaped  bool
	status  unix.WaitStatus
	exitAt  time.Time
	grace   func() bool // cancels the output grace timer, once armed
	// output is what its output readers do; stepsAtGrace is their steps
	// when the grace timer was armed, and graceFrom when the first was.
	output       outputProgress
	stepsAtGrace uint64
	graceFrom    time.Time

	checkArmed bool // a groupCheckDue is on its way
	// groupGone: after the leader was reaped, its pid (the group's id) was
	// handed to another process, so nothing of this worker is left in the
	// group and the id must never be signalled for it again.
	groupGone bool
	// cgroup is the worker's own cgroup; "" without one.
	cgroup string
}

// procMsg is a message to the process table.
type procMsg interface{ isProcMsg() }

// spawnReq: start a process for token.
type spawnReq struct {
	token uint64
	spec  *spawnSpec
}

// signalReq: send sig to token's process group. stop marks the start of a
// graceful stop: the group is then spared when its leader exits, so that
// the rest of it can finish within the stop timeout, and the loop is told
// (stopSignalSent) when the signal has actually gone out.
type signalReq struct {
	token uint64
	sig   syscall.Signal
	stop  bool
}

// outputClosed: one of token's output streams reached end of file (or was
// closed) and its reader is done.
type outputClosed struct{ token uint64 }

// outputGraceOver: token's exited process still has its output open after
// outputGrace.
type outputGraceOver struct{ token uint64 }

// groupCheckDue: time to look whether a stopping worker's group, whose
// leader has exited, is empty yet.
type groupCheckDue struct{ token uint64 }

// sweepReq: stop whatever children the workers left behind (see sweep) and
// say on done how many had to be killed. The table ends after it, once
// the commands it killed are answered.
type sweepReq struct {
	fast    bool
	timeout time.Duration
	done    chan<- int // buffered: receives how many leftovers it had to SIGKILL
}

func (spawnReq) isProcMsg()        {}
func (signalReq) isProcMsg()       {}
func (outputClosed) isProcMsg()    {}
func (outputGraceOver) isProcMsg() {}
func (groupCheckDue) isProcMsg()   {}
func (sweepReq) isProcMsg()        {}

// run serves messages and reaps children until quit is closed or the
// shutdown's sweep is done. When it returns, its OS thread exits with it
// (see the type's comment).
func (p *procTable) run(quit <-chan struct{}) {
	runtime.LockOSThread() // never unlocked: see the type's comment
	if p.cg != nil {
		p.startSentinel()
	}
	defer p.sentinelRelease()
	var batch []procMsg
	for {
		select {
		case <-quit:
			return
		case <-p.sigchld:
			p.reap()
			if p.ended() {
				return
			}
		case <-p.inbox.wake:
			batch = p.inbox.take(batch)
			for _, m := range batch {
				p.handle(m)
				if p.ended() {
					return
				}
				// Reap between the spawns of a long batch, so that an exit
				// is not timed late (a quick crash taken for a long run).
				select {
				case <-p.sigchld:
					p.reap()
				default:
				}
			}
		}
	}
}

// ended reports that the table has nothing left to do: the shutdown's
// sweep is done and every command it killed has been answered, its
// output read (or its output grace over).
func (p *procTable) ended() bool { return p.swept && len(p.cmds) == 0 }

func (p *procTable) handle(m procMsg) {
	switch m := m.(type) {
	case spawnReq:
		p.spawn(m.token, m.spec)
	case signalReq:
		p.signal(m)
	case outputClosed:
		if pr := p.procs[m.token]; pr != nil {
			pr.open--
			p.tryFinish(pr)
		}
	case outputGraceOver:
		pr := p.procs[m.token]
		if pr == nil || !pr.reaped {
			break
		}
		// Output still being read or logged is a backlog the worker left
		// in its pipes (the manager's log was slow to take it), or a
		// leftover process still writing: either way lines would be lost.
		// Wait again, up to maxOutputDrain in all.
		busy := pr.output.busy.Load() > 0 || pr.output.steps.Load() != pr.stepsAtGrace
		if waited := p.now().Sub(pr.graceFrom); busy && waited < maxOutputDrain {
			p.log.Debug("worker exited and its output is still being read; waiting", zap.Int("pid", pr.pid), zap.Duration("waited", waited))
			pr.grace = nil
			p.armGrace(pr)
			break
		}
		p.log.Warn("worker exited but its output is still open: a process outside its group holds it; closing it",
			zap.Int("pid", pr.pid), zap.Duration("waited", p.now().Sub(pr.graceFrom)))
		p.finish(pr)
	case groupCheckDue:
		if pr := p.procs[m.token]; pr != nil {
			pr.checkArmed = false
			if !p.groupLeft(pr) {
				pr.killed = true // as good as: nothing is left in it
			}
			p.tryFinish(pr)
		}
	case sweepReq:
		killed := p.sweep(m.fast, m.timeout)
		p.swept = true
		m.done <- killed
		// After the answer, beside the supervisor's last steps: the table
		// ends, and the supervisor waits for it, before the process exits.
		p.sentinelLeave()
	case procProbe:
		m.reply <- struct{}{}
	default:
		p.handleCommand(m)
	}
}

// spawn forks and execs one worker. The process gets its own process group
// (so a stop signal reaches its children too), a parent-death signal, /dev/null
// as stdin, and pipes for stdout and stderr that are read to the end and
// logged line by line.
func (p *procTable) spawn(token uint64, s *spawnSpec) {
	pr, err := p.forkExec(token, s)
	if err != nil {
		p.post(startFailed{token: token, err: err, at: p.now()})
		return
	}
	// A worker whose leader had this pid and was reaped, still waiting for
	// its output, has lost its group: the kernel reuses a pid only once no
	// process has it as its group id. Signals for it must not reach the new
	// worker, which leads a group of the same id.
	for _, old := range p.procs {
		if old.reaped && old.pid == pr.pid {
			p.groupReused(old)
		}
	}
	p.procs[token] = pr
	p.byPid[pr.pid] = pr
	p.post(workerStarted{token: token, pid: pr.pid, at: p.now(), cgroup: pr.cgroup})
}

// groupReused marks pr's group as gone, its id handed to someone else.
func (p *procTable) groupReused(pr *proc) {
	if pr.groupGone {
		return
	}
	p.log.Debug("a reaped worker's pid was reused: its group is gone", zap.Int("pid", pr.pid))
	pr.groupGone = true
	pr.killed = true // as good as: nothing of it is left in the group
	p.tryFinish(pr)
}

// groupLeft reports whether a reaped worker's group still has a member of
// ours to signal, and marks it gone when its id was reused.
func (p *procTable) groupLeft(pr *proc) bool {
	if pr.groupGone {
		return false
	}
	left, reused := reapedGroup(p.sys.processes(), pr.pid, os.Getpid())
	if reused {
		p.groupReused(pr)
	}
	return left
}

func (p *procTable) forkExec(token uint64, s *spawnSpec) (*proc, error) {
	path, err := lookPath(s.argv0, s.env, s.dir)
	if err != nil {
		return nil, fmt.Errorf("start %s worker %d: %w", s.service, s.id, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s worker %d: stdout pipe: %w", s.service, s.id, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start %s worker %d: stderr pipe: %w", s.service, s.id, err)
	}
	// Fd also puts the write ends back in blocking mode, which the worker
	// shares with us: a worker must block, not fail, when its pipe is full.
	files := []uintptr{p.devNull.Fd(), outW.Fd(), errW.Fd()}
	if s.goWorker {
		files = append(files, p.managerPipe.Fd())
	}
	pid, cgroup, err := p.forkInCgroup("w-"+strconv.FormatUint(token, 10), path, s.argv, &syscall.ProcAttr{
		Dir:   s.dir,
		Env:   s.env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: s.deathSignal},
	})
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if s.dir != "" && errors.Is(err, syscall.ENOENT) {
			if _, serr := os.Stat(s.dir); serr != nil {
				return nil, fmt.Errorf("start %s worker %d: chdir %s: %w", s.service, s.id, s.dir, serr)
			}
		}
		return nil, fmt.Errorf("start %s worker %d: exec %s: %w", s.service, s.id, path, err)
	}
	log := p.log.With(zap.String("service", s.service), zap.Int("worker", s.id), zap.Int("pid", pid))
	// Logged here rather than by the loop, so that it always comes before
	// the worker's first line of output.
	log.Info("worker started", zap.Int("restarts", s.restarts))
	pr := &proc{token: token, pid: pid, outputs: [2]*os.File{outR, errR}, open: 2, cgroup: cgroup}
	// The worker's lines carry its tag as the logger's name, which the
	// console and journal formats print before the message ("printer/0"),
	// where a person reading a long line finds it.
	outLog := log.Named(s.service + "/" + strconv.Itoa(s.id))
	for i, stream := range []string{"stdout", "stderr"} {
		f, slog, progress := pr.outputs[i], outLog.With(zap.String("stream", stream)), &pr.output
		go func() {
			logOutput(f, slog, &p.bufs, progress)
			p.inbox.put(outputClosed{token: token})
		}()
	}
	return pr, nil
}

// signal sends a signal to a process group, if it is safe to: while the
// leader is unreaped its pid is the group's id and cannot belong to anyone
// else; after, the group is only signalled if one of our children is still
// in it and its id has not been seen handed to another process (a worker
// forked since, or any process with that pid: see reapedGroup). Asking
// again, or after the process has finished, does nothing.
func (p *procTable) signal(req signalReq) {
	pr := p.procs[req.token]
	if pr == nil {
		return
	}
	if req.stop {
		pr.stop = true
	}
	if !pr.reaped || p.groupLeft(pr) {
		if err := p.sys.kill(-pr.pid, req.sig); err != nil && !errors.Is(err, unix.ESRCH) {
			p.log.Error("signal worker", zap.Int("pid", pr.pid), zap.Stringer("signal", req.sig), zap.Error(err))
		}
		if req.stop && req.sig != unix.SIGKILL && req.sig != unix.SIGCONT {
			// A stopped process (SIGSTOP, a debugger, a terminal's ^Z)
			// only acts on its stop signal once continued, as systemd's
			// stop does: without it, it would wait out its stop_timeout
			// and be killed instead of stopping gracefully.
			_ = p.sys.kill(-pr.pid, unix.SIGCONT)
		}
	}
	if req.stop {
		p.post(stopSignalSent{token: req.token, at: p.now()})
	}
	if req.sig == syscall.SIGKILL {
		// Its cgroup holds what left its group too, and cannot be
		// reused by anyone else: no pid check needed.
		if pr.cgroup != "" {
			p.cg.kill(pr.cgroup)
		}
		pr.killed = true
		p.tryFinish(pr)
	}
}

// reap collects every child that has exited: workers are finished (once
// their output is closed, see tryFinish), commands answered (RunCommand);
// anything else is an orphan a worker left behind, reparented to us as the
// child subreaper, and is only logged.
func (p *procTable) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := p.sys.wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none has exited
		}
		pr := p.byPid[pid]
		if pr == nil {
			if c := p.cmdByPid[pid]; c != nil {
				p.commandExited(c, ws)
				continue
			}
			if pid == p.sentinelPid {
				p.sentinelPid = 0
				if p.sentinelPipe != nil { // not told to leave: it died
					p.log.Warn("the cgroup sentinel exited: what the workers leave behind now outlives a manager killed with SIGKILL",
						zap.Int("pid", pid), zap.String("status", describeStatus(ws)))
				}
				continue
			}
			p.log.Debug("reaped orphan", zap.Int("pid", pid), zap.String("status", describeStatus(ws)))
			continue
		}
		p.exited(pr, ws)
	}
}

// exited records that pr's process was reaped with status ws.
func (p *procTable) exited(pr *proc, ws unix.WaitStatus) {
	delete(p.byPid, pr.pid)
	pr.reaped, pr.status, pr.exitAt = true, ws, p.now()
	if !pr.stop {
		// A worker that died on its own takes what is left of its group
		// (and of its cgroup) with it. No fork can come between the reap
		// and this kill (both run here), so the group id is not one of our
		// new workers'.
		_ = p.sys.kill(-pr.pid, unix.SIGKILL)
		if pr.cgroup != "" {
			p.cg.kill(pr.cgroup)
		}
		pr.killed = true
	}
	p.tryFinish(pr)
}

// tryFinish finishes pr if it has been reaped and its output is closed. Once
// its group has been killed (at its own death, or by SIGKILL), what still
// holds the output is outside the group, and it gets outputGrace. A stopping
// worker's group is spared: its output may stay open until the group ends
// or the loop's SIGKILL at the stop timeout.
//
// Whether the group still has members is looked at only after groupCheck,
// and again every groupCheck while the output stays open: the output of a
// worker that exited normally closes within that time, and most reaps then
// cost no scan of /proc.
func (p *procTable) tryFinish(pr *proc) {
	switch {
	case !pr.reaped:
	case pr.open <= 0:
		p.finish(pr)
	case !pr.stop || pr.killed:
		p.armGrace(pr)
	case !pr.checkArmed:
		pr.checkArmed = true
		token := pr.token
		p.sys.afterFunc(groupCheck, func() { p.inbox.put(groupCheckDue{token: token}) })
	}
}

// groupCheck is how often a stopping worker whose leader has exited, but
// whose output is still open, is looked at for an empty group.
const groupCheck = 200 * time.Millisecond

func (p *procTable) armGrace(pr *proc) {
	if pr.grace != nil {
		return
	}
	if pr.graceFrom.IsZero() {
		pr.graceFrom = p.now()
	}
	pr.stepsAtGrace = pr.output.steps.Load()
	token := pr.token
	pr.grace = p.sys.afterFunc(p.outputGrace, func() { p.inbox.put(outputGraceOver{token: token}) })
}

// maxOutputDrain bounds how long a worker's output is read after its
// group is gone while it keeps coming: a backlog drains well within it,
// and a leftover process that keeps writing does not hold the slot for
// ever.
const maxOutputDrain = 30 * time.Second

// finish forgets pr and tells the loop the worker has exited.
func (p *procTable) finish(pr *proc) {
	if pr.grace != nil {
		pr.grace()
	}
	for _, f := range pr.outputs {
		f.Close() // unblocks a reader still waiting on a pipe held elsewhere
	}
	delete(p.procs, pr.token)
	// The loop first, the cgroup after: its removal (the kernel's, a tenth
	// of a millisecond) need not delay a restart or a shutdown's end.
	p.post(workerExited{token: pr.token, pid: pr.pid, status: pr.status, at: pr.exitAt})
	if pr.cgroup != "" {
		p.removeCgroup(pr.cgroup)
	}
}

// sweep stops the processes that workers left behind and that were
// reparented to us: daemons that left their worker's process group. They get
// SIGTERM (SIGKILL if fast), then SIGKILL at timeout, and are reaped.
func (p *procTable) sweep(fast bool, timeout time.Duration) (killed int) {
	self := os.Getpid()
	// One slot: a timer is only re-armed after the previous one fired, and
	// one that fires after sweep returned must not block.
	deadline := make(chan struct{}, 1)
	expire := func() { deadline <- struct{}{} }
	stopDeadline := p.sys.afterFunc(timeout, expire)
	defer func() { stopDeadline() }()
	sig := unix.SIGTERM
	if fast {
		sig = unix.SIGKILL
	}
	signalled := make(map[int]unix.Signal)
	tick, stopTick := p.sys.newTicker(50 * time.Millisecond) // for children that die without a SIGCHLD we catch
	defer stopTick()
	logged := false
	for {
		p.reap()
		kids := p.leftovers(self)
		if len(kids) == 0 {
			return killed
		}
		if !logged {
			p.log.Info("stopping processes the workers left behind", zap.Ints("pids", kids), zap.Stringer("signal", sig))
			logged = true
		}
		for _, pid := range kids {
			if signalled[pid] != sig {
				_ = p.sys.kill(pid, sig) // our unreaped child: the pid is still its
				signalled[pid] = sig
				if sig == unix.SIGKILL {
					killed++
				}
			}
		}
		select {
		case <-p.sigchld:
		case <-tick:
		case <-deadline:
			if sig == unix.SIGKILL {
				// Only a process stuck in the kernel survives SIGKILL;
				// waiting longer would hang the shutdown.
				p.log.Error("processes the workers left behind survive SIGKILL; leaving them", zap.Ints("pids", kids))
				return killed
			}
			p.log.Warn("processes the workers left behind did not stop in time; killing them", zap.Ints("pids", kids))
			sig = unix.SIGKILL
			stopDeadline = p.sys.afterFunc(sweepKillWait, expire)
		}
	}
}

// leftovers lists what the workers left behind: with cgroups, the
// processes in the workers' and commands' cgroups (nothing can leave
// them); without, the manager's children (orphans are reparented to it),
// looked for in /proc only if it has any: reading every process's stat
// file is the slow part of a stop on a busy machine.
func (p *procTable) leftovers(self int) []int {
	if p.cg != nil && !p.uncontained {
		if pids := p.cg.workerPids(); len(pids) > 0 {
			return pids
		}
		// A process leaves its cgroup as it dies, a moment before it can
		// be reaped: one of ours (reparented to us) that is between the
		// two is no longer in the workers' cgroups but still our child.
		// Looked for among our children, so that the sweep reaps it.
		if p.sys.children != nil {
			if kids, ok := p.sys.children(); ok {
				return slices.DeleteFunc(kids, func(pid int) bool { return pid == p.sentinelPid })
			}
		}
	}
	if p.sys.noChildren != nil && p.sys.noChildren() {
		return nil
	}
	return slices.DeleteFunc(childrenOf(p.sys.processes(), self), func(pid int) bool { return pid == p.sentinelPid })
}

// sweepKillWait bounds the wait for SIGKILLed leftovers to be reaped.
const sweepKillWait = 5 * time.Second

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

// startSentinel starts the shell that kills the manager's cgroup subtree
// once the manager is gone (cgroup.go). It stays in the manager's own
// cgroup, outside the subtree, so that removing the subtree at the end of
// a stop need not wait for it to exit. Without it, the workers' cgroups
// are still killed at every stop.
func (p *procTable) startSentinel() {
	r, w, err := os.Pipe()
	if err != nil {
		p.log.Warn("no cgroup sentinel: what workers leave behind outlives a manager killed with SIGKILL", zap.Error(err))
		return
	}
	defer r.Close()
	// The script and its arguments in the environment, so that ps shows
	// a title, as it does for Go workers: "NAME: cgroup sentinel -c ...".
	grace := strconv.FormatFloat(p.sentinelGrace.Seconds(), 'f', 3, 64)
	pid, err := p.sys.forkExec("/bin/sh", []string{p.sentinelName, "-c", `eval "$GOTYLEDON_SENTINEL"`},
		&syscall.ProcAttr{
			Env: []string{"PATH=/usr/bin:/bin", "GOTYLEDON_SENTINEL=" + sentinelScript,
				"GOTYLEDON_CGROUP=" + p.cg.root, "GOTYLEDON_GRACE=" + grace},
			Files: []uintptr{r.Fd(), p.devNull.Fd(), p.devNull.Fd()},
			Sys:   &syscall.SysProcAttr{Setpgid: true}, // away from the terminal's signals
		})
	if err != nil {
		w.Close()
		p.log.Warn("no cgroup sentinel: what workers leave behind outlives a manager killed with SIGKILL", zap.Error(err))
		return
	}
	p.sentinelPipe, p.sentinelPid = w, pid
}

// sentinelLeave tells the sentinel the manager cleans up itself: it exits
// at once, without killing anything.
func (p *procTable) sentinelLeave() {
	if p.sentinelPipe == nil {
		return
	}
	_, _ = p.sentinelPipe.WriteString("bye\n")
	p.sentinelPipe.Close()
	p.sentinelPipe = nil
}

// sentinelRelease, as the table stops, reaps the sentinel told to leave
// if it has exited, or else leaves a goroutine to: the stop does not wait
// for a shell to exit, and a program that goes on after Run keeps no
// zombie. With exitNext it does neither: whoever adopts the sentinel as
// the process exits reaps it, and the process's last moments go to no
// wait4 and no thread blocked in waitid.
func (p *procTable) sentinelRelease() {
	pid := p.sentinelPid
	if pid == 0 {
		return
	}
	p.sentinelPid = 0
	p.sentinelLeave() // in case no sweep told it
	if p.exitNext {
		return // the process's new parent reaps it
	}
	var ws unix.WaitStatus
	if got, err := p.sys.wait4(pid, &ws, unix.WNOHANG, nil); got == pid || (err != nil && !errors.Is(err, unix.EINTR)) {
		return
	}
	// Through a pidfd where the kernel has them (opened now, while the
	// pid is surely the sentinel's: only this table reaps, and it has
	// not): a pid alone could, once reaped elsewhere, name someone else.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		go func() {
			defer unix.Close(fd)
			var info unix.Siginfo
			for errors.Is(unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED, nil), unix.EINTR) {
			}
		}()
		return
	}
	go func() {
		for {
			var ws unix.WaitStatus
			if _, err := p.sys.wait4(pid, &ws, 0, nil); !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
}

// forkInCgroup forks and execs path into a cgroup of its own called name,
// where the manager has cgroups (and it can be made), and returns the
// process's pid and cgroup ("" without one).
func (p *procTable) forkInCgroup(name, path string, argv []string, attr *syscall.ProcAttr) (pid int, cgroup string, err error) {
	cgroup, fd := p.newCgroup(name)
	useCgroup(attr.Sys, fd)
	pid, err = p.sys.forkExec(path, argv, attr)
	if fd >= 0 {
		unix.Close(fd)
	}
	if err != nil && cgroup != "" {
		p.removeCgroup(cgroup)
		cgroup = ""
	}
	return pid, cgroup, err
}

// removeCgroup removes the cgroup of a finished worker or command, or
// keeps it for later if it is not empty yet, and retries those kept.
func (p *procTable) removeCgroup(dir string) {
	p.cgPending = slices.DeleteFunc(append(p.cgPending, dir), p.cg.remove)
}

// newCgroup makes the cgroup called name for a process about to be forked
// and opens it; "" and -1 without a cgroup tree, or when it cannot (said
// in the log: the process then runs in its process group alone).
func (p *procTable) newCgroup(name string) (dir string, fd int) {
	if p.cg == nil {
		return "", -1
	}
	dir, fd, err := p.cg.workerCgroup(name)
	if err != nil {
		p.log.Warn("process not in a cgroup of its own", zap.Error(err))
		p.uncontained = true
		return "", -1
	}
	return dir, fd
}

// startProcTable starts the process table's goroutine, on the real
// operating system unless p.sys says otherwise. SIGCHLD is subscribed
// before it returns, so no exit is missed. stop ends the table, unless a
// sweep has, and waits for it.
func startProcTable(p *procTable) (stop func()) {
	if p.sys == nil {
		p.sys = realProcOS()
	}
	p.sigchld = make(chan os.Signal, 1)
	signal.Notify(p.sigchld, syscall.SIGCHLD)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(quit)
		if p.cg != nil {
			p.cg.close()
		}
		if !p.exitNext {
			signal.Stop(p.sigchld)
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
