// Command seed is the cotyledon program this project grew from, in Go: a
// producer puts an increasing integer on the queue "jobs" every second, and
// two printer workers take them and print them. As the cotyledon program
// adds its services to a ServiceManager, this one declares them in Go; one
// binary is the manager and every worker:
//
//	go run ./cmd/seed run --config deploy/seed.yaml
//
// The YAML file, applied on top of what the program declares, is what an
// operator edits (printer: 2 workers); without it the program runs as
// declared. Kill a printer and it comes back with the same worker id, and
// the number it was printing is printed by another (it was not
// acknowledged). On `kill -HUP`, the manager reloads the file, then runs
// the seed's reload hook, which grows printer to 5 workers, as the
// cotyledon program's reconfigure(printer, 5).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

// queue is the queue between the two services.
const queue = "jobs"

func main() {
	p := program.New()
	p.Queue(queue)
	p.Go("producer", func(w service.Worker) (service.Service, error) { return producer{}, nil })
	p.Go("printer", func(w service.Worker) (service.Service, error) { return printer{w}, nil }, config.Workers(2))
	p.SetHooks(supervisor.Hooks{OnReload: growPrinters})
	os.Exit(p.Main(os.Args))
}

// growPrinters is the seed's reload hook: printer gets 5 workers. It runs
// after every reload of the file, so it wins over the file's count.
func growPrinters(m *supervisor.Supervisor) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Reconfigure(ctx, "printer", 5); err != nil {
		fmt.Fprintf(os.Stderr, "seed: reload hook: %v\n", err)
	}
}

// producer puts 0, 1, 2 ... on the queue, one a second, like the seed's
// ProducerService.
type producer struct{}

func (producer) Run(ctx context.Context) error {
	q, err := ipc.DialEnv(ctx)
	if err != nil {
		return fmt.Errorf("connect to the queue: %w", err)
	}
	defer q.Close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if err := q.Put(ctx, queue, []byte(strconv.Itoa(i))); err != nil {
			return stopped(ctx, fmt.Errorf("put %d: %w", i, err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// printer prints what it takes from the queue, like the seed's
// PrinterService, and acknowledges each number once it is printed. It
// consumes: the broker pushes numbers ahead (up to prefetch), so a printer
// does not wait a round trip for each.
type printer struct{ w service.Worker }

// prefetch is how many numbers a printer may hold unacknowledged.
const prefetch = 16

func (p printer) Run(ctx context.Context) error {
	q, err := ipc.DialEnv(ctx)
	if err != nil {
		return fmt.Errorf("connect to the queue: %w", err)
	}
	defer q.Close() // sends the acks still queued
	jobs, err := q.Consume(ctx, queue, prefetch)
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	for {
		job, err := jobs.Next(ctx)
		if errors.Is(err, ipc.ErrDraining) {
			// The manager recycles this worker: every number taken is
			// printed and acknowledged (Close sends the acks still
			// queued); the stop comes next.
			<-ctx.Done()
			return nil
		}
		if err != nil {
			return stopped(ctx, fmt.Errorf("next: %w", err))
		}
		fmt.Printf("I am worker #%d, PID:%d and I hereby print %s\n", p.w.ID, p.w.PID, job.Body)
		// Acknowledged even if we are being stopped: it was printed.
		if err := jobs.Ack(job); err != nil {
			return fmt.Errorf("ack %s: %w", job.Body, err)
		}
	}
}

// stopped turns the error of a call that a stop interrupted into the clean
// end of the service.
func stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}
