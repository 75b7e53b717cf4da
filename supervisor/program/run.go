package program

import (
	"context"
	"errors"
	"os"

	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/logging"
	"github.com/gotyledon/gotyledon/supervisor/manager"
)

type runCommand struct {
	Config string `short:"c" placeholder:"FILE" help:"Configuration file (YAML), applied on top of what the program declares; reloaded on SIGHUP and when it is edited."`

	// The log flags belong to run alone: the other commands print for
	// people and keep no log, so their help need not repeat these.
	LogFormat string `name:"log-format" enum:"auto,console,json,journal" default:"auto" help:"Log format: console (for people), json, journal (systemd's), or auto (journal under systemd, else console)."`
	LogLevel  string `name:"log-level" enum:"debug,info,warn,error" default:"info" help:"Least severe level logged: debug, info, warn or error."`
	LogFile   string `name:"log-file" type:"path" placeholder:"PATH" help:"Append the log to PATH instead of stderr (SIGUSR1 reopens it)."`
}

// Run is the manager: it runs until a requested shutdown has stopped every
// worker. What the manager has to say goes to its log; a failure the log
// has not told is printed too.
func (c *runCommand) Run(e *env) error {
	if c.Config == "" && !e.declared {
		return usageError("run needs --config FILE: this program declares no services of its own")
	}
	log, logFile, err := logging.New(c.LogFormat, c.LogLevel, c.LogFile, e.stderr, os.Getenv)
	if err != nil {
		return err
	}
	if logFile != nil {
		defer logFile.Close() // after the Sync below
	}
	defer log.Sync() //nolint:errcheck // nothing to do if it fails

	m, err := manager.New(manager.Options{
		ConfigFile:  c.Config,
		Declaration: e.declaration(),
		GoServices:  e.registry.Names(),
		Hooks:       e.hooks,
		Logger:      log,
		LogFile:     logFile,
		ProgramName: e.name,
		// Main's caller exits with the code it returns.
		ExitAfterRun: true,
	})
	if errors.Is(err, manager.ErrNotStarted) {
		return exitCode(ExitError) // the log says why
	}
	if err != nil {
		return err
	}
	err = m.Run(context.Background())
	// An essential service stopped the manager: exit with its code, which
	// the log has explained, so that what runs the manager (systemd's
	// Restart=, a container runtime) sees it.
	if se, ok := errors.AsType[*supervisor.ServiceExitError](err); ok {
		return exitCode(se.Code)
	}
	return err
}
