package program

// `gotyledon top`: the live view. It runs in a binary of its own,
// gotyledon-top (cmd/gotyledon-top), so that the terminal library it
// links is not loaded at every start of this binary, which is every
// command's and every Go worker's: this command finds the manager's
// control socket as the other control commands do, then replaces itself
// with gotyledon-top.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/supervisor/manager"
)

// TopProgram is the name of the live view's binary, looked for next to
// this program's binary, then in $PATH.
const TopProgram = "gotyledon-top"

// ErrNoTop is wrapped by the error of `top` when gotyledon-top is not
// installed.
var ErrNoTop = errors.New(TopProgram + " is not installed")

type topCommand struct {
	controlFlags
	Once     bool          `help:"Print one frame and exit (1 if the manager does not answer): for scripts. It takes two status documents --interval apart, for CPU%."`
	Interval time.Duration `default:"1s" help:"Time between two refreshes (100ms or more)."`
	Width    int           `help:"The frame's width with --once. Default: the terminal's, else 80."`
}

func (c *topCommand) Run(e *env) error {
	if c.Interval < 100*time.Millisecond {
		return usageError("top --interval: want 100ms or more")
	}
	argv := []string{TopProgram, "--interval=" + c.Interval.String()}
	// A socket this command knows (--socket, --config, the program's
	// declaration) is passed on. Else gotyledon-top looks for one as
	// status does, and looks again while none answers: a manager started
	// after the view is found.
	if c.Socket != "" || c.Config != "" || e.declaredSocket() != "" {
		cl, err := c.client(e)
		if err != nil {
			return err
		}
		argv = append(argv, "--socket="+cl.Path())
	}
	prog, err := findTop()
	if err != nil {
		return err
	}
	if c.Once {
		argv = append(argv, "--once")
	}
	if c.Width > 0 {
		argv = append(argv, "--width="+strconv.Itoa(c.Width))
	}
	// Exec, not a child: the view owns the terminal, its signals and its
	// exit code.
	if err := unix.Exec(prog, argv, os.Environ()); err != nil {
		return fmt.Errorf("top: exec %s: %w", prog, err)
	}
	return nil // not reached
}

// declaredSocket is the control socket the program declares, "" if
// none.
func (e *env) declaredSocket() string {
	if !e.declared {
		return ""
	}
	if cfg, err := e.decl.Resolve(e.registry.Names()); err == nil {
		return cfg.Control.Socket
	}
	return ""
}

// findTop finds gotyledon-top next to this program's binary, else in
// $PATH.
func findTop() (string, error) {
	if p, ok := manager.FindCompanion(TopProgram); ok {
		return p, nil
	}
	return "", fmt.Errorf("top: %w next to this program's binary nor in $PATH (deploy/install.sh installs it; or build it: go build -o DIR/%s ./cmd/gotyledon-top)", ErrNoTop, TopProgram)
}
