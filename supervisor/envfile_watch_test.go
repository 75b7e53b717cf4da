package supervisor_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An edit of an env file the configuration uses is applied without a
// signal, as an edit of the file is, however the editor saves it; an
// edit of another file in its directory changes nothing; a required env
// file removed is refused with its error, and nothing stops.
func TestEnvFileEditsAreApplied(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() // not the config file's directory
	envFile := filepath.Join(dir, "gen.env")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(envFile, "A=1\n")
	m := startManager(t, fmt.Sprintf(`
services:
  other:
    run: sleeper
  gen:
    command: ["/bin/sh", "-c", "echo gen $A; exec /bin/sleep 1000"]
    env_file: %s
`, envFile))
	m.waitFor("gen 1", output("gen", "gen 1"))
	other := startsOf(m, "other")
	unchanged := func(e entry) bool { return e.str("msg") == "config file unchanged; nothing to do" }

	// Another file beside the env file: seen, and nothing to do.
	write(filepath.Join(dir, "unused.env"), "A=9\n")
	m.waitFor("nothing to do", unchanged)

	write(envFile, "A=2\n")
	m.waitFor("gen 2", output("gen", "gen 2"))
	if n := len(m.all(func(e entry) bool { return e.is("env file changed; reloading") })); n != 1 {
		t.Errorf("%d reloads for an env file's edit, want 1", n)
	}

	if err := os.Remove(envFile); err != nil {
		t.Fatal(err)
	}
	m.waitFor("the refused reload", func(e entry) bool { return e.str("msg") == "reload failed: the running services are unchanged" })
	if len(m.all(func(e entry) bool { return strings.Contains(e.str("msg"), "env_file "+envFile+" does not exist") })) != 1 {
		t.Error("the refused reload does not say the env file is missing")
	}

	// Saved as an editor saves, by a rename over the file.
	write(envFile+".tmp", "A=3\n")
	if err := os.Rename(envFile+".tmp", envFile); err != nil {
		t.Fatal(err)
	}
	m.waitFor("gen 3", output("gen", "gen 3"))
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "configuration applied" })); n != 2 {
		t.Errorf("%d configurations applied, want 2 (the unused file and the refused reload must not count)", n)
	}
	// gen's worker was replaced by the two good edits, and only by them.
	m.waitN("gen's replaced workers stopped", 2, func(e entry) bool { return e.is("worker stopped", "service", "gen") })
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "worker stopped" })); n != 2 {
		t.Errorf("%d workers stopped, want the 2 the good edits replaced", n)
	}
	if got := startsOf(m, "other"); len(got[0]) != 1 || got[0][0] != other[0][0] {
		t.Errorf("a service without env files was replaced: before %v, after %v", other, got)
	}
}
