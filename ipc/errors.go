package ipc

import (
	"errors"
	"fmt"
)

// Errors a caller tells apart with errors.Is. A status from the broker
// arrives as a *StatusError, which errors.Is matches to the sentinel of its
// code.
var (
	// ErrFull: a PUT that may not wait found the queue full (status FULL).
	ErrFull = errors.New("queue full")
	// ErrTimeout: nothing (GET) or not everything (PUT) within the time
	// allowed (status TIMEOUT).
	ErrTimeout = errors.New("timed out")
	// ErrNoSuchQueue: the queue is not in the broker's configuration.
	ErrNoSuchQueue = errors.New("no such queue")
	// ErrTooLarge: an item is longer than the broker's max_item.
	ErrTooLarge = errors.New("item too large")
	// ErrRefused: the broker refused this peer (FATAL REFUSED).
	ErrRefused = errors.New("refused by the broker")
	// ErrClosed: the client was closed, or its connection to the broker is
	// gone.
	ErrClosed = errors.New("connection to the queue broker closed")
	// ErrShuttingDown: the broker is stopping (status SHUTTING_DOWN).
	ErrShuttingDown = errors.New("queue broker shutting down")
	// ErrUnsupported: the queue cannot do what was asked (status
	// UNSUPPORTED): a task submitted to a queue kept in JetStream.
	ErrUnsupported = errors.New("not supported by this queue")
	// ErrDraining: the worker this connection belongs to is being drained
	// before it is stopped (status DRAINING, see Broker.Drain): a GET or a
	// CONSUME (Consumer.Next) takes no more items. The items already handed
	// to the caller are still its own: acknowledge (or NACK) them, then
	// wait for the stop signal. It is not a failure: the worker should
	// not exit with an error, nor ask again.
	ErrDraining = errors.New("draining: this worker takes no more items")
	// ErrQueueNotEmpty is wrapped by SetQueues' error when it would remove
	// a queue that holds items (waiting or in flight).
	ErrQueueNotEmpty = errors.New("queue not empty")
)

var statusSentinels = map[uint16]error{
	statusTimeout:      ErrTimeout,
	statusFull:         ErrFull,
	statusNoSuchQueue:  ErrNoSuchQueue,
	statusTooLarge:     ErrTooLarge,
	statusRefused:      ErrRefused,
	statusShuttingDown: ErrShuttingDown,
	statusUnsupported:  ErrUnsupported,
	statusDraining:     ErrDraining,
}

// StatusError is a status other than OK from the broker, in a RESULT or a
// FATAL: Code is the protocol's status code (PROTOCOL.md, "Status codes"),
// Message the broker's explanation. errors.Is(err, ErrFull) and the like
// match it by code. The client returns it as a *StatusError.
type StatusError struct {
	Code    uint16
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return "queue broker: " + statusName(e.Code)
	}
	return fmt.Sprintf("queue broker: %s: %s", statusName(e.Code), e.Message)
}

// Is reports whether target is the sentinel error of e's code.
func (e *StatusError) Is(target error) bool {
	s, ok := statusSentinels[e.Code]
	return ok && s == target
}
