package control

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// Schema is the version of Status. It changes only when a field changes
// meaning or goes away; fields may be added within a version.
const Schema = 1

// Status is the status document: the JSON of GET /v1/status and of
// `gotyledon status --json`, and what Client.Status returns. Times are
// RFC 3339 in UTC (but a schedule's next_at, in its own zone), null when there is none; durations are seconds. Every
// key is pinned by a test; the status section of supervisor/README.md
// documents each.
type Status struct {
	Schema        int        `json:"schema"`
	PID           int        `json:"pid"`
	Config        string     `json:"config"`
	StartedAt     *time.Time `json:"started_at"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	Ready         bool       `json:"ready"`
	Stopping      bool       `json:"stopping"`
	// Rolling is the rolling change under way, one worker at a time:
	// "reload" (a reload's), "restart" (gotyledon restart's), or "".
	Rolling    string          `json:"rolling"`
	Services   []ServiceStatus `json:"services"`
	Queues     []QueueStatus   `json:"queues"`
	LastReload *ReloadStatus   `json:"last_reload"`
	Reloads    ReloadCounts    `json:"reloads"`
}

// ServiceStatus is one service in a Status: in the configuration's order,
// then services a reload removed whose workers are still stopping.
type ServiceStatus struct {
	Name string `json:"name"`
	// Desired is what the manager keeps running now; Configured the
	// configuration's count (they differ after a scale, until the next
	// reload).
	Desired    int `json:"desired"`
	Configured int `json:"configured"`
	Running    int `json:"running"`
	Ready      int `json:"ready"` // running workers that are ready
	Backoff    int `json:"backoff"`
	// Completed counts workers whose process exited and that their
	// restart policy does not restart (one-shot tasks): state
	// "completed", last_exit and last_exit_at say how and when.
	Completed int `json:"completed"`
	// Waiting counts workers not started because the service waits for
	// its dependencies (state "waiting"); WaitingFor says which are not
	// met yet, and why ([] when none).
	Waiting    int              `json:"waiting"`
	WaitingFor []DependencyWait `json:"waiting_for"`
	// Restarts and Exits count since the manager started; Exits by
	// reason: stopped, clean, error, signal, start_failed.
	Restarts       uint64            `json:"restarts"`
	WatchdogAborts uint64            `json:"watchdog_aborts"`
	Exits          map[string]uint64 `json:"exits"`
	// Recycles counts workers recycled (drained, stopped, replaced) by
	// the limit they crossed: max_jobs, max_age, memory_max.
	Recycles map[string]uint64 `json:"recycles"`
	// Schedule is the service's schedule; null without one.
	Schedule *ServiceSchedule `json:"schedule"`
	Workers  []WorkerStatus   `json:"workers"`
	// Tasks are the task figures of the service's workers (submitted by
	// them, taken by them); absent while they have had none.
	Tasks *TaskStatus `json:"tasks,omitempty"`
}

// ServiceSchedule is a scheduled service's schedule and its runs.
type ServiceSchedule struct {
	Cron     string `json:"cron"`
	TimeZone string `json:"time_zone"` // an IANA name, or Local
	// NextRunAt is its next time, with its time zone's offset (not UTC);
	// null if none comes.
	NextRunAt *time.Time `json:"next_run_at"`
	// Runs counts the runs it started, Skipped the times it skipped (a
	// run still going, dependencies not met), since the manager started.
	Runs    uint64 `json:"runs"`
	Skipped uint64 `json:"skipped"`
}

// DependencyWait is a dependency a service waits for.
type DependencyWait struct {
	Service   string `json:"service"`
	Condition string `json:"condition"` // started, ready or completed
	// Reason says which of its workers do not meet the condition, and
	// what they do instead: "worker 0 failed (exit code 1)".
	Reason string `json:"reason"`
	// Failed: a worker of it failed and its restart policy does not run
	// it again: only a reload or gotyledon restart ends the wait.
	Failed bool `json:"failed"`
}

// TaskStatus counts tasks (request and reply) since the manager started:
// of a queue, or of a service's workers (see ipc.TaskStats).
type TaskStatus struct {
	Submitted   uint64 `json:"submitted"`
	Running     int    `json:"running"`
	Done        uint64 `json:"done"`
	Failed      uint64 `json:"failed"`
	Cancelled   uint64 `json:"cancelled"`
	Redelivered uint64 `json:"redelivered"`
	// Runtime is from hand-out to answer: count and sum of all, and the
	// percentiles of the latest 1024 (0 before the first).
	RuntimeCount      uint64  `json:"runtime_count"`
	RuntimeSumSeconds float64 `json:"runtime_sum_seconds"`
	RuntimeP50Seconds float64 `json:"runtime_p50_seconds"`
	RuntimeP90Seconds float64 `json:"runtime_p90_seconds"`
	RuntimeP99Seconds float64 `json:"runtime_p99_seconds"`
}

func newTaskStatus(t ipc.TaskStats) *TaskStatus {
	return &TaskStatus{
		Submitted: t.Submitted, Running: t.Running, Done: t.Done, Failed: t.Failed, Cancelled: t.Cancelled, Redelivered: t.Redelivered,
		RuntimeCount: t.Runtime.Count, RuntimeSumSeconds: t.Runtime.Sum.Seconds(),
		RuntimeP50Seconds: t.Runtime.P50.Seconds(), RuntimeP90Seconds: t.Runtime.P90.Seconds(), RuntimeP99Seconds: t.Runtime.P99.Seconds(),
	}
}

// AddServiceTasks fills in the services' task figures, by service name.
func (s *Status) AddServiceTasks(tasks map[string]ipc.TaskStats) {
	for i := range s.Services {
		if t, ok := tasks[s.Services[i].Name]; ok {
			s.Services[i].Tasks = newTaskStatus(t)
		}
	}
}

// WorkerStatus is one worker slot, by id.
type WorkerStatus struct {
	ID int `json:"id"`
	// State is starting, running, draining (being recycled: it gets no
	// new item), stopping, backoff, completed, waiting (for the
	// service's dependencies) or scheduled (not run yet: its schedule's
	// time has not come).
	State         string     `json:"state"`
	PID           int        `json:"pid"` // 0 without a process
	StartedAt     *time.Time `json:"started_at"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	Restarts      int        `json:"restarts"`
	Failures      int        `json:"failures"`  // quick exits in a row
	LastExit      string     `json:"last_exit"` // "exit code 1", "killed by SIGKILL", "failed to start: ..."
	LastExitAt    *time.Time `json:"last_exit_at"`
	RetryAt       *time.Time `json:"retry_at"`    // in backoff: when it starts again
	Outdated      bool       `json:"outdated"`    // waits to be replaced by a reload
	Ready         bool       `json:"ready"`       // has run min_uptime, or sent READY=1
	StatusText    string     `json:"status_text"` // the last STATUS= it sent
	// CPUSeconds and MemoryBytes are what the worker uses: with UsageOf
	// "cgroup", the process and everything it forked, from its own
	// cgroup; with "process" (workers without cgroups), the process
	// alone, from /proc (CPU time and resident set). Null, and UsageOf
	// "", without a process.
	CPUSeconds  *float64 `json:"cpu_seconds"`
	MemoryBytes *uint64  `json:"memory_bytes"`
	UsageOf     string   `json:"usage_of"`
}

// QueueStatus is one queue of the broker.
type QueueStatus struct {
	Name             string  `json:"name"`
	Capacity         int     `json:"capacity"`
	Depth            int     `json:"depth"`
	InFlight         int     `json:"in_flight"`
	Consumers        int     `json:"consumers"` // CONSUMEs, and GETs waiting for an item
	PutTotal         uint64  `json:"put_total"`
	DeliveredTotal   uint64  `json:"delivered_total"`
	AckedTotal       uint64  `json:"acked_total"`
	RedeliveredTotal uint64  `json:"redelivered_total"`
	PutPerSecond     float64 `json:"put_per_second"`
	AckedPerSecond   float64 `json:"acked_per_second"`
	// PutHistory and AckedHistory are the rates of the last minute, one
	// per 2 s interval, oldest first ([] until the second sample).
	PutHistory   []float64 `json:"put_per_second_history"`
	AckedHistory []float64 `json:"acked_per_second_history"`
	// Store is where a queue not kept in the manager's memory keeps its
	// items ("jetstream"; "" for memory), StoreState how that store is
	// ("connected", or why its figures are missing), and
	// StoreRedelivered its count of items in flight delivered more than
	// once. The figures of such a queue are the store's, of the queue as a
	// whole (every manager sharing it counts).
	Store            string `json:"store,omitempty"`
	StoreState       string `json:"store_state,omitempty"`
	StoreRedelivered int    `json:"store_redelivered,omitempty"`
	// Tasks are the queue's task figures; absent until its first task, and
	// for a queue kept in a store (which carries no tasks).
	Tasks *TaskStatus `json:"tasks,omitempty"`
	// Schedule is what the queue's schedules (queues.NAME.schedule) put;
	// absent for a queue that has had none.
	Schedule *QueueScheduleStatus `json:"schedule,omitempty"`
}

// QueueScheduleStatus counts a queue's scheduled puts since the manager
// started, and lists its schedules now.
type QueueScheduleStatus struct {
	PutTotal uint64 `json:"put_total"`
	// FailedTotal counts the times an item was not put: the queue stayed
	// full past the put's wait, or the put failed.
	FailedTotal uint64           `json:"failed_total"`
	Schedules   []ScheduleStatus `json:"schedules"`
}

// ScheduleStatus is one schedule of a queue.
type ScheduleStatus struct {
	Cron     string `json:"cron"`
	TimeZone string `json:"time_zone"` // an IANA name, or "Local"
	// NextAt is the next time, RFC 3339 with the schedule's own offset
	// (not UTC: "2026-12-07T03:00:00+01:00"); null if none.
	NextAt *time.Time `json:"next_at"`
}

func newQueueScheduleStatus(s *ipc.ScheduledStats) *QueueScheduleStatus {
	if s == nil {
		return nil
	}
	out := &QueueScheduleStatus{PutTotal: s.Put, FailedTotal: s.Failed, Schedules: []ScheduleStatus{}}
	for _, n := range s.Next {
		st := ScheduleStatus{Cron: n.Cron, TimeZone: n.TimeZone}
		if !n.At.IsZero() {
			at := n.At
			st.NextAt = &at
		}
		out.Schedules = append(out.Schedules, st)
	}
	return out
}

// ReloadStatus is the newest reload's result.
type ReloadStatus struct {
	At time.Time `json:"at"`
	// Source is SIGHUP, file, control, or "" for the program itself.
	Source string `json:"source"`
	OK     bool   `json:"ok"`
	// Error holds every FILE:LINE:COL line of a failure, or why a rolling
	// change halted.
	Error string `json:"error"`
	// Halted: the reload was applied and its rolling change halted; the
	// service is back on its previous definition.
	Halted bool `json:"halted"`
}

// ReloadCounts count reloads since the manager started.
type ReloadCounts struct {
	OK     uint64 `json:"ok"`
	Failed uint64 `json:"failed"`
}

// QueueRate is a queue's recent put and ack rates, items per second, and
// the rates between each two samples of the last minute, oldest first.
type QueueRate struct {
	Put, Acked               float64
	PutHistory, AckedHistory []float64
}

// NewStatus builds the status document of the manager process pid from a
// supervisor snapshot, the broker's queue figures (nil without a broker)
// and their recent rates, as seen at now.
func NewStatus(st supervisor.Status, queues []ipc.QueueStats, rates map[string]QueueRate, pid int, now time.Time) Status {
	doc := Status{
		Schema:   Schema,
		PID:      pid,
		Config:   st.Config,
		Ready:    st.Ready,
		Stopping: st.Stopping,
		Rolling:  st.Rolling.String(),
		Services: []ServiceStatus{},
		Queues:   []QueueStatus{},
		Reloads:  ReloadCounts{OK: st.ReloadsOK, Failed: st.ReloadsFailed},
	}
	if !st.StartedAt.IsZero() {
		doc.StartedAt = timePtr(st.StartedAt)
		doc.UptimeSeconds = now.Sub(st.StartedAt).Seconds()
	}
	for _, sv := range st.Services {
		sd := ServiceStatus{
			Name: sv.Name, Desired: sv.Desired, Configured: sv.Configured, Running: sv.Running, Ready: sv.Ready, Backoff: sv.Backoff, Completed: sv.Completed,
			Waiting: sv.Waiting, WaitingFor: []DependencyWait{}, Recycles: map[string]uint64{},
			Restarts: sv.Counters.Restarts, WatchdogAborts: sv.Counters.WatchdogAborts, Exits: map[string]uint64{}, Workers: []WorkerStatus{},
		}
		for _, wt := range sv.WaitingFor {
			sd.WaitingFor = append(sd.WaitingFor, DependencyWait{Service: wt.Service, Condition: wt.Condition, Reason: wt.Reason, Failed: wt.Failed})
		}
		for _, reason := range supervisor.ExitReasons {
			sd.Exits[string(reason)] = sv.Counters.Exits[reason]
		}
		for _, reason := range supervisor.RecycleReasons {
			sd.Recycles[string(reason)] = sv.Counters.Recycles[reason]
		}
		if sc := sv.Schedule; sc != nil {
			sd.Schedule = &ServiceSchedule{Cron: sc.Cron, TimeZone: sc.TimeZone(), Runs: sv.Counters.ScheduledRuns, Skipped: sv.Counters.ScheduleSkips}
			if !sv.NextRunAt.IsZero() {
				next := sv.NextRunAt
				sd.Schedule.NextRunAt = &next
			}
		}
		for _, w := range sv.Workers {
			wd := WorkerStatus{
				ID: w.ID, State: w.State, PID: w.PID, Restarts: w.Restarts, Failures: w.Failures,
				LastExit: w.LastExit, Outdated: w.Outdated, Ready: w.Ready, StatusText: w.StatusText,
			}
			if !w.StartedAt.IsZero() {
				wd.StartedAt = timePtr(w.StartedAt)
				wd.UptimeSeconds = now.Sub(w.StartedAt).Seconds()
			}
			if !w.LastExitAt.IsZero() {
				wd.LastExitAt = timePtr(w.LastExitAt)
			}
			if !w.RetryAt.IsZero() {
				wd.RetryAt = timePtr(w.RetryAt)
			}
			if u := w.Usage; u != nil {
				cpu, mem := u.CPU.Seconds(), u.Memory
				wd.CPUSeconds, wd.MemoryBytes, wd.UsageOf = &cpu, &mem, "cgroup"
				if u.ProcessOnly {
					wd.UsageOf = "process"
				}
			}
			sd.Workers = append(sd.Workers, wd)
		}
		doc.Services = append(doc.Services, sd)
	}
	for _, q := range queues {
		r := rates[q.Name]
		doc.Queues = append(doc.Queues, QueueStatus{
			Name: q.Name, Capacity: q.Capacity, Depth: q.Depth, InFlight: q.InFlight, Consumers: q.Consumers,
			PutTotal: q.Put, DeliveredTotal: q.Delivered, AckedTotal: q.Acked, RedeliveredTotal: q.Redelivered,
			PutPerSecond: r.Put, AckedPerSecond: r.Acked,
			PutHistory: nonNil(r.PutHistory), AckedHistory: nonNil(r.AckedHistory),
			Store: q.Store, StoreState: q.StoreState, StoreRedelivered: q.StoreRedelivered,
			Schedule: newQueueScheduleStatus(q.Scheduled),
		})
		if !q.Forwarded && q.Tasks.Submitted > 0 {
			doc.Queues[len(doc.Queues)-1].Tasks = newTaskStatus(q.Tasks)
		}
	}
	if lr := st.LastReload; lr != nil {
		doc.LastReload = &ReloadStatus{At: lr.At.UTC(), Source: lr.Source.String(), OK: lr.Error == "", Error: lr.Error, Halted: lr.Halted}
	}
	return doc
}

// nonNil is xs, or [] for nil: the document's arrays are never null.
func nonNil(xs []float64) []float64 {
	if xs == nil {
		return []float64{}
	}
	return xs
}

func timePtr(t time.Time) *time.Time {
	u := t.UTC()
	return &u
}

// Service returns the service called name, or nil.
func (s *Status) Service(name string) *ServiceStatus {
	for i := range s.Services {
		if s.Services[i].Name == name {
			return &s.Services[i]
		}
	}
	return nil
}

// Summary is the status in one line, as systemd's STATUS= shows it: each
// service's running and desired workers, those of them not ready yet (by
// id, with the STATUS= each sent) and those in backoff, each queue's depth, and a failed last
// reload's first error. Until the manager is ready it starts with
// "starting: ", during a shutdown with "stopping: ".
//
//	printer 5/5 (not ready: worker 3), producer 1/2 (1 in backoff); jobs: 12 queued, 2 in flight
func (s *Status) Summary() string {
	var b strings.Builder
	switch {
	case s.Stopping:
		b.WriteString("stopping: ")
	case !s.Ready:
		b.WriteString("starting: ")
	}
	for i, sv := range s.Services {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d/%d", sv.Name, sv.Running, sv.Desired)
		var notes []string
		if ids := notReady(sv); ids != "" {
			notes = append(notes, "not ready: "+ids)
		}
		if sv.Backoff > 0 {
			notes = append(notes, fmt.Sprintf("%d in backoff", sv.Backoff))
		}
		for _, wt := range sv.WaitingFor {
			note := fmt.Sprintf("waiting for %s %s", wt.Service, wt.Condition)
			if wt.Failed {
				note += " (it failed)"
			}
			notes = append(notes, note)
		}
		if sv.Completed > 0 {
			failed := 0
			for _, w := range sv.Workers {
				if w.State == "completed" && w.LastExit != "exit code 0" {
					failed++
				}
			}
			note := fmt.Sprintf("%d completed", sv.Completed)
			if failed > 0 {
				note += fmt.Sprintf(", %d failed", failed)
			}
			notes = append(notes, note)
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(notes, "; "))
		}
	}
	for i, q := range s.Queues {
		if i == 0 {
			b.WriteString("; ")
		} else {
			b.WriteString(", ")
		}
		if q.Store != "" && q.StoreState != "connected" {
			fmt.Fprintf(&b, "%s: %s %s", q.Name, q.Store, q.StoreState)
			continue
		}
		fmt.Fprintf(&b, "%s: %d queued, %d in flight", q.Name, q.Depth, q.InFlight)
	}
	if r := s.LastReload; r != nil && !r.OK {
		first, _, _ := strings.Cut(r.Error, "\n")
		fmt.Fprintf(&b, "; last reload failed: %s", first)
	}
	return b.String()
}

// summaryIDs is how many worker ids a summary names before it counts the
// rest, and summaryText how much of each one's STATUS= it shows: STATUS=
// is one line.
const (
	summaryIDs  = 4
	summaryText = 40
)

// notReady names the workers the service wants that are not ready,
// whatever they are doing (starting, running, being replaced), but for
// those in backoff, which the summary counts apart, each with the last
// STATUS= it sent, if any: "worker 3", "workers 0 (loading 40%), 2, 5,
// 6 and 3 more"; "" if none.
func notReady(sv ServiceStatus) string {
	var ids []string
	n := 0
	for _, w := range sv.Workers {
		if w.Ready || w.State == "backoff" || w.State == "completed" || w.State == "waiting" || w.State == "scheduled" || w.ID >= sv.Desired {
			continue
		}
		n++
		if len(ids) < summaryIDs {
			id := strconv.Itoa(w.ID)
			if t := w.StatusText; t != "" {
				if len(t) > summaryText {
					t = t[:summaryText] + "..."
				}
				id += " (" + t + ")"
			}
			ids = append(ids, id)
		}
	}
	switch {
	case n == 0:
		return ""
	case n == 1:
		return "worker " + ids[0]
	case n > len(ids):
		return fmt.Sprintf("workers %s and %d more", strings.Join(ids, ", "), n-len(ids))
	}
	return "workers " + strings.Join(ids, ", ")
}
