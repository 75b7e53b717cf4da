// Package metrics serves the manager's figures in Prometheus's text format:
// NewHandler is GET /metrics (on the control socket, and on TCP when the
// configuration asks, through a Server).
//
// The handler serves these, taken at each scrape (namespace gotyledon):
//
//	gotyledon_workers_desired{service}             gauge    workers the manager keeps running now (a reconfigure's count, else the file's)
//	gotyledon_workers_configured{service}          gauge    workers the configuration file asks for
//	gotyledon_workers_running{service}             gauge    workers whose process is up and not stopping
//	gotyledon_workers_backoff{service}             gauge    worker slots waiting out a restart delay
//	gotyledon_worker_restarts_total{service}       counter  processes started to replace one that exited on its own
//	gotyledon_worker_exits_total{service,reason}   counter  processes that ended, by reason: stopped, clean, error, signal, start_failed
//	gotyledon_reloads_total{result}                counter  reloads by result: ok (applied) or failed (nothing changed)
//	gotyledon_last_reload_success                  gauge    1 if the newest reload was applied, 0 if it failed; absent before the first
//	gotyledon_last_reload_timestamp_seconds        gauge    when the newest reload happened (Unix time); absent before the first
//	gotyledon_ready                                gauge    1 once every worker's first start has been answered
//	gotyledon_stopping                             gauge    1 while a shutdown is under way
//	gotyledon_queue_depth{queue}                   gauge    items waiting in the queue
//	gotyledon_queue_in_flight{queue}               gauge    items handed out and not yet acked or requeued
//	gotyledon_queue_capacity{queue}                gauge    most items the queue holds waiting (in flight ones do not count)
//	gotyledon_queue_put_total{queue}               counter  items accepted by PUTs
//	gotyledon_queue_delivered_total{queue}         counter  items handed out (a redelivery counts again)
//	gotyledon_queue_acked_total{queue}             counter  items acked (auto-ack items when written out)
//	gotyledon_queue_redelivered_total{queue}       counter  items handed out again after a NACK or a closed connection
//
// Plus the manager process's own go_* (goroutines, memory, GC) and
// process_* (open fds, RSS, CPU) metrics. Counters count since the manager
// started and survive reloads. If the supervisor does not answer (within
// 5 s, or because it has stopped), a scrape has no gotyledon_workers_*,
// gotyledon_worker_*, gotyledon_reloads_total, gotyledon_last_reload_*,
// gotyledon_ready or gotyledon_stopping series (the failure is logged at
// warn), but still has the others.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// metricsStatusTimeout bounds how long a scrape waits for the supervisor's
// Status.
const metricsStatusTimeout = 5 * time.Second

// NewHandler returns the handler of GET /metrics: the manager's figures in
// Prometheus's text format, taken at each scrape from status (the
// supervisor's loop) and queues (the broker; nil when there is none). At
// most 4 scrapes are served at once.
func NewHandler(status func(context.Context) (supervisor.Status, error), queues func() []ipc.QueueStats, log *zap.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		&supervisorCollector{status: status, log: log, d: newSupervisorDescs()},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if queues != nil {
		reg.MustRegister(&queueCollector{stats: queues, d: newQueueDescs()})
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(log.With(zap.String("handler", "metrics"))),
		// A collector that fails (the process collector cannot read /proc,
		// say) should not hide the figures of the others.
		ErrorHandling: promhttp.ContinueOnError,
		// Each scrape asks the supervisor's loop for a Status: a burst of
		// scrapes (the TCP listener takes anyone who can reach it) must
		// not queue an unbounded number of them.
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

const metricsNamespace = "gotyledon"

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, "", name), help, labels, nil)
}

// supervisorDescs describe the figures of a supervisor.Status.
type supervisorDescs struct {
	desired, configured, running, backoff *prometheus.Desc
	restarts, exits, reloads              *prometheus.Desc
	lastReloadSuccess, lastReloadTime     *prometheus.Desc
	ready, stopping                       *prometheus.Desc
}

func newSupervisorDescs() supervisorDescs {
	return supervisorDescs{
		desired: newDesc("workers_desired",
			"Workers the manager keeps running now: the file's count, or the count of a later reconfigure until the next reload.", "service"),
		configured: newDesc("workers_configured",
			"Workers the configuration file asks for.", "service"),
		running: newDesc("workers_running",
			"Workers whose process is up and not stopping.", "service"),
		backoff: newDesc("workers_backoff",
			"Worker slots waiting out a restart delay after their process exited.", "service"),
		restarts: newDesc("worker_restarts_total",
			"Processes started to replace one that exited on its own, since the manager started.", "service"),
		exits: newDesc("worker_exits_total",
			"Worker processes that ended since the manager started, by reason: stopped (asked to by the manager), clean (exit code 0), error (non-zero exit code), signal (a signal the manager did not send), start_failed (could not be started).", "service", "reason"),
		reloads: newDesc("reloads_total",
			"Reloads of the configuration since the manager started, by result: ok (applied) or failed (nothing changed).", "result"),
		lastReloadSuccess: newDesc("last_reload_success",
			"1 if the newest reload was applied, 0 if it failed; absent before the first reload."),
		lastReloadTime: newDesc("last_reload_timestamp_seconds",
			"When the newest reload happened, in seconds since the Unix epoch; absent before the first reload."),
		ready: newDesc("ready",
			"1 once every worker's first start has been answered (started, or failed and put in backoff), else 0."),
		stopping: newDesc("stopping",
			"1 while a shutdown is under way, else 0."),
	}
}

// queueDescs describe the figures of an ipc.QueueStats.
type queueDescs struct {
	depth, inFlight, capacity          *prometheus.Desc
	put, delivered, acked, redelivered *prometheus.Desc
}

func newQueueDescs() queueDescs {
	return queueDescs{
		depth: newDesc("queue_depth",
			"Items waiting in the queue.", "queue"),
		inFlight: newDesc("queue_in_flight",
			"Items handed out and not yet acked or requeued.", "queue"),
		capacity: newDesc("queue_capacity",
			"Most items the queue holds waiting (items in flight do not count).", "queue"),
		put: newDesc("queue_put_total",
			"Items accepted by PUTs since the broker started.", "queue"),
		delivered: newDesc("queue_delivered_total",
			"Items handed out since the broker started; a redelivery counts again.", "queue"),
		acked: newDesc("queue_acked_total",
			"Items acked since the broker started; auto-ack items count when written out.", "queue"),
		redelivered: newDesc("queue_redelivered_total",
			"Items handed out again after a NACK or a closed connection, since the broker started.", "queue"),
	}
}

// supervisorCollector takes one Status per scrape.
type supervisorCollector struct {
	status func(context.Context) (supervisor.Status, error)
	log    *zap.Logger
	d      supervisorDescs
}

func (c *supervisorCollector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.d
	for _, desc := range []*prometheus.Desc{
		d.desired, d.configured, d.running, d.backoff, d.restarts, d.exits, d.reloads,
		d.lastReloadSuccess, d.lastReloadTime, d.ready, d.stopping,
	} {
		ch <- desc
	}
}

func (c *supervisorCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), metricsStatusTimeout)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		c.log.Warn("metrics: the supervisor's figures are left out of this scrape", zap.Error(err))
		return
	}
	d := &c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	for _, s := range st.Services {
		gauge(d.desired, float64(s.Desired), s.Name)
		gauge(d.configured, float64(s.Configured), s.Name)
		gauge(d.running, float64(s.Running), s.Name)
		gauge(d.backoff, float64(s.Backoff), s.Name)
		counter(d.restarts, s.Counters.Restarts, s.Name)
		// Every reason, zeros too, so that rate() works from the first
		// scrape; a nil map reads 0.
		for _, r := range supervisor.ExitReasons {
			counter(d.exits, s.Counters.Exits[r], s.Name, string(r))
		}
	}
	counter(d.reloads, st.ReloadsOK, "ok")
	counter(d.reloads, st.ReloadsFailed, "failed")
	if r := st.LastReload; r != nil {
		gauge(d.lastReloadSuccess, boolValue(r.Error == ""))
		gauge(d.lastReloadTime, float64(r.At.UnixNano())/1e9)
	}
	gauge(d.ready, boolValue(st.Ready))
	gauge(d.stopping, boolValue(st.Stopping))
}

// queueCollector takes the broker's queue stats once per scrape.
type queueCollector struct {
	stats func() []ipc.QueueStats
	d     queueDescs
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.d
	for _, desc := range []*prometheus.Desc{
		d.depth, d.inFlight, d.capacity, d.put, d.delivered, d.acked, d.redelivered,
	} {
		ch <- desc
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	d := &c.d
	gauge := func(desc *prometheus.Desc, v int, queue string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(v), queue)
	}
	counter := func(desc *prometheus.Desc, v uint64, queue string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), queue)
	}
	for _, q := range c.stats() {
		gauge(d.depth, q.Depth, q.Name)
		gauge(d.inFlight, q.InFlight, q.Name)
		gauge(d.capacity, q.Capacity, q.Name)
		counter(d.put, q.Put, q.Name)
		counter(d.delivered, q.Delivered, q.Name)
		counter(d.acked, q.Acked, q.Name)
		counter(d.redelivered, q.Redelivered, q.Name)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
