package ipc

import "encoding/binary"

// The frames of request and reply (PROTOCOL.md, "Tasks: request and
// reply"), protocol version 2: a submitter's SUBMIT and WITHDRAW, a
// worker's REPLY, the broker's REQUESTS (an ITEMS of items that want a
// reply: itemsFrame with Requests set) and OUTCOMES.

// Frame types of version 2.
const (
	typeSubmit   byte = 0x08
	typeReply    byte = 0x09
	typeWithdraw byte = 0x0A
	typeRequests byte = 0x84
	typeOutcomes byte = 0x85
)

// Outcome statuses: how a task ended, in REPLY (done or failed) and
// OUTCOMES (all three).
const (
	outcomeDone      byte = 0
	outcomeFailed    byte = 1
	outcomeCancelled byte = 2
)

const (
	// taskVersion is the first protocol version with tasks.
	taskVersion = 2
	// Fixed sizes: a SUBMIT's header without the queue name, one SUBMIT
	// task without its body, one REPLY entry without its body, a REPLY's
	// header, and an OUTCOMES header and entry.
	submitFixedLen   = 1 + 4 + 4 + 1 + 4 // type, id, timeout, str8 length, count
	submitTaskLen    = 8 + 4             // tag, bytes32 length
	replyFixedLen    = 1 + 4 + 4         // type, id, count
	replyEntryLen    = 8 + 1 + 4         // delivery, status, bytes32 length
	withdrawFixedLen = 1 + 4 + 4         // type, id, count
	outcomesFixedLen = 1 + 4             // type, count
	outcomeEntryLen  = 8 + 1 + 4         // tag, status, bytes32 length
)

// submitFrame puts tasks on a queue: items that want a reply, each under
// a tag of the submitter's choosing.
type submitFrame struct {
	ID        uint32
	TimeoutMS uint32
	Queue     string
	Tasks     []task
}

type task struct {
	Tag  uint64
	Body []byte // a slice of the frame's buffer when decoded
}

// replyFrame answers deliveries: each acknowledged, with its result.
type replyFrame struct {
	ID      uint32
	Answers []answer
}

type answer struct {
	Delivery uint64
	Status   byte // outcomeDone or outcomeFailed
	Body     []byte
}

// withdrawFrame takes back submitted tasks no worker has taken yet.
type withdrawFrame struct {
	ID   uint32
	Tags []uint64
}

// outcomesFrame tells a submitter how its tasks ended.
type outcomesFrame struct {
	Outcomes []outcome
}

type outcome struct {
	Tag    uint64
	Status byte
	Body   []byte
}

func appendSubmit(dst []byte, f *submitFrame) []byte {
	dst, start := beginFrame(dst, typeSubmit)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, f.TimeoutMS)
	dst = appendStr8(dst, f.Queue)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Tasks)))
	for _, t := range f.Tasks {
		dst = binary.BigEndian.AppendUint64(dst, t.Tag)
		dst = appendBytes32(dst, t.Body)
	}
	return endFrame(dst, start)
}

func appendReply(dst []byte, f *replyFrame) []byte {
	dst, start := beginFrame(dst, typeReply)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Answers)))
	for _, a := range f.Answers {
		dst = binary.BigEndian.AppendUint64(dst, a.Delivery)
		dst = append(dst, a.Status)
		dst = appendBytes32(dst, a.Body)
	}
	return endFrame(dst, start)
}

func appendWithdraw(dst []byte, f *withdrawFrame) []byte {
	dst, start := beginFrame(dst, typeWithdraw)
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Tags)))
	for _, t := range f.Tags {
		dst = binary.BigEndian.AppendUint64(dst, t)
	}
	return endFrame(dst, start)
}

func appendOutcomes(dst []byte, f *outcomesFrame) []byte {
	dst, start := beginFrame(dst, typeOutcomes)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Outcomes)))
	for _, o := range f.Outcomes {
		dst = binary.BigEndian.AppendUint64(dst, o.Tag)
		dst = append(dst, o.Status)
		dst = appendBytes32(dst, o.Body)
	}
	return endFrame(dst, start)
}

// decodeTaskFrame decodes the frames of this file (decodeFrame's cases
// for their types); ok is false for any other type.
func decodeTaskFrame(typ byte, d *decoder) (f any, ok bool, err error) {
	switch typ {
	case typeSubmit:
		var f submitFrame
		f.ID = d.u32("SUBMIT id")
		f.TimeoutMS = d.u32("SUBMIT timeout")
		f.Queue = d.str8("SUBMIT queue")
		n := d.count(submitTaskLen, "SUBMIT count")
		if n > 0 {
			f.Tasks = make([]task, n)
			for i := range f.Tasks {
				f.Tasks[i].Tag = d.u64("SUBMIT tag")
				f.Tasks[i].Body = d.bytes32("SUBMIT item")
			}
		}
		return &f, true, d.finish("SUBMIT")
	case typeReply:
		var f replyFrame
		f.ID = d.u32("REPLY id")
		n := d.count(replyEntryLen, "REPLY count")
		if n > 0 {
			f.Answers = make([]answer, n)
			for i := range f.Answers {
				f.Answers[i].Delivery = d.u64("REPLY delivery")
				f.Answers[i].Status = d.u8("REPLY status")
				f.Answers[i].Body = d.bytes32("REPLY result")
				if d.err == nil && f.Answers[i].Status > outcomeFailed {
					return &f, true, badFrame("REPLY status %d: 0 (done) or 1 (failed)", f.Answers[i].Status)
				}
			}
		}
		return &f, true, d.finish("REPLY")
	case typeWithdraw:
		var f withdrawFrame
		f.ID = d.u32("WITHDRAW id")
		n := d.count(8, "WITHDRAW count")
		if n > 0 {
			f.Tags = make([]uint64, n)
			for i := range f.Tags {
				f.Tags[i] = d.u64("WITHDRAW tag")
			}
		}
		return &f, true, d.finish("WITHDRAW")
	case typeOutcomes:
		var f outcomesFrame
		n := d.count(outcomeEntryLen, "OUTCOMES count")
		if d.err == nil && n == 0 {
			return &f, true, badFrame("OUTCOMES count is 0")
		}
		f.Outcomes = make([]outcome, n)
		for i := range f.Outcomes {
			f.Outcomes[i].Tag = d.u64("OUTCOMES tag")
			f.Outcomes[i].Status = d.u8("OUTCOMES status")
			f.Outcomes[i].Body = d.bytes32("OUTCOMES result")
			if d.err == nil && f.Outcomes[i].Status > outcomeCancelled {
				return &f, true, badFrame("OUTCOMES status %d: 0 to 2", f.Outcomes[i].Status)
			}
		}
		return &f, true, d.finish("OUTCOMES")
	}
	return nil, false, nil
}
