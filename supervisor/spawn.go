package supervisor

// This file is the manager's side of the manager/worker contract: what a
// worker process is given. The worker's side is in package service.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/service"
)

// spawnSpec is everything the process table needs to start one worker.
type spawnSpec struct {
	service  string
	id       int
	argv0    string   // program to exec: a path, or a name looked up in PATH
	argv     []string // argv[0] included
	env      []string
	dir      string
	goWorker bool // hand the manager pipe to the worker as fd 3
	restarts int  // processes started in this slot before, for the log
	// deathSignal is what the worker gets when the manager dies. SIGKILL
	// for a command: nothing says it would stop otherwise. A Go worker gets
	// its stop signal, which cancels its context so it can finish the item
	// in hand; its runtime then also sees the manager pipe close and exits
	// within a bounded grace (service.Main).
	deathSignal syscall.Signal
}

// managerPipeFD is where a Go worker finds the read end of the manager pipe:
// right after stdin, stdout and stderr.
const managerPipeFD = 3

// workerBaseEnv returns environ without the variables no worker may see:
// systemd's, which address the manager, and any GOTYLEDON_ variable the
// manager itself inherited (a manager may run as another's worker). A
// variable set twice keeps its first value, the one getenv would return.
func workerBaseEnv(environ []string) []string {
	var env []string
	seen := make(map[string]bool, len(environ))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if seen[k] || config.IsManagerOnlyEnv(k) || strings.HasPrefix(k, "GOTYLEDON_") {
			continue
		}
		seen[k] = true
		env = append(env, kv)
	}
	return env
}

// setEnv sets k=v in env, replacing an earlier value (env has no duplicate
// keys: see workerBaseEnv), so that no program's getenv has to choose.
func setEnv(env []string, k, v string) []string {
	prefix := k + "="
	for i, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			env[i] = prefix + v
			return env
		}
	}
	return append(env, prefix+v)
}

// buildSpawnSpec says how to start worker id of svc.
//
// A command service runs its command. A Go service runs executable (this
// very program) with argv[0] set to a title that `ps` shows, such as
// "gotyledon: printer worker 3", and the variables that make the program's
// main run that worker (see service.Main).
func buildSpawnSpec(svc *config.Service, id int, baseEnv []string, executable, program string) *spawnSpec {
	env := slices.Clone(baseEnv)
	keys := make([]string, 0, len(svc.Env))
	for k := range svc.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = setEnv(env, k, svc.Env[k])
	}
	env = setEnv(env, service.EnvService, svc.Name)
	env = setEnv(env, service.EnvWorkerID, strconv.Itoa(id))
	s := &spawnSpec{service: svc.Name, id: id, env: env, dir: svc.Dir, deathSignal: syscall.SIGKILL}
	if svc.Run == "" {
		s.argv0 = svc.Command[0]
		s.argv = slices.Clone(svc.Command)
		return s
	}
	s.goWorker = true
	s.deathSignal = svc.StopSignal
	s.argv0 = executable
	s.argv = []string{fmt.Sprintf("%s: %s worker %d", program, svc.Name, id)}
	s.env = setEnv(s.env, service.EnvRun, svc.Run)
	s.env = setEnv(s.env, service.EnvManagerFD, strconv.Itoa(managerPipeFD))
	s.env = setEnv(s.env, service.EnvStopSignal, strconv.Itoa(int(svc.StopSignal)))
	if svc.ReloadSignal != 0 {
		s.env = setEnv(s.env, service.EnvReloadSignal, strconv.Itoa(int(svc.ReloadSignal)))
	}
	return s
}

// defaultPath is searched when the worker's environment has no PATH, as
// execvp does.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPath finds the program a worker runs. A name with a slash is used as
// it is (relative to the worker's dir, where exec resolves it); a bare name
// is searched in the worker's own PATH, since that is what the worker would
// see if it ran the command itself.
func lookPath(name string, env []string, dir string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	// The PATH is not in the error: it would be most of the status
	// table's LAST EXIT column. `gotyledon check` shows it.
	return "", fmt.Errorf("exec %s: %w", name, exec.ErrNotFound)
}

// StartProblems says, for each command service of cfg, what would keep
// its workers from starting as the machine is now: its program not found
// (in the PATH its workers get: the service's env, else environ's, else a
// default), or not an executable file; its dir missing or not a
// directory. Each problem is at the service's position. environ is the
// manager's environment (os.Environ()). Go services run the manager's own
// executable and have none.
func StartProblems(cfg *config.Config, environ []string) []*config.Error {
	var problems []*config.Error
	base := workerBaseEnv(environ)
	for _, svc := range cfg.Services {
		if len(svc.Command) == 0 {
			continue
		}
		add := func(format string, args ...any) {
			problems = append(problems, &config.Error{Pos: svc.Pos, Msg: fmt.Sprintf("service %q: ", svc.Name) + fmt.Sprintf(format, args...)})
		}
		if svc.Dir != "" {
			if fi, err := os.Stat(svc.Dir); err != nil {
				add("dir %s: %v", svc.Dir, errors.Unwrap(err))
			} else if !fi.IsDir() {
				add("dir %s is not a directory", svc.Dir)
			}
		}
		env := base
		for k, v := range svc.Env {
			env = setEnv(env, k, v)
		}
		name := svc.Command[0]
		path, err := lookPath(name, env, svc.Dir)
		if err != nil {
			p := defaultPath
			for _, kv := range env {
				if v, ok := strings.CutPrefix(kv, "PATH="); ok {
					p = v
				}
			}
			add("command %q not found in PATH %s", name, p)
			continue
		}
		full := path
		if !filepath.IsAbs(full) && svc.Dir != "" {
			full = filepath.Join(svc.Dir, full)
		}
		switch fi, err := os.Stat(full); {
		case err != nil:
			add("command %s: %v", path, errors.Unwrap(err))
		case !fi.Mode().IsRegular():
			add("command %s is not a regular file", path)
		case unix.Access(full, unix.X_OK) != nil:
			add("command %s is not executable (mode %v)", path, fi.Mode().Perm())
		}
	}
	return problems
}
