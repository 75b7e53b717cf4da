package config

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/goccy/go-yaml/ast"
)

// queues decodes queues:, a mapping from queue names to queue settings,
// over qs, the declared queues: a queue of a declared name starts from the
// declared one; the others follow in the file's order.
func (d *decoder) queues(e entry, qs []*Queue) []*Queue {
	ents, ok := d.expectMapping(e, `queues must be a mapping from queue names to queues (e.g. "jobs: {capacity: 10000}")`, "queue name")
	if !ok {
		return qs
	}
	for _, q := range ents {
		var queue *Queue
		if i := slices.IndexFunc(qs, func(x *Queue) bool { return x.Name == q.key }); i >= 0 {
			queue = qs[i]
		} else {
			queue = newQueue(q.key, q.keyPos)
			d.problem(q.keyPos, nameProblem("queue", q.key))
			qs = append(qs, queue)
		}
		queue.Pos = q.keyPos
		settings, ok := d.expectMapping(q, fmt.Sprintf(`queue %q must be a mapping, e.g. "{capacity: 10000}" (or empty for the defaults)`, q.key), "key")
		if ok {
			d.queue(q.key, settings, queue)
		}
	}
	return qs
}

// queue decodes the settings of the queue called name into q, over what
// q holds (the defaults or the declared values).
func (d *decoder) queue(name string, settings []entry, q *Queue) {
	at := d.queueAt[q]
	storeValid := true
	var ackWaitAt, replicasAt, packAt Position // keys of valid values, if the file sets them
	for _, f := range settings {
		switch f.key {
		case "capacity":
			if n, ok := d.intRange(f, capacityRule); ok {
				q.Capacity = int(n)
			}
		case "store":
			storeValid = false
			if v, ok := d.text(f, `"memory" or "jetstream"`); ok && d.problem(f.pos, storeProblem(Store(v), strconv.Quote(v))) {
				q.Store, at.store, storeValid = Store(v), f.pos, true
			}
		case "ack_wait":
			if t, ok := d.duration(f); ok {
				q.AckWait, ackWaitAt = t, f.keyPos
			}
		case "replicas":
			if n, ok := d.intRange(f, replicasRule); ok {
				q.Replicas, at.replicas, replicasAt = int(n), f.pos, f.keyPos
			}
		case "pack":
			if n, ok := d.intRange(f, packRule); ok {
				q.Pack, packAt = int(n), f.keyPos
			}
		case "schedule":
			// The file's list replaces the declared one.
			q.Schedules = d.schedules(f)
		default:
			d.unknownKey(f, fmt.Sprintf(" in queue %q", name), queueKeys)
		}
	}
	d.queueAt[q] = at
	// Judged against the store the queue ends up with, set here or
	// declared; not against a store the file got wrong.
	if storeValid && ackWaitAt != (Position{}) {
		d.problem(ackWaitAt, jetStreamOnlyProblem("ack_wait", q.Store))
	}
	if storeValid && replicasAt != (Position{}) {
		d.problem(replicasAt, jetStreamOnlyProblem("replicas", q.Store))
	}
	if storeValid && packAt != (Position{}) {
		d.problem(packAt, jetStreamOnlyProblem("pack", q.Store))
	}
}

// jetStream checks the jetstream queues against the nats: section, once
// both are known: a jetstream queue needs one, and one with local_dir
// keeps a single replica. An error is put on the file's store or replicas
// of the queue, else on the declared store, or on the file's local_dir.
func (d *decoder) jetStream(cfg *Config) {
	for _, q := range cfg.JetStreamQueues() {
		at := d.queueAt[q]
		if at.store == (Position{}) {
			at.store = Position{Field: "queues." + fieldName(q.Name, validServiceName) + ".store"}
		}
		if at.replicas == (Position{}) {
			at.replicas = d.localDirAt
		}
		d.problem(at.store, needsNATSProblem(q.Store, cfg.NATS != nil))
		if n := cfg.NATS; n != nil {
			d.problem(at.replicas, localReplicasProblem(q.Name, q.Replicas, n.LocalDir != "" && len(n.URLs) == 0))
		}
	}
}

// broker decodes broker: into b, which holds the defaults.
func (d *decoder) broker(e entry, b *SocketAccess) {
	ents, ok := d.expectMapping(e, "broker must be a mapping of socket, group, allow_uids and allow_gids", "key")
	if !ok {
		return
	}
	for _, f := range ents {
		switch {
		case !d.access(f, b):
			d.unknownKey(f, " in broker", brokerKeys)
		case f.key == "socket":
			d.brokerSocketAt = f.pos
		}
	}
}

// control decodes control: into c, which holds the defaults.
func (d *decoder) control(e entry, c *Control) {
	ents, ok := d.expectMapping(e, "control must be a mapping of socket, group, allow_uids, allow_gids and metrics_listen", "key")
	if !ok {
		return
	}
	for _, f := range ents {
		switch {
		case d.access(f, &c.SocketAccess):
			if f.key == "socket" {
				d.controlSocketAt = f.pos
			}
		case f.key == "metrics_listen":
			c.MetricsListen = d.listenAddress(f)
		default:
			d.unknownKey(f, " in control", controlKeys)
		}
	}
}

// access decodes f into a, over what a holds, if it is one of a socket's
// access keys, and reports whether it was.
func (d *decoder) access(f entry, a *SocketAccess) bool {
	switch f.key {
	case "socket":
		a.Socket = d.socketPath(f)
	case "group":
		a.Group, a.GID = d.group(f)
	case "allow_uids":
		a.AllowUIDs = d.ids(f, "user")
	case "allow_gids":
		a.AllowGIDs = d.ids(f, "group")
	default:
		return false
	}
	return true
}

// listenAddress decodes a TCP "host:port" to listen on.
func (d *decoder) listenAddress(e entry) string {
	a, ok := d.text(e, `a "host:port" address`)
	if !ok || !d.problem(e.pos, listenProblem(a)) {
		return ""
	}
	return a
}

// socketPath decodes a socket path, made absolute against the config
// file's directory and short enough for the kernel.
func (d *decoder) socketPath(e entry) string {
	p, ok := d.text(e, "a socket path")
	if !ok {
		return ""
	}
	abs, msg := socketRule(p, fileBase(d.file))
	d.problem(e.pos, msg)
	return abs
}

// group decodes a group name or number and resolves it to a gid.
func (d *decoder) group(e entry) (string, int) {
	g, ok := d.text(e, "a group name or number")
	if !ok {
		return "", -1
	}
	gid, msg := groupRule(g)
	if !d.problem(e.pos, msg) {
		return "", -1
	}
	return g, gid
}

// ids decodes a list of user or group ids.
func (d *decoder) ids(e entry, kind string) []int {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	seq, isSeq := n.(*ast.SequenceNode)
	if !isSeq {
		d.errorf(e.pos, "%s must be a list of %s ids, e.g. [1000, 1001] (got %s)", e.key, kind, describe(n))
		return nil
	}
	var out []int
	for i, v := range seq.Values {
		el := d.element(fmt.Sprintf("%s[%d]", e.key, i), v)
		if id, ok := d.intRange(el, idRule); ok {
			out = append(out, int(id))
		}
	}
	return out
}

// newQueue is a queue called name with every default: a memory queue of
// DefaultCapacity. finish gives a jetstream queue its AckWait, Replicas
// and Pack.
func newQueue(name string, pos Position) *Queue {
	return &Queue{Name: name, Capacity: DefaultCapacity, Store: StoreMemory, Pos: pos}
}
