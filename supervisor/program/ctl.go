package program

// The control commands: `gotyledon status`, `scale` and `reload`, clients
// of the manager's control socket (package supervisor/control).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// controlFlags say where the manager's control socket is.
type controlFlags struct {
	Socket string `placeholder:"PATH" help:"The manager's control socket. Default: control.socket of --config, else control.sock in the first that has one of $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/gotyledon, /run/gotyledon and /tmp/gotyledon-UID."`
	Config string `short:"c" placeholder:"FILE" help:"The manager's configuration file, to find its control socket."`
}

// answerTimeout bounds a request that the manager answers at once.
type answerTimeout struct {
	Timeout time.Duration `default:"30s" help:"How long to wait for the manager's answer."`
}

type statusCommand struct {
	controlFlags
	answerTimeout
	JSON     bool     `help:"Print the status document as JSON (schema 1: fields may be added, none changes meaning)."`
	Services []string `arg:"" optional:"" name:"SERVICE" help:"Show only these services (and no queues)."`
}

type scaleCommand struct {
	controlFlags
	answerTimeout
	Counts []string `arg:"" name:"SERVICE=N" help:"Worker counts to set, e.g. printer=5. The file's counts come back at its next reload."`
}

type reloadCommand struct {
	controlFlags
	// Timeout's default is systemd's for a reload job (TimeoutStartSec's
	// default), since the unit's ExecReload= runs this command.
	Timeout time.Duration `default:"90s" help:"How long to wait for the reload's outcome (with --no-wait, for it to be applied)."`
	NoWait  bool          `name:"no-wait" help:"Return once the file is applied, without waiting for the rolling changes it starts to complete."`
}

// client finds the control socket, or says where it looked.
func (f *controlFlags) client(e *env) (*control.Client, error) {
	if f.Socket != "" {
		return control.NewClient(f.Socket), nil
	}
	if f.Config != "" {
		cfg, err := config.LoadOver(e.declaration(), f.Config, e.registry.Names())
		if err != nil {
			return nil, fmt.Errorf("find the control socket: %w", err)
		}
		return control.NewClient(control.SocketPath(cfg, os.Getenv)), nil
	}
	// A program that declares its control socket finds it without a file.
	if path := e.declaredSocket(); path != "" {
		return control.NewClient(path), nil
	}
	path, err := control.FindSocket(os.Getenv)
	if err != nil {
		return nil, err
	}
	return control.NewClient(path), nil
}

// context bounds a request by --timeout.
func (f *answerTimeout) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), f.Timeout)
}

// explain says what a request's failure means for the person who typed
// the command.
func (f *controlFlags) explain(cl *control.Client, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from the manager on %s within --timeout; what was asked may still be done (see gotyledon status)", cl.Path())
	}
	return err
}

func (c *statusCommand) Run(e *env) error {
	cl, err := c.client(e)
	if err != nil {
		return err
	}
	ctx, cancel := c.context()
	defer cancel()
	if c.JSON && len(c.Services) == 0 {
		raw, err := cl.StatusJSON(ctx)
		if err != nil {
			return c.explain(cl, err)
		}
		_, err = e.stdout.Write(append(raw, '\n'))
		return err
	}
	doc, err := cl.Status(ctx)
	if err != nil {
		return c.explain(cl, err)
	}
	if len(c.Services) > 0 {
		if err := checkServices(doc, c.Services); err != nil {
			return err
		}
		doc.Services = slices.DeleteFunc(doc.Services, func(s control.ServiceStatus) bool { return !slices.Contains(c.Services, s.Name) })
		doc.Queues = nil
	}
	if c.JSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	}
	return printStatus(e.stdout, doc, time.Now())
}

// checkServices fails, naming the services there are, if a name in names
// is not a service of doc.
func checkServices(doc control.Status, names []string) error {
	var unknown []string
	for _, n := range names {
		if doc.Service(n) == nil {
			unknown = append(unknown, strconv.Quote(n))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	there := make([]string, len(doc.Services))
	for i, s := range doc.Services {
		there[i] = s.Name
	}
	return fmt.Errorf("no service %s (the services are %s)", strings.Join(unknown, ", "), strings.Join(there, ", "))
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
	// All or nothing: every service named must exist before any count
	// changes (a rescale itself does not fail otherwise).
	ctx, cancel := c.context()
	doc, err := cl.Status(ctx)
	cancel()
	if err != nil {
		return c.explain(cl, err)
	}
	var names []string
	for _, ch := range changes {
		names = append(names, ch.service)
	}
	if err := checkServices(doc, names); err != nil {
		return fmt.Errorf("scale: nothing changed: %w", err)
	}
	for _, ch := range changes {
		ctx, cancel := c.context() // --timeout bounds each request
		err := cl.Scale(ctx, ch.service, ch.workers)
		cancel()
		if err != nil {
			return fmt.Errorf("scale %s to %d: %w", ch.service, ch.workers, c.explain(cl, err))
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
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	if c.NoWait {
		err = cl.Reload(ctx)
	} else {
		err = cl.ReloadSettled(ctx)
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !c.NoWait {
			return fmt.Errorf("the reload did not settle within --timeout (%v): its rolling change may still be under way (see gotyledon status)", c.Timeout)
		}
		return c.explain(cl, err)
	}
	fmt.Fprintln(e.stdout, "reloaded")
	return nil
}

type restartCommand struct {
	controlFlags
	Target  string        `arg:"" name:"SERVICE[/ID]" help:"The service whose workers to replace, or one of its workers (printer/3)."`
	Timeout time.Duration `default:"90s" help:"How long to wait for the new workers to be ready (with --no-wait, for the manager's answer)."`
	NoWait  bool          `name:"no-wait" help:"Return once the workers are marked for replacement, without waiting for them."`
}

func (c *restartCommand) Run(e *env) error {
	service, id := c.Target, -1
	if name, n, ok := strings.Cut(c.Target, "/"); ok {
		var err error
		if id, err = strconv.Atoi(n); err != nil || id < 0 || name == "" {
			return exitError{code: ExitUsage, err: fmt.Errorf("restart %q: want SERVICE or SERVICE/ID, e.g. printer or printer/3", c.Target)}
		}
		service = name
	}
	cl, err := c.client(e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	if err := cl.Restart(ctx, service, id, !c.NoWait); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !c.NoWait {
			return fmt.Errorf("the restart did not settle within --timeout (%v): it may still be under way (see gotyledon status)", c.Timeout)
		}
		return c.explain(cl, err)
	}
	fmt.Fprintln(e.stdout, "restarted")
	return nil
}

// printStatus writes doc as tables: the manager, each worker, each queue.
func printStatus(w io.Writer, doc control.Status, now time.Time) error {
	state := "starting"
	switch {
	case doc.Stopping:
		state = "stopping"
	case doc.Ready:
		state = "ready"
	}
	from := "config " + doc.Config
	if doc.Config == "" {
		from = "declared by the program"
	}
	fmt.Fprintf(w, "manager pid %d, %s, up %s, %s\n", doc.PID, state, roundDuration(doc.UptimeSeconds), from)
	if r := doc.LastReload; r != nil {
		source := r.Source
		if source == "" {
			source = "library"
		}
		ago := roundDuration(now.Sub(r.At).Seconds())
		switch {
		case r.OK:
			fmt.Fprintf(w, "last reload: ok, %s ago (%s); %d ok, %d failed\n", ago, source, doc.Reloads.OK, doc.Reloads.Failed)
		case r.Halted:
			fmt.Fprintf(w, "last reload: FAILED, %s ago (%s); its rolling change halted, the service is back on its previous definition:\n  %s\n", ago, source,
				strings.ReplaceAll(r.Error, "\n", "\n  "))
		default:
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
	for _, s := range doc.Services {
		if sc := s.Schedule; sc != nil {
			next := "none comes"
			if sc.NextRunAt != nil {
				next = fmt.Sprintf("in %s (%s)", roundDuration(max(0, sc.NextRunAt.Sub(now).Seconds())), sc.NextRunAt.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "%s runs on schedule %q (%s): next run %s; %d runs, %d skipped\n", s.Name, sc.Cron, sc.TimeZone, next, sc.Runs, sc.Skipped)
		}
		for _, wt := range s.WaitingFor {
			fmt.Fprintf(w, "%s waits for %s %s: %s", s.Name, wt.Service, wt.Condition, wt.Reason)
			if wt.Failed {
				fmt.Fprintf(w, "; a reload that changes %s, or gotyledon restart %s, runs it again", wt.Service, wt.Service)
			}
			fmt.Fprintln(w)
		}
	}
	if len(doc.Queues) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tDEPTH\tIN FLIGHT\tCAPACITY\tPUT/S\tACKED/S\tREDELIVERED")
	var stores []control.QueueStatus
	for _, q := range slices.Clone(doc.Queues) {
		redelivered := q.RedeliveredTotal
		if q.Store != "" {
			stores = append(stores, q)
			redelivered = uint64(q.StoreRedelivered)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.1f\t%.1f\t%d\n", q.Name, q.Depth, q.InFlight, q.Capacity, q.PutPerSecond, q.AckedPerSecond, redelivered)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Where a queue's figures come from when its store is not the
	// manager's memory: the store's, of the queue as a whole.
	for _, q := range stores {
		if _, err := fmt.Fprintf(w, "%s: kept in %s (%s); its figures are %s's, REDELIVERED those in flight again\n", q.Name, q.Store, q.StoreState, q.Store); err != nil {
			return err
		}
	}
	return printTasks(w, doc)
}

// printTasks prints the task figures of the queues and services that have
// had tasks, if any has.
func printTasks(w io.Writer, doc control.Status) error {
	type row struct {
		kind, name string
		t          *control.TaskStatus
	}
	var rows []row
	for _, q := range doc.Queues {
		if q.Tasks != nil {
			rows = append(rows, row{"queue", q.Name, q.Tasks})
		}
	}
	for _, s := range doc.Services {
		if s.Tasks != nil {
			rows = append(rows, row{"service", s.Name, s.Tasks})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TASKS OF	SUBMITTED	RUNNING	DONE	FAILED	CANCELLED	REDELIVERED	RUNTIME P50	P99")
	for _, r := range rows {
		p50, p99 := "-", "-"
		if r.t.RuntimeCount > 0 {
			p50, p99 = roundDuration(r.t.RuntimeP50Seconds), roundDuration(r.t.RuntimeP99Seconds)
		}
		fmt.Fprintf(tw, "%s %s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.kind, r.name, r.t.Submitted, r.t.Running, r.t.Done, r.t.Failed, r.t.Cancelled, r.t.Redelivered, p50, p99)
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
