package program

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/ipc"
)

// queueCommand is `gotyledon queue ...`: the queue for shell workers.
type queueCommand struct {
	Socket string          `placeholder:"PATH" help:"Queue socket. Default: $GOTYLEDON_QUEUE_SOCKET (set in every worker), else the manager's default path."`
	Put    queuePutCommand `cmd:"" help:"Put one item (DATA, or all of standard input) on a queue; --lines puts each line of standard input."`
	Get    queueGetCommand `cmd:"" help:"Take one item from a queue, print it, and acknowledge it once it is written."`

	Consume queueConsumeCommand `cmd:"" help:"Run a command for each item of a queue, the item on its standard input: acknowledge the item if it exits 0, put it back if not."`
	List    queueListCommand    `cmd:"" help:"List a running manager's queues: depth, items in flight, consumers, capacity (from its control socket)."`
}

// queueListCommand is `gotyledon queue list`. It asks the control socket,
// which --socket (the queue socket's) does not name: --control-socket
// and --config find it, as status's --socket and --config do.
type queueListCommand struct {
	ControlSocket string        `name:"control-socket" placeholder:"PATH" help:"The manager's control socket (default: as for gotyledon status)."`
	Config        string        `short:"c" placeholder:"FILE" help:"The manager's configuration file, to find its control socket."`
	Timeout       time.Duration `default:"30s" help:"How long to wait for the manager's answer."`
}

func (c *queueListCommand) Run(e *env) error {
	f := controlFlags{Socket: c.ControlSocket, Config: c.Config}
	cl, err := f.client(e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	doc, err := cl.Status(ctx)
	if err != nil {
		return f.explain(cl, err)
	}
	if len(doc.Queues) == 0 {
		fmt.Fprintln(e.stdout, "no queues")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tDEPTH\tIN FLIGHT\tCONSUMERS\tCAPACITY")
	for _, q := range doc.Queues {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", q.Name, q.Depth, q.InFlight, q.Consumers, q.Capacity)
	}
	return tw.Flush()
}

type queuePutCommand struct {
	Queue   string        `arg:"" help:"Queue name."`
	Data    *string       `arg:"" optional:"" help:"The item (quote it: one argument). Without it, standard input is read."`
	Lines   bool          `help:"Put each line of standard input as an item (without its newline)."`
	Timeout time.Duration `help:"How long to wait while the queue is full; 0 waits as long as it takes." default:"0"`
}

type queueGetCommand struct {
	Queue     string        `arg:"" help:"Queue name."`
	Timeout   time.Duration `help:"How long to wait for an item; 0 waits as long as it takes." default:"0"`
	NoNewline bool          `short:"n" help:"Do not print a newline after the item."`
}

// socketPath is where the queue commands connect.
func (q *queueCommand) socketPath() string {
	switch {
	case q.Socket != "":
		return q.Socket
	case os.Getenv(ipc.EnvSocket) != "":
		return os.Getenv(ipc.EnvSocket)
	}
	return ipc.DefaultSocketPath(os.Getenv)
}

// dial connects to the queue; its error says what is wrong in words a
// shell user can act on: no manager, one that is gone, no permission.
func (q *queueCommand) dial(ctx context.Context) (*ipc.Client, error) {
	path := q.socketPath()
	c, err := ipc.Dial(ctx, path)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("no manager is running: nothing at %s (start one with `gotyledon run`, or give --socket)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("no manager is running: %s is left from one that stopped, and nobody accepts on it", path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("permission denied on %s: run this as the manager's user or root, or as a member of the socket's group (broker.group)", path)
	}
	return nil, err
}

// queueContext is cancelled by SIGTERM or SIGINT (a worker being stopped
// while it waits), and ends after timeout when timeout > 0.
func queueContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	if timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	return ctx, func() { cancel(); stop() }
}

func (c *queuePutCommand) Run(e *env, q *queueCommand) error {
	if c.Lines && c.Data != nil {
		return usageError("--lines reads standard input; give no DATA with it")
	}
	ctx, cancel := queueContext(c.Timeout)
	defer cancel()
	client, err := q.dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()

	var items [][]byte
	switch {
	case c.Data != nil:
		items = [][]byte{[]byte(*c.Data)}
	case c.Lines:
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 64<<10), ipc.DefaultMaxItem)
		for sc.Scan() {
			items = append(items, append([]byte(nil), sc.Bytes()...))
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read standard input: %w", err)
		}
	default:
		data, err := io.ReadAll(e.stdin)
		if err != nil {
			return fmt.Errorf("read standard input: %w", err)
		}
		if len(data) == 0 {
			return fmt.Errorf("queue put %s: nothing to put: standard input was empty (give DATA, or pipe the item in; DATA '' puts an empty item)", c.Queue)
		}
		items = [][]byte{data}
	}
	if len(items) == 0 {
		return nil
	}
	n, err := client.PutBatch(ctx, c.Queue, items)
	if err != nil {
		return queueError(fmt.Errorf("%d of %d items queued: %w", n, len(items), err))
	}
	return nil
}

func (c *queueGetCommand) Run(e *env, q *queueCommand) error {
	ctx, cancel := queueContext(c.Timeout)
	defer cancel()
	client, err := q.dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	d, err := client.Get(ctx, c.Queue)
	if err != nil {
		return queueError(err) // it says "get from QUEUE"
	}
	out := d.Body
	if !c.NoNewline {
		out = append(out, '\n')
	}
	// The item is acknowledged only once it is written: if the reader of
	// our output is gone, it goes back to the queue for someone else (by
	// the NACK below, or, when SIGPIPE ends us first, by the broker when
	// our connection closes). The context is not the caller's: a stop
	// signal now must not lose it.
	if _, werr := e.stdout.Write(out); werr != nil {
		nerr := client.Nack(context.Background(), d)
		return errors.Join(fmt.Errorf("write the item: %w", werr), nerr)
	}
	if err := client.Ack(context.Background(), d); err != nil {
		return fmt.Errorf("acknowledge the item: %w", err)
	}
	return nil
}

// queueError gives a timeout its own exit code, so a shell loop can tell
// "nothing came" from a failure.
func queueError(err error) error {
	if errors.Is(err, ipc.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return exitError{code: ExitTimeout, err: err}
	}
	return err
}

// usageError is a wrong command line found after parsing.
func usageError(msg string) error {
	return exitError{code: ExitUsage, err: errors.New(msg)}
}

// Environment variables queue consume adds to its command's environment.
const (
	EnvConsumeQueue      = "GOTYLEDON_QUEUE"       // the queue the item came from
	EnvConsumeDeliveries = "GOTYLEDON_DELIVERIES"  // 1 the first time the item is handed out, 2 the next...
	EnvConsumeDeliveryID = "GOTYLEDON_DELIVERY_ID" // the broker's id of this delivery (a redelivery has a new one)
	EnvConsumeTask       = "GOTYLEDON_TASK"        // 1 for a task: the command's standard output is its result
)

type queueConsumeCommand struct {
	Queue   string        `arg:"" help:"Queue name."`
	Command []string      `arg:"" passthrough:"partial" placeholder:"-- CMD [ARG...]" help:"The command to run for each item, after --: exec'd directly (no shell unless you run one), with the item on its standard input."`
	Timeout time.Duration `help:"Exit 3 when no item has come for this long; 0 waits as long as it takes." default:"0"`
}

// Help is the long help of queue consume.
func (c *queueConsumeCommand) Help() string {
	return `One connection to the queue; for each item, CMD runs with the item on its
standard input, its own standard output and error being the consumer's, and
GOTYLEDON_QUEUE, GOTYLEDON_DELIVERIES (1 the first time the item is handed
out, 2 the next...) and GOTYLEDON_DELIVERY_ID added to the environment. CMD
exits 0: the item is acknowledged (gone). Any other exit, or death by a
signal: the item is put back at the head of the queue, to be handed out
again with GOTYLEDON_DELIVERIES one higher.

SIGTERM or SIGINT while waiting for an item: exit 0 at once.

When the manager drains the worker before it recycles it (max_jobs,
max_age, memory_max), the broker hands it no more items: the consumer
settles the item in hand as usual, takes no other, and waits for the stop
signal, then exits 0 (--timeout does not apply while it waits). While CMD
runs: CMD (in a process group of its own) is left to finish its item, which
is then acknowledged or put back as above, and the consumer exits 0; a
second SIGTERM or SIGINT is passed on to CMD's process group. Under a
manager, the worker's stop_timeout bounds the wait: then the manager
SIGKILLs the consumer, CMD dies with it, and the broker puts the item back.

After a failed item the consumer waits before it takes the next: 100ms,
doubling with each failure in a row up to 5s; a success resets the wait.
CMD can read GOTYLEDON_DELIVERIES to give up on an item that keeps failing
(exit 0 after saying so).

A task (an item submitted for a result, with Submit or Map) is answered
rather than acknowledged: CMD's standard output is the task's result, and
GOTYLEDON_TASK=1 is in its environment. CMD exits 0: the task is done,
with that result. Any other exit code: the task failed, its message the
exit status and the output. Death by a signal: the task is put back, as
an item is. An output longer than the queue's max_item fails the task.

Exit codes: 0 stopped by a signal; 1 an error (the queue, CMD cannot be
started); 2 a wrong command line; 3 --timeout passed with no item.`
}

func (c *queueConsumeCommand) Run(e *env, q *queueCommand) error {
	argv := c.Command
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:] // kong's passthrough keeps the "--" that ends our own arguments
	}
	if len(argv) == 0 {
		return usageError("queue consume needs a command to run for each item: queue consume QUEUE -- CMD [ARG...]")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("queue consume: %w", err)
	}

	// Signals are caught from the start, so that one that comes while we
	// connect stops us cleanly rather than kill us. The first cancels stop;
	// later ones go to forward, for the command in hand.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	stop, stopNow := context.WithCancel(context.Background())
	defer stopNow()
	forward := make(chan os.Signal, 4)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		select {
		case <-sigs:
			stopNow()
		case <-quit:
			return
		}
		for {
			select {
			case s := <-sigs:
				select {
				case forward <- s:
				default:
				}
			case <-quit:
				return
			}
		}
	}()

	client, err := q.dial(stop)
	if err != nil {
		if stop.Err() != nil {
			return nil // stopped before we were connected
		}
		return err
	}
	defer client.Close()
	cons := &consumer{
		e: e, client: client, queue: c.Queue, timeout: c.Timeout,
		path: path, argv: argv, env: consumerEnv(os.Environ()), forward: forward,
	}
	return cons.run(stop)
}

// consumer is a running queue consume.
type consumer struct {
	e       *env
	client  *ipc.Client
	queue   string
	timeout time.Duration // of each wait for an item; 0: none
	path    string        // the command, looked up once
	argv    []string
	env     []string         // the consumer's, without the variables set per item
	forward <-chan os.Signal // stop signals after the first
	backoff time.Duration    // the last pause after a failed item; 0 after a success
}

// run handles items until stop ends (nil: exit 0), the wait for one
// outlasts the timeout, or something fails. Once the broker says the
// worker drains (ErrDraining), it takes no more items and waits for stop:
// the timeout no longer applies.
func (c *consumer) run(stop context.Context) error {
	for {
		d, err := c.take(stop)
		if stop.Err() != nil {
			if err == nil {
				// Stopped as the item came: it goes back untouched.
				return c.settle(d, itemOutcome{})
			}
			return nil
		}
		if errors.Is(err, ipc.ErrDraining) {
			// The manager is about to stop this worker: it holds no
			// item (the last one was settled), takes no other, and
			// waits for the stop signal rather than exit, which would
			// look like a crash.
			fmt.Fprintf(c.e.stderr, "%s: queue consume: draining: no more items from %q; waiting for the stop signal\n", c.e.name, c.queue)
			<-stop.Done()
			return nil
		}
		if err != nil {
			return queueError(err)
		}
		out, err := c.handle(stop, d)
		if err != nil {
			// The command could not be started: it will not be for the
			// next item either, so the worker ends (and its manager
			// restarts it, with a backoff if it keeps failing).
			return errors.Join(err, c.settle(d, itemOutcome{}))
		}
		if err := c.settle(d, out); err != nil {
			return err
		}
		ok := out.ok || out.answered
		if stop.Err() != nil {
			return nil
		}
		if !c.pause(stop, ok) {
			return nil
		}
	}
}

// Pauses after failed items: a command that fails on every item (or an
// item that fails every time) must not make the consumer spin.
const (
	consumeBackoffInitial = 100 * time.Millisecond
	consumeBackoffMax     = 5 * time.Second
)

// nextConsumeBackoff is the pause after a failed item, the previous one
// having been prev (0 after a success).
func nextConsumeBackoff(prev time.Duration) time.Duration {
	return min(max(2*prev, consumeBackoffInitial), consumeBackoffMax)
}

// pause waits, after a failed item, before the next is taken: 100ms after
// the first failure in a row, doubling up to 5s; a success resets it. It
// returns false if stop ended the wait.
func (c *consumer) pause(stop context.Context, ok bool) bool {
	if ok {
		c.backoff = 0
		return true
	}
	c.backoff = nextConsumeBackoff(c.backoff)
	t := time.NewTimer(c.backoff)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop.Done():
		return false
	}
}

// take waits for the next item, at most c.timeout when set. It is the one
// place that asks the broker for items: a prefetching consumer changes
// only this function.
func (c *consumer) take(stop context.Context) (*ipc.Delivery, error) {
	ctx := stop
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(stop, c.timeout)
		defer cancel()
	}
	return c.client.Get(ctx, c.queue)
}

// itemOutcome is what became of an item's command.
type itemOutcome struct {
	ok bool // exited 0
	// A task's: answered (exited 0, or with another code), with result,
	// or failed with message.
	answered bool
	result   []byte
	message  string
}

// settle acknowledges the item when ok, and puts it back when not; a task
// answered is answered. Its context is not the consumer's: a stop must not
// leave the item in doubt.
func (c *consumer) settle(d *ipc.Delivery, out itemOutcome) error {
	switch {
	case out.answered && out.ok:
		if err := d.Reply(context.Background(), out.result); err != nil {
			return fmt.Errorf("queue consume: answer task: %w", err)
		}
		return nil
	case out.answered:
		if err := d.Fail(context.Background(), errors.New(out.message)); err != nil {
			return fmt.Errorf("queue consume: answer task: %w", err)
		}
		return nil
	}
	if out.ok {
		if err := c.client.Ack(context.Background(), d); err != nil {
			return fmt.Errorf("queue consume: acknowledge item: %w", err)
		}
		return nil
	}
	if err := c.client.Nack(context.Background(), d); err != nil {
		return fmt.Errorf("queue consume: put item back: %w", err)
	}
	return nil
}

// consumerEnv is env without the variables consume sets for each item.
func consumerEnv(env []string) []string {
	out := make([]string, 0, len(env)+3)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k != EnvConsumeQueue && k != EnvConsumeDeliveries && k != EnvConsumeDeliveryID && k != EnvConsumeTask {
			out = append(out, kv)
		}
	}
	return out
}

// handle runs the command for d and says what became of it (for a task,
// its output is the result); an error means it could not be started. The command runs in a
// process group of its own, so that a stop signal sent to the consumer's
// group (the manager's, a terminal's Ctrl-C) leaves it to finish its item;
// the consumer passes on the signals that come after the first. It dies
// with the consumer (SIGKILL as the parent-death signal).
func (c *consumer) handle(stop context.Context, d *ipc.Delivery) (itemOutcome, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return itemOutcome{}, fmt.Errorf("queue consume: %w", err)
	}
	stdout := c.e.stdout
	var result *cappedBuffer
	env := append(c.env[:len(c.env):len(c.env)],
		EnvConsumeQueue+"="+d.Queue,
		EnvConsumeDeliveries+"="+strconv.Itoa(d.Deliveries),
		EnvConsumeDeliveryID+"="+strconv.FormatUint(d.ID, 10))
	if d.Request {
		result = &cappedBuffer{max: c.client.MaxItem()}
		stdout = result
		env = append(env, EnvConsumeTask+"=1")
	}
	cmd := &exec.Cmd{
		Path:        c.path,
		Args:        c.argv,
		Env:         env,
		Stdin:       r,
		Stdout:      stdout,
		Stderr:      c.e.stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return itemOutcome{}, fmt.Errorf("queue consume: %w", err)
	}
	// The item goes in from a goroutine of its own: a command that does
	// not read it all must not stop us from waiting for it. Closing w
	// after the wait ends a write still blocked (a grandchild holds the
	// pipe and does not read).
	go func() {
		_, _ = w.Write(d.Body)
		w.Close()
	}()
	defer w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	name, pid := filepath.Base(c.path), cmd.Process.Pid
	stopping := stop.Done()
	for {
		select {
		case err := <-done:
			if result != nil {
				if out, answered := taskOutcome(name, cmd.ProcessState, err, result); answered {
					return out, nil
				}
			} else if err == nil {
				return itemOutcome{ok: true}, nil
			}
			fmt.Fprintf(c.e.stderr, "%s: queue consume: %s %s; item put back on %q (delivery %d)\n",
				c.e.name, name, exitStatus(cmd.ProcessState, err), d.Queue, d.Deliveries)
			return itemOutcome{}, nil
		case <-stopping:
			stopping = nil
			fmt.Fprintf(c.e.stderr, "%s: queue consume: stopping once %s (pid %d) has finished its item; another stop signal is passed on to it\n",
				c.e.name, name, pid)
		case s := <-c.forward:
			fmt.Fprintf(c.e.stderr, "%s: queue consume: passing %s on to %s (pid %d)\n", c.e.name, unix.SignalName(s.(syscall.Signal)), name, pid)
			_ = syscall.Kill(-pid, s.(syscall.Signal))
		}
	}
}

// exitStatus says how a command ended: "exited with code N", "was killed
// by SIGNAME", or the error of its wait.
func exitStatus(ps *os.ProcessState, err error) string {
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				return "was killed by " + unix.SignalName(ws.Signal())
			case ws.Exited() && ws.ExitStatus() != 0:
				return fmt.Sprintf("exited with code %d", ws.ExitStatus())
			}
		}
	}
	return "failed: " + err.Error()
}

// taskOutcome is a task's answer from its command's end: done with its
// output when it exited 0, failed when it exited with another code or its
// output was too long. A command killed by a signal did not answer: its
// task is put back.
func taskOutcome(name string, ps *os.ProcessState, err error, out *cappedBuffer) (itemOutcome, bool) {
	if ps == nil {
		return itemOutcome{}, false
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		return itemOutcome{}, false
	case err == nil && out.over:
		return itemOutcome{answered: true, message: fmt.Sprintf("%s wrote more than max_item (%d bytes) as its result", name, out.max)}, true
	case err == nil:
		return itemOutcome{ok: true, answered: true, result: out.buf.Bytes()}, true
	}
	msg := name + " " + exitStatus(ps, err)
	if o := strings.TrimSpace(out.buf.String()); o != "" {
		// The output is cut, not the status, when both do not fit in
		// max_item (at a character's start).
		if room := out.max - len(msg) - 2; len(o) > room {
			o = strings.ToValidUTF8(o[:max(room, 0)], "")
		}
		msg += ": " + o
	}
	return itemOutcome{answered: true, message: msg}, true
}

// cappedBuffer keeps what is written to it up to max bytes, and whether
// more came; a write never fails, so the command is not cut short.
type cappedBuffer struct {
	max  int
	buf  bytes.Buffer
	over bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.max - b.buf.Len(); n > room {
		b.over = true
		p = p[:max(room, 0)]
	}
	b.buf.Write(p)
	return n, nil
}
