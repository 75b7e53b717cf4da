// Package configwatch sees edits of the manager's configuration file, and
// of the env files the configuration uses, so that an edit is applied as
// SIGHUP applies it.
package configwatch

import (
	"errors"
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

// Watch is the actor that reports edits of a configuration file and of
// the env files it uses (WatchFiles). It watches their directories, not
// the files: editors replace a file by renaming another over it, and
// Kubernetes ConfigMaps swap a "..data" symlink; either way a watched
// inode would be gone. Any event in a watched directory starts a quiet
// period, after which the change is reported on Changes.
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
	// add and remove watch and stop watching a directory (fsnotify's Add
	// and Remove, safe beside Run).
	add, remove func(dir string) error
	changes     chan struct{}
	quiet       time.Duration
	// after returns a channel that receives once d has passed: time.After,
	// or a fake clock in tests.
	after func(d time.Duration) <-chan time.Time

	quit     chan struct{}
	quitOnce sync.Once

	// unwatch, once closed (Release), has Run release the watch and
	// report nothing more.
	unwatch     chan struct{}
	unwatchOnce sync.Once

	mu sync.Mutex // guards what follows: WatchFiles may be called from any goroutine
	// configDir is the config file's directory, always watched ("": no
	// file). dirs are the other directories of the files WatchFiles
	// named last: true if watched, false if that failed (and was said).
	configDir string
	dirs      map[string]bool
}

// New starts watching path's directory; with path "" (a program that
// declares its configuration in Go) it watches nothing until WatchFiles.
// It fails if the directory cannot be watched (no inotify, say): the
// manager then runs without the watch. Watch errors (an inotify overflow,
// a directory WatchFiles cannot watch) are logged to log (nil: not
// logged).
func New(path string, log *zap.Logger) (*Watch, error) {
	if log == nil {
		log = zap.NewNop()
	}
	fs, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	var dir string
	if path != "" {
		dir = filepath.Dir(path)
		if err := fs.Add(dir); err != nil {
			fs.Close()
			return nil, fmt.Errorf("watch %s: %w", dir, err)
		}
	}
	return &Watch{
		log: log, events: fs.Events, errors: fs.Errors, release: fs.Close, add: fs.Add, remove: fs.Remove,
		changes: make(chan struct{}, 1), quiet: Quiet, after: time.After, quit: make(chan struct{}),
		unwatch: make(chan struct{}), configDir: dir, dirs: map[string]bool{},
	}, nil
}

// WatchFiles watches the directories of paths (the env files of the
// configuration last loaded) besides the config file's, and stops
// watching those that only the previous call's paths had: an edit of a
// file in one of them is reported as an edit of the config file is. A
// directory that cannot be watched (it does not exist, say) is logged once
// and left out, and tried again at a later call that still names it.
// Safe to call from any goroutine, beside Run, and after Release or Close
// (it then watches nothing).
func (w *Watch) WatchFiles(paths []string) {
	want := map[string]bool{}
	for _, p := range paths {
		if d := filepath.Dir(p); d != w.configDir {
			want[d] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for d, watched := range w.dirs {
		if !want[d] {
			if watched {
				_ = w.remove(d) // gone with its directory, or the watch released
			}
			delete(w.dirs, d)
		}
	}
	for d := range want {
		if w.dirs[d] {
			continue
		}
		err := w.add(d)
		switch _, said := w.dirs[d]; {
		case err == nil:
			w.dirs[d] = true
		case errors.Is(err, fsnotify.ErrClosed):
			return
		case !said:
			w.log.Warn("env file directory not watched; after an edit there, reload by hand", zap.String("dir", d), zap.Error(err))
			w.dirs[d] = false
		}
	}
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
