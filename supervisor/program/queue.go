package program

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// queueCommand is `gotyledon queue ...`: the queue for shell workers.
type queueCommand struct {
	Socket string          `placeholder:"PATH" help:"Queue socket. Default: $GOTYLEDON_QUEUE_SOCKET (set in every worker), else the manager's default path."`
	Put    queuePutCommand `cmd:"" help:"Put one item (DATA, or all of standard input) on a queue; --lines puts each line of standard input."`
	Get    queueGetCommand `cmd:"" help:"Take one item from a queue, print it, and acknowledge it once it is written."`
}

type queuePutCommand struct {
	Queue   string        `arg:"" help:"Queue name."`
	Data    []string      `arg:"" optional:"" help:"The item. Without it, standard input is read."`
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

// dial connects to the queue; its error says "ipc: dial PATH: ...".
func (q *queueCommand) dial(ctx context.Context) (*ipc.Client, error) {
	return ipc.Dial(ctx, q.socketPath())
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
	if len(c.Data) > 1 {
		return usageError("queue put takes one DATA argument (quote it), or none to read standard input")
	}
	if c.Lines && len(c.Data) == 1 {
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
	case len(c.Data) == 1:
		items = [][]byte{[]byte(c.Data[0])}
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
