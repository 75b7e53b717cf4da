"""Client for the gotyledon queue broker, protocol version 2 (see ../PROTOCOL.md).

Standard library only, Python 3.9+.

    from gotyledon_queue import Client, Timeout

    with Client.connect() as c:              # path from $GOTYLEDON_QUEUE_SOCKET
        c.put("jobs", b"hello")
        d = c.get("jobs", timeout=5)          # raises Timeout if nothing comes
        handle(d.body)
        d.ack()                               # or d.nack(): delivered again

A worker that handles items one at a time consumes, so that it does not wait
a round trip for each: the broker pushes up to `prefetch` items ahead, and
acks are sent together, without waiting for the broker's answer:

    with Client.connect() as c:
        for d in c.consume("jobs", prefetch=64):
            handle(d.body)
            d.ack()                           # queued; sent with others

A worker of a service with `ready: notify` says when it is ready, and may
set a status line:

    import gotyledon_queue as gq
    gq.status("loading the model")
    ...
    gq.ready()

A submitter puts tasks, items that want a result, and waits for their
outcomes (the shape of concurrent.futures, across processes):

    with Client.connect() as c:
        f = c.submit("compute", b"2+2")     # a Future
        print(f.result(timeout=10))          # b"4"; raises TaskFailed if the worker failed it
        print(c.map("compute", [b"1+1", b"3+3"]))   # results in input order
        done, not_done = gq.wait(futures, timeout=5, return_when=gq.FIRST_COMPLETED)

and a worker answers them (d.request is True for a task):

        for d in c.consume("compute"):
            d.reply(str(eval_sum(d.body)).encode())   # or d.fail("why")

Timeouts are in seconds: None waits without limit, 0 does not wait at all.
The client sends one request at a time (calls from several threads are
serialised); replies are matched to requests by id all the same. It sends
CANCEL only to end a consume: a call interrupted while it waits (e.g. by
Ctrl-C) closes the connection instead, which gives its in-flight items back
to the broker.
"""

import copy
import itertools
import math
import os
import select
import socket
import struct
import sys
import threading
import time

__all__ = [
    "Client", "Consumer", "Delivery", "QueueError", "Timeout", "QueueFull", "NoSuchQueue",
    "TooLarge", "UnknownDelivery", "ProtocolError", "Refused", "ShuttingDown",
    "Cancelled", "Closed", "Unsupported", "Draining", "TaskFailed", "Future", "wait", "FIRST_COMPLETED",
    "ALL_COMPLETED", "ENV_SOCKET",
]

ENV_SOCKET = "GOTYLEDON_QUEUE_SOCKET"
MAGIC, VERSION, WAIT_FOREVER = b"GTYQ", 2, 0xFFFFFFFF
HELLO, PUT, GET, ACK, NACK, CANCEL, CONSUME = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
SUBMIT, REPLY, WITHDRAW = 0x08, 0x09, 0x0A
WELCOME, RESULT, ITEMS, REQUESTS, OUTCOMES, FATAL = 0x81, 0x82, 0x83, 0x84, 0x85, 0xFF
DONE, FAILED, CANCELLED = 0, 1, 2  # outcome statuses
STATUS_NAMES = ["OK", "TIMEOUT", "FULL", "NO_SUCH_QUEUE", "TOO_LARGE", "UNKNOWN_DELIVERY",
                "BAD_FRAME", "BAD_HELLO", "REFUSED", "SHUTTING_DOWN", "CANCELLED", "UNSUPPORTED", "DRAINING"]
FIRST_COMPLETED, ALL_COMPLETED = "FIRST_COMPLETED", "ALL_COMPLETED"


# ---- errors: one class per status code (QueueError.status), plus Closed

class QueueError(Exception):
    """Base class. .status: the protocol status code (None if the error is the
    client's own); .message: the broker's message; .n: the reply's n (for a
    PUT, the items accepted and queued before it failed)."""
    status = None

    def __init__(self, message="", status=None, n=0):
        if status is not None:
            self.status = status
        self.message, self.n = message, n
        s = self.status
        name = STATUS_NAMES[s] if s is not None and s < len(STATUS_NAMES) else s
        super().__init__(f"{name}: {message}" if name is not None and message else message or name)

class Timeout(QueueError): status = 1          # nothing (GET) or not everything (PUT) in time
class QueueFull(QueueError): status = 2        # try_put (no wait) on a full queue
class NoSuchQueue(QueueError): status = 3      # the queue is not configured
class TooLarge(QueueError): status = 4         # item longer than max_item; nothing queued
class UnknownDelivery(QueueError): status = 5  # ack/nack of deliveries not ours in flight
class ProtocolError(QueueError): status = 6    # BAD_FRAME/BAD_HELLO, or a broker frame we cannot parse
class Refused(QueueError): status = 8          # FATAL: this uid/gid may not use the broker
class ShuttingDown(QueueError): status = 9     # the broker is stopping
class Cancelled(QueueError): status = 10       # the request was withdrawn by CANCEL; a task withdrawn
class Unsupported(QueueError): status = 11     # the queue cannot carry tasks (kept in JetStream)
class Draining(QueueError):
    """The manager drains this worker before it stops it (recycling): get()
    and a consumer's next() take no more items. Not a failure: ack (or nack)
    the items you hold, then wait for the stop signal (SIGTERM)."""
    status = 12
class Closed(QueueError):
    """The client was closed or the connection is gone; .message keeps the
    broker's FATAL message if it sent one."""

_ERRORS = {c.status: c for c in (Timeout, QueueFull, NoSuchQueue, TooLarge, UnknownDelivery,
                                  Refused, ShuttingDown, Cancelled, Draining)}
_ERRORS[7] = ProtocolError


def error_for(status, message="", n=0):
    """The exception for a status code (ProtocolError for codes we do not know)."""
    return _ERRORS.get(status, ProtocolError)(message, status, n)


# ---- encoding (module level so it can be checked byte for byte, see test_gotyledon_queue.py)

def _frame(ftype, body):
    return struct.pack(">IB", len(body) + 1, ftype) + body

def _str8(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(b) > 255:
        raise ValueError(f"name longer than 255 bytes: {b[:32]!r}...")
    return bytes([len(b)]) + b

def encode_hello(client, version=VERSION):
    return _frame(HELLO, MAGIC + struct.pack(">H", version) + _str8(client))

def encode_put(rid, timeout_ms, queue, items):
    parts = [struct.pack(">II", rid, timeout_ms), _str8(queue), struct.pack(">I", len(items))]
    for it in items:
        parts += [struct.pack(">I", len(it)), it]
    return _frame(PUT, b"".join(parts))

def encode_get(rid, timeout_ms, queue, max_items=1, auto_ack=False):
    return _frame(GET, struct.pack(">II", rid, timeout_ms) + _str8(queue)
                  + struct.pack(">IB", max_items, 1 if auto_ack else 0))

def encode_ack(rid, ids, nack=False):
    return _frame(NACK if nack else ACK, struct.pack(f">II{len(ids)}Q", rid, len(ids), *ids))

def encode_cancel(rid):
    return _frame(CANCEL, struct.pack(">I", rid))

def encode_consume(rid, queue, prefetch):
    return _frame(CONSUME, struct.pack(">I", rid) + _str8(queue) + struct.pack(">IB", prefetch, 0))

def encode_submit(rid, timeout_ms, queue, tasks):
    """tasks: [(tag, payload), ...]"""
    parts = [struct.pack(">II", rid, timeout_ms), _str8(queue), struct.pack(">I", len(tasks))]
    for tag, body in tasks:
        parts += [struct.pack(">QI", tag, len(body)), body]
    return _frame(SUBMIT, b"".join(parts))

def encode_reply(rid, answers):
    """answers: [(delivery, status DONE or FAILED, result), ...]"""
    parts = [struct.pack(">II", rid, len(answers))]
    for delivery, status, body in answers:
        parts += [struct.pack(">QBI", delivery, status, len(body)), body]
    return _frame(REPLY, b"".join(parts))

def encode_withdraw(rid, tags):
    return _frame(WITHDRAW, struct.pack(f">II{len(tags)}Q", rid, len(tags), *tags))

def decode(ftype, body):
    """Decode the body of a broker frame into a tuple:
    ("WELCOME", version, max_frame, max_item) | ("RESULT", id, status, n, message)
    | ("ITEMS", id, [(delivery, deliveries, item), ...]) | ("REQUESTS", id, [the same])
    | ("OUTCOMES", None, [(tag, status, result), ...]) | ("FATAL", status, message)."""
    try:
        if ftype == WELCOME:
            out, off = ("WELCOME",) + struct.unpack_from(">HII", body), 10
        elif ftype == RESULT:
            rid, status, n, ln = struct.unpack_from(">IHIB", body)
            out, off = ("RESULT", rid, status, n, body[11:11 + ln].decode("utf-8", "replace")), 11 + ln
        elif ftype == FATAL:
            status, ln = struct.unpack_from(">HB", body)
            out, off = ("FATAL", status, body[3:3 + ln].decode("utf-8", "replace")), 3 + ln
        elif ftype in (ITEMS, REQUESTS):
            rid, count = struct.unpack_from(">II", body)
            items, off = [], 8
            for _ in range(count):
                delivery, deliveries, ln = struct.unpack_from(">QII", body, off)
                items.append((delivery, deliveries, bytes(body[off + 16:off + 16 + ln])))
                off += 16 + ln
            out = ("ITEMS" if ftype == ITEMS else "REQUESTS", rid, items)
        elif ftype == OUTCOMES:
            count, = struct.unpack_from(">I", body)
            outcomes, off = [], 4
            for _ in range(count):
                tag, status, ln = struct.unpack_from(">QBI", body, off)
                outcomes.append((tag, status, bytes(body[off + 13:off + 13 + ln])))
                off += 13 + ln
            out = ("OUTCOMES", None, outcomes)
        else:
            raise ProtocolError(f"unknown frame type 0x{ftype:02x} from the broker")
    except struct.error as e:
        raise ProtocolError(f"short frame 0x{ftype:02x} from the broker: {e}") from None
    if off != len(body):
        raise ProtocolError(f"frame 0x{ftype:02x} from the broker: {len(body) - off} bytes too many or too few")
    return out


def _timeout_ms(timeout):
    """Seconds (None = forever) -> timeout_ms."""
    if timeout is None:
        return WAIT_FOREVER
    if timeout <= 0:
        return 0
    return min(max(1, math.ceil(timeout * 1000)), WAIT_FOREVER - 1)


class Delivery:
    """An item handed out by get() or a Consumer: .queue, .id (delivery id; 0
    if auto-acked), .deliveries (1 the first time), .body (bytes), .request
    (True for a task, whose submitter waits for its outcome). Ack or nack
    it exactly once, or answer a task with reply() or fail(): a get()'s
    waits for the broker's answer, a Consumer's is queued and sent with
    others."""
    __slots__ = ("queue", "id", "deliveries", "body", "request", "_client", "_consumer")

    def __init__(self, client, queue, id, deliveries, body, consumer=None, request=False):
        self._client, self.queue, self.id, self.deliveries, self.body = client, queue, id, deliveries, body
        self._consumer, self.request = consumer, request

    def reply(self, result=b""):
        """Answer the task with result (bytes): it is acknowledged, and its
        submitter's Future returns result. An item that is not a task is
        only acknowledged."""
        return self._answer(DONE, bytes(result))

    def fail(self, message="failed"):
        """Answer the task as failed: its submitter's Future raises
        TaskFailed(message). An item that is not a task is only acknowledged."""
        return self._answer(FAILED, str(message).encode("utf-8"))

    def _answer(self, status, body):
        if not self.request:
            return self.ack()
        if self._consumer is not None:
            return self._consumer._answer(self, status, body)
        return self._client._reply([(self.id, status, body)])

    def ack(self):
        """Done with the item: the broker forgets it."""
        if self._consumer is not None:
            return self._consumer.ack(self)
        return self._client.ack(self)

    def nack(self):
        """Give the item back: it goes to the head of its queue, to be delivered again."""
        if self._consumer is not None:
            return self._consumer.nack(self)
        return self._client.nack(self)

    def __repr__(self):
        return f"Delivery(queue={self.queue!r}, id={self.id}, deliveries={self.deliveries}, body={self.body[:40]!r})"


class Consumer:
    """Items the broker pushes for one consume() (see Client.consume): at most
    `prefetch` of them unacknowledged at any time. Iterate over it, or call
    next(timeout). ack()/nack() queue acknowledgements, sent together: when
    ACK_BATCH are queued, and before next() reads from the socket or hands
    out an item more than ACK_DELAY seconds after the oldest was queued."""

    ACK_BATCH = 256
    ACK_DELAY = 0.005

    def __init__(self, client, rid, queue, prefetch):
        self._client, self._rid, self.queue, self.prefetch = client, rid, queue, prefetch
        self._items = []       # pushed, not handed out yet (oldest first)
        self._ended = None     # why the broker ended the consume
        self._closed = False
        self._acks, self._nacks, self._answers, self._since = [], [], [], None

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.next()
        except (Cancelled, Closed):
            if self._closed:
                raise StopIteration from None
            raise

    def next(self, timeout=None):
        """The next pushed item, waiting up to timeout s (None: no limit).
        Raises Timeout, Cancelled after close(), Closed, or the broker's
        reason for ending the consume (NoSuchQueue, ShuttingDown, or
        Draining: the items pushed and not handed out have gone back to the
        queue; those handed out are still yours to ack)."""
        c = self._client
        deadline = None if timeout is None else time.monotonic() + timeout
        with c._lock:
            while True:
                if self._items:
                    # What came meanwhile, without waiting (one select): a
                    # drain ends the consume, and the pushed items go back
                    # rather than out.
                    c._pump_ready()
                if self._items and not (self._since and time.monotonic() - self._since > self.ACK_DELAY):
                    return self._items.pop(0)
                self._flush_locked()
                if self._items:
                    return self._items.pop(0)
                if self._ended is not None:
                    raise copy.copy(self._ended)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"nothing pushed from {self.queue!r} within {timeout} s")
                c._pump(left)

    def ack(self, *deliveries):
        """Queue the acknowledgement of deliveries next() handed out."""
        self._queue(self._acks, deliveries)

    def nack(self, *deliveries):
        """Queue deliveries to go back to the head of the queue."""
        self._queue(self._nacks, deliveries)

    def close(self):
        """End the consume: the broker pushes no more, and items pushed but not
        handed out go back to the queue. Items next() handed out stay ours
        until acked. Safe twice."""
        c = self._client
        with c._lock:
            if self._closed:
                return
            self._closed = True
            if self._ended is None:
                self._ended = Cancelled("consumer closed")
            self._nacks += [d.id for d in self._items]
            self._items = []
            if c._closed is not None:
                return
            try:
                self._flush_locked()
                c._sock.sendall(encode_cancel(self._rid))
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _queue(self, into, deliveries):
        c = self._client
        with c._lock:
            into += [d.id if isinstance(d, Delivery) else int(d) for d in deliveries]
            if self._since is None:
                self._since = time.monotonic()
            if len(self._acks) + len(self._nacks) + len(self._answers) >= self.ACK_BATCH:
                self._flush_locked()

    def _answer(self, d, status, body):
        c = self._client
        if len(body) > c.max_item:
            raise TooLarge(f"result of {len(body)} bytes, max_item is {c.max_item}")
        with c._lock:
            self._answers.append((d.id, status, body))
            if self._since is None:
                self._since = time.monotonic()
            if len(self._acks) + len(self._nacks) + len(self._answers) >= self.ACK_BATCH:
                self._flush_locked()

    def _flush_locked(self):
        """Send what is queued (NACKs first), not waiting for the answers."""
        c = self._client
        self._since = None
        if c._closed is not None:
            self._acks, self._nacks, self._answers = [], [], []
            return
        per_frame = (c.max_frame - 9) // 8
        frames = []
        for ids, nack in ((self._nacks, True), (self._acks, False)):
            for k in range(0, len(ids), per_frame):
                rid = c._new_id()
                c._async.add(rid)
                frames.append(encode_ack(rid, ids[k:k + per_frame], nack))
        for chunk in c._reply_chunks(self._answers):
            rid = c._new_id()
            c._async.add(rid)
            frames.append(encode_reply(rid, chunk))
        self._acks, self._nacks, self._answers = [], [], []
        if frames:
            c._send(b"".join(frames))
        if c._ack_error is not None:
            err, c._ack_error = c._ack_error, None
            raise err

    def _push(self, items, request=False):
        ds = [Delivery(self._client, self.queue, d, n, body, self, request) for d, n, body in items]
        if self._closed:
            self._nacks += [d.id for d in ds]
        else:
            self._items += ds


class TaskFailed(QueueError):
    """A task's worker failed it (Delivery.fail): .message is the worker's;
    .index, in map(), is the failed input's."""
    index = None


class Future:
    """The outcome, still to come, of a task Client.submit() put on a queue."""

    def __init__(self, client, queue, tag):
        self._client, self.queue, self._tag = client, queue, tag
        self._done, self._result, self._error = False, None, None

    def _set(self, result, error):
        self._done, self._result, self._error = True, result, error

    def done(self):
        """True once the outcome is known (this reads nothing from the socket)."""
        return self._done

    def result(self, timeout=None):
        """The worker's result (bytes), waiting up to timeout s; raises
        TaskFailed if the worker failed the task, Cancelled if it was
        withdrawn, Closed if the connection ended first, Timeout."""
        wait([self], timeout)
        if not self._done:
            raise Timeout(f"task on {self.queue!r} not done within {timeout} s")
        if self._error is not None:
            raise copy.copy(self._error)
        return self._result

    def cancel(self):
        """Withdraw the task if no worker has taken it yet: True, and result()
        raises Cancelled. A task a worker has taken runs on: False."""
        if self._done:
            return False
        return self._client._withdraw([self._tag]) == 1

    def __repr__(self):
        return f"Future(queue={self.queue!r}, done={self._done})"


def wait(futures, timeout=None, return_when=ALL_COMPLETED):
    """Wait up to timeout s for futures (of one Client) to be done: all of
    them, or with return_when=FIRST_COMPLETED one of them. Returns (done,
    not_done), two sets, as concurrent.futures.wait does."""
    futures = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    clients = {id(f._client): f._client for f in futures}
    if len(clients) > 1:
        raise ValueError("wait() of futures of several clients")

    def split():
        done = {f for f in futures if f._done}
        return done, set(futures) - done

    for c in clients.values():
        with c._lock:
            while True:
                done, not_done = split()
                if not not_done or (return_when == FIRST_COMPLETED and done):
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    c._pump(left)
                except Timeout:
                    break
    return split()


def notify(state):
    """Send state, sd_notify's KEY=VALUE lines, to $NOTIFY_SOCKET in one datagram.

    A worker of a `ready: notify` service gets a notify socket of its own;
    the manager reads READY=1 and STATUS= on it. Returns False, sending
    nothing, when there is no notify socket.
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), path)
    return True


def ready():
    """Tell the manager this worker is ready (READY=1): see notify."""
    return notify("READY=1")


def status(text):
    """Set this worker's one-line status, shown by `gotyledon status --json`."""
    return notify("STATUS=" + text)


class Client:
    """A connection to the broker. Use Client.connect(); close() when done
    (or use it as a context manager). If the connection goes away (closed,
    broker stopped, or a call interrupted, e.g. by Ctrl-C), items still in
    flight return to their queues and every later call raises Closed."""

    def __init__(self, sock):
        self._sock, self._buf = sock, bytearray()  # _buf: bytes received, not yet read as frames
        self._lock, self._ids, self._closed = threading.RLock(), itertools.count(1), None
        self._consumers = {}   # consume id -> Consumer, until the broker ends it
        self._async = set()    # ids of acks sent without waiting for their RESULT
        self._ack_error = None
        self._tasks = {}       # tag -> Future of a task not yet answered
        self._tags = itertools.count(1)
        self.max_frame = 1 << 20  # until WELCOME says
        self.max_item = 0
        self.version = VERSION

    @classmethod
    def connect(cls, path=None, timeout=None, name=None, version=VERSION):
        """Connect to the broker at path (default $GOTYLEDON_QUEUE_SOCKET) and
        shake hands, within timeout seconds (None: no limit), speaking
        protocol version (2: tasks; 1: items only). Raises Closed if it
        cannot connect, Timeout, Refused or ProtocolError."""
        path = path or os.environ.get(ENV_SOCKET)
        if not path:
            raise Closed(f"no socket path given and ${ENV_SOCKET} is not set")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            c = cls(sock)
            name = name or f"python:{os.path.basename(sys.argv[0] or 'python')}:{os.getpid()}"
            sock.sendall(encode_hello(name.encode("utf-8")[:255].decode("utf-8", "ignore"), version))
            reply = c._read()
            if reply[0] != "WELCOME":
                raise ProtocolError(f"expected WELCOME, got {reply[0]}")
            _, c.version, c.max_frame, c.max_item = reply
            if c.version != version:
                raise ProtocolError(f"broker speaks version {c.version}, we asked for {version}")
            sock.settimeout(None)
            return c
        except socket.timeout:
            sock.close()
            raise Timeout(f"connecting to {path}: no WELCOME within {timeout} s") from None
        except OSError as e:
            sock.close()
            raise Closed(f"cannot connect to {path}: {e}") from e
        except BaseException:
            sock.close()
            raise

    def close(self):
        """Close the connection (safe twice, and from another thread: a call
        waiting in it raises Closed). Acknowledgements consumers queued are
        sent first; the broker requeues our unacked items."""
        if self._closed is None and self._lock.acquire(timeout=1):
            try:
                for s in list(self._consumers.values()):
                    try:
                        s._flush_locked()
                    except QueueError:
                        pass
            finally:
                self._lock.release()
        if self._closed is None:
            self._closed = Closed("client closed")
        tasks, self._tasks = self._tasks, {}
        for f in tasks.values():
            f._set(None, copy.copy(self._closed))
        for step in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close):
            try:
                step()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the calls

    def put(self, queue, item, timeout=None):
        """Append item (bytes) to queue, waiting up to timeout s while it is full.
        Raises Timeout, QueueFull (timeout 0), NoSuchQueue, TooLarge."""
        self.put_batch(queue, [item], timeout)

    def try_put(self, queue, item):
        """put() without waiting: raises QueueFull if the queue is full."""
        self.put_batch(queue, [item], 0)

    def put_batch(self, queue, items, timeout=None):
        """Append items, in order, waiting up to timeout s in all for room.
        Returns the number accepted (all); on error the exception's .n says
        how many were accepted (the first .n, which stay queued). A batch
        larger than a frame is sent as several PUTs."""
        items = [it if isinstance(it, bytes) else bytes(it) for it in items]
        for it in items:
            if len(it) > self.max_item:
                raise TooLarge(f"item of {len(it)} bytes, max_item is {self.max_item}")
        qlen = len(_str8(queue))
        deadline = None if timeout is None else time.monotonic() + timeout
        accepted, i = 0, 0
        while i < len(items):
            j, size = i, 1 + 8 + qlen + 4  # PUT frame length so far
            while j < len(items) and size + 4 + len(items[j]) <= self.max_frame:
                size += 4 + len(items[j])
                j += 1
            if j == i:
                raise TooLarge(f"item of {len(items[i])} bytes and queue name {queue!r} "
                               f"do not fit in a frame of {self.max_frame} bytes", n=accepted)
            if i == 0 or deadline is None or timeout <= 0:
                ms = _timeout_ms(timeout)
            else:  # later frames get what is left of the timeout
                ms = max(1, _timeout_ms(deadline - time.monotonic()))
            rid = self._new_id()
            accepted += self._result(self._request(rid, encode_put(rid, ms, queue, items[i:j])), accepted)
            i = j
        return accepted

    def get(self, queue, timeout=None):
        """Take one item, waiting up to timeout s for it: a Delivery to ack() or
        nack(). Raises Timeout, NoSuchQueue."""
        return self.get_batch(queue, 1, timeout)[0]

    def get_batch(self, queue, max, timeout=None):
        """Take 1..max items (a list of Delivery), waiting up to timeout s for the first only."""
        return self._get(queue, max, timeout, False)

    def get_auto_ack(self, queue, timeout=None):
        """Take one item that needs no ack (gone from the broker once sent:
        at most once). Returns its bytes."""
        return self._get(queue, 1, timeout, True)[0].body

    def consume(self, queue, prefetch=64):
        """Have the broker push the items of queue to this connection as they
        come, at most prefetch (1 to 65536) of them unacknowledged: a Consumer
        to iterate over. Does not wait for the broker; a queue that does not
        exist makes the first next() raise NoSuchQueue."""
        if not 1 <= prefetch <= 65536:
            raise ValueError("prefetch must be 1 to 65536")
        rid = self._new_id()
        s = Consumer(self, rid, queue, prefetch)
        with self._lock:
            self._consumers[rid] = s
            try:
                self._send(encode_consume(rid, queue, prefetch))
            except BaseException:
                del self._consumers[rid]
                raise
        return s

    def ack(self, *deliveries):
        """End deliveries (Delivery objects or ids). Returns how many the broker
        found; raises UnknownDelivery (with .n) if some were not ours."""
        return self._ack(deliveries, False)

    def nack(self, *deliveries):
        """Give deliveries back to the head of their queues, to be delivered again."""
        return self._ack(deliveries, True)

    # ---- tasks

    def submit(self, queue, payload, timeout=None):
        """Put a task on queue: payload (bytes) is its item, and a worker's
        reply (Delivery.reply, Delivery.fail) is its outcome. Waits up to
        timeout s for room while the queue is full, and returns a Future once
        the broker has queued the task. Its outcome comes to this connection
        only: if it closes first, the tasks still queued are withdrawn."""
        return self._submit(queue, [payload], timeout)[0]

    def map(self, queue, inputs, timeout=None):
        """Submit a task for each of inputs and wait, up to timeout s in all,
        for their outcomes: their results, in input order. A failed task
        raises its TaskFailed (with .index, its input's) once all are in; on
        Timeout the tasks no worker has taken yet are withdrawn."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fs = self._submit(queue, inputs, timeout)
        try:
            done, not_done = wait(fs, None if deadline is None else max(deadline - time.monotonic(), 0))
            if not_done:
                raise Timeout(f"{len(not_done)} of {len(fs)} tasks on {queue!r} not done within {timeout} s")
        except BaseException:
            self._abandon(fs)
            raise
        results = []
        for i, f in enumerate(fs):
            if f._error is not None:
                err = copy.copy(f._error)
                err.index = i
                raise err
            results.append(f._result)
        return results

    def _submit(self, queue, inputs, timeout):
        if self.version < 2:
            raise Unsupported("tasks need protocol version 2; this client said version 1")
        inputs = [p if isinstance(p, bytes) else bytes(p) for p in inputs]
        for p in inputs:
            if len(p) > self.max_item:
                raise TooLarge(f"task of {len(p)} bytes, max_item is {self.max_item}")
        qlen = len(_str8(queue))
        deadline = None if timeout is None else time.monotonic() + timeout
        fs, i = [], 0
        while i < len(inputs):
            j, size = i, 1 + 8 + qlen + 4  # SUBMIT frame length so far
            while j < len(inputs) and (j == i or size + 12 + len(inputs[j]) <= self.max_frame):
                size += 12 + len(inputs[j])
                j += 1
            if i == 0 or deadline is None or timeout <= 0:
                ms = _timeout_ms(timeout)
            else:
                ms = max(1, _timeout_ms(deadline - time.monotonic()))
            with self._lock:
                batch = [Future(self, queue, next(self._tags)) for _ in range(i, j)]
                for f in batch:  # before the SUBMIT: an outcome may come before its RESULT
                    self._tasks[f._tag] = f
                rid = self._new_id()
                try:
                    reply = self._request(rid, encode_submit(rid, ms, queue, [(f._tag, inputs[i + k]) for k, f in enumerate(batch)]))
                    n = self._result(reply)
                except QueueError as e:
                    for f in batch[e.n:]:
                        self._tasks.pop(f._tag, None)
                    self._abandon(fs + batch[:e.n])
                    raise
                except BaseException:
                    for f in batch:
                        self._tasks.pop(f._tag, None)
                    raise
            fs += batch[:n]
            i = j
        return fs

    def _abandon(self, fs):
        """Withdraw what can be of fs, whose caller gives up on them."""
        tags = [f._tag for f in fs if not f._done]
        if not tags or self._closed is not None:
            return
        try:
            self._withdraw(tags)
        except QueueError:
            pass
        with self._lock:
            for f in fs:
                self._tasks.pop(f._tag, None)

    def _withdraw(self, tags):
        per_frame = (self.max_frame - 9) // 8
        n = 0
        for k in range(0, len(tags), per_frame):
            rid = self._new_id()
            n += self._result(self._request(rid, encode_withdraw(rid, tags[k:k + per_frame])))
        return n

    def _reply_chunks(self, answers):
        """answers in as few REPLY frames as max_frame allows."""
        i = 0
        while i < len(answers):
            j, size = i, 9
            while j < len(answers) and (j == i or size + 13 + len(answers[j][2]) <= self.max_frame):
                size += 13 + len(answers[j][2])
                j += 1
            yield answers[i:j]
            i = j

    def _reply(self, answers):
        found = 0
        for chunk in self._reply_chunks(answers):
            for _, _, body in chunk:
                if len(body) > self.max_item:
                    raise TooLarge(f"result of {len(body)} bytes, max_item is {self.max_item}")
            rid = self._new_id()
            found += self._result(self._request(rid, encode_reply(rid, chunk)), found)
        return found

    # ---- internals

    def _get(self, queue, max_items, timeout, auto_ack):
        if not 1 <= max_items <= 0xFFFFFFFF:
            raise ValueError("max must be at least 1")
        rid = self._new_id()
        reply = self._request(rid, encode_get(rid, _timeout_ms(timeout), queue, max_items, auto_ack))
        if reply[0] == "RESULT":
            self._result(reply)
            raise ProtocolError("RESULT OK for a GET")
        request = reply[0] == "REQUESTS" and not auto_ack
        return [Delivery(self, queue, d, n, body, None, request) for d, n, body in reply[2]]

    def _ack(self, deliveries, nack):
        ids = [d.id if isinstance(d, Delivery) else int(d) for d in deliveries]
        per_frame = (self.max_frame - 9) // 8
        found = 0
        for k in range(0, len(ids), per_frame):
            rid = self._new_id()
            found += self._result(self._request(rid, encode_ack(rid, ids[k:k + per_frame], nack)), found)
        return found

    def _result(self, reply, before=0):
        """n of a RESULT OK; otherwise raise its error (with .n counting `before`)."""
        if reply[0] != "RESULT":
            raise ProtocolError(f"unexpected {reply[0]} reply")
        _, _, status, n, message = reply
        if status != 0:
            raise error_for(status, message, before + n)
        return n

    def _new_id(self):
        return next(self._ids) & 0xFFFFFFFF or 1  # never 0: stray NACKs use id 0

    def _request(self, rid, frame):
        """Send one request, return its reply (a decode() tuple)."""
        with self._lock:
            if len(frame) - 4 > self.max_frame:
                raise TooLarge(f"request of {len(frame) - 4} bytes, max_frame is {self.max_frame}")
            self._send(frame)
            while True:
                reply = self._io(self._read)
                if reply[1] == rid:
                    return reply
                self._route(reply)

    def _send(self, frame):
        """Write frames; the caller holds the lock."""
        if self._closed is not None:
            raise copy.copy(self._closed)
        self._io(lambda: self._sock.sendall(frame))

    def _pump(self, timeout):
        """Read and route one frame, waiting up to timeout s (None: no limit)
        for it to begin; the caller holds the lock. Raises Timeout if nothing
        came."""
        if self._closed is not None:
            raise copy.copy(self._closed)
        if timeout is not None and not self._buf:
            try:
                ready, _, _ = select.select([self._sock], [], [], max(timeout, 0))
            except (OSError, ValueError) as e:
                self._lost(e)
            if not ready:
                raise Timeout(f"nothing from the broker within {timeout} s")
        self._route(self._io(self._read))

    def _pump_ready(self):
        """Read and route the frames that have come, without waiting for
        more; the caller holds the lock."""
        while self._closed is None:
            if not self._buf:
                try:
                    ready, _, _ = select.select([self._sock], [], [], 0)
                except (OSError, ValueError) as e:
                    self._lost(e)
                if not ready:
                    return
            self._route(self._io(self._read))

    def _route(self, reply):
        """Take a frame that is not the reply a caller waits for: a consume's
        pushed items or end, an answer to an ack sent without waiting, or
        ITEMS nobody waits for any more (given back)."""
        if reply[0] == "OUTCOMES":
            for tag, status, body in reply[2]:
                f = self._tasks.pop(tag, None)
                if f is None:
                    continue  # abandoned
                if status == DONE:
                    f._set(body, None)
                elif status == FAILED:
                    f._set(None, TaskFailed(body.decode("utf-8", "replace")))
                else:
                    f._set(None, Cancelled("task withdrawn"))
            return
        rid = reply[1]
        s = self._consumers.get(rid)
        if s is not None:
            if reply[0] in ("ITEMS", "REQUESTS"):
                s._push(reply[2], reply[0] == "REQUESTS")
            else:
                del self._consumers[rid]
                if s._ended is None or s._closed:
                    s._ended = error_for(reply[2], reply[4], reply[3]) if reply[2] else Closed("consume ended")
                if reply[2] == Draining.status and s._items:
                    # Drained: what was pushed and not handed out goes back
                    # at once, for other workers.
                    ids = [d.id for d in s._items]
                    s._items = []
                    self._io(lambda: self._sock.sendall(encode_ack(0, ids, nack=True)))
            return
        if rid in self._async:
            self._async.discard(rid)
            if reply[0] == "RESULT" and reply[2] != 0 and self._ack_error is None:
                self._ack_error = error_for(reply[2], reply[4], reply[3])
            return
        if reply[0] in ("ITEMS", "REQUESTS"):  # a reply nobody waits for: give the items back
            ids = [d for d, _, _ in reply[2] if d]
            if ids:
                self._io(lambda: self._sock.sendall(encode_ack(0, ids, nack=True)))

    def _io(self, fn):
        """Run an I/O step: a lost stream closes the client."""
        try:
            return fn()
        except QueueError:
            raise
        except BaseException as e:  # I/O error, or interrupted mid-frame: the stream is lost
            self._lost(e)

    def _lost(self, e):
        """The stream is lost: close the client and raise Closed (or e itself
        if it is not an I/O error, e.g. KeyboardInterrupt)."""
        if self._closed is None:
            self._closed = Closed(f"connection lost: {e!r}")
        self.close()
        if isinstance(e, (OSError, ValueError)):  # ValueError: a closed socket
            raise copy.copy(self._closed) from e
        raise e

    def _recv(self, n):
        """n bytes from the stream (fewer only at its end)."""
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                break
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read(self):
        """Read and decode one frame; FATAL, EOF or a bad frame close the client and raise."""
        head = self._recv(5)
        err = self._closed or Closed("connection closed by the broker")
        if len(head) == 5:
            length, ftype = struct.unpack(">IB", head)
            body = self._recv(length - 1) if 1 <= length <= self.max_frame else None
            if body is None:
                err = ProtocolError(f"frame of {length} bytes from the broker")
            elif len(body) == length - 1:
                try:
                    reply = decode(ftype, body)
                except ProtocolError as e:
                    reply, err = ("BAD",), e
                if reply[0] not in ("FATAL", "BAD"):
                    return reply
                if reply[0] == "FATAL":
                    err = error_for(reply[1], reply[2])
                    self._closed = Closed(f"closed by the broker: {err}")
                    self._closed.message = reply[2]  # the FATAL message, kept
        if self._closed is None:
            self._closed = err if isinstance(err, Closed) else Closed(f"connection closed after: {err}")
        self.close()
        raise copy.copy(err) if err is self._closed else err
