// Package top is `gotyledon top`: a live view of a running manager,
// refreshed from its control socket's status document, from which an
// operator scales, restarts and reloads through the same requests as the
// gotyledon commands.
//
// Model holds the view's state and is a Bubble Tea model: Update takes a
// status document, a key or an action's result and returns what to ask of
// the manager next, and Frame draws the screen as text. Both run without a
// terminal, so that tests can feed a sequence of documents and keys and
// read the frames and the requests. Run puts a Model on a terminal; Once
// prints one frame.
package top

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// Manager is what the view asks of a manager: *control.Client is one.
// Its methods are called from Bubble Tea's command goroutines, one
// action at a time but concurrently with Status.
type Manager interface {
	Path() string
	Status(ctx context.Context) (control.Status, error)
	Scale(ctx context.Context, service string, workers int) error
	Restart(ctx context.Context, service string, worker int, settle bool) error
	Reload(ctx context.Context) error
}

// Options set how a Model refreshes. The zero value is the default.
type Options struct {
	// Interval is the time between two status requests (default 1s).
	Interval time.Duration
	// Timeout bounds each request (default 10s).
	Timeout time.Duration
	// Now is the clock (time.Now by default); tests set it.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Messages of the Model's own commands.
type (
	// refreshDue: time to ask for the status again.
	refreshDue struct{}
	// statusArrived is the answer to status request number seq.
	statusArrived struct {
		seq int
		doc control.Status
		err error
	}
	// actionDone is the answer to an action's request.
	actionDone struct {
		act action
		err error
	}
)

// actionKind is what an action asks of the manager.
type actionKind int

const (
	scaleAction actionKind = iota
	restartAction
	reloadAction
)

// action is one request the operator made with a key.
type action struct {
	kind    actionKind
	service string
	worker  int // restartAction: -1 for every worker of service
	workers int // scaleAction: the count to set
}

// String says what the action does, for the status line.
func (a action) String() string {
	switch a.kind {
	case scaleAction:
		return fmt.Sprintf("scale %s to %d", a.service, a.workers)
	case restartAction:
		if a.worker >= 0 {
			return fmt.Sprintf("restart %s/%d", a.service, a.worker)
		}
		return "restart " + a.service
	}
	return "reload"
}

// do sends the action's request.
func (a action) do(ctx context.Context, m Manager) error {
	switch a.kind {
	case scaleAction:
		return m.Scale(ctx, a.service, a.workers)
	case restartAction:
		return m.Restart(ctx, a.service, a.worker, false)
	}
	return m.Reload(ctx)
}

// mode is what the keys do.
type mode int

const (
	browsing  mode = iota
	filtering      // typing the filter after "/"
	helping        // the help screen is up
)

// rowKey names a row of the services table: a service's own row
// (worker -1), or one of its workers'.
type rowKey struct {
	service string
	worker  int
}

// processKey names a worker's process: a pid, and when it started (a pid
// is reused).
type processKey struct {
	pid     int
	started int64 // Unix nanoseconds: whatever the zone it was written in
}

// cpuSample is a worker process's CPU time in a document, and the
// manager's uptime then: the interval between two documents is the
// manager's, not the time their answers took to arrive.
type cpuSample struct {
	cpu, uptime float64 // seconds
}

// scaleTarget is a worker count asked for with + or -, shown until a
// document the manager made after it applied the count arrives.
type scaleTarget struct {
	workers int
	// appliedBefore: the scale was applied before status request number
	// appliedBefore+1 was sent; 0 while its request is out or queued.
	appliedBefore int
}

// Model is the state of the view. Use New; a Model is not safe for
// concurrent use (Bubble Tea calls it from one goroutine).
type Model struct {
	mgr Manager
	opt Options

	width, height int

	doc      *control.Status // the newest document, nil before the first
	docAt    time.Time
	seq      int   // status requests sent
	fetching bool  // a status request is out
	again    bool  // ask again as soon as it is answered: an action was answered meanwhile
	ticking  bool  // the timer of the next refresh is set
	lost     error // why the newest status request failed; nil while connected

	cpu    map[processKey]cpuSample // the previous document's CPU times
	cpuPct map[processKey]float64   // CPU % between the last two documents

	selected  rowKey
	collapsed map[string]bool // services whose worker rows are hidden
	top       int             // first services row on screen

	mode        mode
	filter      string // applied: only services and queues whose name holds it
	filterInput string // being typed

	message      string // the status line: what the last action did
	messageError bool

	running *action                // the action whose request is out
	queued  []action               // the actions waiting for it, in order
	targets map[string]scaleTarget // by service: counts asked for, until a document shows them
}

// New returns a Model of the manager m, 80×24 until Bubble Tea says the
// terminal's size.
func New(m Manager, opt Options) *Model {
	return &Model{
		mgr: m, opt: opt.withDefaults(), width: 80, height: 24,
		cpu: map[processKey]cpuSample{}, cpuPct: map[processKey]float64{},
		collapsed: map[string]bool{}, targets: map[string]scaleTarget{},
		selected: rowKey{worker: -1},
	}
}

// Init asks for the first status.
func (m *Model) Init() tea.Cmd { return m.fetch() }

// fetch asks for the status, unless a request is already out.
func (m *Model) fetch() tea.Cmd {
	if m.fetching {
		m.again = true
		return nil
	}
	m.fetching = true
	m.seq++
	mgr, timeout, seq := m.mgr, m.opt.Timeout, m.seq
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		doc, err := mgr.Status(ctx)
		return statusArrived{seq: seq, doc: doc, err: err}
	}
}

// Update takes a message and returns the command to run next.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case refreshDue:
		m.ticking = false
		return m, m.fetch()
	case statusArrived:
		m.fetching = false
		m.took(msg.seq, msg.doc, msg.err)
		var next tea.Cmd
		if m.again {
			// An action was answered while this request was out: its
			// document may be from before it.
			m.again = false
			next = m.fetch()
		}
		// One timer at a time: an answer to a request sent early (after
		// an action) must not start a second refresh cycle.
		if m.ticking {
			return m, next
		}
		m.ticking = true
		return m, tea.Batch(next, tea.Tick(m.opt.Interval, func(time.Time) tea.Msg { return refreshDue{} }))
	case actionDone:
		return m, m.finished(msg.act, msg.err)
	case tea.KeyPressMsg:
		return m, m.key(msg.String())
	}
	return m, nil
}

// took records the answer to status request number seq.
func (m *Model) took(seq int, doc control.Status, err error) {
	now := m.opt.Now()
	if err != nil {
		m.lost = err
		return
	}
	if m.lost != nil && m.doc != nil {
		m.say(false, fmt.Sprintf("reconnected: manager pid %d", doc.PID))
	}
	m.lost = nil
	if m.doc != nil && m.doc.PID != doc.PID {
		m.cpu = map[processKey]cpuSample{} // another manager: another clock
	}
	// CPU % from the change in each process's CPU time since the previous
	// document, over the manager's time between the two.
	cpu, pct := make(map[processKey]cpuSample), make(map[processKey]float64)
	for _, s := range doc.Services {
		for _, w := range s.Workers {
			if w.PID == 0 || w.CPUSeconds == nil || w.StartedAt == nil {
				continue
			}
			key := processKey{w.PID, w.StartedAt.UnixNano()}
			cpu[key] = cpuSample{cpu: *w.CPUSeconds, uptime: doc.UptimeSeconds}
			if prev, ok := m.cpu[key]; ok {
				if dt := doc.UptimeSeconds - prev.uptime; dt > 0 && *w.CPUSeconds >= prev.cpu {
					pct[key] = (*w.CPUSeconds - prev.cpu) / dt * 100
				}
			}
		}
	}
	m.cpu, m.cpuPct = cpu, pct
	m.doc, m.docAt = &doc, now
	// A count asked for shows until a document made after the manager
	// applied it: whatever that document says (a reload, another
	// operator, may have changed it since), the next + counts from it.
	for name, t := range m.targets {
		if t.appliedBefore > 0 && seq > t.appliedBefore && !m.scalePending(name) {
			delete(m.targets, name)
		}
	}
	m.keepSelection()
}

// scalePending: a scale of service is out or queued.
func (m *Model) scalePending(service string) bool {
	if m.running != nil && m.running.kind == scaleAction && m.running.service == service {
		return true
	}
	return slices.ContainsFunc(m.queued, func(a action) bool { return a.kind == scaleAction && a.service == service })
}

// say sets the status line.
func (m *Model) say(isError bool, text string) {
	m.message, m.messageError = text, isError
}

// request queues an action, and sends it if none is out. A scale of a
// service replaces one of the same service still queued: the newest
// count is what the operator wants.
func (m *Model) request(a action) tea.Cmd {
	if a.kind == scaleAction {
		for i, q := range m.queued {
			if q.kind == scaleAction && q.service == a.service {
				m.queued[i] = a
				return nil
			}
		}
	}
	m.queued = append(m.queued, a)
	return m.next()
}

// next sends the first queued action if none is out.
func (m *Model) next() tea.Cmd {
	if m.running != nil || len(m.queued) == 0 {
		return nil
	}
	a := m.queued[0]
	m.queued = m.queued[1:]
	m.running = &a
	mgr, timeout := m.mgr, m.opt.Timeout
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return actionDone{act: a, err: a.do(ctx, mgr)}
	}
}

// finished records an action's result, sends the next one, and asks for
// the status at once so that the screen shows the change.
func (m *Model) finished(a action, err error) tea.Cmd {
	m.running = nil
	if a.kind == scaleAction && !m.scalePending(a.service) {
		if err != nil {
			delete(m.targets, a.service)
		} else if t, ok := m.targets[a.service]; ok {
			t.appliedBefore = m.seq
			m.targets[a.service] = t
		}
	}
	switch {
	case err != nil:
		m.say(true, a.String()+": "+detailLines(err))
	case a.kind == scaleAction:
		m.say(false, fmt.Sprintf("%s: %d workers (until the file's next reload)", a.service, a.workers))
	case a.kind == restartAction:
		m.say(false, a.String()+": under way, as gotyledon restart replaces workers")
	default:
		m.say(false, "reloaded: the file is applied")
	}
	return tea.Batch(m.next(), m.fetch())
}

// oneLine is err's message on one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// detailLines is err's message, and a failed reload's FILE:LINE:COL
// details each on a line of its own.
func detailLines(err error) string {
	var ce *control.Error
	if errors.As(err, &ce) && len(ce.Details) > 0 {
		return ce.Message + ":\n" + strings.Join(ce.Details, "\n")
	}
	return oneLine(err)
}

// key handles one key press.
func (m *Model) key(k string) tea.Cmd {
	switch m.mode {
	case helping:
		m.mode = browsing
		if k == "q" || k == "ctrl+c" {
			return m.exit()
		}
		return nil
	case filtering:
		switch k {
		case "enter":
			m.filter, m.mode = m.filterInput, browsing
			m.keepSelection()
		case "ctrl+c":
			return m.exit()
		case "esc":
			m.filter, m.filterInput, m.mode = "", "", browsing
			m.keepSelection()
		case "backspace":
			if r := []rune(m.filterInput); len(r) > 0 {
				m.filterInput = string(r[:len(r)-1])
			}
		default:
			if r := []rune(k); len(r) == 1 && r[0] >= ' ' {
				m.filterInput += k
			} else if k == "space" {
				m.filterInput += " "
			}
		}
		return nil
	}
	switch k {
	case "q", "ctrl+c":
		return m.exit()
	case "?", "h":
		m.mode = helping
	case "/":
		m.mode, m.filterInput = filtering, m.filter
	case "esc":
		m.filter = ""
		m.keepSelection()
	case "up", "k":
		m.move(-1)
	case "down", "j":
		m.move(1)
	case "pgup":
		m.move(-max(1, m.pageRows()-1))
	case "pgdown":
		m.move(max(1, m.pageRows()-1))
	case "home", "g":
		m.move(-1 << 30)
	case "end", "G":
		m.move(1 << 30)
	case "enter", "space":
		if s := m.selected.service; s != "" {
			m.collapsed[s] = !m.collapsed[s]
			m.selected.worker = -1
		}
	case "+", "=":
		return m.scale(1)
	case "-", "_":
		return m.scale(-1)
	case "r":
		s := m.selectedService()
		if s == nil {
			m.say(true, "restart: select a service or a worker first")
			return nil
		}
		return m.request(action{kind: restartAction, service: s.Name, worker: m.selected.worker})
	case "R":
		return m.request(action{kind: reloadAction})
	}
	return nil
}

// exit ends the program.
func (m *Model) exit() tea.Cmd { return tea.Quit }

// scale asks for one worker more or fewer in the selected service.
func (m *Model) scale(by int) tea.Cmd {
	s := m.selectedService()
	if s == nil {
		m.say(true, "scale: select a service first")
		return nil
	}
	n := s.Desired
	if t, ok := m.targets[s.Name]; ok {
		n = t.workers
	}
	n += by
	if n < 0 || n > config.MaxWorkers {
		m.say(true, fmt.Sprintf("scale %s: %d workers is outside 0 to %d", s.Name, n, config.MaxWorkers))
		return nil
	}
	m.targets[s.Name] = scaleTarget{workers: n}
	return m.request(action{kind: scaleAction, service: s.Name, workers: n})
}

// selectedService is the service of the selected row, nil if none.
func (m *Model) selectedService() *control.ServiceStatus {
	if m.doc == nil || m.selected.service == "" {
		return nil
	}
	return m.doc.Service(m.selected.service)
}

// shown reports whether a service or queue called name passes the filter.
func (m *Model) shown(name string) bool {
	return m.filter == "" || strings.Contains(strings.ToLower(name), strings.ToLower(m.filter))
}

// rows lists the services table's rows as shown: each service that
// passes the filter, then its workers unless it is collapsed.
func (m *Model) rows() []rowKey {
	if m.doc == nil {
		return nil
	}
	var out []rowKey
	for _, s := range m.doc.Services {
		if !m.shown(s.Name) {
			continue
		}
		out = append(out, rowKey{service: s.Name, worker: -1})
		if m.collapsed[s.Name] {
			continue
		}
		for _, w := range s.Workers {
			out = append(out, rowKey{service: s.Name, worker: w.ID})
		}
	}
	return out
}

// keepSelection moves the selection to a row that is shown: the same one,
// else its service's, else the first.
func (m *Model) keepSelection() {
	rows := m.rows()
	if slices.Contains(rows, m.selected) {
		return
	}
	svc := rowKey{service: m.selected.service, worker: -1}
	switch {
	case slices.Contains(rows, svc):
		m.selected = svc
	case len(rows) > 0:
		m.selected = rows[0]
	default:
		m.selected = rowKey{worker: -1}
	}
}

// move moves the selection by n rows, within the table.
func (m *Model) move(n int) {
	rows := m.rows()
	if len(rows) == 0 {
		return
	}
	i := max(0, slices.Index(rows, m.selected))
	i = min(len(rows)-1, max(0, i+n))
	m.selected = rows[i]
}
