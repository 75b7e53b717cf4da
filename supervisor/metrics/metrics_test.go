package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// metricsStatus is a Status with every figure set, and distinct.
func metricsStatus() supervisor.Status {
	return supervisor.Status{
		Ready: true,
		Services: []supervisor.ServiceStatus{
			{
				Name: "web", Desired: 4, Configured: 3, Running: 2, Backoff: 1,
				Counters: supervisor.ServiceCounters{Restarts: 7, Exits: map[supervisor.ExitReason]uint64{
					supervisor.ExitStopped: 11, supervisor.ExitError: 5, supervisor.ExitSignal: 2,
				}},
			},
			// Removed by a reload, its workers still stopping; Exits nil.
			{Name: "old", Running: 0, Backoff: 0},
		},
		LastReload:    &supervisor.ReloadResult{At: time.Unix(1767323045, 500_000_000), Source: supervisor.ReloadBySignal, Error: "bad file"},
		ReloadsOK:     3,
		ReloadsFailed: 1,
	}
}

func metricsQueues() []ipc.QueueStats {
	return []ipc.QueueStats{
		{Name: "jobs", Capacity: 100, Depth: 12, InFlight: 3, Put: 1000, Delivered: 990, Acked: 985, Redelivered: 4},
		{Name: "mail", Capacity: 10000},
	}
}

// scrapeMetrics GETs /metrics from h, checks the answer is 200 in the text
// format, and returns it parsed, and as text.
func scrapeMetrics(t *testing.T, h http.Handler) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body:\n%s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	return fams, string(body)
}

// metricValue returns the value of the series of family name whose labels
// are exactly labels (name, value, name, value...), checking its type.
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no %s", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want a %v", name, f.GetType(), typ)
	}
	if f.GetHelp() == "" {
		t.Errorf("%s has no help", name)
	}
next:
	for _, m := range f.Metric {
		if len(m.Label)*2 != len(labels) {
			continue
		}
		for _, l := range m.Label {
			found := false
			for i := 0; i < len(labels); i += 2 {
				if labels[i] == l.GetName() && labels[i+1] == l.GetValue() {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch typ {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		default:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func seriesCount(fams map[string]*dto.MetricFamily, prefix string) int {
	n := 0
	for name, f := range fams {
		if strings.HasPrefix(name, prefix) {
			n += len(f.Metric)
		}
	}
	return n
}

func TestMetricsValues(t *testing.T) {
	var calls atomic.Int32
	status := func(ctx context.Context) (supervisor.Status, error) {
		calls.Add(1)
		deadline, ok := ctx.Deadline()
		if !ok || time.Until(deadline) > metricsStatusTimeout {
			t.Errorf("status asked with deadline %v (set: %v), want one within %v", deadline, ok, metricsStatusTimeout)
		}
		return metricsStatus(), nil
	}
	fams, body := scrapeMetrics(t, NewHandler(status, metricsQueues, zap.NewNop()))
	if n := calls.Load(); n != 1 {
		t.Errorf("one scrape asked status %d times, want 1", n)
	}

	const gauge, counter = dto.MetricType_GAUGE, dto.MetricType_COUNTER
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels []string
		want   float64
	}{
		{"gotyledon_workers_desired", gauge, []string{"service", "web"}, 4},
		{"gotyledon_workers_configured", gauge, []string{"service", "web"}, 3},
		{"gotyledon_workers_running", gauge, []string{"service", "web"}, 2},
		{"gotyledon_workers_backoff", gauge, []string{"service", "web"}, 1},
		{"gotyledon_worker_restarts_total", counter, []string{"service", "web"}, 7},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "stopped"}, 11},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "clean"}, 0},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "error"}, 5},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "signal"}, 2},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "start_failed"}, 0},

		{"gotyledon_workers_desired", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_configured", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_running", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_backoff", gauge, []string{"service", "old"}, 0},
		{"gotyledon_worker_restarts_total", counter, []string{"service", "old"}, 0},

		{"gotyledon_reloads_total", counter, []string{"result", "ok"}, 3},
		{"gotyledon_reloads_total", counter, []string{"result", "failed"}, 1},
		{"gotyledon_last_reload_success", gauge, nil, 0},
		{"gotyledon_last_reload_timestamp_seconds", gauge, nil, 1767323045.5},
		{"gotyledon_ready", gauge, nil, 1},
		{"gotyledon_stopping", gauge, nil, 0},

		{"gotyledon_queue_depth", gauge, []string{"queue", "jobs"}, 12},
		{"gotyledon_queue_in_flight", gauge, []string{"queue", "jobs"}, 3},
		{"gotyledon_queue_capacity", gauge, []string{"queue", "jobs"}, 100},
		{"gotyledon_queue_put_total", counter, []string{"queue", "jobs"}, 1000},
		{"gotyledon_queue_delivered_total", counter, []string{"queue", "jobs"}, 990},
		{"gotyledon_queue_acked_total", counter, []string{"queue", "jobs"}, 985},
		{"gotyledon_queue_redelivered_total", counter, []string{"queue", "jobs"}, 4},
		{"gotyledon_queue_depth", gauge, []string{"queue", "mail"}, 0},
		{"gotyledon_queue_capacity", gauge, []string{"queue", "mail"}, 10000},
		{"gotyledon_queue_put_total", counter, []string{"queue", "mail"}, 0},
	} {
		if got := metricValue(t, fams, c.name, c.typ, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Every reason for every service, zeros too (the nil map of "old").
	if n := len(fams["gotyledon_worker_exits_total"].GetMetric()); n != 2*len(supervisor.ExitReasons) {
		t.Errorf("%d gotyledon_worker_exits_total series, want %d", n, 2*len(supervisor.ExitReasons))
	}
	for _, r := range supervisor.ExitReasons {
		metricValue(t, fams, "gotyledon_worker_exits_total", counter, "service", "old", "reason", string(r))
	}
	// Exactly the series of two queues and two services, nothing more.
	for prefix, want := range map[string]int{"gotyledon_queue_": 2 * 7, "gotyledon_worker": 2 * (4 + 1 + len(supervisor.ExitReasons))} {
		if n := seriesCount(fams, prefix); n != want {
			t.Errorf("%d %s* series, want %d", n, prefix, want)
		}
	}

	// The manager's own figures.
	if v := metricValue(t, fams, "go_goroutines", gauge); v < 1 {
		t.Errorf("go_goroutines = %v", v)
	}
	if v := metricValue(t, fams, "process_open_fds", gauge); v < 1 {
		t.Errorf("process_open_fds = %v", v)
	}

	// Names, types and units as Prometheus wants them.
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "gotyledon_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestMetricsBeforeTheFirstReload(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) {
		return supervisor.Status{Services: []supervisor.ServiceStatus{{Name: "web", Desired: 1, Configured: 1}}}, nil
	}
	fams, _ := scrapeMetrics(t, NewHandler(status, metricsQueues, zap.NewNop()))
	for _, name := range []string{"gotyledon_last_reload_success", "gotyledon_last_reload_timestamp_seconds"} {
		if f := fams[name]; f != nil {
			t.Errorf("%s present before the first reload: %v", name, f)
		}
	}
	const counter, gauge = dto.MetricType_COUNTER, dto.MetricType_GAUGE
	for _, result := range []string{"ok", "failed"} {
		if v := metricValue(t, fams, "gotyledon_reloads_total", counter, "result", result); v != 0 {
			t.Errorf("gotyledon_reloads_total{result=%q} = %v, want 0", result, v)
		}
	}
	if v := metricValue(t, fams, "gotyledon_ready", gauge); v != 0 {
		t.Errorf("gotyledon_ready = %v, want 0", v)
	}
}

func TestMetricsLastReloadSucceeded(t *testing.T) {
	st := metricsStatus()
	st.LastReload.Error = ""
	st.Stopping = true
	status := func(context.Context) (supervisor.Status, error) { return st, nil }
	fams, _ := scrapeMetrics(t, NewHandler(status, nil, zap.NewNop()))
	const gauge = dto.MetricType_GAUGE
	if v := metricValue(t, fams, "gotyledon_last_reload_success", gauge); v != 1 {
		t.Errorf("gotyledon_last_reload_success = %v, want 1", v)
	}
	if v := metricValue(t, fams, "gotyledon_stopping", gauge); v != 1 {
		t.Errorf("gotyledon_stopping = %v, want 1", v)
	}
}

// Each scrape takes fresh figures. (The collectors run concurrently, so
// status and queues count their calls apart.)
func TestMetricsEachScrapeAsksAgain(t *testing.T) {
	var statusCalls, queueCalls atomic.Uint64
	status := func(context.Context) (supervisor.Status, error) {
		st := metricsStatus()
		st.Services[0].Counters.Restarts = statusCalls.Add(1)
		return st, nil
	}
	queues := func() []ipc.QueueStats {
		q := metricsQueues()
		q[0].Put = queueCalls.Add(1) * 10
		return q
	}
	h := NewHandler(status, queues, zap.NewNop())
	for want := 1.0; want <= 3; want++ {
		fams, _ := scrapeMetrics(t, h)
		if v := metricValue(t, fams, "gotyledon_worker_restarts_total", dto.MetricType_COUNTER, "service", "web"); v != want {
			t.Errorf("scrape %v: restarts %v", want, v)
		}
		if v := metricValue(t, fams, "gotyledon_queue_put_total", dto.MetricType_COUNTER, "queue", "jobs"); v != want*10 {
			t.Errorf("scrape %v: put %v, want %v", want, v, want*10)
		}
	}
}

func TestMetricsWithoutQueues(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }
	fams, body := scrapeMetrics(t, NewHandler(status, nil, zap.NewNop()))
	if n := seriesCount(fams, "gotyledon_queue_"); n != 0 || strings.Contains(body, "gotyledon_queue_") {
		t.Errorf("%d gotyledon_queue_* series without a broker:\n%s", n, body)
	}
	if seriesCount(fams, "gotyledon_workers_") == 0 {
		t.Error("no gotyledon_workers_* series")
	}
}

func TestMetricsWhenStatusFails(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	status := func(context.Context) (supervisor.Status, error) {
		return supervisor.Status{}, errors.New("status: context deadline exceeded")
	}
	fams, body := scrapeMetrics(t, NewHandler(status, metricsQueues, zap.New(core)))

	for _, prefix := range []string{"gotyledon_workers_", "gotyledon_worker_", "gotyledon_reload", "gotyledon_last_reload", "gotyledon_ready", "gotyledon_stopping"} {
		if n := seriesCount(fams, prefix); n != 0 {
			t.Errorf("%d %s* series though status failed:\n%s", n, prefix, body)
		}
	}
	if v := metricValue(t, fams, "gotyledon_queue_depth", dto.MetricType_GAUGE, "queue", "jobs"); v != 12 {
		t.Errorf("gotyledon_queue_depth{queue=jobs} = %v, want 12", v)
	}
	if seriesCount(fams, "gotyledon_queue_") != 2*7 {
		t.Errorf("queue series missing:\n%s", body)
	}
	metricValue(t, fams, "go_goroutines", dto.MetricType_GAUGE)
	metricValue(t, fams, "process_open_fds", dto.MetricType_GAUGE)

	warned := logs.FilterLevelExact(zapcore.WarnLevel).FilterField(zap.Error(errors.New("status: context deadline exceeded"))).Len()
	if warned != 1 || logs.Len() != 1 {
		t.Errorf("want one warning with the error, got %d of %d entries: %v", warned, logs.Len(), logs.All())
	}
}

// Describe describes every desc Collect uses: a pedantic registry, which
// checks it, gathers the collectors without error.
func TestMetricsCollectorsDescribeAll(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(
		&supervisorCollector{status: func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }, log: zap.NewNop(), d: newSupervisorDescs()},
		&queueCollector{stats: metricsQueues, d: newQueueDescs()},
	)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(fams) != 11+7 {
		t.Errorf("%d families, want %d", len(fams), 11+7)
	}
}
