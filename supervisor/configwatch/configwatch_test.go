package configwatch

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeWatch is a Watch over channels the test feeds, whose quiet periods
// end when the test says: each call of after is handed to the test, as an
// unbuffered channel, so that a send on it returns only once the watch has
// taken it, and a send nobody listens to can be told apart.
type fakeWatch struct {
	*Watch
	events   chan fsnotify.Event
	errs     chan error
	ends     chan chan time.Time // one per quiet period started
	done     chan error
	released chan struct{} // receives at each call of release
}

func startFake(t *testing.T) *fakeWatch {
	t.Helper()
	core, _ := observer.New(zap.WarnLevel)
	f := &fakeWatch{events: make(chan fsnotify.Event), errs: make(chan error), ends: make(chan chan time.Time, 16), done: make(chan error, 1), released: make(chan struct{}, 4)}
	f.Watch = &Watch{
		log: zap.New(core), events: f.events, errors: f.errs,
		release: func() error { f.released <- struct{}{}; return nil },
		changes: make(chan struct{}, 1), quiet: Quiet, quit: make(chan struct{}), unwatch: make(chan struct{}),
		after: func(time.Duration) <-chan time.Time {
			c := make(chan time.Time)
			f.ends <- c
			return c
		},
	}
	go func() { f.done <- f.Run() }()
	t.Cleanup(func() {
		f.Interrupt(nil)
		<-f.done
	})
	return f
}

// event feeds one event and returns the end of the quiet period it started.
func (f *fakeWatch) event(t *testing.T) chan time.Time {
	t.Helper()
	f.events <- fsnotify.Event{Name: "g.yaml", Op: fsnotify.Write}
	select {
	case c := <-f.ends:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no quiet period started after an event")
		return nil
	}
}

// end ends a quiet period; it returns once the watch has taken the end.
func (f *fakeWatch) end(t *testing.T, c chan time.Time) {
	t.Helper()
	select {
	case c <- time.Time{}:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch does not wait for this quiet period's end")
	}
}

// A burst of events is one report, sent when the last one's quiet period
// ends; the end of an earlier period that a later event restarted reports
// nothing.
func TestWatchReportsABurstOnceQuiet(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	first := f.event(t)
	second := f.event(t)
	select {
	case first <- time.Time{}:
		t.Fatal("the watch still waits for the end of a quiet period an event restarted")
	default:
	}
	third := f.event(t)
	select {
	case second <- time.Time{}:
		t.Fatal("the watch still waits for the end of a quiet period an event restarted")
	default:
	}
	select {
	case <-f.Changes():
		t.Fatal("reported before the burst's last quiet period ended")
	default:
	}
	f.end(t, third)
	select {
	case <-f.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no report once the burst was quiet")
	}
	// One report: the next event starts a new period, and nothing waits.
	f.event(t)
	select {
	case <-f.Changes():
		t.Fatal("a second report for one burst")
	default:
	}
}

// Reports not taken do not pile up: one stands for all of them.
func TestWatchReportsDoNotPileUp(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	for range 3 {
		f.end(t, f.event(t))
	}
	f.event(t) // taken only once the watch has reported the third burst
	if n := len(f.changes); n != 1 {
		t.Fatalf("%d reports queued after three quiet bursts, want 1", n)
	}
	<-f.Changes()
}

// A watch error (an inotify overflow) is logged and reported as a change:
// the events it lost may have been the file's.
func TestWatchErrorIsReportedAsAChange(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.errs <- errors.New("fsnotify: queue or buffer overflow")
	var end chan time.Time
	select {
	case end = <-f.ends:
	case <-time.After(10 * time.Second):
		t.Fatal("no quiet period after an error")
	}
	f.end(t, end)
	select {
	case <-f.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("an error was not reported as a change")
	}
}

// Against the real file system: an editor's save (a temporary file renamed
// over the file) is reported.
func TestWatchSeesARenameOverTheFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "g.yaml")
	if err := os.WriteFile(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := New(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run() }()
	defer func() {
		w.Interrupt(nil)
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported for a rename over the file")
	}
}

// Interrupt ends Run, also when called first, and twice.
func TestWatchInterrupt(t *testing.T) {
	t.Parallel()
	w, err := New(filepath.Join(t.TempDir(), "g.yaml"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	w.Interrupt(nil)
	w.Interrupt(nil)
	done := make(chan error, 1)
	go func() { done <- w.Run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Interrupt")
	}
}

// A directory that does not exist cannot be watched: New says which.
func TestWatchOfAMissingDirectory(t *testing.T) {
	t.Parallel()
	_, err := New("/nonexistent/dir/g.yaml", zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/dir") {
		t.Errorf("New: %v, want an error naming /nonexistent/dir", err)
	}
}

// Release lets the watch go at once, while Run goes on until Interrupt: a
// quiet period under way no longer ends in a report, and no event is read.
func TestWatchReleaseStopsWatchingButNotRun(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	quiet := f.event(t)
	f.Release()
	f.Release() // twice is safe
	select {
	case <-f.released:
	case <-time.After(10 * time.Second):
		t.Fatal("Release did not release the watch")
	}
	// Nothing may take these now; a tenth of a second gives a Run that
	// wrongly listens still the time to show it.
	select {
	case quiet <- time.Time{}:
		t.Error("the watch still waits for a quiet period's end after Release")
	case <-time.After(100 * time.Millisecond):
	}
	select {
	case f.events <- fsnotify.Event{Name: "g.yaml", Op: fsnotify.Write}:
		t.Error("the watch still reads events after Release")
	case <-time.After(100 * time.Millisecond):
	}
	select {
	case err := <-f.done:
		t.Fatalf("Run returned %v at Release; it must wait for Interrupt", err)
	default:
	}
	f.Interrupt(nil)
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return at Interrupt after Release")
	}
	f.done <- nil // for the cleanup's receive
}

// Against the real file system: an edit of a file in a directory
// WatchFiles named is reported, as an edit of the config file is; one in
// a directory it no longer names, or never named, is not even seen. The
// events are recorded on their way to Run: inotify delivers them in the
// order they happened, so once the edit after an unwatched one is seen,
// the unwatched one would have been seen before it.
func TestWatchFilesFollowsTheEnvFiles(t *testing.T) {
	t.Parallel()
	confDir, envDir, otherDir := t.TempDir(), t.TempDir(), t.TempDir()
	w, err := New(filepath.Join(confDir, "g.yaml"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 64)
	events := make(chan fsnotify.Event)
	real := w.events
	w.events = events
	done := make(chan error, 1)
	go func() {
		for e := range real {
			seen <- e.Name
			select {
			case events <- e:
			case <-w.quit:
				return
			}
		}
	}()
	go func() { done <- w.Run() }()
	defer func() {
		w.Interrupt(nil)
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	write := func(path string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("A=1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// seenUpTo waits for an event of path and returns every name seen
	// up to it.
	seenUpTo := func(path string) []string {
		t.Helper()
		var names []string
		deadline := time.After(10 * time.Second)
		for {
			select {
			case name := <-seen:
				names = append(names, name)
				if name == path {
					return names
				}
			case <-deadline:
				t.Fatalf("no event of %s; seen %v", path, names)
			}
		}
	}

	// The config file's directory stays watched whatever WatchFiles says.
	w.WatchFiles([]string{filepath.Join(envDir, "a.env"), filepath.Join(envDir, "b.env"), filepath.Join(confDir, ".env")})
	write(filepath.Join(otherDir, "x.env"))
	write(filepath.Join(envDir, "b.env"))
	names := seenUpTo(filepath.Join(envDir, "b.env"))
	if slices.Contains(names, filepath.Join(otherDir, "x.env")) {
		t.Errorf("an edit in a directory never named was seen: %v", names)
	}
	select {
	case <-w.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported for an edit of an env file")
	}

	w.WatchFiles([]string{filepath.Join(otherDir, "x.env")})
	write(filepath.Join(envDir, "a.env"))
	write(filepath.Join(confDir, "g.yaml"))
	names = seenUpTo(filepath.Join(confDir, "g.yaml"))
	if slices.Contains(names, filepath.Join(envDir, "a.env")) {
		t.Errorf("an edit in a directory no longer named was seen: %v", names)
	}
	write(filepath.Join(otherDir, "x.env"))
	seenUpTo(filepath.Join(otherDir, "x.env"))

	// A directory that cannot be watched is left out; the others are
	// watched all the same. After Close, WatchFiles does nothing.
	w.WatchFiles([]string{"/nonexistent/dir/x.env", filepath.Join(envDir, "a.env")})
	write(filepath.Join(envDir, "a.env"))
	seenUpTo(filepath.Join(envDir, "a.env"))
	w.Close()
	w.WatchFiles([]string{filepath.Join(t.TempDir(), "y.env")})
}
