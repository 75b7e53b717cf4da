package ipc

import (
	"context"
	"slices"
	"testing"
	"time"
)

// pipelinedFake is a fakeStore as a PipelinedStore whose puts finish when
// the test says: each outcome waits for a token on release.
type pipelinedFake struct {
	*fakeStore
	started chan string // the first item of each StartPut, in call order
	release chan struct{}
}

func (p *pipelinedFake) StartPut(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) func() (int, error) {
	p.started <- string(items[0])
	return func() (int, error) {
		select {
		case <-p.release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return p.fakeStore.Put(ctx, queue, items, wait, waiting)
	}
}

// A connection's PUTs on a PipelinedStore start one after the other
// without waiting for the previous one's outcome, and each is answered
// when its own outcome comes, whatever the order; a connection that
// closes with outcomes pending does not hold up Close.
func TestStoreServerPipelinesPuts(t *testing.T) {
	store := newFakeStore(0, "jobs")
	p := &pipelinedFake{fakeStore: store, started: make(chan string, 8), release: make(chan struct{})}
	h := newStoreHarness(t, store, StoreServerOptions{Store: p})
	rc := h.raw(t, true)
	for i, item := range []string{"a", "b", "c"} {
		rc.write(putFrameOf(uint32(i+1), 10000, "jobs", item))
	}
	var started []string
	for len(started) < 3 {
		select {
		case s := <-p.started:
			started = append(started, s)
		case <-time.After(testTimeout):
			t.Fatalf("started %q with no outcome yet; want a, b and c started before any ends", started)
		}
	}
	if !slices.Equal(started, []string{"a", "b", "c"}) {
		t.Fatalf("started %q, want a b c in the order sent", started)
	}
	answered := map[uint32]bool{}
	for range 3 {
		p.release <- struct{}{}
		f, ok := rc.read().(*resultFrame)
		if !ok || f.Status != statusOK || f.N != 1 || answered[f.ID] {
			t.Fatalf("got %#v, want one more PUT answered OK with 1", f)
		}
		answered[f.ID] = true
	}
	if st := store.state(); len(st.queued["jobs"]) != 3 {
		t.Errorf("store holds %q, want the three items", st.queued["jobs"])
	}
	rc.write(putFrameOf(4, 10000, "jobs", "d"))
	<-p.started
	rc.nc.Close()
	h.closeServer()
	if st := store.state(); len(st.queued["jobs"]) != 3 {
		t.Errorf("store holds %q after a PUT whose connection ended before its outcome; want the three items", st.queued["jobs"])
	}
}
