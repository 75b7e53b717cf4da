"""Test helper: get and ack N items from QUEUE, printing each body on a line, then "done N".

    GOTYLEDON_QUEUE_SOCKET=... python3 consumer.py QUEUE N [--batch K | --prefetch K] [--auto-ack]
    GOTYLEDON_QUEUE_SOCKET=... python3 consumer.py QUEUE N --hold [--prefetch N]
    GOTYLEDON_QUEUE_SOCKET=... python3 consumer.py QUEUE N --hold --drain --prefetch K

--prefetch consumes (the broker pushes up to K items ahead; acks are queued).
--hold takes N items without acking them, prints "holding DELIVERIES BODY" for
each and then waits forever (the test kills it: the broker must requeue them).
With --drain, it waits instead for a line on stdin, acks the N items, asks
for the next one and prints "draining" if the consume ended Draining (the
test drained it meanwhile), then waits for the end of stdin.
"""
import argparse
import signal
import sys

from gotyledon_queue import Client, Draining

p = argparse.ArgumentParser()
p.add_argument("queue")
p.add_argument("n", type=int)
p.add_argument("--batch", type=int, default=1, help="use get_batch with up to K items per call")
p.add_argument("--prefetch", type=int, default=0, help="consume with this prefetch instead of get")
p.add_argument("--auto-ack", action="store_true")
p.add_argument("--hold", action="store_true")
p.add_argument("--drain", action="store_true")
a = p.parse_args()

out = sys.stdout
with Client.connect(timeout=10) as c:
    print("ready", flush=True)
    if a.hold:
        items = c.consume(a.queue, prefetch=a.prefetch) if a.prefetch else None
        held = []
        for _ in range(a.n):
            d = items.next(timeout=30) if items else c.get(a.queue, timeout=30)
            held.append(d)
            print("holding", d.deliveries, d.body.decode(), flush=True)
        if a.drain:
            sys.stdin.readline()
            # A waited-for ack: its RESULT comes after whatever the broker
            # wrote before it on this connection, the DRAINING that ended
            # the consume among it, so next() cannot hand out an item the
            # drain has taken back.
            assert c.ack(*held) == len(held)
            try:
                d = items.next(timeout=30)
                print("got", d.body.decode(), flush=True)
            except Draining:
                print("draining", flush=True)
            sys.stdin.read()
            sys.exit(0)
        while True:
            signal.pause()
    if a.prefetch:
        got = 0
        for d in c.consume(a.queue, prefetch=a.prefetch):
            out.write(d.body.decode() + "\n")
            d.ack()
            got += 1
            if got == a.n:
                break
        print("done", got, flush=True)
        sys.exit(0)
    got = 0
    while got < a.n:
        if a.auto_ack:
            out.write(c.get_auto_ack(a.queue, timeout=30).decode() + "\n")
            got += 1
            continue
        ds = c.get_batch(a.queue, min(a.batch, a.n - got), timeout=30)
        for d in ds:
            out.write(d.body.decode() + "\n")
        assert c.ack(*ds) == len(ds)
        got += len(ds)
    print("done", got, flush=True)
