package program_test

// The doc test: every command the user docs show is run, by this test or by
// .ci/run, so that the docs cannot drift from the program.
//
// It reads the fenced blocks of every user doc (userDocs below; a Markdown
// file that is neither a user doc nor listed in notUserDocs fails the
// test). Every ```sh block must say, in its info string (GitHub shows
// only the first word, sh), how its commands are checked:
//
//	```sh test             this test runs each command, in the doc's order (see below)
//	```sh test:background  this test starts the command (one at a time) and
//	                       leaves it running, as in a terminal of its own
//	```sh ci               each command line is a line .ci/run executes,
//	                       word for word; a <placeholder> in the doc matches
//	                       any one word of .ci/run's line
//	```sh bench            a benchmark's command, for its figures (they take
//	                       minutes to an hour): of go test -bench, this test
//	                       lists the benchmarks (go test -list) and each part
//	                       of the -bench pattern must name one; any other runs
//	                       shortened (benchSmoke: a 3 s chaos run, 2000 items)
//	                       and must exit 0. .ci/run runs a benchmark of each
//	                       kind once.
//	```sh ci:systemd-user  commands that need systemd as a service manager
//	                       (systemctl, journalctl -u ...): each line must be a
//	                       line of .ci/systemd-doc-commands, exactly as in the
//	                       doc. .ci/systemd-user runs that file's lines, in its
//	                       order (which may hold more, to check the unit),
//	                       under a real systemd user manager, with --user added
//	                       to systemctl and --user-unit in place of
//	                       journalctl's -u.
//
// Shell blocks under another name (bash, shell, console) fail: write them
// as ```sh so that they are checked.
//
// What a `test` or `test:background` block shows is checked too. Blocks
// that follow it, up to the next ```sh block, may be:
//
//	```text output  what the block's commands print (stdout and stderr, in
//	                order), line by line; a line "..." stands for any lines.
//	                A block with shown output is run again until its output
//	                matches (up to outputWait), so it must be safe to repeat.
//	                A command that exits non-zero fails the test unless its
//	                block shows its output. For a test:background block, the
//	                lines are those of the command's log, as for `log`.
//	```text log     lines the background command logs after the block ran,
//	                in any order (other lines may come between: logs
//	                interleave), waited for up to logWait.
//
// and, anywhere:
//
//	```text ctrl-c      the background command gets SIGINT in its process
//	                    group, as Ctrl-C in its terminal would send it; these
//	                    lines must appear in its log and it must exit 0 (or
//	                    1 if it is a go run: go run exits 1 when interrupted).
//	```yaml file:NAME   the block is written to NAME in the session's
//	                    directory, as the reader is told to save it.
//	```go excerpt:PATH  the block's lines are lines of PATH, in order, without
//	                    gaps except where a line "..." stands.
//
// A doc with test blocks is one session: its commands run with bash -c
// (bash, not sh, because it waits for a child that handles Ctrl-C and
// exits as the child did, as an interactive shell lets it), one line at a
// time, in a fresh copy of the repository (as from a clone's
// top directory), with gotyledon and gotyledon-top binaries built from
// ./cmd first on PATH (and GOBIN there), and RUNTIME_DIRECTORY set to a directory of the session's own,
// so that the sockets of parallel sessions (and of a manager already on
// the machine) never meet. /run/gotyledon in a command stands for that
// directory. Placeholders in test commands are read from the running
// background command's log: <manager-pid> (the manager's pid) and
// <SERVICE-pid> (the pid of the newest worker 0 of SERVICE). When the
// session ends, a background command still running gets SIGINT and must
// exit 0.
//
// Shown output is compared after normalising both sides: runs of blanks
// become one space; timestamps, durations, decimal numbers, whole numbers
// of three digits or more (pids, sizes) and absolute paths match any of
// their kind; in the message of a log line (TIME LEVEL MESSAGE {fields})
// every number matches any number, since which worker prints which item
// depends on timing. A "..." inside a line stands for any text.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// userDocs are the docs whose commands must be checked.
var userDocs = []string{
	"README.md",
	"config/README.md",
	"deploy/README.md",
	"supervisor/README.md",
	"service/README.md",
	"ipc/README.md",
	"ipc/python/README.md",
	"ipc/PROTOCOL.md",
	"supervisor/BENCH.md",
	"ipc/BENCH.md",
}

// notUserDocs are the other Markdown files, and why their commands are
// not checked.
var notUserDocs = map[string]string{
	"CHANGELOG.md": "the project's history: no commands to type",
}

const (
	commandTimeout = 3 * time.Minute // one foreground command (go run may compile)
	startWait      = 3 * time.Minute // a background command's first lines (go run compiles)
	outputWait     = 30 * time.Second
	logWait        = 30 * time.Second
	systemdList    = ".ci/systemd-doc-commands"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the repository's root is not at %s: %v", root, err)
	}
	return root
}

// block is one fenced block of a doc.
type block struct {
	doc  string
	line int    // of the opening fence, 1-based
	lang string // first word of the info string
	mark string // second word, if any
	body []string
}

func (b block) where() string { return fmt.Sprintf("%s:%d", b.doc, b.line) }

var fenceRE = regexp.MustCompile("^( {0,3})(```+|~~~+)(.*)$")

// parseBlocks returns the fenced blocks of the Markdown file path (named
// doc in messages).
func parseBlocks(doc string, data []byte) ([]block, error) {
	var blocks []block
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, fence, info := len(m[1]), m[2], strings.Fields(m[3])
		b := block{doc: doc, line: i + 1}
		if len(info) > 0 {
			b.lang = info[0]
		}
		if len(info) > 1 {
			b.mark = info[1]
		}
		if len(info) > 2 {
			return nil, fmt.Errorf("%s: more than two words after the fence: %q", b.where(), m[3])
		}
		closed := false
		for i++; i < len(lines); i++ {
			l := lines[i]
			c := strings.TrimSpace(l)
			if len(l)-len(strings.TrimLeft(l, " ")) <= 3 && len(c) >= len(fence) && strings.Trim(c, fence[:1]) == "" {
				closed = true
				break
			}
			// Content lines lose the fence's indentation, as Markdown does.
			for k := 0; k < indent && strings.HasPrefix(l, " "); k++ {
				l = l[1:]
			}
			b.body = append(b.body, l)
		}
		if !closed {
			return nil, fmt.Errorf("%s: the block is never closed", b.where())
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// commands are the command lines of a shell block: comments and blank
// lines dropped, lines ending in \ joined to the next.
func commands(b block) []string {
	var out []string
	cur := ""
	for _, l := range b.body {
		if cur == "" && (strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#")) {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cur += s
			continue
		}
		out = append(out, strings.TrimSpace(cur+l))
		cur = ""
	}
	if cur != "" {
		out = append(out, strings.TrimSpace(cur))
	}
	return out
}

// howToMark is the end of every message about an unchecked block.
const howToMark = "mark it ```sh test (this test runs it), ```sh test:background (a long-running command), " +
	"```sh ci (.ci/run runs each line word for word) or ```sh ci:systemd-user (listed in " + systemdList +
	"), ```sh bench (a benchmark's command, run shortened); see the comment at the top of supervisor/program/docs_test.go"

func TestDocsAreListed(t *testing.T) {
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".md") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if !slices.Contains(userDocs, rel) && notUserDocs[rel] == "" {
			t.Errorf("%s is neither in userDocs nor in notUserDocs of supervisor/program/docs_test.go: add it to one", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range userDocs {
		if _, err := os.Stat(filepath.Join(root, d)); err != nil {
			t.Errorf("user doc %s: %v", d, err)
		}
	}
}

// ciLines are the lines .ci/run executes: all but blank lines and comments.
func ciLines(t *testing.T, root string) []string {
	data, err := os.ReadFile(filepath.Join(root, ".ci/run"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

var placeholderRE = regexp.MustCompile(`<[A-Za-z][A-Za-z0-9_.-]*>`)

// ciPattern matches a whole line of .ci/run against a doc's command, its
// <placeholders> standing for any one word.
func ciPattern(cmd string) *regexp.Regexp {
	var sb strings.Builder
	last := 0
	for _, loc := range placeholderRE.FindAllStringIndex(cmd, -1) {
		sb.WriteString(regexp.QuoteMeta(cmd[last:loc[0]]))
		sb.WriteString(`\S+`)
		last = loc[1]
	}
	sb.WriteString(regexp.QuoteMeta(cmd[last:]))
	return regexp.MustCompile("^" + sb.String() + "$")
}

// TestDocCommands checks every shell block of every user doc, and runs
// the sessions of those that have test blocks.
func TestDocCommands(t *testing.T) {
	root := repoRoot(t)
	ci := ciLines(t, root)
	var systemd []string // ci:systemd-user lines, in doc order
	var benches []block  // bench blocks, in doc order
	sessions := map[string][]block{}
	for _, doc := range userDocs {
		data, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Errorf("%s: %v", doc, err)
			continue
		}
		blocks, err := parseBlocks(doc, data)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, b := range blocks {
			switch {
			case b.lang == "bash" || b.lang == "shell" || b.lang == "console" || b.lang == "zsh" || b.lang == "shell-session":
				t.Errorf("%s: a ```%s block is not checked: write it as ```sh and %s", b.where(), b.lang, howToMark)
			case b.lang == "sh":
				switch b.mark {
				case "ci":
					for _, c := range commands(b) {
						re := ciPattern(c)
						if !slices.ContainsFunc(ci, re.MatchString) {
							t.Errorf("%s: %q is marked ci, but .ci/run has no such line: add it to .ci/run, word for word (a <placeholder> matches any one word)", b.where(), c)
						}
					}
				case "ci:systemd-user":
					for _, c := range commands(b) {
						if !slices.Contains(systemd, c) {
							systemd = append(systemd, c)
						}
					}
				case "bench":
					benches = append(benches, b)
				case "test", "test:background":
					if b.mark == "test:background" && len(commands(b)) != 1 {
						t.Errorf("%s: a test:background block holds exactly one command", b.where())
					}
				case "":
					t.Errorf("%s: this ```sh block is neither run by the doc test nor by CI: %s", b.where(), howToMark)
				default:
					t.Errorf("%s: unknown mark %q on a ```sh block: %s", b.where(), b.mark, howToMark)
				}
			case strings.HasPrefix(b.mark, "excerpt:"):
				checkExcerpt(t, root, b)
			}
		}
		if slices.ContainsFunc(blocks, func(b block) bool { return b.lang == "sh" && strings.HasPrefix(b.mark, "test") }) ||
			slices.ContainsFunc(blocks, func(b block) bool { return strings.HasPrefix(b.mark, "file:") }) {
			sessions[doc] = blocks
		}
	}
	t.Run("systemd-doc-commands", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(root, systemdList))
		if err != nil {
			t.Fatalf("%v: it lists the docs' ```sh ci:systemd-user commands, one per line", err)
		}
		listed := map[string]bool{}
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				listed[l] = true
			}
		}
		for _, l := range systemd {
			if !listed[l] {
				t.Errorf("%s does not run %q, which the docs show in a ```sh ci:systemd-user block: add it where it succeeds", systemdList, l)
			}
		}
	})
	if t.Failed() {
		return
	}
	bin := buildGotyledon(t, root)
	t.Run("bench", func(t *testing.T) {
		t.Parallel()
		for _, b := range benches {
			for _, c := range commands(b) {
				runBenchSmoke(t, root, b, c)
			}
		}
	})
	for _, doc := range userDocs {
		blocks, ok := sessions[doc]
		if !ok {
			continue
		}
		t.Run(strings.ReplaceAll(doc, "/", "_"), func(t *testing.T) {
			t.Parallel()
			runSession(t, root, bin, doc, blocks)
		})
	}
}

func checkExcerpt(t *testing.T, root string, b block) {
	t.Helper()
	path := strings.TrimPrefix(b.mark, "excerpt:")
	data, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Errorf("%s: excerpt of %s: %v", b.where(), path, err)
		return
	}
	var file []string
	for _, l := range strings.Split(string(data), "\n") {
		file = append(file, strings.TrimRight(l, " \t"))
	}
	var shown []string
	for _, l := range b.body {
		shown = append(shown, strings.TrimRight(l, " \t"))
	}
	if !matchSequence(shown, file, func(s, a string) bool { return s == a }, false) {
		t.Errorf("%s: this block is marked excerpt:%s but its lines are not lines of that file, in order (\"...\" for gaps): update the block", b.where(), path)
	}
}

// matchSequence reports whether actual is shown, where a shown line "..."
// stands for any number of lines. With anchored false, shown may also
// start and end anywhere in actual.
func matchSequence(shown, actual []string, eq func(s, a string) bool, anchored bool) bool {
	if !anchored {
		shown = append(append([]string{"..."}, shown...), "...")
	}
	var match func(i, j int) bool
	match = func(i, j int) bool {
		if i == len(shown) {
			return j == len(actual)
		}
		if strings.TrimSpace(shown[i]) == "..." {
			for k := j; k <= len(actual); k++ {
				if match(i+1, k) {
					return true
				}
			}
			return false
		}
		return j < len(actual) && eq(shown[i], actual[j]) && match(i+1, j+1)
	}
	return match(0, 0)
}

// buildGotyledon builds ./cmd/gotyledon and ./cmd/gotyledon-top (which
// `gotyledon top` runs) into a directory of the test's own, for the
// sessions' PATH; it is their GOBIN too, for a doc's `go install`.
func buildGotyledon(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"gotyledon", "gotyledon-top"} {
		cmd := exec.Command(goTool(), "build", "-o", filepath.Join(dir, name), "./cmd/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
		}
	}
	return dir
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// step is a test block with what the doc shows of it, or a file or ctrl-c
// block.
type step struct {
	b      block
	output *block
	log    *block
}

func steps(blocks []block) ([]step, error) {
	var out []step
	cur := -1 // the test step that output and log blocks belong to
	for _, b := range blocks {
		switch {
		case b.lang == "sh" && (b.mark == "test" || b.mark == "test:background"):
			out = append(out, step{b: b})
			cur = len(out) - 1
		case b.lang == "sh":
			cur = -1
		case b.mark == "output" || b.mark == "log":
			if cur < 0 {
				return nil, fmt.Errorf("%s: a %s block shows what a ```sh test block printed, but none comes before it", b.where(), b.mark)
			}
			s := &out[cur]
			if b.mark == "output" && s.output == nil && s.log == nil {
				s.output = &b
			} else if b.mark == "log" && s.log == nil && s.b.mark == "test" {
				s.log = &b
			} else {
				return nil, fmt.Errorf("%s: a %s block here is one too many for the ```sh block of line %d (one output, then one log, each at most; a background block's log is its output)", b.where(), b.mark, s.b.line)
			}
		case b.mark == "ctrl-c" || strings.HasPrefix(b.mark, "file:"):
			out = append(out, step{b: b})
			cur = -1
		}
	}
	return out, nil
}

// session runs one doc's test blocks.
type session struct {
	t       *testing.T
	dir, rt string
	env     []string
	bg      *background
}

// background is a test:background command, running in its own process
// group.
type background struct {
	b    block
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

func runSession(t *testing.T, root, bin, doc string, blocks []block) {
	steps, err := steps(blocks)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, dir: copyRepo(t, root)}
	// A short directory: socket paths have at most 107 bytes.
	rt, err := os.MkdirTemp("", "gtydoc-rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	s.rt = rt
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "GOTYLEDON_"), name == "NOTIFY_SOCKET", name == "JOURNAL_STREAM",
			strings.HasPrefix(name, "LISTEN_"), strings.HasPrefix(name, "WATCHDOG_"),
			name == "RUNTIME_DIRECTORY", name == "XDG_RUNTIME_DIR", name == "PATH", name == "GOBIN":
			continue
		}
		s.env = append(s.env, kv)
	}
	s.env = append(s.env, "RUNTIME_DIRECTORY="+rt, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "GOBIN="+bin)
	t.Cleanup(s.killBackground)

	for _, st := range steps {
		switch {
		case strings.HasPrefix(st.b.mark, "file:"):
			name := strings.TrimPrefix(st.b.mark, "file:")
			path := filepath.Join(s.dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(strings.Join(st.b.body, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		case st.b.mark == "ctrl-c":
			s.interrupt(st.b)
		case st.b.mark == "test:background":
			s.start(st)
		default:
			s.run(st)
		}
		if t.Failed() {
			return
		}
	}
	if s.bg != nil {
		s.interrupt(block{doc: doc, line: s.bg.b.line, mark: "ctrl-c"})
	}
}

// copyRepo copies the repository's files (not .git) to a new directory:
// the session's clone.
func copyRepo(t *testing.T, root string) string {
	dir := t.TempDir()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		if !d.Type().IsRegular() || rel == "gotyledon" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

var (
	managerPIDRE = regexp.MustCompile(`manager started\s+\{"pid": (\d+)`)
	workerPIDRE  = regexp.MustCompile(`worker started\s+\{"service": "([^"]+)", "worker": 0, "pid": (\d+)`)
)

// expand replaces /run/gotyledon by the session's runtime directory, and
// the placeholders by what the background command's log says.
func (s *session) expand(b block, cmd string) (string, error) {
	cmd = strings.ReplaceAll(cmd, "/run/gotyledon", s.rt)
	var err error
	cmd = placeholderRE.ReplaceAllStringFunc(cmd, func(p string) string {
		name := p[1 : len(p)-1]
		var log string
		if s.bg != nil {
			log = s.bg.log.String()
		}
		if name == "manager-pid" {
			if m := managerPIDRE.FindAllStringSubmatch(log, -1); m != nil {
				return m[len(m)-1][1]
			}
		} else if svc, ok := strings.CutSuffix(name, "-pid"); ok {
			pid := ""
			for _, m := range workerPIDRE.FindAllStringSubmatch(log, -1) {
				if m[1] == svc {
					pid = m[2]
				}
			}
			if pid != "" {
				return pid
			}
		} else {
			err = errors.Join(err, fmt.Errorf("%s: unknown placeholder %s in %q (known: <manager-pid>, <SERVICE-pid>)", b.where(), p, cmd))
			return p
		}
		err = errors.Join(err, fmt.Errorf("%s: %s in %q: the running background command's log does not say it", b.where(), p, cmd))
		return p
	})
	return cmd, err
}

func (s *session) command(ctx context.Context, line string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-c", line)
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a test block's commands, then checks what the doc shows.
func (s *session) run(st step) {
	t := s.t
	logFrom := 0
	if s.bg != nil {
		logFrom = s.bg.log.Len()
	}
	once := func() (string, error) {
		var out syncBuffer
		for _, c := range commands(st.b) {
			line, err := s.expand(st.b, c)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			cmd := s.command(ctx, line)
			cmd.Stdout, cmd.Stderr = &out, &out
			err = cmd.Run()
			cancel()
			if err != nil {
				return out.String(), fmt.Errorf("%q: %v", line, err)
			}
		}
		return out.String(), nil
	}
	out, err := once()
	if st.output == nil {
		if err != nil {
			t.Fatalf("%s: %v; output:\n%s", st.b.where(), err, out)
		}
	} else {
		shown := normalizeAll(st.output.body)
		deadline := time.Now().Add(outputWait)
		for !matchSequence(shown, normalizeAll(splitLines(out)), globEqual, true) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the output shown at %s does not match what the commands print (after %v of retries; last error: %v).\nShown:\n%s\nPrinted:\n%s",
					st.b.where(), st.output.where(), outputWait, err, strings.Join(st.output.body, "\n"), out)
			}
			time.Sleep(200 * time.Millisecond)
			out, err = once()
		}
		// With -v, what to paste when the program's output changes.
		t.Logf("%s printed:\n%s", st.b.where(), out)
	}
	if st.log != nil {
		if s.bg == nil {
			t.Fatalf("%s: a log block, but no background command is running", st.log.where())
		}
		s.waitLog(*st.log, logFrom, logWait)
	}
}

// start starts a test:background command and waits for the lines its
// output block shows.
func (s *session) start(st step) {
	t := s.t
	if s.bg != nil {
		t.Fatalf("%s: a background command is still running (from line %d): stop it first with a ```text ctrl-c block", st.b.where(), s.bg.b.line)
	}
	if st.output == nil {
		t.Fatalf("%s: a test:background block needs an output block after it: the log lines that say it is up", st.b.where())
	}
	line, err := s.expand(st.b, commands(st.b)[0])
	if err != nil {
		t.Fatal(err)
	}
	bg := &background{b: st.b, log: &syncBuffer{}, done: make(chan struct{})}
	bg.cmd = s.command(context.Background(), line)
	bg.cmd.Stdout, bg.cmd.Stderr = bg.log, bg.log
	if err := bg.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", st.b.where(), err)
	}
	go func() { bg.err = bg.cmd.Wait(); close(bg.done) }()
	s.bg = bg
	s.waitLog(*st.output, 0, startWait)
}

// waitLog waits until every line of b (but "...") matches a line of its
// own in the background command's log from offset from.
func (s *session) waitLog(b block, from int, wait time.Duration) {
	t := s.t
	shown := normalizeAll(b.body)
	deadline := time.Now().Add(wait)
	for {
		log := s.bg.log.String()
		missing := unmatched(shown, normalizeAll(splitLines(log[from:])))
		if len(missing) == 0 {
			return
		}
		select {
		case <-s.bg.done:
			// Read what it wrote last, once more.
			if missing = unmatched(shown, normalizeAll(splitLines(s.bg.log.String()[from:]))); len(missing) == 0 {
				return
			}
			t.Fatalf("%s: the background command of line %d ended (%v) before logging the lines shown at %s; missing:\n%s\nlog:\n%s",
				b.where(), s.bg.b.line, s.bg.err, b.where(), strings.Join(missing, "\n"), log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: within %v, the background command of line %d did not log these lines shown here (normalised):\n%s\nlog:\n%s",
				b.where(), wait, s.bg.b.line, strings.Join(missing, "\n"), log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unmatched returns the shown lines that no line of actual matches, each
// actual line matching at most one shown line.
func unmatched(shown, actual []string) []string {
	used := make([]bool, len(actual))
	var missing []string
	for _, sl := range shown {
		if strings.TrimSpace(sl) == "..." || strings.TrimSpace(sl) == "" {
			continue
		}
		found := false
		for i, al := range actual {
			if !used[i] && globEqual(sl, al) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			missing = append(missing, sl)
		}
	}
	return missing
}

// interrupt sends SIGINT to the background command's process group, as
// Ctrl-C does, and waits for the lines b shows and for its exit 0.
func (s *session) interrupt(b block) {
	t := s.t
	if s.bg == nil {
		t.Fatalf("%s: ctrl-c, but no background command is running", b.where())
	}
	from := s.bg.log.Len()
	if err := syscall.Kill(-s.bg.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatalf("%s: SIGINT: %v", b.where(), err)
	}
	if len(b.body) > 0 {
		s.waitLog(b, from, logWait)
	}
	select {
	case <-s.bg.done:
	case <-time.After(logWait):
		t.Fatalf("%s: the background command of line %d is still running %v after SIGINT; log:\n%s", b.where(), s.bg.b.line, logWait, s.bg.log.String())
	}
	if err := s.bg.err; err != nil && !goRunInterrupted(s.bg, err) {
		t.Fatalf("%s: after SIGINT the background command of line %d ended with %v, not exit 0; log:\n%s", b.where(), s.bg.b.line, s.bg.err, s.bg.log.String())
	}
	s.bg = nil
}

// goRunInterrupted reports whether err is go run's exit status 1 after an
// interrupt: go run exits 1 whenever it was interrupted, however the
// program it ran ended (the program's exit is checked by the log lines the
// doc shows).
func goRunInterrupted(bg *background, err error) bool {
	var ee *exec.ExitError
	return strings.HasPrefix(commands(bg.b)[0], "go run ") && errors.As(err, &ee) && ee.ExitCode() == 1
}

// killBackground ends a background command a failed session left.
func (s *session) killBackground() {
	if s.bg == nil {
		return
	}
	_ = syscall.Kill(-s.bg.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-s.bg.done:
	case <-time.After(10 * time.Second):
	}
}

func splitLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

var (
	timeRE  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?`)
	pathRE  = regexp.MustCompile(`(^|[\s"'=(\[,:])/[^\s"',)\]]+`)
	durRE   = regexp.MustCompile(`\b(\d+(\.\d+)?(ns|µs|us|ms|s|m|h))+\b`)
	numRE   = regexp.MustCompile(`\d+\.\d+(e[+-]\d+)?|\d{3,}`)
	digitRE = regexp.MustCompile(`\d+`)
	levelRE = regexp.MustCompile(`^<time>\t(DEBUG|INFO|WARN|ERROR|DPANIC|PANIC|FATAL)\t`)
	blankRE = regexp.MustCompile(`[ \t]+`)
)

// normalize makes a line of shown or actual output comparable (see the
// comment at the top).
func normalize(l string) string {
	l = timeRE.ReplaceAllString(l, "<time>")
	if levelRE.MatchString(l) {
		// TIME LEVEL [LOGGER] MESSAGE {FIELDS}: numbers in the message
		// match any number.
		msg, fields := l, ""
		if i := strings.LastIndex(l, "\t{"); i >= 0 {
			msg, fields = l[:i], l[i:]
		}
		l = digitRE.ReplaceAllString(msg, "<num>") + fields
	}
	l = pathRE.ReplaceAllString(l, "$1<path>")
	l = durRE.ReplaceAllString(l, "<dur>")
	l = numRE.ReplaceAllString(l, "<num>")
	return strings.TrimSpace(blankRE.ReplaceAllString(l, " "))
}

func normalizeAll(lines []string) []string {
	// A block's trailing blank lines are not output.
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = normalize(l)
	}
	return out
}

// globEqual compares a normalised shown line with a normalised actual one;
// "..." in the shown line stands for any text.
func globEqual(shown, actual string) bool {
	if shown == "..." {
		return true
	}
	parts := strings.Split(shown, "...")
	if len(parts) == 1 {
		return shown == actual
	}
	if !strings.HasPrefix(actual, parts[0]) {
		return false
	}
	rest := actual[len(parts[0]):]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return strings.HasSuffix(rest, parts[len(parts)-1])
}

func TestNormalize(t *testing.T) {
	for _, c := range []struct{ shown, actual string }{
		{"2026-12-05T10:32:17.951Z\tINFO\tqueue broker listening\t{\"socket\": \"/run/gotyledon/queue.sock\", \"queues\": 1}",
			"2026-12-06T11:00:00.000Z\tINFO\tqueue broker listening\t{\"socket\": \"/tmp/gtydoc-rt123/queue.sock\", \"queues\": 1}"},
		{"2026-12-05T10:32:18.125Z\tINFO\tI am worker #0, PID:7227 and I hereby print 0\t{\"service\": \"printer\", \"worker\": 0, \"pid\": 7227, \"stream\": \"stdout\"}",
			"2026-12-05T10:32:19.125Z\tINFO\tI am worker #1, PID:31522 and I hereby print 12\t{\"service\": \"printer\", \"worker\": 0, \"pid\": 31522, \"stream\": \"stdout\"}"},
		{"printer   5/5 (file: 2)  0   running  7336  5.8s    1         killed by SIGKILL, 5.8s ago  -",
			"printer 5/5 (file: 2) 0 running 12345 950ms 1 killed by SIGKILL, 1m2s ago -"},
		{"jobs   0      0          10000     1.1    1.1      0", "jobs 0 0 10000 0.9 1.0 0"},
		{`  "pid": 9162, ...`, `  "pid": 123, "x": 1`},
	} {
		if !globEqual(normalize(c.shown), normalize(c.actual)) {
			t.Errorf("%q and %q should match:\n%q\n%q", c.shown, c.actual, normalize(c.shown), normalize(c.actual))
		}
	}
	for _, c := range []struct{ shown, actual string }{
		{"2026-12-05T10:32:18.125Z\tINFO\tworker started\t{\"service\": \"printer\", \"worker\": 0, \"pid\": 7227, \"restarts\": 1}",
			"2026-12-05T10:32:18.125Z\tINFO\tworker started\t{\"service\": \"printer\", \"worker\": 1, \"pid\": 7227, \"restarts\": 1}"},
		{"printer   5/5 (file: 2)", "printer 2/2"},
		{"printer: 3 workers", "printer: 5 workers"},
	} {
		if globEqual(normalize(c.shown), normalize(c.actual)) {
			t.Errorf("%q and %q should not match", c.shown, c.actual)
		}
	}
	if !matchSequence([]string{"a", "...", "d"}, []string{"a", "b", "c", "d"}, globEqual, true) ||
		matchSequence([]string{"a", "d"}, []string{"a", "b", "d"}, globEqual, true) ||
		!matchSequence([]string{"b"}, []string{"a", "b", "c"}, globEqual, false) {
		t.Error("matchSequence")
	}
}

// benchSmoke shortens a benchmark's command that is not go test -bench:
// -duration (the chaos run) is 3 s and -keep goes, --n N (the Python
// benchmarks) is 2000 items and --runs N one run, -count N runs once, and
// a "| tee FILE" is dropped.
func benchSmoke(cmd string) string {
	for _, r := range []struct{ re, to string }{
		{`\s*\|\s*tee\s+\S+$`, ``},
		{`-count[ =]\d+`, `-count 1`},
		{`-duration[ =]\S+`, `-duration 3s`},
		{`\s-keep\b`, ``},
		{`--n[ =]\d+`, `--n 2000`},
		{`--runs[ =]\d+`, `--runs 1`},
	} {
		cmd = regexp.MustCompile(r.re).ReplaceAllString(cmd, r.to)
	}
	return cmd
}

var benchFlagRE = regexp.MustCompile(`\s-bench[ =]('([^']*)'|"([^"]*)"|(\S+))`)

// benchList turns a go test -bench command into the go test -list command
// that lists its top-level benchmarks, and returns the alternatives of its
// top-level pattern, each of which must name at least one: running the
// benchmarks themselves takes minutes (a thousand workers), and what can
// drift is their names.
func benchList(cmd string) (list string, alternatives []string, ok bool) {
	m := benchFlagRE.FindStringSubmatch(cmd)
	if m == nil || !strings.HasPrefix(cmd, "go test ") {
		return "", nil, false
	}
	top := topLevel(m[2] + m[3] + m[4])
	pkgs := regexp.MustCompile(`\s(\./\S*)`).FindAllStringSubmatch(cmd, -1)
	var dirs []string
	for _, p := range pkgs {
		dirs = append(dirs, p[1])
	}
	return "go test -run '^$' -list '" + top + "' " + strings.Join(dirs, " "), strings.Split(top, "|"), true
}

// topLevel is the part of a -bench pattern that names top-level
// benchmarks: up to its first slash outside brackets, as go test splits it.
func topLevel(pattern string) string {
	depth := 0
	for i, c := range pattern {
		switch c {
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case '/':
			if depth == 0 {
				return pattern[:i]
			}
		}
	}
	return pattern
}

// runBenchSmoke checks a bench block's command, from the repository's top
// directory: a go test -bench command's benchmarks must exist; any other
// command must run, shortened, and exit 0.
func runBenchSmoke(t *testing.T, root string, b block, cmd string) {
	t.Helper()
	short, alternatives, isList := benchList(cmd)
	if !isList {
		short = benchSmoke(cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, "bash", "-c", short)
	c.Dir = root
	c.Env = append(os.Environ(), "PATH="+filepath.Dir(goTool())+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := c.CombinedOutput()
	if err != nil {
		t.Errorf("%s: %q, checked as %q: %v\n%s", b.where(), cmd, short, err, out)
		return
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			names = append(names, l)
		}
	}
	for _, alt := range alternatives {
		re, err := regexp.Compile(alt)
		if err != nil {
			t.Errorf("%s: -bench pattern %q: %v", b.where(), alt, err)
			continue
		}
		if !slices.ContainsFunc(names, re.MatchString) {
			t.Errorf("%s: %q: no benchmark matches %q (the package has %v)", b.where(), cmd, alt, names)
		}
	}
}

func TestBenchSmoke(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"go run ./cmd/chaos -duration 1h -seed 2026 -keep", "go run ./cmd/chaos -duration 3s -seed 2026"},
		{`GOTYLEDON_PY_BENCH="--n 100000 --runs 5" go test -count=1 -run PythonBench -v ./ipc/`, `GOTYLEDON_PY_BENCH="--n 2000 --runs 1" go test -count 1 -run PythonBench -v ./ipc/`},
		{"python3 ipc/python/manager_queue_bench.py --n 100000 --runs 5 --maxsize 0", "python3 ipc/python/manager_queue_bench.py --n 2000 --runs 1 --maxsize 0"},
	} {
		if got := benchSmoke(tc.in); got != tc.want {
			t.Errorf("benchSmoke(%q)\n = %q\nwant %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in, list string
		alts     []string
	}{
		{"go test -run '^$' -bench 'Respawn|StartWorkers/n=(10|100)$' -count 5 -timeout 30m ./supervisor/ | tee bench-small.txt",
			"go test -run '^$' -list 'Respawn|StartWorkers' ./supervisor/", []string{"Respawn", "StartWorkers"}},
		{"go test -run '^$' -bench . -count 5 ./ipc/", "go test -run '^$' -list '.' ./ipc/", []string{"."}},
	} {
		list, alts, ok := benchList(tc.in)
		if !ok || list != tc.list || !slices.Equal(alts, tc.alts) {
			t.Errorf("benchList(%q) = %q %q %v, want %q %q", tc.in, list, alts, ok, tc.list, tc.alts)
		}
	}
}
