// Package logging builds the manager's logger: one entry per line, every
// entry written whole with one write, in the formats a terminal, a log
// shipper and systemd's journal each want, to stderr or to a file that
// logrotate can move away (File.Reopen).
package logging

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// New builds the manager's logger. Entries are one per line, each
// written whole with one Write, so that entries from different workers never
// interleave. There is no sampling: a worker's output lines are logged, every
// one.
//
// format is one of:
//
//   - "console": human-readable, time, level, logger name, message, fields;
//   - "json": one object per line, whatever the output is connected to;
//   - "journal": for systemd's journal: no time of its own (the journal
//     stamps every line), the level as an sd-daemon(3) priority prefix
//     ("<6>" info ...), and each entry on exactly one line;
//   - "auto": "journal" if the output is the stream systemd's
//     JOURNAL_STREAM names (see journalStream), else "console".
//
// level is debug, info, warn or error (anything zapcore.ParseLevel takes).
//
// The log goes to logFile if it is not empty (appended to, created 0640 if
// missing), else to stderr. For "auto", stderr is the journal only if it has a
// Stat method (an *os.File: os.Stderr is fd 2) whose device and inode are
// those of $JOURNAL_STREAM; getenv reads the environment (os.Getenv; nil reads
// nothing, so "auto" is "console"), and a log file is never the journal.
//
// The returned sink is the open log file, nil when the log goes to stderr:
// the caller reopens it on SIGUSR1 (File.Reopen) and closes it, after the
// logger's last Sync, when it is done.
func New(format, level, logFile string, stderr io.Writer, getenv func(string) string) (*zap.Logger, *File, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, nil, fmt.Errorf("log level: %w", err)
	}
	if format == "auto" {
		format = "console"
		if logFile == "" && getenv != nil {
			if st, ok := stderr.(interface{ Stat() (fs.FileInfo, error) }); ok && journalStream(getenv, fileStat(st.Stat)) {
				format = "journal"
			}
		}
	}
	enc, err := newEncoder(format, useColor(format, logFile, stderr, getenv))
	if err != nil {
		return nil, nil, err
	}
	var (
		ws   zapcore.WriteSyncer
		sink *File
	)
	if logFile != "" {
		if sink, err = OpenFile(logFile); err != nil {
			return nil, nil, err
		}
		ws = sink // serializes writes itself
	} else {
		ws = zapcore.Lock(zapcore.AddSync(stderr))
	}
	return zap.New(zapcore.NewCore(enc, ws, lvl)), sink, nil
}

// useColor reports whether the console's levels get colours: for a person
// at a terminal, unless NO_COLOR (no-color.org) or TERM=dumb says
// otherwise; never in a file.
func useColor(format, logFile string, stderr io.Writer, getenv func(string) string) bool {
	return format == "console" && logFile == "" && getenv != nil &&
		getenv("NO_COLOR") == "" && getenv("TERM") != "dumb" && isTerminal(stderr)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// roundedDuration writes a duration for a person: to the millisecond from
// a second on (46.033s, not 46.033125287s), to the microsecond from a
// millisecond on. JSON keeps every digit, for programs.
func roundedDuration(d time.Duration, enc zapcore.PrimitiveArrayEncoder) {
	switch {
	case d >= time.Second || d <= -time.Second:
		d = d.Round(time.Millisecond)
	case d >= time.Millisecond || d <= -time.Millisecond:
		d = d.Round(time.Microsecond)
	}
	enc.AppendString(d.String())
}

// newEncoder returns the encoder of a log format other than auto; color
// colours the console's levels.
func newEncoder(format string, color bool) (zapcore.Encoder, error) {
	ec := zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
	}
	switch format {
	case "json":
		return zapcore.NewJSONEncoder(ec), nil
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		if color {
			ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		ec.EncodeDuration = roundedDuration
		return zapcore.NewConsoleEncoder(ec), nil
	case "journal":
		ec.EncodeDuration = roundedDuration
		return newJournalEncoder(ec), nil
	default:
		return nil, fmt.Errorf("log format %q: want auto, console, json or journal", format)
	}
}

// journalStream reports whether the output whose device and inode stat
// returns is the journal's stream: systemd sets JOURNAL_STREAM to
// "DEVICE:INODE" (decimal st_dev and st_ino) of the stream it connects a
// service's stdout and stderr to, and a program that compares it with its
// own stderr knows whether that still goes to the journal (and not, say, to
// a file a shell redirected it to). See systemd.exec(5), JOURNAL_STREAM.
func journalStream(getenv func(string) string, stat func() (dev, ino uint64, err error)) bool {
	ds, is, ok := strings.Cut(getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	dev, err := strconv.ParseUint(ds, 10, 64)
	if err != nil {
		return false
	}
	ino, err := strconv.ParseUint(is, 10, 64)
	if err != nil {
		return false
	}
	d, i, err := stat()
	return err == nil && d == dev && i == ino
}

// fileStat turns an os.File's Stat (an fstat of its descriptor) into the
// device and inode journalStream compares.
func fileStat(stat func() (fs.FileInfo, error)) func() (dev, ino uint64, err error) {
	return func() (uint64, uint64, error) {
		fi, err := stat()
		if err != nil {
			return 0, 0, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return 0, 0, errors.New("no device and inode")
		}
		return uint64(st.Dev), uint64(st.Ino), nil //nolint:unconvert // not uint64 on every platform
	}
}

// journalEncoder writes entries for systemd's journal, which reads a
// service's stderr line by line and stamps each line itself. It is the
// console encoder without the time and the level, each line prefixed with
// the entry's syslog priority as sd-daemon(3) defines it ("<6>" for info),
// which journald takes off the line and records as PRIORITY:
//
//	<6>broker	queue broker listening	{"socket": "/run/q.sock", "queues": 1}
//
// An entry is always exactly one line, so always one journal entry: a
// stacktrace goes in the fields as "stacktrace" (JSON-escaped, as every
// field), and a newline, or another control character journalctl would show
// the entry as "[blob data]" for, in the message or logger name is written
// escaped as in JSON ("\n", "\r", "\u001b"); tabs stay.
type journalEncoder struct {
	zapcore.Encoder // the console encoder: fields added by With go to it
	buffers         buffer.Pool
}

func newJournalEncoder(ec zapcore.EncoderConfig) zapcore.Encoder {
	ec.TimeKey = ""
	ec.LevelKey = ""
	ec.StacktraceKey = "" // stacks go in the fields; see EncodeEntry
	ec.LineEnding = "\n"  // taken off, and put back after escaping
	return journalEncoder{zapcore.NewConsoleEncoder(ec), buffer.NewPool()}
}

// Clone copies the console encoder, and with it the fields added so far, as
// zap does for Logger.With.
func (e journalEncoder) Clone() zapcore.Encoder {
	return journalEncoder{e.Encoder.Clone(), e.buffers}
}

func (e journalEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	if ent.Stack != "" {
		fields = append(fields[:len(fields):len(fields)], zap.String("stacktrace", ent.Stack))
		ent.Stack = ""
	}
	line, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return nil, err
	}
	defer line.Free()
	out := e.buffers.Get()
	out.AppendString(journalPriority(ent.Level))
	for _, b := range bytes.TrimSuffix(line.Bytes(), []byte("\n")) {
		switch {
		case b == '\n':
			out.AppendString(`\n`)
		case b == '\r':
			out.AppendString(`\r`)
		case (b < ' ' && b != '\t') || b == 0x7f:
			out.AppendString(`\u00`)
			out.AppendByte("0123456789abcdef"[b>>4])
			out.AppendByte("0123456789abcdef"[b&0xf])
		default:
			out.AppendByte(b)
		}
	}
	out.AppendByte('\n')
	return out, nil
}

// journalPriority is the sd-daemon(3) prefix of a level: SD_DEBUG, SD_INFO,
// SD_WARNING, SD_ERR, and SD_CRIT for dpanic, panic and fatal (not SD_EMERG
// nor SD_ALERT, which are about the whole system; journald sends SD_EMERG to
// every terminal).
func journalPriority(l zapcore.Level) string {
	switch {
	case l <= zapcore.DebugLevel:
		return "<7>"
	case l == zapcore.InfoLevel:
		return "<6>"
	case l == zapcore.WarnLevel:
		return "<4>"
	case l == zapcore.ErrorLevel:
		return "<3>"
	default: // DPanicLevel, PanicLevel, FatalLevel
		return "<2>"
	}
}

// File is a log file: a zapcore.WriteSyncer that can be reopened at the
// same path, for logrotate. Its methods are safe for concurrent use.
type File struct {
	path string

	mu     sync.Mutex
	f      *os.File // nil once closed
	closed bool
}

// OpenFile opens path for appending, creating it (mode 0640, less the
// umask) if it does not exist.
func OpenFile(path string) (*File, error) {
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	return &File{path: path, f: f}, nil
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// Path is the file's path, as given to OpenFile.
func (s *File) Path() string { return s.path }

// Write writes p to the current file with one write, under the sink's lock:
// zap hands it one whole entry, so entries never interleave, and a Reopen
// waits for a write in progress and never comes between two halves of one.
func (s *File) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return 0, fmt.Errorf("log file %s: %w", s.path, os.ErrClosed)
	}
	return s.f.Write(p)
}

// Sync flushes the current file to disk.
func (s *File) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return fmt.Errorf("log file %s: %w", s.path, os.ErrClosed)
	}
	return s.f.Sync()
}

// Reopen opens the sink's path again and writes there from then on: after
// logrotate has renamed the file, the next entries go to a new file at the
// path (created 0640 if missing), and the entries before are all in the
// renamed one. The old file is closed only once the new one has replaced it,
// and the swap waits for a write in progress, so no entry is lost, torn or
// split across the two files.
//
// If the path cannot be opened (its directory is gone, say), Reopen returns
// the error and the sink keeps writing to the file it had. It is safe to call
// at any time, concurrently with writes and with itself, and as often as
// wanted (calling it twice just opens the path twice); after Close it returns
// an error and opens nothing.
func (s *File) Reopen() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("reopen log file %s: %w", s.path, os.ErrClosed)
	}
	f, err := openLogFile(s.path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed { // closed while the file was being opened
		s.mu.Unlock()
		_ = f.Close()
		return fmt.Errorf("reopen log file %s: %w", s.path, os.ErrClosed)
	}
	old := s.f
	s.f = f
	s.mu.Unlock()
	if err := old.Close(); err != nil {
		return fmt.Errorf("close the old log file: %w", err)
	}
	return nil
}

// Close closes the file; writes after it fail. Only the first call closes
// anything.
func (s *File) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	f := s.f
	s.f = nil
	return f.Close()
}
