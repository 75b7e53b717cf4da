package top

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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

// Scale records the request and, if it is not refused, applies it to
// the fake's document, as a manager would.
func (f *fakeManager) Scale(_ context.Context, service string, n int) error {
	if err := f.record(fmt.Sprintf("scale %s %d", service, n)); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.doc.Service(service); s != nil {
		s.Desired = n
	}
	return nil
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
		"jobs", "▂▂▃▄▅▆▇█", "█▇▆▅▄▃▂▂",
		"↑↓ select  enter fold  +/- scale  r restart  R reload  / filter  ? help  q quit",
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
	doc.UptimeSeconds += 2                           // the manager's clock: 2 s later
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
	doc.UptimeSeconds++
	c.t = c.t.Add(time.Second)
	m.Update(statusArrived{doc: doc})
	if l := lineWith(plain(m), "12.0M"); strings.Contains(l, "0.0") {
		t.Errorf("worker 0 of a new manager %q: want no CPU%% yet", l)
	}
}

// Presses made before the manager answers wait their turn, one request
// out at a time, and count from what was asked before them.
func TestScalePressesQueueAndAddUp(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	if _, cmd := m.Update(tea.KeyPressMsg{Code: '+', Text: "+"}); cmd == nil {
		t.Fatal("+ sent no request")
	}
	if cmd := m.key("+"); cmd != nil {
		t.Errorf("the second + sent a request while one was out")
	}
	if m.running == nil || m.running.workers != 3 || len(m.queued) != 1 || m.queued[0].workers != 4 {
		t.Fatalf("after ++: running %+v, queued %+v; want scale to 3 out, to 4 queued", m.running, m.queued)
	}
	// A third, and a -: the queued scale is replaced, not added to.
	m.key("+")
	m.key("-")
	if len(m.queued) != 1 || m.queued[0].workers != 4 {
		t.Fatalf("after +++-: queued %+v; want one scale, to 4", m.queued)
	}
	if l := lineWith(plain(m), "printer  2/2"); !strings.Contains(l, "scaling to 4") {
		t.Errorf("service row %q: want the pending count shown", l)
	}
}

func TestKeysScaleRestartAndReloadThroughTheManager(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	// Each request answered before the next key: scale 3, 4, back to 3;
	// restart a worker, the service; reload.
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
	m.Update(statusArrived{seq: m.seq, doc: f.doc})
	n := len(f.called())
	press(t, m, "-")
	if len(f.called()) != n || !strings.Contains(m.message, "outside 0 to") {
		t.Errorf("- at 0 workers: requests %q, message %q", f.called()[n:], m.message)
	}
}

// A count asked for is shown until a document asked for after the scale
// was applied, whatever it says: another operator, or a reload, may have
// set another count since, and the next + counts from the document.
func TestScaleTargetEndsWithALaterDocument(t *testing.T) {
	f, c := &fakeManager{doc: sampleDoc()}, &clock{t0}
	m := newTestModel(t, f, c)
	m.fetching = true // a refresh is out when the scale is answered
	inFlight := m.seq
	m.Update(run(t, m.key("+"))[0]) // scale printer 3, answered
	// The refresh that was out answers with the count before the scale:
	// still shown as pending.
	m.Update(statusArrived{seq: inFlight, doc: sampleDoc()})
	if l := lineWith(plain(m), "printer  2/2"); !strings.Contains(l, "scaling to 3") {
		t.Errorf("service row %q after an older document: want scaling to 3", l)
	}
	// A later one says 2 (a reload set the file's count back): the target
	// goes, and + counts from 2.
	f.doc = sampleDoc()
	m.fetching = false
	msgs := run(t, m.fetch())
	m.Update(msgs[0])
	if l := lineWith(plain(m), "printer  2/2"); strings.Contains(l, "scaling") {
		t.Errorf("service row %q after a later document: want no pending count", l)
	}
	f.calls = nil
	press(t, m, "+")
	if got := f.called(); !slices.Equal(got, []string{"scale printer 3"}) {
		t.Errorf("+ after: requests %q, want scale printer 3", got)
	}
}

// Requests sent early (after an action) do not add refresh timers: one
// timer is set at a time.
func TestOneRefreshTimerAtATime(t *testing.T) {
	f := &fakeManager{doc: sampleDoc()}
	m := newTestModel(t, f, &clock{t0}) // its first answer set the timer
	if _, cmd := m.Update(statusArrived{seq: m.seq, doc: f.doc}); cmd != nil {
		t.Errorf("an answer while the timer is set returned a command (a second timer)")
	}
	_, cmd := m.Update(refreshDue{})
	msgs := run(t, cmd)
	if len(msgs) != 1 {
		t.Fatalf("the timer's refresh gave %v, want one status request", msgs)
	}
	if _, cmd := m.Update(msgs[0]); cmd == nil {
		t.Errorf("the answer to the timer's refresh set no next timer")
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
	lines = plain(m)
	if lineWith(lines, "! reload: reload refused: nothing changed:") == "" || !slices.Contains(lines, "gotyledon.yaml:4:14: workers: want a number") {
		t.Errorf("no FILE:LINE:COL of the refused reload:\n%s", strings.Join(plain(m), "\n"))
	}
}

// A reload refused for many reasons: the first ones, and how many more.
func TestLongRefusalsAreCounted(t *testing.T) {
	f := &fakeManager{doc: sampleDoc(), actErr: map[string]error{
		"reload": &control.Error{Code: 422, Message: "reload refused", Details: []string{"a.yaml:1:1: a", "a.yaml:2:1: b", "a.yaml:3:1: c", "a.yaml:4:1: d", "a.yaml:5:1: e"}},
	}}
	m := newTestModel(t, f, &clock{t0})
	press(t, m, "R")
	lines := plain(m)
	if !slices.Contains(lines, "a.yaml:2:1: b") || slices.Contains(lines, "a.yaml:3:1: c") || lineWith(lines, "… and 3 more lines") == "" {
		t.Errorf("a refusal of 6 lines on 24:\n%s", strings.Join(lines, "\n"))
	}
}

// An action answered while a refresh is out: that refresh's document may
// be from before the action, so another is asked for at once.
func TestActionAnsweredDuringARefreshAsksAgain(t *testing.T) {
	f := &fakeManager{doc: sampleDoc()}
	m := newTestModel(t, f, &clock{t0})
	m.opt.Interval = time.Millisecond // the next timer, run below, is not waited for
	m.Update(refreshDue{})            // a refresh goes out, not answered yet
	out := m.seq
	m.Update(run(t, m.key("R"))[0])
	_, cmd := m.Update(statusArrived{seq: out, doc: f.doc})
	var asked bool
	for _, msg := range run(t, cmd) {
		if sa, ok := msg.(statusArrived); ok && sa.seq == out+1 {
			asked = true
		}
	}
	if !asked {
		t.Errorf("no status request after the answer that was out during the action")
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

// dropOrder narrows the screen from 120 cells to 20 and returns the
// headers of the workers' and the queues' tables in the order they go,
// checking that every line fits each width.
func dropOrder(t *testing.T, m *Model) (workers, queues []string) {
	t.Helper()
	headers := func(line string, cols []column) []string {
		var out []string
		for _, c := range cols {
			if strings.Contains(line, c.header) && !slices.Contains(out, c.header) {
				out = append(out, c.header)
			}
		}
		return out
	}
	prevW, prevQ := headers("WORKER STATE READY PID UPTIME CPU% MEM RESTARTS LAST EXIT", workerColumns), headers("QUEUE DEPTH IN FLIGHT CONSUMERS PUT/S LAST MIN ACKED/S LAST MIN REDELIVERED", queueColumns)
	for width := 120; width >= 20; width-- {
		m.width = width
		lines := plain(m)
		for i, l := range lines {
			if w := ansi.StringWidth(l); w > width {
				t.Errorf("width %d: line %d is %d wide: %q", width, i, w, l)
			}
		}
		w, q := headers(lineWith(lines, "WORKER"), workerColumns), headers(lineWith(lines, "QUEUE"), queueColumns)
		for _, h := range prevW {
			if !slices.Contains(w, h) {
				workers = append(workers, h)
			}
		}
		for _, h := range prevQ {
			if !slices.Contains(q, h) {
				queues = append(queues, h)
			}
		}
		prevW, prevQ = w, q
	}
	return workers, queues
}

// Columns go in the order the README states as the screen narrows, and
// what is left fits; a long queue name is cut only once no column is left
// to drop.
func TestNarrowScreensDropColumnsInOrder(t *testing.T) {
	doc := sampleDoc()
	doc.Queues = append(doc.Queues, control.QueueStatus{Name: "orders-inbound", Capacity: 10})
	m := newTestModel(t, &fakeManager{doc: doc}, &clock{t0})
	m.width = 80
	if l := lineWith(plain(m), "orders"); !strings.Contains(l, "orders-inbound") {
		t.Errorf("80 columns: queue row %q, want the whole name", l)
	}
	workers, queues := dropOrder(t, m)
	// LAST MIN is the put sparkline, then the acked one.
	wantW := []string{"LAST EXIT", "RESTARTS", "UPTIME", "READY", "MEM", "CPU%", "PID"}
	wantQ := []string{"REDELIVERED", "CONSUMERS", "LAST MIN", "PUT/S", "IN FLIGHT", "ACKED/S"}
	if !slices.Equal(workers, wantW) || !slices.Equal(queues, wantQ) {
		t.Errorf("columns went in the order %q and %q, want %q and %q", workers, queues, wantW, wantQ)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	for _, want := range []string{
		"the workers' LAST EXIT (first cut to 10 cells), RESTARTS, UPTIME, READY, MEM, CPU%, PID (WORKER and STATE stay)",
		"the queues' REDELIVERED, CONSUMERS, the put sparkline, the acked sparkline, PUT/S, IN FLIGHT, ACKED/S (QUEUE and DEPTH stay)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("supervisor/README.md does not say %q", want)
		}
	}
}

// Many queues: those that do not fit are counted; a service in trouble
// scrolled out of sight is named.
func TestQueuesThatDoNotFitAndTroubleOutOfSight(t *testing.T) {
	doc := sampleDoc()
	for i := range 25 {
		doc.Queues = append(doc.Queues, control.QueueStatus{Name: fmt.Sprintf("q%02d", i)})
	}
	doc.Queues[25].Store, doc.Queues[25].StoreState = "jetstream", "reconnecting" // the last: out of sight
	for i := 2; i < 20; i++ {
		doc.Services[0].Workers = append(doc.Services[0].Workers, control.WorkerStatus{ID: i, State: "running", PID: 1000 + i})
	}
	m := newTestModel(t, &fakeManager{doc: doc}, &clock{t0})
	lines := plain(m)
	if len(lines) != 24 || lineWith(lines, "more queues, ! 1 in trouble (/ filters)") == "" {
		t.Errorf("26 queues on 24 lines: want the hidden ones counted:\n%s", strings.Join(lines, "\n"))
	}
	if l := lineWith(lines, "rows 1-"); !strings.Contains(l, "! also: crasher") {
		t.Errorf("the flapping crasher is out of sight, and line %q does not name it:\n%s", l, strings.Join(lines, "\n"))
	}
}

// On any screen from 9 lines, every queue is on it or counted as not.
func TestEveryQueueShownOrCounted(t *testing.T) {
	for _, queues := range []int{0, 1, 2, 3, 10} {
		for _, message := range []bool{false, true} {
			doc := sampleDoc()
			doc.Queues = nil
			for i := range queues {
				doc.Queues = append(doc.Queues, control.QueueStatus{Name: fmt.Sprintf("queue%02d", i)})
			}
			f := &fakeManager{doc: doc}
			m := newTestModel(t, f, &clock{t0})
			if message {
				m.say(true, "reload: refused:\na.yaml:1:1: x\na.yaml:2:1: y\na.yaml:3:1: z")
			}
			for height := 9; height <= 16; height++ {
				m.height = height
				frame := strings.Join(plain(m), "\n")
				if n := strings.Count(frame, "\n") + 1; n != height {
					t.Errorf("%d queues, height %d: %d lines", queues, height, n)
				}
				shown := strings.Count(frame, "  queue")
				if shown < queues && !strings.Contains(frame, fmt.Sprintf("%d more queues", queues-shown)) &&
					!strings.Contains(frame, fmt.Sprintf("%s not shown", countOf(queues-shown, "queue"))) {
					t.Errorf("%d queues, message %v, height %d: %d shown, the others not counted:\n%s", queues, message, height, shown, frame)
				}
			}
		}
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

func TestWrapped(t *testing.T) {
	plainStyle := newStyles().faint.UnsetFaint()
	for _, c := range []struct {
		text  string
		width int
		n     int
		want  []string
	}{
		{"a reload-failed /a/long-path/x.yaml:5:14: workers", 20, 4, []string{"a reload-failed", "/a/long-path/x.yaml:", "5:14: workers"}},
		{"one two three four", 10, 4, []string{"one two", "three four"}},
		{"one two three four five six", 10, 2, []string{"one two", "three fou…"}},
	} {
		if got := wrapped(plainStyle, c.text, c.width, c.n); !slices.Equal(got, c.want) {
			t.Errorf("wrapped(%q, %d, %d) = %q, want %q", c.text, c.width, c.n, got, c.want)
		}
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
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8}, 8, "▂▂▃▄▅▆▇█"},
		{[]float64{0, 0.01, 100}, 3, "▁▂█"},
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

// A service that waits for its dependencies says for what; a failed
// dependency is trouble.
func TestWaitingServiceSaysForWhat(t *testing.T) {
	doc := sampleDoc()
	doc.Services = append(doc.Services, control.ServiceStatus{Name: "web", Desired: 1, Configured: 1, Waiting: 1,
		WaitingFor: []control.DependencyWait{{Service: "migrate", Condition: "completed", Reason: "worker 0 failed (exit code 3)", Failed: true}},
		Workers:    []control.WorkerStatus{{ID: 0, State: "waiting"}}})
	m := newTestModel(t, &fakeManager{doc: doc}, &clock{t0})
	m.width, m.height = 120, 40
	lines := plain(m)
	if l := lineWith(lines, "web  0/1"); !strings.Contains(l, "0 restarts · waiting for migrate completed (it failed)") {
		t.Errorf("web's row %q, want what it waits for", l)
	}
	if l := lineWith(lines, "waiting  "); !strings.Contains(l, "#0") {
		t.Errorf("web's worker row %q, want its waiting state", l)
	}
}
