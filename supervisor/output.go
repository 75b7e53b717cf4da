package supervisor

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
)

// maxLineBytes is the longest worker output line logged as one entry. A
// longer line is logged in pieces of this size, each with a "part" field
// counting from 1, so nothing is lost and memory per stream stays bounded.
const maxLineBytes = 16 << 10

// readBuffers holds the read buffers shared by all of a manager's output
// streams. A stream only holds one while a read is under way, not while it
// waits for the worker to write: with a thousand workers, two thousand idle
// streams cost no buffers.
type readBuffers struct{ pool sync.Pool }

func (rb *readBuffers) get() *[]byte {
	if b, ok := rb.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 32<<10)
	return &b
}

func (rb *readBuffers) put(b *[]byte) { rb.pool.Put(b) }

// lineWriter turns a byte stream into log entries, one per line.
type lineWriter struct {
	log      *zap.Logger
	progress *outputProgress // nil: not counted
	pending  []byte          // an unfinished line; nil between lines
	part     int             // pieces of the current line already logged
}

// outputProgress is what a worker's output readers are doing, for the
// process table to tell a backlog still being logged from a pipe that a
// process outside the worker's group holds open without writing.
type outputProgress struct {
	// steps counts what the readers did: a read that returned data, a
	// line logged.
	steps atomic.Uint64
	// busy counts the readers handling data they read, rather than
	// waiting for more (a log write can block a while on a slow reader of
	// the manager's own output).
	busy atomic.Int32
}

func (lw *lineWriter) write(data []byte) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			lw.pending = append(lw.pending, data...)
			// Strictly more than a piece: a line of exactly maxLineBytes
			// whose newline is still to come stays one entry.
			for len(lw.pending) > maxLineBytes {
				lw.part++
				lw.emit(lw.pending[:maxLineBytes])
				lw.pending = append(lw.pending[:0], lw.pending[maxLineBytes:]...)
			}
			return
		}
		line := data[:i]
		if len(lw.pending) > 0 {
			lw.pending = append(lw.pending, line...)
			line = lw.pending
		}
		lw.finishLine(line)
		data = data[i+1:]
	}
}

// finishLine logs the last piece of a line and resets for the next one.
func (lw *lineWriter) finishLine(line []byte) {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	for len(line) > maxLineBytes {
		lw.part++
		lw.emit(line[:maxLineBytes])
		line = line[maxLineBytes:]
	}
	if lw.part > 0 {
		lw.part++
	}
	lw.emit(line)
	lw.part = 0
	lw.pending = nil
}

func (lw *lineWriter) emit(line []byte) {
	if lw.progress != nil {
		defer lw.progress.steps.Add(1)
	}
	if lw.part > 0 {
		lw.log.Info(string(line), zap.Int("part", lw.part))
		return
	}
	lw.log.Info(string(line))
}

// flush logs what is left of an unterminated last line.
func (lw *lineWriter) flush() {
	if len(lw.pending) > 0 || lw.part > 0 {
		lw.finishLine(lw.pending)
	}
}

// closedByUs reports whether err says the file was closed under its
// reader. A raw connection's Read says it with internal/poll's
// ErrFileClosing ("use of closed file"), which os.File's own methods turn
// into os.ErrClosed but SyscallConn's do not.
func closedByUs(err error) bool {
	return err != nil && (errors.Is(err, os.ErrClosed) || err.Error() == "use of closed file")
}

// logOutput reads f to its end, logging each line through log, then closes
// f. It returns when every writer of the pipe has closed it: the worker and
// whatever children inherited its output. It tells progress what it does.
func logOutput(f *os.File, log *zap.Logger, bufs *readBuffers, progress *outputProgress) {
	defer f.Close()
	lw := &lineWriter{log: log, progress: progress}
	defer lw.flush()
	rc, err := f.SyscallConn()
	if err != nil {
		log.Error("cannot read worker output", zap.Error(err))
		return
	}
	for {
		var buf *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			buf = bufs.get()
			n, rerr = syscall.Read(int(fd), *buf)
			if rerr == syscall.EAGAIN {
				bufs.put(buf)
				buf = nil
				return false // wait for the poller, holding no buffer
			}
			return true
		})
		if buf != nil {
			if n > 0 {
				progress.busy.Add(1)
				progress.steps.Add(1)
				lw.write((*buf)[:n])
				progress.busy.Add(-1)
			}
			bufs.put(buf)
		}
		switch {
		case closedByUs(err):
			return // the manager closed it: the worker is gone, a leftover held it
		case err != nil:
			log.Error("cannot read worker output", zap.Error(err))
			return
		case rerr == syscall.EINTR:
		case rerr != nil:
			if !errors.Is(rerr, io.EOF) {
				log.Error("cannot read worker output", zap.Error(rerr))
			}
			return
		case n == 0:
			return // end of file
		}
	}
}
