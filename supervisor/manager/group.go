package manager

import (
	"sync"
	"sync/atomic"

	"github.com/oklog/run"
)

// actorGroup runs the manager's actors as one run.Group: each is an
// execute function and an interrupt, and the first execute to return has
// every interrupt called, which ends the others.
//
// With exitEarly (Options.ExitAfterRun), Run returns as soon as the
// process may exit, not once every execute has returned: when every
// interrupt has been called (each closes what its actor serves, its
// socket say) and every execute added with AddAwaited has returned. The
// other actors' goroutines end with the process. Waiting for each to be
// scheduled and return, and for the group to collect them, was a few
// tenths of a millisecond of the manager's stop on a 2-core machine.
type actorGroup struct {
	g         run.Group
	exitEarly bool
	// pending counts the interrupts not yet called and the awaited
	// executes not yet returned; exitable is closed when it reaches zero.
	pending  atomic.Int32
	exitable chan struct{}
	// first is the group's error: the one the interrupts are called with,
	// the first execute's to return.
	firstOnce sync.Once
	first     error
}

func newActorGroup(exitEarly bool) *actorGroup {
	return &actorGroup{exitEarly: exitEarly, exitable: make(chan struct{})}
}

// Add adds an actor. Call it before Run.
func (a *actorGroup) Add(execute func() error, interrupt func(error)) {
	a.add(execute, interrupt, false)
}

// AddAwaited adds an actor whose execute Run waits for even with
// exitEarly: one whose return value Run's caller needs, or whose end
// releases what outlives the process (a cgroup). Call it before Run.
func (a *actorGroup) AddAwaited(execute func() error, interrupt func(error)) {
	a.add(execute, interrupt, true)
}

func (a *actorGroup) add(execute func() error, interrupt func(error), awaited bool) {
	if !a.exitEarly {
		a.g.Add(execute, interrupt)
		return
	}
	a.pending.Add(1)
	if awaited {
		a.pending.Add(1)
	}
	a.g.Add(func() error {
		err := execute()
		if awaited {
			a.done()
		}
		return err
	}, func(err error) {
		a.firstOnce.Do(func() { a.first = err })
		interrupt(err)
		a.done()
	})
}

func (a *actorGroup) done() {
	if a.pending.Add(-1) == 0 {
		close(a.exitable)
	}
}

// Run runs the actors until the first returns and returns its error, once
// every other has returned too, or, with exitEarly, once the process may
// exit (see actorGroup).
func (a *actorGroup) Run() error {
	if !a.exitEarly {
		return a.g.Run()
	}
	ended := make(chan error, 1)
	go func() { ended <- a.g.Run() }()
	select {
	case err := <-ended:
		return err
	case <-a.exitable:
		// The first interrupt set first before the count could end.
		return a.first
	}
}
