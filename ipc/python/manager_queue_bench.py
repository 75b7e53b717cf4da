"""Baseline for the README: multiprocessing.Manager().Queue() in the shape
"1 producer process, 2 consumer processes, 100-byte items, N items".

Each item carries its put time (time.monotonic_ns, which is system-wide on
Linux); consumers record put-to-get latency. Prints items/s and latency
p50/p99. The queue is bounded like a gotyledon queue (--maxsize, default
10000 = ipc.DefaultCapacity; 0 = unbounded).

With --sync, the shape is "1 producer, 1 consumer, in lockstep": the
producer's put returns, then the consumer gets the item, then the producer
puts the next one (each side tells the other over a pipe of its own), so
every call is one awaited round trip with nothing else in flight. Each side
times its own calls; the result line gives their mean ("round trip").

--events prints a line "start" when the measured part begins (for
ipc/process_bench_test.go, which times the same part).

    python3 manager_queue_bench.py --n 100000 [--runs 5] [--sync]
"""
import argparse
import multiprocessing as mp
import statistics
import struct
import time

STOP = b""


def make_item(size):
    return struct.pack(">Q", time.monotonic_ns()) + b"x" * (size - 8)


def report(name, n, elapsed_s, lats_ns):
    """One result line; returns (items/s, p50 ms, p99 ms)."""
    lats_ns.sort()
    p50 = lats_ns[len(lats_ns) // 2] / 1e6
    p99 = lats_ns[min(len(lats_ns) - 1, int(len(lats_ns) * 0.99))] / 1e6
    rate = n / elapsed_s
    print(f"{name}: {n} items in {elapsed_s:.2f} s = {rate:,.0f} items/s, latency p50 {p50:.3f} ms p99 {p99:.3f} ms", flush=True)
    return rate, p50, p99


def summary(name, results):
    if len(results) > 1:
        rates, p50s, p99s = zip(*results)
        print(f"{name}: median of {len(results)} runs: {statistics.median(rates):,.0f} items/s, "
              f"p50 {statistics.median(p50s):.3f} ms, p99 {statistics.median(p99s):.3f} ms "
              f"(items/s min {min(rates):,.0f} max {max(rates):,.0f})", flush=True)


def producer(q, n, size, consumers, barrier):
    barrier.wait()
    for _ in range(n):
        q.put(make_item(size))
    for _ in range(consumers):
        q.put(STOP)


def consumer(q, barrier, results):
    barrier.wait()
    lats = []
    while True:
        item = q.get()
        now = time.monotonic_ns()
        if item == STOP:
            break
        lats.append(now - struct.unpack_from(">Q", item)[0])
    results.put((time.monotonic_ns(), lats))


def measure(name, n, consumers, producer, producer_args, consumer, consumer_args, events=False):
    """Runs one producer process and `consumers` consumer processes, timed
    from a barrier they all pass to the last consumer's finish, and reports.
    The producer gets a barrier after producer_args; each consumer gets the
    barrier and a results queue, on which it puts (finish time, latencies).
    Shared by this baseline and gotyledon_bench.py, so both are measured alike."""
    barrier, results = mp.Barrier(consumers + 2), mp.Queue()
    procs = [mp.Process(target=producer, args=(*producer_args, barrier))]
    procs += [mp.Process(target=consumer, args=(*consumer_args, barrier, results)) for _ in range(consumers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.monotonic_ns()
    if events:
        print("start", flush=True)
    done = [results.get() for _ in range(consumers)]
    for p in procs:
        p.join()
    lats = [x for _, ls in done for x in ls]
    assert len(lats) == n, (len(lats), n)
    return report(name, n, (max(t for t, _ in done) - t0) / 1e9, lats)


def run(n, size, consumers, maxsize, events=False):
    with mp.Manager() as m:
        q = m.Queue(maxsize)
        return measure("Manager().Queue()", n, consumers, producer, (q, n, size, consumers), consumer, (q,), events)


def measure_sync(name, n, producer, producer_args, consumer, consumer_args, events=False):
    """1 producer process and 1 consumer process in lockstep (see --sync).
    The producer gets, after producer_args, its pipe ends (send, recv), the
    barrier and a results queue; the consumer likewise. Each puts (finish
    time, {call: [durations in ns]}) on the results queue. Returns
    (items/s, mean round trip in µs). Shared with gotyledon_bench.py."""
    barrier, results = mp.Barrier(3), mp.Queue()
    c_recv, p_send = mp.Pipe(duplex=False)
    p_recv, c_send = mp.Pipe(duplex=False)
    procs = [mp.Process(target=producer, args=(*producer_args, p_send, p_recv, barrier, results)),
             mp.Process(target=consumer, args=(*consumer_args, c_recv, c_send, barrier, results))]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.monotonic_ns()
    if events:
        print("start", flush=True)
    done = [results.get() for _ in range(2)]
    for p in procs:
        p.join()
    calls = {}
    for _, c in done:
        calls.update(c)
    elapsed = (max(t for t, _ in done) - t0) / 1e9
    every = [d for ds in calls.values() for d in ds]
    assert all(len(ds) == n for ds in calls.values()), {k: len(v) for k, v in calls.items()}
    rt = statistics.fmean(every) / 1e3 if every else 0.0
    each = ", ".join(f"{k} {statistics.fmean(calls[k]) / 1e3:.1f} us" for k in ("put", "get", "ack") if calls.get(k))
    rate = n / elapsed
    print(f"{name} (sync): {n} items in {elapsed:.2f} s = {rate:,.0f} items/s, round trip mean {rt:.1f} us ({each})", flush=True)
    return rate, rt


def sync_producer(q, n, size, send, recv, barrier, results):
    barrier.wait()
    puts = []
    for _ in range(n):
        item = make_item(size)
        t = time.monotonic_ns()
        q.put(item)
        puts.append(time.monotonic_ns() - t)
        send.send_bytes(b"p")  # the consumer may get it now
        recv.recv_bytes()      # it has
    send.send_bytes(b"e")
    results.put((time.monotonic_ns(), {"put": puts}))


def sync_consumer(q, recv, send, barrier, results):
    barrier.wait()
    gets = []
    while recv.recv_bytes() == b"p":
        t = time.monotonic_ns()
        q.get()
        gets.append(time.monotonic_ns() - t)
        send.send_bytes(b"c")
    results.put((time.monotonic_ns(), {"get": gets}))


def run_sync(n, size, maxsize, events=False):
    with mp.Manager() as m:
        q = m.Queue(maxsize)
        return measure_sync("Manager().Queue()", n, sync_producer, (q, n, size), sync_consumer, (q,), events)


def summary_sync(name, results):
    if len(results) > 1:
        rates, rts = zip(*results)
        print(f"{name} (sync): median of {len(results)} runs: {statistics.median(rates):,.0f} items/s, "
              f"round trip mean {statistics.median(rts):.1f} us "
              f"(items/s min {min(rates):,.0f} max {max(rates):,.0f})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--maxsize", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--sync", action="store_true", help="1 producer, 1 consumer, in lockstep (ignores --consumers)")
    ap.add_argument("--events", action="store_true", help='print "start" when the measured part begins')
    a = ap.parse_args()
    if a.sync:
        summary_sync("Manager().Queue()", [run_sync(a.n, a.size, a.maxsize, a.events) for _ in range(a.runs)])
    else:
        summary("Manager().Queue()", [run(a.n, a.size, a.consumers, a.maxsize, a.events) for _ in range(a.runs)])


if __name__ == "__main__":
    main()
