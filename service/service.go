// Package service says what a gotyledon worker is.
//
// A worker is a process the manager starts and supervises. It is either a
// command service (any program, exec'd directly) or a Go service: a type
// registered by a Go program that embeds gotyledon, run in a copy of that same
// program which the manager re-executes for each worker, the way cotyledon
// forks a Python process per worker.
//
// Every worker learns who it is from its environment:
//
//	GOTYLEDON_SERVICE    the service's name in the configuration
//	GOTYLEDON_WORKER_ID  its id inside the service, 0..workers-1; a restarted
//	                     worker keeps its id
//
// A Go program registers its services in a Registry, which its
// program.Program (package supervisor/program) holds: the program's Main
// runs the manager or, when the environment says this process is a
// worker, just that worker (see Main here).
package service

import (
	"context"
	"fmt"
	"sort"
)

// Environment variables set in every worker's environment.
const (
	EnvService  = "GOTYLEDON_SERVICE"
	EnvWorkerID = "GOTYLEDON_WORKER_ID"

	// EnvRun names the registered Go service a re-executed worker must run.
	// Its presence is what marks a process as a Go worker; the worker runtime
	// removes it so the worker's own children are not taken for workers.
	EnvRun = "GOTYLEDON_RUN"
	// EnvManagerFD is the number of an inherited pipe's read end whose
	// writer only the manager holds: end of file on it means the manager is
	// gone. Removed from the environment like EnvRun.
	EnvManagerFD = "GOTYLEDON_MANAGER_FD"
	// EnvStopSignal is the signal number the manager sends to ask a Go
	// worker to stop (its service's stop_signal); the runtime cancels the
	// service's context on it as well as on SIGTERM and SIGINT.
	EnvStopSignal = "GOTYLEDON_STOP_SIGNAL"
	// EnvReloadSignal is the signal number the manager sends, on a reload
	// of its configuration, to ask a Go worker to reload in place (its
	// service's reload_signal); the runtime calls the service's Reload on
	// it. Without it, SIGHUP is the reload signal.
	EnvReloadSignal = "GOTYLEDON_RELOAD_SIGNAL"
)

// Service is a Go service: the body of one worker process.
//
// Run does the work until ctx ends, then returns. The context is cancelled
// when the manager asks the worker to stop (its stop signal, SIGTERM by
// default) or when the manager is gone, so a worker can finish the item in
// hand; a worker that does not return within its service's stop_timeout is
// killed. A nil return ends the worker with exit code 0, an error with
// exit code 1 after the error is written to stderr. Either way the manager
// starts the worker again unless it was asked to stop.
type Service interface {
	Run(ctx context.Context) error
}

// Reloader is implemented by a Service that can reload in place. The worker
// runtime calls Reload when the manager sends the worker its reload signal
// (the service's reload_signal, on each reload of the manager's
// configuration), one call at a time, while Run goes on. An error is written
// to stderr (and so logged); the worker keeps running. A Service without
// Reload ignores the reload signal rather than die of it.
type Reloader interface {
	Reload(ctx context.Context) error
}

// Func adapts a function to the Service interface.
type Func func(ctx context.Context) error

// Run calls f(ctx).
func (f Func) Run(ctx context.Context) error { return f(ctx) }

// Worker tells a Go service which worker it is.
type Worker struct {
	// Service is the service's name in the configuration.
	Service string
	// ID is the worker's id inside its service, 0..workers-1.
	ID int
	// Run is the registered name the configuration's `run:` chose; a
	// configuration may run one registered service under several names.
	Run string
	// PID is the worker's process id.
	PID int
}

// Factory builds the Service of one worker process. It runs in the worker,
// never in the manager; an error ends the worker with exit code 1.
type Factory func(w Worker) (Service, error)

// Registry holds the Go services a program offers, by name. Register every
// service before handing the registry to the command line; a Registry is
// not safe for concurrent Register calls.
type Registry struct {
	factories map[string]Factory
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{factories: make(map[string]Factory)}
}

// validName reports whether name is a valid Go service name: a letter,
// then letters, digits, "-" and "_", at most 63 bytes (the rule of
// service names in a configuration). It is a loop, not a regular
// expression: a package-level regexp.MustCompile runs in every process
// that links this package, each worker and command included, and this one
// cost about 1 ms of start-up (its {0,62} compiles into 63 copies).
func validName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '-' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// Register adds a Go service under name, which a configuration names with
// `run: NAME`. Like http.ServeMux.Handle it panics on a programming error:
// an invalid name (letters, digits, "-" and "_", starting with a letter, at
// most 63 bytes), a nil factory, or a name registered twice.
func (r *Registry) Register(name string, f Factory) {
	switch {
	case !validName(name):
		panic(fmt.Sprintf("service: invalid Go service name %q", name))
	case f == nil:
		panic(fmt.Sprintf("service: nil factory for Go service %q", name))
	case r.factories[name] != nil:
		panic(fmt.Sprintf("service: Go service %q registered twice", name))
	}
	r.factories[name] = f
}

// Lookup returns the factory registered under name.
func (r *Registry) Lookup(name string) (Factory, bool) {
	if r == nil {
		return nil, false
	}
	f, ok := r.factories[name]
	return f, ok
}

// Names returns the registered names in sorted order.
func (r *Registry) Names() []string {
	if r == nil {
		return nil
	}
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
