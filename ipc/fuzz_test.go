package ipc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes to the decoder as a frame's type
// and body: it must never panic, never allocate more than a small multiple
// of the bytes it was given (counts are checked against the bytes present),
// and what it decodes must encode back to exactly the same bytes (so there
// is one encoding per frame and nothing is silently dropped). The same
// bytes behind a length prefix also go through frameReader.
func FuzzDecodeFrame(f *testing.F) {
	for _, ex := range workedExample {
		f.Add(appendFrame(nil, ex.frame)[frameHeaderLen:])
	}
	for _, ex := range consumeExample {
		f.Add(appendFrame(nil, ex.frame)[frameHeaderLen:])
	}
	for _, ex := range taskExample {
		f.Add(appendFrame(nil, ex.frame)[frameHeaderLen:])
	}
	for _, fr := range []any{
		&putFrame{ID: 9, TimeoutMS: 0, Queue: "q", Items: [][]byte{nil, []byte("a"), bytes.Repeat([]byte("b"), 300)}},
		&putFrame{ID: 9, Queue: "empty"},
		&getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 256, Flags: flagAutoAck},
		&ackFrame{Nack: true, ID: 4, Deliveries: []uint64{1, 2, 1 << 60}},
		&ackFrame{ID: 4},
		&cancelFrame{ID: 77},
		&consumeFrame{ID: 12, Queue: "jobs", Prefetch: 1 << 16},
		&resultFrame{ID: 2, Status: statusCancelled, N: 3, Message: "cancelled"},
		&itemsFrame{ID: 2, Items: []wireItem{{Delivery: 1, Deliveries: 3, Body: []byte("x")}, {Delivery: 2, Deliveries: 1}}},
		&fatalFrame{Status: statusBadFrame, Message: "nope"},
		&helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: string(bytes.Repeat([]byte("c"), 255))},
	} {
		f.Add(appendFrame(nil, fr)[frameHeaderLen:])
	}
	for _, broken := range []string{
		"", "\x00", "\x07", "\x02\xff\xff\xff\xff", "\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\xff\xff\xff\xff",
		"\x83\x00\x00\x00\x01\x00\x00\x00\x00", "\x83\x00\x00\x00\x01\x7f\xff\xff\xff", "\x04\x00\x00\x00\x01\x00\x00\x00\x02\x00",
		"\x06\x00\x00\x00\x01\x00", "\x01GTYQ\x00\x01\xff", "\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
	} {
		f.Add([]byte(broken))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		fr, err := decodeFrame(payload)
		// Bytes allocated by one decode: the least of a few runs, since
		// the fuzzing engine's own goroutines allocate meanwhile.
		least := ^uint64(0)
		for range 3 {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			decodeFrame(payload)
			runtime.ReadMemStats(&after)
			least = min(least, after.TotalAlloc-before.TotalAlloc)
		}
		if least > uint64(8*len(payload)+1024) {
			t.Errorf("decoding %d bytes allocated %d", len(payload), least)
		}
		if err == nil {
			again := appendFrame(nil, fr)
			if n := binary.BigEndian.Uint32(again); int(n) != len(payload) || !bytes.Equal(again[frameHeaderLen:], payload) {
				t.Errorf("%T re-encodes to\n %x\nnot\n %x", fr, again[frameHeaderLen:], payload)
			}
		}
		// The stream reader: the frame behind its length, then a lying length.
		stream := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
		stream = append(stream, payload...)
		r := frameReader{r: bufio.NewReader(bytes.NewReader(stream))}
		got, err := r.read(1<<20, func(byte) bool { return true })
		if len(payload) > 0 && (err != nil || !bytes.Equal(got, payload)) {
			t.Errorf("frameReader: %x, %v", got, err)
		}
		if len(payload) >= 4 {
			r := frameReader{r: bufio.NewReader(bytes.NewReader(payload))}
			r.read(1<<20, nil) // any result but a panic
		}
	})
}
