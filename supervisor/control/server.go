// Package control is the manager's control socket: HTTP and JSON over a
// Unix socket, so that `curl --unix-socket` works as well as the gotyledon
// commands. Server is the manager's side, Client the commands' side, and
// Status the document they exchange.
//
//	GET  /v1/status   the status document (Status)
//	POST /v1/scale    {"service": "printer", "workers": 5}
//	POST /v1/reload   reload the configuration file, as SIGHUP does, and say how it went;
//	                  with ?wait=settled, once its rolling changes are complete or halted
//	POST /v1/restart  {"service": "printer"} or {"service": "printer", "worker": 3}: replace
//	                  the workers, one at a time; with ?wait=settled, answer once done
//	GET  /metrics     Prometheus text format (package supervisor/metrics)
//
// Every connection's peer is checked (SO_PEERCRED, taken when it is
// accepted) with the same rules as the queue socket's before a request is
// acted on: a refused peer gets its headers read (at most 8 KiB) and a 403,
// nothing else. A request that fails is answered with an ErrorBody and one
// of 400 (bad request), 403 (peer not allowed), 404 (no such service), 422
// (the reload changed nothing, or its rolling change halted) or 503 (the
// manager is stopping).
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// RestartRequest is the body of POST /v1/restart: a service, and one of
// its workers (all of them without one).
type RestartRequest struct {
	Service string `json:"service"`
	Worker  *int   `json:"worker,omitempty"`
}

// ScaleRequest is the body of POST /v1/scale.
type ScaleRequest struct {
	Service string `json:"service"`
	Workers *int   `json:"workers"`
}

// ErrorBody is the body of every answer that is not a success. Details
// holds a failed reload's FILE:LINE:COL errors, one per entry.
type ErrorBody struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// Options are what a Server serves. Its collaborators are functions, so
// that a Server can be tested over a fake manager.
type Options struct {
	// Status takes a snapshot of the supervisor (Supervisor.Status).
	// Required, as are Scale and Reload.
	Status func(context.Context) (supervisor.Status, error)
	// Scale sets a service's worker count (Supervisor.Reconfigure).
	Scale func(ctx context.Context, service string, workers int) error
	// Reload asks the manager to reload its file, as SIGHUP does, and
	// returns nil once it is applied, or why it changed nothing. With
	// settle, it returns once the reload has settled instead: nil when
	// its rolling changes are complete, an error wrapping
	// supervisor.ErrRolloutHalted when one halted.
	Reload func(ctx context.Context, settle bool) error
	// Restart replaces a service's workers (worker < 0: all of them) as a
	// rolling change (Supervisor.Restart): nil once marked, or, with
	// settle, once done; an error wrapping supervisor.ErrRolloutHalted if
	// a new worker failed. Nil: no such route.
	Restart func(ctx context.Context, service string, worker int, settle bool) error
	// Queues returns the broker's figures; nil without a broker.
	Queues func() []ipc.QueueStats
	// ServiceTasks returns the task figures by service; nil without a
	// broker.
	ServiceTasks func() map[string]ipc.TaskStats
	// Allow decides whether a connected peer may use the socket. Default:
	// the manager's own user and root only.
	Allow func(ipc.Peer) bool
	// Metrics serves GET /metrics; nil: no such route.
	Metrics http.Handler
	// Logger receives that the socket listens, and (named "control")
	// refusals and scales. Default: none.
	Logger *zap.Logger
	// Path is the socket's path, for the log: the listener's own address
	// may be the temporary name it was bound under (see ipc.Listen).
	Path string
}

// Server is the actor that serves the control socket: Run is its execute
// function and Interrupt its interrupt.
type Server struct {
	l       net.Listener
	status  func(context.Context) (supervisor.Status, error)
	scale   func(ctx context.Context, service string, workers int) error
	reload  func(ctx context.Context, settle bool) error
	restart func(ctx context.Context, service string, worker int, settle bool) error
	queues  func() []ipc.QueueStats
	tasks   func() map[string]ipc.TaskStats
	allow   func(ipc.Peer) bool
	log     *zap.Logger // the manager's: for the socket itself
	reqLog  *zap.Logger // "control": for what requests did
	now     func() time.Time
	pid     int
	path    string

	rates   *queueRates
	metrics http.Handler

	quit     chan struct{} // ends the rate sampler
	quitOnce sync.Once
	mu       sync.Mutex
	server   *http.Server
}

// NewServer returns a Server of opts on l, which it closes when it is
// interrupted.
func NewServer(l net.Listener, opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	allow := opts.Allow
	if allow == nil {
		allow = ipc.AllowPeers(os.Getuid(), ipc.PeerRules{}, nil)
	}
	return &Server{
		l: l, status: opts.Status, scale: opts.Scale, reload: opts.Reload, restart: opts.Restart, queues: opts.Queues, tasks: opts.ServiceTasks,
		allow: allow, log: log, reqLog: log.Named("control"), now: time.Now, pid: os.Getpid(), path: opts.Path,
		rates: &queueRates{}, metrics: opts.Metrics, quit: make(chan struct{}),
	}
}

// peerKey carries a connection's ipc.Peer in its requests' contexts.
type peerKey struct{}

// handler routes the control API, every route behind the peer check.
func (c *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", c.serveStatus)
	mux.HandleFunc("POST /v1/scale", c.serveScale)
	mux.HandleFunc("POST /v1/reload", c.serveReload)
	if c.restart != nil {
		mux.HandleFunc("POST /v1/restart", c.serveRestart)
	}
	if c.metrics != nil {
		mux.Handle("GET /metrics", c.metrics)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(ipc.Peer)
		if !ok || !c.allow(p) {
			c.reqLog.Warn("control request refused: peer not allowed", zap.Int("uid", p.UID), zap.Int("gid", p.GID), zap.Int("pid", p.PID))
			writeJSON(w, http.StatusForbidden, ErrorBody{Error: fmt.Sprintf(
				"uid %d may not use the control socket (allowed: the manager's user, root, control.allow_uids, control.allow_gids and members of control.group)", p.UID)})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		mux.ServeHTTP(w, r)
	})
}

// Run answers on the listener until Interrupt, and samples the queues'
// rates meanwhile. It returns nil after Interrupt, an error if the listener
// fails or Run was called before.
func (c *Server) Run() error {
	c.mu.Lock()
	if c.server != nil {
		c.mu.Unlock()
		return errors.New("control server: Run called twice, or after Interrupt")
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
		ErrorLog: zap.NewStdLog(c.reqLog),
	}
	srv := c.server
	c.mu.Unlock()
	go c.rates.runSampler(c.queues, c.quit)
	c.log.Info("control socket listening", zap.String("socket", c.path))
	if err := srv.Serve(c.l); !errors.Is(err, http.ErrServerClosed) && !c.interrupted() {
		return fmt.Errorf("control socket: %w", err)
	}
	return nil
}

// interrupted reports that Interrupt has been called.
func (c *Server) interrupted() bool {
	select {
	case <-c.quit:
		return true
	default:
		return false
	}
}

// Interrupt stops serving: the listener is closed before Interrupt
// returns (nothing accepts on the socket from then on); the connections
// are closed beside it, requests in progress cut. It does not wait for
// Run to notice, as http.Server.Close would: on a loaded 2-core machine
// that wait was a third of a millisecond of the manager's stop. Safe to
// call twice, and before Run (which then fails at once, having closed the
// listener).
func (c *Server) Interrupt(error) {
	c.quitOnce.Do(func() { close(c.quit) })
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server == nil {
		c.server = &http.Server{} // a later Run fails at once
		c.l.Close()
		return
	}
	c.l.Close()
	go c.server.Close()
}

func (c *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: err.Error()})
		return
	}
	var queues []ipc.QueueStats
	if c.queues != nil {
		queues = c.queues()
	}
	now := c.now()
	doc := NewStatus(st, queues, c.rates.perSecond(queues, now), c.pid, now)
	if c.tasks != nil {
		doc.AddServiceTasks(c.tasks())
	}
	writeJSON(w, http.StatusOK, doc)
}

func (c *Server) serveScale(w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Service == "" || req.Workers == nil {
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: `want a JSON body {"service": NAME, "workers": N}`})
		return
	}
	err := c.scale(r.Context(), req.Service, *req.Workers)
	switch {
	case err == nil:
		c.reqLog.Info("scaled from the control socket", zap.String("service", req.Service), zap.Int("workers", *req.Workers))
		writeJSON(w, http.StatusOK, map[string]any{"service": req.Service, "workers": *req.Workers})
	case errors.Is(err, supervisor.ErrNoSuchService):
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: err.Error()})
	case errors.Is(err, supervisor.ErrStopped):
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: err.Error()})
	default:
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
	}
}

// waitSettled reads ?wait=: applied (the default) or settled; false and
// a 400 answered for anything else.
func waitSettled(w http.ResponseWriter, r *http.Request) (settle, ok bool) {
	switch wait := r.URL.Query().Get("wait"); wait {
	case "", "applied":
		return false, true
	case "settled":
		return true, true
	default:
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: fmt.Sprintf("wait=%q: want applied (the default) or settled", wait)})
		return false, false
	}
}

func (c *Server) serveRestart(w http.ResponseWriter, r *http.Request) {
	settle, ok := waitSettled(w, r)
	if !ok {
		return
	}
	var req RestartRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Service == "" || (req.Worker != nil && *req.Worker < 0) {
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: `want a JSON body {"service": NAME} or {"service": NAME, "worker": ID}`})
		return
	}
	id := -1
	if req.Worker != nil {
		id = *req.Worker
	}
	err := c.restart(r.Context(), req.Service, id, settle)
	switch {
	case err == nil:
		c.reqLog.Info("restart from the control socket", zap.String("service", req.Service), zap.Int("worker", id))
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case errors.Is(err, supervisor.ErrNoSuchService), errors.Is(err, supervisor.ErrNoSuchWorker):
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: err.Error()})
	case errors.Is(err, supervisor.ErrStopped):
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "the manager is stopping: " + err.Error()})
	default:
		if halted, ok := errors.AsType[*supervisor.RolloutHaltedError](err); ok {
			writeJSON(w, http.StatusUnprocessableEntity, ErrorBody{
				Error:   "restart failed: a new worker was not ready, and the service is back on its workers' previous processes where they run",
				Details: []string{halted.Reason},
			})
			return
		}
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
	}
}

func (c *Server) serveReload(w http.ResponseWriter, r *http.Request) {
	settle, ok := waitSettled(w, r)
	if !ok {
		return
	}
	err := c.reload(r.Context(), settle)
	if err == nil {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return
	}
	if halted, ok := errors.AsType[*supervisor.RolloutHaltedError](err); ok {
		writeJSON(w, http.StatusUnprocessableEntity, ErrorBody{
			Error:   "reload failed: its rolling change halted, and the service is back on its previous definition",
			Details: []string{halted.Reason},
		})
		return
	}
	if errors.Is(err, supervisor.ErrStopped) {
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "the manager is stopping: " + err.Error()})
		return
	}
	doc := ErrorBody{Error: "reload failed: the running services are unchanged"}
	var list config.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			doc.Details = append(doc.Details, e.Error())
		}
	} else {
		doc.Details = []string{err.Error()}
	}
	writeJSON(w, http.StatusUnprocessableEntity, doc)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to do
}
