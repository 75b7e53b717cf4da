package supervisor

import "sync"

// mailbox is an unbounded queue with one reader. Senders never block, which
// is what lets the loop and the process table send to each other without a
// chance of deadlock: each only ever blocks on its own inbox.
type mailbox[T any] struct {
	mu     sync.Mutex
	items  []T
	wake   chan struct{} // holds one token while items is non-empty
	closed bool
}

func newMailbox[T any]() *mailbox[T] {
	return &mailbox[T]{wake: make(chan struct{}, 1)}
}

// put appends v and reports true; after close it drops v and reports
// false. Safe for concurrent use.
func (m *mailbox[T]) put(v T) bool {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return false
	}
	m.items = append(m.items, v)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns everything queued, in order, after a receive from wake.
func (m *mailbox[T]) take(buf []T) []T {
	m.mu.Lock()
	defer m.mu.Unlock()
	buf = append(buf[:0], m.items...)
	clear(m.items)
	m.items = m.items[:0]
	return buf
}

// close makes later puts no-ops.
func (m *mailbox[T]) close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}
