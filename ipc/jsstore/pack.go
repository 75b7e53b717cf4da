package jsstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// How items travel in JetStream messages. A message of one item, stored
// once, is the item's bytes and no header of ours, what any NATS client
// would publish. A message of several items (the items of one PUT) has
// the header Gotyledon-Items: k and k items in its body, each a uvarint
// length and its bytes. An item stored again (a NACKed one, or one not
// handed out, whose siblings were acknowledged) goes in a new message
// with Gotyledon-Delivered: one count per item of the times it was handed
// out before, so that its deliveries go on counting from there.
const (
	headerItems     = "Gotyledon-Items"
	headerDelivered = "Gotyledon-Delivered"
)

// A Batch is items stored together in one JetStream message, under one id
// (an empty ID: a retried Put may store it twice).
type Batch struct {
	ID    string
	Items [][]byte
	// delivered, if not nil, counts per item the times it was handed out
	// before this message.
	delivered []int
}

// batches splits items into batches of at most maxItems items and
// maxBytes of body each (an item longer than maxBytes goes alone), ids
// from id, in order.
func batches(items [][]byte, maxItems, maxBytes int, id func() string) []Batch {
	var out []Batch
	for len(items) > 0 {
		n, size := 1, packedLen(items[0])
		for n < len(items) && n < maxItems && size+packedLen(items[n]) <= maxBytes {
			size += packedLen(items[n])
			n++
		}
		out = append(out, Batch{ID: id(), Items: items[:n:n]})
		items = items[n:]
	}
	return out
}

func packedLen(item []byte) int {
	return binary.PutUvarint(make([]byte, binary.MaxVarintLen64), uint64(len(item))) + len(item)
}

// message is b as a message on subject.
func (b Batch) message(subject string) *nats.Msg {
	m := nats.NewMsg(subject)
	if len(b.Items) == 1 && b.delivered == nil {
		m.Data = b.Items[0]
		return m
	}
	size := 0
	for _, it := range b.Items {
		size += packedLen(it)
	}
	m.Data = make([]byte, 0, size)
	for _, it := range b.Items {
		m.Data = binary.AppendUvarint(m.Data, uint64(len(it)))
		m.Data = append(m.Data, it...)
	}
	m.Header.Set(headerItems, strconv.Itoa(len(b.Items)))
	if b.delivered != nil {
		counts := make([]string, len(b.delivered))
		for i, d := range b.delivered {
			counts[i] = strconv.Itoa(d)
		}
		m.Header.Set(headerDelivered, strings.Join(counts, " "))
	}
	return m
}

// errBadPack: a message says it holds several items, and does not.
var errBadPack = errors.New("malformed message of several items")

// unpack is the items of a message as message made them, and the times
// each was handed out before it (nil: never).
func unpack(data []byte, header nats.Header) (items [][]byte, delivered []int, err error) {
	count := header.Get(headerItems)
	if count == "" {
		return [][]byte{data}, nil, nil
	}
	k, err := strconv.Atoi(count)
	if err != nil || k < 1 || k > len(data)+1 {
		return nil, nil, fmt.Errorf("%w: %s %q", errBadPack, headerItems, count)
	}
	items = make([][]byte, 0, k)
	for len(items) < k {
		n, used := binary.Uvarint(data)
		if used <= 0 || n > uint64(len(data)-used) {
			return nil, nil, fmt.Errorf("%w: item %d of %d overruns the body", errBadPack, len(items)+1, k)
		}
		items = append(items, data[used:used+int(n):used+int(n)])
		data = data[used+int(n):]
	}
	if len(data) != 0 {
		return nil, nil, fmt.Errorf("%w: %d bytes after its %d items", errBadPack, len(data), k)
	}
	if d := header.Get(headerDelivered); d != "" {
		fields := strings.Fields(d)
		if len(fields) != k {
			return nil, nil, fmt.Errorf("%w: %s has %d counts for %d items", errBadPack, headerDelivered, len(fields), k)
		}
		delivered = make([]int, k)
		for i, f := range fields {
			if delivered[i], err = strconv.Atoi(f); err != nil || delivered[i] < 0 {
				return nil, nil, fmt.Errorf("%w: %s %q", errBadPack, headerDelivered, d)
			}
		}
	}
	return items, delivered, nil
}
