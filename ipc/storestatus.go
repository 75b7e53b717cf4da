package ipc

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"
)

// What a store server's process says of its store in a STATUS= line to
// its manager (sd_notify), when it loses it and when it has it again:
// the manager's own STATUS= then shows the store's queues as
// disconnected, without asking the store server.
const (
	StatusStoreLost      = "store lost: puts and gets wait until it is back"
	StatusStoreConnected = "store connected"
)

// StoreQueueStatus is what a store server says of one of its queues, on
// its status socket (gotyledon-jetstream --status-socket: GET /queues, a
// JSON array of them). Its figures are the store's, of the queue as a
// whole: with several managers sharing the queue, every manager's puts
// and gets count.
type StoreQueueStatus struct {
	Queue string `json:"queue"`
	// Waiting: items never delivered yet; InFlight: delivered and not
	// acknowledged (those waiting to be delivered again included);
	// Redelivered: of those, delivered more than once; Getters: gets
	// waiting for an item.
	Waiting     int `json:"waiting"`
	InFlight    int `json:"in_flight"`
	Redelivered int `json:"redelivered"`
	Getters     int `json:"getters"`
	// Since the queue was made: items stored, deliveries, items
	// acknowledged for good.
	Put       uint64 `json:"put_total"`
	Delivered uint64 `json:"delivered_total"`
	Acked     uint64 `json:"acked_total"`
	// Connection is the store server's connection to its store
	// ("connected", "reconnecting", ...); Error, why the figures are
	// missing.
	Connection string `json:"connection"`
	Error      string `json:"error,omitempty"`
}

// FetchStoreStatus asks the store server's status socket for its queues.
func FetchStoreStatus(ctx context.Context, socket string) ([]StoreQueueStatus, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://store/queues", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("queue store status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("queue store status: %s", resp.Status)
	}
	var out []StoreQueueStatus
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("queue store status: %w", err)
	}
	return out, nil
}

// storeStatusTimeout bounds WithStoreStatus's question.
const storeStatusTimeout = time.Second

// WithStoreStatus fills the broker's stats of its forwarded queues (store
// names their store) with what the store server at socket says of them:
// depth, in flight, waiting gets and the totals are the store's. Without
// an answer, StoreState says why and the figures stay 0. Memory queues
// are returned as they are. It asks only if there is a forwarded queue.
func WithStoreStatus(stats []QueueStats, store, socket string) []QueueStats {
	var forwarded bool
	for _, q := range stats {
		forwarded = forwarded || q.Forwarded
	}
	if !forwarded {
		return stats
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeStatusTimeout)
	defer cancel()
	report, err := FetchStoreStatus(ctx, socket)
	byName := make(map[string]StoreQueueStatus, len(report))
	for _, r := range report {
		byName[r.Queue] = r
	}
	for i := range stats {
		q := &stats[i]
		if !q.Forwarded {
			continue
		}
		q.Store = store
		r, ok := byName[q.Name]
		switch {
		case err != nil:
			q.StoreState = "unavailable: " + err.Error()
		case !ok:
			q.StoreState = "unavailable: the store server does not serve it"
		case r.Error != "":
			q.StoreState = r.Connection + ": " + r.Error
		default:
			q.StoreState = r.Connection
			q.Depth, q.InFlight, q.Consumers = r.Waiting, r.InFlight, r.Getters
			q.Put, q.Delivered, q.Acked = r.Put, r.Delivered, r.Acked
			q.StoreRedelivered = r.Redelivered
		}
	}
	return stats
}
