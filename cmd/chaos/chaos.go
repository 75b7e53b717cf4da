package main

// The chaos actions. They run one at a time from one goroutine (the
// schedule), except what outlives an action: a SIGSTOP's SIGCONT and the
// garbage connections, which have timers of their own.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// strictHold is how long the driver holds a garbage or stalled connection
// at most. ipc/PROTOCOL.md promises that the broker drops a client stalled
// mid-frame, or silent before HELLO, after 10 s, and the control server
// has a 10 s ReadHeaderTimeout: one held this long that the server has not
// closed is a failure.
const strictHold = 13 * time.Second

type chaos struct {
	opts        options
	start       time.Time
	out         io.Writer
	outMu       sync.Mutex
	rnd         *rand.Rand // the schedule's goroutine only
	ctl         *controlSocket
	logs        *logState
	cfgPath     string
	queueSock   string
	controlSock string
	marker      string
	exe, dir    string // the manager's binary; the run's directory

	// The manager's process, its exit and the end of its log. The
	// schedule's goroutine changes them (a manager kill, in the
	// jetstream store's run); the driver reads them after the schedule.
	managerPID  int
	managerGone bool
	exitDone    chan struct{} // closed at the manager's exit; exitErr then says how
	exitErr     error
	logDone     chan struct{}
	m0          map[string]float64 // the manager's metrics at its start

	// The schedule's goroutine only.
	fileCount     int       // consumers in the file's last good version
	lastGoodWrite time.Time // when that version was written
	lastBadEdit   time.Time
	// lastManagerKill: when the manager was last killed (jetstream).
	lastManagerKill time.Time
	managerKills    int
	gen             int  // good versions of the file written: each differs from every other
	restoring       bool // config writes the last good version again

	mu       sync.Mutex
	failures []string
	kills    map[string]int
	// killedStart: the workers this run SIGKILLed, by pid, with their
	// start times (a pid handed to a new process has another).
	killedStart map[int]uint64
	stops       int
	stopped     map[int]*stopRec
	rescales    map[string]int
	badEdits    int
	badOK       int
	garbage     map[string]int
	held        []*heldConn
	heldWG      sync.WaitGroup
	statusOK    int
	statusBad   int
	statusMax   time.Duration
	// restarting: the manager was killed and its successor is not up
	// yet; status is not asked then.
	restarting bool
}

type stopRec struct {
	start uint64 // the process's starttime: a SIGCONT goes to the same process
	timer *time.Timer
}

func (c *chaos) logf(format string, args ...any) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	fmt.Fprintf(c.out, "%8.3fs  %s\n", time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
}

func (c *chaos) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.logf("FAILURE: %s", msg)
	c.mu.Lock()
	c.failures = append(c.failures, msg)
	c.mu.Unlock()
}

// --- configuration ---

// config is the YAML the manager runs. bad, if not empty, names a broken
// variant. Every good version has a number in a comment, so that every
// rescale differs from the last content the manager has read (content it
// read already is not reloaded: a scale by POST /v1/scale would otherwise
// outlive a write of the same count). A bad variant and the restore after
// it carry the number of the good version before them: the restore is the
// very bytes the manager last applied, which it must apply again after
// refusing the bad edit, even when a control reload read the bad content
// and the file watch never saw it.
func (c *chaos) config(producers, consumers int, bad string) []byte {
	restart := "{min_uptime: 100ms, backoff_initial: 20ms, backoff_max: 500ms}"
	consumerWorkers := fmt.Sprint(consumers)
	// A JetStream consumer stopping may wait out a pull request (up to a
	// second), and a loaded machine more: once, beside the suite and
	// .ci/run, one took 3.3 s and a 2 s stop_timeout killed it.
	stopTimeout := "10s"
	consumerRun := "consumer"
	switch bad {
	case "workers: many":
		consumerWorkers = "many"
	case "bad duration":
		stopTimeout = "forever"
	case "unknown service":
		consumerRun = "no-such-service"
	}
	if bad == "" && !c.restoring {
		c.gen++
	}
	queue := fmt.Sprintf("{capacity: %d}", c.opts.Capacity)
	natsSection := ""
	if c.opts.Store == "jetstream" {
		// ack_wait above the longest a live consumer holds an item (a
		// SIGSTOP of up to 3 s): an item comes back only from a consumer
		// that died.
		queue = fmt.Sprintf("{capacity: %d, store: jetstream, ack_wait: %s}", c.opts.Capacity, jetStreamAckWait)
		natsSection = fmt.Sprintf("nats: {local_dir: %q, bridge: %q}\n", filepath.Join(c.dir, "jetstream"), c.opts.Bridge)
	}
	y := fmt.Sprintf(`# chaos run %s, version %d: written by cmd/chaos
shutdown_timeout: 5s
%squeues:
  %s: %s
services:
  producer:
    run: producer
    workers: %d
    env: {CHAOS_RUN: %q, %s: "%d"}
    stop_timeout: 10s
    restart: %s
  consumer:
    run: %s
    workers: %s
    env: {CHAOS_RUN: %q, %s: %q}
    stop_timeout: %s
    restart: %s
`, c.marker, c.gen, natsSection, queueName, queue, producers, c.marker, envRate, c.opts.Rate, restart,
		consumerRun, consumerWorkers, c.marker, envWork, c.opts.Work.String(), stopTimeout, restart)
	switch bad {
	case "broken YAML":
		y = y[:len(y)*2/3] + "\n  consumer: {run: consumer, workers: [3\n"
	case "unknown key":
		y = strings.Replace(y, "    workers: "+consumerWorkers, "    wokers: "+consumerWorkers, 1)
	}
	return []byte(y)
}

// writeConfig writes the file in place, or (rename) as an editor saves:
// a new file renamed over it.
func (c *chaos) writeConfig(data []byte, rename bool) error {
	if !rename {
		return os.WriteFile(c.cfgPath, data, 0o644)
	}
	tmp := filepath.Join(filepath.Dir(c.cfgPath), ".chaos.yaml.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.cfgPath)
}

// --- the schedule ---

var actionKinds = []string{"kill", "stop", "rescale", "bad-edit", "garbage"}

// Of a run on the jetstream store: its queue's ack_wait, and the least
// time between two kills of the manager.
const (
	jetStreamAckWait   = 10 * time.Second
	managerKillEvery   = 10 * time.Second
	managerRestartWait = 30 * time.Second
)

// loop runs actions until end: first one of each kind (the bad edit
// first, then the others in a seeded order), then random ones, 100-500 ms
// apart. The bad edit goes first because it needs a quiet manager and 2 s
// before the end: after the others, which wait for a stopped worker or a
// rescale to settle, a loaded machine could push it out of a short run.
func (c *chaos) loop(ctx context.Context, end time.Time) {
	first := slices.DeleteFunc(slices.Clone(actionKinds), func(k string) bool { return k == "bad-edit" })
	c.rnd.Shuffle(len(first), func(i, j int) { first[i], first[j] = first[j], first[i] })
	first = append([]string{"bad-edit"}, first...)
	if c.opts.Store == "jetstream" {
		// First, so that a short run has one.
		first = append([]string{"manager-kill"}, first...)
	}
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		kind := ""
		if i < len(first) {
			kind = first[i]
		} else {
			switch r := c.rnd.IntN(100); {
			case r < 30:
				kind = "kill"
			case r < 45:
				kind = "stop"
			case r < 70:
				kind = "rescale"
			case r < 76:
				kind = "bad-edit"
			default:
				kind = "garbage"
			}
			if kind == "bad-edit" && time.Since(c.lastBadEdit) < 5*time.Second {
				kind = "garbage"
			}
			if c.opts.Store == "jetstream" && c.rnd.IntN(100) < 5 && time.Since(c.lastManagerKill) >= managerKillEvery {
				kind = "manager-kill"
			}
		}
		switch kind {
		case "kill":
			c.kill(ctx)
		case "stop":
			c.stop(ctx)
		case "rescale":
			c.rescale(ctx)
		case "bad-edit":
			c.badEdit(ctx, end)
		case "garbage":
			c.garbageConn()
		case "manager-kill":
			if err := c.killManager(ctx); err != nil {
				c.fail("manager kill: %v", err)
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(100+c.rnd.IntN(400)) * time.Millisecond):
		}
	}
}

// workersOf lists the running workers of the services named, from status.
func (c *chaos) workersOf(ctx context.Context, services ...string) ([]workerRef, error) {
	st, err := c.ctl.status(ctx)
	if err != nil {
		return nil, err
	}
	var out []workerRef
	for _, s := range st.Services {
		if !slices.Contains(services, s.Name) {
			continue
		}
		for _, w := range s.Workers {
			if w.PID != 0 && w.State == "running" {
				out = append(out, workerRef{service: s.Name, id: w.ID, pid: w.PID})
			}
		}
	}
	return out, nil
}

type workerRef struct {
	service string
	id, pid int
}

// 1. SIGKILL a random worker.
func (c *chaos) kill(ctx context.Context) {
	ws, err := c.workersOf(ctx, "producer", "consumer")
	if err != nil {
		c.fail("kill: %v", err)
		return
	}
	if len(ws) == 0 {
		c.logf("kill: no running worker to kill")
		return
	}
	w := ws[c.rnd.IntN(len(ws))]
	st, _ := readStat(w.pid)
	if err := syscall.Kill(w.pid, syscall.SIGKILL); err != nil {
		c.logf("kill %s worker %d pid %d: %v", w.service, w.id, w.pid, err)
		return
	}
	c.mu.Lock()
	c.kills[w.service]++
	c.killedStart[w.pid] = st.start
	c.mu.Unlock()
	c.logf("kill %s worker %d pid %d (SIGKILL)", w.service, w.id, w.pid)
}

// killManager kills the manager with SIGKILL, and its workers with it, as
// a crash would (under systemd the unit's cgroup goes; here the driver
// kills them), then starts another on the same files: a queue kept in
// JetStream loses nothing. The workers are first stopped (SIGSTOP) and
// the log left to go quiet, so that the lines they wrote before the kill
// are in it: the proofs count items by those lines.
func (c *chaos) killManager(ctx context.Context) error {
	c.closeAll()
	c.contAll()
	c.mu.Lock()
	c.restarting = true
	c.mu.Unlock()
	pid := c.managerPID
	var children []procStat
	for _, p := range allPIDs() {
		if st, err := readStat(p); err == nil && st.ppid == pid {
			children = append(children, st)
		}
	}
	for _, ch := range children {
		syscall.Kill(ch.pid, syscall.SIGSTOP)
	}
	c.waitLogQuiet(ctx, 200*time.Millisecond, 5*time.Second)
	killedAt := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("SIGKILL pid %d: %w", pid, err)
	}
	for _, ch := range children {
		// The process's own group and the process: a worker leads one.
		syscall.Kill(-ch.pid, syscall.SIGKILL)
		syscall.Kill(ch.pid, syscall.SIGKILL)
	}
	timeout := time.After(managerRestartWait)
	for _, ch := range []<-chan struct{}{c.exitDone, c.logDone} {
		select {
		case <-ch:
		case <-timeout:
			return fmt.Errorf("manager pid %d: no exit, or its log did not end, within %v of SIGKILL", pid, managerRestartWait)
		}
	}
	c.managerGone = true
	// Every child gone (the bridge with its JetStream server too) before
	// the next manager starts on their files.
	var left []int
	if err := waitUntil(ctx, managerRestartWait, func() bool {
		left = left[:0]
		for _, ch := range children {
			if st, err := readStat(ch.pid); err == nil && st.start == ch.start && st.state != 'Z' {
				left = append(left, ch.pid)
			}
		}
		return len(left) == 0
	}); err != nil {
		return fmt.Errorf("children of manager pid %d outlived it: %v", pid, left)
	}
	killed := c.logs.killedWithManager(killedAt)
	if err := c.startManager(); err != nil {
		return err
	}
	// The new manager read the file, its last good version, as it started:
	// no reload to wait for (and a scale by the control socket is gone).
	c.lastGoodWrite = time.Time{}
	if _, err := c.waitQuiet(ctx, managerRestartWait); err != nil {
		return fmt.Errorf("after the restart: %w", err)
	}
	m0, err := c.ctl.metrics(ctx)
	if err != nil {
		return fmt.Errorf("after the restart: %w", err)
	}
	c.m0 = m0
	c.mu.Lock()
	c.restarting = false
	c.mu.Unlock()
	c.lastManagerKill = time.Now()
	c.managerKills++
	c.logf("kill the manager pid %d (SIGKILL) and its %d workers (%d processes of the log); manager pid %d up", pid, len(children), killed, c.managerPID)
	return nil
}

// waitLogQuiet waits until the manager's log has had no new line for
// quiet, or for at most limit.
func (c *chaos) waitLogQuiet(ctx context.Context, quiet, limit time.Duration) {
	end := time.Now().Add(limit)
	last, lastAt := -1, time.Now()
	for time.Now().Before(end) && ctx.Err() == nil {
		var n int
		c.logs.view(func(s *logState) { n = s.lines })
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) >= quiet {
			return
		}
		time.Sleep(10 * time.Millisecond) // polling a count: no event says the pipes are empty
	}
}

// 2. SIGSTOP a random consumer for 1-3 s.
func (c *chaos) stop(ctx context.Context) {
	ws, err := c.workersOf(ctx, "consumer")
	if err != nil {
		c.fail("stop: %v", err)
		return
	}
	c.mu.Lock()
	ws = slices.DeleteFunc(ws, func(w workerRef) bool { return c.stopped[w.pid] != nil })
	c.mu.Unlock()
	if len(ws) == 0 {
		c.logf("stop: no running consumer to stop")
		return
	}
	w := ws[c.rnd.IntN(len(ws))]
	st, err := readStat(w.pid)
	if err != nil {
		c.logf("stop consumer pid %d: %v", w.pid, err)
		return
	}
	d := time.Duration(1000+c.rnd.IntN(2000)) * time.Millisecond
	if err := syscall.Kill(w.pid, syscall.SIGSTOP); err != nil {
		c.logf("stop consumer pid %d: %v", w.pid, err)
		return
	}
	c.mu.Lock()
	c.stops++
	rec := &stopRec{start: st.start}
	c.stopped[w.pid] = rec
	rec.timer = time.AfterFunc(d, func() { c.cont(w.pid) })
	c.mu.Unlock()
	c.logf("stop consumer worker %d pid %d (SIGSTOP) for %v", w.id, w.pid, d)
}

// cont sends SIGCONT to pid if the driver stopped it and it is still the
// same process.
func (c *chaos) cont(pid int) {
	c.mu.Lock()
	rec := c.stopped[pid]
	delete(c.stopped, pid)
	c.mu.Unlock()
	if rec == nil {
		return
	}
	rec.timer.Stop()
	if st, err := readStat(pid); err != nil || st.start != rec.start {
		c.logf("cont pid %d: gone", pid)
		return
	}
	syscall.Kill(pid, syscall.SIGCONT)
	c.logf("cont consumer pid %d (SIGCONT)", pid)
}

// contAll ends every SIGSTOP now.
func (c *chaos) contAll() {
	c.mu.Lock()
	pids := make([]int, 0, len(c.stopped))
	for pid := range c.stopped {
		pids = append(pids, pid)
	}
	c.mu.Unlock()
	for _, pid := range pids {
		c.cont(pid)
	}
}

func (c *chaos) stoppedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stopped)
}

// 3. Rescale consumer to 1-8: by the file alone (the watch), the file and
// SIGHUP, or POST /v1/scale.
func (c *chaos) rescale(ctx context.Context) {
	mode := []string{"file", "file+SIGHUP", "scale"}[c.rnd.IntN(3)]
	n := 1 + c.rnd.IntN(8)
	if mode != "scale" {
		// Each good write differs from the last: the manager reloads it.
		for n == c.fileCount {
			n = 1 + c.rnd.IntN(8)
		}
		rename := c.rnd.IntN(2) == 0
		written := time.Now() // before the write, which may be applied before it returns
		if err := c.writeConfig(c.config(1, n, ""), rename); err != nil {
			c.fail("rescale: write config: %v", err)
			return
		}
		c.fileCount, c.lastGoodWrite = n, written
		how := "written in place"
		if rename {
			how = "renamed over"
		}
		if mode == "file+SIGHUP" {
			if err := syscall.Kill(c.managerPID, syscall.SIGHUP); err != nil {
				c.fail("rescale: SIGHUP: %v", err)
			}
		}
		c.logf("rescale consumer to %d: %s (file %s)", n, mode, how)
	} else {
		if err := c.ctl.scale(ctx, "consumer", n); err != nil {
			c.fail("rescale: %v", err)
			return
		}
		c.logf("rescale consumer to %d: POST /v1/scale", n)
	}
	c.mu.Lock()
	c.rescales[mode]++
	c.mu.Unlock()
}

// waitQuiet waits until no SIGSTOP is pending, the file's last good
// version is applied, and every service runs its desired workers, none of
// them one that has exited, or that this run killed, unseen by the
// manager yet.
func (c *chaos) waitQuiet(ctx context.Context, timeout time.Duration) (*status, error) {
	var last *status
	why := ""
	err := waitUntil(ctx, timeout, func() bool {
		if c.stoppedCount() > 0 {
			why = "a consumer is still SIGSTOPped"
			return false
		}
		st, err := c.ctl.status(ctx)
		if err != nil {
			why = err.Error()
			return false
		}
		last = st
		if lr := st.LastReload; !c.lastGoodWrite.IsZero() && (lr == nil || !lr.OK || lr.At.Before(c.lastGoodWrite)) {
			why = "the last good write of the file is not applied yet"
			return false
		}
		ok, w := st.quiet()
		why = w
		if !ok {
			return false
		}
		// A worker that has exited, or that this run has SIGKILLed and is
		// still dying, is listed running until the manager has reaped it
		// (a moment, or much more on a loaded machine).
		for svc, pids := range st.pids() {
			for _, pid := range pids {
				ps, err := readStat(pid)
				c.mu.Lock()
				start, killed := c.killedStart[pid]
				c.mu.Unlock()
				if err != nil || ps.state == 'Z' || ps.state == 'X' || (killed && ps.start == start) {
					why = fmt.Sprintf("%s pid %d has exited or is dying; the manager has not seen it yet", svc, pid)
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		return last, fmt.Errorf("not quiet: %s: %w", why, err)
	}
	return last, nil
}

var badVariants = []string{"workers: many", "broken YAML", "unknown key", "bad duration", "unknown service"}

// 4. A bad edit, alone: wait until all is quiet, note every worker's pid,
// write a bad file, wait for the manager's "reload failed", check that
// no worker changed, then restore the good file.
func (c *chaos) badEdit(ctx context.Context, end time.Time) {
	c.lastBadEdit = time.Now()
	if time.Until(end) < 2*time.Second {
		c.logf("bad edit: skipped, too close to the end")
		return
	}
	before, err := c.waitQuiet(ctx, 20*time.Second)
	if err != nil {
		c.fail("bad edit: before it: %v", err)
		return
	}
	variant := badVariants[c.rnd.IntN(len(badVariants))]
	viaControl := c.rnd.IntN(2) == 0
	failedBefore := c.logs.count(msgReloadFailed)
	if err := c.writeConfig(c.config(1, c.fileCount, variant), c.rnd.IntN(2) == 0); err != nil {
		c.fail("bad edit: write: %v", err)
		return
	}
	how := "file watch"
	if viaControl {
		how = "POST /v1/reload"
		code, body, err := c.ctl.reload(ctx)
		if err != nil || code != 422 {
			c.fail("bad edit (%s): POST /v1/reload answered %d %s %v, want 422", variant, code, truncate(body, 200), err)
		}
	}
	c.mu.Lock()
	c.badEdits++
	c.mu.Unlock()
	if err := waitUntil(ctx, 5*time.Second, func() bool { return c.logs.count(msgReloadFailed) > failedBefore }); err != nil {
		c.fail("bad edit (%s, %s): no %q in the manager's log: %v", variant, how, msgReloadFailed, err)
	}
	after, err := c.ctl.status(ctx)
	switch {
	case err != nil:
		c.fail("bad edit: status after it: %v", err)
	case after.LastReload == nil || after.LastReload.OK:
		c.fail("bad edit (%s): status does not show the last reload failed", variant)
	case !mapsEqual(before.pids(), after.pids()):
		c.fail("bad edit (%s): the workers changed: pids %v before, %v after", variant, before.pids(), after.pids())
	default:
		if ok, why := after.quiet(); !ok {
			c.fail("bad edit (%s): not at the desired counts after it: %s", variant, why)
		} else {
			c.mu.Lock()
			c.badOK++
			c.mu.Unlock()
		}
	}
	// Restore: the good file, which the watch applies.
	c.restoring = true
	restore := c.config(1, c.fileCount, "")
	c.restoring = false
	// Taken before the write: the manager may apply it before the write
	// call returns.
	restored := time.Now()
	if err := c.writeConfig(restore, c.rnd.IntN(2) == 0); err != nil {
		c.fail("bad edit: restore: %v", err)
		return
	}
	c.lastGoodWrite = restored
	if err := waitUntil(ctx, 5*time.Second, func() bool {
		st, err := c.ctl.status(ctx)
		return err == nil && st.LastReload != nil && st.LastReload.OK && !st.LastReload.At.Before(restored)
	}); err != nil {
		c.fail("bad edit: the restored good file was not applied: %v", err)
		return
	}
	c.logf("bad edit (%s, %s): refused, %d workers unchanged; good file restored and applied", variant, how, len(slices.Concat(slicesOf(before.pids())...)))
}

func mapsEqual(a, b map[string][]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func slicesOf(m map[string][]int) [][]int {
	var out [][]int
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// --- 5. garbage and stalled connections ---

type heldConn struct {
	nc     net.Conn
	kind   string
	opened time.Time
	limit  time.Duration

	mu           sync.Mutex
	closed       bool          // by the driver
	serverClosed time.Duration // after how long the server closed it; 0: it did not
	toLimit      bool          // the driver closed it at its limit, the server had not
}

// garbageConn opens one abusive connection (or a batch of idle ones).
func (c *chaos) garbageConn() {
	kinds := []string{"queue random bytes", "queue HELLO then garbage", "queue half frame", "control random bytes",
		"control half request", "idle batch"}
	kind := kinds[c.rnd.IntN(len(kinds))]
	switch kind {
	case "idle batch":
		limit := []time.Duration{2 * time.Second, 5 * time.Second, strictHold}[c.rnd.IntN(3)]
		for i := range 20 {
			sock, k := c.queueSock, "queue idle"
			if i%2 == 1 {
				sock, k = c.controlSock, "control idle"
			}
			c.open(sock, k, limit, nil)
		}
		c.logf("garbage: 20 idle connections (10 per socket), held up to %v", limit)
		return
	}
	var payload []byte
	sock := c.queueSock
	switch kind {
	case "queue random bytes", "control random bytes":
		payload = make([]byte, 1+c.rnd.IntN(256))
		for i := range payload {
			payload[i] = byte(c.rnd.Uint32())
		}
	case "queue HELLO then garbage":
		name := "chaos-garbage"
		body := append([]byte{0x01}, "GTYQ"...)
		body = binary.BigEndian.AppendUint16(body, 1)
		body = append(append(body, byte(len(name))), name...)
		payload = binary.BigEndian.AppendUint32(nil, uint32(len(body)))
		payload = append(payload, body...)
		payload = append(payload, 0, 0, 0, 3, 0x7f, 0xde, 0xad) // a frame of an unknown type
	case "queue half frame":
		payload = append(binary.BigEndian.AppendUint32(nil, 200), 0x02, 1, 2, 3, 4, 5)
	case "control half request":
		payload = []byte("GET /v1/status HTTP/1.1\r\nHost: gotyledon\r\nX-Cha")
	}
	if strings.HasPrefix(kind, "control") {
		sock = c.controlSock
	}
	c.open(sock, kind, strictHold, payload)
	c.logf("garbage: %s (%d bytes)", kind, len(payload))
}

// open connects to sock, writes payload, and holds the connection until
// the server closes it or limit passes.
func (c *chaos) open(sock, kind string, limit time.Duration, payload []byte) {
	nc, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		c.fail("garbage: %s: connect: %v", kind, err)
		return
	}
	h := &heldConn{nc: nc, kind: kind, opened: time.Now(), limit: limit}
	c.mu.Lock()
	c.garbage[kind]++
	c.held = append(c.held, h)
	c.heldWG.Add(1)
	c.mu.Unlock()
	if len(payload) > 0 {
		nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		nc.Write(payload) // the server may close first: that is fine
	}
	timer := time.AfterFunc(limit, func() { h.close(true) })
	go func() {
		defer c.heldWG.Done()
		defer timer.Stop()
		buf := make([]byte, 4096)
		for {
			if _, err := nc.Read(buf); err != nil {
				h.mu.Lock()
				if !h.closed {
					h.serverClosed = max(time.Since(h.opened), time.Nanosecond)
				}
				h.mu.Unlock()
				nc.Close()
				return
			}
		}
	}()
}

// close closes h from the driver's side, unless the server did already.
func (h *heldConn) close(atLimit bool) {
	h.mu.Lock()
	if h.closed || h.serverClosed != 0 {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.toLimit = atLimit
	h.mu.Unlock()
	h.nc.Close()
}

// closeAll closes every held connection and waits for their readers.
func (c *chaos) closeAll() {
	c.mu.Lock()
	held := slices.Clone(c.held)
	c.mu.Unlock()
	for _, h := range held {
		h.close(false)
	}
	c.heldWG.Wait()
}

// --- serving ---

// monitor asks for status every 250 ms until ctx ends: the control
// server must keep answering, quickly, whatever the chaos does.
func (c *chaos) monitor(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		restarting := c.restarting
		c.mu.Unlock()
		if restarting {
			continue
		}
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.ctl.status(rctx)
		cancel()
		d := time.Since(t0)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if c.restarting { // the kill came while status was asked
			c.mu.Unlock()
			continue
		}
		if err != nil {
			c.statusBad++
		} else {
			c.statusOK++
			c.statusMax = max(c.statusMax, d)
		}
		c.mu.Unlock()
		if err != nil {
			c.fail("status did not answer within 5s: %v", err)
		}
	}
}
