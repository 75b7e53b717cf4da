package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"syscall"
)

// Client sends requests to a manager's control socket. Its methods are
// safe for concurrent use; each request is one connection.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a Client of the control socket at path. Each request
// takes the deadline of its context.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}}
}

// Path is the socket the Client talks to.
func (c *Client) Path() string { return c.path }

// Status returns the manager's status document.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// StatusJSON returns the status document as the manager wrote it, for
// those who pass it on unchanged (`gotyledon status --json`).
func (c *Client) StatusJSON(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &raw)
	return raw, err
}

// Scale sets service's worker count until the configuration's next
// reload, as Supervisor.Reconfigure does.
func (c *Client) Scale(ctx context.Context, service string, workers int) error {
	return c.do(ctx, http.MethodPost, "/v1/scale", ScaleRequest{Service: service, Workers: &workers}, nil)
}

// Reload has the manager reload its configuration file, as SIGHUP does,
// and returns once it has: nil if it was applied, an *Error whose Details
// are the FILE:LINE:COL errors if it changed nothing.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reload", nil, nil)
}

// ReloadSettled is Reload, but returns only once the reload has settled:
// nil when every worker its rolling changes replaced is ready, an *Error
// (code 422) whose Details say why if one halted and the service went
// back to its previous definition. A rolling change takes as long as its
// workers take to be ready: give ctx room for it.
func (c *Client) ReloadSettled(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reload?wait=settled", nil, nil)
}

// Restart has the manager replace service's workers (worker < 0: all of
// them) one at a time, and, with settle, returns once the new ones are
// ready: an *Error (code 422) if one failed, (404) for no such service or
// worker.
func (c *Client) Restart(ctx context.Context, service string, worker int, settle bool) error {
	req := RestartRequest{Service: service}
	if worker >= 0 {
		req.Worker = &worker
	}
	route := "/v1/restart"
	if settle {
		route += "?wait=settled"
	}
	return c.do(ctx, http.MethodPost, route, req, nil)
}

// Metrics returns the manager's metrics, GET /metrics in Prometheus's
// text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	var text []byte
	err := c.do(ctx, http.MethodGet, "/metrics", nil, &text)
	return text, err
}

// ErrNoManager is wrapped by the errors of requests that found no manager
// on the socket: nothing there, or a socket nobody accepts on.
var ErrNoManager = errors.New("no manager is running")

// Error is a request the manager refused or could not carry out.
type Error struct {
	// Code is the HTTP status: 400, 403, 404, 422 or 503 (see the
	// package comment).
	Code int
	// Message is the manager's explanation; Details, a failed reload's
	// FILE:LINE:COL errors.
	Message string
	Details []string
}

// Error is the message, then each detail on a line of its own.
func (e *Error) Error() string {
	if len(e.Details) == 0 {
		return e.Message
	}
	return e.Message + ":\n  " + strings.Join(e.Details, "\n  ")
}

// do sends one request and decodes a successful answer into out. A failed
// one comes back as an *Error with the manager's explanation.
func (c *Client) do(ctx context.Context, method, route string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gotyledon"+route, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer from the manager on %s in time; what was asked may still be done: %w", c.path, err)
		}
		return c.explainDial(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read the manager's answer on %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var body ErrorBody
		if json.Unmarshal(data, &body) != nil || body.Error == "" {
			body.Error = fmt.Sprintf("the manager answered %s", resp.Status)
		}
		return &Error{Code: resp.StatusCode, Message: body.Error, Details: body.Details}
	}
	switch out := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*out = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the manager's answer on %s: %w", c.path, err)
	}
	return nil
}

// explainDial turns a failure to reach the socket into what to do about it.
func (c *Client) explainDial(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: nothing at %s (start one with `gotyledon run`, or give --socket or --config)", ErrNoManager, c.path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %s is left from one that stopped, and nobody accepts on it", ErrNoManager, c.path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: run this as the manager's user or root, or as a member of the socket's group (control.group)", c.path)
	}
	return fmt.Errorf("reach the manager on %s: %w", c.path, err)
}
