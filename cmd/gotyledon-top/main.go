// Command gotyledon-top is the live view of a running gotyledon manager
// (supervisor/control/top), a binary of its own so that the terminal
// library it links is not loaded by every gotyledon command and worker:
// `gotyledon top` finds the manager's control socket and runs it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/supervisor/control"
	"github.com/gotyledon/gotyledon/supervisor/control/top"
)

type commandLine struct {
	Socket   string        `placeholder:"PATH" help:"The manager's control socket. Default: control.sock in the first that has one of $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/gotyledon, /run/gotyledon and /tmp/gotyledon-UID (gotyledon top passes it)."`
	Once     bool          `help:"Print one frame and exit (1 if the manager does not answer): for scripts. It takes two status documents --interval apart, for CPU%."`
	Interval time.Duration `default:"1s" help:"Time between two refreshes."`
	Width    int           `help:"The frame's width with --once. Default: the terminal's, else 80."`
}

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin, stdout, stderr *os.File) int {
	var cl commandLine
	helpShown := false
	parser, err := kong.New(&cl,
		kong.Name("gotyledon top"),
		kong.Description("A live view of a running gotyledon manager: its services, workers and queues. Keys: arrows select, + and - scale, r restarts, R reloads, / filters, ? helps, q quits."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(int) { helpShown = true }),
	)
	if err != nil {
		fmt.Fprintf(stderr, "gotyledon top: %v\n", err)
		return 1
	}
	if _, err := parser.Parse(args[1:]); helpShown {
		return 0
	} else if err != nil {
		fmt.Fprintf(stderr, "gotyledon top: %v (see gotyledon top --help)\n", err)
		return 2
	}
	if cl.Interval < 100*time.Millisecond {
		fmt.Fprintln(stderr, "gotyledon top: --interval: want 100ms or more")
		return 2
	}
	var mgr top.Manager
	if cl.Socket != "" {
		mgr = control.NewClient(cl.Socket)
	} else {
		mgr = &discovered{getenv: os.Getenv}
	}
	opt := top.Options{Interval: cl.Interval}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if cl.Once {
		width := cl.Width
		if width <= 0 {
			var ok bool
			if width, ok = top.TerminalWidth(stdout); !ok {
				width = 80
			}
		}
		if err := top.Once(ctx, mgr, opt, stdout, os.Environ(), width); err != nil {
			fmt.Fprintf(stderr, "gotyledon top: %v\n", err)
			return 1
		}
		return 0
	}
	if !isTerminal(stdin) || !isTerminal(stdout) {
		fmt.Fprintln(stderr, "gotyledon top: the live view needs a terminal; --once prints one frame")
		return 2
	}
	if err := top.Run(ctx, mgr, opt, stdin, io.Writer(stdout)); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "gotyledon top: %v\n", err)
		return 1
	}
	return 0
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// discovered is the manager whose control socket FindSocket finds: looked
// for at every request until one is found, then kept until it is no
// longer there (no manager answers on it), so that the view waits for a
// manager that is not there yet and shows why it is not found (no
// socket, or one this user may not reach), and does not move to another
// manager while its own answers. Safe for concurrent use.
type discovered struct {
	getenv func(string) string
	mu     sync.Mutex
	cl     *control.Client // nil until a socket is found
}

// client returns the client of the socket found.
func (d *discovered) client() (*control.Client, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cl != nil {
		return d.cl, nil
	}
	path, err := control.FindSocket(d.getenv)
	if err != nil {
		return nil, err
	}
	d.cl = control.NewClient(path)
	return d.cl, nil
}

// done looks for the socket again at the next request if err says no
// manager answers on cl's.
func (d *discovered) done(cl *control.Client, err error) error {
	if errors.Is(err, control.ErrNoManager) {
		d.mu.Lock()
		if d.cl == cl {
			d.cl = nil
		}
		d.mu.Unlock()
	}
	return err
}

// Path is the socket found, or where it is looked for.
func (d *discovered) Path() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cl != nil {
		return d.cl.Path()
	}
	return "the default places of the control socket"
}

func (d *discovered) Status(ctx context.Context) (control.Status, error) {
	cl, err := d.client()
	if err != nil {
		return control.Status{}, err
	}
	doc, err := cl.Status(ctx)
	return doc, d.done(cl, err)
}

func (d *discovered) Scale(ctx context.Context, service string, workers int) error {
	cl, err := d.client()
	if err != nil {
		return err
	}
	return d.done(cl, cl.Scale(ctx, service, workers))
}

func (d *discovered) Restart(ctx context.Context, service string, worker int, settle bool) error {
	cl, err := d.client()
	if err != nil {
		return err
	}
	return d.done(cl, cl.Restart(ctx, service, worker, settle))
}

func (d *discovered) Reload(ctx context.Context) error {
	cl, err := d.client()
	if err != nil {
		return err
	}
	return d.done(cl, cl.Reload(ctx))
}
