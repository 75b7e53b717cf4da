package manager

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/logging"
)

// Each signal becomes its request to the reload path, in the order sent;
// SIGUSR1 reopens the log file. Real signals, sent to this process while
// the actor is subscribed (so none of them takes its default action).
func TestSignalsBecomeRequests(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	logFile, err := logging.OpenFile(filepath.Join(t.TempDir(), "m.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s := subscribeSignals(zap.New(core), logFile)
	defer s.unsubscribe()
	r := newReloader(nil, nil)
	r.sup = &fakeLoop{}
	s.to = r
	done := make(chan error, 1)
	go func() { done <- s.Run() }()

	next := func() any {
		t.Helper()
		select {
		case a := <-r.asks:
			return a
		case <-time.After(10 * time.Second):
			t.Fatal("no request from the signal")
			return nil
		}
	}
	for _, tc := range []struct {
		sig  syscall.Signal
		want any
	}{
		{syscall.SIGHUP, reloadAsk{source: supervisor.ReloadBySignal}},
		{syscall.SIGTERM, stopAsk{escalate: false}},
		{syscall.SIGINT, stopAsk{escalate: true}},
	} {
		if err := syscall.Kill(syscall.Getpid(), tc.sig); err != nil {
			t.Fatal(err)
		}
		if got := next(); got != tc.want {
			t.Errorf("%v: request %#v, want %#v", tc.sig, got, tc.want)
		}
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.FilterMessage("log file reopened").Len() == 1 })
	if f := logs.FilterMessage("log file reopened").All()[0].ContextMap()["file"]; f != logFile.Path() {
		t.Errorf("reopened file %v, want %s", f, logFile.Path())
	}
	s.Interrupt(nil)
	s.Interrupt(nil)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Interrupt")
	}
}

// Without a log file, SIGUSR1 says it has nothing to reopen.
func TestSIGUSR1WithoutALogFile(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	s := &signals{log: zap.New(core)}
	s.reopen()
	if logs.FilterMessage("SIGUSR1 ignored: the log goes to stderr, not to a file").Len() != 1 {
		t.Error("SIGUSR1 without a log file was not explained")
	}
}
