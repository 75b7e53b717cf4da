package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

var policy = config.Restart{MinUptime: time.Second, BackoffInitial: 100 * time.Millisecond, BackoffMax: 30 * time.Second}

func TestRestartDelayDoublesToTheCap(t *testing.T) {
	mid := func() float64 { return 0.5 } // no jitter
	failures := 0
	var got []time.Duration
	for range 12 {
		var d time.Duration
		d, failures = restartDelay(policy, 10*time.Millisecond, failures, mid)
		got = append(got, d)
	}
	want := []time.Duration{0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
	if failures != 12 {
		t.Errorf("failures = %d, want 12", failures)
	}
}

func TestRestartDelayResetsAfterMinUptime(t *testing.T) {
	d, failures := restartDelay(policy, time.Second, 7, func() float64 { return 0.99 })
	if d != 0 || failures != 0 {
		t.Errorf("after a run of min_uptime: delay %v failures %d, want 0 0", d, failures)
	}
	d, failures = restartDelay(policy, time.Second-time.Nanosecond, 0, func() float64 { return 0.5 })
	if d != 0 || failures != 1 {
		t.Errorf("just short of min_uptime, the first time: delay %v failures %d, want 0 1", d, failures)
	}
	d, failures = restartDelay(policy, time.Second-time.Nanosecond, failures, func() float64 { return 0.5 })
	if d != 100*time.Millisecond || failures != 2 {
		t.Errorf("just short of min_uptime, the second time in a row: delay %v failures %d, want 100ms 2", d, failures)
	}
}

func TestRestartDelayJitterStaysInBoundsAndUnderTheCap(t *testing.T) {
	for _, r := range []float64{0, 0.25, 0.5, 0.75, 0.999999} {
		rnd := func() float64 { return r }
		d, _ := restartDelay(policy, 0, 1, rnd)
		if d < 80*time.Millisecond || d > 120*time.Millisecond {
			t.Errorf("rnd %v: first delay %v outside 100ms ±20%%", r, d)
		}
		d, _ = restartDelay(policy, 0, 50, rnd)
		if d < 24*time.Second || d > 30*time.Second {
			t.Errorf("rnd %v: capped delay %v outside [24s, 30s]", r, d)
		}
	}
	// The doubling must not overflow however long a worker keeps failing.
	if d, _ := restartDelay(policy, 0, 1<<20, func() float64 { return 0.5 }); d != 30*time.Second {
		t.Errorf("after 2^20 failures: delay %v, want 30s", d)
	}
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	return zap.New(core), logs
}

func messages(logs *observer.ObservedLogs) (msgs []string, parts []int64) {
	for _, e := range logs.All() {
		msgs = append(msgs, e.Message)
		p, _ := e.ContextMap()["part"].(int64)
		parts = append(parts, p)
	}
	return msgs, parts
}

func TestLineWriterSplitsOnNewlinesAcrossWrites(t *testing.T) {
	log, logs := observed()
	lw := &lineWriter{log: log}
	for _, chunk := range []string{"hel", "lo\nwor", "ld\r\n", "\n", "tail without newline"} {
		lw.write([]byte(chunk))
	}
	lw.flush()
	msgs, parts := messages(logs)
	want := []string{"hello", "world", "", "tail without newline"}
	if !slices.Equal(msgs, want) {
		t.Errorf("lines %q, want %q", msgs, want)
	}
	if slices.ContainsFunc(parts, func(p int64) bool { return p != 0 }) {
		t.Errorf("short lines got part numbers %v", parts)
	}
}

func TestLineWriterSplitsLongLinesIntoNumberedParts(t *testing.T) {
	log, logs := observed()
	lw := &lineWriter{log: log}
	long := strings.Repeat("x", 2*maxLineBytes+10)
	// Fed one byte short of the line end, then the rest with the next line.
	lw.write([]byte(long[:len(long)-1]))
	lw.write([]byte(long[len(long)-1:] + "\nnext\n"))
	msgs, parts := messages(logs)
	if len(msgs) != 4 {
		t.Fatalf("%d entries, want 3 parts and the next line", len(msgs))
	}
	if got := strings.Join(msgs[:3], ""); got != long {
		t.Errorf("parts join to %d bytes, want %d", len(got), len(long))
	}
	if !slices.Equal(parts, []int64{1, 2, 3, 0}) || msgs[3] != "next" {
		t.Errorf("parts %v, last %q; want [1 2 3 0] and \"next\"", parts, msgs[3])
	}
	for _, m := range msgs {
		if len(m) > maxLineBytes {
			t.Errorf("an entry of %d bytes exceeds %d", len(m), maxLineBytes)
		}
	}
}

func TestLineWriterFlushesALongUnterminatedLine(t *testing.T) {
	log, logs := observed()
	lw := &lineWriter{log: log}
	lw.write([]byte(strings.Repeat("y", maxLineBytes+5)))
	lw.flush()
	msgs, parts := messages(logs)
	if len(msgs) != 2 || len(msgs[1]) != 5 || !slices.Equal(parts, []int64{1, 2}) {
		t.Errorf("got %d entries with parts %v, want 2 entries, parts [1 2], the last 5 bytes", len(msgs), parts)
	}
}

func TestSpawnSpecForCommandAndGoServices(t *testing.T) {
	base := workerBaseEnv([]string{"PATH=/bin", "HOME=/root", "PATH=/second", "NOTIFY_SOCKET=/run/n", "LISTEN_FDS=2",
		"LISTEN_PID=9", "LISTEN_FDNAMES=a", "WATCHDOG_USEC=5", "WATCHDOG_PID=9", "GOTYLEDON_SERVICE=outer", "LANG=C"})
	if want := []string{"PATH=/bin", "HOME=/root", "LANG=C"}; !slices.Equal(base, want) {
		t.Fatalf("base env %q, want %q", base, want)
	}
	cmd := &config.Service{Name: "printer", Command: []string{"printer", "--verbose"}, Env: map[string]string{"LANG": "C.UTF-8", "B": "2", "A": "1"},
		Dir: "/srv", StopSignal: syscall.SIGTERM}
	s := buildSpawnSpec(cmd, 3, base, "/proc/self/exe", "gotyledon")
	wantEnv := []string{"PATH=/bin", "HOME=/root", "LANG=C.UTF-8", "A=1", "B=2", "GOTYLEDON_SERVICE=printer", "GOTYLEDON_WORKER_ID=3"}
	if !slices.Equal(s.env, wantEnv) || s.argv0 != "printer" || !slices.Equal(s.argv, cmd.Command) || s.dir != "/srv" || s.goWorker {
		t.Errorf("command spec %+v", s)
	}
	goSvc := &config.Service{Name: "fast-printer", Run: "printer", StopSignal: syscall.SIGINT}
	s = buildSpawnSpec(goSvc, 0, base, "/proc/self/exe", "demo")
	if s.argv0 != "/proc/self/exe" || !slices.Equal(s.argv, []string{"demo: fast-printer worker 0"}) || !s.goWorker {
		t.Errorf("Go spec argv0 %q argv %q goWorker %v", s.argv0, s.argv, s.goWorker)
	}
	for _, kv := range []string{"GOTYLEDON_RUN=printer", "GOTYLEDON_MANAGER_FD=3", "GOTYLEDON_STOP_SIGNAL=2", "GOTYLEDON_SERVICE=fast-printer"} {
		if !slices.Contains(s.env, kv) {
			t.Errorf("Go worker env lacks %s: %q", kv, s.env)
		}
	}
	s.env[0] = "PATH=/changed"
	if base[0] != "PATH=/bin" {
		t.Error("a spec's env shares its array with the base env of every worker")
	}
}

func TestLookPathUsesTheWorkersPath(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "tool")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/nonexistent:" + dir}
	if p, err := lookPath("tool", env, ""); err != nil || p != prog {
		t.Errorf("lookPath(tool) = %q, %v; want %q", p, err, prog)
	}
	if _, err := lookPath("data", env, ""); err == nil {
		t.Error("a file without execute permission was found")
	}
	_, err := lookPath("missing", env, "")
	if want := "exec missing: executable file not found in $PATH"; err == nil || err.Error() != want || !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("err %v, want %q", err, want)
	}
	if p, _ := lookPath("./rel/tool", env, ""); p != "./rel/tool" {
		t.Errorf("a name with a slash was changed to %q", p)
	}
	if p, err := lookPath("sh", nil, ""); err != nil || !strings.HasSuffix(p, "/sh") {
		t.Errorf("without PATH, sh resolved to %q, %v; want the default path", p, err)
	}
}

func TestMailboxKeepsOrderAndNeverBlocks(t *testing.T) {
	m := newMailbox[int]()
	for i := range 1000 {
		m.put(i) // no reader yet: must not block
	}
	<-m.wake
	got := m.take(nil)
	if len(got) != 1000 || got[0] != 0 || got[999] != 999 || !slices.IsSorted(got) {
		t.Fatalf("took %d items, not 0..999 in order", len(got))
	}
	m.close()
	m.put(1)
	if got := m.take(nil); len(got) != 0 {
		t.Errorf("put after close queued %v", got)
	}
}

func TestLineWriterKeepsALineOfExactlyOnePieceWhole(t *testing.T) {
	log, logs := observed()
	lw := &lineWriter{log: log}
	line := strings.Repeat("z", maxLineBytes-1) + "\r"
	lw.write([]byte(line)) // the newline comes in a later read
	lw.write([]byte("\n"))
	msgs, parts := messages(logs)
	if len(msgs) != 1 || msgs[0] != line[:maxLineBytes-1] || parts[0] != 0 {
		t.Errorf("got %d entries (parts %v), want the line whole, without its \\r, in one entry", len(msgs), parts)
	}
}

// procRig is a process table on the real operating system that is never
// run: messages are handled by hand and what it posts to the loop is
// collected.
func procRig(grace time.Duration) (*procTable, *[]event) {
	var posted []event
	return &procTable{
		log: zap.NewNop(), sys: realProcOS(), now: time.Now, inbox: newMailbox[procMsg](),
		post:        func(ev event) { posted = append(posted, ev) },
		outputGrace: grace,
		procs:       make(map[uint64]*proc), byPid: make(map[int]*proc),
	}, &posted
}

// noSuchPid is above the kernel's pid_max: no process, no group, has it.
const noSuchPid = 1 << 30

func TestProcTableWaitsForOutputBeforeReportingAnExit(t *testing.T) {
	p, posted := procRig(time.Hour)
	pr := &proc{token: 1, pid: noSuchPid, open: 2, reaped: true, stop: true}
	p.procs[1] = pr
	p.tryFinish(pr)
	if len(*posted) != 0 || pr.grace != nil {
		t.Fatal("a stopping worker with open output was finished, or given a grace timer")
	}
	p.handle(outputClosed{token: 1})
	if len(*posted) != 0 {
		t.Fatal("finished with one stream still open")
	}
	p.handle(outputClosed{token: 1})
	if len(*posted) != 1 || (*posted)[0].(workerExited).token != 1 || p.procs[1] != nil {
		t.Fatalf("after both streams closed: posted %v, want one workerExited", *posted)
	}
}

func TestProcTableClosesOutputHeldAfterTheGroupWasKilled(t *testing.T) {
	p, posted := procRig(time.Millisecond)
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outW.Close() // the "escaped process" still holding the pipe
	pr := &proc{token: 7, pid: noSuchPid, outputs: [2]*os.File{outR, outR}, open: 2}
	p.procs[7], p.byPid[noSuchPid] = pr, pr
	// A fast stop: SIGKILL to the group before the leader is reaped...
	p.handle(signalReq{token: 7, sig: syscall.SIGKILL, stop: true})
	// ...then the reap, with the output still held by something outside.
	p.exited(pr, unix.WaitStatus(syscall.SIGKILL))
	if pr.grace == nil {
		t.Fatal("no output grace armed after the group was killed")
	}
	select {
	case <-p.inbox.wake:
	case <-time.After(10 * time.Second):
		t.Fatal("the grace timer did not fire")
	}
	for _, m := range p.inbox.take(nil) {
		p.handle(m)
	}
	var exits []workerExited
	for _, ev := range *posted {
		if ex, ok := ev.(workerExited); ok {
			exits = append(exits, ex)
		}
	}
	if len(exits) != 1 || exits[0].token != 7 {
		t.Fatalf("posted %v, want the exit once the grace was over", *posted)
	}
	if _, err := outR.Read(make([]byte, 1)); !errors.Is(err, os.ErrClosed) {
		t.Errorf("the held output was not closed: read error %v", err)
	}
}

func TestParseNotify(t *testing.T) {
	ev, ok := parseNotify(7, []byte("READY=1\nSTATUS=warming up: 3/5\nEXTEND_TIMEOUT_USEC=5000000\nMAINPID=12\nnonsense"))
	if !ok || ev.token != 7 || !ev.ready || ev.stopping || ev.status == nil || *ev.status != "warming up: 3/5" || ev.extend != 5*time.Second {
		t.Errorf("parsed %+v (ok %v), want token 7, ready, the status and a 5s extension", ev, ok)
	}
	if ev, ok := parseNotify(1, []byte("STOPPING=1")); !ok || !ev.stopping || ev.ready || ev.status != nil {
		t.Errorf("STOPPING=1: %+v (ok %v)", ev, ok)
	}
	if ev, ok := parseNotify(1, []byte("WATCHDOG=1")); !ok || !ev.watchdog || ev.trigger {
		t.Errorf("WATCHDOG=1: %+v (ok %v)", ev, ok)
	}
	if ev, ok := parseNotify(1, []byte("WATCHDOG=trigger")); !ok || !ev.trigger || ev.watchdog {
		t.Errorf("WATCHDOG=trigger: %+v (ok %v)", ev, ok)
	}
	for _, d := range []string{"WATCHDOG=0", "READY=0", "EXTEND_TIMEOUT_USEC=soon", "", "STATUS"} {
		if ev, ok := parseNotify(1, []byte(d)); ok {
			t.Errorf("%q: %+v, want nothing the manager acts on", d, ev)
		}
	}
	if ev, ok := parseNotify(1, []byte("STATUS=")); !ok || ev.status == nil || *ev.status != "" {
		t.Errorf("an empty STATUS= clears the status: %+v (ok %v)", ev, ok)
	}
}

// The manager closing a worker's output under its reader (the output
// grace is over) is how that reader is meant to end: no error is logged.
func TestLogOutputClosedUnderItsReaderLogsNoError(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close() // held open, as by a process that left the worker's group
	log, logs := observed()
	var bufs readBuffers
	var progress outputProgress
	done := make(chan struct{})
	go func() {
		logOutput(r, log, &bufs, &progress)
		close(done)
	}()
	if _, err := w.WriteString("hello\n"); err != nil {
		t.Fatal(err)
	}
	// The reader has logged the line: it is back waiting on the pipe.
	for deadline := time.Now().Add(10 * time.Second); logs.FilterMessage("hello").Len() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the line was not logged within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	r.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not end when its file was closed")
	}
	if n := logs.FilterMessage("cannot read worker output").Len(); n != 0 {
		t.Errorf("%d 'cannot read worker output' errors for a file the manager closed: %v", n, logs.All())
	}
}

// A process of another pid namespace shows in cgroup.procs as 0: never a
// pid to signal (kill(0, sig) is the manager's own process group).
func TestCgroupPidsSkipsOtherNamespaces(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0\n123\n0\n456\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := cgroupPids(dir); !slices.Equal(got, []int{123, 456}) {
		t.Errorf("cgroupPids = %v, want [123 456]", got)
	}
}

// The sweep's list of the manager's children reads two threads' lists
// only: the forking thread's and the main thread's, where the kernel puts
// orphans. Both kinds must be in it.
func TestOwnChildrenListsForkedAndReparentedChildren(t *testing.T) {
	var was int32 // the kernel writes an int
	if _, _, errno := unix.Syscall(unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0); errno != 0 {
		t.Fatalf("PR_GET_CHILD_SUBREAPER: %v", errno)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(was), 0, 0, 0) })

	type result struct {
		forked, orphan int
		kids           []int
		ok             bool
		err            error
	}
	done := make(chan result, 1)
	// On a thread of its own that is not the main one, as the process
	// table's: the main thread, if a goroutine lands on it, is kept
	// locked until the test ends and the next goroutine tries again.
	var tryOnThread func()
	release := make(chan struct{})
	defer close(release)
	tryOnThread = func() {
		runtime.LockOSThread()
		if unix.Gettid() == os.Getpid() {
			go tryOnThread()
			<-release
			runtime.UnlockOSThread()
			return
		}
		defer runtime.UnlockOSThread()
		var r result
		forked := exec.Command("sleep", "60")
		if r.err = forked.Start(); r.err != nil {
			done <- r
			return
		}
		r.forked = forked.Process.Pid
		// sh starts sleep in the background, prints its pid and exits:
		// the sleep is an orphan, reparented to this process.
		out, err := exec.Command("sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!").Output()
		if r.err = err; err == nil {
			r.orphan, r.err = strconv.Atoi(strings.TrimSpace(string(out)))
		}
		r.kids, r.ok = ownChildren()
		done <- r
	}
	go tryOnThread()
	r := <-done
	for _, pid := range []int{r.forked, r.orphan} {
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, 0, nil)
		}
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.ok {
		t.Skip("this kernel keeps no /proc children lists (CONFIG_PROC_CHILDREN)")
	}
	if !slices.Contains(r.kids, r.forked) {
		t.Errorf("ownChildren = %v: no %d, forked by the calling thread", r.kids, r.forked)
	}
	if !slices.Contains(r.kids, r.orphan) {
		t.Errorf("ownChildren = %v: no %d, an orphan reparented to this process", r.kids, r.orphan)
	}
}
