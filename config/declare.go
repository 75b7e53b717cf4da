package config

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// A Declaration is a configuration written in Go: the services, queues and
// settings a program declares in code, the way a cotyledon program adds
// services to its ServiceManager, so that it needs no file to run, or a
// file only to change what it declared:
//
//	var d config.Declaration
//	d.Service("producer", config.Run("producer"))
//	d.Service("printer", config.Run("printer"), config.Workers(2))
//	d.Queue("jobs", config.Capacity(1000))
//	cfg, err := d.Resolve(goServices)
//
// The methods only record what they are given; Resolve, ParseOver and
// LoadOver check it by the rules a file follows, every default filled in
// as for a file, and name the declared field in each error. A setting given
// again replaces the earlier one, except Env, which adds variables. Paths
// (Dir, Socket) may be relative: they are taken from the working directory
// when the declaration is resolved, whether or not a file is applied on
// top of it (a path in the file is still taken from the file's directory).
//
// The zero value declares nothing. A Declaration is not safe for
// concurrent use; Resolve, ParseOver and LoadOver only read it, so one no
// longer being changed may be resolved again and again (on every reload)
// and from several goroutines at once.
type Declaration struct {
	clock           int // settings recorded so far: errors are reported in this order
	shutdownTimeout setting[time.Duration]
	services        []*serviceDecl
	queues          []*queueDecl
	broker, control socketDecl
	metricsListen   setting[string]
}

// setting is one declared value and when it was declared.
type setting[T any] struct {
	v   T
	seq int // Declaration.clock when set; 0: never set
}

func (s *setting[T]) set(v T, seq int) { s.v, s.seq = v, seq }
func (s setting[T]) isSet() bool       { return s.seq > 0 }

type serviceDecl struct {
	name string
	seq  int // when first declared
	now  int // when the option being applied was given
	// command and run are kept apart, not one replacing the other, so that
	// declaring both is the error it is in a file.
	command                               setting[[]string]
	run                                   setting[string]
	workers                               setting[int]
	env                                   map[string]setting[string]
	envFiles                              setting[[]EnvFile]
	dir                                   setting[string]
	stopSignal, reloadSignal              setting[syscall.Signal]
	stopTimeout                           setting[time.Duration]
	minUptime, backoffInitial, backoffMax setting[time.Duration]
	replace                               setting[Replace]
	restartPolicy                         setting[RestartPolicy]
	ready                                 setting[Ready]
	readyTimeout, watchdog                setting[time.Duration]
	// dependsOn in the order first declared; a service declared again
	// takes the later condition.
	dependsOn []setting[Dependency]
	onExit    setting[OnExit]
	maxJobs   setting[uint64]
	maxAge    setting[time.Duration]
	memoryMax setting[uint64]
	jitter    setting[float64]
	schedule  setting[scheduleDecl]
}

type queueDecl struct {
	name     string
	seq, now int
	capacity setting[int]
	store    setting[Store]
	ackWait  setting[time.Duration]
	replicas setting[int]
	pack     setting[int]
	// schedules accumulate, one per Scheduled option.
	schedules []setting[scheduleDecl]
}

// scheduleDecl is one declared schedule of a queue.
type scheduleDecl struct{ cron, item, timeZone string }

type socketDecl struct {
	now                  int
	socket, group        setting[string]
	allowUIDs, allowGIDs setting[[]int]
}

// ServiceOption sets one key of a declared service; see [Declaration.Service].
type ServiceOption func(*serviceDecl)

// QueueOption sets one key of a declared queue; see [Declaration.Queue].
type QueueOption func(*queueDecl)

// SocketOption sets one key of the broker's or the control socket's
// settings; see [Declaration.Broker] and [Declaration.Control].
type SocketOption func(*socketDecl)

func (d *Declaration) tick() int {
	d.clock++
	return d.clock
}

// Service declares the service called name (`services.NAME`), or, called
// again with the same name, adds opts to it. A service needs exactly one of
// Command and Run; the other options default as in a file. Services keep
// the order of their first declaration. Nil options are ignored.
func (d *Declaration) Service(name string, opts ...ServiceOption) {
	i := slices.IndexFunc(d.services, func(s *serviceDecl) bool { return s.name == name })
	if i < 0 {
		d.services = append(d.services, &serviceDecl{name: name, seq: d.tick()})
		i = len(d.services) - 1
	}
	s := d.services[i]
	for _, o := range opts {
		if o != nil {
			s.now = d.tick()
			o(s)
		}
	}
}

// Queue declares the broker's queue called name (`queues.NAME`), or, called
// again with the same name, adds opts to it. Nil options are ignored.
func (d *Declaration) Queue(name string, opts ...QueueOption) {
	i := slices.IndexFunc(d.queues, func(q *queueDecl) bool { return q.name == name })
	if i < 0 {
		d.queues = append(d.queues, &queueDecl{name: name, seq: d.tick()})
		i = len(d.queues) - 1
	}
	q := d.queues[i]
	for _, o := range opts {
		if o != nil {
			q.now = d.tick()
			o(q)
		}
	}
}

// ShutdownTimeout sets `shutdown_timeout` (default 10s), the stop timeout
// of every service that sets none.
func (d *Declaration) ShutdownTimeout(t time.Duration) {
	d.shutdownTimeout.set(t, d.tick())
}

// Broker sets keys of the `broker:` mapping: where the queue socket
// listens and whom it lets in. Nil options are ignored.
func (d *Declaration) Broker(opts ...SocketOption) {
	d.broker.apply(d, opts)
}

// Control sets keys of the `control:` mapping other than metrics_listen:
// where the control socket listens and whom it lets in. Nil options are
// ignored.
func (d *Declaration) Control(opts ...SocketOption) {
	d.control.apply(d, opts)
}

func (s *socketDecl) apply(d *Declaration, opts []SocketOption) {
	for _, o := range opts {
		if o != nil {
			s.now = d.tick()
			o(s)
		}
	}
}

// MetricsListen sets `control.metrics_listen`, a "host:port" that serves
// /metrics on TCP as well (default: none).
func (d *Declaration) MetricsListen(addr string) {
	d.metricsListen.set(addr, d.tick())
}

// Command sets `command`, the argv of a command service (exec'd directly,
// no shell). argv is copied.
func Command(argv ...string) ServiceOption {
	argv = slices.Clone(argv)
	return func(s *serviceDecl) { s.command.set(argv, s.now) }
}

// Run sets `run`, the name of a Go service the program registers.
func Run(goService string) ServiceOption {
	return func(s *serviceDecl) { s.run.set(goService, s.now) }
}

// Workers sets `workers`, the number of worker processes (default 1; 0
// keeps the service defined but stopped).
func Workers(n int) ServiceOption {
	return func(s *serviceDecl) { s.workers.set(n, s.now) }
}

// Env adds vars to `env`, the variables added to the workers' environment;
// a name given before takes the new value. vars is copied.
func Env(vars map[string]string) ServiceOption {
	vars = maps.Clone(vars)
	return func(s *serviceDecl) {
		if s.env == nil {
			s.env = map[string]setting[string]{}
		}
		for k, v := range vars {
			s.env[k] = setting[string]{v, s.now}
		}
	}
}

// EnvFiles sets `env_file`, the dotenv files whose variables the workers
// get, as a file's env_file does: later files over earlier ones, over what
// Env declares; a file's `env` overrides them all. A relative Path is
// taken from the working directory (see [Declaration]); a Path is taken as
// written (a leading "-" does not mark it optional: set Optional). A file
// that does not exist is an error unless Optional. The files are read at
// every Resolve, ParseOver and LoadOver, so each reload rereads them. A
// later EnvFiles replaces the list, and so does a file's `env_file` for
// the service. files is copied; their Pos is ignored.
//
//	config.EnvFiles(config.EnvFile{Path: "/etc/default/web"}, config.EnvFile{Path: ".env.local", Optional: true})
func EnvFiles(files ...EnvFile) ServiceOption {
	files = slices.Clone(files)
	return func(s *serviceDecl) { s.envFiles.set(files, s.now) }
}

// Dir sets `dir`, the workers' working directory; a relative path is taken
// from the working directory (see [Declaration]).
func Dir(path string) ServiceOption {
	return func(s *serviceDecl) { s.dir.set(path, s.now) }
}

// StopSignal sets `stop_signal` (default SIGTERM): one of SIGHUP, SIGINT,
// SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH.
func StopSignal(sig syscall.Signal) ServiceOption {
	return func(s *serviceDecl) { s.stopSignal.set(sig, s.now) }
}

// StopTimeout sets `stop_timeout` (default: the final shutdown_timeout).
func StopTimeout(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.stopTimeout.set(t, s.now) }
}

// ReloadSignal sets `reload_signal` (default: none), sent to the workers on
// each reload that leaves their definition unchanged; as StopSignal, but
// not SIGKILL, not the service's stop signal, and for a Go service not
// SIGTERM or SIGINT.
func ReloadSignal(sig syscall.Signal) ServiceOption {
	return func(s *serviceDecl) { s.reloadSignal.set(sig, s.now) }
}

// MinUptime sets `restart.min_uptime` (default 1s, at least MinUptimeFloor).
func MinUptime(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.minUptime.set(t, s.now) }
}

// BackoffInitial sets `restart.backoff_initial` (default 100ms, at least
// BackoffFloor, at most the final backoff_max).
func BackoffInitial(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.backoffInitial.set(t, s.now) }
}

// BackoffMax sets `restart.backoff_max` (default 30s).
func BackoffMax(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.backoffMax.set(t, s.now) }
}

// RestartWith sets `restart.policy` (default RestartAlways): which exits
// are followed by a new process.
func RestartWith(p RestartPolicy) ServiceOption {
	return func(s *serviceDecl) { s.restartPolicy.set(p, s.now) }
}

// DependsOn adds service to `depends_on`: the declared service's workers
// start only once each worker of service meets c. Declaring the same
// service again replaces its condition. A file that sets depends_on for
// the service replaces the whole declared list.
func DependsOn(service string, c Condition) ServiceOption {
	return func(s *serviceDecl) {
		dep := setting[Dependency]{v: Dependency{Service: service, Condition: c}, seq: s.now}
		if i := slices.IndexFunc(s.dependsOn, func(d setting[Dependency]) bool { return d.v.Service == service }); i >= 0 {
			s.dependsOn[i] = dep
			return
		}
		s.dependsOn = append(s.dependsOn, dep)
	}
}

// MaxJobs sets `recycle.max_jobs`: a worker is recycled once its
// processes have acknowledged n items on the queue socket.
func MaxJobs(n uint64) ServiceOption {
	return func(s *serviceDecl) { s.maxJobs.set(n, s.now) }
}

// MaxAge sets `recycle.max_age`: a worker is recycled once it has run t.
func MaxAge(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.maxAge.set(t, s.now) }
}

// MemoryMax sets `recycle.memory_max`, in bytes: a worker is recycled
// once it uses more.
func MemoryMax(bytes uint64) ServiceOption {
	return func(s *serviceDecl) { s.memoryMax.set(bytes, s.now) }
}

// RecycleJitter sets `recycle.jitter` (default DefaultRecycleJitter).
func RecycleJitter(fraction float64) ServiceOption {
	return func(s *serviceDecl) { s.jitter.set(fraction, s.now) }
}

// RunOnSchedule sets `schedule`: the service's workers run at each time
// of cron, read in timeZone (an IANA name; "" for the manager's local time
// zone), rather than at the manager's start. Its restart policy must be
// on-failure or never (RestartWith).
func RunOnSchedule(cron, timeZone string) ServiceOption {
	return func(s *serviceDecl) { s.schedule.set(scheduleDecl{cron: cron, timeZone: timeZone}, s.now) }
}

// ExitAction sets `on_exit` (default OnExitContinue): what an exit of one
// of the service's workers does to the manager.
func ExitAction(o OnExit) ServiceOption {
	return func(s *serviceDecl) { s.onExit.set(o, s.now) }
}

// ReplaceWith sets `replace` (default ReplaceRolling): how a reload
// replaces workers whose definition changed.
func ReplaceWith(r Replace) ServiceOption {
	return func(s *serviceDecl) { s.replace.set(r, s.now) }
}

// ReadyBy sets `ready` (default ReadyUptime): how the manager knows a
// worker is ready.
func ReadyBy(r Ready) ServiceOption {
	return func(s *serviceDecl) { s.ready.set(r, s.now) }
}

// ReadyTimeout sets `ready_timeout` (default DefaultReadyTimeout): how
// long a ReadyNotify worker has to send READY=1, and how long the
// manager's first start waits for the service's workers to be ready.
func ReadyTimeout(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.readyTimeout.set(t, s.now) }
}

// Watchdog sets `watchdog` (default none): how long a ready worker may go
// without sending WATCHDOG=1 before it is aborted and started again.
func Watchdog(t time.Duration) ServiceOption {
	return func(s *serviceDecl) { s.watchdog.set(t, s.now) }
}

// Capacity sets a queue's `capacity` (default 10000, from 1 to MaxCapacity).
func Capacity(n int) QueueOption {
	return func(q *queueDecl) { q.capacity.set(n, q.now) }
}

// QueueStore sets a queue's `store` (default StoreMemory). A StoreJetStream
// queue needs the nats: section, which only a file gives: declared, it
// resolves only under a file that has one ([ParseOver], [LoadOver]).
func QueueStore(s Store) QueueOption {
	return func(q *queueDecl) { q.store.set(s, q.now) }
}

// AckWait sets a jetstream queue's `ack_wait` (default DefaultAckWait,
// from AckWaitFloor to MaxDuration): how long an item may stay in flight
// before it is delivered again.
func AckWait(t time.Duration) QueueOption {
	return func(q *queueDecl) { q.ackWait.set(t, q.now) }
}

// Replicas sets a jetstream queue's `replicas` (default 1, from 1 to
// MaxReplicas): how many NATS servers keep its stream.
func Replicas(n int) QueueOption {
	return func(q *queueDecl) { q.replicas.set(n, q.now) }
}

// Pack sets a jetstream queue's `pack` (default 1, from 1 to MaxPack):
// how many items of one put, at most, are stored together in one
// JetStream message. Above 1, the queue's capacity, depth and in-flight
// count messages, not items.
func Pack(n int) QueueOption {
	return func(q *queueDecl) { q.pack.set(n, q.now) }
}

// Scheduled adds a schedule to a queue (`schedule`, none by default):
// at each time of the cron expression (five fields, minute hour
// day-of-month month day-of-week, or a descriptor such as @hourly or
// "@every 1h"), read in timeZone (an IANA name; "" for the manager's
// local time zone), the manager puts item into the queue. Each call adds
// one; a file that sets the queue's schedule replaces them all.
func Scheduled(cron, item, timeZone string) QueueOption {
	return func(q *queueDecl) {
		q.schedules = append(q.schedules, setting[scheduleDecl]{scheduleDecl{cron, item, timeZone}, q.now})
	}
}

// Socket sets `socket`, the socket's path; a relative path is taken from
// the working directory (see [Declaration]).
func Socket(path string) SocketOption {
	return func(s *socketDecl) { s.socket.set(path, s.now) }
}

// Group sets `group`, a group name or number that makes the socket 0660
// and owned by that group.
func Group(nameOrNumber string) SocketOption {
	return func(s *socketDecl) { s.group.set(nameOrNumber, s.now) }
}

// AllowUIDs sets `allow_uids`, the user ids also let in; a later
// AllowUIDs replaces the list. uids is copied.
func AllowUIDs(uids ...int) SocketOption {
	uids = slices.Clone(uids)
	return func(s *socketDecl) { s.allowUIDs.set(uids, s.now) }
}

// AllowGIDs sets `allow_gids`, the group ids whose members are also let
// in; a later AllowGIDs replaces the list. gids is copied.
func AllowGIDs(gids ...int) SocketOption {
	gids = slices.Clone(gids)
	return func(s *socketDecl) { s.allowGIDs.set(gids, s.now) }
}

// Resolve validates d by the rules a file follows and returns the Config
// it declares, with every default filled in as [Parse] fills them in, and
// File empty. goServices lists the Go services the program registers; Run
// must name one of them. A declaration must declare at least one service,
// and no queue whose store is StoreJetStream: the nats: section such a
// queue needs comes from a file only ([ParseOver]).
//
// Otherwise Resolve returns nil and an [ErrorList] holding every problem,
// in the order the faulty values were declared; each error's Position
// names the declared field, as in
//
//	services.printer.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)
//
// A nil d declares nothing. Resolve does not modify d and never panics.
func (d *Declaration) Resolve(goServices []string) (*Config, error) {
	base, errs := d.resolve(goServices, false)
	if len(base.cfg.Services) == 0 {
		errs = append(errs, &Error{Pos: Position{Field: "services"},
			Msg: `no service is declared (declare at least one, as in d.Service("web", config.Command("/usr/bin/web")))`})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	finish(base.cfg)
	if probs := wholeConfigProblems(base.cfg); len(probs) > 0 {
		return nil, ErrorList(probs)
	}
	return base.cfg, nil
}

// ParseOver parses data, the contents of the configuration file named
// file, on top of the declaration d, and validates both; with a nil d it is
// exactly [Parse].
//
// What the file sets wins over what d declares, key by key; what it does
// not set keeps the declared value; what neither sets takes the default (a
// stop_timeout set by neither follows the final shutdown_timeout).
// Services and queues are matched by name. A file service of a declared
// name starts from the declared service, so it need not repeat command or
// run (`printer: {workers: 5}` is a whole override); a command in the file
// replaces a declared run and the other way round; env is merged variable
// by variable, the file's value winning. A service or queue the file names
// but d does not must be complete, as in a file on its own. The file
// cannot remove a declared service: `workers: 0` stops it. A file's
// `store: memory` over a declared jetstream queue drops its declared
// ack_wait, replicas and pack, which apply to jetstream queues only. When d
// declares services, the file may leave `services` out, or be empty. The
// Config lists the declared services (and queues) in the order of their
// declaration, then the file's own in the file's order.
//
// d is validated on its own as by [Declaration.Resolve] (save that the
// file may supply the services and the nats: section): a file cannot make
// a faulty declaration valid. The [ErrorList] holds the declaration's
// errors first, in the order they were declared, then the file's, by line
// and column, each as FILE:LINE:COL as from Parse. An error that only the
// two together make (backoff_max below backoff_initial, one from each; the
// control and queue sockets on one path; declared replicas above 1 under
// the file's nats.local_dir) points at the file's value; a declared
// jetstream queue under a file without nats: is an error at its declared
// store.
//
// ParseOver does not modify d, so a reload may call it again on the same
// declaration; it never panics, whatever data holds.
func ParseOver(d *Declaration, file string, data []byte, goServices []string) (*Config, error) {
	if d == nil {
		return Parse(file, data, goServices)
	}
	base, errs := d.resolve(goServices, true)
	dec := newDecoder(file, goServices, base)
	cfg := dec.decode(data)
	sortErrors(dec.errs)
	errs = append(errs, dec.errs...)
	if len(errs) > 0 {
		return nil, errs
	}
	return cfg, nil
}

// LoadOver reads the configuration file at path and parses it on top of d
// with [ParseOver]; with a nil d it is exactly [Load]. A file that cannot
// be read is an error as from Load (to run without a file, use
// [Declaration.Resolve]).
func LoadOver(d *Declaration, path string, goServices []string) (*Config, error) {
	if d == nil {
		return Load(path, goServices)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return ParseOver(d, path, data, goServices)
}

// declared is a Declaration resolved: the configuration it declares, with
// the defaults filled in except stop timeouts it does not set (0, filled in
// by finish once shutdown_timeout is final), and what a file on top of it
// needs to know besides.
type declared struct {
	cfg *Config
	// backoffMaxSet holds the services whose backoff_max was declared,
	// for a message about a file's backoff_initial above it.
	backoffMaxSet map[string]bool
}

// config returns b's configuration, for the decoder to apply a file to
// (resolve made it for this one use), or a file's defaults when b is nil.
func (b *declared) config() *Config {
	if b == nil {
		return defaultConfig()
	}
	return b.cfg
}

func (b *declared) hasServices() bool { return b != nil && len(b.cfg.Services) > 0 }

// resolver turns a Declaration into a declared, collecting errors with
// when the faulty value was declared.
type resolver struct {
	goServices []string
	// withFile: a file is applied on top, which may give the nats:
	// section the declared jetstream queues need.
	withFile bool
	errs     []seqError
}

type seqError struct {
	seq int
	err *Error
}

// problem records msg, the verdict of a rule on the value declared at seq,
// unless it is empty, and reports whether it was (the value is valid).
func (r *resolver) problem(seq int, field, msg string) bool {
	if msg == "" {
		return true
	}
	r.errs = append(r.errs, seqError{seq, &Error{Pos: Position{Field: field}, Msg: msg}})
	return false
}

// resolve builds a fresh declared from d, sharing no slice or map with d,
// and returns the errors in declaration order. withFile says a file is
// applied on top: it may give the nats: section a declared jetstream
// queue needs, which the decoder checks then.
func (d *Declaration) resolve(goServices []string, withFile bool) (*declared, ErrorList) {
	b := &declared{cfg: defaultConfig(), backoffMaxSet: map[string]bool{}}
	if d == nil {
		return b, nil
	}
	r := &resolver{goServices: goServices, withFile: withFile}
	cfg := b.cfg
	if st := d.shutdownTimeout; st.isSet() && r.problem(st.seq, "shutdown_timeout", durationProblem("shutdown_timeout", st.v, shortDuration(st.v))) {
		cfg.ShutdownTimeout = st.v
	}
	r.access("broker", &d.broker, &cfg.Broker)
	r.access("control", &d.control, &cfg.Control.SocketAccess)
	if m := d.metricsListen; m.isSet() && r.problem(m.seq, "control.metrics_listen", listenProblem(m.v)) {
		cfg.Control.MetricsListen = m.v
	}
	if c, q := d.control.socket, d.broker.socket; c.isSet() && q.isSet() {
		r.problem(max(c.seq, q.seq), "control.socket", sameSocketProblem(cfg.Control.Socket, cfg.Broker.Socket, false))
	}
	for _, qd := range d.queues {
		cfg.Queues = append(cfg.Queues, r.queue(qd))
	}
	for _, sd := range d.services {
		s, maxSet := r.service(sd)
		cfg.Services = append(cfg.Services, s)
		b.backoffMaxSet[s.Name] = maxSet
	}
	slices.SortStableFunc(r.errs, func(a, b seqError) int { return cmp.Compare(a.seq, b.seq) })
	var errs ErrorList
	for _, e := range r.errs {
		errs = append(errs, e.err)
	}
	return b, errs
}

// fieldName is a service, queue or env name as a step of a field path,
// quoted when it is not a valid name (it may hold dots, spaces, nothing).
func fieldName(name string, valid func(string) bool) string {
	if valid(name) {
		return name
	}
	return strconv.Quote(name)
}

func (r *resolver) access(key string, in *socketDecl, out *SocketAccess) {
	if s := in.socket; s.isSet() {
		p, msg := socketRule(s.v, workingDirBase)
		if r.problem(s.seq, key+".socket", msg) {
			out.Socket = p
		}
	}
	if g := in.group; g.isSet() {
		gid, msg := groupRule(g.v)
		if r.problem(g.seq, key+".group", msg) {
			out.Group, out.GID = g.v, gid
		}
	}
	out.AllowUIDs = r.ids(key, "allow_uids", in.allowUIDs)
	out.AllowGIDs = r.ids(key, "allow_gids", in.allowGIDs)
}

// ids checks a declared list of ids, as a file's allow_uids or allow_gids.
func (r *resolver) ids(parent, key string, ids setting[[]int]) []int {
	var out []int
	for i, id := range ids.v {
		el := fmt.Sprintf("%s[%d]", key, i)
		if r.problem(ids.seq, parent+"."+el, idRule.problem(el, int64(id), strconv.Itoa(id))) {
			out = append(out, id)
		}
	}
	return out
}

func (r *resolver) queue(qd *queueDecl) *Queue {
	path := "queues." + fieldName(qd.name, validServiceName)
	q := newQueue(qd.name, Position{Field: path})
	r.problem(qd.seq, path, nameProblem("queue", qd.name))
	if c := qd.capacity; c.isSet() && r.problem(c.seq, path+".capacity", capacityRule.problem("capacity", int64(c.v), strconv.Itoa(c.v))) {
		q.Capacity = c.v
	}
	storeValid := true
	if s := qd.store; s.isSet() {
		storeValid = r.problem(s.seq, path+".store", storeProblem(s.v, strconv.Quote(string(s.v))))
		if storeValid {
			q.Store = s.v
		}
		// Only a file has the nats: section a jetstream queue needs.
		if storeValid && !r.withFile {
			r.problem(s.seq, path+".store", needsNATSProblem(s.v, false))
		}
	}
	// As in a file: ack_wait, replicas and pack are judged against the store
	// the queue is declared with, unless that store is itself wrong.
	if t := qd.ackWait; t.isSet() && r.problem(t.seq, path+".ack_wait", durationProblem("ack_wait", t.v, shortDuration(t.v))) &&
		storeValid && r.problem(t.seq, path+".ack_wait", jetStreamOnlyProblem("ack_wait", q.Store)) {
		q.AckWait = t.v
	}
	if n := qd.replicas; n.isSet() && r.problem(n.seq, path+".replicas", replicasRule.problem("replicas", int64(n.v), strconv.Itoa(n.v))) &&
		storeValid && r.problem(n.seq, path+".replicas", jetStreamOnlyProblem("replicas", q.Store)) {
		q.Replicas = n.v
	}
	if n := qd.pack; n.isSet() && r.problem(n.seq, path+".pack", packRule.problem("pack", int64(n.v), strconv.Itoa(n.v))) &&
		storeValid && r.problem(n.seq, path+".pack", jetStreamOnlyProblem("pack", q.Store)) {
		q.Pack = n.v
	}
	for i, s := range qd.schedules {
		if sched, ok := r.schedule(s.seq, fmt.Sprintf("%s.schedule[%d]", path, i), s.v); ok {
			q.Schedules = append(q.Schedules, QueueSchedule{Schedule: sched, Item: s.v.item})
		}
	}
	return q
}

// schedule resolves a declared schedule, at field.
func (r *resolver) schedule(seq int, field string, sd scheduleDecl) (Schedule, bool) {
	loc := time.Local
	if sd.timeZone != "" {
		l, msg := timeZoneRule(sd.timeZone)
		if !r.problem(seq, field+".time_zone", msg) {
			return Schedule{}, false
		}
		loc = l
	}
	sched, msg := scheduleRule(sd.cron, loc)
	if !r.problem(seq, field+".cron", msg) {
		return Schedule{}, false
	}
	sched.Pos = Position{Field: field}
	return sched, true
}

// service resolves one declared service, and reports whether its
// backoff_max was declared (and valid).
func (r *resolver) service(sd *serviceDecl) (*Service, bool) {
	path := "services." + fieldName(sd.name, validServiceName)
	s := newService(sd.name, Position{Field: path})
	r.problem(sd.seq, path, nameProblem("service", sd.name))

	if c := sd.command; c.isSet() {
		if len(c.v) == 0 {
			r.problem(c.seq, path+".command", emptyCommand)
		}
		for i, arg := range c.v {
			r.problem(c.seq, fmt.Sprintf("%s.command[%d]", path, i), argProblem(i, arg))
		}
		s.Command = slices.Clone(c.v)
	}
	if run := sd.run; run.isSet() && r.problem(run.seq, path+".run", runProblem(run.v, r.goServices)) {
		s.Run = run.v
	}
	seq := sd.seq
	if sd.command.isSet() && sd.run.isSet() {
		seq = max(sd.command.seq, sd.run.seq)
	}
	r.problem(seq, path, commandOrRunProblem(sd.name, sd.command.isSet(), sd.run.isSet()))

	if w := sd.workers; w.isSet() && r.problem(w.seq, path+".workers", workersRule.problem("workers", int64(w.v), strconv.Itoa(w.v))) {
		s.Workers = w.v
	}
	// Variables of one Env call share a seq; name order keeps their
	// errors in a stable order.
	names := slices.SortedFunc(maps.Keys(sd.env), func(a, b string) int {
		return cmp.Or(cmp.Compare(sd.env[a].seq, sd.env[b].seq), cmp.Compare(a, b))
	})
	for _, name := range names {
		v := sd.env[name]
		field := path + ".env." + fieldName(name, validEnvName)
		okName := r.problem(v.seq, field, envNameProblem(name))
		if r.problem(v.seq, field, envValueProblem(name, v.v)) && okName {
			s.Env[name] = v.v
		}
	}
	r.envFiles(path, sd.envFiles, s)
	if dir := sd.dir; dir.isSet() {
		abs, msg := dirRule(dir.v, workingDirBase)
		if r.problem(dir.seq, path+".dir", msg) {
			s.Dir = abs
		}
	}
	if sig := sd.stopSignal; sig.isSet() && r.problem(sig.seq, path+".stop_signal", signalProblem("stop_signal", sig.v, signalName(sig.v))) {
		s.StopSignal = sig.v
	}
	if sig := sd.reloadSignal; sig.isSet() && r.problem(sig.seq, path+".reload_signal", signalProblem("reload_signal", sig.v, signalName(sig.v))) {
		s.ReloadSignal = sig.v
	}
	if t := sd.stopTimeout; t.isSet() && r.problem(t.seq, path+".stop_timeout", durationProblem("stop_timeout", t.v, shortDuration(t.v))) {
		s.StopTimeout = t.v
	}
	if rp := sd.replace; rp.isSet() && r.problem(rp.seq, path+".replace", replaceProblem(rp.v, fmt.Sprintf("Replace(%d)", int(rp.v)))) {
		s.Replace = rp.v
	}
	if rp := sd.restartPolicy; rp.isSet() && r.problem(rp.seq, path+".restart.policy", restartPolicyProblem(rp.v, fmt.Sprintf("RestartPolicy(%d)", int(rp.v)))) {
		s.Restart.Policy = rp.v
	}
	if rd := sd.ready; rd.isSet() && r.problem(rd.seq, path+".ready", readyProblem(rd.v, fmt.Sprintf("Ready(%d)", int(rd.v)))) {
		s.Ready = rd.v
	}
	if t := sd.readyTimeout; t.isSet() && r.problem(t.seq, path+".ready_timeout", durationProblem("ready_timeout", t.v, shortDuration(t.v))) {
		s.ReadyTimeout = t.v
	}
	if t := sd.watchdog; t.isSet() && r.problem(t.seq, path+".watchdog", durationProblem("watchdog", t.v, shortDuration(t.v))) {
		s.Watchdog = t.v
	}
	for _, dep := range sd.dependsOn {
		field := path + ".depends_on." + fieldName(dep.v.Service, validServiceName)
		if r.problem(dep.seq, field, conditionProblem(dep.v.Condition, fmt.Sprintf("Condition(%d)", int(dep.v.Condition)))) {
			d := dep.v
			d.Pos = Position{Field: field}
			s.DependsOn = append(s.DependsOn, d)
		}
	}
	if n := sd.maxJobs; n.isSet() && r.problem(n.seq, path+".recycle.max_jobs", maxJobsRule.problem("max_jobs", int64(min(n.v, MaxRecycleJobs+1)), strconv.FormatUint(n.v, 10))) {
		s.Recycle.MaxJobs, s.Recycle.MaxJobsPos = n.v, Position{Field: path + ".recycle.max_jobs"}
	}
	if t := sd.maxAge; t.isSet() && r.problem(t.seq, path+".recycle.max_age", durationProblem("max_age", t.v, shortDuration(t.v))) {
		s.Recycle.MaxAge = t.v
	}
	if m := sd.memoryMax; m.isSet() {
		if _, msg := memoryRule(strconv.FormatUint(m.v, 10)); r.problem(m.seq, path+".recycle.memory_max", msg) {
			s.Recycle.MemoryMax = m.v
		}
	}
	if j := sd.jitter; j.isSet() && r.problem(j.seq, path+".recycle.jitter", jitterProblem(j.v, strconv.FormatFloat(j.v, 'g', -1, 64))) {
		s.Recycle.Jitter = j.v
	}
	if sc := sd.schedule; sc.isSet() {
		if sched, ok := r.schedule(sc.seq, path+".schedule", sc.v); ok && r.problem(sc.seq, path+".schedule", scheduledPolicyProblem(sd.name, s.Restart.Policy)) {
			s.Schedule = &sched
		}
	}
	if o := sd.onExit; o.isSet() && r.problem(o.seq, path+".on_exit", onExitProblem(o.v, fmt.Sprintf("OnExit(%d)", int(o.v)))) {
		s.OnExit = o.v
	}
	if sig := sd.reloadSignal; sig.isSet() && !r.problem(sig.seq, path+".reload_signal", reloadSignalProblem(s.ReloadSignal, s.StopSignal, s.Run != "")) {
		s.ReloadSignal = 0
	}
	return s, r.restart(path+".restart", sd, &s.Restart)
}

// envFiles resolves declared env files into s.EnvFiles, each at its
// declared field. Without a file on top they are read into s.Env, over
// the declared env, at once; with one, the decoder reads whichever list
// the file leaves in force (its own env_file replaces the declared one).
func (r *resolver) envFiles(path string, files setting[[]EnvFile], s *Service) {
	if !files.isSet() {
		return
	}
	for i, f := range files.v {
		field := fmt.Sprintf("%s.env_file[%d]", path, i)
		abs, msg := pathRule("env_file", f.Path, workingDirBase)
		if r.problem(files.seq, field, msg) {
			s.EnvFiles = append(s.EnvFiles, EnvFile{Path: abs, Optional: f.Optional, Pos: Position{Field: field}})
		}
	}
	if r.withFile {
		return
	}
	vars := readEnvFiles(s.EnvFiles, func(f EnvFile, msg string) { r.problem(files.seq, f.Pos.Field, msg) })
	maps.Copy(s.Env, vars)
}

// restart resolves a service's restart policy into rp, which holds the
// defaults, and reports whether backoff_max was declared (and valid).
func (r *resolver) restart(path string, sd *serviceDecl, rp *Restart) bool {
	// check applies t to into if it is valid, and reports whether t is
	// unset or valid.
	check := func(key string, t setting[time.Duration], into *time.Duration) bool {
		if !t.isSet() {
			return true
		}
		ok := r.problem(t.seq, path+"."+key, durationProblem(key, t.v, shortDuration(t.v)))
		if ok {
			*into = t.v
		}
		return ok
	}
	check("min_uptime", sd.minUptime, &rp.MinUptime)
	okInitial := check("backoff_initial", sd.backoffInitial, &rp.BackoffInitial)
	okMax := check("backoff_max", sd.backoffMax, &rp.BackoffMax)
	valid := okInitial && okMax
	initialSet, maxSet := sd.backoffInitial.isSet(), sd.backoffMax.isSet()
	// As in a file: blame backoff_max when it was set, else
	// backoff_initial against the default cap.
	switch {
	case !valid:
	case maxSet:
		r.problem(sd.backoffMax.seq, path+".backoff_max", backoffProblem(*rp, true, ""))
	case initialSet:
		r.problem(sd.backoffInitial.seq, path+".backoff_initial", backoffProblem(*rp, false, "by default"))
	}
	return maxSet && okMax
}
