package config

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// writeFiles writes name → text into a new directory and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Later files override earlier ones, env overrides them all; a relative
// path is the config file's directory's; a missing optional file (either
// form) is skipped.
func TestEnvFilesOverrideOrder(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"base.env":  "# defaults\nX=1\nY=1\nexport Q='a b # c'\n",
		"local.env": "Y=2\nZ=2\n",
	})
	src := `services:
  web:
    command: [/bin/true]
    env: {Z: "3"}
    env_file: [` + filepath.Join(dir, "base.env") + `, local.env, {path: missing.env, optional: true}, -also-missing.env]
`
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Service("web")
	want := map[string]string{"X": "1", "Y": "2", "Z": "3", "Q": "a b # c"}
	if !maps.Equal(s.Env, want) {
		t.Errorf("env %v, want %v", s.Env, want)
	}
	if len(s.EnvFiles) != 4 || s.EnvFiles[1].Path != filepath.Join(dir, "local.env") || !s.EnvFiles[2].Optional || !s.EnvFiles[3].Optional ||
		s.EnvFiles[3].Path != filepath.Join(dir, "also-missing.env") {
		t.Errorf("env files %+v", s.EnvFiles)
	}
	// One path alone is a list of one.
	one := strings.Replace(src, "env_file: [", "env_file: local.env\n    x: [", 1)
	one = one[:strings.Index(one, "\n    x: [")] + "\n"
	cfg, err = Parse(filepath.Join(dir, "c.yaml"), []byte(one), nil)
	if err != nil || cfg.Service("web").Env["Y"] != "2" || cfg.Service("web").Env["Z"] != "3" {
		t.Errorf("env_file: local.env: %v, env %v", err, cfg.Service("web").Env)
	}
}

// What is wrong with an env file is said at its entry, with the file's
// own line where it is in the file.
func TestEnvFileErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"bad.env":      "A=1\nnot a variable\n",
		"reserved.env": "NOTIFY_SOCKET=/x\n",
		"long.env":     "A=1\nB=" + strings.Repeat("x", 70_000) + "\n",
	})
	if err := os.Mkdir(filepath.Join(dir, "a-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A FIFO is refused before it is opened: opening it would block the
	// load until something writes to it.
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.env"), 0o644); err != nil {
		t.Fatal(err)
	}
	head := "services:\n  web:\n    command: [/bin/true]\n    env_file: "
	for _, tt := range []struct{ value, want string }{
		{"[missing.env]", `c.yaml:4:16: env_file ` + dir + `/missing.env does not exist (create it, or mark it optional: {path: "` + dir + `/missing.env", optional: true})`},
		{"[bad.env]", `c.yaml:4:16: env_file ` + dir + `/bad.env:2: missing = (want NAME=value, a value in quotes to hold spaces or #)`},
		{"reserved.env", `c.yaml:4:15: env_file ` + dir + `/reserved.env:1: env name "NOTIFY_SOCKET" is reserved`},
		{"a-dir", `c.yaml:4:15: env_file ` + dir + `/a-dir is not a regular file`},
		{"fifo.env", `c.yaml:4:15: env_file ` + dir + `/fifo.env is not a regular file`},
		{"long.env", `c.yaml:4:15: env_file ` + dir + `/long.env:2: a line longer than 64 KiB`},
		{"/dev/null", `c.yaml:4:15: env_file /dev/null is not a regular file`},
		{"3", `c.yaml:4:15: env_file must be a path or a list of them, each a path or {path: P, optional: true} (got 3)`},
		{"[{optional: true}]", `c.yaml:4:16: env_file entry has no path (write {path: .env, optional: true})`},
		{"[{path: x.env, optional: yes}]", `c.yaml:4:40: optional must be true or false (got "yes")`},
		{"[{path: x.env, requried: false}]", `c.yaml:4:30: unknown key "requried" in env_file (known keys: optional, path)`},
		{`["~/x.env"]`, `c.yaml:4:16: env_file "~/x.env" starts with "~" (gotyledon does not expand "~"; write the full path)`},
	} {
		_, err := Parse(filepath.Join(dir, "c.yaml"), []byte(head+tt.value+"\n"), nil)
		if err == nil || !strings.HasPrefix(err.Error(), filepath.Join(dir, tt.want)) {
			t.Errorf("env_file: %s:\n got %v\nwant %s...", tt.value, err, tt.want)
		}
	}
}

// What the file sets wins over what the program declares: its env files
// over the declared env, its env over both.
func TestEnvFilesOverADeclaration(t *testing.T) {
	dir := writeFiles(t, map[string]string{"app.env": "LOG_LEVEL=debug\nPORT=1\n"})
	var d Declaration
	d.Service("web", Command("/bin/true"), Env(map[string]string{"LOG_LEVEL": "info", "PORT": "80", "KEEP": "k"}))
	src := "services:\n  web:\n    env: {PORT: \"2\"}\n    env_file: app.env\n"
	cfg, err := ParseOver(&d, filepath.Join(dir, "c.yaml"), []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Service("web").Env, map[string]string{"LOG_LEVEL": "debug", "PORT": "2", "KEEP": "k"}; !maps.Equal(got, want) {
		t.Errorf("env %v, want %v", got, want)
	}
}
