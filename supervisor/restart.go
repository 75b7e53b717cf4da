package supervisor

import (
	"time"

	"github.com/gotyledon/gotyledon/config"
)

// jitterFraction spreads restart delays by ±20% so that workers which died
// together (a dependency went down) do not all come back in the same instant.
const jitterFraction = 0.2

// restartDelay decides when a worker that just exited is started again.
//
// failures counts the worker's quick exits in a row before this one. An exit
// after at least MinUptime is a normal one: the count resets and the worker
// is restarted at once (delay 0). A quicker exit is a failure to start and
// the count grows. The first in a row is restarted at once too: a worker
// killed young (an operator's kill, an OOM kill) is not held back for a
// death that may not repeat. From the second, the delay is BackoffInitial ×
// 2^(failures-2), capped at BackoffMax, with jitter that never exceeds the
// cap. rnd returns a number in [0, 1).
//
// It is a pure function so the policy is tested without a clock.
func restartDelay(p config.Restart, uptime time.Duration, failures int, rnd func() float64) (delay time.Duration, newFailures int) {
	if uptime >= p.MinUptime {
		return 0, 0
	}
	failures++
	if failures == 1 {
		return 0, failures
	}
	d := p.BackoffInitial
	for i := 2; i < failures && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = time.Duration(float64(d) * (1 + jitterFraction*(2*rnd()-1)))
	return min(d, p.BackoffMax), failures
}
