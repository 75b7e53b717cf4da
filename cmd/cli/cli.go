// Package cli is the gotyledon command line. The stock gotyledon binary is a
// one-line main over it, and so is any Go program that embeds its own Go
// services: such a program registers them in a service.Registry and calls
// Main, and the same binary then serves as manager and as worker.
//
//	func main() {
//		reg := service.NewRegistry()
//		reg.Register("printer", newPrinter)
//		os.Exit(cli.Main(os.Args, reg))
//	}
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/alecthomas/kong"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor"
)

// Exit codes of Main.
const (
	ExitOK    = 0 // the command did what was asked; run: a requested shutdown completed
	ExitError = 1 // the command failed: an invalid configuration, a failed start
	ExitUsage = 2 // the command line itself is wrong
	// ExitTimeout: queue get found nothing, or queue put found the queue
	// full, within --timeout.
	ExitTimeout = 3
)

// commandLine is the grammar of the gotyledon command.
type commandLine struct {
	LogFormat string `name:"log-format" enum:"auto,console,json,journal" default:"auto" help:"Log format: console (human-readable), json (one object per line), journal (for systemd's journal: priority prefix, no timestamp), or auto (journal when stderr is the journal's stream, else console)."`
	LogLevel  string `name:"log-level" enum:"debug,info,warn,error" default:"info" help:"Least severe log level written: debug, info, warn or error."`
	LogFile   string `name:"log-file" type:"path" placeholder:"PATH" help:"Append the log to this file (created 0640) instead of stderr; SIGUSR1 reopens it, after logrotate."`

	Run   runCommand   `cmd:"" help:"Run the services of a configuration file in the foreground, as a systemd unit does."`
	Check checkCommand `cmd:"" help:"Validate a configuration file: exit 0 if it is good, 1 with every error if not."`
	Queue queueCommand `cmd:"" help:"Put items on, or take them from, a queue of a running manager (for shell workers)."`

	Status statusCommand `cmd:"" help:"Show a running manager's services, workers, queues and last reload."`
	Scale  scaleCommand  `cmd:"" help:"Set services' worker counts in a running manager (SERVICE=N ...), until the file's next reload."`
	Reload reloadCommand `cmd:"" help:"Have a running manager reload its configuration file, and say whether it could."`
}

// env is what every command's Run gets: the program's registry, options
// and streams.
type env struct {
	program        string
	registry       *service.Registry
	hooks          supervisor.Hooks
	stdin          io.Reader
	stdout, stderr io.Writer
}

// Option changes how Main runs the manager.
type Option func(*env)

// WithHooks has the manager call a program's hooks (see supervisor.Hooks),
// as cotyledon's register_hooks.
func WithHooks(h supervisor.Hooks) Option {
	return func(e *env) { e.hooks = h }
}

// Main runs the gotyledon command line with args (os.Args) and returns the
// process exit code. If the environment marks this process as a Go worker
// started by a manager, it runs that worker instead (see service.Main). reg
// holds the Go services this program offers; nil means none.
func Main(args []string, reg *service.Registry, opts ...Option) int {
	if reg == nil {
		reg = service.NewRegistry()
	}
	if service.IsWorker() {
		return service.Main(reg)
	}
	return mainWith(args, reg, os.Stdin, os.Stdout, os.Stderr, opts...)
}

func mainWith(args []string, reg *service.Registry, stdin io.Reader, stdout, stderr io.Writer, opts ...Option) int {
	program := "gotyledon"
	if len(args) > 0 {
		program = filepath.Base(args[0])
		args = args[1:]
	}
	e := &env{program: program, registry: reg, stdin: stdin, stdout: stdout, stderr: stderr}
	for _, o := range opts {
		o(e)
	}
	var cl commandLine
	// kong ends the process after printing --help; Main returns instead.
	helpShown := false
	parser, err := kong.New(&cl,
		kong.Name(program),
		kong.Description("gotyledon runs the services of a YAML file as supervised worker processes."),
		kong.Writers(e.stdout, e.stderr),
		kong.Exit(func(int) { helpShown = true }),
	)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", program, err)
		return ExitError
	}
	ctx, err := parser.Parse(args)
	if helpShown {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v (see %s --help)\n", program, err, program)
		return ExitUsage
	}
	if err := ctx.Run(e, &cl); err != nil {
		var ee exitError
		if !errors.As(err, &ee) {
			ee = exitError{code: ExitError, err: err}
		}
		if ee.err != nil {
			fmt.Fprintf(e.stderr, "%s: %v\n", program, ee)
		}
		return ee.code
	}
	return ExitOK
}

// exitError ends a command with an exit code other than ExitError, or
// without a message: err is printed unless it is nil (the command has said
// why already, as the manager does in its log).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

// exitCode is the error of a command that has already said why it failed.
func exitCode(code int) error { return exitError{code: code} }

type checkCommand struct {
	Config string `short:"c" required:"" placeholder:"FILE" help:"Configuration file to validate."`
}

func (c *checkCommand) Run(e *env) error {
	cfg, err := config.Load(c.Config, e.registry.Names())
	if err != nil {
		fmt.Fprintln(e.stderr, err)
		return exitCode(ExitError)
	}
	workers := 0
	for _, s := range cfg.Services {
		workers += s.Workers
	}
	fmt.Fprintf(e.stdout, "%s: ok (%d services, %d workers)\n", cfg.File, len(cfg.Services), workers)
	return nil
}
