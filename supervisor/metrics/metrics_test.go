package metrics

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
				Name: "web", Desired: 4, Configured: 3, Running: 2, Ready: 1, Backoff: 1, Completed: 5,
				Counters: supervisor.ServiceCounters{Restarts: 7, Exits: map[supervisor.ExitReason]uint64{
					supervisor.ExitStopped: 11, supervisor.ExitError: 5, supervisor.ExitSignal: 2,
				}, WatchdogAborts: 2},
				// One worker with a cgroup, one without a process, one
				// without a cgroup (its process's own figures).
				Workers: []supervisor.WorkerStatus{
					{ID: 0, State: "running", Usage: &supervisor.WorkerUsage{CPU: 1500 * time.Millisecond, Memory: 2 << 20}},
					{ID: 1, State: "backoff"},
					{ID: 2, State: "running", Usage: &supervisor.WorkerUsage{CPU: time.Second, Memory: 1 << 20, ProcessOnly: true}},
				},
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
		{Name: "jobs", Capacity: 100, Depth: 12, InFlight: 3, Put: 1000, Delivered: 990, Acked: 985, Redelivered: 4,
			Scheduled: &ipc.ScheduledStats{Put: 24, Failed: 1}},
		{Name: "mail", Capacity: 10000},
		{Name: "durable", Capacity: 500, Depth: 7, Put: 20, Forwarded: true, Store: "jetstream", StoreState: "reconnecting",
			Scheduled: &ipc.ScheduledStats{Put: 2}},
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
		{"gotyledon_workers_ready", gauge, []string{"service", "web"}, 1},
		{"gotyledon_worker_restarts_total", counter, []string{"service", "web"}, 7},
		{"gotyledon_worker_watchdog_aborts_total", counter, []string{"service", "web"}, 2},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "stopped"}, 11},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "clean"}, 0},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "error"}, 5},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "signal"}, 2},
		{"gotyledon_worker_exits_total", counter, []string{"service", "web", "reason", "start_failed"}, 0},

		{"gotyledon_workers_desired", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_configured", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_running", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_backoff", gauge, []string{"service", "old"}, 0},
		{"gotyledon_workers_ready", gauge, []string{"service", "old"}, 0},
		{"gotyledon_worker_restarts_total", counter, []string{"service", "old"}, 0},
		{"gotyledon_worker_watchdog_aborts_total", counter, []string{"service", "old"}, 0},

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
		{"gotyledon_queue_scheduled_put_total", counter, []string{"queue", "jobs"}, 24},
		{"gotyledon_queue_scheduled_failed_total", counter, []string{"queue", "jobs"}, 1},
		{"gotyledon_queue_scheduled_put_total", counter, []string{"queue", "durable"}, 2},
		{"gotyledon_queue_capacity", gauge, []string{"queue", "durable"}, 500},
		{"gotyledon_queue_store_up", gauge, []string{"queue", "durable", "store", "jetstream"}, 0},
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
	// Exactly the series of two queues, of the one kept in JetStream its
	// capacity and its store (its store does not answer: its figures are
	// unknown, not 0), the scheduled puts of two queues (counted by the
	// manager, known whatever the store says), and two services, nothing more: a worker's CPU and
	// memory only where it has a cgroup (web's worker 0, not 2).
	metricValue(t, fams, "gotyledon_worker_cpu_seconds_total", counter, "service", "web", "worker", "0")
	for prefix, want := range map[string]int{"gotyledon_queue_": 2*7 + 2 + 2*2, "gotyledon_worker": 2*(7+2+len(supervisor.ExitReasons)+len(supervisor.RecycleReasons)) + 2} {
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
	if seriesCount(fams, "gotyledon_queue_") != 2*7+2+2*2 {
		t.Errorf("queue series missing:\n%s", body)
	}
	metricValue(t, fams, "go_goroutines", dto.MetricType_GAUGE)
	metricValue(t, fams, "process_open_fds", dto.MetricType_GAUGE)

	warned := logs.FilterLevelExact(zapcore.WarnLevel).FilterField(zap.Error(errors.New("status: context deadline exceeded"))).Len()
	if warned != 1 || logs.Len() != 1 {
		t.Errorf("want one warning with the error, got %d of %d entries: %v", warned, logs.Len(), logs.All())
	}
}

// The gotyledon_* part of a scrape is, byte for byte, what Prometheus's Go
// client served before this writer replaced it (testdata/scrape.golden was
// written by the client's registry and promhttp handler, from the same
// Status and queue stats): names, help, types, labels, order and numbers.
// The families added since (gotyledon_workers_ready,
// gotyledon_worker_watchdog_aborts_total, gotyledon_worker_cpu_seconds_total,
// gotyledon_worker_memory_bytes, gotyledon_queue_store_up,
// gotyledon_workers_completed, gotyledon_queue_scheduled_put_total,
// gotyledon_queue_scheduled_failed_total, gotyledon_workers_waiting,
// gotyledon_worker_recycles_total, and the series
// of a queue kept in JetStream), and the help of
// gotyledon_reloads_total since halted rollouts count as failed, were
// written into it by hand, in the same format; promlint checks them
// (TestMetricsValues).
func TestMetricsAsTheGoClientWroteThem(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }
	_, body := scrapeMetrics(t, NewHandler(status, metricsQueues, zap.NewNop()))
	want, err := os.ReadFile("testdata/scrape.golden")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.SplitAfter(body, "\n") {
		if strings.HasPrefix(l, "gotyledon_") || strings.HasPrefix(l, "# HELP gotyledon_") || strings.HasPrefix(l, "# TYPE gotyledon_") {
			got = append(got, l)
		}
	}
	if g := strings.Join(got, ""); g != string(want) {
		t.Errorf("the gotyledon_* families differ from testdata/scrape.golden:\n%s", lineDiff(string(want), g))
	}
}

// The go_* and process_* families kept from the Go client's collectors
// have its names, help and types (testdata/runtime-families.golden, written
// by the client), and nothing else is served under those prefixes.
func TestMetricsRuntimeFamiliesAsTheGoClients(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }
	fams, body := scrapeMetrics(t, NewHandler(status, nil, zap.NewNop()))
	want, err := os.ReadFile("testdata/runtime-families.golden")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.SplitAfter(body, "\n") {
		if strings.HasPrefix(l, "# HELP go_") || strings.HasPrefix(l, "# TYPE go_") ||
			strings.HasPrefix(l, "# HELP process_") || strings.HasPrefix(l, "# TYPE process_") {
			got = append(got, l)
		}
	}
	if g := strings.Join(got, ""); g != string(want) {
		t.Errorf("the go_* and process_* families differ from testdata/runtime-families.golden:\n%s", lineDiff(string(want), g))
	}

	const gauge, counter = dto.MetricType_GAUGE, dto.MetricType_COUNTER
	now := float64(time.Now().Unix())
	if v := metricValue(t, fams, "process_start_time_seconds", gauge); v > now+1 || v < now-24*3600 {
		t.Errorf("process_start_time_seconds = %v, now is %v", v, now)
	}
	for _, name := range []string{"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_max_fds", "process_open_fds", "go_memstats_sys_bytes", "go_threads", "go_sched_gomaxprocs_threads"} {
		if v := metricValue(t, fams, name, gauge); v < 1 {
			t.Errorf("%s = %v", name, v)
		}
	}
	if v := metricValue(t, fams, "process_cpu_seconds_total", counter); v < 0 {
		t.Errorf("process_cpu_seconds_total = %v", v)
	}
	if v := metricValue(t, fams, "go_info", gauge, "version", runtime.Version()); v != 1 {
		t.Errorf("go_info = %v", v)
	}
	s := fams["go_gc_duration_seconds"]
	if s.GetType() != dto.MetricType_SUMMARY || len(s.Metric) != 1 || len(s.Metric[0].GetSummary().GetQuantile()) != 5 {
		t.Errorf("go_gc_duration_seconds: %v", s)
	}
}

// lineDiff lists the lines of want missing from got, and the reverse.
func lineDiff(want, got string) string {
	in := func(lines []string, l string) bool { return slices.Contains(lines, l) }
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var sb strings.Builder
	for _, l := range w {
		if !in(g, l) {
			fmt.Fprintf(&sb, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !in(w, l) {
			fmt.Fprintf(&sb, "+ %s\n", l)
		}
	}
	if sb.Len() == 0 {
		return "(the same lines, in another order)"
	}
	return sb.String()
}

// At most 4 scrapes are served at once: a fifth gets 503 at once, and the
// four are answered once the supervisor does.
func TestMetricsServesFourScrapesAtOnce(t *testing.T) {
	inside := make(chan struct{}, 8)
	release := make(chan struct{})
	status := func(context.Context) (supervisor.Status, error) {
		inside <- struct{}{}
		<-release
		return metricsStatus(), nil
	}
	srv := httptest.NewServer(NewHandler(status, nil, zap.NewNop()))
	defer srv.Close()
	codes := make(chan int, 4)
	for range 4 {
		go func() {
			resp, err := http.Get(srv.URL)
			if err != nil {
				codes <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range 4 {
		select {
		case <-inside:
		case <-time.After(10 * time.Second):
			t.Fatal("four scrapes did not all reach the supervisor")
		}
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "Limit of concurrent requests reached (4)") {
		t.Errorf("a fifth scrape: %d %q, want 503", resp.StatusCode, body)
	}
	close(release)
	for range 4 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("a scrape answered %d, want 200", c)
		}
	}
}

// A scraper that accepts gzip (Prometheus does) gets the text gzipped.
func TestMetricsGzip(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }
	srv := httptest.NewServer(NewHandler(status, metricsQueues, zap.NewNop()))
	defer srv.Close()
	for _, tc := range []struct {
		accept string
		gzip   bool
	}{{"gzip", true}, {"identity, gzip;q=0.5", true}, {"gzip;q=0", false}, {"", false}, {"br", false}} {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		if tc.accept != "" {
			req.Header.Set("Accept-Encoding", tc.accept)
		}
		// A Transport that does not ask for gzip itself, nor undo it.
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("Content-Encoding") == "gzip"; got != tc.gzip {
			t.Errorf("Accept-Encoding %q: gzipped %v, want %v", tc.accept, got, tc.gzip)
			continue
		}
		if tc.gzip {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if !strings.Contains(string(body), "gotyledon_queue_depth{queue=\"jobs\"} 12\n") {
			t.Errorf("Accept-Encoding %q: body %q", tc.accept, body)
		}
	}
}

// Label values and help are escaped as the format says, numbers written as
// Prometheus's parser reads them.
func TestTextFormat(t *testing.T) {
	f := &family{desc: newDesc("x_total", "Help with a \\ and a\nnewline.", counterType, "b", "a")}
	f.add(1, `quote " back \ new`+"\n"+`line`, "z")
	f.add(math.Inf(1), "a", "y")
	f.add(1.5e-7, "a", "x")
	g := &family{desc: newDesc("a_gauge", "Gauge.", gaugeType)}
	g.add(math.NaN())
	empty := &family{desc: newDesc("empty", "No series: not written.", gaugeType)}
	var buf bytes.Buffer
	if err := writeText(&buf, []*family{f, g, empty}); err != nil {
		t.Fatal(err)
	}
	want := `# HELP a_gauge Gauge.
# TYPE a_gauge gauge
a_gauge NaN
# HELP x_total Help with a \\ and a\nnewline.
# TYPE x_total counter
x_total{a="x",b="a"} 1.5e-07
x_total{a="y",b="a"} +Inf
x_total{a="z",b="quote \" back \\ new\nline"} 1
`
	if buf.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	if h := fams["x_total"].GetHelp(); h != "Help with a \\ and a\nnewline." {
		t.Errorf("help read back: %q", h)
	}
	for _, m := range fams["x_total"].Metric {
		for _, l := range m.Label {
			if l.GetName() == "b" && l.GetValue() != "a" && l.GetValue() != "quote \" back \\ new\nline" {
				t.Errorf("label read back: %q", l.GetValue())
			}
		}
	}
}

// Task figures: a queue's once it has had a task, and a service's, as
// counters, a gauge and a summary, which Prometheus's parser and linter
// take.
func TestMetricsTasks(t *testing.T) {
	status := func(context.Context) (supervisor.Status, error) { return metricsStatus(), nil }
	tasks := ipc.TaskStats{Submitted: 9, Running: 2, Done: 4, Failed: 1, Cancelled: 2, Redelivered: 3,
		Runtime: ipc.RuntimeStats{Count: 5, Sum: 2500 * time.Millisecond, P50: 400 * time.Millisecond, P90: 900 * time.Millisecond, P99: time.Second}}
	queues := func() []ipc.QueueStats {
		return []ipc.QueueStats{{Name: "compute", Capacity: 10, Tasks: tasks}, {Name: "plain", Capacity: 10}}
	}
	svc := func() map[string]ipc.TaskStats { return map[string]ipc.TaskStats{"web": tasks} }
	fams, body := scrapeMetrics(t, NewHandler(status, queues, zap.NewNop(), WithServiceTasks(svc)))
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "gotyledon_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	for _, by := range []struct{ label, name string }{{"queue", "compute"}, {"service", "web"}} {
		prefix := "gotyledon_" + by.label + "_tasks_"
		for _, c := range []struct {
			name   string
			typ    dto.MetricType
			labels []string
			want   float64
		}{
			{prefix + "submitted_total", dto.MetricType_COUNTER, nil, 9},
			{prefix + "running", dto.MetricType_GAUGE, nil, 2},
			{prefix + "total", dto.MetricType_COUNTER, []string{"outcome", "done"}, 4},
			{prefix + "total", dto.MetricType_COUNTER, []string{"outcome", "failed"}, 1},
			{prefix + "total", dto.MetricType_COUNTER, []string{"outcome", "cancelled"}, 2},
			{prefix + "redelivered_total", dto.MetricType_COUNTER, nil, 3},
		} {
			if v := metricValue(t, fams, c.name, c.typ, append([]string{by.label, by.name}, c.labels...)...); v != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
			}
		}
		rt := fams["gotyledon_"+by.label+"_task_runtime_seconds"]
		if rt == nil || rt.GetType() != dto.MetricType_SUMMARY || len(rt.Metric) != 1 {
			t.Fatalf("%s runtime: %v", by.label, rt)
		}
		s := rt.Metric[0].GetSummary()
		if s.GetSampleCount() != 5 || s.GetSampleSum() != 2.5 || len(s.Quantile) != 3 || s.Quantile[1].GetQuantile() != 0.9 || s.Quantile[1].GetValue() != 0.9 {
			t.Errorf("%s runtime summary %v", by.label, s)
		}
	}
	if strings.Contains(body, `_tasks_submitted_total{queue="plain"}`) {
		t.Errorf("a queue without tasks has task series:\n%s", body)
	}
}
