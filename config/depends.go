package config

import (
	"fmt"
	"slices"
	"strings"
)

// wholeConfigProblems checks what only the whole configuration shows about
// the services: recycle.max_jobs needs queues; and their depends_on: each names another service of it, a
// `completed` condition names a service that can complete, and no
// service waits, even through others, for itself. Each error stands at
// the dependency at fault; a cycle at the dependency that closes it,
// the first time the services' order meets it.
func wholeConfigProblems(cfg *Config) []*Error {
	var errs []*Error
	names := make([]string, 0, len(cfg.Services))
	for _, s := range cfg.Services {
		names = append(names, s.Name)
	}
	// valid holds, by service, the dependencies the cycle search follows:
	// those that name another service.
	valid := make(map[string][]Dependency, len(cfg.Services))
	for _, s := range cfg.Services {
		for _, dep := range s.DependsOn {
			target := cfg.Service(dep.Service)
			switch {
			case dep.Service == s.Name:
				errs = append(errs, &Error{Pos: dep.Pos, Msg: fmt.Sprintf("service %q depends on itself (remove %s from its depends_on)", s.Name, dep.Service)})
				continue
			case target == nil:
				hint := ""
				if guess := suggest(dep.Service, names); guess != "" {
					hint = fmt.Sprintf("did you mean %q? ", guess)
				}
				errs = append(errs, &Error{Pos: dep.Pos, Msg: fmt.Sprintf("service %q depends on %q, which is not a service of this configuration (%sservices: %s)",
					s.Name, dep.Service, hint, strings.Join(names, ", "))})
				continue
			case target.Schedule != nil:
				errs = append(errs, &Error{Pos: dep.Pos, Msg: fmt.Sprintf("service %q depends on %q, which runs on a schedule: it would wait for its next run, "+
					"and the manager's start with it (depend on a service that starts with the manager)", s.Name, dep.Service)})
				continue
			case dep.Condition == ConditionCompleted && target.Restart.Policy == RestartAlways:
				errs = append(errs, &Error{Pos: dep.Pos, Msg: fmt.Sprintf("service %q waits for %q to complete, which never happens: its restart policy is always "+
					"(give %s restart: {policy: never} or on-failure, or wait for it to be ready)", s.Name, dep.Service, dep.Service)})
			}
			valid[s.Name] = append(valid[s.Name], dep)
		}
	}
	// A depth-first search over the services in order; a dependency that
	// leads back to a service still on the path closes a cycle.
	const (
		unseen = iota
		onPath
		done
	)
	mark := make(map[string]int, len(cfg.Services))
	var path []string
	var visit func(name string)
	visit = func(name string) {
		mark[name] = onPath
		path = append(path, name)
		for _, dep := range valid[name] {
			switch mark[dep.Service] {
			case unseen:
				visit(dep.Service)
			case onPath:
				start := slices.Index(path, dep.Service)
				cycle := append(slices.Clone(path[start:]), dep.Service)
				errs = append(errs, &Error{Pos: dep.Pos, Msg: fmt.Sprintf("dependency cycle: %s (each waits for the next, so none would start; remove one of these depends_on entries)",
					strings.Join(cycle, " → "))})
			}
		}
		path = path[:len(path)-1]
		mark[name] = done
	}
	for _, s := range cfg.Services {
		if mark[s.Name] == unseen {
			visit(s.Name)
		}
	}
	// max_jobs counts items acknowledged on the queue socket, which only
	// a configuration with queues serves.
	if len(cfg.Queues) == 0 {
		for _, s := range cfg.Services {
			if s.Recycle.MaxJobs > 0 {
				errs = append(errs, &Error{Pos: s.Recycle.MaxJobsPos, Msg: fmt.Sprintf("service %q recycles its workers after max_jobs items, "+
					"counted on the queue socket, but this configuration has no queues (add one under queues:, or use max_age or memory_max)", s.Name)})
			}
		}
	}
	return errs
}
