package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// fakeLoop stands in for the supervisor: it records what the reloader asks.
type fakeLoop struct {
	started, ready chan struct{}
	// hold: reloads do not settle until the test sends their outcomes
	// (outcomes, in the order they were applied); otherwise they settle
	// at once, as one that replaces no worker does.
	hold bool

	mu        sync.Mutex
	calls     []string
	shutdowns []bool
	outcomes  []chan error
}

func (f *fakeLoop) Started() <-chan struct{} { return f.started }
func (f *fakeLoop) Ready() <-chan struct{}   { return f.ready }

func (f *fakeLoop) Shutdown(fast bool) {
	f.record(fmt.Sprintf("shutdown fast=%v", fast))
}

func (f *fakeLoop) ReloadSettled(_ context.Context, source supervisor.ReloadSource, cfg *config.Config) (<-chan error, error) {
	c := make(chan error, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	// The outcome is there by the time the call is seen (all): a test
	// that waits for the call then sends on it.
	if f.hold {
		f.outcomes = append(f.outcomes, c)
	} else {
		c <- nil
	}
	f.calls = append(f.calls, fmt.Sprintf("reload %s %s", source, workersOf(cfg)))
	return c, nil
}

// outcome returns the outcome channel of the i-th reload held.
func (f *fakeLoop) outcome(i int) chan<- error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.outcomes[i]
}

func (f *fakeLoop) ReloadRefused(source supervisor.ReloadSource, err error) {
	f.record(fmt.Sprintf("refused %s", source))
}

func (f *fakeLoop) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeLoop) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// workersOf renders a configuration's worker counts, "a=2".
func workersOf(cfg *config.Config) string {
	var parts []string
	for _, s := range cfg.Services {
		parts = append(parts, fmt.Sprintf("%s=%d", s.Name, s.Workers))
	}
	return strings.Join(parts, ",")
}

// fakeNotifier records what systemd would be told.
type fakeNotifier struct {
	mu   sync.Mutex
	sent []string
}

func (n *fakeNotifier) ExtendTimeout(d time.Duration) { n.add(fmt.Sprintf("EXTEND %v", d)) }
func (n *fakeNotifier) Ready(status string)           { n.add("READY " + status) }
func (n *fakeNotifier) Reloading()                    { n.add("RELOADING") }
func (n *fakeNotifier) Stopping()                     { n.add("STOPPING") }
func (n *fakeNotifier) add(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sent = append(n.sent, s)
}

// all returns what systemd was told, but for the EXTEND_TIMEOUT_USEC of
// the start, which the tests of the start check themselves.
func (n *fakeNotifier) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(n.sent), func(s string) bool { return strings.HasPrefix(s, "EXTEND ") })
}

func (n *fakeNotifier) extends() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(n.sent), func(s string) bool { return !strings.HasPrefix(s, "EXTEND ") })
}

// fakeBroker refuses its queues when refuse is set.
type fakeBroker struct {
	refuse error
	sets   [][]ipc.QueueConfig
}

func (b *fakeBroker) SetQueues(qs []ipc.QueueConfig) error {
	if b.refuse != nil {
		return b.refuse
	}
	b.sets = append(b.sets, qs)
	return nil
}

type reloadRig struct {
	t      *testing.T
	r      *reloader
	loop   *fakeLoop
	notify *fakeNotifier
	logs   *observer.ObservedLogs
	path   string
	done   chan error
	cancel context.CancelFunc
	// unwatched counts the reloader's calls of unwatch.
	unwatched atomic.Int32
}

// newReloadRig is a reloader of a configuration file holding yaml, over
// fakes; ready says whether the first start is done (and ready) already.
func newReloadRig(t *testing.T, yaml string, ready bool) *reloadRig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "g.yaml")
	write(t, path, yaml)
	parse := func(data []byte) (*config.Config, error) { return config.Parse(path, data, nil) }
	cfg, err := parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	rig := &reloadRig{t: t, loop: &fakeLoop{started: make(chan struct{}), ready: make(chan struct{})}, notify: &fakeNotifier{}, logs: logs, path: path}
	if ready {
		close(rig.loop.started)
		close(rig.loop.ready)
	}
	rig.r = newReloader(cfg, []byte(yaml))
	rig.r.file, rig.r.parse, rig.r.log = path, parse, zap.New(core)
	rig.r.sup, rig.r.notify = rig.loop, rig.notify
	rig.r.summary = func() string { return "summary" }
	rig.r.unwatch = func() { rig.unwatched.Add(1) }
	return rig
}

// start runs the reloader until the test ends.
func (rig *reloadRig) start() {
	ctx, cancel := context.WithCancel(context.Background())
	rig.cancel = cancel
	rig.done = make(chan error, 1)
	go func() { rig.done <- rig.r.Run(ctx) }()
	rig.t.Cleanup(func() {
		rig.r.Interrupt(nil)
		<-rig.done
		cancel()
	})
	// A first start done already is told to systemd before anything else
	// the test asks.
	select {
	case <-rig.loop.ready:
		waitFor(rig.t, func() bool { return len(rig.notify.all()) > 0 })
	default:
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (rig *reloadRig) reload(source supervisor.ReloadSource) error {
	rig.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rig.r.Reload(ctx, source, false)
}

const twoWorkers = "services:\n  a: {command: [/bin/true], workers: 2}\n"

// An edit that SIGHUP has applied already reaches the manager a second time
// from the file watch: that report is dropped, with nothing told to
// systemd; so is one while the file cannot be read (mid-swap).
func TestWatchReportOfAnAppliedEditIsDropped(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	reply := make(chan error, 2)
	rig.r.reload(reloadAsk{source: supervisor.ReloadByFile, reply: reply})
	if err := os.Remove(rig.path); err != nil {
		t.Fatal(err)
	}
	rig.r.reload(reloadAsk{source: supervisor.ReloadByFile, reply: reply})
	for range 2 {
		if err := <-reply; err != nil {
			t.Errorf("dropped reload answered %v, want nil", err)
		}
	}
	if sent := rig.notify.all(); len(sent) != 0 {
		t.Errorf("systemd was told %q about a reload that did not happen", sent)
	}
	if calls := rig.loop.all(); len(calls) != 0 {
		t.Errorf("the supervisor was asked %q for a reload that did not happen", calls)
	}
}

// A reload applies the file to the supervisor and tells systemd around it;
// a bad file is refused, recorded, and changes nothing; SIGHUP of an
// unchanged file applies it again (asked for on purpose).
func TestReloadAppliesOrRefuses(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	rig.start()
	write(t, rig.path, "services:\n  a: {command: [/bin/true], workers: 3}\n")
	if err := rig.reload(supervisor.ReloadByControl); err != nil {
		t.Fatalf("good file: %v", err)
	}
	write(t, rig.path, "services:\n  a: {command: [/bin/true], workers: many}\n")
	err := rig.reload(supervisor.ReloadBySignal)
	var list config.ErrorList
	if !errors.As(err, &list) || !strings.Contains(err.Error(), rig.path+":2:38: workers must be") {
		t.Errorf("bad file: %v, want its FILE:LINE:COL", err)
	}
	write(t, rig.path, "services:\n  a: {command: [/bin/true], workers: 3}\n")
	if err := rig.reload(supervisor.ReloadBySignal); err != nil {
		t.Fatalf("good file again: %v", err)
	}
	if err := rig.reload(supervisor.ReloadBySignal); err != nil {
		t.Fatalf("the same file again: %v", err)
	}
	want := []string{"reload control a=3", "refused SIGHUP", "reload SIGHUP a=3", "reload SIGHUP a=3"}
	if got := rig.loop.all(); !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
	// READY first: the first start was done when the reloader began.
	wantSent := []string{"READY summary", "RELOADING", "READY summary", "RELOADING", "READY summary", "RELOADING", "READY summary", "RELOADING", "READY summary"}
	if got := rig.notify.all(); !slices.Equal(got, wantSent) {
		t.Errorf("systemd told %q, want %q", got, wantSent)
	}
	if n := rig.logs.FilterMessage("reload failed: the running services are unchanged").Len(); n != 1 {
		t.Errorf("%d refusals logged, want 1", n)
	}
}

// A broker that refuses the new queues (a queue to remove still holds
// items) refuses the whole reload: the supervisor is not asked.
func TestReloadRefusedByTheBroker(t *testing.T) {
	rig := newReloadRig(t, "queues: {jobs: {}}\n"+twoWorkers, true)
	rig.r.broker = &fakeBroker{refuse: errors.New("queue jobs holds 3 items")}
	rig.start()
	write(t, rig.path, "queues: {other: {}}\n"+twoWorkers)
	if err := rig.reload(supervisor.ReloadByControl); err == nil || !strings.Contains(err.Error(), "holds 3 items") {
		t.Errorf("reload: %v, want the broker's refusal", err)
	}
	if got := rig.loop.all(); !slices.Equal(got, []string{"refused control"}) {
		t.Errorf("supervisor asked %q, want only the refusal recorded", got)
	}
}

// What cannot change by reload (a socket's path) is refused with the reason.
func TestReloadRefusesASocketChange(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	rig.start()
	write(t, rig.path, "control: {socket: /tmp/other.sock}\n"+twoWorkers)
	if err := rig.reload(supervisor.ReloadBySignal); err == nil || !strings.Contains(err.Error(), "control settings changed") {
		t.Errorf("reload: %v, want a refusal naming the control settings", err)
	}
}

// Reloads asked for during the first start wait for it; edits seen by the
// watch meanwhile are read once.
func TestReloadWaitsForTheFirstStart(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, false)
	changes := make(chan struct{}, 1)
	rig.r.fileChanges = changes
	rig.start()
	write(t, rig.path, "services:\n  a: {command: [/bin/true], workers: 4}\n")
	changes <- struct{}{}
	changes <- struct{}{} // taken only after the first report was
	answered := make(chan error, 1)
	go func() { answered <- rig.reload(supervisor.ReloadByControl) }()
	// The control reload is queued behind the watch's: once it is in, so
	// is the first report.
	waitFor(t, func() bool { return rig.logs.FilterMessage("reload waits until the first start is done").Len() == 1 })
	if calls := rig.loop.all(); len(calls) != 0 {
		t.Fatalf("reloaded before the first start was done: %q", calls)
	}
	close(rig.loop.started)
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	want := []string{"reload file a=4", "reload control a=4"}
	if got := rig.loop.all(); !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
	// Started, not ready yet: the reloads are part of the start, not told
	// to systemd; READY=1 comes with readiness.
	if got := rig.notify.all(); len(got) != 0 {
		t.Errorf("systemd told %q before the manager was ready, want nothing", got)
	}
	close(rig.loop.ready)
	waitFor(t, func() bool { return len(rig.notify.all()) > 0 })
	if got := rig.notify.all(); !slices.Equal(got, []string{"READY summary"}) {
		t.Errorf("systemd told %q, want READY alone", got)
	}
	if got := rig.notify.extends(); !slices.Equal(got, []string{"EXTEND 1m40s"}) {
		t.Errorf("start timeout extensions %q, want one of the default ready_timeout (90s) and 10s", got)
	}
}

// A stop refuses the reloads still waiting and every later one; a second
// stop with escalate is fast; the end of Run's context is a graceful stop.
func TestStopRefusesReloadsAndEscalates(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, false)
	rig.start()
	answered := make(chan error, 1)
	go func() { answered <- rig.reload(supervisor.ReloadBySignal) }()
	waitFor(t, func() bool { return rig.logs.FilterMessage("reload waits until the first start is done").Len() == 1 })
	rig.cancel() // the end of the context: a graceful stop
	if err := <-answered; !errors.Is(err, supervisor.ErrStopped) {
		t.Errorf("reload waiting at the stop: %v, want ErrStopped", err)
	}
	rig.r.stop(true) // Ctrl-C during the stop: fast
	if err := rig.reload(supervisor.ReloadByControl); !errors.Is(err, supervisor.ErrStopped) {
		t.Errorf("reload during the stop: %v, want ErrStopped", err)
	}
	want := []string{"shutdown fast=false", "shutdown fast=true"}
	if got := rig.loop.all(); !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
	if n := rig.unwatched.Load(); n != 1 {
		t.Errorf("the watch was let go %d times at the stop, want once", n)
	}
	// The first start ends during the stop: no READY, whenever the
	// reloader sees it (before this round trip, or after).
	close(rig.loop.started)
	close(rig.loop.ready)
	if err := rig.reload(supervisor.ReloadBySignal); !errors.Is(err, supervisor.ErrStopped) {
		t.Errorf("reload during the stop: %v, want ErrStopped", err)
	}
	if got := rig.notify.all(); !slices.Equal(got, []string{"STOPPING"}) {
		t.Errorf("systemd told %q, want only STOPPING", got)
	}
}

// A first stop with escalate (Ctrl-C) is graceful; a graceful one after it
// asks nothing more of the supervisor.
func TestFirstInterruptIsGraceful(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	rig.start()
	rig.r.stop(true)
	rig.r.stop(false)
	if err := rig.reload(supervisor.ReloadBySignal); !errors.Is(err, supervisor.ErrStopped) {
		t.Fatalf("reload after the stop: %v", err)
	}
	want := []string{"shutdown fast=false"}
	if got := rig.loop.all(); !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
}

// waitFor polls cond, which reads state another goroutine sets, for up to
// 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// holdRollout starts a reloader whose reloads settle only when the test
// says so, and asks it for a reload that waits for its settlement, which
// the returned channel receives. It returns once the reload is applied.
func holdRollout(t *testing.T) (*reloadRig, <-chan error) {
	t.Helper()
	rig := newReloadRig(t, twoWorkers, true)
	rig.loop.hold = true
	rig.start()
	write(t, rig.path, "services:\n  a: {command: [/bin/false], workers: 2}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	settled := make(chan error, 1)
	go func() { settled <- rig.r.Reload(ctx, supervisor.ReloadByControl, true) }()
	waitFor(t, func() bool { return len(rig.loop.all()) == 1 })
	return rig, settled
}

// A reload asked to settle is answered when its rolling change ends, with
// its outcome; systemd's READY=1 after RELOADING=1 waits as long. A reload
// that comes meanwhile is told to systemd within the same RELOADING=1, and
// both settle together.
func TestReloadSettlesWithItsRollout(t *testing.T) {
	rig, settled := holdRollout(t)
	// A second reload, not waiting for settlement: answered once applied.
	write(t, rig.path, "services:\n  a: {command: [/bin/false], workers: 3}\n")
	if err := rig.reload(supervisor.ReloadBySignal); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-settled:
		t.Fatalf("answered %v before the rollout settled", err)
	default:
	}
	if got := rig.notify.all(); !slices.Equal(got, []string{"READY summary", "RELOADING"}) {
		t.Fatalf("systemd told %q during the rollout, want READY, RELOADING and no READY yet", got)
	}
	// Each reload is answered with its own outcome (the supervisor gives a
	// superseded one the outcome of the reload that superseded it).
	halted := fmt.Errorf("%w: a worker 0 exit code 1 before ready", supervisor.ErrRolloutHalted)
	rig.loop.outcome(0) <- halted
	rig.loop.outcome(1) <- errors.New("the newer reload's outcome")
	if err := <-settled; err != halted {
		t.Fatalf("settled with %v, want its own outcome, the halt", err)
	}
	if got := rig.notify.all(); !slices.Equal(got, []string{"READY summary", "RELOADING", "READY summary"}) {
		t.Errorf("systemd told %q, want READY, RELOADING, READY", got)
	}
}

// A shutdown during a rollout answers who waits for it, and tells systemd
// nothing but STOPPING=1.
func TestReloadSettlingAtAStop(t *testing.T) {
	rig, settled := holdRollout(t)
	rig.r.stop(false)
	// The supervisor settles every rollout with ErrStopped as it stops.
	rig.loop.outcome(0) <- fmt.Errorf("reload: %w", supervisor.ErrStopped)
	if err := <-settled; !errors.Is(err, supervisor.ErrStopped) {
		t.Fatalf("settled with %v, want ErrStopped", err)
	}
	if got := rig.notify.all(); !slices.Equal(got, []string{"READY summary", "RELOADING", "STOPPING"}) {
		t.Errorf("systemd told %q, want READY, RELOADING, STOPPING", got)
	}
}

// A file that cannot be read (removed) is said once, however often its
// directory changes meanwhile, and again when it is back; its return is
// applied if it changed.
func TestUnreadableFileIsSaidOnce(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	if err := os.Remove(rig.path); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		rig.r.reload(reloadAsk{source: supervisor.ReloadByFile})
	}
	if n := rig.logs.FilterMessageSnippet("cannot be read").FilterLevelExact(zap.WarnLevel).Len(); n != 1 {
		t.Errorf("%d warnings for 5 reports of an unreadable file, want 1", n)
	}
	write(t, rig.path, "services:\n  a: {command: [/bin/true], workers: 3}\n")
	rig.r.reload(reloadAsk{source: supervisor.ReloadByFile})
	if n := rig.logs.FilterMessage("config file can be read again").Len(); n != 1 {
		t.Errorf("%d 'can be read again' entries, want 1", n)
	}
	if got := rig.loop.all(); !slices.Equal(got, []string{"reload file a=3"}) {
		t.Errorf("supervisor asked %q, want the file's return applied", got)
	}
	if err := os.Remove(rig.path); err != nil {
		t.Fatal(err)
	}
	rig.r.reload(reloadAsk{source: supervisor.ReloadByFile})
	if n := rig.logs.FilterMessageSnippet("cannot be read").FilterLevelExact(zap.WarnLevel).Len(); n != 2 {
		t.Errorf("%d warnings after it went away again, want 2", n)
	}
}

// A stop reaches the supervisor at once, while the reloader is busy (here:
// not running at all), not after the reload it is reading: the workers'
// stop signals do not wait for a file.
func TestStopReachesTheSupervisorWhileTheReloaderIsBusy(t *testing.T) {
	loop := &fakeLoop{}
	r := newReloader(nil, nil)
	r.sup = loop
	r.stop(false)
	r.stop(false)
	if got, want := loop.all(), []string{"shutdown fast=false"}; !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
	if n := len(r.asks); n != 2 {
		t.Errorf("%d stops queued for the reloader, want 2 (it still tells systemd and refuses reloads)", n)
	}
}

// With the reloader's queue full (asks piled up behind a reload being
// read), a stop still reaches the supervisor at once; its own ask then
// waits for room.
func TestStopReachesTheSupervisorWithTheQueueFull(t *testing.T) {
	loop := &fakeLoop{}
	r := newReloader(nil, nil)
	r.sup = loop
	for len(r.asks) < cap(r.asks) {
		r.asks <- reloadAsk{source: supervisor.ReloadBySignal}
	}
	stopped := make(chan struct{})
	go func() {
		r.stop(false)
		close(stopped)
	}()
	// Shutdown comes while the ask waits for room.
	deadline := time.Now().Add(10 * time.Second)
	for len(loop.all()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor was not told of the stop while its ask waited for room")
		}
		time.Sleep(time.Millisecond)
	}
	<-r.asks
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return once the queue had room")
	}
	if got, want := loop.all(), []string{"shutdown fast=false"}; !slices.Equal(got, want) {
		t.Errorf("supervisor asked %q, want %q", got, want)
	}
	var last any
	for len(r.asks) > 0 {
		last = <-r.asks
	}
	if _, ok := last.(stopAsk); !ok {
		t.Errorf("the last ask queued is %T, want the stop's", last)
	}
}

// A stop whose stopAsk is not read before the reloader is interrupted (the
// stop was quick, the reloader busy) is still told to systemd, once:
// Run's select takes the interrupt or the ask first at random, so it runs
// many times.
func TestAStopEndedBeforeItWasReadStillTellsSystemd(t *testing.T) {
	for range 50 {
		rig := newReloadRig(t, twoWorkers, false)
		rig.r.stop(false)
		rig.r.Interrupt(nil)
		if err := rig.r.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := rig.notify.all(); !slices.Equal(got, []string{"STOPPING"}) {
			t.Fatalf("systemd told %q, want STOPPING once", got)
		}
	}
}

// A reload being read when the stop is told is refused without reaching
// systemd (no RELOADING=1, no READY=1) or the supervisor.
func TestAReloadReadDuringAStopIsRefused(t *testing.T) {
	rig := newReloadRig(t, twoWorkers, true)
	rig.start()
	rig.r.shutdownTold.Store(true) // as stop does, before its ask is read
	if err := rig.reload(supervisor.ReloadBySignal); !errors.Is(err, supervisor.ErrStopped) {
		t.Errorf("reload during the stop: %v, want ErrStopped", err)
	}
	for _, told := range rig.notify.all() {
		if told == "RELOADING" {
			t.Errorf("systemd told %q, want no RELOADING", rig.notify.all())
		}
	}
	for _, call := range rig.loop.all() {
		if strings.HasPrefix(call, "reload ") {
			t.Errorf("supervisor asked %q, want no reload", rig.loop.all())
		}
	}
}

// The watch follows the env files of each configuration applied, and of
// none refused; a watch report with the file and its env files as the
// last reload found them is dropped, one with an env file changed is not.
func TestReloadFollowsTheEnvFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.env"), filepath.Join(dir, "b.env")
	write(t, a, "A=1\n")
	write(t, b, "B=1\n")
	rig := newReloadRig(t, "services:\n  a: {command: [/bin/true], env_file: "+a+"}\n", true)
	var watched [][]string
	rig.r.watchFiles = func(paths []string) { watched = append(watched, paths) }
	byFile := func() {
		t.Helper()
		reply := make(chan error, 1)
		rig.r.reload(reloadAsk{source: supervisor.ReloadByFile, reply: reply})
		<-reply
	}
	byFile() // nothing changed since the start's load
	write(t, a, "A=2\n")
	byFile()
	write(t, rig.path, "services:\n  a: {command: [/bin/true], env_file: ["+a+", "+b+"]}\n")
	byFile()
	write(t, rig.path, "services:\n  a: {command: [/bin/true], env_file: "+filepath.Join(dir, "missing.env")+"}\n")
	byFile()
	if want := []string{"reload file a=1", "reload file a=1", "refused file"}; !slices.Equal(rig.loop.all(), want) {
		t.Errorf("supervisor asked %q, want %q", rig.loop.all(), want)
	}
	if want := [][]string{{a}, {a, b}}; !reflect.DeepEqual(watched, want) {
		t.Errorf("watch told %q, want %q", watched, want)
	}
	if n := rig.logs.FilterMessage("env file changed; reloading").Len(); n != 1 {
		t.Errorf("%d env file reloads logged, want 1", n)
	}
}

// An env file only the new configuration names is measured from the
// reload that added it: a later report with nothing changed reloads
// nothing.
func TestEnvFileAddedByAReloadIsNotAChangeLater(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.env"), filepath.Join(dir, "b.env")
	write(t, a, "A=1\n")
	write(t, b, "B=1\n")
	rig := newReloadRig(t, "services:\n  a: {command: [/bin/true], env_file: "+a+"}\n", true)
	rig.r.watchFiles = func([]string) {}
	byFile := func() {
		reply := make(chan error, 1)
		rig.r.reload(reloadAsk{source: supervisor.ReloadByFile, reply: reply})
		<-reply
	}
	write(t, rig.path, "services:\n  a: {command: [/bin/true], env_file: ["+a+", "+b+"]}\n")
	byFile()
	byFile() // a report of something else in the directory
	if got := rig.loop.all(); len(got) != 1 {
		t.Errorf("the supervisor was asked %q, want one reload", got)
	}
	write(t, b, "B=2\n")
	byFile()
	if got := rig.loop.all(); len(got) != 2 {
		t.Errorf("after an edit of b: the supervisor was asked %q, want a second reload", got)
	}
}
