package top

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/gotyledon/gotyledon/supervisor/control"
)

// styles are the view's colours and weights. Without colour (NO_COLOR, a
// terminal without it) the markers and words say the same: "!" marks
// trouble, ">" the selected row.
type styles struct {
	title, header, faint, good, warn, bad, selected lipgloss.Style
}

func newStyles() styles {
	s := lipgloss.NewStyle()
	return styles{
		title:    s.Bold(true),
		header:   s.Bold(true),
		faint:    s.Faint(true),
		good:     s.Foreground(lipgloss.Green),
		warn:     s.Foreground(lipgloss.Yellow),
		bad:      s.Foreground(lipgloss.Red).Bold(true),
		selected: s.Reverse(true),
	}
}

// Worker and queue columns, in the order they drop as the screen
// narrows (the README's "gotyledon top" section states it): LAST EXIT
// is cut down to 10 cells, then goes first.
var (
	workerColumns = []column{
		{header: "WORKER"},
		{header: "STATE"},
		{header: "READY", drop: 4},
		{header: "PID", right: true, drop: 7},
		{header: "UPTIME", right: true, drop: 3},
		{header: "CPU%", right: true, drop: 6},
		{header: "MEM", right: true, drop: 5},
		{header: "RESTARTS", right: true, drop: 2},
		{header: "LAST EXIT", drop: 1, shrink: 10},
	}
	queueColumns = []column{
		{header: "QUEUE", shrink: 8, cutLast: true},
		{header: "DEPTH", right: true},
		{header: "IN FLIGHT", right: true, drop: 6},
		{header: "CONSUMERS", right: true, drop: 2},
		{header: "PUT/S", right: true, drop: 5},
		{header: "LAST MIN", drop: 3},
		{header: "ACKED/S", right: true, drop: 7},
		{header: "LAST MIN", drop: 4},
		{header: "REDELIVERED", right: true, drop: 1},
	}
)

// sparkWidth is the cells of a queue's sparkline: the last minute's 30
// rates, about four to a cell.
const sparkWidth = 8

// flapping: the worker is in backoff, or has exited quickly twice or more
// in a row.
func flapping(w control.WorkerStatus) bool { return w.State == "backoff" || w.Failures >= 2 }

// failedOnce: a one-shot worker whose run failed (completed, not with
// exit code 0).
func failedOnce(w control.WorkerStatus) bool {
	return w.State == "completed" && w.LastExit != "exit code 0"
}

// troubled: what the view marks with "!".
func troubled(w control.WorkerStatus) bool { return flapping(w) || failedOnce(w) }

// View is the screen, in the terminal's alternate screen.
func (m *Model) View() tea.View {
	v := tea.NewView(m.Frame())
	v.AltScreen = true
	return v
}

// Frame draws the screen at the Model's size: at most height lines of at
// most width cells (height 0: every row, no selection and no status line,
// as Once prints).
func (m *Model) Frame() string {
	st := newStyles()
	var lines []string
	lines = append(lines, m.managerLine(st))
	lines = append(lines, m.reloadLines(st)...)
	lines = append(lines, "")
	if m.mode == helping {
		lines = append(lines, helpLines(m.opt.Interval)...)
		return m.fit(lines, nil)
	}
	if m.doc == nil {
		return m.fit(lines, m.bottomLines(st))
	}
	svcHeader, svcRows, selectedAt, trouble := m.serviceLines(st)
	queueLines, queueTrouble := m.queueLines(st)
	bottom := m.bottomLines(st)
	if m.height > 0 {
		// The queues show as long as the services keep three rows, and
		// one queue at least while the screen has room for it; the
		// services get the rest. Queues cut off are counted, and those of
		// them in trouble.
		fixed := len(lines) + 1 + len(bottom)
		room := m.height - fixed
		if keep := min(max(4, room-min(len(svcRows), 3)), room-1); len(queueLines) > keep {
			shown := max(0, keep-3) // the blank line, the header, the count
			hidden, bad := len(queueTrouble)-shown, 0
			for _, t := range queueTrouble[shown:] {
				if t {
					bad++
				}
			}
			count := fmt.Sprintf("  … %d more queues", hidden)
			if shown == 0 {
				count = fmt.Sprintf("  %s not shown", countOf(hidden, "queue"))
			}
			note := st.faint.Render(count + " (/ filters)")
			if bad > 0 {
				note = st.bad.Render(fmt.Sprintf("%s, ! %d in trouble (/ filters)", count, bad))
			}
			switch {
			case shown > 0:
				queueLines = append(queueLines[:2+shown], note)
			case keep >= 1:
				queueLines = []string{note}
			default:
				queueLines = nil
			}
		}
		svcRoom := max(1, room-len(queueLines))
		m.scrollTo(selectedAt, svcRoom, len(svcRows))
		end := min(len(svcRows), m.top+svcRoom)
		if m.top > 0 || end < len(svcRows) {
			note := st.faint.Render(fmt.Sprintf("  rows %d-%d of %d (↑↓ PgUp PgDn Home End)", m.top+1, end, len(svcRows)))
			// Trouble stands out even where its row is scrolled away.
			var away []string
			for _, i := range slices.Sorted(maps.Keys(trouble)) {
				if i < m.top || i >= end {
					away = append(away, trouble[i])
				}
			}
			if len(away) > 0 {
				note += st.bad.Render(" ! also: " + strings.Join(away, ", "))
			}
			lines[len(lines)-1] = note
		}
		svcRows = svcRows[m.top:end]
	}
	lines = append(lines, svcHeader)
	lines = append(lines, svcRows...)
	lines = append(lines, queueLines...)
	return m.fit(lines, bottom)
}

// fit cuts lines to the screen, pads them to its height and puts bottom
// at its foot.
func (m *Model) fit(lines, bottom []string) string {
	if m.height > 0 {
		room := max(0, m.height-len(bottom))
		if len(lines) > room {
			lines = lines[:room]
		}
		for len(lines) < room {
			lines = append(lines, "")
		}
		lines = append(lines, bottom...)
		if len(lines) > m.height {
			lines = lines[len(lines)-m.height:]
		}
	}
	for i, l := range lines {
		if ansi.StringWidth(l) > m.width {
			lines[i] = ansi.Truncate(l, m.width, "…")
		}
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return strings.Join(lines, "\n")
}

// pageRows is about how many services rows a screen shows, for PgUp and
// PgDn.
func (m *Model) pageRows() int { return max(1, m.height-10) }

// scrollTo moves the services table's window of room rows so that the
// row at selected shows.
func (m *Model) scrollTo(selected, room, total int) {
	if selected < m.top {
		m.top = selected
	}
	if selected >= m.top+room {
		m.top = selected - room + 1
	}
	m.top = max(0, min(m.top, total-room))
}

// managerLine is the first line: the manager, or why it does not answer.
func (m *Model) managerLine(st styles) string {
	now := m.opt.Now()
	if m.lost != nil {
		line := st.bad.Render("! no answer from the manager") + fmt.Sprintf(", asking again every %s", m.opt.Interval)
		if m.doc != nil {
			line += fmt.Sprintf(" (its last answer: %s ago)", compactDuration(now.Sub(m.docAt)))
		}
		return line
	}
	if m.doc == nil {
		return st.faint.Render("asking the manager on " + m.mgr.Path() + " ...")
	}
	d := m.doc
	var state string
	switch {
	case d.Stopping:
		state = st.warn.Render("stopping")
	case d.Rolling == "reload":
		state = st.warn.Render("reloading (rolling)")
	case d.Rolling == "restart":
		state = st.warn.Render("restarting (rolling)")
	case d.Ready:
		state = st.good.Render("ready")
	default:
		state = st.warn.Render("starting")
	}
	from := d.Config
	if from == "" {
		from = "declared by the program"
	}
	return st.title.Render(fmt.Sprintf("manager pid %d", d.PID)) + " · " + state +
		" · up " + compactDuration(seconds(d.UptimeSeconds)) + " · " + from
}

// reloadLines are the lines below the manager's: its last reload and
// the result, or why the manager does not answer (up to three lines).
func (m *Model) reloadLines(st styles) []string {
	if m.lost != nil {
		return wrapped(st.bad, oneLine(m.lost), m.width, 3)
	}
	return []string{m.reloadLine(st)}
}

// wrapped cuts text into lines of width cells at its spaces (a word
// wider than that is cut where the screen ends and goes on on the next
// line), at most n (the last ending in "…" if more is cut), each styled.
func wrapped(style lipgloss.Style, text string, width, n int) []string {
	width = max(10, width) // 2 at least: a wide character must fit
	text = ansi.Strip(text)
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		for ansi.StringWidth(word) > width {
			if line != "" {
				lines, line = append(lines, line), ""
			}
			head := ansi.Truncate(word, width, "")
			lines, word = append(lines, head), word[len(head):]
		}
		switch {
		case word == "":
		case line == "":
			line = word
		case ansi.StringWidth(line)+1+ansi.StringWidth(word) <= width:
			line += " " + word
		default:
			lines, line = append(lines, line), word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	if len(lines) > n {
		lines = lines[:n]
		lines[n-1] = ansi.Truncate(lines[n-1], width-1, "") + "…"
	}
	for i, l := range lines {
		lines[i] = style.Render(l)
	}
	return lines
}

// reloadLine is the last reload and its result.
func (m *Model) reloadLine(st styles) string {
	if m.doc == nil {
		return ""
	}
	r := m.doc.LastReload
	if r == nil {
		return "last reload: none"
	}
	source := r.Source
	if source == "" {
		source = "program"
	}
	ago := compactDuration(m.opt.Now().Sub(r.At))
	counts := fmt.Sprintf(" · %d ok, %d failed", m.doc.Reloads.OK, m.doc.Reloads.Failed)
	switch {
	case r.OK:
		return fmt.Sprintf("last reload: ok, %s ago (%s)", ago, source) + counts
	case r.Halted:
		return st.bad.Render(fmt.Sprintf("! last reload HALTED %s ago (%s), back on the previous definition: ", ago, source)) +
			strings.ReplaceAll(r.Error, "\n", "; ") + counts
	}
	return st.bad.Render(fmt.Sprintf("! last reload FAILED %s ago (%s), nothing changed: ", ago, source)) +
		strings.ReplaceAll(r.Error, "\n", "; ") + counts
}

// serviceLines draws the services table: its header, its rows (each
// service's, then its workers'), the index of the selected row, and the
// names of the services in trouble by the index of their rows.
func (m *Model) serviceLines(st styles) (header string, rows []string, selectedAt int, trouble map[int]string) {
	trouble = map[int]string{}
	now := m.opt.Now()
	type workerRow struct {
		key     rowKey
		cells   []string
		trouble bool
		state   lipgloss.Style
	}
	var cells [][]string
	var workers []workerRow
	for _, s := range m.doc.Services {
		if !m.shown(s.Name) || m.collapsed[s.Name] {
			continue
		}
		for _, w := range s.Workers {
			state, style := w.State, st.good
			switch {
			case w.State == "backoff":
				style = st.bad
				if w.RetryAt != nil {
					state = "backoff " + compactDuration(w.RetryAt.Sub(now))
				}
			case failedOnce(w):
				style = st.bad
			case w.State == "stopping", w.State == "completed":
				style = st.faint
			case w.State != "running" || !w.Ready:
				style = st.warn
			}
			if w.Outdated {
				state += " (old)"
			}
			ready, pid, uptime, cpu, mem, exit := "no", "-", "-", "-", "-", "-"
			if w.Ready {
				ready = "yes"
			}
			if w.PID != 0 {
				pid = strconv.Itoa(w.PID)
			}
			if w.StartedAt != nil {
				uptime = compactDuration(seconds(w.UptimeSeconds))
			}
			if w.PID != 0 && w.StartedAt != nil {
				if p, ok := m.cpuPct[processKey{w.PID, w.StartedAt.UnixNano()}]; ok {
					cpu = fmt.Sprintf("%.1f", p)
				}
			}
			if w.MemoryBytes != nil {
				mem = compactBytes(*w.MemoryBytes)
			}
			if w.LastExit != "" {
				exit = shortExit(w.LastExit)
				if w.LastExitAt != nil {
					exit += ", " + compactDuration(now.Sub(*w.LastExitAt)) + " ago"
				}
			}
			c := []string{"  #" + strconv.Itoa(w.ID), state, ready, pid, uptime, cpu, mem, strconv.Itoa(w.Restarts), exit}
			cells = append(cells, c)
			workers = append(workers, workerRow{key: rowKey{s.Name, w.ID}, cells: c, trouble: troubled(w), state: style})
		}
	}
	widths, gap := layout(workerColumns, cells, m.width-2)
	hdr := make([]string, len(workerColumns))
	for i, c := range workerColumns {
		hdr[i] = c.header
	}
	header = "  " + st.header.Render(strings.TrimRight(renderRow(workerColumns, hdr, widths, gap, nil), " "))

	selectedAt = 0
	wi := 0
	for _, s := range m.doc.Services {
		if !m.shown(s.Name) {
			continue
		}
		key := rowKey{s.Name, -1}
		bad := slices.ContainsFunc(s.Workers, troubled)
		if bad {
			trouble[len(rows)] = s.Name
		}
		line := m.serviceSummary(st, s)
		rows = append(rows, m.decorate(st, key, bad, line, &selectedAt, len(rows)))
		if m.collapsed[s.Name] {
			continue
		}
		for range s.Workers {
			w := workers[wi]
			wi++
			style := w.state
			line := renderRow(workerColumns, w.cells, widths, gap, func(col int, text string) string {
				if col == 1 {
					return style.Render(text)
				}
				return text
			})
			rows = append(rows, m.decorate(st, w.key, w.trouble, line, &selectedAt, len(rows)))
		}
	}
	if len(rows) == 0 && m.filter != "" {
		rows = append(rows, st.faint.Render(fmt.Sprintf("  no service matches %q (esc clears the filter)", m.filter)))
	}
	return header, rows, selectedAt, trouble
}

// decorate puts the selection and trouble markers before a row, and
// notes where the selected row is.
func (m *Model) decorate(st styles, key rowKey, trouble bool, line string, selectedAt *int, index int) string {
	mark := " "
	if trouble {
		mark = st.bad.Render("!")
	}
	if key == m.selected && m.height > 0 {
		*selectedAt = index
		return st.selected.Render(">"+ansi.Strip(mark)+ansi.Strip(line)) + ""
	}
	return " " + mark + line
}

// serviceSummary is a service's own row: its name and counts, what is
// wrong with it, and its tasks.
func (m *Model) serviceSummary(st styles, s control.ServiceStatus) string {
	parts := []string{}
	count := fmt.Sprintf("%d/%d running", s.Running, s.Desired)
	if t, ok := m.targets[s.Name]; ok && t.workers != s.Desired {
		count = fmt.Sprintf("%d/%d running, scaling to %d", s.Running, s.Desired, t.workers)
	}
	parts = append(parts, count, fmt.Sprintf("%d ready", s.Ready))
	if s.Configured != s.Desired {
		parts = append(parts, fmt.Sprintf("file: %d", s.Configured))
	}
	parts = append(parts, countOf(int(s.Restarts), "restart"))
	if s.Backoff > 0 {
		parts = append(parts, st.bad.Render(fmt.Sprintf("%d in backoff", s.Backoff)))
	}
	if s.Completed > 0 {
		done := fmt.Sprintf("%d completed", s.Completed)
		if failed := countFunc(s.Workers, failedOnce); failed > 0 {
			parts = append(parts, st.bad.Render(fmt.Sprintf("%s, %d failed", done, failed)))
		} else {
			parts = append(parts, done)
		}
	}
	for _, wt := range s.WaitingFor {
		note := fmt.Sprintf("waiting for %s %s", wt.Service, wt.Condition)
		if wt.Failed {
			note = st.bad.Render(note + " (it failed)")
		}
		parts = append(parts, note)
	}
	if slices.ContainsFunc(s.Workers, func(w control.WorkerStatus) bool { return w.Failures >= 2 }) {
		parts = append(parts, st.bad.Render("FLAPPING"))
	}
	if t := s.Tasks; t != nil {
		parts = append(parts, fmt.Sprintf("tasks: %d running, %d done, %d failed", t.Running, t.Done, t.Failed))
	}
	name := st.title.Render(s.Name)
	if m.collapsed[s.Name] {
		name += st.faint.Render(" (" + countOf(len(s.Workers), "worker") + " folded)")
	}
	return name + "  " + strings.Join(parts, " · ")
}

// queueLines draws the queues table: a blank line, its header and a row
// per queue (none without queues), and which rows are in trouble.
func (m *Model) queueLines(st styles) ([]string, []bool) {
	var cells [][]string
	var trouble []bool
	for _, q := range m.doc.Queues {
		if !m.shown(q.Name) {
			continue
		}
		depth, inFlight := strconv.Itoa(q.Depth), strconv.Itoa(q.InFlight)
		redelivered := strconv.FormatUint(q.RedeliveredTotal, 10)
		bad := false
		if q.Store != "" {
			redelivered = strconv.Itoa(q.StoreRedelivered)
			if q.StoreState != "connected" {
				depth, inFlight, bad = q.Store+" "+q.StoreState, "-", true
			}
		}
		cells = append(cells, []string{q.Name, depth, inFlight, strconv.Itoa(q.Consumers),
			rate(q.PutPerSecond), sparkline(q.PutHistory, sparkWidth),
			rate(q.AckedPerSecond), sparkline(q.AckedHistory, sparkWidth), redelivered})
		trouble = append(trouble, bad)
	}
	if len(cells) == 0 {
		return nil, nil
	}
	widths, gap := layout(queueColumns, cells, m.width-2)
	hdr := make([]string, len(queueColumns))
	for i, c := range queueColumns {
		hdr[i] = c.header
	}
	lines := []string{"", "  " + st.header.Render(strings.TrimRight(renderRow(queueColumns, hdr, widths, gap, nil), " "))}
	for i, c := range cells {
		mark := "  "
		if trouble[i] {
			mark = " " + st.bad.Render("!")
		}
		lines = append(lines, mark+renderRow(queueColumns, c, widths, gap, nil))
	}
	return lines, trouble
}

// bottomLines are the status line and the keys (or the filter being
// typed); none in a frame without a height.
func (m *Model) bottomLines(st styles) []string {
	if m.height == 0 {
		return nil
	}
	// An action's message wraps to three lines at most: a refused
	// reload's FILE:LINE:COL must be readable.
	var status []string
	switch {
	case m.running != nil:
		status = []string{st.faint.Render(m.running.String() + " ...")}
	case m.message != "":
		text, style := m.message, st.good
		if m.messageError {
			text, style = "! "+text, st.bad
		}
		// A refused reload's FILE:LINE:COL lines each start a line, cut
		// where the screen ends and continued on the next.
		for _, l := range strings.Split(text, "\n") {
			status = append(status, wrapped(style, l, m.width, 4)...)
		}
		// Four lines at most, fewer on a short screen.
		switch limit := min(4, max(1, m.height/4)); {
		case len(status) <= limit:
		case limit == 1:
			status = status[:1]
		default:
			more := len(status) - (limit - 1)
			status = append(status[:limit-1], style.Render(fmt.Sprintf("… and %d more lines (the command prints them all)", more)))
		}
	default:
		status = []string{""}
	}
	keys := st.faint.Render("↑↓ select  enter fold  +/- scale  r restart  R reload  / filter  ? help  q quit")
	switch {
	case m.mode == filtering:
		keys = "filter: " + m.filterInput + "█" + st.faint.Render("  (enter applies, esc clears)")
	case m.filter != "":
		keys = fmt.Sprintf("filter %q (esc clears)  ", m.filter) + keys
	}
	return append(status, keys)
}

// countFunc counts the elements of xs for which f is true.
func countFunc[T any](xs []T, f func(T) bool) int {
	n := 0
	for _, x := range xs {
		if f(x) {
			n++
		}
	}
	return n
}

// countOf says n things: "1 worker", "3 workers".
func countOf(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return strconv.Itoa(n) + " " + thing + "s"
}

// helpLines is the help screen.
func helpLines(interval time.Duration) []string {
	return []string{
		"Keys",
		"  ↑ ↓  k j      select a service or one of its workers (PgUp PgDn Home End)",
		"  enter         fold or unfold the selected service's workers",
		"  + -           one worker more or fewer in the selected service, as",
		"                gotyledon scale (the file's count is back at its next reload)",
		"  r             restart the selected worker, or every worker of the selected",
		"                service one at a time, as gotyledon restart",
		"  R             reload the configuration file, as gotyledon reload: a file",
		"                with errors is refused and changes nothing",
		"  /             show only services and queues whose name holds a text",
		"                (enter applies it, esc clears it)",
		"  ?             this screen",
		"  q  ctrl+c     quit",
		"",
		"Marks: > the selected row; ! a worker in backoff or flapping (two quick",
		"exits or more in a row), a one-shot worker whose run failed, a failed",
		"reload, a queue store that does not answer. CPU% is over the last",
		"refresh (every " + interval.String() + ").",
		"",
		"Press any key to go back (q quits).",
	}
}
