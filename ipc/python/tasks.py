"""Test helper for tasks: a submitter or a worker.

    GOTYLEDON_QUEUE_SOCKET=... python3 tasks.py submit QUEUE N
    GOTYLEDON_QUEUE_SOCKET=... python3 tasks.py work QUEUE N [--prefetch K]

submit maps N tasks "task-I" over QUEUE and prints each result on a line,
in input order, then "done N"; a failed task prints "failed I MESSAGE"
instead of its result. work answers N tasks: the body in upper case, or,
for a body starting with "bad", a failure "cannot do BODY"; then "done N".
"""
import argparse
import sys

import gotyledon_queue as gq

p = argparse.ArgumentParser()
p.add_argument("role", choices=["submit", "work"])
p.add_argument("queue")
p.add_argument("n", type=int)
p.add_argument("--prefetch", type=int, default=0, help="consume with this prefetch instead of get")
a = p.parse_args()

with gq.Client.connect(timeout=10) as c:
    print("ready", flush=True)
    if a.role == "submit":
        fs = [c.submit(a.queue, f"task-{i}".encode(), timeout=30) for i in range(a.n)]
        done, not_done = gq.wait(fs, timeout=60)
        assert not not_done, f"{len(not_done)} tasks not done"
        for i, f in enumerate(fs):
            try:
                print(f.result(timeout=0).decode())
            except gq.TaskFailed as e:
                print("failed", i, e.message)
        print("done", a.n, flush=True)
        sys.exit(0)
    items = c.consume(a.queue, prefetch=a.prefetch) if a.prefetch else None
    for _ in range(a.n):
        d = items.next(timeout=30) if items else c.get(a.queue, timeout=30)
        assert d.request, f"{d} is not a task"
        if d.body.startswith(b"bad"):
            d.fail("cannot do " + d.body.decode())
        else:
            d.reply(d.body.upper())
    if items:
        items.close()
    print("done", a.n, flush=True)
