package ipc

import (
	"math/bits"
	"slices"
)

// inflightTable is one connection's delivered items not yet acknowledged
// (PROTOCOL.md's in-flight rules 3 and 4), keyed by delivery id. It is
// guarded by its connection's mu.
//
// It keeps the items the way they were delivered: one run per ITEMS reply,
// whose items carry consecutive delivery ids. A run is an append and a
// bitmap, where a table keyed by delivery id would be a map insert per
// item and a lookup and a delete per acknowledgement: the broker's largest
// cost when consumers prefetch. Runs are kept in delivery-id order, so
// finding an id is a binary search, and acknowledgements, which mostly come
// in delivery order, empty the oldest runs first.
//
// A run keeps its items' bodies until its last item is acknowledged or
// taken back, so a client holding one item of a batch holds the memory of
// the batch: a batch is at most one frame.
type inflightTable struct {
	runs  []*inflightRun // by first delivery id; runs[:head] are empty
	head  int
	empty int // empty runs at or after head
	held  int // items held
}

type inflightRun struct {
	first uint64
	q     *queue
	cons  *waiter // the CONSUME its items were pushed to; nil for a GET's
	items []item
	held  []uint64 // bit i: items[i] is still in flight
	left  int
}

// add records items delivered with ids first, first+1, ... Delivery ids
// are handed out by the broker in increasing order, but two queues can
// deliver to one connection concurrently, so a run may arrive behind a
// later one.
func (t *inflightTable) add(first uint64, q *queue, cons *waiter, items []item) {
	if len(items) == 0 {
		return
	}
	r := &inflightRun{first: first, q: q, cons: cons, items: items, held: make([]uint64, (len(items)+63)/64), left: len(items)}
	for i := range len(items) / 64 {
		r.held[i] = ^uint64(0)
	}
	if rem := len(items) % 64; rem != 0 {
		r.held[len(r.held)-1] = 1<<rem - 1
	}
	t.held += len(items)
	if n := len(t.runs); n == t.head || t.runs[n-1].first < first {
		t.runs = append(t.runs, r)
		return
	}
	i, _ := slices.BinarySearchFunc(t.runs[t.head:], first, func(r *inflightRun, first uint64) int {
		switch {
		case r.first < first:
			return -1
		case r.first > first:
			return 1
		}
		return 0
	})
	t.runs = slices.Insert(t.runs, t.head+i, r)
}

// take removes delivery d from the table and returns it, or reports false
// if d is not in flight here.
func (t *inflightTable) take(d uint64) (inflightItem, bool) {
	live := t.runs[t.head:]
	if len(live) == 0 {
		return inflightItem{}, false
	}
	// Mostly the oldest run, as consumers acknowledge in order; otherwise
	// the last run starting at or before d.
	i, found := 0, true
	if r := live[0]; d < r.first || d-r.first >= uint64(len(r.items)) {
		i, found = slices.BinarySearchFunc(live, d, func(r *inflightRun, d uint64) int {
			switch {
			case r.first < d:
				return -1
			case r.first > d:
				return 1
			}
			return 0
		})
	}
	if !found {
		i--
	}
	if i < 0 {
		return inflightItem{}, false
	}
	r := live[i]
	k := d - r.first
	if k >= uint64(len(r.items)) || r.held[k/64]&(1<<(k%64)) == 0 {
		return inflightItem{}, false
	}
	r.held[k/64] &^= 1 << (k % 64)
	r.left--
	t.held--
	e := inflightItem{q: r.q, it: r.items[k], cons: r.cons}
	if r.left == 0 {
		r.items, r.held = nil, nil
		t.empty++
		t.trim()
	}
	return e, true
}

// trim drops empty runs: those at the front at once, those behind a run
// still held once they outnumber the live ones, so a client that keeps one
// item while acknowledging millions does not grow the table.
func (t *inflightTable) trim() {
	for t.head < len(t.runs) && t.runs[t.head].left == 0 {
		t.runs[t.head] = nil
		t.head++
		t.empty--
	}
	if t.head == len(t.runs) {
		t.runs, t.head = t.runs[:0], 0
		return
	}
	if live := len(t.runs) - t.head - t.empty; t.empty > 16 && t.empty > live {
		kept := t.runs[:0]
		for _, r := range t.runs[t.head:] {
			if r.left > 0 {
				kept = append(kept, r)
			}
		}
		clear(t.runs[len(kept):])
		t.runs, t.head, t.empty = kept, 0, 0
		return
	}
	if t.head > 64 && t.head > len(t.runs)/2 {
		n := copy(t.runs, t.runs[t.head:])
		clear(t.runs[n:])
		t.runs, t.head = t.runs[:n], 0
	}
}

// len is the number of items in flight.
func (t *inflightTable) len() int { return t.held }

// each calls f for every item in flight, in delivery-id order.
func (t *inflightTable) each(f func(d uint64, e inflightItem)) {
	for _, r := range t.runs[t.head:] {
		for w, word := range r.held {
			for word != 0 {
				b := bits.TrailingZeros64(word)
				word &^= 1 << b
				k := w*64 + b
				f(r.first+uint64(k), inflightItem{q: r.q, it: r.items[k], cons: r.cons})
			}
		}
	}
}
