"""The baselines of BenchmarkTasks (../tasks_bench_test.go): N small tasks
mapped over a pool of worker processes with the standard library.

    python3 pool_bench.py --kind processpool --n 100000 --workers 2 [--events]
    python3 pool_bench.py --kind pool --n 100000 --workers 2 [--events]

processpool is concurrent.futures.ProcessPoolExecutor.map (chunksize 1,
its default), pool is multiprocessing.Pool.map (its default chunksize,
about n / (4 * workers) tasks to a chunk). The task is the Go benchmark's:
the sum of the bytes of a 16-byte input, as decimal text. The pool's
processes are started, and have each run a task, before the measured part
begins (--events prints "start" then); the result line says
"= RATE items/s", a task being an item.
"""
import argparse
import concurrent.futures
import multiprocessing
import time


def task(x):
    return str(sum(x)).encode()


def inputs(n):
    return [(b"%016d" % i) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["processpool", "pool"], required=True)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--events", action="store_true", help='print "start" when the measured part begins')
    a = ap.parse_args()
    xs = inputs(a.n)
    if a.kind == "processpool":
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=a.workers)
        name = "ProcessPoolExecutor.map"
    else:
        pool = multiprocessing.Pool(processes=a.workers)
        name = "Pool.map"
    with pool:
        list(pool.map(task, [b"warm"] * (4 * a.workers)))  # every process started and warm
        if a.events:
            print("start", flush=True)
        t0 = time.perf_counter()
        results = list(pool.map(task, xs))
        elapsed = time.perf_counter() - t0
    assert len(results) == a.n and results[-1] == task(xs[-1]), "wrong results"
    print(f"{name}: {a.n} tasks over {a.workers} processes in {elapsed:.3f} s = {a.n / elapsed:,.0f} items/s", flush=True)


if __name__ == "__main__":
    main()
