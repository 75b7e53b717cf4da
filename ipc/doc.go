// Package ipc is gotyledon's work queue: a broker that runs inside the
// manager and serves named, bounded queues on a Unix socket, and the Go
// client workers use to put and get items. The wire protocol is
// PROTOCOL.md in this directory; a client in any language can speak it.
//
// Delivery is at least once: an item a worker got (Client.Get) stays in
// flight, owned by that worker's connection, until the worker acks it; if
// the connection closes first (the worker exited, crashed or was killed)
// the broker puts the item back at the head of its queue and hands it to
// another consumer, with Delivery.Deliveries one higher. Client.GetAutoAck
// is at most once instead. The rules are those of queue.go.
//
// Queues are bounded: a put on a full queue waits (or fails with ErrFull,
// or ErrTimeout at the caller's deadline), which holds a fast producer back
// to the pace of its consumers.
//
// # When the manager goes away
//
// The broker lives in the manager's process, in memory. When the manager
// stops (Broker.Close), waiting calls return an error wrapping
// ErrShuttingDown, then the connection closes and every pending and later
// call on the Client returns an error wrapping ErrClosed. When the manager
// dies, the same happens without the first step. Either way every item the
// broker held is gone: those waiting in queues and those in flight, so an
// item a worker got but has not acked yet is not redelivered by a new
// manager (it cannot ack it either: Ack returns ErrClosed). At least once
// holds only while the manager lives. A Client does not reconnect: a worker
// whose Client returns ErrClosed should exit (its manager, or the new one,
// starts it again, and it dials the new broker); a worker's context also
// ends when the manager dies (package service).
package ipc
