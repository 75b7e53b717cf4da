package service

// This file is the worker's side of the manager/worker contract; the
// manager's side is in package supervisor (spawn.go).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// orphanGrace bounds how long a Go worker whose manager died may take to
// return from Run before it exits anyway: with nobody left to send SIGKILL,
// the worker must not outlive its manager for long.
const orphanGrace = 500 * time.Millisecond

// IsWorker reports whether the environment marks this process as a Go worker
// started by a gotyledon manager.
func IsWorker() bool {
	_, ok := os.LookupEnv(EnvRun)
	return ok
}

// Main runs this process as the Go worker its environment describes and
// returns the process exit code: 0 when the service's Run returned nil, 1 when
// it failed (the error is written to stderr, which the manager logs), 2 when
// the environment is not a valid worker environment. Call it only when
// IsWorker reports true; a program.Program's Main (package
// supervisor/program) does.
func Main(reg *Registry) int {
	w, managerFD, stopSig, reloadSig, err := workerFromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gotyledon worker: %v\n", err)
		return 2
	}
	factory, ok := reg.Lookup(w.Run)
	if !ok {
		fmt.Fprintf(os.Stderr, "%s worker %d: no Go service %q is registered in this program (it registers %v)\n",
			w.Service, w.ID, w.Run, reg.Names())
		return 2
	}

	// The reload signal is caught before anything else, so that one that
	// comes early is not the default action (for SIGHUP: death).
	reloads := make(chan os.Signal, 1)
	if reloadSig != stopSig {
		signal.Notify(reloads, reloadSig)
		defer signal.Stop(reloads)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, stopSig)
	defer stop()
	// When the manager is gone, so is the reader of our stdout and stderr:
	// a write must fail, not kill the worker before it finishes its item.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if managerFD >= 0 {
		go watchManager(managerFD, cancel)
	}

	svc, err := factory(w)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s worker %d: set up: %v\n", w.Service, w.ID, err)
		return 1
	}
	go serveReloads(ctx, w, svc, reloads)
	if r, ok := svc.(ReadyReporter); !ok || !r.ReportsReady() {
		if err := Ready(); err != nil {
			fmt.Fprintf(os.Stderr, "%s worker %d: say ready: %v\n", w.Service, w.ID, err)
		}
	}
	if err := svc.Run(ctx); err != nil && !(errors.Is(err, context.Canceled) && ctx.Err() != nil) {
		fmt.Fprintf(os.Stderr, "%s worker %d: %v\n", w.Service, w.ID, err)
		return 1
	}
	return 0
}

// serveReloads calls svc's Reload for each reload signal, one at a time,
// until ctx ends.
func serveReloads(ctx context.Context, w Worker, svc Service, reloads <-chan os.Signal) {
	r, ok := svc.(Reloader)
	for {
		select {
		case <-ctx.Done():
			return
		case <-reloads:
			if !ok {
				fmt.Fprintf(os.Stderr, "%s worker %d: reload signal ignored: the service has no Reload\n", w.Service, w.ID)
				continue
			}
			if err := r.Reload(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "%s worker %d: reload: %v\n", w.Service, w.ID, err)
			}
		}
	}
}

// workerFromEnv reads the worker's identity and removes the variables that
// must not reach the worker's own children.
func workerFromEnv() (w Worker, managerFD int, stopSig, reloadSig syscall.Signal, err error) {
	w.Run = os.Getenv(EnvRun)
	w.Service = os.Getenv(EnvService)
	w.PID = os.Getpid()
	if w.Run == "" || w.Service == "" {
		return w, -1, 0, 0, fmt.Errorf("%s and %s must both be set", EnvRun, EnvService)
	}
	if w.ID, err = strconv.Atoi(os.Getenv(EnvWorkerID)); err != nil || w.ID < 0 {
		return w, -1, 0, 0, fmt.Errorf("%s=%q is not a worker id", EnvWorkerID, os.Getenv(EnvWorkerID))
	}
	managerFD = -1
	if s, ok := os.LookupEnv(EnvManagerFD); ok {
		if managerFD, err = strconv.Atoi(s); err != nil || managerFD < 3 {
			return w, -1, 0, 0, fmt.Errorf("%s=%q is not a file descriptor", EnvManagerFD, s)
		}
		// Our own children must not keep the manager's pipe.
		syscall.CloseOnExec(managerFD)
	}
	if stopSig, err = signalFromEnv(EnvStopSignal, syscall.SIGTERM); err != nil {
		return w, -1, 0, 0, err
	}
	if reloadSig, err = signalFromEnv(EnvReloadSignal, syscall.SIGHUP); err != nil {
		return w, -1, 0, 0, err
	}
	for _, k := range []string{EnvRun, EnvManagerFD, EnvStopSignal, EnvReloadSignal} {
		os.Unsetenv(k)
	}
	return w, managerFD, stopSig, reloadSig, nil
}

// signalFromEnv reads a signal number from the variable k, or returns def
// when it is not set.
func signalFromEnv(k string, def syscall.Signal) (syscall.Signal, error) {
	s, ok := os.LookupEnv(k)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n >= 65 {
		return 0, fmt.Errorf("%s=%q is not a signal number", k, s)
	}
	return syscall.Signal(n), nil
}

// watchManager blocks until the manager's end of the pipe is closed, which
// happens only when the manager process is gone, then cancels the service and
// makes sure the worker does not linger.
func watchManager(fd int, cancel context.CancelFunc) {
	f := os.NewFile(uintptr(fd), "gotyledon-manager")
	// The manager never writes: end of file means it is gone. An error
	// means the descriptor is not the manager's pipe; then there is nothing
	// to watch, which is no reason to stop.
	if _, err := io.Copy(io.Discard, f); err != nil {
		fmt.Fprintf(os.Stderr, "gotyledon worker: cannot watch the manager on fd %d: %v\n", fd, err)
		return
	}
	fmt.Fprintln(os.Stderr, "gotyledon worker: manager is gone; stopping")
	cancel()
	time.Sleep(orphanGrace)
	os.Exit(1)
}
