package program_test

import (
	"context"
	"fmt"
	"os"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

// A program that embeds gotyledon declares its services, as a cotyledon
// program adds them to its ServiceManager, and hands its command line to
// Main. Here Main checks what the program declares; `run` would run it,
// with a YAML file given by --config applied on top.
func Example() {
	p := program.New()
	p.Queue("jobs")
	p.Go("printer", newPrinter, config.Workers(2))
	p.Command("web", []string{"/usr/bin/python3", "-m", "http.server", "8080"})
	// In a real program: os.Exit(p.Main(os.Args))
	code := p.Main([]string{"example", "check"})
	fmt.Println("exit code", code)
	// Output:
	// example: ok (2 services, 3 workers)
	// exit code 0
}

// newPrinter builds one printer worker: it prints what it takes from the
// queue jobs.
func newPrinter(w service.Worker) (service.Service, error) {
	return service.Func(func(ctx context.Context) error {
		q, err := ipc.DialEnv(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		for {
			job, err := q.Get(ctx, "jobs")
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stdout, "printer %d: %s\n", w.ID, job.Body)
			if err := q.Ack(ctx, job); err != nil {
				return err
			}
		}
	}), nil
}
