package main

// The driver's view of the manager: its log (JSON lines on stderr, parsed
// as they come), its control socket (status, scale, reload, metrics) and
// its processes (/proc).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gotyledon/gotyledon/supervisor/control"
)

// logEntry is what the driver reads of one manager log line.
type logEntry struct {
	Level   string `json:"level"`
	Msg     string `json:"msg"`
	Service string `json:"service"`
	PID     int    `json:"pid"`
	Stream  string `json:"stream"`
	Status  string `json:"status"`
}

// consumeRec is what happened to one item on the consumer side.
type consumeRec struct {
	first procID // the consumer process that printed it first
	count int32  // how many times it was printed
	// second is the process that printed it next, and firstAt and
	// secondAt when: a duplicate's story, for the report.
	second            procID
	firstAt, secondAt time.Time
}

// procID names one worker process: an index into logState.procs. A pid
// names several over a long run (pids are reused); the log tells them
// apart, since a process's "worker started" comes before its output and
// its exit after it.
type procID uint32

const noProc = ^procID(0)

type procInfo struct {
	pid     int
	service string // "" if its start was not seen
	exit    string // how it ended, from "worker exited" / "worker stopped"
	// killedAt: it was killed with the manager then (its end was not
	// logged); what it had in hand may come again after, not before.
	killedAt time.Time
}

func (p procInfo) bySignal() bool { return strings.HasPrefix(p.exit, "killed by") }

// origin is one producer process's item namespace (ORIGIN in ORIGIN-SEQ).
type origin struct {
	name      string
	proc      procID // the producer process, from its "producer ORIGIN" line
	announced uint32 // seqs 0..announced-1 were announced as produced
}

// logState is everything learnt from the manager's log. mu guards it.
type logState struct {
	mu sync.Mutex

	lines      int
	procs      []procInfo
	current    map[int]procID        // pid -> its newest process
	origins    []origin              // item namespaces, by index
	originIdx  map[string]uint32     // origin name -> index
	seqGaps    []string              // a producer announced seqs out of order
	consumed   map[uint64]consumeRec // origin index<<32 | seq
	consLines  int
	lastCons   time.Time
	maxGap     time.Duration // longest time between consumed lines while gapOn
	gapOn      bool
	badLines   []string          // item lines that did not parse
	warnings   map[string]int    // warn/error entries by message
	warnFirst  map[string]string // first such line, for the report
	counts     map[string]int    // selected manager events by message
	recent     []string          // last non-item lines, for failure reports
	eof        bool
	logFile    io.Writer // non-item lines go here (manager.log)
	logFileErr error
}

func newLogState(w io.Writer) *logState {
	return &logState{
		current:   map[int]procID{},
		originIdx: map[string]uint32{},
		consumed:  map[uint64]consumeRec{},
		warnings:  map[string]int{},
		warnFirst: map[string]string{},
		counts:    map[string]int{},
		logFile:   w,
	}
}

// msgReloadFailed is what the manager logs when a reload changes nothing.
const msgReloadFailed = "reload failed: the running services are unchanged"

// read parses the manager's log from r until end of file.
func (s *logState) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		s.line(sc.Bytes())
	}
	s.mu.Lock()
	s.eof = true
	s.mu.Unlock()
}

func (s *logState) line(b []byte) {
	var e logEntry
	err := json.Unmarshal(b, &e)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines++
	if err != nil {
		s.note(string(b))
		s.warnings["(not JSON) "+truncate(string(b), 80)]++
		return
	}
	if e.Stream == "stdout" {
		if rest, ok := strings.CutPrefix(e.Msg, "consumed "); ok {
			s.consumedLine(rest, e.PID, now)
			return
		}
		if rest, ok := strings.CutPrefix(e.Msg, "produced "); ok {
			s.producedLine(rest, e.PID)
			return
		}
		if rest, ok := strings.CutPrefix(e.Msg, "producer "); ok {
			o := s.origin(rest)
			if s.origins[o].proc == noProc {
				s.origins[o].proc = s.proc(e.PID)
			}
			return
		}
	}
	s.note(string(b))
	switch e.Msg {
	case "worker started":
		s.current[e.PID] = procID(len(s.procs))
		s.procs = append(s.procs, procInfo{pid: e.PID, service: e.Service})
	case "worker exited", "worker stopped":
		if e.PID != 0 {
			s.procs[s.proc(e.PID)].exit = e.Status
		}
	}
	switch e.Msg {
	case msgReloadFailed, "configuration applied", "worker started", "worker exited", "worker stopped",
		"worker did not stop in time; killing it", "worker is failing soon after start; restart delayed",
		"manager stopped: every worker has exited", "initial start done":
		s.counts[e.Msg]++
	}
	if e.Level == "warn" || e.Level == "error" || e.Level == "dpanic" || e.Level == "panic" || e.Level == "fatal" {
		k := e.Level + ": " + e.Msg
		if e.Stream != "" {
			k = e.Level + ": " + e.Service + " " + e.Stream + ": " + truncate(e.Msg, 100)
		}
		s.warnings[k]++
		if _, ok := s.warnFirst[k]; !ok {
			s.warnFirst[k] = truncate(string(b), 400)
		}
	}
}

// killedWithManager records every process whose end the log did not tell
// as killed at killedAt with the manager, once the dead manager's log has
// ended. It returns how many.
func (s *logState) killedWithManager(killedAt time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for i := range s.procs {
		if s.procs[i].exit == "" {
			s.procs[i].exit = "killed by SIGKILL with the manager"
			s.procs[i].killedAt = killedAt
			n++
		}
	}
	s.eof = false
	return n
}

// note keeps a non-item line: in the log file and the recent ring.
func (s *logState) note(l string) {
	if s.logFile != nil && s.logFileErr == nil {
		_, s.logFileErr = io.WriteString(s.logFile, l+"\n")
	}
	if len(s.recent) >= 200 {
		s.recent = slices.Delete(s.recent, 0, 100)
	}
	s.recent = append(s.recent, truncate(l, 300))
}

// proc returns pid's newest process, made up if its start was not seen.
func (s *logState) proc(pid int) procID {
	if p, ok := s.current[pid]; ok {
		return p
	}
	s.current[pid] = procID(len(s.procs))
	s.procs = append(s.procs, procInfo{pid: pid})
	return s.current[pid]
}

// origin returns the index of the origin called name, new if need be.
func (s *logState) origin(name string) uint32 {
	if i, ok := s.originIdx[name]; ok {
		return i
	}
	i := uint32(len(s.origins))
	s.originIdx[name] = i
	s.origins = append(s.origins, origin{name: name, proc: noProc})
	return i
}

func (s *logState) consumedLine(id string, pid int, now time.Time) {
	k, ok := s.parseID(id)
	if !ok {
		s.badLines = append(s.badLines, "consumed "+truncate(id, 60))
		return
	}
	s.consLines++
	r := s.consumed[k]
	switch r.count {
	case 0:
		r.first, r.firstAt = s.proc(pid), now
	case 1:
		r.second, r.secondAt = s.proc(pid), now
	}
	r.count++
	s.consumed[k] = r
	if s.gapOn && !s.lastCons.IsZero() {
		s.maxGap = max(s.maxGap, now.Sub(s.lastCons))
	}
	s.lastCons = now
}

func (s *logState) producedLine(id string, pid int) {
	k, ok := s.parseID(id)
	if !ok {
		s.badLines = append(s.badLines, fmt.Sprintf("produced %s (by pid %d)", truncate(id, 60), pid))
		return
	}
	o := &s.origins[k>>32]
	if o.proc == noProc || o.proc != s.proc(pid) {
		s.badLines = append(s.badLines, fmt.Sprintf("produced %s (by pid %d, not the process that announced the origin)", truncate(id, 60), pid))
		return
	}
	if seq := uint32(k); seq != o.announced {
		s.seqGaps = append(s.seqGaps, fmt.Sprintf("%s announced seq %d after %d items", o.name, seq, o.announced))
	} else {
		o.announced = seq + 1
	}
}

// parseID turns "ORIGIN-SEQ" (ORIGIN = PID.NONCE) into the origin's index
// <<32 | SEQ.
func (s *logState) parseID(id string) (uint64, bool) {
	name, q, ok := strings.Cut(id, "-")
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(name, ".")
	_, err1 := strconv.ParseUint(p, 10, 32)
	seq, err2 := strconv.ParseUint(q, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, false
	}
	return uint64(s.origin(name))<<32 | seq, true
}

func (s *logState) formatID(k uint64) string {
	return fmt.Sprintf("%s-%d", s.origins[k>>32].name, uint32(k))
}

// view runs f with the state locked.
func (s *logState) view(f func(s *logState)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *logState) count(msg string) (n int) {
	s.view(func(s *logState) { n = s.counts[msg] })
	return n
}

func (s *logState) recentLines(n int) []string {
	var out []string
	s.view(func(s *logState) { out = slices.Clone(s.recent[max(0, len(s.recent)-n):]) })
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// waitUntil checks cond every 10 ms until it holds (nil), the timeout
// passes or ctx ends. It is how the driver synchronises on the manager's
// log and status: an event with a deadline, never a bare sleep.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// --- control socket ---

// status is the manager's status document, with what the driver asks of it.
type status struct{ control.Status }

// quiet reports whether every service runs exactly its desired workers,
// none starting, stopping, in backoff or waiting to be replaced; if not,
// it says why.
func (st *status) quiet() (bool, string) {
	for _, s := range st.Services {
		if s.Running != s.Desired || s.Backoff != 0 || len(s.Workers) != s.Desired {
			return false, fmt.Sprintf("%s: running %d, desired %d, backoff %d, %d slots", s.Name, s.Running, s.Desired, s.Backoff, len(s.Workers))
		}
		for _, w := range s.Workers {
			if w.State != "running" || w.PID == 0 || w.Outdated {
				return false, fmt.Sprintf("%s worker %d: %s (pid %d, outdated %v)", s.Name, w.ID, w.State, w.PID, w.Outdated)
			}
		}
	}
	return true, ""
}

// pids lists the running workers' pids, by service.
func (st *status) pids() map[string][]int {
	out := map[string][]int{}
	for _, s := range st.Services {
		for _, w := range s.Workers {
			if w.PID != 0 {
				out[s.Name] = append(out[s.Name], w.PID)
			}
		}
		slices.Sort(out[s.Name])
	}
	return out
}

func (st *status) service(name string) (desired, configured, running, backoff int) {
	for _, s := range st.Services {
		if s.Name == name {
			return s.Desired, s.Configured, s.Running, s.Backoff
		}
	}
	return -1, -1, -1, -1
}

func (st *status) queue(name string) (depth, inFlight int) {
	for _, q := range st.Queues {
		if q.Name == name {
			return q.Depth, q.InFlight
		}
	}
	return -1, -1
}

// controlSocket is the manager's control socket, as the driver uses it:
// every request bounded by 10 s. The client keeps no idle connection, so
// the driver's own connections do not count in the manager's fds and
// goroutines.
type controlSocket struct{ c *control.Client }

func newControl(socket string) *controlSocket { return &controlSocket{c: control.NewClient(socket)} }

func (c *controlSocket) status(ctx context.Context) (*status, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.c.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st.Schema != control.Schema {
		return nil, fmt.Errorf("status: schema %d, want %d", st.Schema, control.Schema)
	}
	return &status{st}, nil
}

func (c *controlSocket) scale(ctx context.Context, service string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.c.Scale(ctx, service, n); err != nil {
		return fmt.Errorf("scale: %w", truncateErr(err))
	}
	return nil
}

// reload asks for a reload and returns the HTTP code: 200 applied, 422
// refused, with the manager's explanation.
func (c *controlSocket) reload(ctx context.Context) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := c.c.Reload(ctx)
	var refused *control.Error
	switch {
	case err == nil:
		return http.StatusOK, "", nil
	case errors.As(err, &refused):
		return refused.Code, refused.Error(), nil
	}
	return 0, "", fmt.Errorf("reload: %w", err)
}

func truncateErr(err error) error {
	var e *control.Error
	if errors.As(err, &e) {
		return fmt.Errorf("HTTP %d: %s", e.Code, truncate(e.Error(), 200))
	}
	return err
}

// metrics reads the samples without labels of GET /metrics.
func (c *controlSocket) metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := c.c.Metrics(ctx)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", truncateErr(err))
	}
	out := map[string]float64{}
	for l := range strings.Lines(string(b)) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || strings.ContainsRune(l, '{') {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out, nil
}

// --- /proc ---

type procStat struct {
	pid, ppid int
	state     byte
	start     uint64 // starttime, in clock ticks since boot
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return procStat{}, errors.New("malformed stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return procStat{pid: pid, ppid: ppid, state: f[0][0], start: start}, nil
}

// allPIDs lists the processes in /proc.
func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// hasEnv reports whether pid's initial environment holds every one of kv
// ("K=V" or a "K=" prefix).
func hasEnv(pid int, kv ...string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	vars := bytes.Split(b, []byte{0})
	for _, want := range kv {
		found := false
		for _, v := range vars {
			if strings.HasSuffix(want, "=") && bytes.HasPrefix(v, []byte(want)) || string(v) == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// descendsFrom reports whether pid's ancestry reaches root.
func descendsFrom(pid, root int) bool {
	for range 64 {
		st, err := readStat(pid)
		if err != nil {
			return false
		}
		if st.ppid == root {
			return true
		}
		if st.ppid <= 1 {
			return false
		}
		pid = st.ppid
	}
	return false
}
