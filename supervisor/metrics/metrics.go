// Package metrics serves the manager's figures in Prometheus's text format:
// NewHandler is GET /metrics (on the control socket, and on TCP when the
// configuration asks, through a Server).
//
// The handler serves these, taken at each scrape (namespace gotyledon):
//
//	gotyledon_workers_desired{service}             gauge    workers the manager keeps running now (a reconfigure's count, else the file's)
//	gotyledon_workers_configured{service}          gauge    workers the configuration file asks for
//	gotyledon_workers_running{service}             gauge    workers whose process is up and not stopping
//	gotyledon_workers_ready{service}               gauge    running workers that are ready (ran min_uptime, or sent READY=1)
//	gotyledon_workers_backoff{service}             gauge    worker slots waiting out a restart delay
//	gotyledon_workers_completed{service}           gauge    worker slots whose process exited and that the restart policy does not restart
//	gotyledon_workers_waiting{service}             gauge    worker slots not started: their service waits for its depends_on
//	gotyledon_worker_restarts_total{service}       counter  processes started to replace one that exited on its own
//	gotyledon_worker_recycles_total{service,reason} counter workers recycled (drained, stopped, replaced), by limit: max_jobs, max_age, memory_max
//	gotyledon_worker_exits_total{service,reason}   counter  processes that ended, by reason: stopped, clean, error, signal, start_failed
//	gotyledon_worker_watchdog_aborts_total{service} counter processes aborted for missing their watchdog
//	gotyledon_worker_cpu_seconds_total{service,worker} counter CPU time of a worker's process and its descendants (from its cgroup)
//	gotyledon_worker_memory_bytes{service,worker}  gauge    memory of a worker's process and its descendants (from its cgroup)
//	gotyledon_reloads_total{result}                counter  reloads by result: ok (applied) or failed (nothing changed, or its rolling change halted)
//	gotyledon_last_reload_success                  gauge    1 if the newest reload was applied, 0 if it failed; absent before the first
//	gotyledon_last_reload_timestamp_seconds        gauge    when the newest reload happened (Unix time); absent before the first
//	gotyledon_ready                                gauge    1 once every worker of the first start is ready (or its ready_timeout passed)
//	gotyledon_stopping                             gauge    1 while a shutdown is under way
//	gotyledon_queue_depth{queue}                   gauge    items waiting in the queue
//	gotyledon_queue_in_flight{queue}               gauge    items handed out and not yet acked or requeued
//	gotyledon_queue_capacity{queue}                gauge    most items the queue holds waiting (in flight ones do not count)
//	gotyledon_queue_put_total{queue}               counter  items accepted by PUTs
//	gotyledon_queue_delivered_total{queue}         counter  items handed out (a redelivery counts again)
//	gotyledon_queue_acked_total{queue}             counter  items acked (auto-ack items when written out)
//	gotyledon_queue_redelivered_total{queue}       counter  items handed out again after a NACK or a closed connection
//	gotyledon_queue_store_up{queue,store}          gauge    1 while the store of a queue not kept in memory answers, else 0
//	gotyledon_queue_scheduled_put_total{queue}     counter  items the queue's schedules put
//	gotyledon_queue_scheduled_failed_total{queue}  counter  times a schedule's item was not put (the queue stayed full past the wait, or the put failed)
//	gotyledon_queue_tasks_submitted_total{queue}   counter  tasks accepted by SUBMITs
//	gotyledon_queue_tasks_running{queue}           gauge    tasks handed out and not yet answered
//	gotyledon_queue_tasks_total{queue,outcome}     counter  tasks ended, by outcome: done, failed, cancelled
//	gotyledon_queue_tasks_redelivered_total{queue} counter  tasks handed out again
//	gotyledon_queue_task_runtime_seconds{queue}    summary  hand-out to answer: quantiles 0.5, 0.9, 0.99 of the latest 1024, sum and count of all
//	gotyledon_service_tasks_*{service}             the same five, of the tasks a service's workers submitted (submitted, cancelled) and took (the others)
//
// A queue's task series are there once it has had a task; a service's once
// its workers have submitted or taken one. A queue's scheduled series are
// there once it has had a schedule (queues.NAME.schedule).
//
// The figures of a queue kept in a store (store: jetstream) are the
// store's, of the queue as a whole (every manager sharing it counts): its
// totals count since the queue was made, and its redelivered_total is 0
// (the store does not count redeliveries over time).
//
// Plus the manager process's own go_* (goroutines, threads, memory, GC) and
// process_* (CPU, memory, open and maximum fds, start time) metrics, with
// the names, help and types of Prometheus's Go client (see runtime.go). Counters count since the manager
// started and survive reloads. If the supervisor does not answer (within
// 5 s, or because it has stopped), a scrape has no gotyledon_workers_*,
// gotyledon_worker_*, gotyledon_reloads_total, gotyledon_last_reload_*,
// gotyledon_ready or gotyledon_stopping series (the failure is logged at
// warn), but still has the others.
package metrics

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// metricsStatusTimeout bounds how long a scrape waits for the supervisor's
// Status.
const metricsStatusTimeout = 5 * time.Second

// Limits of the handler: scrapes served at once (each asks the
// supervisor's loop for a Status, and the TCP listener takes anyone who
// can reach it), and how long one may take.
const (
	maxScrapesInFlight = 4
	scrapeTimeout      = 10 * time.Second
)

// NewHandler returns the handler of GET /metrics: the manager's figures in
// Prometheus's text format, taken at each scrape from status (the
// supervisor's loop) and queues (the broker; nil when there is none). At
// most 4 scrapes are served at once (a fifth gets 503 at once), and one
// that takes more than 10 s gets 503; the answer is gzipped when the
// scraper accepts it, as Prometheus does.
func NewHandler(status func(context.Context) (supervisor.Status, error), queues func() []ipc.QueueStats, log *zap.Logger, opts ...HandlerOption) http.Handler {
	h := &handler{
		status:   status,
		queues:   queues,
		log:      log,
		inFlight: make(chan struct{}, maxScrapesInFlight),
	}
	for _, o := range opts {
		o(h)
	}
	return http.TimeoutHandler(h, scrapeTimeout, fmt.Sprintf("Exceeded configured timeout of %v.\n", scrapeTimeout))
}

// HandlerOption adds to what NewHandler serves.
type HandlerOption func(*handler)

// WithServiceTasks serves the task figures of each service, from tasks
// (the broker's ServiceTaskStats).
func WithServiceTasks(tasks func() map[string]ipc.TaskStats) HandlerOption {
	return func(h *handler) { h.tasks = tasks }
}

type handler struct {
	status   func(context.Context) (supervisor.Status, error)
	queues   func() []ipc.QueueStats
	tasks    func() map[string]ipc.TaskStats
	log      *zap.Logger
	inFlight chan struct{} // a token per scrape being served
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case h.inFlight <- struct{}{}:
		defer func() { <-h.inFlight }()
	default:
		http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", maxScrapesInFlight), http.StatusServiceUnavailable)
		return
	}
	var body bytes.Buffer
	if err := writeText(&body, h.gather(r.Context())); err != nil {
		http.Error(w, "metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		zw := gzip.NewWriter(w)
		_, _ = body.WriteTo(zw)
		_ = zw.Close()
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	_, _ = body.WriteTo(w)
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}

// gather takes the figures of one scrape. A part that fails is left out
// and logged; the others are still served.
func (h *handler) gather(ctx context.Context) []*family {
	var fams []*family
	ctx, cancel := context.WithTimeout(ctx, metricsStatusTimeout)
	defer cancel()
	if st, err := h.status(ctx); err != nil {
		h.log.Warn("metrics: the supervisor's figures are left out of this scrape", zap.Error(err))
	} else {
		fams = append(fams, supervisorFamilies(st)...)
	}
	if h.queues != nil {
		fams = append(fams, queueFamilies(h.queues())...)
	}
	if h.tasks != nil {
		tasks := h.tasks()
		names := make([]string, 0, len(tasks))
		for name := range tasks {
			names = append(names, name)
		}
		slices.Sort(names)
		tf := newTaskFamilies("service")
		for _, name := range names {
			tf.add(tasks[name], name)
		}
		fams = append(fams, tf.families()...)
	}
	fams = append(fams, goFamilies()...)
	proc, err := processFamilies()
	if err != nil {
		h.log.Warn("metrics: some process_* figures are left out of this scrape", zap.Error(err))
	}
	return append(fams, proc...)
}

const metricsNamespace = "gotyledon_"

func gotyledonDesc(name, help string, typ metricType, labels ...string) desc {
	return newDesc(metricsNamespace+name, help, typ, labels...)
}

// The families of a supervisor.Status.
var (
	workersDesired = gotyledonDesc("workers_desired",
		"Workers the manager keeps running now: the file's count, or the count of a later reconfigure until the next reload.", gaugeType, "service")
	workersConfigured = gotyledonDesc("workers_configured",
		"Workers the configuration file asks for.", gaugeType, "service")
	workersRunning = gotyledonDesc("workers_running",
		"Workers whose process is up and not stopping.", gaugeType, "service")
	workersReady = gotyledonDesc("workers_ready",
		"Running workers that are ready: they have run min_uptime, or sent READY=1 (ready: notify).", gaugeType, "service")
	workerWatchdogAborts = gotyledonDesc("worker_watchdog_aborts_total",
		"Worker processes aborted for missing their watchdog, since the manager started.", counterType, "service")
	workerCPU = gotyledonDesc("worker_cpu_seconds_total",
		"CPU time used by a worker's current process and everything it forked, read from its own cgroup; absent where workers have none.", counterType, "service", "worker")
	workerMemory = gotyledonDesc("worker_memory_bytes",
		"Memory of a worker's current process and everything it forked, read from its own cgroup (memory.current, else the resident sets); absent where workers have none.", gaugeType, "service", "worker")
	workersBackoff = gotyledonDesc("workers_backoff",
		"Worker slots waiting out a restart delay after their process exited.", gaugeType, "service")
	workersCompleted = gotyledonDesc("workers_completed",
		"Worker slots whose process exited and that their service's restart policy does not restart (one-shot tasks, done or failed).", gaugeType, "service")
	workersWaiting = gotyledonDesc("workers_waiting",
		"Worker slots not started because their service waits for its depends_on.", gaugeType, "service")
	workerRecycles = gotyledonDesc("worker_recycles_total",
		"Workers recycled (drained, stopped and replaced) since the manager started, by the limit they crossed: max_jobs, max_age, memory_max.", counterType, "service", "reason")
	workerRestarts = gotyledonDesc("worker_restarts_total",
		"Processes started to replace one that exited on its own, since the manager started.", counterType, "service")
	workerExits = gotyledonDesc("worker_exits_total",
		"Worker processes that ended since the manager started, by reason: stopped (asked to by the manager), clean (exit code 0), error (non-zero exit code), signal (a signal the manager did not send), start_failed (could not be started).", counterType, "service", "reason")
	reloads = gotyledonDesc("reloads_total",
		"Reloads of the configuration since the manager started, by result: ok (applied) or failed (nothing changed, or its rolling change halted).", counterType, "result")
	lastReloadSuccess = gotyledonDesc("last_reload_success",
		"1 if the newest reload was applied, 0 if it failed; absent before the first reload.", gaugeType)
	lastReloadTime = gotyledonDesc("last_reload_timestamp_seconds",
		"When the newest reload happened, in seconds since the Unix epoch; absent before the first reload.", gaugeType)
	ready = gotyledonDesc("ready",
		"1 once the manager is ready (every worker of its first start is ready, or its ready_timeout has passed), else 0.", gaugeType)
	stopping = gotyledonDesc("stopping",
		"1 while a shutdown is under way, else 0.", gaugeType)
)

// The families of the broker's ipc.QueueStats.
var (
	queueDepth = gotyledonDesc("queue_depth",
		"Items waiting in the queue.", gaugeType, "queue")
	queueInFlight = gotyledonDesc("queue_in_flight",
		"Items handed out and not yet acked or requeued.", gaugeType, "queue")
	queueCapacity = gotyledonDesc("queue_capacity",
		"Most items the queue holds waiting (items in flight do not count).", gaugeType, "queue")
	queuePut = gotyledonDesc("queue_put_total",
		"Items accepted by PUTs since the broker started.", counterType, "queue")
	queueDelivered = gotyledonDesc("queue_delivered_total",
		"Items handed out since the broker started; a redelivery counts again.", counterType, "queue")
	queueAcked = gotyledonDesc("queue_acked_total",
		"Items acked since the broker started; auto-ack items count when written out.", counterType, "queue")
	queueRedelivered = gotyledonDesc("queue_redelivered_total",
		"Items handed out again after a NACK or a closed connection, since the broker started.", counterType, "queue")
	queueStoreUp = gotyledonDesc("queue_store_up",
		"1 while the store of a queue not kept in the manager's memory answers, else 0.", gaugeType, "queue", "store")
	queueScheduledPut = gotyledonDesc("queue_scheduled_put_total",
		"Items the queue's schedules put since the manager started.", counterType, "queue")
	queueScheduledFailed = gotyledonDesc("queue_scheduled_failed_total",
		"Times one of the queue's schedules did not put its item since the manager started: the queue stayed full past the put's wait, or the put failed.", counterType, "queue")
)

// supervisorFamilies are the figures of st.
func supervisorFamilies(st supervisor.Status) []*family {
	desired, configured := &family{desc: workersDesired}, &family{desc: workersConfigured}
	running, backoff := &family{desc: workersRunning}, &family{desc: workersBackoff}
	completed, waiting := &family{desc: workersCompleted}, &family{desc: workersWaiting}
	recycles := &family{desc: workerRecycles}
	restarts, exits := &family{desc: workerRestarts}, &family{desc: workerExits}
	readyWorkers, aborts := &family{desc: workersReady}, &family{desc: workerWatchdogAborts}
	cpu, mem := &family{desc: workerCPU}, &family{desc: workerMemory}
	for _, s := range st.Services {
		for _, w := range s.Workers {
			// A process's own figures without its descendants' would
			// mix two meanings in one series: the cgroup's only.
			if w.Usage != nil && !w.Usage.ProcessOnly {
				id := strconv.Itoa(w.ID)
				cpu.add(w.Usage.CPU.Seconds(), s.Name, id)
				mem.add(float64(w.Usage.Memory), s.Name, id)
			}
		}
		readyWorkers.add(float64(s.Ready), s.Name)
		aborts.add(float64(s.Counters.WatchdogAborts), s.Name)
		desired.add(float64(s.Desired), s.Name)
		configured.add(float64(s.Configured), s.Name)
		running.add(float64(s.Running), s.Name)
		backoff.add(float64(s.Backoff), s.Name)
		completed.add(float64(s.Completed), s.Name)
		waiting.add(float64(s.Waiting), s.Name)
		for _, r := range supervisor.RecycleReasons {
			recycles.add(float64(s.Counters.Recycles[r]), s.Name, string(r))
		}
		restarts.add(float64(s.Counters.Restarts), s.Name)
		// Every reason, zeros too, so that rate() works from the first
		// scrape; a nil map reads 0.
		for _, r := range supervisor.ExitReasons {
			exits.add(float64(s.Counters.Exits[r]), s.Name, string(r))
		}
	}
	rl := &family{desc: reloads}
	rl.add(float64(st.ReloadsOK), "ok")
	rl.add(float64(st.ReloadsFailed), "failed")
	fams := []*family{desired, configured, running, readyWorkers, backoff, completed, waiting, restarts, exits, recycles, aborts, cpu, mem, rl,
		one(ready, boolValue(st.Ready)), one(stopping, boolValue(st.Stopping))}
	if r := st.LastReload; r != nil {
		fams = append(fams,
			one(lastReloadSuccess, boolValue(r.Error == "")),
			one(lastReloadTime, float64(r.At.UnixNano())/1e9))
	}
	return fams
}

// queueFamilies are the figures of the broker's queues.
func queueFamilies(stats []ipc.QueueStats) []*family {
	depth, inFlight, capacity := &family{desc: queueDepth}, &family{desc: queueInFlight}, &family{desc: queueCapacity}
	put, delivered := &family{desc: queuePut}, &family{desc: queueDelivered}
	acked, redelivered := &family{desc: queueAcked}, &family{desc: queueRedelivered}
	storeUp := &family{desc: queueStoreUp}
	for _, q := range stats {
		if q.Store != "" {
			storeUp.add(boolValue(q.StoreState == "connected"), q.Name, q.Store)
		}
		if !q.HasFigures() {
			// Unknown now: no series, rather than 0s that would read as
			// an emptied queue and reset counters.
			capacity.add(float64(q.Capacity), q.Name)
			continue
		}
		depth.add(float64(q.Depth), q.Name)
		inFlight.add(float64(q.InFlight), q.Name)
		capacity.add(float64(q.Capacity), q.Name)
		put.add(float64(q.Put), q.Name)
		delivered.add(float64(q.Delivered), q.Name)
		acked.add(float64(q.Acked), q.Name)
		redelivered.add(float64(q.Redelivered), q.Name)
	}
	tasks := newTaskFamilies("queue")
	for _, q := range stats {
		if !q.Forwarded && q.Tasks.Submitted > 0 {
			tasks.add(q.Tasks, q.Name)
		}
	}
	// Counted by the manager, not the store: there whatever the store says.
	scheduledPut, scheduledFailed := &family{desc: queueScheduledPut}, &family{desc: queueScheduledFailed}
	for _, q := range stats {
		if q.Scheduled != nil {
			scheduledPut.add(float64(q.Scheduled.Put), q.Name)
			scheduledFailed.add(float64(q.Scheduled.Failed), q.Name)
		}
	}
	fams := []*family{depth, inFlight, capacity, put, delivered, acked, redelivered}
	if len(storeUp.series) > 0 {
		fams = append(fams, storeUp)
	}
	if len(scheduledPut.series) > 0 {
		fams = append(fams, scheduledPut, scheduledFailed)
	}
	return append(fams, tasks.families()...)
}

// taskFamilies are the task figures, of queues or of services (by).
type taskFamilies struct {
	by                                     string
	submitted, running, ended, redelivered *family
	runtime                                *family
}

func newTaskFamilies(by string) *taskFamilies {
	name := by + "_tasks_"
	return &taskFamilies{
		by: by,
		submitted: &family{desc: gotyledonDesc(name+"submitted_total",
			"Tasks accepted by SUBMITs since the broker started (a service's: submitted by its workers).", counterType, by)},
		running: &family{desc: gotyledonDesc(name+"running",
			"Tasks handed out and not yet answered (a service's: taken by its workers).", gaugeType, by)},
		ended: &family{desc: gotyledonDesc(name+"total",
			"Tasks ended since the broker started, by outcome: done, failed (answered so; a service's: by its workers), cancelled (withdrawn before a worker took them, or ended after their submitter left; a service's: of its submissions).", counterType, by, "outcome")},
		redelivered: &family{desc: gotyledonDesc(name+"redelivered_total",
			"Tasks handed out again after a NACK or a closed connection, since the broker started (a service's: to its workers).", counterType, by)},
		runtime: &family{desc: gotyledonDesc(by+"_task_runtime_seconds",
			"Time from a task's hand-out to its answer: quantiles of the latest 1024, sum and count of all since the broker started.", summaryType, by)},
	}
}

func (tf *taskFamilies) add(t ipc.TaskStats, name string) {
	tf.submitted.add(float64(t.Submitted), name)
	tf.running.add(float64(t.Running), name)
	tf.ended.add(float64(t.Done), name, "done")
	tf.ended.add(float64(t.Failed), name, "failed")
	tf.ended.add(float64(t.Cancelled), name, "cancelled")
	tf.redelivered.add(float64(t.Redelivered), name)
	by := labelPair{tf.by, name}
	for _, q := range []struct {
		at string
		d  time.Duration
	}{{"0.5", t.Runtime.P50}, {"0.9", t.Runtime.P90}, {"0.99", t.Runtime.P99}} {
		tf.runtime.series = append(tf.runtime.series, series{labels: []labelPair{{"quantile", q.at}, by}, value: q.d.Seconds()})
	}
	tf.runtime.series = append(tf.runtime.series,
		series{suffix: "_sum", labels: []labelPair{by}, value: t.Runtime.Sum.Seconds()},
		series{suffix: "_count", labels: []labelPair{by}, value: float64(t.Runtime.Count)})
}

func (tf *taskFamilies) families() []*family {
	return []*family{tf.submitted, tf.running, tf.ended, tf.redelivered, tf.runtime}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
