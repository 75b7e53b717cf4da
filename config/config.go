// Package config reads and validates gotyledon's configuration: a YAML
// file, a [Declaration] written in Go, or a file applied on top of a
// declaration.
//
// The file format is strict: unknown keys, duplicate keys, wrong types, bad
// durations and impossible values are errors. Every error names the file,
// line and column it is about and says what would be right:
//
//	/etc/gotyledon/gotyledon.yaml:7:14: workers must be a whole number from 0 to 10000 (got "two")
//
// A program that embeds gotyledon may declare its services, queues and
// settings in Go instead, the way cotyledon programs add services to their
// ServiceManager, and need no file ([Declaration.Resolve]); or let an
// operator's file change what it declared, key by key, on every reload
// ([ParseOver], [LoadOver]). A declaration follows the very rules a file
// does (each value rule is one function both call), and its errors name
// the declared field instead of a place in a file:
//
//	services.printer.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)
//
// Load, Parse, Resolve, ParseOver and LoadOver report every error they
// find, not just the first, as an [ErrorList]. A Config returned without
// error has every default filled in and is ready for the supervisor:
// nothing downstream re-validates it.
package config

import (
	"syscall"
	"time"
)

// Defaults applied where the file says nothing. They are documented in
// config/README.md, the configuration reference; keep the two in step.
const (
	DefaultShutdownTimeout = 10 * time.Second
	DefaultWorkers         = 1
	DefaultStopSignal      = syscall.SIGTERM

	// DefaultMinUptime is how long a worker must stay up for its exit to
	// count as a normal one (restarted at once, backoff reset) rather than a
	// failure to start (restarted after a growing delay). Same as
	// supervisord's startsecs and cotyledon's one-fork-a-second rule.
	DefaultMinUptime = 1 * time.Second
	// DefaultReadyTimeout is how long a worker of a `ready: notify`
	// service has to send READY=1 (systemd's DefaultTimeoutStartSec).
	DefaultReadyTimeout = 90 * time.Second
	// DefaultBackoffInitial is the delay before the first restart of a
	// worker that died within MinUptime; each further quick death doubles it.
	DefaultBackoffInitial = 100 * time.Millisecond
	// DefaultBackoffMax caps the doubling.
	DefaultBackoffMax = 30 * time.Second

	// MinUptimeFloor is the least min_uptime a file may set: with it, a
	// worker that keeps crashing is restarted at once at most 10 times a
	// second; anything quicker goes through the backoff.
	MinUptimeFloor = 100 * time.Millisecond
	// BackoffFloor is the least backoff_initial a file may set, so that a
	// delayed restart is never, after jitter, an immediate one.
	BackoffFloor = 10 * time.Millisecond

	// DefaultCapacity is a queue's capacity when the file gives none.
	DefaultCapacity = 10000
	// MaxCapacity bounds a queue's capacity.
	MaxCapacity = 10_000_000
	// DefaultAckWait is a JetStream queue's ack_wait when the file gives
	// none: how long an item may stay in flight before it is delivered
	// again.
	DefaultAckWait = 30 * time.Second
	// AckWaitFloor is the least ack_wait a file may set, so that an item
	// is not delivered again while its worker is still on it.
	AckWaitFloor = 1 * time.Second
	// MaxReplicas bounds a JetStream queue's replicas, as JetStream does.
	MaxReplicas = 5
	// MaxPack bounds a JetStream queue's pack: the items of one put
	// stored together in one JetStream message.
	MaxPack = 1024
	// MaxSocketPath is the longest Unix socket path the kernel takes
	// (sun_path holds 108 bytes with the terminating NUL).
	MaxSocketPath = 107

	// MaxWorkers bounds a service's worker count; more is taken as a typo.
	MaxWorkers = 10000
	// MaxDuration bounds every duration in the file, for the same reason.
	MaxDuration = 24 * time.Hour

	// MaxRecycleAge bounds recycle.max_age, the one duration allowed past
	// MaxDuration.
	MaxRecycleAge = 30 * 24 * time.Hour
	// MinRecycleAge is the least recycle.max_age: shorter, a worker would
	// be recycled before it has done anything.
	MinRecycleAge = time.Second
	// MinMemoryMax is the least recycle.memory_max: 1 MiB.
	MinMemoryMax = 1 << 20
	// MaxRecycleJobs bounds recycle.max_jobs.
	MaxRecycleJobs = 1_000_000_000_000
	// DefaultRecycleJitter and MaxRecycleJitter: recycle.jitter's default
	// and bound.
	DefaultRecycleJitter = 0.1
	MaxRecycleJitter     = 0.5
)

// Config is one loaded, validated and defaulted configuration file.
type Config struct {
	// File is the path the configuration was read from, as given to Load
	// (or Parse, ParseOver, LoadOver); empty for a declaration resolved
	// without a file.
	File string
	// ShutdownTimeout is the default stop timeout of every service
	// (`shutdown_timeout`, default 10s).
	ShutdownTimeout time.Duration
	// Services in the order the file lists them (declared services first,
	// in the order of their declaration); names are unique.
	Services []*Service
	// Queues the broker serves, in the order the file lists them (`queues`;
	// declared queues first, as services).
	Queues []*Queue
	// Broker says where the queue broker listens and whom it lets in
	// (`broker`).
	Broker SocketAccess
	// Control says where the control socket (status, scale, reload,
	// metrics) listens and whom it lets in (`control`).
	Control Control
	// NATS says where the JetStream queues keep their items (`nats`): NATS
	// servers, or a JetStream server gotyledon runs. nil when the file has
	// no nats: section; never nil when a queue's store is jetstream.
	NATS *NATS
}

// Store is where a queue keeps its items (`store`).
type Store string

const (
	// StoreMemory (`store: memory`, the default): the broker's own memory.
	// Items are lost when the manager stops.
	StoreMemory Store = "memory"
	// StoreJetStream (`store: jetstream`): a NATS JetStream stream, through
	// the gotyledon-jetstream bridge, which the manager runs. Items outlive
	// the manager; the top-level nats: section says where JetStream is.
	StoreJetStream Store = "jetstream"
)

// NATS is the `nats:` mapping: where JetStream is for the queues whose
// store is jetstream. Exactly one of URLs and LocalDir is set. Every path
// is absolute (a relative one is taken from the config file's directory).
type NATS struct {
	// URLs are the NATS servers to connect to (`url`: one URL or a list),
	// each nats://, tls://, ws:// or wss:// with a host.
	URLs []string
	// Creds is a NATS credentials file (`creds`), NKey an nkey seed file
	// (`nkey`); at most one of them, with URLs only. Both exist.
	Creds, NKey string
	// TLSCA verifies the servers' certificates (`tls.ca`; else the
	// system's roots); TLSCert and TLSKey are a client certificate and its
	// key (`tls.cert`, `tls.key`), both or neither. With URLs only; each
	// exists.
	TLSCA, TLSCert, TLSKey string
	// LocalDir (`local_dir`) makes the bridge run a JetStream server of its
	// own, its files in this directory (created if need be), instead of
	// connecting to URLs.
	LocalDir string
	// SyncAlways (`sync: always`) makes the local server write every item
	// to disk before it acknowledges it; else it syncs every SyncInterval
	// (`sync: 1s`; 0: the server's default, 2 minutes). With LocalDir only.
	SyncAlways   bool
	SyncInterval time.Duration
	// Bridge is the gotyledon-jetstream program's absolute path (`bridge`);
	// empty means the default: next to the manager's binary, else in $PATH.
	Bridge string
	// Pos is where `nats:` stands in the file.
	Pos Position
}

// JetStreamQueues returns the queues whose store is jetstream, in order.
func (c *Config) JetStreamQueues() []*Queue {
	var out []*Queue
	for _, q := range c.Queues {
		if q.Store == StoreJetStream {
			out = append(out, q)
		}
	}
	return out
}

// Queue is one entry under `queues:`: a named work queue of the broker.
type Queue struct {
	// Name is the key under `queues:`; same rules as a service name.
	Name string
	// Capacity bounds the items of the queue (`capacity`, default
	// 10000): of a memory queue, those waiting (not those in flight); of a
	// jetstream queue, those its stream holds, waiting and in flight. A
	// put on a full queue waits.
	Capacity int
	// Store is where the queue keeps its items (`store`, default
	// StoreMemory).
	Store Store
	// AckWait is how long an item may stay in flight before it is
	// delivered again (`ack_wait`, from AckWaitFloor to MaxDuration):
	// DefaultAckWait by default for a jetstream queue; always 0 for a
	// memory queue.
	AckWait time.Duration
	// Replicas is how many NATS servers keep the queue's stream
	// (`replicas`, 1 to MaxReplicas): 1 by default for a jetstream queue;
	// always 0 for a memory queue.
	Replicas int
	// Pack is how many items of one put, at most, are stored together in
	// one JetStream message (`pack`, 1 to MaxPack): 1 by default for a
	// jetstream queue; always 0 for a memory queue. Above 1, the queue's
	// capacity, depth and in-flight count messages, not items.
	Pack int
	// Schedules put items into the queue at set times (`schedule`: one
	// mapping or a list), through the broker as any producer's put;
	// none by default.
	Schedules []QueueSchedule
	// Pos is where the queue's name stands in the file, or its declared
	// field when only a Declaration names it.
	Pos Position
}

// SocketAccess is a socket of the manager and who may use it: the
// `broker:` mapping for the queue socket, and the first keys of `control:`
// for the control socket. The manager's own uid and root may always
// connect.
type SocketAccess struct {
	// Socket is the socket's absolute path (`socket`; a relative path is
	// taken from the config file's directory, or from the working
	// directory when declared in Go). Empty means the default, in
	// $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/gotyledon, else
	// /run/gotyledon: queue.sock for the broker, control.sock for control.
	Socket string
	// Group, a group name or number (`group`), makes the socket 0660 and
	// owned by that group; empty leaves it 0600.
	Group string
	// GID is Group resolved, or -1 when Group is empty.
	GID int
	// AllowUIDs and AllowGIDs (`allow_uids`, `allow_gids`) let peers with
	// those user ids, or in those groups (primary or supplementary), connect
	// as well; so does membership of Group.
	AllowUIDs []int
	AllowGIDs []int
}

// Control is the `control:` mapping: the control socket that `gotyledon
// status`, `scale` and `reload` talk to (HTTP and JSON over a Unix socket,
// with /metrics in Prometheus's format), and an optional TCP address for
// the metrics alone.
type Control struct {
	SocketAccess
	// MetricsListen, a "host:port" (`metrics_listen`), serves /metrics on
	// TCP as well, for a Prometheus that cannot reach the Unix socket.
	// Empty (the default): no TCP listener.
	MetricsListen string
}

// Service returns the service called name, or nil.
func (c *Config) Service(name string) *Service {
	for _, s := range c.Services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Service is one entry under `services:`: a program (or a registered Go
// service) run as Workers identical worker processes.
type Service struct {
	// Name is the key under `services:`. It matches [A-Za-z][A-Za-z0-9_-]*
	// and is at most 63 bytes, so it is safe in argv[0], env and log fields.
	Name string
	// Command is the argv of a command service, exec'd directly (no shell).
	// Exactly one of Command and Run is set.
	Command []string
	// Run names a Go service registered by the program that embeds the
	// library; the manager re-executes its own binary to run it.
	Run string
	// Workers is the number of worker processes, ids 0..Workers-1
	// (default 1; 0 keeps the service defined but stopped).
	Workers int
	// Env is added to the worker's environment, over the manager's own:
	// `env`, and the variables of EnvFiles that `env` does not set.
	Env map[string]string
	// EnvFiles are the dotenv files of `env_file`, read at every load of
	// the configuration (a reload rereads them): their variables are in
	// Env, later files over earlier ones, `env` over them all.
	EnvFiles []EnvFile
	// Dir is the worker's working directory, made absolute against the
	// config file's directory (against the working directory when declared
	// in Go); empty means the manager's working directory.
	Dir string
	// StopSignal is sent to the worker's process group to ask it to stop
	// (default SIGTERM).
	StopSignal syscall.Signal
	// StopTimeout is how long a stopping worker has before SIGKILL
	// (default: the file's ShutdownTimeout).
	StopTimeout time.Duration
	// StopLast, at a graceful shutdown, holds the service's stop signal
	// back until every worker of the other services has exited: for a
	// service the others use while they stop (the manager sets it on its
	// JetStream bridge, which takes their last acknowledgements). No file
	// key sets it. A fast shutdown stops it with the rest.
	StopLast bool
	// ReloadSignal, if set (`reload_signal`), is sent to the service's
	// workers on each reload of the file that leaves their definition
	// unchanged, so they can reload in place (a Go service's Reload runs on
	// SIGHUP). 0: reloads leave them alone.
	ReloadSignal syscall.Signal
	// Restart is the policy for restarting workers that exit.
	Restart Restart
	// Replace says how workers running a changed definition are replaced
	// (`replace`, default ReplaceRolling).
	Replace Replace
	// Ready says how the manager knows a worker is ready (`ready`,
	// default ReadyUptime).
	Ready Ready
	// Watchdog, if set (`watchdog`), is how long a ready worker may go
	// without sending WATCHDOG=1 to its notify socket before it is aborted
	// (SIGABRT, SIGKILL after StopTimeout) and started again. The worker
	// gets it as WATCHDOG_USEC. 0: no watchdog.
	Watchdog time.Duration
	// ReadyTimeout bounds the wait for a ReadyNotify worker's READY=1
	// (`ready_timeout`, default DefaultReadyTimeout): a worker not ready by
	// then counts as failed to start.
	ReadyTimeout time.Duration
	// DependsOn are the services this one waits for (`depends_on`): its
	// workers start only once each of these meets its condition, and a
	// graceful shutdown stops them before those they depend on. Names are
	// services of the same configuration, without cycles.
	DependsOn []Dependency
	// OnExit says what an exit of one of the service's workers does to
	// the manager (`on_exit`, default OnExitContinue).
	OnExit OnExit
	// Schedule, if not nil (`schedule`), runs the service's workers at
	// each of its times, rather than at the manager's start: a cron job.
	// Its restart policy is on-failure or never; a run still going when
	// the next time comes makes that time skipped.
	Schedule *Schedule
	// Recycle says when a worker is replaced before it fails: after so
	// many jobs, so long, or past so much memory (`recycle`; the zero
	// value: never).
	Recycle Recycle
	// Pos is where the service's name stands in the file, or its declared
	// field when only a Declaration names it.
	Pos Position
}

// Replace is how a reload replaces the workers of a service whose
// definition (command, run, env, dir, stop_signal) changed.
type Replace int

const (
	// ReplaceRolling (`replace: rolling`): one worker at a time; the next
	// old worker is stopped only once the new one before it is ready, so
	// all but one keep running through the change, and a new one that
	// exits before it is ready halts the change.
	ReplaceRolling Replace = iota
	// ReplaceAll (`replace: all`): every old worker is stopped at once and
	// each is started again as soon as it has exited, for programs that
	// cannot run two versions side by side.
	ReplaceAll
)

// Ready is how the manager knows a worker is ready: what a rolling
// replacement waits for before it replaces the next worker.
type Ready int

const (
	// ReadyUptime (`ready: uptime`): a worker is ready once it has run
	// its service's min_uptime. For programs that say nothing.
	ReadyUptime Ready = iota
	// ReadyNotify (`ready: notify`): a worker is ready when it sends
	// READY=1 to the notify socket the manager gives it in NOTIFY_SOCKET,
	// in systemd's sd_notify protocol, within ready_timeout.
	ReadyNotify
)

func (r Ready) String() string {
	if r == ReadyNotify {
		return "notify"
	}
	return "uptime"
}

func (r Replace) String() string {
	if r == ReplaceAll {
		return "all"
	}
	return "rolling"
}

// Restart says how soon a worker that exited is started again. A worker that
// ran at least MinUptime is restarted at once. One that died sooner has
// failed to start: it is restarted after BackoffInitial, doubling with each
// further quick death up to BackoffMax (with ±20% jitter), and the count
// resets once a worker stays up MinUptime. Workers are never given up on.
type Restart struct {
	MinUptime      time.Duration // `min_uptime`, default 1s, at least MinUptimeFloor
	BackoffInitial time.Duration // `backoff_initial`, default 100ms, at least BackoffFloor
	BackoffMax     time.Duration // `backoff_max`, default 30s
	// Policy says which exits are restarted (`policy`, default
	// RestartAlways).
	Policy RestartPolicy
}

// RestartPolicy says which exits of a worker are followed by a new
// process.
type RestartPolicy int

const (
	// RestartAlways: every exit (`always`).
	RestartAlways RestartPolicy = iota
	// RestartOnFailure: an exit with a non-zero code or by a signal
	// (`on-failure`); an exit with code 0 completes the worker.
	RestartOnFailure
	// RestartNever: none (`never`); the worker completes at its first
	// exit, whatever its status: a one-shot task.
	RestartNever
)

// String is the policy as the file writes it.
func (p RestartPolicy) String() string {
	switch p {
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "never"
	}
	return "always"
}

// Recycle is a service's `recycle:` mapping: limits past which a worker is
// drained (the broker hands it no more items and takes back those it has
// not started), stopped and replaced, one worker of the service at a
// time. Each limit of each worker is lowered by a random fraction of
// Jitter, drawn when it starts, so that a pool started together is not
// recycled together; the configured value is the most it gets.
type Recycle struct {
	// MaxJobs (`max_jobs`): items the worker's processes have
	// acknowledged on the queue socket. 0: no limit.
	MaxJobs uint64
	// MaxAge (`max_age`): time since the worker started. 0: no limit.
	MaxAge time.Duration
	// MemoryMax (`memory_max`, bytes): the memory of its cgroup
	// (memory.current) where it has one, else its resident set. 0: no
	// limit.
	MemoryMax uint64
	// Jitter (`jitter`, 0 to MaxRecycleJitter, default
	// DefaultRecycleJitter): the fraction by which each limit may be
	// lowered.
	Jitter float64
	// MaxJobsPos is where max_jobs was set, for an error that only the
	// whole configuration shows (max_jobs without any queue).
	MaxJobsPos Position
}

// Enabled reports whether any limit is set.
func (r Recycle) Enabled() bool { return r.MaxJobs > 0 || r.MaxAge > 0 || r.MemoryMax > 0 }

// Dependency is one entry of a service's `depends_on`: a service it waits
// for, and what it waits for.
type Dependency struct {
	// Service names a service of the same configuration.
	Service string
	// Condition is what each of Service's workers must have done.
	Condition Condition
	// Pos is where the dependency stands in the file (its service name),
	// or its declared field.
	Pos Position
}

// Condition is what a service waits for in a service it depends on.
type Condition int

const (
	// ConditionStarted (`started`): each worker of the dependency has a
	// process running (or has completed, if it is a one-shot).
	ConditionStarted Condition = iota
	// ConditionReady (`ready`): each worker of the dependency is ready, as
	// its `ready:` setting says (or has completed with exit code 0).
	ConditionReady
	// ConditionCompleted (`completed`): each worker of the dependency has
	// exited with code 0 and is not restarted: a one-shot task that
	// succeeded. Its restart policy must be on-failure or never.
	ConditionCompleted
)

// String is the condition as the file writes it.
func (c Condition) String() string {
	switch c {
	case ConditionReady:
		return "ready"
	case ConditionCompleted:
		return "completed"
	}
	return "started"
}

// OnExit says what an exit of a service's worker does to the manager.
type OnExit int

const (
	// OnExitContinue (`on_exit: continue`, the default): nothing; the
	// worker's restart policy says whether it starts again.
	OnExitContinue OnExit = iota
	// OnExitStopManager (`on_exit: stop_manager`): an exit of one of the
	// service's workers that its restart policy would restart, or that
	// completes it (under policy on-failure: a failure only), stops the
	// manager: every other service stops in order, and the manager exits
	// with the worker's exit code (128 plus the signal's number if a
	// signal ended it). For an essential service, so that what runs the
	// manager (systemd's Restart=, a container runtime) takes over.
	OnExitStopManager
)

// String is the setting as the file writes it.
func (o OnExit) String() string {
	if o == OnExitStopManager {
		return "stop_manager"
	}
	return "continue"
}

// Position is where a value was set: a place in a configuration file,
// 1-based like editors count, or a field of a [Declaration].
type Position struct {
	File string
	Line int
	Col  int
	// Field, when not empty, is the path of a value declared in Go, named
	// as the file's keys would name it ("services.printer.workers",
	// "broker.allow_uids[0]"; a name that is not a valid one is quoted);
	// File, Line and Col are then zero.
	Field string
}

// Declared reports whether p is a field declared in Go rather than a place
// in a file.
func (p Position) Declared() bool { return p.Field != "" }
