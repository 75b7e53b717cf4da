package service_test

import (
	"context"
	"fmt"

	"github.com/gotyledon/gotyledon/service"
)

func load() {}

type cache struct{}

func (cache) ReportsReady() bool { return true }

func (cache) Run(ctx context.Context) error {
	service.Status("loading")
	load()
	service.Ready()
	service.Status("serving")
	<-ctx.Done()
	return nil
}

// A service that says when it is ready, under `ready: notify`; without a
// notify socket (here) Ready and Status do nothing.
func ExampleReadyReporter() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var svc service.Service = cache{}
	_, reports := svc.(service.ReadyReporter)
	fmt.Println(reports, svc.Run(ctx))
	// Output: true <nil>
}
