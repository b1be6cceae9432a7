#!/usr/bin/env python
"""The matmul speedup ladder of `01_matmul`, measured properly; then torch vs numpy on large shapes.

    python benchmarks/matmul.py [--device cpu|cuda] [--repeats 7] [--rounds 5] [--inner 3] [--threads 2]
                                [--out FILE]

Part 1, the ladder (one process): the five variants of `exp.matmul` (pure Python, elementwise,
broadcasting, einsum, torch.matmul) on the lesson's shapes, 5×64 @ 64×10 (digits) and
5×784 @ 784×10 (MNIST), called interleaved (A B C D E A B C D E …) `--repeats` times; we quote the
median time, the speedup over pure Python and GFLOP/s (2·m·k·n operations).

Part 2, large shapes: 50,000×784 @ 784×10 (all of MNIST's training set through a linear layer) and
2048×2048 @ 2048×2048. `torch.einsum` and `torch.matmul` run in one worker process, numpy's `@` in
another (each library spins its own thread pool, and in one process their idle threads would fight
for the cores). The parent starts the workers in turn, round after round, alternating which goes
first; each worker times its contenders interleaved `--inner` times after a warm-up and reports
medians. We quote the median over rounds and the median of the per-round ratio torch/numpy.
Both libraries get `--threads` threads. With `--device cuda` the torch contenders run on the GPU (the
clock is read only after `torch.cuda.synchronize()`), numpy and the pure-Python loops stay on the CPU;
without a GPU `--device cuda` stops at once with exit status 2.

Prints a markdown table (with `--out FILE`, also appends it, with the command line, to FILE).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import add_device_argument, device_label, resolve_device, stays_on_cpu, sync

ROOT = Path(__file__).resolve().parents[1]
LADDER_SHAPES = [(5, 64, 10), (5, 784, 10)]
LARGE_SHAPES = [(50_000, 784, 10), (2048, 2048, 2048)]


def gflops(m, k, n, seconds): return 2 * m * k * n / seconds / 1e9


# ---------------------------------------------------------------- workers: one library each
def time_interleaved(funcs, inner, sync=None):
    "Median seconds of each function, called interleaved `inner` times after one warm-up call each."
    for f in funcs.values(): f()
    if sync: sync()
    times = {name: [] for name in funcs}
    for _ in range(inner):
        for name, f in funcs.items():
            start = time.perf_counter()
            f()
            if sync: sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def torch_worker(m, k, n, inner, threads, device):
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator(device=device).manual_seed(0)
    a, b = torch.randn(m, k, generator=g, device=device), torch.randn(k, n, generator=g, device=device)
    return time_interleaved({"einsum": lambda: torch.einsum("ik,kj->ij", a, b),
                             "torch.matmul": lambda: torch.matmul(a, b)}, inner, lambda: sync(device))


def numpy_worker(m, k, n, inner, threads, device):
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    return time_interleaved({"numpy @": lambda: a @ b}, inner)


WORKERS = {"torch": torch_worker, "numpy": numpy_worker}


def run_worker(library, shape, inner, threads, device):
    "Time one library in a fresh process with `threads` threads; its medians as a dict."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", library, "--shape", ",".join(map(str, shape)),
               "--inner", str(inner), "--threads", str(threads), "--device", str(device)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- part 1: the ladder
def ladder(repeats, device):
    import torch
    sys.path.insert(0, str(ROOT))
    from exp.matmul import MATMUL_VARIANTS, median_times
    rows = []
    for m, k, n in LADDER_SHAPES:
        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(m, k, generator=g), torch.randn(k, n, generator=g)
        da, db = a.to(device), b.to(device)
        # pure Python works on Python floats, so it runs on the CPU whatever the device
        funcs = {name: (lambda f=f: f(a, b)) if name == "pure Python" else (lambda f=f: f(da, db))
                 for name, f in MATMUL_VARIANTS.items()}
        for f in funcs.values(): f()
        medians = median_times(funcs, repeats=repeats, synchronize=lambda: sync(device))
        for name, seconds in medians.items():
            rows.append((f"{m}×{k} @ {k}×{n}", name, "cpu" if name == "pure Python" else str(device), seconds,
                         medians["pure Python"] / seconds, gflops(m, k, n, seconds)))
    return rows


def print_ladder(rows):
    print("| shape | variant | device | median time | speedup over pure Python | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|")
    for shape, name, device, seconds, speedup, rate in rows:
        print(f"| {shape} | {name} | {device} | {seconds * 1e6:,.1f} µs | {speedup:,.3g}× | {rate:.3g} |")


# ---------------------------------------------------------------- part 2: large shapes, separate processes
def large(rounds, inner, threads, device):
    results = {}
    for shape in LARGE_SHAPES:
        per_round = []
        for r in range(rounds):
            order = ["torch", "numpy"] if r % 2 == 0 else ["numpy", "torch"]
            medians = {}
            for library in order: medians.update(run_worker(library, shape, inner, threads, device))
            per_round.append(medians)
        results[shape] = per_round
    return results


def print_large(results, device):
    print("| shape | contender | median time | GFLOP/s | time ÷ numpy's (median of per-round ratios) |")
    print("|---|---|---:|---:|---:|")
    for (m, k, n), per_round in results.items():
        for name in ("einsum", "torch.matmul", "numpy @"):
            seconds = statistics.median(r[name] for r in per_round)
            ratio = statistics.median(r[name] / r["numpy @"] for r in per_round)
            label = name if name == "numpy @" or device.type == "cpu" else f"{name} ({device})"
            print(f"| {m:,}×{k:,} @ {k:,}×{n:,} | {label} | {seconds * 1e3:,.2f} ms | "
                  f"{gflops(m, k, n, seconds):,.1f} | {ratio:.2f} |")


def machine(threads, device):
    import numpy as np
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError: pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {device_label(device)}" if device.type != "cpu" else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}; {threads} thread(s) per library; "
            f"load average at start {load:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_argument(parser)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved calls per variant in the ladder")
    parser.add_argument("--rounds", type=int, default=5, help="worker rounds per large shape")
    parser.add_argument("--inner", type=int, default=3, help="interleaved calls per contender in a worker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also append the report to this file")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.worker:
        m, k, n = map(int, args.shape.split(","))
        print(json.dumps(WORKERS[args.worker](m, k, n, args.inner, args.threads, device)))
        return
    import torch
    torch.set_num_threads(args.threads)
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        print(f"## `python {shlex.join(['benchmarks/matmul.py', *sys.argv[1:]])}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        print(f"Machine: {machine(args.threads, device)}\n")
        if device.type != "cpu": print(stays_on_cpu("numpy (and the pure-Python loops)", device) + "\n")
        print(f"### The ladder (median of {args.repeats} interleaved calls)\n")
        print_ladder(ladder(args.repeats, device))
        print(f"\n### Large shapes: torch and numpy in separate processes "
              f"({args.rounds} alternating rounds × {args.inner} timed calls)\n")
        print_large(large(args.rounds, args.inner, args.threads, device), device)
    print(report.getvalue(), end="")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f: f.write(report.getvalue() + "\n")


if __name__ == "__main__":
    main()
