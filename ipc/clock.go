package ipc

import "time"

// clock is the time the broker's own logic waits on: a waiting GET's or
// PUT's timeout and the pause before Serve retries a failed accept. It is a
// seam so tests in this package can fire timeouts and record pauses without
// sleeping; NewBroker sets the real one, and a test may replace
// Broker.clock before the first Serve.
//
// Connection deadlines are deliberately not on it (see deadlineIn), and
// nothing else in the broker reads the time, so the clock has no now.
type clock struct {
	// afterFunc calls f once, on a goroutine of its own, after d. stop
	// keeps f from being called and reports true if it was in time; false
	// means f has run or is about to, so f must cope with firing late.
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	// sleep returns after d.
	sleep func(d time.Duration)
}

// realClock is the clock of the time package.
func realClock() clock {
	return clock{
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
		sleep:     time.Sleep,
	}
}

// deadlineIn returns the wall-clock instant d from now, for net.Conn's
// deadlines. They are read from the real clock, never the broker's clock:
// the runtime's poller enforces a deadline against the real time, so a fake
// clock could not make one expire, and a deadline computed from a fake now
// would only be wrong (one in the past times out every read at once). The
// frame deadline is tested with real sockets and real time instead
// (TestFrameDeadline, TestLimitStalledClientsClosedAtDeadline).
func deadlineIn(d time.Duration) time.Time { return time.Now().Add(d) }
