"""Test helper: the error and redelivery cases of the Python client against a
real broker. Prints "ok NAME" per check; exits non-zero on the first failure.

The broker must have the queues "empty", "small" (capacity 2) and "redo".
    GOTYLEDON_QUEUE_SOCKET=... python3 checks.py
"""
import time

import gotyledon_queue as gq


def expect(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError(f"{fn.__name__}{args!r}: expected {exc.__name__}")


def ok(name):
    print("ok", name, flush=True)


with gq.Client.connect(timeout=10) as c:
    assert c.max_item > 0 and c.max_frame >= c.max_item + 64, (c.max_frame, c.max_item)

    t0 = time.monotonic()
    e = expect(gq.Timeout, c.get, "empty", timeout=0.2)
    took = time.monotonic() - t0
    assert 0.15 <= took < 5, took
    assert e.status == 1
    expect(gq.Timeout, c.get, "empty", timeout=0)
    expect(gq.Timeout, c.get_auto_ack, "empty", timeout=0)
    ok("get-timeout")

    c.try_put("small", b"1")
    c.try_put("small", b"2")
    e = expect(gq.QueueFull, c.try_put, "small", b"3")
    assert e.n == 0
    e = expect(gq.Timeout, c.put, "small", b"3", timeout=0.1)
    assert e.n == 0
    d = c.get("small", timeout=5)
    e = expect(gq.QueueFull, c.put_batch, "small", [b"3", b"4"], timeout=0)
    assert e.n == 1, e.n  # the first one fitted and stays queued
    ds = c.get_batch("small", 10, timeout=5)
    assert [x.body for x in ds] == [b"2", b"3"], ds
    assert c.ack(d, *ds) == 3
    ok("try-put-full")

    c.put("redo", b"again")
    d1 = c.get("redo", timeout=5)
    assert (d1.body, d1.deliveries) == (b"again", 1), d1
    assert d1.nack() == 1
    d2 = c.get("redo", timeout=5)
    assert (d2.body, d2.deliveries) == (b"again", 2), d2
    assert d2.ack() == 1
    e = expect(gq.UnknownDelivery, c.ack, d2)
    assert e.n == 0
    ok("nack-redelivers")

    assert c.put_batch("redo", [b"a", b"b", b"c"]) == 3
    assert c.get_auto_ack("redo", timeout=5) == b"a"
    ds = c.get_batch("redo", 5, timeout=5)
    assert [x.body for x in ds] == [b"b", b"c"], ds
    assert c.ack(*ds) == 2
    ok("batch-and-auto-ack")

    e = expect(gq.NoSuchQueue, c.put, "nope", b"x")
    assert e.status == 3
    expect(gq.NoSuchQueue, c.get, "nope", timeout=0)
    ok("no-such-queue")

    expect(gq.TooLarge, c.put, "redo", b"x" * (c.max_item + 1))  # refused client-side
    ok("too-large-client")
    c.max_item += 1  # lie to ourselves, so that the broker has to refuse it
    e = expect(gq.TooLarge, c.put_batch, "redo", [b"fits", b"x" * c.max_item])
    assert e.status == 4 and e.n == 0, (e.status, e.n)
    c.max_item -= 1
    expect(gq.Timeout, c.get, "redo", timeout=0)  # nothing of that PUT was queued
    ok("too-large-broker")

    c.put("redo", b"still fine")
    assert c.get_auto_ack("redo", timeout=5) == b"still fine"
    ok("connection-usable")

expect(gq.Closed, c.get, "redo", timeout=0)
ok("closed")
print("done", flush=True)
