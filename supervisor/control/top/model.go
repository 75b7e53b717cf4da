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
	// statusArrived is the answer to a status request.
	statusArrived struct {
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

// cpuSample is a worker process's CPU time when a document was taken.
type cpuSample struct {
	cpu float64 // seconds
	at  time.Time
}

// Model is the state of the view. Use New; a Model is not safe for
// concurrent use (Bubble Tea calls it from one goroutine).
type Model struct {
	mgr Manager
	opt Options

	width, height int

	doc       *control.Status // the newest document, nil before the first
	docAt     time.Time
	fetching  bool
	lost      error     // why the newest request failed; nil while connected
	lostSince time.Time // when the manager first failed to answer

	cpu    map[int]cpuSample // by pid: the previous document's CPU times
	cpuPct map[int]float64   // by pid: CPU % between the last two documents

	selected  rowKey
	collapsed map[string]bool // services whose worker rows are hidden
	top       int             // first services row on screen

	mode        mode
	filter      string // applied: only services and queues whose name holds it
	filterInput string // being typed

	message      string // the status line: what the last action did
	messageError bool

	running *action        // the action whose request is out
	queued  []action       // the actions waiting for it, in order
	targets map[string]int // service → worker count asked for, until a document shows it
	quit    bool
}

// New returns a Model of the manager m, 80×24 until Bubble Tea says the
// terminal's size.
func New(m Manager, opt Options) *Model {
	return &Model{
		mgr: m, opt: opt.withDefaults(), width: 80, height: 24,
		cpu: map[int]cpuSample{}, cpuPct: map[int]float64{},
		collapsed: map[string]bool{}, targets: map[string]int{},
		selected: rowKey{worker: -1},
	}
}

// Init asks for the first status.
func (m *Model) Init() tea.Cmd { return m.fetch() }

// fetch asks for the status, unless a request is already out.
func (m *Model) fetch() tea.Cmd {
	if m.fetching {
		return nil
	}
	m.fetching = true
	mgr, timeout := m.mgr, m.opt.Timeout
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		doc, err := mgr.Status(ctx)
		return statusArrived{doc: doc, err: err}
	}
}

// Update takes a message and returns the command to run next.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case refreshDue:
		return m, m.fetch()
	case statusArrived:
		m.fetching = false
		m.took(msg.doc, msg.err)
		interval := m.opt.Interval
		return m, tea.Tick(interval, func(time.Time) tea.Msg { return refreshDue{} })
	case actionDone:
		return m, m.finished(msg.act, msg.err)
	case tea.KeyPressMsg:
		return m, m.key(msg.String())
	}
	return m, nil
}

// took records a status request's answer.
func (m *Model) took(doc control.Status, err error) {
	now := m.opt.Now()
	if err != nil {
		if m.lost == nil {
			m.lostSince = now
		}
		m.lost = err
		return
	}
	if m.lost != nil && m.doc != nil {
		m.say(false, fmt.Sprintf("reconnected: manager pid %d", doc.PID))
	}
	m.lost = nil
	if m.doc != nil && m.doc.PID != doc.PID {
		m.cpu = map[int]cpuSample{} // another manager: pids mean other processes
	}
	// CPU % from the change in each process's CPU time since the previous
	// document.
	cpu, pct := make(map[int]cpuSample), make(map[int]float64)
	for _, s := range doc.Services {
		for _, w := range s.Workers {
			if w.PID == 0 || w.CPUSeconds == nil {
				continue
			}
			cpu[w.PID] = cpuSample{cpu: *w.CPUSeconds, at: now}
			if prev, ok := m.cpu[w.PID]; ok {
				if dt := now.Sub(prev.at).Seconds(); dt > 0 && *w.CPUSeconds >= prev.cpu {
					pct[w.PID] = (*w.CPUSeconds - prev.cpu) / dt * 100
				}
			}
		}
	}
	m.cpu, m.cpuPct = cpu, pct
	m.doc, m.docAt = &doc, now
	// A scale asked for is shown as pending until the document has it.
	for name, n := range m.targets {
		if s := doc.Service(name); s == nil || (s.Desired == n && !m.scalePending(name)) {
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
	if err != nil {
		if a.kind == scaleAction && !m.scalePending(a.service) {
			delete(m.targets, a.service)
		}
		m.say(true, a.String()+": "+oneLine(err))
	} else {
		switch a.kind {
		case scaleAction:
			m.say(false, fmt.Sprintf("%s: %d workers (until the file's next reload)", a.service, a.workers))
		case restartAction:
			m.say(false, a.String()+": replacing one worker at a time, each once the one before is ready")
		case reloadAction:
			m.say(false, "reloaded: the file is applied")
		}
	}
	return tea.Batch(m.next(), m.fetch())
}

// oneLine is err's message, a failed reload's FILE:LINE:COL details
// joined with "; ".
func oneLine(err error) string {
	var ce *control.Error
	if errors.As(err, &ce) && len(ce.Details) > 0 {
		return ce.Message + ": " + strings.Join(ce.Details, "; ")
	}
	return strings.Join(strings.Fields(err.Error()), " ")
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
		case "esc", "ctrl+c":
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
func (m *Model) exit() tea.Cmd {
	m.quit = true
	return tea.Quit
}

// scale asks for one worker more or fewer in the selected service.
func (m *Model) scale(by int) tea.Cmd {
	s := m.selectedService()
	if s == nil {
		m.say(true, "scale: select a service first")
		return nil
	}
	n, ok := m.targets[s.Name]
	if !ok {
		n = s.Desired
	}
	n += by
	if n < 0 || n > config.MaxWorkers {
		m.say(true, fmt.Sprintf("scale %s: %d workers is outside 0 to %d", s.Name, n, config.MaxWorkers))
		return nil
	}
	m.targets[s.Name] = n
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
