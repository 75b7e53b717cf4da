// Package configwatch sees edits of the manager's configuration file, so
// that an edit is applied as SIGHUP applies it.
package configwatch

import (
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Quiet is how long the configuration file's directory must be quiet
// before a change is reported: editors and deploy tools write in bursts (a
// temporary file, a rename, a chmod), and only the end state matters.
const Quiet = 150 * time.Millisecond

// Watch is the actor that reports edits of a configuration file. It watches
// the file's directory, not the file: editors replace a file by renaming
// another over it, and Kubernetes ConfigMaps swap a "..data" symlink; either
// way a watched inode would be gone. Any event in the directory starts a
// quiet period, after which the change is reported on Changes.
//
// Whether the content changed is for the reader to say: it alone knows
// what every reload read (a SIGHUP may have read a content the watch never
// saw), so a touch, or the same bytes written again, is reported too, and
// the reader reads the file itself. Run is the actor's execute function
// and Interrupt its interrupt.
type Watch struct {
	log     *zap.Logger
	events  <-chan fsnotify.Event
	errors  <-chan error
	release func() error // closes the inotify descriptor
	changes chan struct{}
	quiet   time.Duration
	// after returns a channel that receives once d has passed: time.After,
	// or a fake clock in tests.
	after func(d time.Duration) <-chan time.Time

	quit     chan struct{}
	quitOnce sync.Once

	// unwatch, once closed (Release), has Run release the watch and
	// report nothing more.
	unwatch     chan struct{}
	unwatchOnce sync.Once
}

// New starts watching path's directory. It fails if the directory cannot
// be watched (no inotify, say): the manager then runs without the watch.
// Watch errors (an inotify overflow) are logged to log (nil: not logged).
func New(path string, log *zap.Logger) (*Watch, error) {
	if log == nil {
		log = zap.NewNop()
	}
	fs, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := fs.Add(filepath.Dir(path)); err != nil {
		fs.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(path), err)
	}
	return &Watch{
		log: log, events: fs.Events, errors: fs.Errors, release: fs.Close,
		changes: make(chan struct{}, 1), quiet: Quiet, after: time.After, quit: make(chan struct{}),
		unwatch: make(chan struct{}),
	}, nil
}

// Changes receives a value once the directory has been quiet for Quiet
// after a change. A report not yet taken stands for any number of later
// ones: the channel holds at most one.
func (w *Watch) Changes() <-chan struct{} { return w.changes }

// Run reports changes until Interrupt, then releases the watch and returns
// nil.
func (w *Watch) Run() error {
	defer w.release() //nolint:errcheck // nothing to do if it fails
	// quiet is the newest quiet period's end; an event starts a new period
	// and the older one's end is no longer listened to. nil: none under way.
	var quiet <-chan time.Time
	events, errs, unwatch := w.events, w.errors, w.unwatch
	for {
		select {
		case <-w.quit:
			return nil
		case <-unwatch:
			_ = w.release()
			events, errs, unwatch, quiet = nil, nil, nil, nil
		case _, ok := <-events:
			if !ok {
				return nil
			}
			quiet = w.after(w.quiet)
		case err, ok := <-errs:
			if !ok {
				return nil
			}
			// An overflow loses events, not the file: report it anyway.
			w.log.Warn("config watch", zap.Error(err))
			quiet = w.after(w.quiet)
		case <-quiet:
			quiet = nil
			select {
			case w.changes <- struct{}{}:
			default:
			}
		}
	}
}

// Interrupt ends Run. Safe to call more than once, and before Run (which
// then returns at once).
func (w *Watch) Interrupt(error) { w.quitOnce.Do(func() { close(w.quit) }) }

// Release stops the watch before Run ends, for a reader that will not
// read Changes again (a manager that is shutting down): Run releases the
// inotify descriptor and goroutine at once, reports nothing more, and
// still returns only at Interrupt. It does not block; safe to call more
// than once, and with Run.
func (w *Watch) Release() { w.unwatchOnce.Do(func() { close(w.unwatch) }) }

// Close ends Run and releases the watch, for a Watch whose Run may never
// run. Safe to call more than once, and with Run.
func (w *Watch) Close() error {
	w.Interrupt(nil)
	return w.release()
}
