package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The rules every value follows, whether a file or a Declaration sets it.
// Each takes the value already in its Go type and returns "" when it is
// valid, else the whole message. The YAML decoder and Resolve both call
// them, so that a file and a declaration cannot drift apart; what differs
// is only how a bad value is shown in "(got ...)": as written in the file
// (a string quoted, a number as typed), or as Go prints it.

// wholeRule is the range of a whole-number value.
type wholeRule struct{ lo, hi int64 }

var (
	workersRule  = wholeRule{0, MaxWorkers}
	capacityRule = wholeRule{1, MaxCapacity}
	replicasRule = wholeRule{1, MaxReplicas}
	packRule     = wholeRule{1, MaxPack}
	idRule       = wholeRule{0, 1<<31 - 1}
	maxJobsRule  = wholeRule{1, MaxRecycleJobs}
)

// problem is the rule: x in [lo, hi]. key names the value in the message
// ("workers", "allow_uids[2]").
func (r wholeRule) problem(key string, x int64, got string) string {
	if r.lo <= x && x <= r.hi {
		return ""
	}
	return r.message(key, got)
}

// message says what is wrong with a value that is not in range, or (in a
// file) not a whole number at all.
func (r wholeRule) message(key, got string) string {
	return fmt.Sprintf("%s must be a whole number from %d to %d (got %s)", key, r.lo, r.hi, got)
}

// durationProblem is the rule for every duration, keyed by its name: more
// than 0 and at most MaxDuration, min_uptime, ready_timeout and watchdog
// at least MinUptimeFloor, backoff_initial at least BackoffFloor, and
// ack_wait at least AckWaitFloor. No duration may be 0: a zero stop
// timeout would skip the polite stop, a zero min_uptime would let a worker
// that dies at once be restarted in a busy loop.
func durationProblem(key string, t time.Duration, got string) string {
	switch {
	case t <= 0:
		return fmt.Sprintf(`%s must be more than 0 (got %s)`, key, got)
	case key == "max_age" && t > MaxRecycleAge:
		return fmt.Sprintf(`max_age must be at most %s, 30 days (got %s)`, shortDuration(MaxRecycleAge), got)
	case key == "max_age" && t < MinRecycleAge:
		return fmt.Sprintf(`max_age must be at least %s (got %s)`, shortDuration(MinRecycleAge), got)
	case t > MaxDuration && key != "max_age":
		return fmt.Sprintf(`%s must be at most %s (got %s)`, key, shortDuration(MaxDuration), got)
	case key == "min_uptime" && t < MinUptimeFloor:
		return fmt.Sprintf("min_uptime must be at least %s (got %s; a shorter one would let a crashing worker restart in a busy loop)",
			shortDuration(MinUptimeFloor), shortDuration(t))
	case (key == "ready_timeout" || key == "watchdog") && t < MinUptimeFloor:
		return fmt.Sprintf("%s must be at least %s (got %s; a shorter one would stop workers in a busy loop)",
			key, shortDuration(MinUptimeFloor), shortDuration(t))
	case key == "backoff_initial" && t < BackoffFloor:
		return fmt.Sprintf("backoff_initial must be at least %s (got %s)", shortDuration(BackoffFloor), shortDuration(t))
	case key == "ack_wait" && t < AckWaitFloor:
		return fmt.Sprintf("ack_wait must be at least %s (got %s; a shorter one would deliver items again while their workers are still on them)",
			shortDuration(AckWaitFloor), shortDuration(t))
	}
	return ""
}

// backoffProblem is the rule between backoff_initial and backoff_max: the
// cap may not be below the first delay. blameMax puts the message on
// backoff_max (the caller's choice when backoff_max was set where the
// message will point); else it is on backoff_initial, and maxWhence says
// where backoff_max came from ("by default", "in the Go declaration").
func backoffProblem(r Restart, blameMax bool, maxWhence string) string {
	switch {
	case r.BackoffMax >= r.BackoffInitial:
		return ""
	case blameMax:
		return fmt.Sprintf("backoff_max must be at least backoff_initial (got %s, backoff_initial is %s)",
			shortDuration(r.BackoffMax), shortDuration(r.BackoffInitial))
	}
	return fmt.Sprintf("backoff_initial must be at most backoff_max (got %s, backoff_max is %s %s; raise it too)",
		shortDuration(r.BackoffInitial), shortDuration(r.BackoffMax), maxWhence)
}

// stopSignals maps the accepted stop_signal names, without "SIG", to signals.
var stopSignals = map[string]syscall.Signal{
	"HUP":   syscall.SIGHUP,
	"INT":   syscall.SIGINT,
	"QUIT":  syscall.SIGQUIT,
	"KILL":  syscall.SIGKILL,
	"USR1":  syscall.SIGUSR1,
	"USR2":  syscall.SIGUSR2,
	"TERM":  syscall.SIGTERM,
	"WINCH": syscall.SIGWINCH,
}

// signalProblem is the rule for stop_signal and reload_signal (key): one
// of stopSignals, and for reload_signal not KILL. A name a file gives that
// is not in stopSignals reaches it as signal 0.
func signalProblem(key string, sig syscall.Signal, got string) string {
	known := false
	for _, s := range stopSignals {
		known = known || s == sig
	}
	switch {
	case !known:
		return fmt.Sprintf(`invalid %s %s (use one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH, with or without "SIG")`, key, got)
	case key == "reload_signal" && sig == syscall.SIGKILL:
		return "reload_signal KILL would kill the workers at every reload (use HUP, USR1 or USR2, which the workers can handle)"
	}
	return ""
}

// reloadSignalProblem is the rule for a service's reload_signal against
// its stop_signal and kind: a reload signal that stops the workers would
// turn every reload into a stop. goService: the service runs a Go
// service (run:), whose runtime stops on SIGTERM and SIGINT as well as on
// its stop_signal.
func reloadSignalProblem(reload, stop syscall.Signal, goService bool) string {
	switch {
	case reload == 0:
	case reload == stop:
		return fmt.Sprintf("reload_signal %s is the service's stop_signal: every reload would stop its workers (use HUP, USR1 or USR2, or another stop_signal)", signalName(reload))
	case goService && (reload == syscall.SIGTERM || reload == syscall.SIGINT):
		return fmt.Sprintf("reload_signal %s stops a Go service's workers (their runtime stops on TERM and INT): use HUP, USR1 or USR2", signalName(reload))
	}
	return ""
}

// signalName shows a signal declared in Go: SIGTERM, or "signal 99".
func signalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return fmt.Sprintf("signal %d", int(sig))
}

// nameProblem is the rule for a service or queue name (kind).
func nameProblem(kind, name string) string {
	if validServiceName(name) {
		return ""
	}
	return fmt.Sprintf(`invalid %s name %q (a name starts with a letter and has only letters, digits, "-" and "_", at most %d bytes)`, kind, name, maxNameLen)
}

func validServiceName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '-' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// emptyCommand is what is wrong with a command of no arguments.
const emptyCommand = `command is empty (give at least the program to run, as in ["/usr/bin/app"])`

// argProblem is the rule for command[i]: the program is named, and no
// argument holds a NUL byte (execve could not pass it).
func argProblem(i int, arg string) string {
	switch {
	case i == 0 && arg == "":
		return `command[0] is empty (it names the program to run, as in "/usr/bin/app")`
	case strings.IndexByte(arg, 0) >= 0:
		return fmt.Sprintf(`command[%d] contains a NUL byte (a program argument cannot hold "\0")`, i)
	}
	return ""
}

// commandOrRunProblem is the rule that a service has exactly one of
// command and run.
func commandOrRunProblem(service string, hasCommand, hasRun bool) string {
	switch {
	case hasCommand && hasRun:
		return fmt.Sprintf("service %q has both command and run (keep one: command runs a program, run names a Go service)", service)
	case !hasCommand && !hasRun:
		return fmt.Sprintf("service %q has neither command nor run (add one: command runs a program, run names a Go service)", service)
	}
	return ""
}

// runProblem is the rule for run: it names one of the program's Go
// services.
func runProblem(name string, goServices []string) string {
	switch {
	case slices.Contains(goServices, name):
		return ""
	case len(goServices) == 0:
		return fmt.Sprintf("unknown Go service %q (this program registers no Go services; use command: to run a program)", name)
	}
	known := slices.Sorted(slices.Values(goServices))
	return fmt.Sprintf("unknown Go service %q (this program registers: %s)", name, strings.Join(known, ", "))
}

// systemdEnv are the variables systemd hands the manager about itself; the
// manager removes them from workers' environment, so env may not set them.
var systemdEnv = []string{"NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"}

// envNameProblem is the rule for a variable name under env: a valid name
// that neither gotyledon nor systemd sets.
func envNameProblem(name string) string {
	switch {
	case !validEnvName(name):
		return fmt.Sprintf(`invalid env name %q (a name starts with a letter or "_" and has only letters, digits and "_")`, name)
	case strings.HasPrefix(name, "GOTYLEDON_"):
		return fmt.Sprintf("env name %q is reserved (gotyledon sets the GOTYLEDON_ variables of each worker itself; pick another name)", name)
	case slices.Contains(systemdEnv, name):
		return fmt.Sprintf("env name %q is reserved (gotyledon removes this systemd variable from workers' environment; pick another name)", name)
	}
	return ""
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', c == '_':
		case i > 0 && '0' <= c && c <= '9':
		default:
			return false
		}
	}
	return true
}

// envValueProblem is the rule for the value of env variable name.
func envValueProblem(name, val string) string {
	if strings.IndexByte(val, 0) >= 0 {
		return fmt.Sprintf(`env %s contains a NUL byte (an environment value cannot hold "\0")`, name)
	}
	return ""
}

// baseDir is the directory a relative path is taken from, and how messages
// name it: the config file's directory for a path in a file, the working
// directory for one declared in Go.
type baseDir struct {
	name string
	abs  func() (string, error)
}

func fileBase(file string) baseDir {
	return baseDir{"the config file's directory", func() (string, error) { return filepath.Abs(filepath.Dir(file)) }}
}

// workingDirBase is the base of relative paths declared in Go: what a
// relative path means to the Go program anywhere else (os.Open).
var workingDirBase = baseDir{"the working directory", func() (string, error) { return filepath.Abs(".") }}

// dirRule is the rule for dir: a path with no NUL and no "~", made
// absolute against base. It returns the absolute path, or "" and the
// message.
func dirRule(dir string, base baseDir) (string, string) {
	return pathRule("dir", dir, base)
}

// socketRule is the rule for a socket path: no NUL, absolute against
// base, short enough for the kernel. It returns the clean absolute path,
// or "" and the message.
func socketRule(p string, base baseDir) (string, string) {
	switch {
	case p == "":
		return "", `socket is empty (write a path, or leave socket out for the default)`
	case strings.IndexByte(p, 0) >= 0:
		return "", `socket contains a NUL byte (a path cannot hold "\0")`
	case !filepath.IsAbs(p):
		abs, err := base.abs()
		if err != nil {
			return "", fmt.Sprintf("cannot resolve socket %q against %s: %v (write an absolute path)", p, base.name, err)
		}
		p = filepath.Join(abs, p)
	}
	p = filepath.Clean(p)
	if len(p) > MaxSocketPath {
		return "", fmt.Sprintf("socket path %q is %d bytes long (a Unix socket path has at most %d; choose a shorter one)", p, len(p), MaxSocketPath)
	}
	return p, ""
}

// sameSocketProblem is the rule that the control and queue sockets differ.
// blameBroker puts the message on the queue socket's path, when that is the
// one the user can see and change.
func sameSocketProblem(control, broker string, blameBroker bool) string {
	switch {
	case control == "" || control != broker:
		return ""
	case blameBroker:
		return fmt.Sprintf("queue socket %q is the control socket's path too (give each socket a path of its own)", broker)
	}
	return fmt.Sprintf("control socket %q is the queue socket's path too (give each socket a path of its own)", control)
}

// groupRule is the rule for group: a number from 0, or the name of a group
// of this machine. It returns the gid, or -1 and the message.
func groupRule(g string) (int, string) {
	if n, err := strconv.Atoi(g); err == nil {
		if n < 0 {
			return -1, fmt.Sprintf("group must be a group name or a number from 0 (got %d)", n)
		}
		return n, ""
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return -1, fmt.Sprintf("unknown group %q (no such group on this machine; create it, or give its number)", g)
	}
	gid, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return -1, fmt.Sprintf("group %q has the id %q, which is not a number (give the group's number instead)", g, grp.Gid)
	}
	return gid, ""
}

// listenProblem is the rule for metrics_listen: an IP address or
// localhost, and a port.
func listenProblem(a string) string {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Sprintf(`metrics_listen must be "host:port", e.g. "127.0.0.1:9464" (got %q)`, a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf(`metrics_listen's port must be a number from 0 (any free port, logged) to 65535, e.g. "127.0.0.1:9464" (got %q)`, port)
	}
	if host == "" {
		return fmt.Sprintf(`metrics_listen needs a host: "127.0.0.1:%s" for this machine only, "0.0.0.0:%s" for every interface (got %q)`, port, port, a)
	}
	if net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Sprintf(`metrics_listen's host must be an IP address or "localhost", e.g. "127.0.0.1:9464" (got %q)`, host)
	}
	return ""
}

// readyProblem is the rule for ready. A word a file gives that is neither
// "uptime" nor "notify" reaches it as -1.
func readyProblem(r Ready, got string) string {
	if r == ReadyUptime || r == ReadyNotify {
		return ""
	}
	return fmt.Sprintf(`ready must be "uptime" (ready once it has run min_uptime) or "notify" (ready when it sends READY=1) (got %s)`, got)
}

// replaceProblem is the rule for replace. A word a file gives that is
// neither "rolling" nor "all" reaches it as -1.
func replaceProblem(r Replace, got string) string {
	if r == ReplaceRolling || r == ReplaceAll {
		return ""
	}
	return fmt.Sprintf(`replace must be "rolling" (one worker at a time) or "all" (all at once) (got %s)`, got)
}

// storeProblem is the rule for a queue's store. A file's word reaches it
// as it is written.
func storeProblem(s Store, got string) string {
	if s == StoreMemory || s == StoreJetStream {
		return ""
	}
	return fmt.Sprintf(`store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got %s)`, got)
}

// jetStreamOnlyProblem is the rule that key (ack_wait, replicas, pack) is set
// on jetstream queues only; store is the queue's.
func jetStreamOnlyProblem(key string, store Store) string {
	if store == StoreJetStream {
		return ""
	}
	return fmt.Sprintf(`%s applies to "store: jetstream" queues only (this queue's store is %s: add store: jetstream, or remove %s)`, key, store, key)
}

// needsNATSProblem is the rule that a jetstream queue has a nats: section
// to say where JetStream is.
func needsNATSProblem(store Store, hasNATS bool) string {
	if store != StoreJetStream || hasNATS {
		return ""
	}
	return "store jetstream needs a top-level nats: section: url: for NATS servers, or local_dir: for a JetStream server gotyledon runs"
}

// localReplicasProblem is the rule that a queue kept by the JetStream
// server gotyledon runs (local) has one replica: that server is one node.
func localReplicasProblem(queue string, replicas int, local bool) string {
	if !local || replicas <= 1 {
		return ""
	}
	return fmt.Sprintf("queue %q has replicas %d, but the JetStream server gotyledon runs for local_dir is a single node, which keeps one copy (use replicas: 1, or url: with a cluster of NATS servers)", queue, replicas)
}

// natsServerProblem is the rule that nats: has exactly one of url and
// local_dir.
func natsServerProblem(hasURL, hasLocal bool) string {
	switch {
	case hasURL && hasLocal:
		return "nats has both url and local_dir (keep one: url connects to NATS servers, local_dir runs a JetStream server of gotyledon's own)"
	case !hasURL && !hasLocal:
		return "nats needs url (the NATS servers to connect to, as in \"nats://127.0.0.1:4222\") or local_dir (a directory for a JetStream server gotyledon runs)"
	}
	return ""
}

// credsProblem is the rule that nats: has at most one of creds and nkey.
func credsProblem(hasCreds, hasNKey bool) string {
	if hasCreds && hasNKey {
		return "nats has both creds and nkey (keep one: creds is a credentials file, a user JWT with its nkey seed; nkey a seed file alone)"
	}
	return ""
}

// natsKeyProblem is the rule that sync goes with local_dir, and creds,
// nkey and tls with url: local says which of the two nats: has.
func natsKeyProblem(key string, local bool) string {
	switch {
	case key == "sync" && !local:
		return "sync applies to local_dir only (it says when the JetStream server gotyledon runs writes to disk; NATS servers at url have their own settings): remove it"
	case key != "sync" && local:
		return fmt.Sprintf("%s applies to url only (the JetStream server gotyledon runs for local_dir is reached inside the bridge's process, with no credentials or TLS): remove it", key)
	}
	return ""
}

// tlsPairProblem is the rule that a client certificate comes with its
// key.
func tlsPairProblem(hasCert, hasKey bool) string {
	switch {
	case hasCert && !hasKey:
		return "tls has cert but no key (a client certificate needs its private key: add key)"
	case hasKey && !hasCert:
		return "tls has key but no cert (add cert, the client certificate the key belongs to)"
	}
	return ""
}

// emptyURLs is what is wrong with a url: list of no server.
const emptyURLs = `url lists no server (give at least one, as in [nats://127.0.0.1:4222])`

// natsSchemes are the URL schemes a NATS client connects with.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// urlProblem is the rule for a NATS server URL, named key ("url",
// "url[1]"): nats://, tls://, ws:// or wss://, a host, and a port if any
// from 1 to 65535. A comma is refused: the NATS client would read a
// server list, which url: writes as a list.
func urlProblem(key, u string) string {
	const example = `as in "nats://127.0.0.1:4222"`
	if strings.Contains(u, ",") {
		return fmt.Sprintf("%s %q holds a comma (list the servers instead, as in [nats://a:4222, nats://b:4222])", key, u)
	}
	p, err := url.Parse(u)
	if err != nil || !slices.Contains(natsSchemes, p.Scheme) {
		return fmt.Sprintf("%s must be a nats://, tls://, ws:// or wss:// URL with a host, %s (got %q)", key, example, u)
	}
	if p.Hostname() == "" {
		return fmt.Sprintf("%s %q has no host (write one, %s)", key, u, example)
	}
	if port := p.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("%s %q: the port must be a number from 1 to 65535, %s", key, u, example)
		}
	}
	return ""
}

// pathRule is the rule for a path of key (a service's dir or env_file,
// the paths of nats:): not empty, no NUL, no "~", made absolute against
// base. It returns the clean absolute path, or "" and the message.
func pathRule(key, p string, base baseDir) (string, string) {
	switch {
	case p == "" && key == "dir":
		return "", `dir is empty (write a directory path, or leave dir out to run in gotyledon's working directory)`
	case p == "" && key == "env_file":
		return "", "env_file path is empty (write the path of a file of NAME=value lines)"
	case p == "" && key == "bridge":
		return "", "bridge is empty (write the path of gotyledon-jetstream, or leave bridge out to find it next to gotyledon or in $PATH)"
	case p == "" && key == "local_dir":
		return "", "local_dir is empty (write the path of a directory for the JetStream server's files)"
	case p == "":
		return "", fmt.Sprintf("%s is empty (write the path of a file, or leave %s out)", key, key)
	case strings.IndexByte(p, 0) >= 0:
		return "", fmt.Sprintf(`%s contains a NUL byte (a path cannot hold "\0")`, key)
	case p == "~" || strings.HasPrefix(p, "~/"):
		return "", fmt.Sprintf(`%s %q starts with "~" (gotyledon does not expand "~"; write the full path)`, key, p)
	case filepath.IsAbs(p):
		return filepath.Clean(p), ""
	}
	abs, err := base.abs()
	if err != nil {
		return "", fmt.Sprintf("cannot resolve %s %q against %s: %v (write an absolute path)", key, p, base.name, err)
	}
	return filepath.Join(abs, p), ""
}

// localDirRule is pathRule for nats.local_dir, a directory that need not
// exist yet (the bridge creates it), but is not a file.
func localDirRule(p string, base baseDir) (string, string) {
	abs, msg := pathRule("local_dir", p, base)
	if msg != "" {
		return "", msg
	}
	if fi, err := os.Stat(abs); err == nil && !fi.IsDir() {
		return "", fmt.Sprintf("local_dir %q is a file (give a directory, or a path where one may be created)", abs)
	}
	return abs, ""
}

// bridgeRule is pathRule for nats.bridge, the gotyledon-jetstream
// program. It need not exist when the file is read: the manager looks for
// it when it starts the bridge.
func bridgeRule(p string, base baseDir) (string, string) {
	return pathRule("bridge", p, base)
}

// fileRule is pathRule for a file that must exist (creds, nkey, the tls
// files).
func fileRule(key, p string, base baseDir) (string, string) {
	abs, msg := pathRule(key, p, base)
	if msg != "" {
		return "", msg
	}
	fi, err := os.Stat(abs)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Sprintf("%s file %q does not exist (a relative path is taken from %s)", key, abs, base.name)
	case errors.As(err, &pe):
		return "", fmt.Sprintf("cannot use %s file %q: %v", key, abs, pe.Err)
	case err != nil:
		return "", fmt.Sprintf("cannot use %s file %q: %v", key, abs, err)
	case fi.IsDir():
		return "", fmt.Sprintf("%s %q is a directory (give the path of a file)", key, abs)
	}
	return abs, ""
}

// syncRule is the rule for nats.sync, v as written: "always", or a
// duration as every duration is. It returns whether it is always, or the
// interval, or the message; got is v as a message shows it.
func syncRule(v, got string) (bool, time.Duration, string) {
	const want = `sync must be "always" (every item written to disk before it is acknowledged) or a duration like "1s" (how often the server writes to disk)`
	if v == "always" {
		return true, 0, ""
	}
	if isDecimal(v) {
		return false, 0, fmt.Sprintf(`sync must be "always" or a duration with a unit (got %s; write "%ss")`, got, v)
	}
	t, err := time.ParseDuration(v)
	if err != nil {
		return false, 0, fmt.Sprintf("%s (got %s)", want, got)
	}
	if msg := durationProblem("sync", t, got); msg != "" {
		return false, 0, msg
	}
	return false, t, ""
}

// restartPolicyProblem is the rule for restart.policy: one of its words
// (p < 0 when got is not), or of its constants.
func restartPolicyProblem(p RestartPolicy, got string) string {
	if p < RestartAlways || p > RestartNever {
		return fmt.Sprintf(`restart policy must be "always", "on-failure" or "never" (got %s)`, got)
	}
	return ""
}

func conditionProblem(c Condition, got string) string {
	if c < ConditionStarted || c > ConditionCompleted {
		return fmt.Sprintf(`a depends_on condition must be "started", "ready" or "completed" (got %s)`, got)
	}
	return ""
}

func onExitProblem(o OnExit, got string) string {
	if o < OnExitContinue || o > OnExitStopManager {
		return fmt.Sprintf(`on_exit must be "continue" or "stop_manager" (got %s)`, got)
	}
	return ""
}

// minEvery is the shortest @every interval: the cron library rounds to
// whole seconds, and would take a shorter one as one second.
const minEvery = time.Second

// cronExample is a right value, for the messages.
const cronExample = `as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly"`

// scheduleRule is the rule for a schedule: its expression parses as
// cron, and names a time that comes, read in loc. It returns the
// Schedule (Pos left to the caller), or the message.
func scheduleRule(expr string, loc *time.Location) (Schedule, string) {
	const fields = "minute hour day-of-month month day-of-week"
	trimmed := strings.TrimSpace(expr)
	switch {
	case trimmed == "":
		return Schedule{}, fmt.Sprintf("cron is empty (write 5 fields, %s, %s)", fields, cronExample)
	case strings.HasPrefix(trimmed, "TZ=") || strings.HasPrefix(trimmed, "CRON_TZ="):
		return Schedule{}, fmt.Sprintf(`cron %q names its time zone in the expression (write it in time_zone instead, as in {cron: "0 3 * * *", time_zone: Europe/Paris})`, expr)
	}
	spec, err := cronParser.Parse(trimmed)
	if err != nil {
		return Schedule{}, cronMessage(expr, trimmed, err)
	}
	// The library takes an interval under a second as one second.
	if every, ok := strings.CutPrefix(trimmed, "@every "); ok {
		if t, err := time.ParseDuration(strings.TrimSpace(every)); err == nil && t < minEvery {
			return Schedule{}, fmt.Sprintf(`cron %q repeats more often than once a second (write "@every 1s" or longer)`, expr)
		}
	}
	s := Schedule{Cron: expr, Location: loc, spec: spec}
	if s.Next(time.Now()).IsZero() {
		return Schedule{}, fmt.Sprintf(`cron %q names no date that comes (such as the 30th of February): it would never fire (%s)`, expr, cronExample)
	}
	return s, ""
}

// cronMessage says in plain words what the cron library found wrong with
// expr, and what a right one looks like.
func cronMessage(expr, trimmed string, err error) string {
	reason := err.Error()
	n := len(strings.Fields(trimmed))
	switch {
	case strings.HasPrefix(trimmed, "@every"):
		return fmt.Sprintf(`cron %q: @every needs a duration, as in "@every 90s" or "@every 1h30m"`, expr)
	case strings.HasPrefix(trimmed, "@"):
		return fmt.Sprintf(`cron %q is not a known descriptor (use @yearly, @monthly, @weekly, @daily, @hourly or "@every 1h30m", or 5 fields %s)`, expr, cronExample)
	case n == 6:
		return fmt.Sprintf("cron %q has 6 fields; gotyledon's cron has no seconds field (write 5 fields: minute hour day-of-month month day-of-week, %s)", expr, cronExample)
	case n != 5:
		return fmt.Sprintf("cron %q has %d fields (write 5: minute hour day-of-month month day-of-week, %s)", expr, n, cronExample)
	case strings.Contains(reason, "above maximum"), strings.Contains(reason, "below minimum"):
		return fmt.Sprintf("cron %q has a value out of range: %s (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT; %s)", expr, reason, cronExample)
	}
	return fmt.Sprintf("cron %q is not a valid cron expression: %s (%s)", expr, reason, cronExample)
}

// timeZoneRule is the rule for time_zone: an IANA time zone name this
// machine knows. It returns the location, or nil and the message.
func timeZoneRule(name string) (*time.Location, string) {
	const example = `as in "Europe/Paris" or "UTC"`
	if name == "" {
		return nil, fmt.Sprintf("time_zone is empty (write an IANA time zone name %s, or leave time_zone out for the manager's local time zone)", example)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Sprintf("unknown time_zone %q (write an IANA time zone name %s; this machine's are under /usr/share/zoneinfo)", name, example)
	}
	return loc, ""
}

// memoryRule is the rule for recycle.memory_max: a size in bytes, written
// as a number of bytes or with a unit that says its base (KB, MB, GB, TB:
// powers of 1000; KiB, MiB, GiB, TiB: powers of 1024), at least
// MinMemoryMax. A bare K, M, G or T is refused: systemd reads it as a
// power of 1024, most other tools as a power of 1000. Parsed here rather
// than by go-humanize, whose package init (0.1 ms, measured with
// GODEBUG=inittrace=1) every worker's start would pay.
func memoryRule(text string) (uint64, string) {
	const example = `as in "512MiB" or "2GB"`
	trimmed := strings.TrimSpace(text)
	number := strings.TrimRight(trimmed, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
	unit := strings.ToLower(strings.TrimSpace(trimmed[len(number):]))
	scale, known := memoryUnits[unit]
	switch {
	case len(unit) == 1 && strings.Contains("kmgt", unit):
		u := strings.ToUpper(unit)
		return 0, fmt.Sprintf("memory_max %q is ambiguous: write %siB for powers of 1024 or %sB for powers of 1000", text, u, u)
	case !known:
		return 0, fmt.Sprintf("memory_max must be a size %s (got %q)", example, text)
	}
	x, err := strconv.ParseFloat(strings.TrimSpace(number), 64)
	bytes := x * scale
	switch {
	case err != nil || x < 0 || bytes > 1<<63:
		return 0, fmt.Sprintf("memory_max must be a size %s (got %q)", example, text)
	case bytes < MinMemoryMax:
		return 0, fmt.Sprintf("memory_max must be at least 1MiB (got %q)", text)
	}
	return uint64(bytes), ""
}

// memoryUnits are memory_max's units, lower-cased, and their values.
var memoryUnits = map[string]float64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

func jitterProblem(j float64, got string) string {
	if j < 0 || j > MaxRecycleJitter || j != j {
		return fmt.Sprintf("jitter must be a fraction from 0 to %g, as in 0.1 for up to 10%% below each limit (got %s)", MaxRecycleJitter, got)
	}
	return ""
}

// scheduledPolicyProblem is the rule between a service's schedule and its
// restart policy: a scheduled run must end.
func scheduledPolicyProblem(service string, p RestartPolicy) string {
	if p == RestartAlways {
		return fmt.Sprintf("service %q runs on a schedule, so each run must end: its restart policy is always "+
			"(add restart: {policy: never}, or on-failure to retry a failed run)", service)
	}
	return ""
}
