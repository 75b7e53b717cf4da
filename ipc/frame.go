package ipc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// This file is the wire codec of PROTOCOL.md: one struct per frame type,
// append-style encoders and a decoder that checks every length against the
// bytes actually present before it allocates, never panics, and refuses
// bytes left over after a frame's body.

// Frame types.
const (
	typeHello   byte = 0x01
	typePut     byte = 0x02
	typeGet     byte = 0x03
	typeAck     byte = 0x04
	typeNack    byte = 0x05
	typeCancel  byte = 0x06
	typeConsume byte = 0x07
	typeWelcome byte = 0x81
	typeResult  byte = 0x82
	typeItems   byte = 0x83
	typeFatal   byte = 0xFF
)

// Status codes (PROTOCOL.md, "Status codes").
const (
	statusOK              uint16 = 0
	statusTimeout         uint16 = 1
	statusFull            uint16 = 2
	statusNoSuchQueue     uint16 = 3
	statusTooLarge        uint16 = 4
	statusUnknownDelivery uint16 = 5
	statusBadFrame        uint16 = 6
	statusBadHello        uint16 = 7
	statusRefused         uint16 = 8
	statusShuttingDown    uint16 = 9
	statusCancelled       uint16 = 10
	statusUnsupported     uint16 = 11
	statusDraining        uint16 = 12
)

var statusNames = [...]string{"OK", "TIMEOUT", "FULL", "NO_SUCH_QUEUE", "TOO_LARGE",
	"UNKNOWN_DELIVERY", "BAD_FRAME", "BAD_HELLO", "REFUSED", "SHUTTING_DOWN", "CANCELLED", "UNSUPPORTED", "DRAINING"}

func statusName(code uint16) string {
	if int(code) < len(statusNames) {
		return statusNames[code]
	}
	return fmt.Sprintf("status %d", code)
}

const (
	// frameHeaderLen is the length prefix.
	frameHeaderLen = 4
	// helloMagic opens every HELLO.
	helloMagic = "GTYQ"
	// flagAutoAck is bit 0 of a GET's flags.
	flagAutoAck byte = 1
	// waitForever is the timeout_ms that means "no limit".
	waitForever uint32 = 0xFFFFFFFF
	// maxStr8 is the longest str8.
	maxStr8 = 255
	// Fixed sizes used to bound frames: a PUT's header without the queue
	// name, an ITEMS header and one ITEMS entry without its body.
	putFixedLen   = 1 + 4 + 4 + 1 + 4 // type, id, timeout, str8 length, count
	putItemLen    = 4                 // bytes32 length
	itemsFixedLen = 1 + 4 + 4         // type, id, count
	itemsEntryLen = 8 + 4 + 4         // delivery, deliveries, bytes32 length
	ackFixedLen   = 1 + 4 + 4         // type, id, count
	// maxHelloLen is the longest HELLO: the only frame a broker reads
	// before it has said how long frames may be.
	maxHelloLen = 1 + 4 + 2 + 1 + maxStr8
	// frameSlack is how much longer than max_item PROTOCOL.md makes
	// max_frame at least.
	frameSlack = 64
)

// errBadFrame is wrapped by every decoding error: the bytes are not a frame
// of PROTOCOL.md (FATAL BAD_FRAME).
var errBadFrame = errors.New("malformed frame")

func badFrame(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadFrame}, args...)...)
}

type helloFrame struct {
	Magic   [4]byte
	Version uint16
	Client  string
}

type welcomeFrame struct {
	Version  uint16
	MaxFrame uint32
	MaxItem  uint32
}

type putFrame struct {
	ID        uint32
	TimeoutMS uint32
	Queue     string
	Items     [][]byte // slices of the frame's buffer when decoded
}

type getFrame struct {
	ID        uint32
	TimeoutMS uint32
	Queue     string
	Max       uint32
	Flags     byte
}

// ackFrame is an ACK or, with Nack set, a NACK.
type ackFrame struct {
	Nack       bool
	ID         uint32
	Deliveries []uint64
}

type cancelFrame struct{ ID uint32 }

// consumeFrame asks the broker to push the queue's items to the connection,
// keeping at most Prefetch of them unacknowledged (PROTOCOL.md, CONSUME).
type consumeFrame struct {
	ID       uint32
	Queue    string
	Prefetch uint32
	Flags    byte
}

type resultFrame struct {
	ID      uint32
	Status  uint16
	N       uint32
	Message string
}

type wireItem struct {
	Delivery   uint64
	Deliveries uint32
	Body       []byte // a slice of the frame's buffer when decoded
}

// itemsFrame is an ITEMS or, with Requests set, a REQUESTS: items that
// want a reply (taskframe.go).
type itemsFrame struct {
	ID       uint32
	Items    []wireItem
	Requests bool
}

type fatalFrame struct {
	Status  uint16
	Message string
}

// ---- encoding. Each appendX appends one whole frame, length prefix
// included, to dst. Strings longer than 255 bytes are cut (callers check
// queue names before; messages are ours).

func beginFrame(dst []byte, typ byte) ([]byte, int) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, typ)
	return dst, start
}

func endFrame(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-frameHeaderLen))
	return dst
}

func appendStr8(dst []byte, s string) []byte {
	if len(s) > maxStr8 {
		s = s[:maxStr8]
		for len(s) > 0 && !utf8.ValidString(s) { // cut at a character's start: a str8 is UTF-8
			s = s[:len(s)-1]
		}
	}
	dst = append(dst, byte(len(s)))
	return append(dst, s...)
}

func appendBytes32(dst []byte, b []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

func appendHello(dst []byte, f *helloFrame) []byte {
	dst, start := beginFrame(dst, typeHello)
	dst = append(dst, f.Magic[:]...)
	dst = binary.BigEndian.AppendUint16(dst, f.Version)
	dst = appendStr8(dst, f.Client)
	return endFrame(dst, start)
}

func appendWelcome(dst []byte, f *welcomeFrame) []byte {
	dst, start := beginFrame(dst, typeWelcome)
	dst = binary.BigEndian.AppendUint16(dst, f.Version)
	dst = binary.BigEndian.AppendUint32(dst, f.MaxFrame)
	dst = binary.BigEndian.AppendUint32(dst, f.MaxItem)
	return endFrame(dst, start)
}

func appendPut(dst []byte, f *putFrame) []byte {
	dst, start := beginFrame(dst, typePut)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, f.TimeoutMS)
	dst = appendStr8(dst, f.Queue)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Items)))
	for _, it := range f.Items {
		dst = appendBytes32(dst, it)
	}
	return endFrame(dst, start)
}

func appendGet(dst []byte, f *getFrame) []byte {
	dst, start := beginFrame(dst, typeGet)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, f.TimeoutMS)
	dst = appendStr8(dst, f.Queue)
	dst = binary.BigEndian.AppendUint32(dst, f.Max)
	dst = append(dst, f.Flags)
	return endFrame(dst, start)
}

func appendAck(dst []byte, f *ackFrame) []byte {
	typ := typeAck
	if f.Nack {
		typ = typeNack
	}
	dst, start := beginFrame(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Deliveries)))
	for _, d := range f.Deliveries {
		dst = binary.BigEndian.AppendUint64(dst, d)
	}
	return endFrame(dst, start)
}

func appendCancel(dst []byte, f *cancelFrame) []byte {
	dst, start := beginFrame(dst, typeCancel)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	return endFrame(dst, start)
}

func appendConsume(dst []byte, f *consumeFrame) []byte {
	dst, start := beginFrame(dst, typeConsume)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = appendStr8(dst, f.Queue)
	dst = binary.BigEndian.AppendUint32(dst, f.Prefetch)
	dst = append(dst, f.Flags)
	return endFrame(dst, start)
}

func appendResult(dst []byte, f *resultFrame) []byte {
	dst, start := beginFrame(dst, typeResult)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint16(dst, f.Status)
	dst = binary.BigEndian.AppendUint32(dst, f.N)
	dst = appendStr8(dst, f.Message)
	return endFrame(dst, start)
}

func appendItems(dst []byte, f *itemsFrame) []byte {
	typ := typeItems
	if f.Requests {
		typ = typeRequests
	}
	dst, start := beginFrame(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Items)))
	for i := range f.Items {
		dst = binary.BigEndian.AppendUint64(dst, f.Items[i].Delivery)
		dst = binary.BigEndian.AppendUint32(dst, f.Items[i].Deliveries)
		dst = appendBytes32(dst, f.Items[i].Body)
	}
	return endFrame(dst, start)
}

func appendFatal(dst []byte, f *fatalFrame) []byte {
	dst, start := beginFrame(dst, typeFatal)
	dst = binary.BigEndian.AppendUint16(dst, f.Status)
	dst = appendStr8(dst, f.Message)
	return endFrame(dst, start)
}

// appendFrame encodes any of the frame structs above (a pointer to it).
func appendFrame(dst []byte, f any) []byte {
	switch f := f.(type) {
	case *helloFrame:
		return appendHello(dst, f)
	case *welcomeFrame:
		return appendWelcome(dst, f)
	case *putFrame:
		return appendPut(dst, f)
	case *getFrame:
		return appendGet(dst, f)
	case *ackFrame:
		return appendAck(dst, f)
	case *cancelFrame:
		return appendCancel(dst, f)
	case *consumeFrame:
		return appendConsume(dst, f)
	case *resultFrame:
		return appendResult(dst, f)
	case *itemsFrame:
		return appendItems(dst, f)
	case *fatalFrame:
		return appendFatal(dst, f)
	case *submitFrame:
		return appendSubmit(dst, f)
	case *replyFrame:
		return appendReply(dst, f)
	case *withdrawFrame:
		return appendWithdraw(dst, f)
	case *outcomesFrame:
		return appendOutcomes(dst, f)
	}
	panic(fmt.Sprintf("ipc: appendFrame of %T", f)) // a bug in this package, not bad input
}

// ---- decoding

// decoder reads the body of one frame. The first error sticks; after it
// every read returns zero values, so decode functions check err once at
// the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = badFrame("%s: frame too short", what)
	}
	d.b = nil
}

func (d *decoder) u8(what string) byte {
	if len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u16(what string) uint16 {
	if len(d.b) < 2 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) u32(what string) uint32 {
	if len(d.b) < 4 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) u64(what string) uint64 {
	if len(d.b) < 8 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) bytes(n int, what string) []byte {
	if n < 0 || len(d.b) < n {
		d.fail(what)
		return nil
	}
	v := d.b[:n:n] // capped: nobody appends into the frame's buffer
	d.b = d.b[n:]
	return v
}

func (d *decoder) str8(what string) string {
	n := int(d.u8(what))
	b := d.bytes(n, what)
	if d.err == nil && !utf8.Valid(b) {
		d.err = badFrame("%s is not UTF-8", what)
	}
	return string(b)
}

func (d *decoder) bytes32(what string) []byte {
	n := d.u32(what)
	if uint64(n) > uint64(len(d.b)) {
		d.fail(what)
		return nil
	}
	return d.bytes(int(n), what)
}

// count reads a u32 count of entries at least minLen bytes each and checks
// that many can fit in what is left, so a huge count cannot allocate.
func (d *decoder) count(minLen int, what string) int {
	n := d.u32(what)
	if d.err != nil {
		return 0
	}
	if uint64(n)*uint64(minLen) > uint64(len(d.b)) {
		d.err = badFrame("%s: count %d does not fit in the %d bytes left", what, n, len(d.b))
		d.b = nil
		return 0
	}
	return int(n)
}

func (d *decoder) finish(what string) error {
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return badFrame("%s: %d bytes left over after the body", what, len(d.b))
	}
	return nil
}

// decodeFrame decodes one frame given its type byte and body (the length
// prefix already removed, as readFrame returns it). It returns a pointer to
// one of the frame structs. Byte fields (items) are slices of payload, so
// payload must not be reused while they are alive. Every error wraps
// errBadFrame. It never panics, whatever payload holds, and allocates at
// most a small multiple of len(payload).
func decodeFrame(payload []byte) (any, error) {
	if len(payload) == 0 {
		return nil, badFrame("empty frame")
	}
	d := decoder{b: payload[1:]}
	switch typ := payload[0]; typ {
	case typeHello:
		var f helloFrame
		copy(f.Magic[:], d.bytes(4, "HELLO magic"))
		f.Version = d.u16("HELLO version")
		f.Client = d.str8("HELLO client")
		return &f, d.finish("HELLO")
	case typeWelcome:
		var f welcomeFrame
		f.Version = d.u16("WELCOME version")
		f.MaxFrame = d.u32("WELCOME max_frame")
		f.MaxItem = d.u32("WELCOME max_item")
		return &f, d.finish("WELCOME")
	case typePut:
		var f putFrame
		f.ID = d.u32("PUT id")
		f.TimeoutMS = d.u32("PUT timeout")
		f.Queue = d.str8("PUT queue")
		n := d.count(putItemLen, "PUT count")
		if n > 0 {
			f.Items = make([][]byte, n)
			for i := range f.Items {
				f.Items[i] = d.bytes32("PUT item")
			}
		}
		return &f, d.finish("PUT")
	case typeGet:
		var f getFrame
		f.ID = d.u32("GET id")
		f.TimeoutMS = d.u32("GET timeout")
		f.Queue = d.str8("GET queue")
		f.Max = d.u32("GET max")
		f.Flags = d.u8("GET flags")
		if err := d.finish("GET"); err != nil {
			return &f, err
		}
		switch {
		case f.Max == 0:
			return &f, badFrame("GET max is 0")
		case f.Flags&^flagAutoAck != 0:
			return &f, badFrame("GET flags 0x%02x: only bit 0 (auto-ack) is defined", f.Flags)
		}
		return &f, nil
	case typeAck, typeNack:
		f := ackFrame{Nack: typ == typeNack}
		f.ID = d.u32("ACK id")
		n := d.count(8, "ACK count")
		if n > 0 {
			f.Deliveries = make([]uint64, n)
			for i := range f.Deliveries {
				f.Deliveries[i] = d.u64("ACK delivery")
			}
		}
		return &f, d.finish("ACK")
	case typeCancel:
		var f cancelFrame
		f.ID = d.u32("CANCEL id")
		return &f, d.finish("CANCEL")
	case typeConsume:
		var f consumeFrame
		f.ID = d.u32("CONSUME id")
		f.Queue = d.str8("CONSUME queue")
		f.Prefetch = d.u32("CONSUME prefetch")
		f.Flags = d.u8("CONSUME flags")
		if err := d.finish("CONSUME"); err != nil {
			return &f, err
		}
		switch {
		case f.Prefetch == 0:
			return &f, badFrame("CONSUME prefetch is 0")
		case f.Flags != 0:
			return &f, badFrame("CONSUME flags 0x%02x: no flag is defined", f.Flags)
		}
		return &f, nil
	case typeResult:
		var f resultFrame
		f.ID = d.u32("RESULT id")
		f.Status = d.u16("RESULT status")
		f.N = d.u32("RESULT n")
		f.Message = d.str8("RESULT message")
		return &f, d.finish("RESULT")
	case typeItems, typeRequests:
		f := itemsFrame{Requests: typ == typeRequests}
		f.ID = d.u32("ITEMS id")
		n := d.count(itemsEntryLen, "ITEMS count")
		if d.err == nil && n == 0 {
			return &f, badFrame("ITEMS count is 0")
		}
		if n > 0 {
			f.Items = make([]wireItem, n)
			for i := range f.Items {
				f.Items[i].Delivery = d.u64("ITEMS delivery")
				f.Items[i].Deliveries = d.u32("ITEMS deliveries")
				f.Items[i].Body = d.bytes32("ITEMS item")
			}
		}
		return &f, d.finish("ITEMS")
	case typeFatal:
		var f fatalFrame
		f.Status = d.u16("FATAL status")
		f.Message = d.str8("FATAL message")
		return &f, d.finish("FATAL")
	default:
		if f, ok, err := decodeTaskFrame(typ, &d); ok {
			return f, err
		}
		return nil, badFrame("unknown frame type 0x%02x", typ)
	}
}

// errFrameTooLong wraps errBadFrame: a length prefix above the limit.
var errFrameTooLong = fmt.Errorf("%w: frame longer than max_frame", errBadFrame)

// frameReader reads frames off a buffered stream. It calls began when the
// first byte of a frame has arrived but the whole frame is not buffered yet
// (the broker arms its frame deadline there) and ended once the frame is
// complete if began was called.
type frameReader struct {
	r       *bufio.Reader
	scratch []byte // reused for frames nothing keeps (see read)
	began   func() error
	ended   func() error
	// untrusted: the peer may announce a long frame and send little of it
	// (the broker's clients). Such a body longer than eagerBody is read
	// into a buffer that grows as its bytes arrive, unless they are all
	// buffered already.
	untrusted bool
}

// read returns the next frame's type and body. With keep false the result
// lives in a buffer reused by the next read; with keep true it is a fresh
// allocation of exactly the frame's length, which the caller may slice and
// keep. A length of 0 or above maxFrame is an error wrapping errBadFrame,
// found before anything is allocated. io.EOF means the stream ended between
// frames; a stream that ends inside a frame is io.ErrUnexpectedEOF.
func (fr *frameReader) read(maxFrame int, keep func(typ byte) bool) ([]byte, error) {
	if _, err := fr.r.Peek(1); err != nil {
		return nil, err
	}
	armed := false
	if fr.r.Buffered() < frameHeaderLen && fr.began != nil {
		if err := fr.began(); err != nil {
			return nil, err
		}
		armed = true
	}
	hdr, err := fr.r.Peek(frameHeaderLen)
	if err != nil {
		return nil, unexpected(err)
	}
	n := binary.BigEndian.Uint32(hdr)
	if n == 0 {
		return nil, badFrame("frame length 0")
	}
	if uint64(n) > uint64(maxFrame) {
		return nil, fmt.Errorf("%w (%d > %d)", errFrameTooLong, n, maxFrame)
	}
	if !armed && fr.r.Buffered() < frameHeaderLen+int(n) && fr.began != nil {
		if err := fr.began(); err != nil {
			return nil, err
		}
		armed = true
	}
	hdr, err = fr.r.Peek(frameHeaderLen + 1)
	if err != nil {
		return nil, unexpected(err)
	}
	typ := hdr[frameHeaderLen]
	if _, err := fr.r.Discard(frameHeaderLen); err != nil {
		return nil, unexpected(err)
	}
	eager := !fr.untrusted || int(n) <= eagerBody || fr.r.Buffered() >= int(n)
	var buf []byte
	if keep != nil && keep(typ) {
		buf, err = readBody(fr.r, int(n), nil, 0, eager)
	} else {
		buf, err = readBody(fr.r, int(n), fr.scratch, 4096, eager)
		if cap(buf) > cap(fr.scratch) {
			fr.scratch = buf[:0]
		}
	}
	if err != nil {
		return nil, unexpected(err)
	}
	if armed && fr.ended != nil {
		if err := fr.ended(); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// eagerBody is the longest frame body from an untrusted peer that is read
// into a buffer of its full length at once. A longer one, not yet
// buffered, is read into a buffer that doubles as its bytes arrive, so
// that a client that announces a long frame and sends little of it holds
// about what it sent, not what it announced, until the frame deadline
// closes it. The doubling copies the body at most once more in all.
const eagerBody = 64 << 10

// readBody reads an n-byte frame body from r into buf[:0] (if it has the
// capacity; else into a new buffer of capacity at least minCap). eager
// allocates all n bytes at once; otherwise the buffer starts at eagerBody
// and doubles as bytes arrive.
func readBody(r io.Reader, n int, buf []byte, minCap int, eager bool) ([]byte, error) {
	size := n
	if !eager {
		size = min(n, eagerBody)
	}
	if cap(buf) < size {
		buf = make([]byte, 0, max(size, minCap))
	}
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(grown, buf)
			buf = grown
		}
		m, err := r.Read(buf[len(buf):min(n, cap(buf))])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			return nil, err
		}
	}
	return buf, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
