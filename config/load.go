package config

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// maxNameLen bounds a service name, in bytes.
const maxNameLen = 63

// maxExpanded bounds the number of values a file stands for with every
// alias expanded. Aliases of aliases can make a small file stand for a huge
// tree ("billion laughs"), and the decoder walks an aliased value once per
// use; real configurations stay far below this.
const maxExpanded = 1_000_000

// Keys allowed in each mapping, sorted: error messages list them in this order.
var (
	topKeys     = []string{"broker", "control", "nats", "queues", "services", "shutdown_timeout"}
	brokerKeys  = []string{"allow_gids", "allow_uids", "group", "socket"}
	controlKeys = []string{"allow_gids", "allow_uids", "group", "metrics_listen", "socket"}
	queueKeys   = []string{"ack_wait", "capacity", "pack", "replicas", "schedule", "store"}
	natsKeys    = []string{"bridge", "creds", "local_dir", "nkey", "sync", "tls", "url"}
	tlsKeys     = []string{"ca", "cert", "key"}
	serviceKeys = []string{"command", "depends_on", "dir", "env", "env_file", "on_exit", "ready", "ready_timeout", "recycle", "reload_signal", "replace", "restart", "run", "schedule", "stop_signal", "stop_timeout", "watchdog", "workers"}
	restartKeys = []string{"backoff_initial", "backoff_max", "min_uptime", "policy"}
	recycleKeys = []string{"jitter", "max_age", "max_jobs", "memory_max"}
)

// IsManagerOnlyEnv reports whether name is one of the variables systemd
// gives the manager about itself (NOTIFY_SOCKET, LISTEN_*, WATCHDOG_*). The
// supervisor removes them from every worker's environment, and a
// configuration may not set them.
func IsManagerOnlyEnv(name string) bool { return slices.Contains(systemdEnv, name) }

// Load reads the configuration file at path and parses it with [Parse].
//
// If the file cannot be read, the error wraps the one from the operating
// system (so errors.Is(err, fs.ErrNotExist) works) and reads
// "load config: open PATH: ...". If the file has problems, the error is an
// [ErrorList] of all of them.
func Load(path string, goServices []string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, data, goServices)
}

// Parse parses and validates data, the contents of the configuration file
// named file. file is used in error positions and as Config.File, and a
// relative `dir:` is resolved against its directory (made absolute against
// the working directory). goServices lists the Go services the running
// program registers; `run:` must name one of them.
//
// Parse returns either a Config with every default filled in, or nil and an
// [ErrorList] holding every problem found, sorted by position. It never
// panics, whatever data holds.
//
// To apply the file on top of a configuration declared in Go, use
// [ParseOver].
func Parse(file string, data []byte, goServices []string) (*Config, error) {
	d := newDecoder(file, goServices, nil)
	cfg := d.decode(data)
	if len(d.errs) > 0 {
		sortErrors(d.errs)
		return nil, d.errs
	}
	return cfg, nil
}

// decoder walks the YAML syntax tree of one file into a Config, collecting
// every error on the way. Methods that decode a value take the node as
// written in the file (possibly an alias) so that errors point there.
type decoder struct {
	file       string
	goServices []string
	// base is the declaration the file applies on top of, or nil.
	base     *declared
	aliases  map[*ast.AliasNode]ast.Node // each alias's anchored node
	sizes    map[ast.Node]int            // expanded size of each anchored node
	expanded int                         // values linkAliases has seen so far, aliases expanded
	errs     ErrorList
	seen     map[Error]bool // errors already in errs: an aliased node is walked once per use
	// controlSocketAt and brokerSocketAt are where control.socket and
	// broker.socket stand (zero: not in the file), for an error about
	// them that only the whole configuration shows.
	controlSocketAt, brokerSocketAt Position
	// queueAt is where the file sets each queue's store and replicas, and
	// localDirAt where it sets nats.local_dir, for the errors that only
	// the queues and the nats: section together show.
	queueAt    map[*Queue]queueAt
	localDirAt Position
}

// queueAt is where the file sets a queue's store and replicas (zero: not
// in the file).
type queueAt struct{ store, replicas Position }

func newDecoder(file string, goServices []string, base *declared) *decoder {
	return &decoder{
		file:       file,
		goServices: goServices,
		base:       base,
		aliases:    map[*ast.AliasNode]ast.Node{},
		sizes:      map[ast.Node]int{},
		seen:       map[Error]bool{},
		queueAt:    map[*Queue]queueAt{},
	}
}

// entry is one key: value pair of a mapping, or a value named like one
// (a list element is "command[1]").
type entry struct {
	key    string
	keyPos Position
	val    ast.Node // as written; see deref
	pos    Position // of val, or of the key if the value is left out
}

// element makes an entry of the list element n, named what.
func (d *decoder) element(what string, n ast.Node) entry {
	pos := d.pos(n)
	return entry{key: what, keyPos: pos, val: n, pos: pos}
}

// errorf records an error at pos, unless the same one is already recorded.
func (d *decoder) errorf(pos Position, format string, args ...any) {
	e := Error{Pos: pos, Msg: fmt.Sprintf(format, args...)}
	if !d.seen[e] {
		d.seen[e] = true
		d.errs = append(d.errs, &e)
	}
}

// problem records msg, the verdict of a rule, at pos unless it is empty,
// and reports whether it was (the value is valid).
func (d *decoder) problem(pos Position, msg string) bool {
	if msg == "" {
		return true
	}
	d.errorf(pos, "%s", msg)
	return false
}

// decode parses data and decodes its one document.
func (d *decoder) decode(data []byte) *Config {
	f, err := parseYAML(data)
	if err != nil {
		d.syntaxError(err)
		return nil
	}
	// Documents without a body (a lone "---", trailing "---") and directive
	// documents ("%YAML 1.2") hold no configuration.
	var body ast.Node
	for _, doc := range f.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if _, ok := doc.Body.(*ast.DirectiveNode); ok {
			continue
		}
		if body != nil {
			pos := d.pos(doc.Body)
			if doc.Start != nil {
				pos = d.tokenPos(doc.Start)
			}
			d.errorf(pos, `second YAML document (a config file holds exactly one; remove this "---" and merge what follows into the first document)`)
			break
		}
		body = doc.Body
	}
	if body == nil && d.base.hasServices() {
		// Over a declaration, an empty file changes nothing.
		return d.config(d.element("", nil))
	}
	if body == nil {
		d.errorf(d.start(), `the file is empty (expected a mapping with a "services" key listing at least one service)`)
		return nil
	}
	if !d.linkAliases(body, map[string]ast.Node{}) {
		return nil
	}
	return d.config(d.element("", body))
}

// parseYAML parses data into a syntax tree. Duplicate keys are left in, to
// be reported with both positions. A panic in the parser, which would be a
// bug there, is turned into an error so that a bad file cannot crash the
// program loading it.
func parseYAML(data []byte) (f *ast.File, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("the YAML parser failed: %v", r)
		}
	}()
	return parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
}

func (d *decoder) syntaxError(err error) {
	var ye yaml.Error
	if errors.As(err, &ye) {
		d.errorf(d.tokenPos(ye.GetToken()), "YAML syntax error: %s (check the indentation, quotes and brackets here)", ye.GetMessage())
		return
	}
	d.errorf(d.start(), "cannot read the file as YAML: %v (the file must be a YAML mapping)", err)
}

// linkAliases records in d.aliases, for every alias under n, the node its
// anchor stands for: that of the latest anchor of the name before the alias.
// An alias inside its own anchor's node is an error, so links never form a
// cycle and deref always ends. linkAliases also counts the values under n
// with aliases expanded, and returns false, having reported it, once the
// count passes maxExpanded.
func (d *decoder) linkAliases(n ast.Node, anchors map[string]ast.Node) bool {
	d.expanded++
	ok := true
	switch n := n.(type) {
	case *ast.MappingNode:
		for _, v := range n.Values {
			ok = ok && d.linkAliases(v, anchors)
		}
	case *ast.MappingValueNode:
		ok = d.linkAliases(n.Key, anchors) && d.linkAliases(n.Value, anchors)
	case *ast.MappingKeyNode:
		ok = d.linkAliases(n.Value, anchors)
	case *ast.SequenceNode:
		for _, v := range n.Values {
			ok = ok && d.linkAliases(v, anchors)
		}
	case *ast.TagNode:
		ok = d.linkAliases(n.Value, anchors)
	case *ast.AnchorNode:
		name := nodeName(n.Name)
		anchors[name] = nil // in progress
		before := d.expanded
		ok = d.linkAliases(n.Value, anchors)
		anchors[name] = n.Value
		d.sizes[n.Value] = d.expanded - before
	case *ast.AliasNode:
		name := nodeName(n.Value)
		target, found := anchors[name]
		switch {
		case !found:
			d.errorf(d.pos(n), "unknown alias *%s (define the anchor &%s on a value before this point)", name, name)
		case target == nil:
			d.errorf(d.pos(n), "alias *%s is inside the value anchored as &%s (an alias must refer to a complete earlier value)", name, name)
		default:
			d.aliases[n] = target
			d.expanded += d.sizes[target]
		}
	}
	if ok && d.expanded > maxExpanded {
		d.errorf(d.pos(n), "aliases expand the file to over %d values here (a configuration needs far fewer; use fewer or smaller aliases)", maxExpanded)
		return false
	}
	return ok
}

// nodeName is the text of an anchor's or alias's name node.
func nodeName(n ast.Node) string {
	if s, ok := scalarText(n); ok {
		return s
	}
	return ""
}

// deref follows n through aliases, anchors and "? key" markers to the node
// that holds the value. It returns ok=false, having reported why, for tags
// (not supported) and for aliases linkAliases could not link (reported there).
func (d *decoder) deref(n ast.Node) (ast.Node, bool) {
	for {
		switch m := n.(type) {
		case *ast.AnchorNode:
			n = m.Value
		case *ast.MappingKeyNode:
			n = m.Value
		case *ast.AliasNode:
			target, ok := d.aliases[m]
			if !ok {
				return nil, false
			}
			n = target
		case *ast.TagNode:
			tag := "!"
			if m.Start != nil {
				tag = m.Start.Value
			}
			d.errorf(d.pos(m), "unsupported tag %s (remove it; each key reads its value as the type it needs)", tag)
			return nil, false
		default:
			return n, true
		}
	}
}

// start is the position of the file's first character.
func (d *decoder) start() Position {
	return Position{File: d.file, Line: 1, Col: 1}
}

// pos is where node n, as written, starts in the file. A block mapping
// starts at its first key (the parser places it at the first colon).
func (d *decoder) pos(n ast.Node) Position {
	if n == nil {
		return d.start()
	}
	if m, ok := n.(*ast.MappingNode); ok && !m.IsFlowStyle && len(m.Values) > 0 && m.Values[0] != nil && m.Values[0].Key != nil {
		return d.pos(m.Values[0].Key)
	}
	return d.tokenPos(n.GetToken())
}

func (d *decoder) tokenPos(tk *token.Token) Position {
	if tk == nil || tk.Position == nil {
		return d.start()
	}
	return Position{File: d.file, Line: max(tk.Position.Line, 1), Col: max(tk.Position.Column, 1)}
}

// scalarText is the text of a non-null scalar: the value of a string (quotes
// and escapes resolved), or the literal text of any other scalar, so 8080
// gives "8080" and True gives "True".
func scalarText(n ast.Node) (string, bool) {
	switch n := n.(type) {
	case *ast.StringNode:
		return n.Value, true
	case *ast.LiteralNode:
		if n.Value == nil {
			return "", true
		}
		return n.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		if tk := n.GetToken(); tk != nil {
			return tk.Value, true
		}
	}
	return "", false
}

// describe says what a derefed value is, for "(got ...)": strings quoted,
// other scalars as written, collections by kind.
func describe(n ast.Node) string {
	switch n := n.(type) {
	case nil, *ast.NullNode:
		return "null"
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode, *ast.LiteralNode:
		s, _ := scalarText(n)
		return strconv.Quote(s)
	}
	if s, ok := scalarText(n); ok {
		return s
	}
	return "a " + n.Type().String()
}

func isNull(n ast.Node) bool {
	_, null := n.(*ast.NullNode)
	return n == nil || null
}

// isImplicitNull reports whether n stands for a value left out, as in "key:"
// with nothing after it. The parser places such a null oddly, so errors
// about it point at the key instead.
func isImplicitNull(n ast.Node) bool {
	null, ok := n.(*ast.NullNode)
	return n == nil || ok && null.Token != nil && null.Token.Type == token.ImplicitNullType
}

// expectMapping derefs e.val and returns its entries, reporting
// "MUSTBE (got ...)" if it is not a mapping. A null value is an empty
// mapping. keyKind names the keys in errors about them ("key", "env name").
func (d *decoder) expectMapping(e entry, mustBe, keyKind string) ([]entry, bool) {
	n, ok := d.deref(e.val)
	if !ok {
		return nil, false
	}
	var pairs []*ast.MappingValueNode
	switch n := n.(type) {
	case nil, *ast.NullNode:
	case *ast.MappingNode:
		pairs = n.Values
	case *ast.MappingValueNode:
		pairs = []*ast.MappingValueNode{n}
	default:
		d.errorf(e.pos, "%s (got %s)", mustBe, describe(n))
		return nil, false
	}
	return d.entries(pairs, keyKind), true
}

// entries turns mapping pairs into entries, reporting and leaving out merge
// keys, keys that are not scalars and repeated keys.
func (d *decoder) entries(pairs []*ast.MappingValueNode, keyKind string) []entry {
	first := map[string]Position{}
	out := make([]entry, 0, len(pairs))
	for _, p := range pairs {
		if p == nil {
			continue
		}
		keyPos := d.pos(p.Key)
		k, ok := d.deref(p.Key)
		if !ok {
			continue
		}
		if _, merge := k.(*ast.MergeKeyNode); merge {
			d.errorf(keyPos, `merge keys ("<<") are not supported (write the keys out; an alias can still stand for a whole value, as in "restart: *defaults")`)
			continue
		}
		name, ok := scalarText(k)
		if !ok {
			d.errorf(keyPos, "a %s must be a plain scalar (got %s)", keyKind, describe(k))
			continue
		}
		if at, dup := first[name]; dup {
			d.errorf(keyPos, "duplicate %s %q (first at line %d, col %d; each %s may appear once)", keyKind, name, at.Line, at.Col, keyKind)
			continue
		}
		first[name] = keyPos
		pos := keyPos
		if !isImplicitNull(p.Value) {
			pos = d.pos(p.Value)
		}
		out = append(out, entry{key: name, keyPos: keyPos, val: p.Value, pos: pos})
	}
	return out
}

// unknownKey reports e as not one of known; where says which mapping it is in.
func (d *decoder) unknownKey(e entry, where string, known []string) {
	hint := ""
	if s := suggest(e.key, known); s != "" {
		hint = fmt.Sprintf("did you mean %q? ", s)
	}
	d.errorf(e.keyPos, "unknown key %q%s (%sknown keys: %s)", e.key, where, hint, strings.Join(known, ", "))
}

// suggest returns the known key nearest to key by edit distance, if it is
// at most 2 edits away; the first of equally near ones.
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(key, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// text derefs e.val and returns its text (see scalarText), reporting
// "WHAT must be WANT (got ...)" for null and collections.
func (d *decoder) text(e entry, want string) (string, bool) {
	n, ok := d.deref(e.val)
	if !ok {
		return "", false
	}
	if s, ok := scalarText(n); ok {
		return s, true
	}
	d.errorf(e.pos, "%s must be %s (got %s)", e.key, want, describe(n))
	return "", false
}

// intRange derefs e.val and returns it as a whole number that rule allows.
func (d *decoder) intRange(e entry, rule wholeRule) (int64, bool) {
	n, ok := d.deref(e.val)
	if !ok {
		return 0, false
	}
	if in, ok := n.(*ast.IntegerNode); ok {
		var x int64
		switch val := in.Value.(type) {
		case int64:
			x, ok = val, true
		case uint64:
			x, ok = int64(val), val <= uint64(rule.hi)
		}
		if ok && rule.problem(e.key, x, describe(n)) == "" {
			return x, true
		}
	}
	d.errorf(e.pos, "%s", rule.message(e.key, describe(n)))
	return 0, false
}

// duration derefs e.val, parses it with time.ParseDuration and checks it
// with durationProblem.
func (d *decoder) duration(e entry) (time.Duration, bool) {
	n, ok := d.deref(e.val)
	if !ok {
		return 0, false
	}
	pos, what := e.pos, e.key
	s, ok := scalarText(n)
	if !ok {
		d.errorf(pos, `%s must be a duration like "5s" or "1m30s" (got %s)`, what, describe(n))
		return 0, false
	}
	if isDecimal(s) {
		d.errorf(pos, `%s must be a duration with a unit (got %s; write "%ss")`, what, describe(n), s)
		return 0, false
	}
	t, err := time.ParseDuration(s)
	if err != nil {
		d.errorf(pos, `%s must be a duration like "5s" or "1m30s" (got %s)`, what, describe(n))
		return 0, false
	}
	if !d.problem(pos, durationProblem(what, t, describe(n))) {
		return 0, false
	}
	return t, true
}

// isDecimal reports whether s is a plain decimal number such as 10, -1 or 1.5.
func isDecimal(s string) bool {
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	digits, dots := 0, 0
	for _, c := range []byte(s) {
		switch {
		case '0' <= c && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

// shortDuration formats t without zero minutes and seconds: 24h, not 24h0m0s.
func shortDuration(t time.Duration) string {
	s := t.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// config decodes the top-level mapping, over the declaration if there is
// one.
func (d *decoder) config(top entry) *Config {
	cfg := d.base.config()
	cfg.File = d.file
	ents, ok := d.expectMapping(top, `the top level must be a mapping with a "services" key`, "key")
	if !ok {
		return nil
	}
	var services *entry
	for i, e := range ents {
		switch e.key {
		case "shutdown_timeout":
			if t, ok := d.duration(e); ok {
				cfg.ShutdownTimeout = t
			}
		case "services":
			services = &ents[i]
		case "queues":
			cfg.Queues = d.queues(e, cfg.Queues)
		case "broker":
			d.broker(e, &cfg.Broker)
		case "control":
			d.control(e, &cfg.Control)
		case "nats":
			cfg.NATS = d.nats(e)
		default:
			d.unknownKey(e, "", topKeys)
		}
	}
	d.jetStream(cfg)
	// Only a path the file gives can clash here: the declaration's own
	// clash is reported by resolve.
	switch {
	case d.controlSocketAt != Position{}:
		d.problem(d.controlSocketAt, sameSocketProblem(cfg.Control.Socket, cfg.Broker.Socket, false))
	case d.brokerSocketAt != Position{}:
		d.problem(d.brokerSocketAt, sameSocketProblem(cfg.Control.Socket, cfg.Broker.Socket, true))
	}
	hasDeclared := len(cfg.Services) > 0
	nDeclared, inFile := len(cfg.Services), map[*Service]bool{}
	switch {
	case services == nil && hasDeclared:
	case services == nil:
		d.errorf(d.start(), `missing "services" key (add "services:" with at least one service under it)`)
		return nil
	default:
		svcs, ok := d.expectMapping(*services, "services must be a mapping from service names to services", "service name")
		if !ok {
			return nil
		}
		if len(svcs) == 0 && !hasDeclared {
			d.errorf(services.pos, `services is empty (list at least one service, e.g. "web: {command: [/usr/bin/web]}")`)
		}
		for _, e := range svcs {
			if i := slices.IndexFunc(cfg.Services, func(s *Service) bool { return s.Name == e.key }); i >= 0 {
				cfg.Services[i] = d.service(e, cfg.Services[i])
				inFile[cfg.Services[i]] = true
				continue
			}
			cfg.Services = append(cfg.Services, d.service(e, nil))
		}
	}
	// A declared service the file leaves out keeps its declared env
	// files, read now as service reads those of the file's services.
	for _, s := range cfg.Services[:nDeclared] {
		if !inFile[s] {
			d.readEnvFiles(s, nil)
		}
	}
	finish(cfg)
	for _, e := range wholeConfigProblems(cfg) {
		d.errorf(e.Pos, "%s", e.Msg)
	}
	return cfg
}

func defaultConfig() *Config {
	return &Config{
		ShutdownTimeout: DefaultShutdownTimeout,
		Broker:          SocketAccess{GID: -1},
		Control:         Control{SocketAccess: SocketAccess{GID: -1}},
	}
}

// newService is a service called name with every default but StopTimeout,
// which finish fills in once shutdown_timeout is known.
func newService(name string, pos Position) *Service {
	return &Service{
		Name:         name,
		Pos:          pos,
		Workers:      DefaultWorkers,
		Env:          map[string]string{},
		StopSignal:   DefaultStopSignal,
		ReadyTimeout: DefaultReadyTimeout,
		Recycle:      Recycle{Jitter: DefaultRecycleJitter},
		Restart: Restart{
			MinUptime:      DefaultMinUptime,
			BackoffInitial: DefaultBackoffInitial,
			BackoffMax:     DefaultBackoffMax,
		},
	}
}

// finish fills in what is known only once the whole configuration is:
// a stop_timeout set nowhere follows shutdown_timeout; a queue's ack_wait,
// replicas and pack set nowhere take their defaults if its store is jetstream,
// and are 0 if it is memory (a file's store: memory over a declared
// jetstream queue drops them).
func finish(cfg *Config) {
	for _, s := range cfg.Services {
		if s.StopTimeout == 0 {
			s.StopTimeout = cfg.ShutdownTimeout
		}
	}
	for _, q := range cfg.Queues {
		switch {
		case q.Store != StoreJetStream:
			q.AckWait, q.Replicas, q.Pack = 0, 0, 0
		default:
			if q.AckWait == 0 {
				q.AckWait = DefaultAckWait
			}
			if q.Replicas == 0 {
				q.Replicas = 1
			}
			if q.Pack == 0 {
				q.Pack = 1
			}
		}
	}
}

// wordIndex is the value of a setting whose words are, in order, its
// values 0, 1, ...: the index of v among words, or -1, which the setting's
// rule refuses.
func wordIndex[T ~int](v string, words ...string) T {
	return T(slices.Index(words, v))
}

// service decodes one entry under services:. decl is the declared service
// of the same name, or nil: the file's keys then apply on top of it, and
// need not include command or run.
func (d *decoder) service(e entry, decl *Service) *Service {
	s := decl
	if s == nil {
		s = newService(e.key, e.keyPos)
		d.problem(e.keyPos, nameProblem("service", e.key))
	}
	s.Pos = e.keyPos
	ents, ok := d.expectMapping(e, fmt.Sprintf("service %q must be a mapping with command or run", e.key), "key")
	if !ok {
		return s
	}
	var hasCommand, hasRun bool
	// The file's env is kept apart until its env files are read: they
	// override what the program declared, and the file's env overrides
	// them.
	fileEnv := map[string]string{}
	var reloadPos Position // of a valid reload_signal, if the file set one
	for _, f := range ents {
		switch f.key {
		case "command":
			hasCommand = true
			s.Command = d.command(f)
		case "run":
			hasRun = true
			s.Run = d.run(f)
		case "workers":
			if n, ok := d.intRange(f, workersRule); ok {
				s.Workers = int(n)
			}
		case "env":
			d.env(f, fileEnv)
		case "env_file":
			s.EnvFiles = d.envFiles(f)
		case "dir":
			s.Dir = d.dir(f)
		case "stop_signal":
			if sig, ok := d.signal(f); ok {
				s.StopSignal = sig
			}
		case "stop_timeout":
			if t, ok := d.duration(f); ok {
				s.StopTimeout = t
			}
		case "reload_signal":
			if sig, ok := d.signal(f); ok {
				s.ReloadSignal = sig
				reloadPos = f.pos
			}
		case "restart":
			whence := "by default"
			if decl != nil && d.base.backoffMaxSet[e.key] {
				whence = "in the Go declaration"
			}
			d.restart(f, e.key, &s.Restart, whence)
		case "ready":
			if v, ok := d.text(f, `"uptime" or "notify"`); ok {
				r := wordIndex[Ready](v, "uptime", "notify")
				if d.problem(f.pos, readyProblem(r, strconv.Quote(v))) {
					s.Ready = r
				}
			}
		case "ready_timeout":
			if t, ok := d.duration(f); ok {
				s.ReadyTimeout = t
			}
		case "watchdog":
			if t, ok := d.duration(f); ok {
				s.Watchdog = t
			}
		case "depends_on":
			s.DependsOn = d.dependsOn(f)
		case "recycle":
			d.recycle(f, e.key, &s.Recycle)
		case "schedule":
			s.Schedule = d.serviceSchedule(f)
		case "on_exit":
			if v, ok := d.text(f, `"continue" or "stop_manager"`); ok {
				o := wordIndex[OnExit](v, "continue", "stop_manager")
				if d.problem(f.pos, onExitProblem(o, strconv.Quote(v))) {
					s.OnExit = o
				}
			}
		case "replace":
			if v, ok := d.text(f, `"rolling" or "all"`); ok {
				r := wordIndex[Replace](v, "rolling", "all")
				if d.problem(f.pos, replaceProblem(r, strconv.Quote(v))) {
					s.Replace = r
				}
			}
		default:
			d.unknownKey(f, fmt.Sprintf(" in service %q", e.key), serviceKeys)
		}
	}
	if s.Schedule != nil {
		d.problem(s.Schedule.Pos, scheduledPolicyProblem(e.key, s.Restart.Policy))
	}
	d.readEnvFiles(s, fileEnv)
	// A command in the file replaces a declared run, and the other way
	// round; both in the file is an error as ever.
	switch {
	case decl == nil || hasCommand && hasRun:
		d.problem(e.pos, commandOrRunProblem(e.key, hasCommand, hasRun))
	case hasCommand:
		s.Run = ""
	case hasRun:
		s.Command = nil
	}
	// A reload_signal is judged against the stop_signal and the kind of
	// service it ends up with, wherever each was set; blamed on the
	// file's reload_signal if it set one, else on the service.
	if msg := reloadSignalProblem(s.ReloadSignal, s.StopSignal, s.Run != ""); msg != "" {
		if reloadPos == (Position{}) {
			reloadPos = e.keyPos
		}
		d.problem(reloadPos, msg)
		s.ReloadSignal = 0
	}
	return s
}

// recycle decodes recycle: into r, which holds the defaults or the
// declared values.
func (d *decoder) recycle(m entry, service string, r *Recycle) {
	ents, _ := d.expectMapping(m, "recycle must be a mapping of max_jobs, max_age, memory_max and jitter", "key")
	for _, e := range ents {
		switch e.key {
		case "max_jobs":
			if n, ok := d.intRange(e, maxJobsRule); ok {
				r.MaxJobs, r.MaxJobsPos = uint64(n), e.pos
			}
		case "max_age":
			if t, ok := d.duration(e); ok {
				r.MaxAge = t
			}
		case "memory_max":
			if v, ok := d.text(e, `a size as in "512MiB"`); ok {
				if n, msg := memoryRule(v); d.problem(e.pos, msg) {
					r.MemoryMax = n
				}
			}
		case "jitter":
			v, ok := d.text(e, "a fraction as in 0.1")
			if !ok {
				continue
			}
			j, err := strconv.ParseFloat(v, 64)
			if err != nil {
				j = -1
			}
			if d.problem(e.pos, jitterProblem(j, strconv.Quote(v))) {
				r.Jitter = j
			}
		default:
			d.unknownKey(e, fmt.Sprintf(" in recycle of service %q", service), recycleKeys)
		}
	}
}

// dependsOn decodes depends_on: a mapping of service names to
// conditions, or a list of service names, each waited for to be started
// (as Compose's short form). Whether the names are services, and form no
// cycle, is for wholeConfigProblems to say once every service is known.
func (d *decoder) dependsOn(e entry) []Dependency {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	deps := []Dependency{}
	if seq, isList := n.(*ast.SequenceNode); isList {
		first := map[string]Position{}
		for i, v := range seq.Values {
			el := d.element(fmt.Sprintf("depends_on[%d]", i), v)
			name, ok := d.text(el, "a service name")
			if !ok {
				continue
			}
			if at, dup := first[name]; dup {
				d.errorf(el.pos, "depends_on lists %q twice (first at line %d, col %d)", name, at.Line, at.Col)
				continue
			}
			first[name] = el.pos
			deps = append(deps, Dependency{Service: name, Condition: ConditionStarted, Pos: el.pos})
		}
		return deps
	}
	ents, _ := d.expectMapping(e, `depends_on must be a mapping of service names to conditions, like {db: ready, migrate: completed}, or a list of service names`, "service name")
	for _, f := range ents {
		v, ok := d.text(f, `"started", "ready" or "completed"`)
		if !ok {
			continue
		}
		c := wordIndex[Condition](v, "started", "ready", "completed")
		if d.problem(f.pos, conditionProblem(c, strconv.Quote(v))) {
			deps = append(deps, Dependency{Service: f.key, Condition: c, Pos: f.keyPos})
		}
	}
	return deps
}

// command decodes command:, an argv list.
func (d *decoder) command(e entry) []string {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	seq, ok := n.(*ast.SequenceNode)
	switch {
	case ok && len(seq.Values) == 0:
		d.errorf(e.pos, "%s", emptyCommand)
		return nil
	case ok:
	case isStringNode(n):
		d.errorf(e.pos, `command must be a list of strings (write ["/bin/sh", "-c", "..."] to run a shell line)`)
		return nil
	default:
		d.errorf(e.pos, `command must be a list of strings like ["/usr/bin/app", "--flag"] (got %s)`, describe(n))
		return nil
	}
	argv := make([]string, 0, len(seq.Values))
	for i, n := range seq.Values {
		el := d.element(fmt.Sprintf("command[%d]", i), n)
		arg, ok := d.text(el, "a string")
		if ok {
			d.problem(el.pos, argProblem(i, arg))
		}
		argv = append(argv, arg)
	}
	return argv
}

func isStringNode(n ast.Node) bool {
	switch n.(type) {
	case *ast.StringNode, *ast.LiteralNode:
		return true
	}
	return false
}

// run decodes run:, the name of a registered Go service.
func (d *decoder) run(e entry) string {
	name, ok := d.text(e, "the name of a Go service")
	if ok && d.problem(e.pos, runProblem(name, d.goServices)) {
		return name
	}
	return ""
}

// env decodes env:, a mapping of variable names to scalar values, into
// env, over the variables it holds.
func (d *decoder) env(m entry, env map[string]string) {
	ents, _ := d.expectMapping(m, "env must be a mapping of NAME: value", "env name")
	for _, e := range ents {
		d.problem(e.keyPos, envNameProblem(e.key))
		n, ok := d.deref(e.val)
		if !ok {
			continue
		}
		val, ok := scalarText(n)
		switch {
		case isNull(n):
			d.errorf(e.pos, `env %s has no value (write %s: "" for an empty value)`, e.key, e.key)
		case !ok:
			d.errorf(e.pos, `env %s must be a single value like "C.UTF-8" or 8080 (got %s)`, e.key, describe(n))
		case d.problem(e.pos, envValueProblem(e.key, val)):
			env[e.key] = val
		}
	}
}

// dir decodes dir:, made absolute against the config file's directory.
func (d *decoder) dir(e entry) string {
	dir, ok := d.text(e, "a directory path")
	if !ok {
		return ""
	}
	abs, msg := dirRule(dir, fileBase(d.file))
	d.problem(e.pos, msg)
	return abs
}

// signal decodes stop_signal or reload_signal: a name from stopSignals,
// with or without "SIG", in any case.
func (d *decoder) signal(e entry) (syscall.Signal, bool) {
	name, ok := d.text(e, "a signal name like TERM")
	if !ok {
		return 0, false
	}
	sig := stopSignals[strings.TrimPrefix(upperASCII(name), "SIG")] // 0 if unknown
	if !d.problem(e.pos, signalProblem(e.key, sig, strconv.Quote(name))) {
		return 0, false
	}
	return sig, true
}

// upperASCII upper-cases ASCII letters only, so that no Unicode case
// folding can turn an odd name into a valid one.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// restart decodes restart: into r, which holds the defaults or the
// declared values. maxWhence says where r's backoff_max comes from, for
// an error about backoff_initial.
func (d *decoder) restart(m entry, service string, r *Restart, maxWhence string) {
	mustBe := "restart must be a mapping of policy, min_uptime, backoff_initial and backoff_max"
	// Compose and PM2 write `restart: always`: say where the word goes.
	if n, ok := d.deref(m.val); ok {
		if v, isText := scalarText(n); isText && isStringNode(n) && wordIndex[RestartPolicy](v, "always", "on-failure", "never") >= 0 {
			mustBe += fmt.Sprintf(" (write restart: {policy: %s})", v)
		}
	}
	ents, _ := d.expectMapping(m, mustBe, "key")
	var initialAt, maxAt *Position // where valid backoff values were set
	valid := true
	for _, e := range ents {
		switch e.key {
		case "min_uptime":
			if t, ok := d.duration(e); ok {
				r.MinUptime = t
			}
		case "policy":
			if v, ok := d.text(e, `"always", "on-failure" or "never"`); ok {
				p := wordIndex[RestartPolicy](v, "always", "on-failure", "never")
				if d.problem(e.pos, restartPolicyProblem(p, strconv.Quote(v))) {
					r.Policy = p
				}
			}
		case "backoff_initial", "backoff_max":
			t, ok := d.duration(e)
			if !ok {
				valid = false
				continue
			}
			pos := e.pos
			if e.key == "backoff_initial" {
				r.BackoffInitial, initialAt = t, &pos
			} else {
				r.BackoffMax, maxAt = t, &pos
			}
		default:
			d.unknownKey(e, fmt.Sprintf(" in restart of service %q", service), restartKeys)
		}
	}
	// Blame the file's value: a declared pair was checked by resolve.
	switch {
	case !valid:
	case maxAt != nil:
		d.problem(*maxAt, backoffProblem(*r, true, maxWhence))
	case initialAt != nil:
		d.problem(*initialAt, backoffProblem(*r, false, maxWhence))
	}
}
