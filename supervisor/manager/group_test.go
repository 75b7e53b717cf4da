package manager

import (
	"errors"
	"testing"
	"time"
)

// groupRig is an actorGroup of three actors: one that ends the group
// (first), an awaited one (the supervisor's place), and a slow one whose
// execute returns only once the test lets it, after its interrupt.
type groupRig struct {
	g                     *actorGroup
	endFirst              chan error
	awaitedRelease        chan struct{}
	slowRelease           chan struct{}
	slowInterrupted       chan struct{}
	awaitedReturned, slow chan struct{}
}

func newGroupRig(exitEarly bool) *groupRig {
	r := &groupRig{
		g:               newActorGroup(exitEarly),
		endFirst:        make(chan error),
		awaitedRelease:  make(chan struct{}),
		slowRelease:     make(chan struct{}),
		slowInterrupted: make(chan struct{}),
		awaitedReturned: make(chan struct{}),
		slow:            make(chan struct{}),
	}
	quitFirst := make(chan struct{})
	r.g.Add(func() error {
		select {
		case err := <-r.endFirst:
			return err
		case <-quitFirst:
			return nil
		}
	}, func(error) {
		select {
		case <-quitFirst:
		default:
			close(quitFirst)
		}
	})
	r.g.AddAwaited(func() error {
		<-r.awaitedRelease
		close(r.awaitedReturned)
		return errors.New("awaited's own error")
	}, func(error) {})
	r.g.Add(func() error {
		<-r.slowRelease
		close(r.slow)
		return nil
	}, func(error) { close(r.slowInterrupted) })
	return r
}

func (r *groupRig) run() <-chan error {
	done := make(chan error, 1)
	go func() { done <- r.g.Run() }()
	return done
}

// With exitEarly, Run returns the first actor's error once every interrupt
// has been called and the awaited actor has returned, while another actor
// is still running; it does not return before the awaited one has.
func TestActorGroupExitEarlyReturnsWithoutWaitingForEveryActor(t *testing.T) {
	r := newGroupRig(true)
	defer close(r.slowRelease)
	done := r.run()
	first := errors.New("first actor ended")
	r.endFirst <- first
	<-r.slowInterrupted
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before the awaited actor returned", err)
	default:
	}
	close(r.awaitedRelease)
	select {
	case err := <-done:
		if err != first {
			t.Errorf("Run: %v, want the first actor's error %v", err, first)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the awaited actor had and every actor was interrupted")
	}
	select {
	case <-r.slow:
		t.Error("the slow actor had returned; the test shows nothing")
	default:
	}
}

// Without exitEarly, Run waits for every actor, as a run.Group does.
func TestActorGroupWaitsForEveryActorByDefault(t *testing.T) {
	r := newGroupRig(false)
	done := r.run()
	r.endFirst <- nil
	<-r.slowInterrupted
	close(r.awaitedRelease)
	<-r.awaitedReturned
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while an actor was still running", err)
	case <-time.After(50 * time.Millisecond): // a Run that wrongly returns does so at once
	}
	close(r.slowRelease)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v, want the first actor's nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once every actor had")
	}
}
