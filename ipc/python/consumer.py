"""Test helper: get and ack N items from QUEUE, printing each body on a line, then "done N".

    GOTYLEDON_QUEUE_SOCKET=... python3 consumer.py QUEUE N [--batch K] [--auto-ack]
    GOTYLEDON_QUEUE_SOCKET=... python3 consumer.py QUEUE 1 --hold

--hold takes one item without acking it, prints "holding DELIVERIES BODY" and
then waits forever (the test kills it: the broker must requeue the item).
"""
import argparse
import signal
import sys

from gotyledon_queue import Client

p = argparse.ArgumentParser()
p.add_argument("queue")
p.add_argument("n", type=int)
p.add_argument("--batch", type=int, default=1, help="use get_batch with up to K items per call")
p.add_argument("--auto-ack", action="store_true")
p.add_argument("--hold", action="store_true")
a = p.parse_args()

out = sys.stdout
with Client.connect(timeout=10) as c:
    print("ready", flush=True)
    if a.hold:
        d = c.get(a.queue, timeout=30)
        print("holding", d.deliveries, d.body.decode(), flush=True)
        while True:
            signal.pause()
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
