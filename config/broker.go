package config

import (
	"fmt"
	"net"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"
)

// queues decodes queues:, a mapping from queue names to queue settings.
func (d *decoder) queues(e entry) []*Queue {
	ents, ok := d.expectMapping(e, `queues must be a mapping from queue names to queues (e.g. "jobs: {capacity: 10000}")`, "queue name")
	if !ok {
		return nil
	}
	var qs []*Queue
	for _, q := range ents {
		queue := &Queue{Name: q.key, Capacity: DefaultCapacity, Pos: q.keyPos}
		if !validServiceName(q.key) {
			d.errorf(q.keyPos, `invalid queue name %q (a name starts with a letter and has only letters, digits, "-" and "_", at most %d bytes)`, q.key, maxNameLen)
		}
		settings, ok := d.expectMapping(q, fmt.Sprintf(`queue %q must be a mapping, e.g. "{capacity: 10000}" (or empty for the defaults)`, q.key), "key")
		if ok {
			for _, f := range settings {
				switch f.key {
				case "capacity":
					if n, ok := d.intRange(f, 1, MaxCapacity); ok {
						queue.Capacity = int(n)
					}
				default:
					d.unknownKey(f, fmt.Sprintf(" in queue %q", q.key), queueKeys)
				}
			}
		}
		qs = append(qs, queue)
	}
	return qs
}

// broker decodes broker: into b, which holds the defaults.
func (d *decoder) broker(e entry, b *SocketAccess) {
	ents, ok := d.expectMapping(e, "broker must be a mapping of socket, group, allow_uids and allow_gids", "key")
	if !ok {
		return
	}
	for _, f := range ents {
		if !d.access(f, b) {
			d.unknownKey(f, " in broker", brokerKeys)
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

// access decodes f into a if it is one of a socket's access keys, and
// reports whether it was.
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
	if !ok {
		return ""
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		d.errorf(e.pos, `metrics_listen must be "host:port", e.g. "127.0.0.1:9464" (got %q)`, a)
		return ""
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		d.errorf(e.pos, `metrics_listen's port must be a number from 0 (any free port, logged) to 65535, e.g. "127.0.0.1:9464" (got %q)`, port)
		return ""
	}
	if host == "" {
		d.errorf(e.pos, `metrics_listen needs a host: "127.0.0.1:%s" for this machine only, "0.0.0.0:%s" for every interface (got %q)`, port, port, a)
		return ""
	}
	if net.ParseIP(host) == nil && host != "localhost" {
		d.errorf(e.pos, `metrics_listen's host must be an IP address or "localhost", e.g. "127.0.0.1:9464" (got %q)`, host)
		return ""
	}
	return a
}

// socketPath decodes a socket path, made absolute against the config
// file's directory and short enough for the kernel.
func (d *decoder) socketPath(e entry) string {
	p, ok := d.text(e, "a socket path")
	switch {
	case !ok:
		return ""
	case p == "":
		d.errorf(e.pos, `socket is empty (write a path, or leave socket out for the default)`)
		return ""
	case strings.IndexByte(p, 0) >= 0:
		d.errorf(e.pos, `socket contains a NUL byte (a path cannot hold "\0")`)
		return ""
	case !filepath.IsAbs(p):
		base, err := filepath.Abs(filepath.Dir(d.file))
		if err != nil {
			d.errorf(e.pos, "cannot resolve socket %q against the config file's directory: %v (write an absolute path)", p, err)
			return ""
		}
		p = filepath.Join(base, p)
	}
	p = filepath.Clean(p)
	if len(p) > MaxSocketPath {
		d.errorf(e.pos, "socket path %q is %d bytes long (a Unix socket path has at most %d; choose a shorter one)", p, len(p), MaxSocketPath)
		return ""
	}
	return p
}

// group decodes a group name or number and resolves it to a gid.
func (d *decoder) group(e entry) (string, int) {
	g, ok := d.text(e, "a group name or number")
	if !ok {
		return "", -1
	}
	if n, err := strconv.Atoi(g); err == nil {
		if n < 0 {
			d.errorf(e.pos, "group must be a group name or a number from 0 (got %d)", n)
			return "", -1
		}
		return g, n
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		d.errorf(e.pos, "unknown group %q (no such group on this machine; create it, or give its number)", g)
		return "", -1
	}
	gid, err := strconv.Atoi(grp.Gid)
	if err != nil {
		d.errorf(e.pos, "group %q has the id %q, which is not a number (give the group's number instead)", g, grp.Gid)
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
		if id, ok := d.intRange(el, 0, 1<<31-1); ok {
			out = append(out, int(id))
		}
	}
	return out
}
