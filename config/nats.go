package config

import (
	"cmp"
	"fmt"
	"time"

	"github.com/goccy/go-yaml/ast"
)

// nats decodes nats:, the mapping that says where the jetstream queues'
// JetStream is. It returns a NATS even when the mapping has errors, so
// that the jetstream queues are not blamed for a missing section.
func (d *decoder) nats(e entry) *NATS {
	n := &NATS{Pos: e.keyPos}
	ents, ok := d.expectMapping(e, `nats must be a mapping with url (NATS servers) or local_dir (a JetStream server gotyledon runs), e.g. "{local_dir: /var/lib/gotyledon/jetstream}"`, "key")
	if !ok {
		return n
	}
	at := map[string]Position{} // where each key stands
	for _, f := range ents {
		at[f.key] = f.keyPos
		switch f.key {
		case "url":
			n.URLs = d.urls(f)
		case "creds":
			n.Creds = d.existingFile(f, "creds")
		case "nkey":
			n.NKey = d.existingFile(f, "nkey")
		case "tls":
			d.tls(f, n)
		case "local_dir":
			n.LocalDir = d.path(f, localDirRule)
			if n.LocalDir != "" {
				d.localDirAt = f.pos
			}
		case "sync":
			n.SyncAlways, n.SyncInterval = d.sync(f)
		case "bridge":
			n.Bridge = d.path(f, bridgeRule)
		default:
			d.unknownKey(f, " in nats", natsKeys)
		}
	}
	urlAt, hasURL := at["url"]
	localAt, hasLocal := at["local_dir"]
	switch {
	case !hasURL && !hasLocal:
		d.problem(e.keyPos, natsServerProblem(false, false))
	case hasURL && hasLocal:
		d.problem(later(urlAt, localAt), natsServerProblem(true, true))
	default:
		for _, key := range []string{"creds", "nkey", "tls", "sync"} {
			if p, ok := at[key]; ok {
				d.problem(p, natsKeyProblem(key, hasLocal))
			}
		}
		credsAt, hasCreds := at["creds"]
		nkeyAt, hasNKey := at["nkey"]
		if !hasLocal && hasCreds && hasNKey {
			d.problem(later(credsAt, nkeyAt), credsProblem(true, true))
		}
	}
	return n
}

// later is the one of two places in a file that comes later.
func later(a, b Position) Position {
	if cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col)) > 0 {
		return a
	}
	return b
}

// urls decodes nats.url: one URL, or a list of them.
func (d *decoder) urls(e entry) []string {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	seq, isSeq := n.(*ast.SequenceNode)
	if !isSeq {
		u, ok := d.text(e, `a NATS server URL or a list of them, as in "nats://127.0.0.1:4222"`)
		if !ok || !d.problem(e.pos, urlProblem(e.key, u)) {
			return nil
		}
		return []string{u}
	}
	if len(seq.Values) == 0 {
		d.errorf(e.pos, "%s", emptyURLs)
		return nil
	}
	var out []string
	for i, v := range seq.Values {
		el := d.element(fmt.Sprintf("url[%d]", i), v)
		if m, ok := d.deref(v); ok && isMapping(m) {
			// Inside { }, the YAML parser splits an unquoted
			// [nats://a:4222] at its second colon.
			d.errorf(el.pos, `%s must be a NATS server URL (got a mapping; inside { } and [ ], quote each URL, as in ["nats://a:4222"])`, el.key)
			continue
		}
		if u, ok := d.text(el, "a NATS server URL"); ok && d.problem(el.pos, urlProblem(el.key, u)) {
			out = append(out, u)
		}
	}
	return out
}

// isMapping reports whether the derefed value n is a mapping.
func isMapping(n ast.Node) bool {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return true
	}
	return false
}

// tls decodes nats.tls into n.
func (d *decoder) tls(e entry, n *NATS) {
	ents, ok := d.expectMapping(e, `tls must be a mapping of ca, cert and key, each a file (e.g. "{ca: /etc/nats/ca.pem}")`, "key")
	if !ok {
		return
	}
	var certAt, keyAt Position
	for _, f := range ents {
		switch f.key {
		case "ca":
			n.TLSCA = d.existingFile(f, "tls.ca")
		case "cert":
			n.TLSCert, certAt = d.existingFile(f, "tls.cert"), f.keyPos
		case "key":
			n.TLSKey, keyAt = d.existingFile(f, "tls.key"), f.keyPos
		default:
			d.unknownKey(f, " in nats.tls", tlsKeys)
		}
	}
	hasCert, hasKey := certAt != (Position{}), keyAt != (Position{})
	d.problem(cmp.Or(certAt, keyAt), tlsPairProblem(hasCert, hasKey))
}

// existingFile decodes the path of a file that must exist, named key in
// messages, made absolute against the config file's directory.
func (d *decoder) existingFile(e entry, key string) string {
	p, ok := d.text(e, "a file path")
	if !ok {
		return ""
	}
	abs, msg := fileRule(key, p, fileBase(d.file))
	d.problem(e.pos, msg)
	return abs
}

// path decodes a path (local_dir, bridge) that rule makes absolute
// against the config file's directory.
func (d *decoder) path(e entry, rule func(p string, base baseDir) (string, string)) string {
	p, ok := d.text(e, "a path")
	if !ok {
		return ""
	}
	abs, msg := rule(p, fileBase(d.file))
	d.problem(e.pos, msg)
	return abs
}

// sync decodes nats.sync: "always", or a duration.
func (d *decoder) sync(e entry) (bool, time.Duration) {
	n, ok := d.deref(e.val)
	if !ok {
		return false, 0
	}
	s, ok := scalarText(n)
	if !ok {
		d.errorf(e.pos, `sync must be "always" or a duration like "1s" (got %s)`, describe(n))
		return false, 0
	}
	always, t, msg := syncRule(s, describe(n))
	if !d.problem(e.pos, msg) {
		return false, 0
	}
	return always, t
}
