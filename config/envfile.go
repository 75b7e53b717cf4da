package config

// env_file: dotenv files whose variables a service's workers get.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/goccy/go-yaml/ast"
	"github.com/hashicorp/go-envparse"
)

// EnvFile is one entry of a service's `env_file`, from the file or
// declared in Go ([EnvFiles]).
type EnvFile struct {
	// Path is absolute in a Config: a relative one is taken from the
	// config file's directory, or, declared in Go, from the working
	// directory.
	Path string
	// Optional: a file that does not exist is skipped (`{path: P,
	// optional: true}`, or systemd's `-P`); else it is an error.
	Optional bool
	// Pos is where the entry stands in the file, or the declared field
	// (`services.web.env_file[0]`). EnvFiles ignores it.
	Pos Position
}

// envFiles decodes env_file: a path, or a list of paths and {path,
// optional} mappings.
func (d *decoder) envFiles(e entry) []EnvFile {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	const want = `env_file must be a path or a list of them, each a path or {path: P, optional: true}`
	var items []entry
	switch n := n.(type) {
	case *ast.SequenceNode:
		for i, v := range n.Values {
			items = append(items, d.element(fmt.Sprintf("env_file[%d]", i), v))
		}
	case *ast.StringNode, *ast.LiteralNode:
		items = []entry{e}
	default:
		d.errorf(e.pos, "%s (got %s)", want, describe(n))
		return nil
	}
	var out []EnvFile
	for _, it := range items {
		f := EnvFile{Pos: it.pos}
		v, ok := d.deref(it.val)
		if !ok {
			continue
		}
		if _, isMap := v.(*ast.MappingNode); isMap {
			errs := len(d.errs)
			fields, _ := d.expectMapping(it, want, "key")
			for _, fe := range fields {
				switch fe.key {
				case "path":
					f.Path, _ = d.text(fe, "a file path")
				case "optional":
					fv, ok := d.deref(fe.val)
					if b, isBool := fv.(*ast.BoolNode); ok && isBool {
						f.Optional = b.Value
					} else if ok {
						d.errorf(fe.pos, "optional must be true or false (got %s)", describe(fv))
					}
				default:
					d.unknownKey(fe, " in env_file", []string{"optional", "path"})
				}
			}
			if f.Path == "" {
				d.errorf(it.pos, "env_file entry has no path (write {path: .env, optional: true})")
				continue
			}
			if len(d.errs) > errs {
				continue // not read: the entry is wrong
			}
		} else {
			p, ok := d.text(it, "a file path")
			if !ok {
				continue
			}
			// systemd's EnvironmentFile=-PATH: optional.
			if rest, dash := strings.CutPrefix(p, "-"); dash {
				p, f.Optional = rest, true
			}
			f.Path = p
		}
		abs, msg := pathRule("env_file", f.Path, fileBase(d.file))
		if !d.problem(f.Pos, msg) {
			continue
		}
		f.Path = abs
		out = append(out, f)
	}
	return out
}

// maxEnvFile bounds what an env file may hold: it is read at every load of
// the configuration.
const maxEnvFile = 1 << 20

// readEnvFile reads the regular file path, at most maxEnvFile bytes. What
// is not a regular file is refused before it is opened (opening a FIFO
// blocks, a device may act), and the file is opened without blocking and
// without becoming a terminal, in case it was swapped meanwhile.
func readEnvFile(path string) ([]byte, error) {
	notRegular := fmt.Errorf("env_file %s is not a regular file", path)
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, notRegular
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular
	}
	data, err := io.ReadAll(io.LimitReader(f, maxEnvFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxEnvFile {
		return nil, fmt.Errorf("env_file %s is larger than %d bytes", path, maxEnvFile)
	}
	return data, nil
}

// readEnvFiles reads s's env files, in order, into s.Env, then fileEnv
// (the file's env): later files override earlier ones and what the
// program declared, the file's env overrides them all. A file that cannot
// be read (but an optional one that does not exist) or parsed, or a
// variable env could not hold, is an error at its entry.
func (d *decoder) readEnvFiles(s *Service, fileEnv map[string]string) {
	vars := readEnvFiles(s.EnvFiles, func(f EnvFile, msg string) { d.errorf(f.Pos, "%s", msg) })
	maps.Copy(s.Env, vars)
	maps.Copy(s.Env, fileEnv)
}

// readEnvFiles reads files, in order, and returns their variables, later
// files over earlier ones. What is wrong with a file (it cannot be read,
// but for an optional one that does not exist; a line does not parse; a
// variable env could not hold) is told to fail, with the entry, and the
// file's variables are left out. The file and the Go declaration share
// it, each with its own way to place an error.
func readEnvFiles(files []EnvFile, fail func(f EnvFile, msg string)) map[string]string {
	fromFiles := map[string]string{}
	for _, f := range files {
		data, err := readEnvFile(f.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && f.Optional:
			continue
		case errors.Is(err, fs.ErrNotExist):
			fail(f, fmt.Sprintf("env_file %s does not exist (create it, or mark it optional: %s)", f.Path, optionalHint(f)))
			continue
		case err != nil && strings.HasPrefix(err.Error(), "env_file "):
			fail(f, err.Error())
			continue
		case err != nil:
			fail(f, fmt.Sprintf("env_file: %v", err))
			continue
		}
		vars, err := envparse.Parse(strings.NewReader(string(data)))
		if err != nil {
			var pe *envparse.ParseError
			switch {
			case errors.As(err, &pe) && errors.Is(pe.Err, bufio.ErrTooLong):
				// The scanner stops before it counts the long line.
				fail(f, fmt.Sprintf("env_file %s:%d: a line longer than %d KiB", f.Path, pe.Line+1, bufio.MaxScanTokenSize>>10))
			case errors.As(err, &pe) && pe.Line > 0:
				fail(f, fmt.Sprintf("env_file %s:%d: %v (want NAME=value, a value in quotes to hold spaces or #)", f.Path, pe.Line, pe.Err))
			default:
				fail(f, fmt.Sprintf("env_file %s: %v", f.Path, err))
			}
			continue
		}
		bad := false
		for _, name := range slices.Sorted(maps.Keys(vars)) {
			msg := envNameProblem(name)
			if msg == "" {
				msg = envValueProblem(name, vars[name])
			}
			if msg != "" {
				fail(f, fmt.Sprintf("env_file %s:%d: %s", f.Path, lineOf(data, name), msg))
				bad = true
			}
		}
		if bad {
			continue
		}
		maps.Copy(fromFiles, vars)
	}
	return fromFiles
}

// optionalHint says how f would be marked optional where it was given:
// in the file, or declared in Go.
func optionalHint(f EnvFile) string {
	if f.Pos.Declared() {
		return fmt.Sprintf("config.EnvFile{Path: %s, Optional: true}", strconv.Quote(f.Path))
	}
	return fmt.Sprintf("{path: %s, optional: true}", strconv.Quote(f.Path))
}

// ReadEnvFile reads the env file at path as a load of the configuration
// does: a regular file only (a FIFO or a device is refused before it is
// opened), opened without blocking, at most 1 MiB. It does not parse it.
// It is for a program that must tell whether an env file changed since a
// load read it (the manager's watch of the env files).
func ReadEnvFile(path string) ([]byte, error) { return readEnvFile(path) }

// lineOf is the line of data that sets name last (as the parser keeps
// the last), 0 if none seems to.
func lineOf(data []byte, name string) int {
	line := 0
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimSpace(strings.TrimPrefix(l, "export "))
		if k, _, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == name {
			line = i + 1
		}
	}
	return line
}
