package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// fullStatus has every optional part of a Status filled in.
func fullStatus(at time.Time) supervisor.Status {
	return supervisor.Status{
		Config: "/etc/gotyledon/gotyledon.yaml", StartedAt: at, Ready: true,
		Services: []supervisor.ServiceStatus{{
			Name: "printer", Desired: 5, Configured: 2, Running: 4, Backoff: 1,
			Counters:   supervisor.ServiceCounters{Restarts: 3, Exits: map[supervisor.ExitReason]uint64{supervisor.ExitError: 3}},
			WaitingFor: []supervisor.DependencyWait{{Service: "db", Condition: "ready", Reason: "worker 0 running, not ready"}},
			Schedule:   &config.Schedule{Cron: "@hourly", Location: time.UTC}, NextRunAt: at.Add(time.Hour),
			Workers: []supervisor.WorkerStatus{
				{ID: 0, State: "running", PID: 10, StartedAt: at, Usage: &supervisor.WorkerUsage{CPU: time.Second, Memory: 4096, ProcessOnly: true}},
				{ID: 1, State: "backoff", Restarts: 3, Failures: 3, LastExit: "exit code 1", LastExitAt: at, RetryAt: at.Add(time.Second)},
			},
		}},
		LastReload: &supervisor.ReloadResult{At: at, Source: supervisor.ReloadBySignal, Error: "c.yaml:1:1: bad"},
		ReloadsOK:  2, ReloadsFailed: 1,
	}
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, v any) []string {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%v is not an object", v)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// The status document is a contract with scripts: this test pins every key
// at every level. Adding a key means adding it here and in
// supervisor/README.md; renaming or removing one means a new schema number.
func TestStatusJSONSchemaIsPinned(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	tasks := ipc.TaskStats{Submitted: 3, Done: 1, Running: 1, Runtime: ipc.RuntimeStats{Count: 1, Sum: time.Second, P50: time.Second, P90: time.Second, P99: time.Second}}
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	scheduled := &ipc.ScheduledStats{Put: 3, Failed: 1, Next: []ipc.ScheduleNext{{Cron: "0 3 * * *", TimeZone: "Europe/Paris", At: time.Date(2026, 11, 26, 3, 0, 0, 0, paris)}}}
	queues := []ipc.QueueStats{{Name: "jobs", Capacity: 10, Depth: 2, InFlight: 1, Put: 7, Delivered: 5, Acked: 4, Redelivered: 1, Tasks: tasks, Scheduled: scheduled}}
	doc := NewStatus(fullStatus(at), queues, map[string]QueueRate{"jobs": {Put: 1.5, Acked: 1}}, 4242, at.Add(time.Minute))
	doc.AddServiceTasks(map[string]ipc.TaskStats{doc.Services[0].Name: tasks})
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	pinned := map[string][]string{
		"top":          {"config", "last_reload", "pid", "queues", "ready", "reloads", "rolling", "schema", "services", "started_at", "stopping", "uptime_seconds"},
		"service":      {"backoff", "completed", "configured", "desired", "exits", "name", "ready", "recycles", "restarts", "running", "schedule", "tasks", "waiting", "waiting_for", "watchdog_aborts", "workers"},
		"svc_schedule": {"cron", "next_run_at", "runs", "skipped", "time_zone"},
		"recycles":     {"max_age", "max_jobs", "memory_max"},
		"waiting_for":  {"condition", "failed", "reason", "service"},
		"exits":        {"clean", "error", "signal", "start_failed", "stopped"},
		"worker":       {"cpu_seconds", "failures", "id", "last_exit", "last_exit_at", "memory_bytes", "outdated", "pid", "ready", "restarts", "retry_at", "started_at", "state", "status_text", "uptime_seconds", "usage_of"},
		"queue":        {"acked_per_second", "acked_per_second_history", "acked_total", "capacity", "consumers", "delivered_total", "depth", "in_flight", "name", "put_per_second", "put_per_second_history", "put_total", "redelivered_total", "schedule", "tasks"},
		"schedule":     {"failed_total", "put_total", "schedules"},
		"schedules":    {"cron", "next_at", "time_zone"},
		"tasks":        {"cancelled", "done", "failed", "redelivered", "running", "runtime_count", "runtime_p50_seconds", "runtime_p90_seconds", "runtime_p99_seconds", "runtime_sum_seconds", "submitted"},
		"last_reload":  {"at", "error", "halted", "ok", "source"},
		"reloads":      {"failed", "ok"},
	}
	svc := top["services"].([]any)[0]
	got := map[string][]string{
		"top":          keysOf(t, top),
		"service":      keysOf(t, svc),
		"exits":        keysOf(t, svc.(map[string]any)["exits"]),
		"waiting_for":  keysOf(t, svc.(map[string]any)["waiting_for"].([]any)[0]),
		"recycles":     keysOf(t, svc.(map[string]any)["recycles"]),
		"svc_schedule": keysOf(t, svc.(map[string]any)["schedule"]),
		"worker":       keysOf(t, svc.(map[string]any)["workers"].([]any)[1]),
		"queue":        keysOf(t, top["queues"].([]any)[0]),
		"tasks":        keysOf(t, top["queues"].([]any)[0].(map[string]any)["tasks"]),
		"schedule":     keysOf(t, top["queues"].([]any)[0].(map[string]any)["schedule"]),
		"schedules":    keysOf(t, top["queues"].([]any)[0].(map[string]any)["schedule"].(map[string]any)["schedules"].([]any)[0]),
		"last_reload":  keysOf(t, top["last_reload"]),
		"reloads":      keysOf(t, top["reloads"]),
	}
	for level, want := range pinned {
		if !slices.Equal(got[level], want) {
			t.Errorf("%s keys %v, want %v", level, got[level], want)
		}
	}
	if top["schema"] != float64(1) || top["uptime_seconds"] != float64(60) {
		t.Errorf("schema %v, uptime %v; want 1 and 60", top["schema"], top["uptime_seconds"])
	}
	w0 := svc.(map[string]any)["workers"].([]any)[0].(map[string]any)
	if w0["retry_at"] != nil || w0["last_exit_at"] != nil || w0["started_at"] != "2026-11-25T12:00:00Z" {
		t.Errorf("worker 0 times %v %v %v; want null, null and RFC 3339", w0["retry_at"], w0["last_exit_at"], w0["started_at"])
	}
	if w0["usage_of"] != "process" || w0["cpu_seconds"] != float64(1) || top["rolling"] != "" {
		t.Errorf("worker 0 usage_of %v cpu_seconds %v, rolling %v; want process, 1 and \"\"", w0["usage_of"], w0["cpu_seconds"], top["rolling"])
	}
	if q := top["queues"].([]any)[0].(map[string]any); q["put_per_second_history"] == nil || len(q["acked_per_second_history"].([]any)) != 0 {
		t.Errorf("queue histories %v %v without samples, want []", q["put_per_second_history"], q["acked_per_second_history"])
	}
	if sc := top["queues"].([]any)[0].(map[string]any)["schedule"].(map[string]any); sc["put_total"] != float64(3) || sc["failed_total"] != float64(1) ||
		sc["schedules"].([]any)[0].(map[string]any)["next_at"] != "2026-11-26T03:00:00+01:00" {
		t.Errorf("queue schedule %v, want 3 put, 1 failed, next_at with Paris's offset", sc)
	}
	lr := top["last_reload"].(map[string]any)
	if lr["ok"] != false || lr["source"] != "SIGHUP" || lr["error"] != "c.yaml:1:1: bad" {
		t.Errorf("last reload %v", lr)
	}
	// Before the first reload and without queues: null and [], never absent.
	empty := NewStatus(supervisor.Status{}, nil, nil, 4242, at)
	b, _ = json.Marshal(empty)
	if s := string(b); !strings.Contains(s, `"last_reload":null`) || !strings.Contains(s, `"queues":[]`) || !strings.Contains(s, `"services":[]`) || !strings.Contains(s, `"started_at":null`) {
		t.Errorf("empty status %s: want null last_reload and started_at, empty lists", s)
	}
}

// fakeControl serves a Server over fakes, with peer as the caller.
func fakeControl(t *testing.T, allow bool) (*httptest.Server, *[]string) {
	t.Helper()
	var calls []string
	c := NewServer(nil, Options{
		Status: func(context.Context) (supervisor.Status, error) { return fullStatus(time.Now()), nil },
		Scale: func(_ context.Context, service string, n int) error {
			calls = append(calls, "scale "+service)
			if service != "printer" {
				return supervisor.ErrNoSuchService
			}
			return nil
		},
		Reload: func(_ context.Context, settle bool) error {
			if settle {
				calls = append(calls, "reload settled")
				return &supervisor.RolloutHaltedError{Reason: "printer worker 0 exit code 1 before ready"}
			}
			calls = append(calls, "reload")
			return config.ErrorList{{Pos: config.Position{File: "c.yaml", Line: 3, Col: 7}, Msg: "workers must be a number"}}
		},
		Allow:  func(ipc.Peer) bool { return allow },
		Logger: zap.NewNop(),
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// httptest speaks TCP: stand in a peer, as ConnContext does on the socket.
		c.handler().ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, ipc.Peer{PID: 1, UID: 1000, GID: 1000})))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func request(t *testing.T, srv *httptest.Server, method, route, body string) (int, ErrorBody) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+route, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var doc ErrorBody
	_ = json.Unmarshal(data, &doc)
	return resp.StatusCode, doc
}

func TestControlAnswers(t *testing.T) {
	srv, calls := fakeControl(t, true)
	for _, tc := range []struct {
		method, route, body string
		status              int
		errPart             string
	}{
		{"GET", "/v1/status", "", 200, ""},
		{"POST", "/v1/scale", `{"service":"printer","workers":5}`, 200, ""},
		{"POST", "/v1/scale", `{"service":"nosuch","workers":5}`, 404, "no such service"},
		{"POST", "/v1/scale", `{"service":"printer"}`, 400, `want a JSON body {"service": NAME, "workers": N}`},
		{"POST", "/v1/scale", `{"service":"printer","workers":5,"extra":1}`, 400, "want a JSON body"},
		{"POST", "/v1/scale", `not json`, 400, "want a JSON body"},
		{"POST", "/v1/reload", "", 422, "reload failed: the running services are unchanged"},
		{"POST", "/v1/reload?wait=applied", "", 422, "reload failed: the running services are unchanged"},
		{"POST", "/v1/reload?wait=settled", "", 422, "reload failed: its rolling change halted, and the service is back on its previous definition"},
		{"POST", "/v1/reload?wait=forever", "", 400, `wait="forever": want applied (the default) or settled`},
		{"GET", "/v1/scale", "", 405, ""},
		{"GET", "/nowhere", "", 404, ""},
	} {
		status, doc := request(t, srv, tc.method, tc.route, tc.body)
		if status != tc.status || !strings.Contains(doc.Error, tc.errPart) {
			t.Errorf("%s %s %s: %d %q, want %d %q", tc.method, tc.route, tc.body, status, doc.Error, tc.status, tc.errPart)
		}
		if tc.route == "/v1/reload" && (len(doc.Details) != 1 || doc.Details[0] != "c.yaml:3:7: workers must be a number") {
			t.Errorf("reload details %q, want the FILE:LINE:COL error", doc.Details)
		}
		if tc.route == "/v1/reload?wait=settled" && (len(doc.Details) != 1 || doc.Details[0] != "printer worker 0 exit code 1 before ready") {
			t.Errorf("settled reload details %q, want the halt's reason", doc.Details)
		}
	}
	if want := []string{"scale printer", "scale nosuch", "reload", "reload", "reload settled"}; !slices.Equal(*calls, want) {
		t.Errorf("calls %v, want %v", *calls, want)
	}
}

func TestControlRefusesAPeerBeforeDoingAnything(t *testing.T) {
	srv, calls := fakeControl(t, false)
	for _, route := range []string{"/v1/status", "/v1/scale", "/v1/reload", "/metrics"} {
		method := "POST"
		if route == "/v1/status" || route == "/metrics" {
			method = "GET"
		}
		status, doc := request(t, srv, method, route, `{"service":"printer","workers":5}`)
		if status != http.StatusForbidden || !strings.Contains(doc.Error, "uid 1000 may not use the control socket") {
			t.Errorf("%s %s by a refused peer: %d %q, want 403 naming the uid", method, route, status, doc.Error)
		}
	}
	if len(*calls) != 0 {
		t.Errorf("a refused peer got %v done", *calls)
	}
}

func TestQueueRatesCoverTheOldestSample(t *testing.T) {
	var r queueRates
	t0 := time.Unix(1000, 0)
	stats := func(put, acked uint64) []ipc.QueueStats {
		return []ipc.QueueStats{{Name: "jobs", Put: put, Acked: acked}}
	}
	if got := r.perSecond(stats(5, 5), t0); len(got) != 0 {
		t.Errorf("rates %v with no sample, want none", got)
	}
	r.sample(stats(0, 0), t0)
	if got := r.perSecond(stats(5, 5), t0.Add(500*time.Millisecond))["jobs"]; got.Put != 0 || got.Acked != 0 || len(got.PutHistory) != 0 {
		t.Errorf("rates %+v over half a second, want none yet", got)
	}
	for i := 1; i <= rateSamples; i++ {
		r.sample(stats(uint64(10*i), uint64(5*i)), t0.Add(time.Duration(i)*rateEvery))
	}
	// The oldest of the newest rateSamples is the first after t0: (10, 5)
	// at t0+2s.
	now := t0.Add(time.Duration(rateSamples)*rateEvery + 2*time.Second)
	got := r.perSecond(stats(10*(rateSamples+1), 5*(rateSamples+1)), now)["jobs"]
	if got.Put != 5 || got.Acked != 2.5 {
		t.Errorf("rates %+v, want put 5, acked 2.5", got)
	}
	// The history has a rate per interval since t0.
	if len(got.PutHistory) != rateSamples || got.PutHistory[0] != 5 || got.AckedHistory[rateSamples-1] != 2.5 {
		t.Errorf("history put %v acked %v, want %d intervals of 5 and 2.5", got.PutHistory, got.AckedHistory, rateSamples)
	}
}

// The history keeps a minute: historySamples samples, so one rate fewer,
// oldest first; a queue's counters going back (a queue removed and added
// again) make that interval's rate 0.
func TestQueueRatesHistoryKeepsAMinute(t *testing.T) {
	var r queueRates
	t0 := time.Unix(1000, 0)
	for i := range 2 * historySamples {
		put := uint64(i * i) // the rate grows: 2i-1 items in interval i
		if i == 2*historySamples-3 {
			put = 0 // reset
		}
		r.sample([]ipc.QueueStats{{Name: "jobs", Put: put}}, t0.Add(time.Duration(i)*time.Second))
	}
	got := r.perSecond([]ipc.QueueStats{{Name: "jobs"}}, t0.Add(2*historySamples*time.Second))["jobs"]
	// Kept: the samples i = historySamples ... 2*historySamples-1, so
	// historySamples-1 intervals, the one into the reset at 0.
	if len(got.PutHistory) != historySamples-1 || got.PutHistory[historySamples-4] != 0 {
		t.Fatalf("%d rates in the history, want %d, the third last 0: %v", len(got.PutHistory), historySamples-1, got.PutHistory)
	}
	first := float64(2*historySamples + 1) // (i+1)² - i² at i = historySamples
	if got.PutHistory[0] != first || got.PutHistory[1] != first+2 {
		t.Errorf("history %v: want it oldest first from %v, growing by 2", got.PutHistory, first)
	}
}

func TestControlClientExplainsWhatIsWrong(t *testing.T) {
	dir := t.TempDir()
	cl := NewClient(dir + "/control.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := cl.Status(ctx)
	if err == nil || !strings.Contains(err.Error(), "no manager is running: nothing at "+dir+"/control.sock") || !errors.Is(err, ErrNoManager) {
		t.Errorf("no socket: %v", err)
	}
	// A socket left by a manager that stopped: nobody accepts.
	l, err := ipc.Listen(dir+"/control.sock", -1)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	err = cl.Reload(ctx)
	if err == nil || !strings.Contains(err.Error(), "left from one that stopped") || !errors.Is(err, ErrNoManager) {
		t.Errorf("stale socket: %v", err)
	}
	var ce *Error
	if errors.As(err, &ce) {
		t.Error("a dial failure came back as the manager's answer")
	}
}

// FuzzControlRequest sends the control API arbitrary requests: it must
// answer each with one of its documented statuses, never panic, and scale
// only with a well-formed body.
func FuzzControlRequest(f *testing.F) {
	f.Add(uint8(0), "/v1/status", []byte(""))
	f.Add(uint8(1), "/v1/scale", []byte(`{"service":"printer","workers":5}`))
	f.Add(uint8(1), "/v1/scale", []byte(`{"service":"printer","workers":-5}`))
	f.Add(uint8(1), "/v1/scale", []byte(`{"service":"printer","workers":5}{}`))
	f.Add(uint8(1), "/v1/reload", []byte("x"))
	f.Add(uint8(2), "/v1/../v1/status", []byte(""))
	methods := []string{"GET", "POST", "PUT", "DELETE", "HEAD"}
	c := NewServer(nil, Options{
		Status: func(context.Context) (supervisor.Status, error) { return fullStatus(time.Now()), nil },
		Scale: func(_ context.Context, service string, n int) error {
			if service != "printer" {
				return supervisor.ErrNoSuchService
			}
			if n < 0 || n > config.MaxWorkers {
				return errors.New("bad count")
			}
			return nil
		},
		Reload: func(context.Context, bool) error { return nil },
		Allow:  func(ipc.Peer) bool { return true },
		Logger: zap.NewNop(),
	})
	h := c.handler()
	f.Fuzz(func(t *testing.T, method uint8, route string, body []byte) {
		req, err := http.NewRequest(methods[int(method)%len(methods)], "http://gotyledon/", strings.NewReader(string(body)))
		if err != nil {
			t.Skip()
		}
		req.URL.Path = "/" + strings.TrimLeft(route, "/")
		req = req.WithContext(context.WithValue(req.Context(), peerKey{}, ipc.Peer{PID: 1, UID: 0, GID: 0}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case 200, 301, 307, 308, 400, 404, 405, 413, 422, 503:
		default:
			t.Fatalf("%s %q: status %d", req.Method, req.URL.Path, w.Code)
		}
	})
}
