"""Test helper: put N numbered items ("item-000000", ...) on QUEUE, then print "done N".

    GOTYLEDON_QUEUE_SOCKET=... python3 producer.py QUEUE N [--batch K]
"""
import argparse

from gotyledon_queue import Client

p = argparse.ArgumentParser()
p.add_argument("queue")
p.add_argument("n", type=int)
p.add_argument("--batch", type=int, default=0, help="use put_batch with K items per call")
a = p.parse_args()

with Client.connect(timeout=10) as c:
    print("ready", flush=True)
    items = [b"item-%06d" % i for i in range(a.n)]
    if a.batch > 0:
        for k in range(0, a.n, a.batch):
            assert c.put_batch(a.queue, items[k:k + a.batch], timeout=30) == len(items[k:k + a.batch])
    else:
        for it in items:
            c.put(a.queue, it, timeout=30)
    print("done", a.n, flush=True)
