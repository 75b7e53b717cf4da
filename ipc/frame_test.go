package ipc

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// workedExample is the byte dump of PROTOCOL.md's "A worked example",
// frame by frame, in order.
var workedExample = []struct {
	hex   string
	frame any
}{
	{"0000000d 01 47545951 0001 05776f726b72", &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "workr"}},
	{"0000000b 81 0001 00100000 000fffc0", &welcomeFrame{Version: 1, MaxFrame: 1 << 20, MaxItem: 1<<20 - 64}},
	{"00000018 02 00000001 ffffffff 046a6f6273 00000001 000000026869", &putFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{[]byte("hi")}}},
	{"0000000c 82 00000001 0000 00000001 00", &resultFrame{ID: 1, Status: statusOK, N: 1}},
	{"00000013 03 00000002 000003e8 046a6f6273 00000001 00", &getFrame{ID: 2, TimeoutMS: 1000, Queue: "jobs", Max: 1}},
	{"0000001b 83 00000002 00000001 0000000000000001 00000001 000000026869", &itemsFrame{ID: 2, Items: []wireItem{{Delivery: 1, Deliveries: 1, Body: []byte("hi")}}}},
	{"00000011 04 00000003 00000001 0000000000000001", &ackFrame{ID: 3, Deliveries: []uint64{1}}},
	{"0000000c 82 00000003 0000 00000001 00", &resultFrame{ID: 3, Status: statusOK, N: 1}},
}

// consumeExample is the byte dump of PROTOCOL.md's "A worked example of
// CONSUME".
var consumeExample = []struct {
	hex   string
	frame any
}{
	{"0000000f 07 00000004 046a6f6273 00000002 00", &consumeFrame{ID: 4, Queue: "jobs", Prefetch: 2}},
	{"0000001b 83 00000004 00000001 0000000000000002 00000001 000000026869", &itemsFrame{ID: 4, Items: []wireItem{{Delivery: 2, Deliveries: 1, Body: []byte("hi")}}}},
	{"00000011 04 00000005 00000001 0000000000000002", &ackFrame{ID: 5, Deliveries: []uint64{2}}},
	{"0000000c 82 00000005 0000 00000001 00", &resultFrame{ID: 5, Status: statusOK, N: 1}},
	{"00000005 06 00000004", &cancelFrame{ID: 4}},
	{"0000000c 82 00000004 000a 00000000 00", &resultFrame{ID: 4, Status: statusCancelled}},
}

// taskExample is the byte dump of PROTOCOL.md's "A worked example of
// tasks".
var taskExample = []struct {
	hex   string
	frame any
}{
	{"0000000c 01 47545951 0002 04 7375626d", &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 2, Client: "subm"}},
	{"0000000b 81 0002 00100000 000fffc0", &welcomeFrame{Version: 2, MaxFrame: 1 << 20, MaxItem: 1<<20 - 64}},
	{"00000021 08 00000001 ffffffff 046a6f6273 00000001 0000000000000007 00000003 322b32", &submitFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Tasks: []task{{Tag: 7, Body: []byte("2+2")}}}},
	{"0000000c 82 00000001 0000 00000001 00", &resultFrame{ID: 1, Status: statusOK, N: 1}},
	{"00000013 03 00000001 000003e8 046a6f6273 00000001 00", &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 1}},
	{"0000001c 84 00000001 00000001 0000000000000001 00000001 00000003 322b32", &itemsFrame{ID: 1, Requests: true, Items: []wireItem{{Delivery: 1, Deliveries: 1, Body: []byte("2+2")}}}},
	{"00000017 09 00000002 00000001 0000000000000001 00 00000001 34", &replyFrame{ID: 2, Answers: []answer{{Delivery: 1, Status: outcomeDone, Body: []byte("4")}}}},
	{"0000000c 82 00000002 0000 00000001 00", &resultFrame{ID: 2, Status: statusOK, N: 1}},
	{"00000013 85 00000001 0000000000000007 00 00000001 34", &outcomesFrame{Outcomes: []outcome{{Tag: 7, Status: outcomeDone, Body: []byte("4")}}}},
	{"00000021 08 00000003 ffffffff 046a6f6273 00000001 0000000000000008 00000003 332b33", &submitFrame{ID: 3, TimeoutMS: waitForever, Queue: "jobs", Tasks: []task{{Tag: 8, Body: []byte("3+3")}}}},
	{"0000000c 82 00000003 0000 00000001 00", &resultFrame{ID: 3, Status: statusOK, N: 1}},
	{"00000011 0a 00000004 00000001 0000000000000008", &withdrawFrame{ID: 4, Tags: []uint64{8}}},
	{"00000012 85 00000001 0000000000000008 02 00000000", &outcomesFrame{Outcomes: []outcome{{Tag: 8, Status: outcomeCancelled, Body: []byte{}}}}},
	{"0000000c 82 00000004 0000 00000001 00", &resultFrame{ID: 4, Status: statusOK, N: 1}},
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The worked example of PROTOCOL.md, both ways: our encoder writes exactly
// its bytes, our decoder reads them back as the frames it describes.
func TestWorkedExampleBytes(t *testing.T) {
	examples := append(workedExample[:len(workedExample):len(workedExample)], consumeExample...)
	for i, ex := range append(examples, taskExample...) {
		want := unhex(t, ex.hex)
		if got := appendFrame(nil, ex.frame); !bytes.Equal(got, want) {
			t.Errorf("frame %d (%T): encoded\n %x\nwant\n %x", i, ex.frame, got, want)
		}
		got, err := decodeFrame(want[frameHeaderLen:])
		if err != nil {
			t.Errorf("frame %d: decode: %v", i, err)
			continue
		}
		if !reflect.DeepEqual(got, ex.frame) {
			t.Errorf("frame %d: decoded %#v, want %#v", i, got, ex.frame)
		}
	}
	// And the broker's defaults are the example's WELCOME.
	b, err := NewBroker(BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}}})
	if err != nil {
		t.Fatal(err)
	}
	if b.maxFrame != 1<<20 || b.maxItem != 1<<20-64 {
		t.Errorf("default max_frame %d, max_item %d; the worked example says 1 MiB and 1 MiB - 64", b.maxFrame, b.maxItem)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ name, hex string }{
		{"empty", ""},
		{"unknown type", "0b 00000001"},
		{"trailing byte", "06 00000001 00"},
		{"short", "06 000001"},
		{"str8 past the end", "03 00000002 000003e8 ff6a6f6273 00000001 00"},
		{"huge count", "02 00000001 ffffffff 00 ffffffff"},
		{"count past the end", "04 00000003 00000002 0000000000000001"},
		{"bytes32 past the end", "02 00000001 ffffffff 00 00000001 ffffffff 68"},
		{"GET max 0", "03 00000002 000003e8 00 00000000 00"},
		{"ITEMS count 0", "83 00000002 00000000"},
		{"CONSUME prefetch 0", "07 00000004 046a6f6273 00000000 00"},
		{"CONSUME flags", "07 00000004 046a6f6273 00000002 01"},
		{"REPLY status 2", "09 00000002 00000001 0000000000000001 02 00000000"},
		{"OUTCOMES count 0", "85 00000000"},
		{"OUTCOMES status 3", "85 00000001 0000000000000008 03 00000000"},
		{"SUBMIT count past the end", "08 00000001 ffffffff 00 00000002 0000000000000007 00000000"},
		{"WITHDRAW count past the end", "0a 00000004 00000002 0000000000000008"},
	} {
		_, err := decodeFrame(unhex(t, tc.hex))
		if !errors.Is(err, errBadFrame) {
			t.Errorf("%s: err %v, want errBadFrame", tc.name, err)
		}
	}
}

// readsRecorder hands out data in reads of at most step bytes and records
// the largest buffer it was asked to fill.
type readsRecorder struct {
	data    []byte
	step    int
	largest int
}

func (r *readsRecorder) Read(p []byte) (int, error) {
	r.largest = max(r.largest, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.step)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReadBodyHoldsWhatArrivedNotWhatWasAnnounced(t *testing.T) {
	// A client announces 16 MiB and sends 10 bytes: the buffer offered to
	// the socket is never the announced size.
	r := &readsRecorder{data: []byte("0123456789"), step: 1 << 20}
	if _, err := readBody(r, 16<<20, nil, 0, false); err == nil {
		t.Fatal("a body cut short was accepted")
	}
	if r.largest > eagerBody {
		t.Errorf("a read into %d bytes for 10 that arrived, want at most %d", r.largest, eagerBody)
	}
	// A whole long body arrives intact through the growing buffer.
	want := make([]byte, 3<<20+7)
	for i := range want {
		want[i] = byte(i * 7)
	}
	r = &readsRecorder{data: want, step: 100_000}
	got, err := readBody(r, len(want), nil, 0, false)
	if err != nil || !bytes.Equal(got, want) || cap(got) != len(want) {
		t.Fatalf("long body: err %v, equal %v, capacity %d for %d", err, bytes.Equal(got, want), cap(got), len(want))
	}
	// Trusted, or all buffered: one allocation of the whole body.
	r = &readsRecorder{data: want, step: 100_000}
	got, err = readBody(r, len(want), nil, 0, true)
	if err != nil || !bytes.Equal(got, want) || cap(got) != len(want) {
		t.Fatalf("eager body: err %v, equal %v, capacity %d for %d", err, bytes.Equal(got, want), cap(got), len(want))
	}
	// A short body reuses the buffer it is given.
	scratch := make([]byte, 0, 4096)
	got, err = readBody(&readsRecorder{data: []byte("abc"), step: 10}, 3, scratch, 4096, false)
	if err != nil || string(got) != "abc" || &got[0] != &scratch[:1][0] {
		t.Errorf("short body %q, %v: want abc in the scratch buffer", got, err)
	}
}

// A str8 too long is cut at a character's start, so that it stays UTF-8
// (a client name of many non-ASCII characters must not break the HELLO).
func TestStr8CutAtACharacter(t *testing.T) {
	s := strings.Repeat("é", 200) // 400 bytes
	b := appendStr8(nil, s)
	n := int(b[0])
	if n > maxStr8 || n != 254 || !utf8.Valid(b[1:]) {
		t.Fatalf("str8 of %d bytes (valid UTF-8: %v), want 254, whole characters", n, utf8.Valid(b[1:]))
	}
	h := appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 2, Client: s})
	if _, err := decodeFrame(h[frameHeaderLen:]); err != nil {
		t.Fatalf("a HELLO with a long non-ASCII name: %v", err)
	}
}
