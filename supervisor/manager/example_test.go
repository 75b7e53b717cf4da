package manager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/supervisor/control"
	"github.com/gotyledon/gotyledon/supervisor/manager"
)

// A manager run from Go: two workers of a command service, watched through
// the control socket, then stopped by the end of the context. Run returns
// once both have exited.
func Example() {
	dir, err := os.MkdirTemp("", "gotyledon-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	var d config.Declaration
	d.Service("sleeper", config.Command("/bin/sleep", "60"), config.Workers(2))
	d.Control(config.Socket(filepath.Join(dir, "control.sock")))

	m, err := manager.New(manager.Options{Declaration: &d})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		defer stop()
		c := control.NewClient(filepath.Join(dir, "control.sock"))
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			st, err := c.Status(ctx)
			if s := st.Service("sleeper"); err == nil && s.Running == 2 {
				fmt.Printf("sleeper: %d/%d running\n", s.Running, s.Desired)
				return
			}
		}
		fmt.Println("sleeper did not start")
	}()
	fmt.Println("stopped:", m.Run(ctx))
	// Output:
	// sleeper: 2/2 running
	// stopped: <nil>
}
