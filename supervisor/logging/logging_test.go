package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// writes records each Write call, to check that every entry is one write.
type writes struct {
	mu    sync.Mutex
	calls []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, string(p))
	return len(p), nil
}

func (w *writes) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

func noEnv(string) string { return "" }

func envWith(kv ...string) func(string) string {
	return func(k string) string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1]
			}
		}
		return ""
	}
}

var timestamp = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d`)

func TestJournalFormatPriorityPerLevel(t *testing.T) {
	var w writes
	log, sink, err := New("journal", "debug", "", &w, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if sink != nil {
		t.Fatal("a sink without a log file")
	}
	log.Debug("d", zap.Int("n", 1))
	log.Info("i", zap.String("k", "v"))
	log.Warn("w")
	log.Error("e", zap.Error(errors.New("boom")))
	log.DPanic("dp") // a production logger does not panic
	want := []string{
		"<7>d\t{\"n\": 1}\n",
		"<6>i\t{\"k\": \"v\"}\n",
		"<4>w\n",
		"<3>e\t{\"error\": \"boom\"}\n",
		"<2>dp\n",
	}
	got := w.get()
	if len(got) != len(want) {
		t.Fatalf("%d writes, want one per entry (%d): %q", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %q, want %q", i, got[i], want[i])
		}
		if timestamp.MatchString(got[i]) {
			t.Errorf("entry %d has a timestamp: %q", i, got[i])
		}
		for _, word := range []string{"DEBUG", "INFO", "WARN", "ERROR", "debug", "info", "warn"} {
			if strings.Contains(got[i], word) {
				t.Errorf("entry %d has the level word %q: %q", i, word, got[i])
			}
		}
	}
	// Panic and fatal, which the logger would act on, straight through the
	// encoder.
	enc, err := newEncoder("journal", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []zapcore.Level{zapcore.PanicLevel, zapcore.FatalLevel} {
		buf, err := enc.EncodeEntry(zapcore.Entry{Level: l, Time: time.Now(), Message: "m"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := buf.String(); got != "<2>m\n" {
			t.Errorf("%v: %q, want %q", l, got, "<2>m\n")
		}
		buf.Free()
	}
}

func TestJournalFormatLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := New("journal", "warn", "", &buf, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if got := buf.String(); got != "<4>shown\n" {
		t.Errorf("got %q", got)
	}
}

func TestJournalFormatNameAndWith(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := New("journal", "info", "", &buf, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	broker := log.Named("broker").With(zap.String("socket", "/run/q.sock"))
	a := broker.With(zap.Int("a", 1))
	b := broker.With(zap.Int("b", 2))
	broker.Info("listening", zap.Int("queues", 1))
	a.Info("x")
	b.Info("y")
	log.Info("z")
	want := "<6>broker\tlistening\t{\"socket\": \"/run/q.sock\", \"queues\": 1}\n" +
		"<6>broker\tx\t{\"socket\": \"/run/q.sock\", \"a\": 1}\n" +
		"<6>broker\ty\t{\"socket\": \"/run/q.sock\", \"b\": 2}\n" +
		"<6>z\n"
	if got := buf.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestJournalFormatOneLinePerEntry(t *testing.T) {
	var w writes
	log, _, err := New("journal", "info", "", &w, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	log = log.WithOptions(zap.AddStacktrace(zap.ErrorLevel))
	log.Info("two\nlines\r\x1b[1mbold\x00\ttab", zap.String("f", "x\ny"))
	log.Error("failed", zap.Error(errors.New("a\nb")))
	got := w.get()
	if len(got) != 2 {
		t.Fatalf("%d writes, want 2: %q", len(got), got)
	}
	if want := "<6>two\\nlines\\r\\u001b[1mbold\\u0000\ttab\t{\"f\": \"x\\ny\"}\n"; got[0] != want {
		t.Errorf("got %q, want %q", got[0], want)
	}
	for _, line := range got {
		if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
			t.Errorf("not one line: %q", line)
		}
	}
	if !strings.HasPrefix(got[1], "<3>failed\t{\"error\": \"a\\nb\", \"stacktrace\": \"") ||
		!strings.Contains(got[1], "TestJournalFormatOneLinePerEntry") {
		t.Errorf("error entry: %q", got[1])
	}
}

func TestJournalStream(t *testing.T) {
	stat := func(dev, ino uint64, err error) func() (uint64, uint64, error) {
		return func() (uint64, uint64, error) { return dev, ino, err }
	}
	for _, tc := range []struct {
		name string
		env  string
		stat func() (uint64, uint64, error)
		want bool
	}{
		{"match", "2049:123456", stat(2049, 123456, nil), true},
		{"other inode", "2049:123456", stat(2049, 123457, nil), false},
		{"other device", "2049:123456", stat(2050, 123456, nil), false},
		{"unset", "", stat(0, 0, nil), false},
		{"no colon", "2049", stat(2049, 0, nil), false},
		{"not numbers", "a:b", stat(0, 0, nil), false},
		{"negative", "-1:5", stat(0, 5, nil), false},
		{"stat fails", "2049:123456", stat(2049, 123456, errors.New("EBADF")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := journalStream(envWith("JOURNAL_STREAM", tc.env), tc.stat); got != tc.want {
				t.Errorf("journalStream(%q) = %v, want %v", tc.env, got, tc.want)
			}
		})
	}
}

// devIno is the JOURNAL_STREAM value of f.
func devIno(t *testing.T, f *os.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestAutoFormat(t *testing.T) {
	dir := t.TempDir()
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	journal := envWith("JOURNAL_STREAM", devIno(t, stderr))

	logged := func(t *testing.T, format, logFile string, w interface{ Write([]byte) (int, error) }, getenv func(string) string) string {
		t.Helper()
		log, sink, err := New(format, "info", logFile, w, getenv)
		if err != nil {
			t.Fatal(err)
		}
		if sink != nil {
			defer sink.Close()
		}
		log.Named("broker").Info("hello", zap.Int("n", 1))
		if logFile != "" {
			b, err := os.ReadFile(logFile)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		if f, ok := w.(*os.File); ok {
			b, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		return w.(*bytes.Buffer).String()
	}
	isConsole := func(t *testing.T, out string) {
		t.Helper()
		if !timestamp.MatchString(out) || !strings.Contains(out, "\tINFO\tbroker\thello\t{\"n\": 1}\n") {
			t.Errorf("want a console line, got %q", out)
		}
	}

	t.Run("stderr is the journal stream", func(t *testing.T) {
		if got, want := logged(t, "auto", "", stderr, journal), "<6>broker\thello\t{\"n\": 1}\n"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("stderr is another file", func(t *testing.T) {
		isConsole(t, logged(t, "auto", "", other, journal))
	})
	t.Run("no JOURNAL_STREAM", func(t *testing.T) {
		isConsole(t, logged(t, "auto", "", other, noEnv))
	})
	t.Run("nil getenv", func(t *testing.T) {
		isConsole(t, logged(t, "auto", "", other, nil))
	})
	t.Run("stderr is not a file", func(t *testing.T) {
		isConsole(t, logged(t, "auto", "", &bytes.Buffer{}, journal))
	})
	t.Run("a log file is not the journal", func(t *testing.T) {
		isConsole(t, logged(t, "auto", filepath.Join(t.TempDir(), "log"), stderr, journal))
	})
	t.Run("json under the journal stays json", func(t *testing.T) {
		var buf bytes.Buffer
		log, _, err := New("json", "info", "", &buf, journal)
		if err != nil {
			t.Fatal(err)
		}
		log.Named("broker").Info("hello", zap.Int("n", 1))
		var m map[string]any
		if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
			t.Fatalf("not json: %q: %v", buf.String(), err)
		}
		if m["level"] != "info" || m["logger"] != "broker" || m["msg"] != "hello" || m["n"] != 1.0 || m["ts"] == nil {
			t.Errorf("json entry %v", m)
		}
	})
	t.Run("console under the journal stays console", func(t *testing.T) {
		isConsole(t, logged(t, "console", "", &bytes.Buffer{}, journal))
	})
}

func TestNewLoggerErrors(t *testing.T) {
	var buf bytes.Buffer
	if _, _, err := New("xml", "info", "", &buf, noEnv); err == nil || !strings.Contains(err.Error(), "auto, console, json or journal") {
		t.Errorf("format xml: %v", err)
	}
	if _, _, err := New("console", "loud", "", &buf, noEnv); err == nil {
		t.Error("level loud: no error")
	}
	if _, _, err := New("console", "info", filepath.Join(t.TempDir(), "missing", "log"), &buf, noEnv); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("log file in a missing directory: %v", err)
	}
	if buf.Len() != 0 {
		t.Errorf("wrote %q", buf.String())
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] != '\n' {
		t.Fatalf("%s does not end with a newline: %q", path, b)
	}
	return strings.Split(string(b[:len(b)-1]), "\n")
}

func TestLogFileReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gotyledon.log")
	// An existing file is appended to.
	if err := os.WriteFile(path, []byte("before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	log, sink, err := New("json", "info", path, &stderr, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if sink == nil {
		t.Fatal("no sink for a log file")
	}
	defer sink.Close()
	msg := func(i int) { log.Info("line", zap.Int("i", i)) }
	for i := range 3 {
		msg(i)
	}
	if err := os.Rename(path, path+".1"); err != nil { // logrotate
		t.Fatal(err)
	}
	msg(3) // after the rename, before the reopen: still the old file
	if err := sink.Reopen(); err != nil {
		t.Fatal(err)
	}
	for i := 4; i < 6; i++ {
		msg(i)
	}
	if err := sink.Reopen(); err != nil { // twice: same path, same file
		t.Fatal(err)
	}
	msg(6)
	if err := log.Sync(); err != nil {
		t.Fatal(err)
	}

	check := func(path string, first string, from, to int) {
		t.Helper()
		lines := readLines(t, path)
		if first != "" {
			if len(lines) == 0 || lines[0] != first {
				t.Fatalf("%s: first line %q, want %q", path, lines, first)
			}
			lines = lines[1:]
		}
		if len(lines) != to-from {
			t.Fatalf("%s: %d lines, want %d: %q", path, len(lines), to-from, lines)
		}
		for k, l := range lines {
			var m struct{ I int }
			if err := json.Unmarshal([]byte(l), &m); err != nil || m.I != from+k {
				t.Errorf("%s line %d: %q, want i=%d", path, k, l, from+k)
			}
		}
	}
	check(path+".1", "before", 0, 4)
	check(path, "", 4, 7)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("new log file mode %v, want at most 0640", perm)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr got %q", stderr.String())
	}
}

func TestLogFileConcurrentWritersDuringReopen(t *testing.T) {
	const (
		writers   = 8
		perWriter = 2000
	)
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	log, sink, err := New("json", "info", path, &bytes.Buffer{}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	// Long enough that a torn write would show.
	pad := strings.Repeat("x", 300)

	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				log.Info("line", zap.Int("w", w), zap.Int("i", i), zap.String("pad", pad))
			}
		})
	}
	go func() { wg.Wait(); close(done) }()

	// Rotate as logrotate does, as often as possible while the writers
	// write; every rotation renames the file to the next number.
	rotations := 0
	for stop := false; !stop; {
		select {
		case <-done:
			stop = true // one last rotation after the writers are done
		default:
		}
		rotations++
		if err := os.Rename(path, fmt.Sprintf("%s.%06d", path, rotations)); err != nil {
			t.Fatal(err)
		}
		if err := sink.Reopen(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d rotations during %d writes", rotations, writers*perWriter)

	// The files in the order they were written, the current one last.
	next := make([]int, writers)
	total := 0
	for r := 1; r <= rotations+1; r++ {
		p := path
		if r <= rotations {
			p = fmt.Sprintf("%s.%06d", path, r)
		}
		for _, l := range readLines(t, p) {
			var m struct {
				Msg  string
				W, I int
				Pad  string
			}
			if err := json.Unmarshal([]byte(l), &m); err != nil || m.Msg != "line" || m.Pad != pad || m.W < 0 || m.W >= writers {
				t.Fatalf("%s: torn or bad line %q: %v", p, l, err)
			}
			if m.I != next[m.W] {
				t.Fatalf("%s: writer %d line %d, want line %d: lost, repeated or out of order", p, m.W, m.I, next[m.W])
			}
			next[m.W]++
			total++
		}
	}
	if total != writers*perWriter {
		t.Fatalf("%d lines, want %d", total, writers*perWriter)
	}
}

func TestLogFileFailedReopenKeepsTheOldFile(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "logs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "log")
	log, sink, err := New("console", "info", path, &bytes.Buffer{}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	log.Info("one")
	// The file moves out and its directory goes: the path cannot be
	// created again, whoever we run as.
	moved := filepath.Join(base, "moved")
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := sink.Reopen(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Reopen = %v, want a not-exist error", err)
	}
	log.Info("two")
	if err := sink.Reopen(); err == nil { // and again
		t.Fatal("second Reopen: no error")
	}
	log.Info("three")
	lines := readLines(t, moved)
	if len(lines) != 3 {
		t.Fatalf("%d lines in the old file, want 3: %q", len(lines), lines)
	}
	for i, w := range []string{"\tone", "\ttwo", "\tthree"} {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d = %q, want ...%q", i, lines[i], w)
		}
	}
}

func TestLogSinkClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	sink, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write([]byte("a\n")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := sink.Write([]byte("b\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := sink.Sync(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Sync after Close: %v", err)
	}
	if err := sink.Reopen(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Reopen after Close: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "a\n" {
		t.Errorf("file holds %q", b)
	}
}

// For people (console, journal) durations are rounded; JSON keeps every
// digit.
func TestDurationsRoundedForPeople(t *testing.T) {
	d := 46033125287 * time.Nanosecond
	for format, want := range map[string]string{
		"console": "46.033s",
		"journal": "46.033s",
		"json":    "46.033125287s",
	} {
		var buf bytes.Buffer
		log, _, err := New(format, "info", "", &buf, noEnv)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("x", zap.Duration("took", d), zap.Duration("short", 819668416*time.Nanosecond))
		if !strings.Contains(buf.String(), want) {
			t.Errorf("%s: %q, want the duration as %s", format, buf.String(), want)
		}
		if format != "json" && !strings.Contains(buf.String(), "819.668ms") {
			t.Errorf("%s: %q, want 819.668ms", format, buf.String())
		}
	}
}

// The console's levels are coloured on a terminal, unless NO_COLOR or
// TERM=dumb; never in a pipe.
func TestConsoleColourOnlyOnATerminal(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer master.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name    string
		format  string
		logFile string
		out     *os.File
		env     func(string) string
		color   bool
	}{
		{"terminal", "console", "", master, env("TERM", "xterm"), true},
		{"NO_COLOR", "console", "", master, env("TERM", "xterm", "NO_COLOR", "1"), false},
		{"TERM=dumb", "console", "", master, env("TERM", "dumb"), false},
		{"pipe", "console", "", w, env("TERM", "xterm"), false},
		{"json", "json", "", master, env("TERM", "xterm"), false},
		{"log file", "console", "/var/log/x", master, env("TERM", "xterm"), false},
	} {
		if got := useColor(tc.format, tc.logFile, tc.out, tc.env); got != tc.color {
			t.Errorf("%s: colour %v, want %v", tc.name, got, tc.color)
		}
	}
	enc, err := newEncoder("console", true)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := enc.EncodeEntry(zapcore.Entry{Level: zapcore.ErrorLevel, Message: "m"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\x1b[31mERROR\x1b[0m") {
		t.Errorf("coloured console entry %q, want ERROR in red", buf.String())
	}
}
