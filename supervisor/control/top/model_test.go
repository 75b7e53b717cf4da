package top

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// fakeManager answers with doc and records the actions asked of it.
type fakeManager struct {
	mu        sync.Mutex
	doc       control.Status
	statusErr error
	actErr    map[string]error // by the action's first word: scale, restart, reload
	calls     []string
}

func (f *fakeManager) Path() string { return "/run/test/control.sock" }

func (f *fakeManager) Status(context.Context) (control.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.doc, f.statusErr
}

func (f *fakeManager) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.actErr[strings.Fields(call)[0]]
}

func (f *fakeManager) Scale(_ context.Context, service string, n int) error {
	return f.record(fmt.Sprintf("scale %s %d", service, n))
}

func (f *fakeManager) Restart(_ context.Context, service string, worker int, settle bool) error {
	return f.record(fmt.Sprintf("restart %s %d settle=%v", service, worker, settle))
}

func (f *fakeManager) Reload(context.Context) error { return f.record("reload") }

func (f *fakeManager) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// clock is a settable time.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// sampleDoc is a manager with a healthy service, a flapping one and a
// queue, after a failed reload.
func sampleDoc() control.Status {
	started := t0.Add(-90 * time.Second)
	return control.Status{
		Schema: 1, PID: 4242, Config: "/etc/gotyledon/gotyledon.yaml", Ready: true, UptimeSeconds: 3723,
		Services: []control.ServiceStatus{
			{Name: "printer", Desired: 2, Configured: 2, Running: 2, Ready: 2, Workers: []control.WorkerStatus{
				{ID: 0, State: "running", PID: 101, Ready: true, StartedAt: &started, UptimeSeconds: 90, CPUSeconds: ptr(1.0), MemoryBytes: ptr(uint64(12 << 20)), UsageOf: "process"},
				{ID: 1, State: "running", PID: 102, Ready: true, StartedAt: &started, UptimeSeconds: 90, CPUSeconds: ptr(2.0), MemoryBytes: ptr(uint64(13 << 20)), UsageOf: "process"},
			}},
			{Name: "crasher", Desired: 1, Configured: 1, Backoff: 1, Restarts: 7, Workers: []control.WorkerStatus{
				{ID: 0, State: "backoff", Restarts: 7, Failures: 4, LastExit: "exit code 3", LastExitAt: ptr(t0.Add(-2 * time.Second)), RetryAt: ptr(t0.Add(3 * time.Second))},
			}},
		},
		Queues: []control.QueueStatus{
			{Name: "jobs", Capacity: 100, Depth: 12, InFlight: 2, Consumers: 2, PutPerSecond: 4.5, AckedPerSecond: 4,
				PutHistory: []float64{1, 2, 3, 4, 5, 6, 7, 8}, AckedHistory: []float64{8, 7, 6, 5, 4, 3, 2, 1}, RedeliveredTotal: 3},
		},
		LastReload: &control.ReloadStatus{At: t0.Add(-10 * time.Second), Source: "file", Error: "gotyledon.yaml:4:14: workers: want a number from 0 to 10000, got \"two\""},
		Reloads:    control.ReloadCounts{OK: 2, Failed: 1},
	}
}

// newTestModel is a Model of f at 80×24, with its first document taken.
func newTestModel(t *testing.T, f *fakeManager, c *clock) *Model {
	t.Helper()
	m := New(f, Options{Interval: time.Second, Now: c.now})
	m.Update(run(t, m.Init())[0])
	return m
}

// run executes cmd as Bubble Tea would, but for its timers, and returns
// the messages it gave, a batch's in order.
func run(t *testing.T, cmd tea.Cmd) []tea.Msg {
	t.Helper()
	if cmd == nil {
		return nil
	}
	msg := cmd()
	if batch, ok := msg.(tea.BatchMsg); ok {
		var out []tea.Msg
		for _, c := range batch {
			out = append(out, run(t, c)...)
		}
		return out
	}
	return []tea.Msg{msg}
}

// press sends keys, and feeds back what their requests answer until
// nothing is left to ask (but the timers' refreshes).
func press(t *testing.T, m *Model, keys ...string) {
	t.Helper()
	for _, k := range keys {
		pending := run(t, m.key(k))
		for len(pending) > 0 {
			msg := pending[0]
			pending = pending[1:]
			_, cmd := m.Update(msg)
			if _, isStatus := msg.(statusArrived); isStatus {
				continue // its command is the next refresh's timer
			}
			pending = append(pending, run(t, cmd)...)
		}
	}
}

// plain is the frame without its styles, as lines.
func plain(m *Model) []string { return strings.Split(ansi.Strip(m.Frame()), "\n") }

func lineWith(lines []string, s string) string {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func TestFrameShowsManagerServicesAndQueues(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	lines := plain(m)
	if len(lines) != 24 {
		t.Fatalf("%d lines, want 24:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if w := ansi.StringWidth(l); w > 80 {
			t.Errorf("line %d is %d cells wide: %q", i, w, l)
		}
	}
	frame := strings.Join(lines, "\n")
	for _, want := range []string{
		"manager pid 4242 · ready · up 1h02m · /etc/gotyledon/gotyledon.yaml",
		"! last reload FAILED 10s ago (file), nothing changed: gotyledon.yaml:4:14",
		"printer  2/2 running · 2 ready · 0 restarts",
		"crasher  0/1 running · 0 ready · 7 restarts · 1 in backoff · FLAPPING",
		"12.0M", "13.0M",
		"backoff 3s",
		"exit 3, 2s ago",
		"jobs", "▁▂▃▄▅▆▇█", "█▇▆▅▄▃▂▁",
		"↑↓ select  +/- scale  r restart  R reload  / filter  ? help  q quit",
	} {
		if !strings.Contains(frame, want) {
			t.Errorf("the frame lacks %q:\n%s", want, frame)
		}
	}
	// The selection starts on the first service; trouble is marked with
	// "!" with or without colour.
	if l := lineWith(lines, "printer  2/2"); !strings.HasPrefix(l, "> printer") {
		t.Errorf("selected row %q, want it marked >", l)
	}
	if l := lineWith(lines, "crasher  0/1"); !strings.HasPrefix(l, " !crasher") {
		t.Errorf("flapping service row %q, want it marked !", l)
	}
	if l := lineWith(lines, "backoff 3s"); !strings.HasPrefix(l, " !  #0") {
		t.Errorf("worker in backoff %q, want it marked !", l)
	}
	// No CPU% before a second document.
	if l := lineWith(lines, "12.0M"); !strings.Contains(l, " - ") {
		t.Errorf("worker row %q: want CPU%% '-' before a second document", l)
	}
}

func TestCPUPercentFromTwoDocuments(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	c.t = c.t.Add(2 * time.Second)
	doc := sampleDoc()
	doc.Services[0].Workers[0].CPUSeconds = ptr(2.0) // 1 s in 2 s: 50%
	doc.Services[0].Workers[1].CPUSeconds = ptr(5.0) // 3 s in 2 s: 150% (threads)
	m.Update(statusArrived{doc: doc})
	lines := plain(m)
	if l := lineWith(lines, "12.0M"); !strings.Contains(l, "50.0") {
		t.Errorf("worker 0 %q: want 50.0 CPU%%", l)
	}
	if l := lineWith(lines, "13.0M"); !strings.Contains(l, "150.0") {
		t.Errorf("worker 1 %q: want 150.0 CPU%%", l)
	}
	// Another manager (another pid): the figures start again.
	doc.PID = 5000
	c.t = c.t.Add(time.Second)
	m.Update(statusArrived{doc: doc})
	if l := lineWith(plain(m), "12.0M"); strings.Contains(l, "0.0") {
		t.Errorf("worker 0 of a new manager %q: want no CPU%% yet", l)
	}
}

func TestKeysScaleRestartAndReloadThroughTheManager(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	// Two presses before any answer: the second waits for the first,
	// and counts from what the first asked.
	m.Update(tea.KeyPressMsg{Code: '+', Text: "+"})
	if cmd := m.key("+"); cmd != nil {
		t.Errorf("the second + sent a request while one was out")
	}
	if m.running == nil || m.running.workers != 3 || len(m.queued) != 1 || m.queued[0].workers != 4 {
		t.Fatalf("after ++: running %+v, queued %+v; want scale to 3 out, to 4 queued", m.running, m.queued)
	}
	// A third: the queued scale asks for 5 instead, not a second one.
	m.key("+")
	m.key("-")
	if len(m.queued) != 1 || m.queued[0].workers != 4 {
		t.Fatalf("after +++-: queued %+v; want one scale, to 4", m.queued)
	}
	if l := lineWith(plain(m), "printer  2/2"); !strings.Contains(l, "scaling to 4") {
		t.Errorf("service row %q: want the pending count shown", l)
	}
	// Again, each request answered: scale 3, 4, back to 3; restart a
	// worker, the service; reload.
	m.running, m.queued, m.targets = nil, nil, map[string]int{}
	press(t, m, "+", "+", "-", "down", "r", "up", "r", "R")
	want := []string{"scale printer 3", "scale printer 4", "scale printer 3", "restart printer 0 settle=false", "restart printer -1 settle=false", "reload"}
	if got := f.called(); !slices.Equal(got, want) {
		t.Errorf("requests %q, want %q", got, want)
	}
	if l := lineWith(plain(m), "reloaded"); l == "" {
		t.Errorf("no status line for the reload:\n%s", strings.Join(plain(m), "\n"))
	}
	// The selection can reach the last worker and not beyond.
	press(t, m, "end", "down")
	if m.selected != (rowKey{"crasher", 0}) {
		t.Errorf("selected %+v after end, want crasher's worker 0", m.selected)
	}
	// - at 0 workers is refused here, without a request.
	f.doc.Services[1].Desired = 0
	m.Update(statusArrived{doc: f.doc})
	n := len(f.called())
	press(t, m, "-")
	if len(f.called()) != n || !strings.Contains(m.message, "outside 0 to") {
		t.Errorf("- at 0 workers: requests %q, message %q", f.called()[n:], m.message)
	}
}

// A refused action says why in the status line, and the view goes on:
// nothing pending is left shown.
func TestRefusedActionsShowTheManagersMessage(t *testing.T) {
	f := &fakeManager{doc: sampleDoc(), actErr: map[string]error{
		"scale":  &control.Error{Code: 403, Message: "uid 1000 may not use the control socket"},
		"reload": &control.Error{Code: 422, Message: "reload refused: nothing changed", Details: []string{"gotyledon.yaml:4:14: workers: want a number"}},
	}}
	m := newTestModel(t, f, &clock{t0})
	press(t, m, "+")
	lines := plain(m)
	if l := lineWith(lines, "! scale printer to 3: uid 1000 may not use the control socket"); l == "" {
		t.Errorf("no refusal in the status line:\n%s", strings.Join(lines, "\n"))
	}
	if l := lineWith(lines, "printer  2/2"); strings.Contains(l, "scaling") {
		t.Errorf("service row %q still shows a refused scale", l)
	}
	press(t, m, "R")
	if frame := strings.Join(plain(m), " "); !strings.Contains(frame, "! reload: reload refused: nothing changed:") || !strings.Contains(frame, "gotyledon.yaml:4:14: workers: want a number") {
		t.Errorf("no FILE:LINE:COL of the refused reload:\n%s", strings.Join(plain(m), "\n"))
	}
}

func TestManagerGoneThenBack(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	c.t = c.t.Add(5 * time.Second)
	m.Update(statusArrived{err: fmt.Errorf("%w: nothing at /run/test/control.sock", control.ErrNoManager)})
	lines := plain(m)
	if lines[0] != "! no answer from the manager, asking again every 1s (its last answer: 5s ago)" ||
		lines[1] != "no manager is running: nothing at /run/test/control.sock" {
		t.Errorf("first lines %q, %q", lines[0], lines[1])
	}
	if lineWith(lines, "printer  2/2") == "" {
		t.Errorf("the last answer's tables are gone:\n%s", strings.Join(lines, "\n"))
	}
	doc := sampleDoc()
	doc.PID = 777
	m.Update(statusArrived{doc: doc})
	lines = plain(m)
	if !strings.HasPrefix(lines[0], "manager pid 777 · ready") || lineWith(lines, "reconnected: manager pid 777") == "" {
		t.Errorf("after the manager came back:\n%s", strings.Join(lines, "\n"))
	}
}

// A manager that refuses this user: its own message, from a real control
// socket, and no crash.
func TestManagerOfAnotherUser(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(l, control.Options{
		Status: func(context.Context) (supervisor.Status, error) { return supervisor.Status{}, nil },
		Scale:  func(context.Context, string, int) error { return nil },
		Reload: func(context.Context, bool) error { return nil },
		Allow:  func(ipc.Peer) bool { return false },
	})
	done := make(chan error, 1)
	go func() { done <- srv.Run() }()
	defer func() {
		srv.Interrupt(nil)
		<-done
	}()
	m := New(control.NewClient(path), Options{Interval: time.Second})
	m.Update(run(t, m.Init())[0])
	lines := plain(m)
	if !strings.HasPrefix(lines[0], "! no answer from the manager") || !strings.HasPrefix(lines[1], "uid ") || !strings.Contains(lines[1], "may not use the control socket") {
		t.Errorf("first lines %q, %q: want the manager's refusal", lines[0], lines[1])
	}
}

// Columns go in the stated order as the screen narrows; what is left
// still fits.
func TestNarrowScreensDropColumnsInOrder(t *testing.T) {
	f := &fakeManager{doc: sampleDoc()}
	m := newTestModel(t, f, &clock{t0})
	header := func(width int) (workers, queues string) {
		m.width = width
		lines := plain(m)
		for i, l := range lines {
			if w := ansi.StringWidth(l); w > width {
				t.Errorf("width %d: line %d is %d wide: %q", width, i, w, l)
			}
		}
		return lineWith(lines, "WORKER"), lineWith(lines, "QUEUE")
	}
	w, q := header(120)
	for _, col := range []string{"READY", "PID", "UPTIME", "CPU%", "MEM", "RESTARTS", "LAST EXIT"} {
		if !strings.Contains(w, col) {
			t.Errorf("120 columns: workers header %q lacks %s", w, col)
		}
	}
	for _, col := range []string{"IN FLIGHT", "CONSUMERS", "PUT/S", "ACKED/S", "LAST MIN", "REDELIVERED"} {
		if !strings.Contains(q, col) {
			t.Errorf("120 columns: queues header %q lacks %s", q, col)
		}
	}
	w, _ = header(50)
	if strings.Contains(w, "LAST EXIT") || strings.Contains(w, "RESTARTS") || !strings.Contains(w, "UPTIME") || !strings.Contains(w, "MEM") {
		t.Errorf("50 columns: workers header %q; want LAST EXIT and RESTARTS gone first, UPTIME and MEM kept", w)
	}
	w, q = header(20)
	if got := strings.Fields(w); !slices.Equal(got, []string{"WORKER", "STATE"}) {
		t.Errorf("20 columns: workers header %q; want WORKER and STATE only", w)
	}
	if got := strings.Fields(q); !slices.Equal(got, []string{"QUEUE", "DEPTH"}) {
		t.Errorf("20 columns: queues header %q; want QUEUE and DEPTH only", q)
	}
}

func TestFilterAndHelp(t *testing.T) {
	f := &fakeManager{doc: sampleDoc()}
	m := newTestModel(t, f, &clock{t0})
	press(t, m, "/", "c", "r", "a")
	if l := lineWith(plain(m), "filter: cra"); l == "" {
		t.Errorf("the filter being typed is not shown")
	}
	press(t, m, "enter")
	frame := strings.Join(plain(m), "\n")
	if strings.Contains(frame, "printer") || !strings.Contains(frame, "crasher") || strings.Contains(frame, "jobs") {
		t.Errorf("filtered on cra:\n%s", frame)
	}
	if m.selected.service != "crasher" {
		t.Errorf("selected %+v: want the selection moved to what is shown", m.selected)
	}
	press(t, m, "esc")
	if frame := strings.Join(plain(m), "\n"); !strings.Contains(frame, "printer") || !strings.Contains(frame, "jobs") {
		t.Errorf("esc did not clear the filter:\n%s", frame)
	}
	press(t, m, "?")
	if frame := strings.Join(plain(m), "\n"); !strings.Contains(frame, "Press any key to go back") || strings.Contains(frame, "WORKER") {
		t.Errorf("help screen:\n%s", frame)
	}
	press(t, m, "x")
	if m.mode != browsing || len(f.called()) != 0 {
		t.Errorf("after help: mode %v, requests %q", m.mode, f.called())
	}
	press(t, m, "home", "enter") // fold printer
	if frame := strings.Join(plain(m), "\n"); !strings.Contains(frame, "(2 workers folded)") || strings.Contains(frame, "102") {
		t.Errorf("folded printer:\n%s", frame)
	}
}

// Fifty workers on 24 lines: the selected row stays on screen.
func TestLongTablesScrollToTheSelection(t *testing.T) {
	doc := sampleDoc()
	for i := 2; i < 50; i++ {
		doc.Services[0].Workers = append(doc.Services[0].Workers, control.WorkerStatus{ID: i, State: "running", PID: 1000 + i})
	}
	m := newTestModel(t, &fakeManager{doc: doc}, &clock{t0})
	press(t, m, "end")
	lines := plain(m)
	if len(lines) != 24 || lineWith(lines, ">!  #0") == "" || lineWith(lines, "rows 39-53 of 53") == "" {
		t.Errorf("after end, want the last row selected and the rows counted:\n%s", strings.Join(lines, "\n"))
	}
	press(t, m, "home")
	if l := lineWith(plain(m), "> printer"); l == "" {
		t.Errorf("after home, want the first row selected:\n%s", strings.Join(plain(m), "\n"))
	}
}

// Once prints every row, in colour only where the environment allows it.
func TestOnceHonoursNoColor(t *testing.T) {
	f := &fakeManager{doc: sampleDoc()}
	opt := Options{Interval: time.Millisecond}
	var plainOut, colourOut bytes.Buffer
	if err := Once(context.Background(), f, opt, &plainOut, []string{"TERM=xterm-256color", "NO_COLOR=1"}, 100); err != nil {
		t.Fatal(err)
	}
	if err := Once(context.Background(), f, opt, &colourOut, []string{"TERM=xterm-256color", "CLICOLOR_FORCE=1"}, 100); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plainOut.Bytes(), []byte("\x1b[")) || !strings.Contains(plainOut.String(), "! last reload FAILED") {
		t.Errorf("NO_COLOR: want no colour, the markers kept:\n%q", plainOut.String())
	}
	if !bytes.Contains(colourOut.Bytes(), []byte("\x1b[")) {
		t.Errorf("a colour terminal got no styles:\n%q", colourOut.String())
	}
	if strings.Contains(plainOut.String(), "q quit") {
		t.Errorf("--once printed the keys line")
	}
	f.statusErr = errors.New("boom")
	if err := Once(context.Background(), f, opt, &plainOut, nil, 80); err == nil || err.Error() != "boom" {
		t.Errorf("Once of a manager that fails: %v", err)
	}
}

func TestSparklineAndFormats(t *testing.T) {
	for _, c := range []struct {
		rates []float64
		width int
		want  string
	}{
		{nil, 4, "    "},
		{[]float64{0, 0}, 4, "  ▁▁"},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8}, 8, "▁▂▃▄▅▆▇█"},
		{[]float64{0, 0, 8, 8}, 2, "▁█"},
	} {
		if got := sparkline(c.rates, c.width); got != c.want {
			t.Errorf("sparkline(%v, %d) = %q, want %q", c.rates, c.width, got, c.want)
		}
	}
	for d, want := range map[time.Duration]string{400 * time.Millisecond: "0.4s", 42 * time.Second: "42s", 723 * time.Second: "12m03s", 3723 * time.Second: "1h02m", 49 * time.Hour: "2d01h"} {
		if got := compactDuration(d); got != want {
			t.Errorf("compactDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[uint64]string{512: "512B", 12 << 20: "12.0M", 1536 << 20: "1.50G", 300 << 10: "300K"} {
		if got := compactBytes(n); got != want {
			t.Errorf("compactBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
