package manager

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/logging"
)

// signals is the actor that turns the manager's signals into requests:
//
//   - SIGTERM: a graceful shutdown;
//   - SIGINT: the same, and a SIGINT while a shutdown is under way (Ctrl-C
//     twice, or after SIGTERM) kills what is left;
//   - SIGHUP: reload the configuration file and apply the difference, as
//     an edit of the file does;
//   - SIGUSR1: reopen the log file (after logrotate moved it).
//
// SIGCHLD is not here: only the supervisor's process table reaps. Run is
// its execute function and Interrupt its interrupt.
type signals struct {
	c       chan os.Signal
	sigpipe chan os.Signal
	to      *reloader
	logFile *logging.File // nil when the log goes to stderr
	log     *zap.Logger

	// stopAsked: a SIGTERM or SIGINT came already, so a SIGINT now asks
	// for a fast shutdown. Owned by Run.
	stopAsked bool

	quit     chan struct{}
	quitOnce sync.Once
}

// subscribeSignals subscribes to the manager's signals. It is the first
// thing a manager does, so that a signal that arrives during start-up is
// acted on once the actors run, not lost or fatal; unsubscribe undoes it.
func subscribeSignals(log *zap.Logger, logFile *logging.File) *signals {
	s := &signals{c: make(chan os.Signal, 8), sigpipe: make(chan os.Signal, 1), logFile: logFile, log: log, quit: make(chan struct{})}
	signal.Notify(s.c, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	// Catching SIGPIPE (and never reading it) turns a write to a closed
	// stderr, say when the log reader dies, into an error zap drops instead
	// of the signal's default action: killing the manager and, with it,
	// every worker. Caught, not ignored, so workers still start with the
	// default action.
	signal.Notify(s.sigpipe, syscall.SIGPIPE)
	return s
}

// unsubscribe gives the manager's signals back their default actions.
// SIGPIPE stays caught for the life of the process: whatever the program
// writes to a closed stderr after the manager (its last log line, say)
// must fail, not kill it.
func (s *signals) unsubscribe() {
	signal.Stop(s.c)
}

// Run acts on signals until Interrupt, then returns nil. The signals stay
// caught until Manager.Close: one that comes while the manager is still
// stopping must not kill it.
func (s *signals) Run() error {
	for {
		select {
		case <-s.quit:
			return nil
		case sig := <-s.c:
			switch sig {
			case syscall.SIGINT:
				if !s.stopAsked {
					s.log.Info("signal received; stopping the workers gracefully (interrupt again to kill them now)", zap.Stringer("signal", sig))
				} else {
					s.log.Info("signal received again; killing the workers still running", zap.Stringer("signal", sig))
				}
				s.stopAsked = true
				s.to.stop(true)
			case syscall.SIGTERM:
				s.log.Info("signal received", zap.Stringer("signal", sig))
				s.stopAsked = true
				s.to.stop(false)
			case syscall.SIGHUP:
				s.log.Info("signal received", zap.Stringer("signal", sig))
				s.to.request(supervisor.ReloadBySignal)
			case syscall.SIGUSR1:
				s.reopen()
			}
		}
	}
}

func (s *signals) reopen() {
	if s.logFile == nil {
		s.log.Info("SIGUSR1 ignored: the log goes to stderr, not to a file")
		return
	}
	if err := s.logFile.Reopen(); err != nil {
		s.log.Error("cannot reopen the log file; still writing to the old one", zap.Error(err))
		return
	}
	s.log.Info("log file reopened", zap.String("file", s.logFile.Path()))
}

// Interrupt ends Run. Safe to call more than once.
func (s *signals) Interrupt(error) { s.quitOnce.Do(func() { close(s.quit) }) }
