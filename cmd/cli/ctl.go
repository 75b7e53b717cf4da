package cli

// The control socket, client side: `gotyledon status`, `scale` and
// `reload` (the server is control.go).

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
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gotyledon/gotyledon/config"
)

// controlFlags say where the manager's control socket is.
type controlFlags struct {
	Socket string `placeholder:"PATH" help:"The manager's control socket. Default: control.socket of --config, else control.sock in $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/gotyledon or /run/gotyledon, the first that exists."`
	Config string `short:"c" placeholder:"FILE" help:"The manager's configuration file, to find its control socket."`
	// Timeout bounds the whole request.
	Timeout time.Duration `default:"30s" help:"How long to wait for the manager's answer."`
}

type statusCommand struct {
	controlFlags
	JSON bool `help:"Print the status document as JSON (schema in the README)."`
}

type scaleCommand struct {
	controlFlags
	Counts []string `arg:"" name:"SERVICE=N" help:"Worker counts to set, e.g. printer=5. The file's counts come back at its next reload."`
}

type reloadCommand struct {
	controlFlags
}

// socketPath finds the control socket, or says where it looked.
func (f *controlFlags) socketPath(e *env) (string, error) {
	if f.Socket != "" {
		return f.Socket, nil
	}
	if f.Config != "" {
		cfg, err := config.Load(f.Config, e.registry.Names())
		if err != nil {
			return "", fmt.Errorf("find the control socket: %w", err)
		}
		return controlSocketPath(cfg, os.Getenv), nil
	}
	var tried []string
	for _, dir := range []string{firstRuntimeDir(os.Getenv("RUNTIME_DIRECTORY")), xdgDir(os.Getenv("XDG_RUNTIME_DIR")), "/run/gotyledon"} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "control.sock")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("no manager is running here: no control socket at %s (give --socket PATH, or --config FILE of the manager)", strings.Join(tried, ", "))
}

func firstRuntimeDir(v string) string { d, _, _ := strings.Cut(v, ":"); return d }

func xdgDir(v string) string {
	if v == "" {
		return ""
	}
	return filepath.Join(v, "gotyledon")
}

// controlClient sends requests to one control socket.
type controlClient struct {
	path string
	http *http.Client
}

func (f *controlFlags) client(e *env) (*controlClient, error) {
	path, err := f.socketPath(e)
	if err != nil {
		return nil, err
	}
	return &controlClient{path: path, http: &http.Client{
		Timeout: f.Timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}}, nil
}

// do sends one request and decodes a successful answer into out. A failed
// one comes back as a controlError with the manager's explanation.
func (c *controlClient) do(method, route string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://gotyledon"+route, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("no answer from the manager on %s within --timeout; what was asked may still be done (see gotyledon status)", c.path)
		}
		return c.explainDial(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read the manager's answer on %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var doc errorDoc
		if json.Unmarshal(data, &doc) != nil || doc.Error == "" {
			doc.Error = fmt.Sprintf("the manager answered %s", resp.Status)
		}
		return &controlError{status: resp.StatusCode, doc: doc}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the manager's answer on %s: %w", c.path, err)
	}
	return nil
}

// explainDial turns a failure to reach the socket into what to do about it.
func (c *controlClient) explainDial(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no manager is running: nothing at %s (start one with `gotyledon run`, or give --socket or --config)", c.path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no manager is running: %s is left from one that stopped, and nobody accepts on it", c.path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: run this as the manager's user or root, or as a member of the socket's group (control.group)", c.path)
	}
	return fmt.Errorf("reach the manager on %s: %w", c.path, err)
}

// controlError is a request the manager refused or could not carry out.
type controlError struct {
	status int
	doc    errorDoc
}

func (e *controlError) Error() string {
	if len(e.doc.Details) == 0 {
		return e.doc.Error
	}
	return e.doc.Error + ":\n  " + strings.Join(e.doc.Details, "\n  ")
}

func (c *statusCommand) Run(e *env) error {
	cl, err := c.client(e)
	if err != nil {
		return err
	}
	var doc statusDoc
	if c.JSON {
		var raw json.RawMessage
		if err := cl.do(http.MethodGet, "/v1/status", nil, &raw); err != nil {
			return err
		}
		_, err := e.stdout.Write(append(raw, '\n'))
		return err
	}
	if err := cl.do(http.MethodGet, "/v1/status", nil, &doc); err != nil {
		return err
	}
	return printStatus(e.stdout, doc, time.Now())
}

func (c *scaleCommand) Run(e *env) error {
	type change struct {
		service string
		workers int
	}
	var changes []change
	for _, arg := range c.Counts {
		name, n, ok := strings.Cut(arg, "=")
		workers, err := strconv.Atoi(n)
		if !ok || name == "" || err != nil || workers < 0 || workers > config.MaxWorkers {
			return exitError{code: ExitUsage, err: fmt.Errorf("scale %q: want SERVICE=N with N from 0 to %d, e.g. printer=5", arg, config.MaxWorkers)}
		}
		changes = append(changes, change{name, workers})
	}
	cl, err := c.client(e)
	if err != nil {
		return err
	}
	for _, ch := range changes {
		if err := cl.do(http.MethodPost, "/v1/scale", map[string]any{"service": ch.service, "workers": ch.workers}, nil); err != nil {
			return fmt.Errorf("scale %s to %d: %w", ch.service, ch.workers, err)
		}
		fmt.Fprintf(e.stdout, "%s: %d workers\n", ch.service, ch.workers)
	}
	return nil
}

func (c *reloadCommand) Run(e *env) error {
	cl, err := c.client(e)
	if err != nil {
		return err
	}
	if err := cl.do(http.MethodPost, "/v1/reload", nil, nil); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "reloaded")
	return nil
}

// printStatus writes doc as tables: the manager, each worker, each queue.
func printStatus(w io.Writer, doc statusDoc, now time.Time) error {
	state := "starting"
	switch {
	case doc.Stopping:
		state = "stopping"
	case doc.Ready:
		state = "ready"
	}
	fmt.Fprintf(w, "manager pid %d, %s, up %s, config %s\n", doc.PID, state, roundDuration(doc.UptimeSeconds), doc.Config)
	if r := doc.LastReload; r != nil {
		source := r.Source
		if source == "" {
			source = "library"
		}
		ago := roundDuration(now.Sub(r.At).Seconds())
		if r.OK {
			fmt.Fprintf(w, "last reload: ok, %s ago (%s); %d ok, %d failed\n", ago, source, doc.Reloads.OK, doc.Reloads.Failed)
		} else {
			fmt.Fprintf(w, "last reload: FAILED, %s ago (%s); the running services are unchanged:\n  %s\n", ago, source,
				strings.ReplaceAll(r.Error, "\n", "\n  "))
		}
	} else {
		fmt.Fprintln(w, "last reload: none")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tWORKERS\tID\tSTATE\tPID\tUPTIME\tRESTARTS\tLAST EXIT\tBACKOFF")
	for _, s := range doc.Services {
		count := fmt.Sprintf("%d/%d", s.Running, s.Desired)
		if s.Configured != s.Desired {
			count += fmt.Sprintf(" (file: %d)", s.Configured)
		}
		if len(s.Workers) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t%d\t-\t-\n", s.Name, count, s.Restarts)
		}
		for i, wk := range s.Workers {
			name, c := s.Name, count
			if i > 0 {
				name, c = "", ""
			}
			pid, uptime, lastExit, backoff := "-", "-", "-", "-"
			if wk.PID != 0 {
				pid = strconv.Itoa(wk.PID)
			}
			if wk.StartedAt != nil {
				uptime = roundDuration(wk.UptimeSeconds)
			}
			if wk.LastExit != "" {
				lastExit = wk.LastExit
				if wk.LastExitAt != nil {
					lastExit += ", " + roundDuration(now.Sub(*wk.LastExitAt).Seconds()) + " ago"
				}
			}
			if wk.RetryAt != nil {
				backoff = fmt.Sprintf("retry in %s (%d failures)", roundDuration(max(0, wk.RetryAt.Sub(now).Seconds())), wk.Failures)
			}
			st := wk.State
			if wk.Outdated {
				st += " (outdated)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", name, c, wk.ID, st, pid, uptime, wk.Restarts, lastExit, backoff)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(doc.Queues) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tDEPTH\tIN FLIGHT\tCAPACITY\tPUT/S\tACKED/S\tREDELIVERED")
	for _, q := range slices.Clone(doc.Queues) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.1f\t%.1f\t%d\n", q.Name, q.Depth, q.InFlight, q.Capacity, q.PutPerSecond, q.AckedPerSecond, q.RedeliveredTotal)
	}
	return tw.Flush()
}

// roundDuration prints seconds as a short duration: 3m2s, 1.5s, 250ms.
func roundDuration(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}
