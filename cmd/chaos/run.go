package main

// The driver: start the manager, let the chaos run, settle, prove.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

type options struct {
	Duration  time.Duration
	Seed      uint64
	Rate      int
	Consumers int
	Capacity  int
	Work      time.Duration // a consumer's time between its print and its Ack
	Keep      bool
	// Store is the queue's store: "memory" (the default) or "jetstream",
	// on a JetStream server in the run's directory, with Bridge the
	// bridge program; the chaos then also kills the manager (SIGKILL) and
	// starts it again, and no item may be lost.
	Store  string
	Bridge string
	// Exe is the binary the manager runs as (it must hand its command line
	// to a program.Program's Main with CHAOS_MANAGER=1, and as a worker);
	// default os.Executable().
	Exe string
}

func defaultOptions() options {
	return options{Duration: 60 * time.Second, Rate: 500, Consumers: 3, Capacity: 1000, Work: time.Millisecond, Store: "memory"}
}

// Tolerances of the resource proof: the manager's figures at the end,
// after settling, against those at the start with the first workers up.
const (
	fdSlack        = 10
	goroutineSlack = 20
	rssFactor      = 2
	rssSlack       = 20 << 20
)

// proof is one line of the summary.
type proof struct {
	name   string
	ok     bool
	detail string
}

// run runs the harness, writes the action log and the summary to out, and
// returns an error if any proof failed.
func run(ctx context.Context, opts options, out io.Writer) (err error) {
	if opts.Rate <= 0 || opts.Consumers < 1 || opts.Consumers > 8 || opts.Capacity < 1 || opts.Duration <= 0 || opts.Work < 0 {
		return errors.New("bad options: want rate > 0, 1 <= consumers <= 8, capacity >= 1, duration > 0")
	}
	switch {
	case opts.Store != "memory" && opts.Store != "jetstream":
		return fmt.Errorf("bad options: store %q: want memory or jetstream", opts.Store)
	case opts.Store == "jetstream" && opts.Bridge == "":
		return errors.New("bad options: store jetstream needs the bridge program (-bridge)")
	}
	exe := opts.Exe
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "chaos")
	if err != nil {
		return err
	}
	keep := opts.Keep
	defer func() {
		if err != nil || keep {
			fmt.Fprintf(out, "chaos: the config and the manager's log (without item lines) are kept in %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	var mb [8]byte
	rand.Read(mb[:])
	c := &chaos{
		opts:        opts,
		exe:         exe,
		dir:         dir,
		start:       time.Now(),
		out:         out,
		rnd:         mrand.New(mrand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		cfgPath:     filepath.Join(dir, "chaos.yaml"),
		queueSock:   filepath.Join(dir, "queue.sock"),
		controlSock: filepath.Join(dir, "control.sock"),
		marker:      hex.EncodeToString(mb[:]),
		kills:       map[string]int{},
		killedStart: map[int]uint64{},
		stopped:     map[int]*stopRec{},
		rescales:    map[string]int{},
		garbage:     map[string]int{},
		fileCount:   opts.Consumers,
	}
	if len(c.controlSock) > 107 {
		return fmt.Errorf("socket path %s is longer than 107 bytes: set TMPDIR to a shorter directory", c.controlSock)
	}
	c.ctl = newControl(c.controlSock)
	if err := c.writeConfig(c.config(1, opts.Consumers, ""), false); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	c.logs = newLogState(logFile)
	fmt.Fprintf(out, "chaos: seed %d, duration %v, rate %d/s, consumers %d, work %v, capacity %d, store %s, dir %s, uid %d\n",
		opts.Seed, opts.Duration, opts.Rate, opts.Consumers, opts.Work, opts.Capacity, opts.Store, dir, os.Getuid())

	if err := c.startManager(); err != nil {
		return err
	}
	defer func() {
		// Whatever happened, the manager and its workers do not outlive
		// the driver.
		c.contAll()
		c.closeAll()
		if !c.managerGone {
			syscall.Kill(c.managerPID, syscall.SIGTERM)
			select {
			case <-c.exitDone:
			case <-time.After(15 * time.Second):
				syscall.Kill(-c.managerPID, syscall.SIGKILL)
				syscall.Kill(c.managerPID, syscall.SIGKILL)
				<-c.exitDone
			}
		}
	}()
	fail := func(format string, args ...any) error {
		for _, l := range c.logs.recentLines(30) {
			fmt.Fprintf(out, "  manager: %s\n", l)
		}
		return fmt.Errorf(format, args...)
	}

	// Start: the manager is up, the first workers run and items flow.
	if err := waitUntil(ctx, 20*time.Second, func() bool {
		var n int
		c.logs.view(func(s *logState) { n = s.consLines })
		return n >= 50
	}); err != nil {
		return fail("the manager did not start and consume 50 items: %v", err)
	}
	st0, err := c.waitQuiet(ctx, 10*time.Second)
	if err != nil {
		return fail("start: %v", err)
	}
	if st0.PID != c.managerPID {
		return fail("status says manager pid %d, the driver started %d", st0.PID, c.managerPID)
	}
	m0, err := c.ctl.metrics(ctx)
	if err != nil {
		return fail("start: %v", err)
	}
	c.m0 = m0
	c.logf("manager pid %d up: %v; fds %.0f, goroutines %.0f, RSS %.1f MB", c.managerPID, st0.pids(),
		m0["process_open_fds"], m0["go_goroutines"], m0["process_resident_memory_bytes"]/1e6)

	// The chaos.
	c.logs.view(func(s *logState) { s.gapOn = true })
	monCtx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { c.monitor(monCtx); close(monDone) }()
	end := time.Now().Add(opts.Duration)
	c.loop(ctx, end)
	stopMon()
	<-monDone
	c.contAll()
	c.closeAll()
	c.logs.view(func(s *logState) {
		// A stall at the very end has no later item to measure it by.
		if !s.lastCons.IsZero() {
			s.maxGap = max(s.maxGap, time.Since(s.lastCons))
		}
		s.gapOn = false
	})
	if ctx.Err() != nil {
		return fail("interrupted")
	}
	c.logf("chaos over; production stops (producer: 0 workers), consumer back to %d", opts.Consumers)

	var proofs []proof
	add := func(name string, ok bool, format string, args ...any) {
		proofs = append(proofs, proof{name: name, ok: ok, detail: fmt.Sprintf(format, args...)})
	}

	// Settle: the final good file, producer 0, consumer as at the start.
	if err := c.writeConfig(c.config(0, opts.Consumers, ""), true); err != nil {
		return err
	}
	settleStart := time.Now()
	if code, body, err := c.ctl.reload(ctx); err != nil || code != 200 {
		return fail("final reload: %d %s %v", code, truncate(body, 300), err)
	}
	var stEnd *status
	why := ""
	err = waitUntil(ctx, 60*time.Second, func() bool {
		st, err := c.ctl.status(ctx)
		if err != nil {
			why = err.Error()
			return false
		}
		stEnd = st
		ok, w := st.quiet()
		why = w
		if !ok {
			return false
		}
		if d, _, _, _ := st.service("producer"); d != 0 {
			why = fmt.Sprintf("producer desired %d", d)
			return false
		}
		if d, _, _, _ := st.service("consumer"); d != opts.Consumers {
			why = fmt.Sprintf("consumer desired %d", d)
			return false
		}
		depth, inFlight := st.queue(queueName)
		why = fmt.Sprintf("queue depth %d, in flight %d", depth, inFlight)
		return depth == 0 && inFlight == 0
	})
	settled := time.Since(settleStart)
	if err != nil {
		return fail("did not settle: %s: %v", why, err)
	}
	pd, pc, pr2, pb := stEnd.service("producer")
	cd, cc, cr, cb := stEnd.service("consumer")
	add("counts", pd == 0 && pc == 0 && pr2 == 0 && cd == opts.Consumers && cc == opts.Consumers && cr == cd && pb+cb == 0,
		"settled in %.1fs: producer %d/%d (file %d), consumer %d/%d (file %d), backoff %d; jobs depth 0, in flight 0",
		settled.Seconds(), pr2, pd, pc, cr, cd, cc, pb+cb)

	// Resources, after settling, against the last manager's start (a
	// manager killed took its figures with it): the closes of the chaos's connections
	// and the exits of the stopped workers are seen by the manager within
	// moments, so wait (with a deadline) for the figures to come back.
	m0 = c.m0
	var m1 map[string]float64
	resOK := func(m map[string]float64) bool {
		return m["process_open_fds"] <= m0["process_open_fds"]+fdSlack &&
			m["go_goroutines"] <= m0["go_goroutines"]+goroutineSlack &&
			m["process_resident_memory_bytes"] < rssFactor*m0["process_resident_memory_bytes"]+rssSlack
	}
	waitUntil(ctx, 15*time.Second, func() bool {
		m, err := c.ctl.metrics(ctx)
		if err != nil {
			return false
		}
		m1 = m
		return resOK(m)
	})
	if m1 == nil {
		return fail("metrics at the end: none answered")
	}
	add("resources", resOK(m1), "fds %.0f→%.0f (≤ +%d), goroutines %.0f→%.0f (≤ +%d), RSS %.1f→%.1f MB (< %d×start + %d MB)",
		m0["process_open_fds"], m1["process_open_fds"], fdSlack, m0["go_goroutines"], m1["go_goroutines"], goroutineSlack,
		m0["process_resident_memory_bytes"]/1e6, m1["process_resident_memory_bytes"]/1e6, rssFactor, rssSlack>>20)

	// Zombies: no child of the manager in state Z (a zombie may exist for
	// an instant between an exit and its reap: it must be gone within 2 s).
	var zombies []int
	waitUntil(ctx, 2*time.Second, func() bool {
		zombies = zombies[:0]
		for _, pid := range allPIDs() {
			if st, err := readStat(pid); err == nil && st.state == 'Z' && st.ppid == c.managerPID {
				zombies = append(zombies, pid)
			}
		}
		return len(zombies) == 0
	})
	add("zombies", len(zombies) == 0, "%d children of the manager in state Z %v", len(zombies), zombies)

	// Tree: every process of this run (the marker in its environment, set
	// by the config's env, and GOTYLEDON_SERVICE) descends from the manager.
	marked, outside := markedProcs(c.marker, c.managerPID)
	add("tree", len(outside) == 0 && len(marked) == opts.Consumers,
		"%d processes of this run, all below the manager: %v (outside: %v)", len(marked), len(outside) == 0, outside)

	// Serving: status answered all along; garbage was dropped.
	c.mu.Lock()
	statusOK, statusBad, statusMax := c.statusOK, c.statusBad, c.statusMax
	var strictN, strictDropped int
	var kept []string
	dropped := 0
	for _, h := range c.held {
		h.mu.Lock()
		if h.serverClosed != 0 {
			dropped++
		}
		if h.limit == strictHold && (h.serverClosed != 0 || h.toLimit) {
			strictN++
			if h.serverClosed != 0 && h.serverClosed < strictHold {
				strictDropped++
			} else {
				kept = append(kept, h.kind)
			}
		}
		h.mu.Unlock()
	}
	garbageN := len(c.held)
	c.mu.Unlock()
	var maxGap time.Duration
	c.logs.view(func(s *logState) { maxGap = s.maxGap })
	add("serving", statusBad == 0 && statusOK > 0 && maxGap < 10*time.Second,
		"status answered %d/%d (slowest %v); longest pause between consumed items %.1fs (< 10s)",
		statusOK, statusOK+statusBad, statusMax.Round(time.Millisecond), maxGap.Seconds())
	// A run longer than twice the hold has connections held to the end of
	// it: at least one must have been, or the deadlines went unproven.
	add("garbage", len(kept) == 0 && (strictN > 0 || opts.Duration < 2*strictHold), "%d connections (%s); %d closed by the server; of those held to %v: %d/%d dropped by the server first %v",
		garbageN, formatCounts(c.garbage), dropped, strictHold, strictDropped, strictN, kept)

	// Shutdown: SIGTERM, exit 0, nothing of this run left.
	t0 := time.Now()
	syscall.Kill(c.managerPID, syscall.SIGTERM)
	var exitErr error
	select {
	case <-c.exitDone:
		exitErr = c.exitErr
		c.managerGone = true
	case <-time.After(20 * time.Second):
		exitErr = errors.New("still running after 20s")
		// Kill it, so that its log ends and the proofs can be told.
		syscall.Kill(-c.managerPID, syscall.SIGKILL)
		select {
		case <-c.exitDone:
			c.managerGone = true
		case <-time.After(5 * time.Second):
		}
	}
	took := time.Since(t0)
	select {
	case <-c.logDone: // the log up to its end: every item line is in
	case <-time.After(10 * time.Second):
		exitErr = errors.Join(exitErr, errors.New("its log did not end within 10s of its exit"))
	}
	var left []int
	waitUntil(ctx, 3*time.Second, func() bool {
		left, _ = markedProcs(c.marker, -1)
		return len(left) == 0
	})
	stoppedLine := c.logs.count("manager stopped: every worker has exited")
	add("shutdown", exitErr == nil && len(left) == 0 && stoppedLine == 1,
		"SIGTERM → exit %v in %.2fs; %q logged %d×; %d processes of this run left %v",
		exitDesc(exitErr), took.Seconds(), "manager stopped: every worker has exited", stoppedLine, len(left), left)

	proofs = append(proofs, c.itemProofs()...)
	proofs = append(proofs, c.actionProof())

	// The summary.
	failed := 0
	fmt.Fprintln(out, "chaos: summary")
	for _, p := range proofs {
		mark := "PASS"
		if !p.ok {
			mark = "FAIL"
			failed++
		}
		fmt.Fprintf(out, "  %s %-11s %s\n", mark, p.name, p.detail)
	}
	c.logs.view(func(s *logState) {
		if len(s.warnings) > 0 {
			fmt.Fprintln(out, "  manager warnings and errors (count: message):")
			keys := make([]string, 0, len(s.warnings))
			for k := range s.warnings {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(out, "    %5d: %s\n", s.warnings[k], truncate(k, 160))
			}
		}
	})
	if failed > 0 {
		return fmt.Errorf("%d of %d proofs failed (seed %d)", failed, len(proofs), opts.Seed)
	}
	return nil
}

// startManager starts the manager, in its own process group (a Ctrl-C
// reaches the driver, which stops it), with stderr on a pipe whose lines
// go to c.logs.
func (c *chaos) startManager() error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(c.exe, "run", "--log-format", "json", "--log-level", "info", "-c", c.cfgPath)
	cmd.Env = append(managerEnv(), "RUNTIME_DIRECTORY="+c.dir, envManager+"=1")
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("start the manager: %w", err)
	}
	pw.Close()
	c.managerPID, c.managerGone = cmd.Process.Pid, false
	logDone := make(chan struct{})
	go func() {
		c.logs.read(pr)
		pr.Close()
		close(logDone)
	}()
	exitDone := make(chan struct{})
	go func() {
		// Read once the channel is closed, by whoever waits for the exit.
		c.exitErr = cmd.Wait()
		close(exitDone)
	}()
	c.logDone, c.exitDone = logDone, exitDone
	return nil
}

// itemProofs proves, from the whole log, what happened to every item.
func (c *chaos) itemProofs() []proof {
	var out []proof
	c.logs.view(func(s *logState) {
		// A process that ended by a signal: SIGKILLed by the driver, or by
		// the manager (a stop_timeout on a SIGSTOPped worker); the
		// manager's log says which process and how.
		bySignal := func(p procID) (bool, string) {
			if p == noProc {
				return false, "never seen"
			}
			info := s.procs[p]
			if info.bySignal() {
				return true, info.exit
			}
			return false, "ended " + orNone(info.exit)
		}
		produced := 0
		var lost []string
		lostN := 0
		producers := 0
		for i, o := range s.origins {
			if o.proc != noProc {
				producers++
			}
			produced += int(o.announced)
			for seq := range o.announced {
				if _, ok := s.consumed[uint64(i)<<32|uint64(seq)]; !ok {
					lostN++
					if len(lost) < 5 {
						lost = append(lost, fmt.Sprintf("%s-%d", o.name, seq))
					}
				}
			}
		}
		// Consumed but never announced: the producer died between its Put
		// and its print. Only the item after the last announced one, of a
		// producer that ended by a signal.
		var unannounced, unexplainedU []string
		dups, dupExplained := 0, 0
		var unexplainedD []string
		reasons := map[string]int{}
		for k, r := range s.consumed {
			o, seq := s.origins[k>>32], uint32(k)
			if seq >= o.announced {
				sig, _ := bySignal(o.proc)
				if seq == o.announced && sig {
					unannounced = append(unannounced, s.formatID(k))
				} else {
					unexplainedU = append(unexplainedU, s.formatID(k))
				}
			}
			if r.count > 1 {
				dups++
				// Killed with the manager: its acknowledgements may have died
				// in the manager, and the item come again, after the kill.
				killedAt := s.procs[r.first].killedAt
				if sig, why := bySignal(r.first); sig && s.procs[r.first].service == "consumer" && (killedAt.IsZero() || r.secondAt.After(killedAt)) {
					dupExplained++
					reasons[why]++
				} else if len(unexplainedD) < 5 {
					unexplainedD = append(unexplainedD, fmt.Sprintf("%s first by pid %d (%s) at %s, then by pid %d at %s",
						s.formatID(k), s.procs[r.first].pid, why, r.firstAt.Format("15:04:05.000"), s.procs[r.second].pid, r.secondAt.Format("15:04:05.000")))
				}
			}
		}
		slices.Sort(lost)
		out = append(out, proof{"items", lostN == 0 && len(s.badLines) == 0 && len(s.seqGaps) == 0,
			fmt.Sprintf("produced %d (by %d producer processes), consumed %d unique (%d lines), lost %d %v; malformed lines %d, out-of-order announcements %d %v",
				produced, producers, len(s.consumed), s.consLines, lostN, lost, len(s.badLines), len(s.seqGaps), first(s.seqGaps, 3))})
		out = append(out, proof{"duplicates", dups == dupExplained,
			fmt.Sprintf("%d, %d explained: the consumer that took it first ended by a signal (%s); unexplained %v",
				dups, dupExplained, formatCounts(reasons), unexplainedD)})
		out = append(out, proof{"unannounced", len(unexplainedU) == 0,
			fmt.Sprintf("%d consumed items never announced, each the next item of a producer killed between Put and print %v; unexplained %v",
				len(unannounced), first(unannounced, 3), first(unexplainedU, 5))})
	})
	return out
}

// actionProof lists what the chaos did, and fails if an action failed.
func (c *chaos) actionProof() proof {
	c.mu.Lock()
	defer c.mu.Unlock()
	kills := 0
	for _, n := range c.kills {
		kills += n
	}
	rescales := 0
	for _, n := range c.rescales {
		rescales += n
	}
	garbage := 0
	for _, n := range c.garbage {
		garbage += n
	}
	d := fmt.Sprintf("kills %d (%s), stops %d, rescales %d (%s), bad edits %d (%d refused with no change), garbage connections %d",
		kills, formatCounts(c.kills), c.stops, rescales, formatCounts(c.rescales), c.badEdits, c.badOK, garbage)
	if c.opts.Store == "jetstream" {
		d += fmt.Sprintf(", manager kills %d", c.managerKills)
	}
	if len(c.failures) > 0 {
		d += fmt.Sprintf("; %d failed: %s", len(c.failures), strings.Join(first(c.failures, 5), "; "))
	}
	return proof{"actions", len(c.failures) == 0 && c.badOK == c.badEdits, d}
}

// markedProcs lists the processes of this run (marker in the environment
// and GOTYLEDON_SERVICE set), and those of them not below root (root -1:
// all are "outside").
func markedProcs(marker string, root int) (marked, outside []int) {
	self := os.Getpid()
	for _, pid := range allPIDs() {
		if pid == self || !hasEnv(pid, "CHAOS_RUN="+marker, "GOTYLEDON_SERVICE=") {
			continue
		}
		marked = append(marked, pid)
		if root < 0 || !descendsFrom(pid, root) {
			outside = append(outside, pid)
		}
	}
	return marked, outside
}

// managerEnv is the driver's environment without what must not reach the
// manager: systemd's variables, a gotyledon worker's, and the chaos's own.
func managerEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "GOTYLEDON_"), strings.HasPrefix(k, "CHAOS_"), strings.HasPrefix(k, "LISTEN_"),
			strings.HasPrefix(k, "WATCHDOG_"), k == "NOTIFY_SOCKET", k == "JOURNAL_STREAM", k == "RUNTIME_DIRECTORY":
			continue
		}
		out = append(out, kv)
	}
	return out
}

func exitDesc(err error) string {
	if err == nil {
		return "0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func first[T any](s []T, n int) []T { return s[:min(n, len(s))] }

func orNone(s string) string {
	if s == "" {
		return "(no exit logged)"
	}
	return s
}
