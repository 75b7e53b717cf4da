package cli

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// watchQuiet is how long the config file's directory must be quiet before
// a change is read: editors and deploy tools write in bursts (a temporary
// file, a rename, a chmod), and only the end state matters.
const watchQuiet = 150 * time.Millisecond

// configWatch sees edits of the configuration file and tells the reload
// path, which reads the file, as a SIGHUP would. It watches the file's
// directory, not the file: editors replace a file by renaming another over
// it, and Kubernetes ConfigMaps swap a "..data" symlink; either way the
// watched inode would be gone. Any event in the directory starts a quiet
// period, after which the change is reported. Whether the content changed
// is for the reload path to say: it alone knows what every reload read (a
// SIGHUP, or `gotyledon reload`, may have read a content the watch never
// saw), so a touch, or the same bytes written again, changes nothing there,
// and a revert after a refused edit applies.
type configWatch struct {
	path string
	log  *zap.Logger
	fs   *fsnotify.Watcher
	quit chan struct{}
}

// newConfigWatch starts watching path's directory.
func newConfigWatch(path string, log *zap.Logger) (*configWatch, error) {
	fs, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := fs.Add(filepath.Dir(path)); err != nil {
		fs.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(path), err)
	}
	return &configWatch{path: path, log: log, fs: fs, quit: make(chan struct{})}, nil
}

// run reports, on changes (buffered, capacity 1), that the directory was
// quiet for watchQuiet after a change, until stop is called. A report not
// yet taken stands for any number of later ones.
func (w *configWatch) run(changes chan<- struct{}) error {
	defer w.fs.Close()
	quiet := time.NewTimer(watchQuiet)
	quiet.Stop()
	for {
		select {
		case <-w.quit:
			return nil
		case _, ok := <-w.fs.Events:
			if !ok {
				return nil
			}
			quiet.Reset(watchQuiet)
		case err, ok := <-w.fs.Errors:
			if !ok {
				return nil
			}
			// An overflow loses events, not the file: report it anyway.
			w.log.Warn("config watch", zap.Error(err))
			quiet.Reset(watchQuiet)
		case <-quiet.C:
			select {
			case changes <- struct{}{}:
			default:
			}
		}
	}
}

// stop ends run; safe to call once.
func (w *configWatch) stop() { close(w.quit) }
