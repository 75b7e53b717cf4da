package supervisor_test

// The manager's limits, held with real processes: a worker that floods its
// output, a manager out of descriptors, and a manager killed and started
// again on the same sockets (as systemd's Restart= does).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// envNofile, set for a test manager, is the RLIMIT_NOFILE (soft and hard)
// the manager gives itself before anything else runs (see init). Variables
// named GOTYLEDON_* are not passed on to workers.
const envNofile = "GOTYLEDON_TEST_NOFILE"

func init() {
	// Before TestMain runs the manager, and after the os package raised
	// the soft limit to the hard one: both are set, so nothing raises it
	// back.
	if n, err := strconv.ParseUint(os.Getenv(envNofile), 10, 64); err == nil && os.Getenv(envTestManager) == "1" {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
			fmt.Fprintln(os.Stderr, "setrlimit:", err)
			os.Exit(2)
		}
	}

	// flood writes floodLines numbered lines on stdout as fast as it can,
	// every floodLongEvery-th of them floodLongLen bytes long, and
	// floodErrLines on stderr at the same time, then "DONE" on each, and
	// then waits to be killed (so it is not restarted and floods again).
	helperCommands["flood"] = func() int {
		long := bytes.Repeat([]byte{'x'}, floodLongLen)
		errDone := make(chan error, 1)
		go func() {
			w := bufio.NewWriterSize(os.Stderr, 64<<10)
			for i := range floodErrLines {
				fmt.Fprintf(w, "err %d\n", i)
			}
			fmt.Fprintln(w, "err DONE")
			errDone <- w.Flush()
		}()
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		for i := range floodLines {
			if i%floodLongEvery == floodLongEvery-1 {
				fmt.Fprintf(w, "out %d ", i)
				w.Write(long)
				w.WriteByte('\n')
				continue
			}
			fmt.Fprintf(w, "out %d\n", i)
		}
		fmt.Fprintln(w, "out DONE")
		if err := w.Flush(); err != nil {
			return 1
		}
		if err := <-errDone; err != nil {
			return 1
		}
		for {
			time.Sleep(time.Hour) // until the manager kills it
		}
	}
}

const (
	floodLines     = 100000
	floodErrLines  = 25000
	floodLongEvery = 10000
	floodLongLen   = 100 << 10 // 100 KiB: 7 entries of 16 KiB parts
	maxPart        = 16 << 10
)

// vmStatus reads a field (VmRSS, VmHWM) of /proc/pid/status, in kB.
func vmStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// streamCheck checks one output stream of the flood as its entries come:
// numbered lines in order, each exactly once, long lines in whole 16 KiB
// parts.
type streamCheck struct {
	prefix   string // "out " or "err "
	next     int    // the number the next line must have
	longNext int    // the part expected next of a long line; 0: none under way
	longGot  int    // bytes of the long line seen so far
	done     bool
	errs     []string
}

func (c *streamCheck) fail(format string, args ...any) {
	if len(c.errs) < 10 {
		c.errs = append(c.errs, fmt.Sprintf(format, args...))
	}
}

func (c *streamCheck) add(msg string, part int) {
	if c.done {
		c.fail("%q after DONE", msg)
		return
	}
	if c.longNext > 0 {
		if part != c.longNext {
			c.fail("line %d: part %d, want part %d", c.next, part, c.longNext)
		}
		if strings.Trim(msg, "x") != "" {
			c.fail("line %d part %d: torn: %.40q", c.next, part, msg)
		}
		c.longGot += len(msg)
		c.longNext++
		if len(msg) < maxPart { // the last part
			want := len(fmt.Sprintf("%s%d ", c.prefix, c.next)) + floodLongLen
			if c.longGot != want {
				c.fail("line %d: %d bytes in its parts, want %d", c.next, c.longGot, want)
			}
			c.longNext, c.longGot = 0, 0
			c.next++
		} else if len(msg) != maxPart {
			c.fail("line %d part %d: %d bytes, want %d", c.next, part, len(msg), maxPart)
		}
		return
	}
	if msg == c.prefix+"DONE" && part == 0 {
		c.done = true
		return
	}
	head := fmt.Sprintf("%s%d", c.prefix, c.next)
	switch {
	case part == 0 && msg == head:
		c.next++
	case part == 1 && strings.HasPrefix(msg, head+" ") && len(msg) == maxPart:
		c.longNext, c.longGot = 2, len(msg)
		if strings.Trim(msg[len(head)+1:], "x") != "" {
			c.fail("line %d part 1: torn: %.40q", c.next, msg)
		}
	default:
		c.fail("want line %q, got %.60q (part %d)", head, msg, part)
		// Resynchronise on the number the entry has, if any.
		if f := strings.Fields(msg); len(f) >= 2 {
			if n, err := strconv.Atoi(f[1]); err == nil {
				c.next = n + 1
			}
		}
	}
}

// A worker floods stdout and stderr: every line is logged exactly once, in
// order per stream, long lines in whole 16 KiB parts, and the manager's
// memory stays bounded (the pipe holds the worker back: the manager does not
// buffer what it cannot log yet).
//
// The manager's log is read here as it comes, line by line, rather than by
// the harness, which keeps every entry: a quarter of a million entries are
// checked and dropped.
func TestLimitOutputFlood(t *testing.T) {
	t.Parallel()
	exe, _ := os.Executable()
	dir := t.TempDir()
	path := filepath.Join(dir, "gotyledon.yaml")
	yaml := fmt.Sprintf("services:\n  flood:\n    command: [%q]\n    env: {TEST_HELPER: flood}\n", exe)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	runtimeDir, err := os.MkdirTemp("", "gty")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runtimeDir) })
	cmd := exec.Command(exe, "run", "--log-format", "json", "-c", path)
	cmd.Env = append(os.Environ(), envTestManager+"=1", goraceEnv, "RUNTIME_DIRECTORY="+runtimeDir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})

	type result struct {
		out, errs     streamCheck
		entries       int
		other         []string // the manager's own entries at warn or above, and raw lines
		started, done time.Time
	}
	res := make(chan result, 1)
	go func() {
		r := result{out: streamCheck{prefix: "out "}, errs: streamCheck{prefix: "err "}}
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var e struct {
			Level, Msg, Service, Stream string
			Part                        int
		}
		for sc.Scan() {
			r.entries++
			e.Level, e.Msg, e.Service, e.Stream, e.Part = "", "", "", "", 0
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				r.other = append(r.other, sc.Text())
				continue
			}
			switch {
			case e.Service == "flood" && e.Stream == "stdout":
				r.out.add(e.Msg, e.Part)
			case e.Service == "flood" && e.Stream == "stderr":
				r.errs.add(e.Msg, e.Part)
			case e.Msg == "worker started":
				r.started = time.Now()
			case e.Level != "info" && e.Level != "debug":
				r.other = append(r.other, sc.Text())
			}
			if r.out.done && r.errs.done {
				r.done = time.Now()
				break
			}
		}
		res <- r
		// Keep reading, so that the manager never blocks on its log.
		for sc.Scan() {
		}
	}()
	// 125,000 entries: about 5 s alone with -race, and over 40 s once
	// beside a second go test and the chaos run on 2 cores. The deadline
	// only stops a hung manager: what is tested is that every line comes,
	// whole and in order, in bounded memory (the rate is logged below).
	const floodWait = 5 * time.Minute
	var r result
	select {
	case r = <-res:
	case <-time.After(floodWait):
		t.Fatalf("the flood was not logged within %v", floodWait)
	}
	hwm := vmStatus(t, cmd.Process.Pid, "VmHWM")
	rss := vmStatus(t, cmd.Process.Pid, "VmRSS")
	for _, s := range r.other {
		t.Errorf("manager: %s", s)
	}
	for _, c := range []*streamCheck{&r.out, &r.errs} {
		for _, e := range c.errs {
			t.Errorf("%s: %s", c.prefix, e)
		}
		if !c.done {
			t.Errorf("%s: no DONE (last line %d)", c.prefix, c.next-1)
		}
	}
	if r.out.next != floodLines || r.errs.next != floodErrLines {
		t.Errorf("logged %d stdout and %d stderr lines, want %d and %d", r.out.next, r.errs.next, floodLines, floodErrLines)
	}
	// The bound is for the manager as tests build it: with -race, whose
	// shadow memory multiplies the heap's footprint.
	const boundKB = 100 << 10
	if hwm > boundKB {
		t.Errorf("the manager's peak RSS was %d MB, bound %d MB", hwm>>10, boundKB>>10)
	}
	took := r.done.Sub(r.started)
	t.Logf("%d stdout lines (%d of them %d KiB long) and %d stderr lines logged in %v (%.0f entries/s); manager RSS %d MB, peak %d MB",
		floodLines, floodLines/floodLongEvery, floodLongLen>>10, floodErrLines, took.Round(time.Millisecond),
		float64(r.entries)/took.Seconds(), rss>>10, hwm>>10)
}

// slot is a worker slot, for the tests that follow each one.
type slot struct {
	svc string
	id  int
}

func slotOf(e entry) slot { return slot{e.str("service"), e.int("worker")} }

// A manager whose RLIMIT_NOFILE cannot hold the pipes of every configured
// worker: each start that runs out of descriptors is an error that says
// so, the slot waits out its backoff (a delay that grows; no busy loop),
// the manager keeps running and answers status, and once a reload lowers
// the count so that it fits, every slot runs, including those that had
// failed.
func TestLimitManagerOutOfDescriptors(t *testing.T) {
	t.Parallel()
	const limit = 128
	conf := `
services:
  many:
    command: [/bin/sleep, "1000"]
    workers: %d
    restart: {backoff_initial: 100ms, backoff_max: 800ms}
  few:
    command: [/bin/sleep, "1000"]
    workers: 20
    restart: {backoff_initial: 100ms, backoff_max: 800ms}
`
	m := startManager(t, fmt.Sprintf(conf, 150), fmt.Sprintf("%s=%d", envNofile, limit))
	m.waitFor("the first start done", func(e entry) bool { return e.is("initial start done") })
	pid := m.cmd.Process.Pid
	if lim := procLimit(t, pid); lim != limit {
		t.Fatalf("the manager's open files limit is %d, want %d", lim, limit)
	}
	failedMsg := "worker failed to start"
	fails := m.all(func(e entry) bool { return e.is(failedMsg) })
	if len(fails) == 0 {
		t.Fatalf("no start failed under a limit of %d descriptors for 170 workers", limit)
	}
	for _, e := range fails {
		if !strings.Contains(e.str("error"), "too many open files") || e.str("level") != "error" {
			t.Fatalf("failed start logged as %v; want an error that says too many open files", e)
		}
	}

	// Starved for a while: status answers every time, and says so.
	for i := 1; i <= 3; i++ {
		// Each round waits for more retries to have failed: the manager
		// was busy retrying when it answered.
		m.waitN("retries", len(fails)+i*10, func(e entry) bool { return e.is(failedMsg) })
		var st control.Status
		if err := json.Unmarshal([]byte(m.get("/v1/status")), &st); err != nil {
			t.Fatalf("status: %v", err)
		}
		running, backoff := 0, 0
		for _, s := range st.Services {
			running += s.Running
			backoff += s.Backoff
		}
		if st.PID != pid || running == 0 || backoff == 0 || running+backoff > 170 {
			t.Fatalf("status while out of descriptors: pid %d, %d running, %d in backoff", st.PID, running, backoff)
		}
	}
	if m.hasExited() {
		t.Fatal("the manager exited")
	}

	// Lower "many" to 10: every slot of "few" then fits. The reload reads
	// the file, which takes a descriptor: one that comes while every
	// descriptor is taken is refused ("too many open files"), as an
	// operator would see, and asked for again.
	var reloadAt int
	m.rewriteQuietly(fmt.Sprintf(conf, 10))
	outcome := func(e entry) bool {
		return e.is("configuration applied") || e.is("reload failed: the running services are unchanged")
	}
	for attempt := 1; ; attempt++ {
		before := len(m.all(outcome))
		reloadAt = len(m.all(func(entry) bool { return true }))
		m.signal(syscall.SIGHUP)
		if got := m.waitN("the reload's outcome", before+1, outcome); got[before].is("configuration applied") {
			break
		}
		if attempt == 10 {
			t.Fatal("10 reloads refused while out of descriptors")
		}
	}
	// Which slots run at the moment of the reload: those whose last word
	// was "worker started".
	last := map[slot]string{}
	entries, _, _ := m.snapshot()
	for _, e := range entries[:reloadAt] {
		switch msg := e.str("msg"); msg {
		case "worker started", failedMsg, "worker exited":
			last[slotOf(e)] = msg
		}
	}
	var waited []slot
	for id := range 20 {
		waited = append(waited, slot{"few", id})
	}
	for id := range 10 {
		waited = append(waited, slot{"many", id})
	}
	wasFailing := 0
	for _, s := range waited {
		if last[s] == "worker started" {
			continue
		}
		wasFailing++
		// Started after the reload.
		before := 0
		for _, e := range entries[:reloadAt] {
			if e.is("worker started", "service", s.svc, "worker", s.id) {
				before++
			}
		}
		m.waitN(fmt.Sprintf("%s %d started after the reload", s.svc, s.id), before+1, started(s.svc, s.id))
	}
	if wasFailing == 0 {
		t.Fatal("every slot kept after the reload was running before it: the test proves nothing")
	}
	// "worker started" is logged at the fork, before the loop records the
	// start: status may lag it by a moment. Asked until it agrees, or the
	// deadline.
	var converged string
	for deadline := time.Now().Add(waitTimeout); ; {
		var st control.Status
		if err := json.Unmarshal([]byte(m.get("/v1/status")), &st); err != nil {
			t.Fatal(err)
		}
		converged = ""
		for _, s := range st.Services {
			if s.Running != s.Desired || s.Backoff != 0 {
				converged += fmt.Sprintf("%s has %d of %d running, %d in backoff; ", s.Name, s.Running, s.Desired, s.Backoff)
			}
		}
		if converged == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // between status requests; bounded by the deadline
	}
	if converged != "" {
		t.Errorf("after the reload: %s", converged)
	}

	// No busy loop: per slot, attempts and delayed restarts alternate, each
	// attempt comes at least its delay after the one before, and the delays
	// grow to the cap. The gap is measured between attempts: a failed
	// attempt is logged before its delay's timer is armed, and a start
	// after the timer fired, while the delay's own entry may be logged late
	// on a loaded machine.
	all := m.all(func(entry) bool { return true })
	perSlot := map[slot][]entry{}
	for _, e := range all {
		if e.is(failedMsg) || e.is(delayedMsg) || e.is("worker started") {
			perSlot[slotOf(e)] = append(perSlot[slotOf(e)], e)
		}
	}
	attempts, maxAttempts := 0, 0
	for s, es := range perSlot {
		var pending, prev entry
		var lastDelay time.Duration
		n := 0
		for _, e := range es {
			switch {
			case e.is(delayedMsg):
				if pending != nil {
					t.Errorf("%v: two delayed restarts in a row", s)
				}
				d, err := time.ParseDuration(e.str("delay"))
				if err != nil {
					t.Fatal(err)
				}
				if lastDelay > 0 && d < lastDelay && lastDelay < 640*time.Millisecond {
					t.Errorf("%v: delay %v after %v: the backoff does not grow", s, d, lastDelay)
				}
				lastDelay = d
				pending = e
			default: // an attempt
				n++
				if pending != nil {
					d, _ := time.ParseDuration(pending.str("delay"))
					if gap := e.at(t).Sub(prev.at(t)); gap < d-2*time.Millisecond {
						t.Errorf("%v: attempt %d came %v after the one before, which was delayed by %v", s, n, gap, d)
					}
				} else if n > 2 && e.is(failedMsg) {
					// The second attempt follows the first failure at once.
					t.Errorf("%v: attempt %d at %s without a delay before it", s, n, e.str("ts"))
				}
				pending, prev = nil, e
			}
		}
		attempts += n
		maxAttempts = max(maxAttempts, n)
	}
	span := all[len(all)-1].at(t).Sub(all[0].at(t))
	// The first retry at once, then 100ms doubling to 800ms (±20%): at
	// most 5 attempts in the first 1.5s of failures (0+80+160+320+640ms),
	// then one per 640ms at least.
	if allowed := 6 + int(span/(640*time.Millisecond)); maxAttempts > allowed {
		t.Errorf("a slot made %d attempts in %v; the backoff allows %d", maxAttempts, span, allowed)
	}
	t.Logf("limit %d: %d of 170 starts failed at first; %d attempts in %v, at most %d for one slot; %d slots started once the reload made room; status answered while starved",
		limit, len(fails), attempts, span.Round(time.Millisecond), maxAttempts, wasFailing)
}

// procLimit reads the soft "Max open files" of /proc/pid/limits.
func procLimit(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Max open files"); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	t.Fatal("no open files limit")
	return 0
}

// markedWorkers returns the pids of the processes that run with
// LIMITS_MARK=mark in their environment, alive (not zombies).
func markedWorkers(t *testing.T, mark string) []int {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("LIMITS_MARK=" + mark + "\x00")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, want) || !alive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// A manager is SIGKILLed and another is started at once on the same
// configuration and the same runtime directory, as systemd's Restart= does:
// the new one starts (the dead one's sockets are stale and replaced), the
// dead one's workers are gone within a second of its death, and the workers
// of this configuration are exactly the new manager's.
func TestLimitManagerRestart(t *testing.T) {
	t.Parallel()
	const workers = 3
	mark := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	yaml := fmt.Sprintf(`
queues:
  jobs: {capacity: 10}
services:
  sleeper:
    run: sleeper
    workers: %d
    env: {LIMITS_MARK: %q}
`, workers, mark)
	a := startManager(t, yaml)
	a.waitN("A's workers ready", workers, output("sleeper", "ready"))
	var aPids []int
	for _, e := range a.all(func(e entry) bool { return e.is("worker started") }) {
		aPids = append(aPids, e.int("pid"))
	}
	if got := markedWorkers(t, mark); len(got) != workers {
		t.Fatalf("%d marked processes with A running, want %d: the marker does not find the workers", len(got), workers)
	}
	for _, f := range []string{"queue.sock", "control.sock"} {
		if _, err := os.Stat(filepath.Join(a.runtimeDir, f)); err != nil {
			t.Fatalf("A's %s: %v", f, err)
		}
	}

	a.signal(syscall.SIGKILL)
	a.waitExit()
	died := time.Now() // A has been reaped: it is dead by now
	b := launchManager(t, a.config, []string{"run", "--log-format", "json", "--log-level", "debug", "-c", a.config}, nil,
		"RUNTIME_DIRECTORY="+a.runtimeDir)
	b.runtimeDir = a.runtimeDir
	b.waitFor("B's broker", func(e entry) bool { return e.is("queue broker listening") })
	b.waitFor("B's control socket", func(e entry) bool { return e.is("control socket listening") })
	var slowest time.Duration
	for _, pid := range aPids {
		waitGoneBy(t, pid, died.Add(time.Second))
		slowest = max(slowest, time.Since(died))
	}
	b.waitN("B's workers ready", workers, output("sleeper", "ready"))
	bPids := map[int]bool{}
	for _, e := range b.all(func(e entry) bool { return e.is("worker started") }) {
		bPids[e.int("pid")] = true
	}
	got := markedWorkers(t, mark)
	if len(got) != workers {
		t.Errorf("%d processes of this configuration run (%v), want B's %d", len(got), got, workers)
	}
	for _, pid := range got {
		if !bPids[pid] {
			t.Errorf("pid %d runs and is not B's worker (B's: %v, A's: %v)", pid, bPids, aPids)
		}
	}
	// B answers on both sockets, at the paths A had.
	var st control.Status
	if err := json.Unmarshal([]byte(b.get("/v1/status")), &st); err != nil {
		t.Fatal(err)
	}
	if st.PID != b.cmd.Process.Pid {
		t.Errorf("the control socket is answered by pid %d, want B (%d)", st.PID, b.cmd.Process.Pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	q, err := ipc.Dial(ctx, filepath.Join(a.runtimeDir, "queue.sock"))
	if err != nil {
		t.Fatalf("B's queue socket: %v", err)
	}
	defer q.Close()
	if err := q.Put(ctx, "jobs", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if d, err := q.Get(ctx, "jobs"); err != nil || string(d.Body) != "after" {
		t.Fatalf("get from B: %v", err)
	}
	t.Logf("A's %d workers gone %v after A was reaped; B started and serves both sockets; %d workers of the configuration run, all B's",
		len(aPids), slowest.Round(time.Millisecond), len(got))
}
