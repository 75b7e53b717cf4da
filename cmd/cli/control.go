package cli

// The control socket, server side: HTTP and JSON over a Unix socket, so that
// `curl --unix-socket` works as well as the gotyledon commands (their side
// is ctl.go).
//
//	GET  /v1/status   the status document (statusDoc; README "Status JSON")
//	POST /v1/scale    {"service": "printer", "workers": 5}
//	POST /v1/reload   reload the file, as SIGHUP does, and say how it went
//	GET  /metrics     Prometheus text format (metrics.go)
//
// Every connection's peer is checked (SO_PEERCRED, taken when it is
// accepted) with the same rules as the queue socket's before a request is
// acted on: a refused peer gets its headers read (at most 8 KiB) and a 403,
// nothing else.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// statusSchema is the version of statusDoc. It changes only when a field
// changes meaning or goes away; fields may be added within a version.
const statusSchema = 1

// statusDoc is the JSON of GET /v1/status and `gotyledon status --json`.
// Times are RFC 3339 in UTC, null when there is none; durations are
// seconds. Keep the README's "Status JSON" section in step.
type statusDoc struct {
	Schema        int          `json:"schema"`
	PID           int          `json:"pid"`
	Config        string       `json:"config"`
	StartedAt     *time.Time   `json:"started_at"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Ready         bool         `json:"ready"`
	Stopping      bool         `json:"stopping"`
	Services      []serviceDoc `json:"services"`
	Queues        []queueDoc   `json:"queues"`
	LastReload    *reloadDoc   `json:"last_reload"`
	Reloads       reloadsDoc   `json:"reloads"`
}

type serviceDoc struct {
	Name       string            `json:"name"`
	Desired    int               `json:"desired"`
	Configured int               `json:"configured"`
	Running    int               `json:"running"`
	Backoff    int               `json:"backoff"`
	Restarts   uint64            `json:"restarts"`
	Exits      map[string]uint64 `json:"exits"`
	Workers    []workerDoc       `json:"workers"`
}

type workerDoc struct {
	ID            int        `json:"id"`
	State         string     `json:"state"`
	PID           int        `json:"pid"`
	StartedAt     *time.Time `json:"started_at"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	Restarts      int        `json:"restarts"`
	Failures      int        `json:"failures"`
	LastExit      string     `json:"last_exit"`
	LastExitAt    *time.Time `json:"last_exit_at"`
	RetryAt       *time.Time `json:"retry_at"`
	Outdated      bool       `json:"outdated"`
}

type queueDoc struct {
	Name             string  `json:"name"`
	Capacity         int     `json:"capacity"`
	Depth            int     `json:"depth"`
	InFlight         int     `json:"in_flight"`
	PutTotal         uint64  `json:"put_total"`
	DeliveredTotal   uint64  `json:"delivered_total"`
	AckedTotal       uint64  `json:"acked_total"`
	RedeliveredTotal uint64  `json:"redelivered_total"`
	PutPerSecond     float64 `json:"put_per_second"`
	AckedPerSecond   float64 `json:"acked_per_second"`
}

type reloadDoc struct {
	At     time.Time `json:"at"`
	Source string    `json:"source"`
	OK     bool      `json:"ok"`
	Error  string    `json:"error"`
}

type reloadsDoc struct {
	OK     uint64 `json:"ok"`
	Failed uint64 `json:"failed"`
}

// scaleRequest is the body of POST /v1/scale.
type scaleRequest struct {
	Service string `json:"service"`
	Workers *int   `json:"workers"`
}

// errorDoc is the body of every answer that is not a success. Details
// holds a failed reload's FILE:LINE:COL errors, one per entry.
type errorDoc struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// controlServer serves the control socket. Its collaborators are
// functions, so that tests can serve it over a fake manager.
type controlServer struct {
	status func(context.Context) (supervisor.Status, error)
	scale  func(ctx context.Context, service string, workers int) error
	// reload asks the manager to reload its file, as SIGHUP does, and
	// returns nil once it is applied or why it changed nothing.
	reload func(context.Context) error
	queues func() []ipc.QueueStats // nil without a broker
	allow  func(ipc.Peer) bool
	log    *zap.Logger
	now    func() time.Time

	rates   *queueRates
	metrics http.Handler

	mu     sync.Mutex
	server *http.Server
}

// peerKey carries a connection's ipc.Peer in its requests' contexts.
type peerKey struct{}

// handler routes the control API, every route behind the peer check.
func (c *controlServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", c.serveStatus)
	mux.HandleFunc("POST /v1/scale", c.serveScale)
	mux.HandleFunc("POST /v1/reload", c.serveReload)
	if c.metrics != nil {
		mux.Handle("GET /metrics", c.metrics)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(ipc.Peer)
		if !ok || !c.allow(p) {
			c.log.Warn("control request refused: peer not allowed", zap.Int("uid", p.UID), zap.Int("gid", p.GID), zap.Int("pid", p.PID))
			writeJSON(w, http.StatusForbidden, errorDoc{Error: fmt.Sprintf(
				"uid %d may not use the control socket (allowed: the manager's user, root, control.allow_uids, control.allow_gids and members of control.group)", p.UID)})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		mux.ServeHTTP(w, r)
	})
}

// serve answers on l until close. It returns nil after close.
func (c *controlServer) serve(l net.Listener) error {
	c.mu.Lock()
	if c.server != nil {
		c.mu.Unlock()
		return errors.New("control server: serve called twice")
	}
	c.server = &http.Server{
		Handler:           c.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second, // bodies are small; a trickled one is cut
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, ipc.PeerOf(nc))
		},
		ErrorLog: zap.NewStdLog(c.log),
	}
	srv := c.server
	c.mu.Unlock()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control socket: %w", err)
	}
	return nil
}

// close stops serving: connections are closed, requests in progress cut.
// Safe to call twice, and before serve.
func (c *controlServer) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server == nil {
		c.server = &http.Server{} // a later serve fails at once
	}
	c.server.Close()
}

func (c *controlServer) serveStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorDoc{Error: err.Error()})
		return
	}
	var queues []ipc.QueueStats
	if c.queues != nil {
		queues = c.queues()
	}
	writeJSON(w, http.StatusOK, buildStatusDoc(st, queues, c.rates.perSecond(queues, c.now()), c.now()))
}

func (c *controlServer) serveScale(w http.ResponseWriter, r *http.Request) {
	var req scaleRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Service == "" || req.Workers == nil {
		writeJSON(w, http.StatusBadRequest, errorDoc{Error: `want a JSON body {"service": NAME, "workers": N}`})
		return
	}
	err := c.scale(r.Context(), req.Service, *req.Workers)
	switch {
	case err == nil:
		c.log.Info("scaled from the control socket", zap.String("service", req.Service), zap.Int("workers", *req.Workers))
		writeJSON(w, http.StatusOK, map[string]any{"service": req.Service, "workers": *req.Workers})
	case errors.Is(err, supervisor.ErrNoSuchService):
		writeJSON(w, http.StatusNotFound, errorDoc{Error: err.Error()})
	case errors.Is(err, supervisor.ErrStopped):
		writeJSON(w, http.StatusServiceUnavailable, errorDoc{Error: err.Error()})
	default:
		writeJSON(w, http.StatusBadRequest, errorDoc{Error: err.Error()})
	}
}

func (c *controlServer) serveReload(w http.ResponseWriter, r *http.Request) {
	err := c.reload(r.Context())
	if err == nil {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return
	}
	doc := errorDoc{Error: "reload failed: the running services are unchanged"}
	var list config.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			doc.Details = append(doc.Details, e.Error())
		}
	} else {
		doc.Details = []string{err.Error()}
	}
	status := http.StatusUnprocessableEntity
	if errors.Is(err, supervisor.ErrStopped) {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, doc)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to do
}

// buildStatusDoc turns a supervisor snapshot and the queues' figures into
// the status document.
func buildStatusDoc(st supervisor.Status, queues []ipc.QueueStats, rates map[string]queueRate, now time.Time) statusDoc {
	doc := statusDoc{
		Schema:   statusSchema,
		PID:      os.Getpid(),
		Config:   st.Config,
		Ready:    st.Ready,
		Stopping: st.Stopping,
		Services: []serviceDoc{},
		Queues:   []queueDoc{},
		Reloads:  reloadsDoc{OK: st.ReloadsOK, Failed: st.ReloadsFailed},
	}
	if !st.StartedAt.IsZero() {
		doc.StartedAt = timePtr(st.StartedAt)
		doc.UptimeSeconds = now.Sub(st.StartedAt).Seconds()
	}
	for _, sv := range st.Services {
		sd := serviceDoc{
			Name: sv.Name, Desired: sv.Desired, Configured: sv.Configured, Running: sv.Running, Backoff: sv.Backoff,
			Restarts: sv.Counters.Restarts, Exits: map[string]uint64{}, Workers: []workerDoc{},
		}
		for _, reason := range supervisor.ExitReasons {
			sd.Exits[string(reason)] = sv.Counters.Exits[reason]
		}
		for _, w := range sv.Workers {
			wd := workerDoc{
				ID: w.ID, State: w.State, PID: w.PID, Restarts: w.Restarts, Failures: w.Failures,
				LastExit: w.LastExit, Outdated: w.Outdated,
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
			sd.Workers = append(sd.Workers, wd)
		}
		doc.Services = append(doc.Services, sd)
	}
	for _, q := range queues {
		r := rates[q.Name]
		doc.Queues = append(doc.Queues, queueDoc{
			Name: q.Name, Capacity: q.Capacity, Depth: q.Depth, InFlight: q.InFlight,
			PutTotal: q.Put, DeliveredTotal: q.Delivered, AckedTotal: q.Acked, RedeliveredTotal: q.Redelivered,
			PutPerSecond: r.put, AckedPerSecond: r.acked,
		})
	}
	if lr := st.LastReload; lr != nil {
		doc.LastReload = &reloadDoc{At: lr.At.UTC(), Source: lr.Source, OK: lr.Error == "", Error: lr.Error}
	}
	return doc
}

func timePtr(t time.Time) *time.Time {
	u := t.UTC()
	return &u
}

// queueRates keeps recent samples of the queues' totals, so that status
// can say how fast items go in and out without the client waiting for a
// second sample.
type queueRates struct {
	mu      sync.Mutex
	samples []rateSample // oldest first, at most rateSamples
}

type rateSample struct {
	at     time.Time
	totals map[string][2]uint64 // queue → put, acked
}

const (
	// rateEvery is how often the queues are sampled; rates cover the
	// newest rateSamples samples (about 10 s).
	rateEvery   = 2 * time.Second
	rateSamples = 5
)

type queueRate struct{ put, acked float64 }

// sample records the totals of qs at now.
func (q *queueRates) sample(qs []ipc.QueueStats, now time.Time) {
	s := rateSample{at: now, totals: make(map[string][2]uint64, len(qs))}
	for _, st := range qs {
		s.totals[st.Name] = [2]uint64{st.Put, st.Acked}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.samples = append(q.samples, s)
	if len(q.samples) > rateSamples {
		q.samples = q.samples[len(q.samples)-rateSamples:]
	}
}

// perSecond returns each queue's put and ack rates between the oldest
// sample and qs, taken at now; none for a queue not in that sample or when
// the sample is less than a second old.
func (q *queueRates) perSecond(qs []ipc.QueueStats, now time.Time) map[string]queueRate {
	out := make(map[string]queueRate, len(qs))
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.samples) == 0 {
		return out
	}
	oldest := q.samples[0]
	dt := now.Sub(oldest.at).Seconds()
	if dt < 1 {
		return out
	}
	for _, st := range qs {
		if t, ok := oldest.totals[st.Name]; ok && st.Put >= t[0] && st.Acked >= t[1] {
			out[st.Name] = queueRate{put: float64(st.Put-t[0]) / dt, acked: float64(st.Acked-t[1]) / dt}
		}
	}
	return out
}

// runSampler samples queues every rateEvery until quit is closed.
func (q *queueRates) runSampler(queues func() []ipc.QueueStats, quit <-chan struct{}) {
	if queues == nil {
		return
	}
	q.sample(queues(), time.Now())
	t := time.NewTicker(rateEvery)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case now := <-t.C:
			q.sample(queues(), now)
		}
	}
}

// controlSocketPath is where the manager of cfg serves its control socket:
// control.socket, else control.sock in the default socket directory.
func controlSocketPath(cfg *config.Config, getenv func(string) string) string {
	if cfg.Control.Socket != "" {
		return cfg.Control.Socket
	}
	return filepath.Join(filepath.Dir(ipc.DefaultSocketPath(getenv)), "control.sock")
}
