// Package program is the gotyledon command line as a library, and the
// entry point of every Go program that embeds gotyledon. Such a program
// declares its services on a Program, as a cotyledon program adds them to
// its ServiceManager, and calls Main: the same binary is then the manager
// (run), each of its Go workers (the manager re-executes it), and the
// operator's commands (check, status, scale, reload, queue). A YAML file
// given with --config is applied on top of what the program declares, and
// reloaded as the stock binary reloads it. The stock gotyledon binary is a
// Program that declares nothing: it runs what its --config file says.
//
//	func main() {
//		p := program.New()
//		p.Queue("jobs")
//		p.Go("producer", newProducer)
//		p.Go("printer", newPrinter, config.Workers(2))
//		os.Exit(p.Main(os.Args))
//	}
package program

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/manager"
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

// EnvStartupProbe, when set in its environment, makes Main write the
// CLOCK_MONOTONIC time at which it was called, in nanoseconds and decimal,
// then a newline, to stderr, and return ExitOK without doing anything else.
// A harness that reads the same clock just before it execs the program
// gets the program's start-up cost: exec, the Go runtime's start and every
// package's init (supervisor/BENCH.md, "Start-up").
const EnvStartupProbe = "GOTYLEDON_STARTUP_PROBE"

// writeStartupProbe writes the monotonic clock, as EnvStartupProbe says.
func writeStartupProbe(w io.Writer) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	fmt.Fprintf(w, "%d\n", ts.Nano())
}

// commandLine is the grammar of the gotyledon command.
type commandLine struct {
	Run   runCommand   `cmd:"" help:"Run the services of a configuration file in the foreground, as a systemd unit does."`
	Check checkCommand `cmd:"" help:"Validate a configuration file: exit 0 if it is good, 1 with every error if not."`
	Queue queueCommand `cmd:"" help:"Put items on, or take them from, a queue of a running manager (for shell workers)."`

	Version kong.VersionFlag `help:"Print the version and exit."`

	Status  statusCommand  `cmd:"" help:"Show a running manager's services, workers, queues and last reload."`
	Scale   scaleCommand   `cmd:"" help:"Set services' worker counts in a running manager (SERVICE=N ...), until the file's next reload."`
	Reload  reloadCommand  `cmd:"" help:"Have a running manager reload its configuration file, and say whether it could."`
	Restart restartCommand `cmd:"" help:"Replace a running service's workers (or one: SERVICE/ID) with new processes, one at a time, each once the one before is ready."`
	Top     topCommand     `cmd:"" help:"Watch a running manager live: services, workers, queues; scale, restart and reload from the keyboard (runs gotyledon-top)."`

	VersionCommand versionCommand `cmd:"" name:"version" help:"Print the version: the module's, the source revision it was built from, and Go's."`
}

type versionCommand struct{}

func (versionCommand) Run(e *env) error {
	fmt.Fprintln(e.stdout, version(e.name))
	return nil
}

// version says what this binary is: "gotyledon v1.2.3 (rev abc1234,
// modified), go1.26.8": the main module's version ("devel" for a build
// from a checkout), the VCS revision and whether the tree was clean,
// when the build recorded them, and the Go release.
func version(program string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return program + " (no build information), " + runtime.Version()
	}
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	out := program + " " + v
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		out += " (rev " + rev
		if modified == "true" {
			out += ", modified"
		}
		out += ")"
	}
	return out + ", " + info.GoVersion
}

// Program is a Go program that embeds gotyledon: the services it declares,
// the Go services it offers, and the hooks its manager calls. The zero
// value is a program that declares and offers nothing, as New returns.
// Declare services and set hooks before Main; a Program is not safe for
// concurrent use.
type Program struct {
	registry *service.Registry
	hooks    supervisor.Hooks
	decl     config.Declaration
	declared bool // something was declared: run and check need no file
}

// New returns a Program with no Go services and no hooks: the stock
// gotyledon command.
func New() *Program {
	return &Program{registry: service.NewRegistry()}
}

// Go declares a Go service called name whose workers f builds, with opts
// as a file's keys would set them (config.Workers(2), ...; one worker by
// default). It is Register and a service that runs it in one. Like
// Register, it panics on a programming error (an invalid name, a name
// registered twice); a bad option is reported by Main, with the field.
func (p *Program) Go(name string, f service.Factory, opts ...config.ServiceOption) {
	p.Register(name, f)
	p.Declaration().Service(name, append([]config.ServiceOption{config.Run(name)}, opts...)...)
}

// Command declares a command service: argv run by each of its workers,
// with opts as a file's keys would set them.
func (p *Program) Command(name string, argv []string, opts ...config.ServiceOption) {
	p.Declaration().Service(name, append([]config.ServiceOption{config.Command(argv...)}, opts...)...)
}

// Queue declares a queue of the broker (capacity 10000 unless
// config.Capacity says otherwise).
func (p *Program) Queue(name string, opts ...config.QueueOption) {
	p.Declaration().Queue(name, opts...)
}

// Declaration is what the program declares, for the settings Go, Command
// and Queue do not cover (the shutdown timeout, the sockets).
func (p *Program) Declaration() *config.Declaration {
	p.declared = true
	return &p.decl
}

// Register offers a Go service under name without declaring a service: a
// configuration file runs it with `run: NAME`. It panics on a programming
// error, as service.Registry's Register does.
func (p *Program) Register(name string, f service.Factory) { p.Registry().Register(name, f) }

// Registry is the program's registry of Go services.
func (p *Program) Registry() *service.Registry {
	if p.registry == nil {
		p.registry = service.NewRegistry()
	}
	return p.registry
}

// SetHooks has the manager call h (see supervisor.Hooks), as cotyledon's
// register_hooks.
func (p *Program) SetHooks(h supervisor.Hooks) { p.hooks = h }

// Main runs the gotyledon command line with args (os.Args) and returns the
// process exit code (ExitOK, ExitError, ExitUsage, ExitTimeout), for main
// to exit with at once: the run command does not give back the signals
// the manager handles (manager.Options.ExitAfterRun). If the
// environment marks this process as a Go worker started by a manager, it
// runs that worker instead (see service.Main). With EnvStartupProbe set,
// it only writes the time it was called and returns ExitOK (see
// EnvStartupProbe).
func (p *Program) Main(args []string) int {
	if _, ok := os.LookupEnv(EnvStartupProbe); ok {
		writeStartupProbe(os.Stderr)
		return ExitOK
	}
	if service.IsWorker() {
		return service.Main(p.Registry())
	}
	return p.main(args, os.Stdin, os.Stdout, os.Stderr)
}

// helpFor is the command whose --help explains a parse error: the
// subcommand the line had got to ("gotyledon queue put"), else the
// program.
func helpFor(program string, err error) string {
	var perr *kong.ParseError
	if !errors.As(err, &perr) || perr.Context == nil {
		return program
	}
	words := []string{program}
	for _, p := range perr.Context.Path {
		if p.Command != nil {
			words = append(words, p.Command.Name)
		}
	}
	return strings.Join(words, " ")
}

// env is what every command's Run gets: the program and its streams.
type env struct {
	*Program
	name           string // the program's name, for messages
	stdin          io.Reader
	stdout, stderr io.Writer
}

func (p *Program) main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	p.Registry() // the zero Program has none yet
	program := "gotyledon"
	if len(args) > 0 {
		program = filepath.Base(args[0])
		args = args[1:]
	}
	e := &env{Program: p, name: program, stdin: stdin, stdout: stdout, stderr: stderr}
	var cl commandLine
	// kong ends the process after printing --help; Main returns instead.
	helpShown := false
	parser, err := kong.New(&cl,
		kong.Name(program),
		kong.Vars{"version": version(program)},
		kong.Description("gotyledon runs the services of a YAML file as supervised worker processes."),
		kong.Writers(e.stdout, e.stderr),
		kong.Exit(func(int) { helpShown = true }),
	)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", program, err)
		return ExitError
	}
	kctx, err := parser.Parse(args)
	if helpShown {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v (see %s --help)\n", program, err, helpFor(program, err))
		return ExitUsage
	}
	if err := runSelected(kctx, e, &cl); err != nil {
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

// runSelected runs the command the line selected. A command whose Run
// takes the env alone is called directly: kong's Run, once the command
// has returned, looks for AfterRun hooks in every node of the command
// line by reflection, a tenth of a millisecond of the manager's stop
// (this program has none). The others get their parents bound by kong.
func runSelected(kctx *kong.Context, e *env, cl *commandLine) error {
	if node := kctx.Selected(); node != nil && node.Target.CanAddr() {
		if cmd, ok := node.Target.Addr().Interface().(interface{ Run(*env) error }); ok {
			return cmd.Run(e)
		}
	}
	return kctx.Run(e, cl)
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

// countOf says n things: "1 service", "3 services".
func countOf(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return strconv.Itoa(n) + " " + thing + "s"
}

type checkCommand struct {
	Config string `short:"c" placeholder:"FILE" help:"Configuration file to validate (applied on top of what the program declares)."`
	Strict bool   `help:"Exit 1 on warnings too (a command or dir that does not exist on this machine yet)."`
}

func (c *checkCommand) Run(e *env) error {
	cfg, err := e.load(c.Config, "check")
	if err != nil {
		return err
	}
	// What the machine lacks now may be there by the time the manager
	// runs (a program installed later): warnings, unless --strict.
	warnings := supervisor.StartProblems(cfg, os.Environ())
	if len(cfg.JetStreamQueues()) > 0 {
		if _, err := manager.FindBridge(cfg.NATS); err != nil {
			warnings = append(warnings, &config.Error{Pos: cfg.NATS.Pos, Msg: err.Error()})
		}
	}
	for _, w := range warnings {
		fmt.Fprintf(e.stdout, "%s: warning: %s\n", w.Pos, w.Msg)
	}
	if len(warnings) > 0 && c.Strict {
		return exitCode(ExitError)
	}
	workers := 0
	for _, s := range cfg.Services {
		workers += s.Workers
	}
	name := cfg.File
	if name == "" {
		name = e.name
	}
	fmt.Fprintf(e.stdout, "%s: ok (%s, %s)\n", name, countOf(len(cfg.Services), "service"), countOf(workers, "worker"))
	return nil
}

// load loads the configuration a command works on: file on top of what
// the program declares. Without a file, a program must declare something:
// then it is a usage error of command. Configuration errors are printed,
// one FILE:LINE:COL per line.
func (e *env) load(file, command string) (*config.Config, error) {
	if file == "" && !e.declared {
		return nil, usageError(command + " needs --config FILE: this program declares no services of its own")
	}
	var cfg *config.Config
	var err error
	if file == "" {
		cfg, err = e.decl.Resolve(e.registry.Names())
	} else {
		cfg, err = config.LoadOver(e.declaration(), file, e.registry.Names())
	}
	if err != nil {
		fmt.Fprintln(e.stderr, err)
		return nil, exitCode(ExitError)
	}
	return cfg, nil
}

// declaration is what the program declares, nil if nothing.
func (p *Program) declaration() *config.Declaration {
	if !p.declared {
		return nil
	}
	return &p.decl
}
