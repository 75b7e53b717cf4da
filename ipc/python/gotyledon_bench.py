"""The shape of manager_queue_bench.py against a gotyledon broker, with the
Python client: 1 producer process, 2 consumer processes, 100-byte items, N
items, get + ack (at least once), or get_auto_ack with --auto-ack (at most
once, as Manager().Queue() is). Prints items/s and put-to-get latency.
With --sync, 1 producer and 1 consumer in lockstep, as manager_queue_bench.py
--sync: put, then get, then ack, each call awaited with nothing else in
flight; prints items/s and the calls' mean round trip.

The queue must exist on the broker at --socket. The cross-process benchmark
(BenchmarkQueueProcesses/python/..., ipc/process_bench_test.go) runs this
against a real manager; an in-process broker is started by:
GOTYLEDON_PY_BENCH=1 go test -run PythonBench -v ./ipc/

    python3 gotyledon_bench.py --socket PATH --queue bench --n 100000 [--batch 64 | --sync] [--runs 5]
"""
import argparse
import struct
import time

from gotyledon_queue import Client
from manager_queue_bench import STOP, make_item, measure, measure_sync, summary, summary_sync


def producer(path, queue, n, size, consumers, batch, barrier):
    with Client.connect(path, timeout=10) as c:
        barrier.wait()
        if batch > 1:
            for k in range(0, n, batch):
                c.put_batch(queue, [make_item(size) for _ in range(min(batch, n - k))])
        else:
            for _ in range(n):
                c.put(queue, make_item(size))
        c.put_batch(queue, [STOP] * consumers)


def consumer(path, queue, batch, auto_ack, barrier, results):
    lats = []
    with Client.connect(path, timeout=10) as c:
        barrier.wait()
        stop = False
        while auto_ack and not stop:  # at most once, like Manager().Queue(): one round trip per item
            body = c.get_auto_ack(queue)
            if body == STOP:
                stop = True
            else:
                lats.append(time.monotonic_ns() - struct.unpack_from(">Q", body)[0])
        while not stop:
            ds = c.get_batch(queue, batch)
            now = time.monotonic_ns()
            done, extra = [], []  # a batch may hold another consumer's STOP: give it back
            for d in ds:
                if d.body != STOP:
                    lats.append(now - struct.unpack_from(">Q", d.body)[0])
                elif stop:
                    extra.append(d)
                    continue
                else:
                    stop = True
                done.append(d)
            c.ack(*done)
            if extra:
                c.nack(*extra)
    results.put((time.monotonic_ns(), lats))


def run(path, queue, n, size, consumers, batch, auto_ack, events=False):
    return measure(bench_name(batch, auto_ack), n, consumers,
                   producer, (path, queue, n, size, consumers, batch),
                   consumer, (path, queue, batch, auto_ack), events)


def sync_producer(path, queue, n, size, send, recv, barrier, results):
    puts = []
    with Client.connect(path, timeout=10) as c:
        barrier.wait()
        for _ in range(n):
            item = make_item(size)
            t = time.monotonic_ns()
            c.put(queue, item)
            puts.append(time.monotonic_ns() - t)
            send.send_bytes(b"p")  # the consumer may get it now
            recv.recv_bytes()      # it has, and acked it
        send.send_bytes(b"e")
    results.put((time.monotonic_ns(), {"put": puts}))


def sync_consumer(path, queue, recv, send, barrier, results):
    gets, acks = [], []
    with Client.connect(path, timeout=10) as c:
        barrier.wait()
        while recv.recv_bytes() == b"p":
            t = time.monotonic_ns()
            d = c.get(queue, timeout=10)
            t2 = time.monotonic_ns()
            d.ack()
            t3 = time.monotonic_ns()
            gets.append(t2 - t)
            acks.append(t3 - t2)
            send.send_bytes(b"c")
    results.put((time.monotonic_ns(), {"get": gets, "ack": acks}))


def run_sync(path, queue, n, size, events=False):
    return measure_sync("gotyledon Python client", n, sync_producer, (path, queue, n, size),
                        sync_consumer, (path, queue), events)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--queue", default="bench")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="put_batch/get_batch of up to K items")
    ap.add_argument("--auto-ack", action="store_true", help="consumers use get_auto_ack (at most once; ignores --batch for gets)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--sync", action="store_true", help="1 producer, 1 consumer, in lockstep: put; get; ack (ignores --consumers, --batch, --auto-ack)")
    ap.add_argument("--events", action="store_true", help='print "start" when the measured part begins')
    a = ap.parse_args()
    if a.sync:
        summary_sync("gotyledon Python client",
                     [run_sync(a.socket, a.queue, a.n, a.size, a.events) for _ in range(a.runs)])
        return
    summary(bench_name(a.batch, a.auto_ack),
            [run(a.socket, a.queue, a.n, a.size, a.consumers, a.batch, a.auto_ack, a.events) for _ in range(a.runs)])


def bench_name(batch, auto_ack):
    return "gotyledon Python client" + (" auto-ack" if auto_ack else "") + (f" (batch {batch})" if batch > 1 else "")


if __name__ == "__main__":
    main()
