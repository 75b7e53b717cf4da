package ipc

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func inflightItems(first uint64, n int) []item {
	items := make([]item, n)
	for i := range items {
		items[i] = item{body: []byte{byte(first + uint64(i))}, deliveries: uint32(first) + uint32(i)}
	}
	return items
}

// The table against a map, under random deliveries (some behind later
// ones, as from two queues), acknowledgements in and out of order, ids
// never delivered and ids acknowledged twice.
func TestInflightTableMatchesAMap(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		var tab inflightTable
		model := map[uint64]item{}
		var keys []uint64 // model's, sorted
		var next uint64 = 1
		var pending [][2]uint64 // delivered runs not yet added: [first, n]
		for range 300 {
			switch op := rng.IntN(10); {
			case op < 3:
				n := 1 + rng.IntN(130)
				pending = append(pending, [2]uint64{next, uint64(n)})
				next += uint64(n)
				// Add one of the runs handed out, not always the newest.
				k := rng.IntN(len(pending))
				first, n2 := pending[k][0], int(pending[k][1])
				pending = slices.Delete(pending, k, k+1)
				items := inflightItems(first, n2)
				tab.add(first, nil, nil, items)
				for i, it := range items {
					model[first+uint64(i)] = it
					k, _ := slices.BinarySearch(keys, first+uint64(i))
					keys = slices.Insert(keys, k, first+uint64(i))
				}
			default:
				var d uint64
				if rng.IntN(4) == 0 || len(model) == 0 {
					d = rng.Uint64N(next + 10)
				} else {
					// Mostly among the oldest held, as a consumer acks.
					d = keys[min(rng.IntN(len(keys)), rng.IntN(4))]
				}
				e, ok := tab.take(d)
				want, wantOK := model[d]
				if ok != wantOK {
					t.Fatalf("seed %d: take(%d) = %v, want %v", seed, d, ok, wantOK)
				}
				if ok && (e.it.deliveries != want.deliveries || string(e.it.body) != string(want.body)) {
					t.Fatalf("seed %d: take(%d) = %+v, want %+v", seed, d, e.it, want)
				}
				if k, held := slices.BinarySearch(keys, d); held {
					keys = slices.Delete(keys, k, k+1)
				}
				delete(model, d)
			}
			if tab.len() != len(model) {
				t.Fatalf("seed %d: len %d, want %d", seed, tab.len(), len(model))
			}
		}
		var got []uint64
		tab.each(func(d uint64, e inflightItem) {
			if e.it.deliveries != model[d].deliveries {
				t.Fatalf("seed %d: each gave %d with %+v, want %+v", seed, d, e.it, model[d])
			}
			got = append(got, d)
		})
		want := make([]uint64, 0, len(model))
		for k := range model {
			want = append(want, k)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d: each gave %v, want %v (in delivery order)", seed, got, want)
		}
	}
}

// A client that keeps its first item and acknowledges every later one
// must not grow the table by a run per delivery.
func TestInflightTableStaysSmallWhileOneItemIsHeld(t *testing.T) {
	var tab inflightTable
	var next uint64 = 1
	for i := range 10000 {
		tab.add(next, nil, nil, inflightItems(next, 4))
		for k := range uint64(4) {
			if i == 0 && k == 0 {
				continue
			}
			if _, ok := tab.take(next + k); !ok {
				t.Fatalf("take(%d): not found", next+k)
			}
		}
		next += 4
	}
	if tab.len() != 1 {
		t.Fatalf("len %d, want 1", tab.len())
	}
	if n := len(tab.runs) - tab.head; n > 40 {
		t.Fatalf("%d runs kept for one item held", n)
	}
	if _, ok := tab.take(1); !ok {
		t.Fatal("the held item is gone")
	}
	if tab.len() != 0 || len(tab.runs) != 0 {
		t.Fatalf("after the last take: len %d, %d runs", tab.len(), len(tab.runs))
	}
}

func BenchmarkInflightTable(b *testing.B) {
	// micro-benchmark: deliver 256, acknowledge them in order.
	var tab inflightTable
	items := inflightItems(0, 256)
	var next uint64 = 1
	b.ReportAllocs()
	for b.Loop() {
		tab.add(next, nil, nil, items)
		for k := range uint64(256) {
			tab.take(next + k)
		}
		next += 256
	}
}
