"""Data-parallel training with `DistributedCallback`, launched by torchrun.

    torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29511 benchmarks/ddp_train.py --epochs 3

Prints (rank 0) the samples per second of the training phase.

    python benchmarks/ddp_train.py --compare 1,2 --repeats 3

launches torchrun for each process count (interleaved, each repeated) and prints a markdown table of
the median samples/s, with ratios against 1 process. With `--steps K --save FILE` it trains
K steps with shuffling off and saves the weights (the correctness check: compare with
`reference_params(K, world_size * batch_size)` computed in one process).

`--device cpu` (the default) trains with the gloo backend on the CPU; `--device cuda` with NCCL, one GPU
per process (so `--compare` keeps only the process counts this machine has GPUs for), and the timer reads
its clock after `torch.cuda.synchronize()`. Without a GPU, `--device cuda` stops at once with exit status 2.
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from _timing import add_device_argument, clock, device_label, fail, resolve_device
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exp.data import get_data  # noqa: E402
from exp.distributed import (  # noqa: E402
    DistributedCallback,
    cleanup_distributed,
    is_main_process,
    setup_distributed,
    world_size,
)
from exp.learner import Callback, CancelFitException, Learner  # noqa: E402
from exp.training import DataLoaders, set_seed  # noqa: E402

def make_model(n_in, seed=0):
    "The model every process builds (DDP broadcasts rank 0's weights anyway)."
    set_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


class StopAfter(Callback):
    "Stop the fit after `steps` training batches."
    def __init__(self, steps): self.steps = steps
    def after_batch(self):
        if self.learn.training and self.learn.train_iter + 1 >= self.steps: raise CancelFitException()


class Timer(Callback):
    "Seconds spent in the training phases (loading included), and samples seen; the device's work included."
    order = -30  # reads the clock at `after_train` before DistributedCallback reduces the metrics
    def __init__(self, device="cpu"): self.device = device
    def before_fit(self): self.seconds, self.samples, self.start = 0.0, 0, None
    def before_train(self): self.start = clock(self.device)
    def after_batch(self):
        if self.learn.training: self.samples += len(self.learn.yb)

    def after_train(self):
        self.seconds += clock(self.device) - self.start
        self.start = None

    def cleanup_fit(self):  # a fit cancelled mid-phase (StopAfter) skips `after_train`
        if self.start is not None: self.after_train()


def reference_params(steps, batch_size, lr=0.1, device="cpu"):
    "Weights after `steps` SGD steps on batches of `batch_size` read in order, in this single process."
    x, y, _, _ = get_data()
    dls = DataLoaders.from_tensors(x, y, x, y, batch_size=batch_size)
    learn = Learner(make_model(x.shape[1]), dls, lr=lr, logger=None, device=device)
    learn.dls.train.sampler.shuffle = False
    learn.fit(1, cbs=StopAfter(steps))
    return {k: v.detach().cpu().clone() for k, v in learn.model.state_dict().items()}


def free_port():
    "A free TCP port on the loopback interface."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n_procs, *script_args, threads=None, timeout=300):
    "Run this script under torchrun: `n_procs` processes on localhost, `threads` torch threads each; stdout."
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_procs}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", __file__, *script_args]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    if threads is not None: env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0: raise RuntimeError(f"torchrun failed:\n{result.stderr[-3000:]}")
    return result.stdout


def usable_counts(counts, device):
    "The process counts this machine can run on `device` (one GPU per process with NCCL), and a note."
    if device.type != "cuda": return counts, ""
    gpus = torch.cuda.device_count()
    usable = [n for n in counts if n <= gpus]
    if not usable: fail(f"--compare {','.join(map(str, counts))}: this machine has {gpus} GPU(s), and NCCL "
                        "needs one per process")
    dropped = [n for n in counts if n > gpus]
    return usable, (f"{', '.join(map(str, dropped))} process(es) left out: NCCL needs one GPU per process "
                    f"and this machine has {gpus}." if dropped else "")


def compare(counts, repeats, epochs, batch_size, device):
    """Median samples/s for each process count (1 torch thread per process, as torchrun sets for N > 1),
    plus 1 process with torch's default threads; launched interleaved; a markdown table."""
    counts, note = usable_counts(counts, device)
    configs = [(n, 1) for n in counts] + [(1, None)]
    rates = {c: [] for c in configs}
    for _ in range(repeats):
        for n, threads in configs:
            out = launch(n, "--epochs", str(epochs), "--batch-size", str(batch_size), "--quiet",
                         "--device", device.type, threads=threads)
            rates[(n, threads)].append(float(re.search(r"samples_per_s=([0-9.]+)", out).group(1)))
    base = statistics.median(rates[configs[0]])
    backend = "NCCL" if device.type == "cuda" else "gloo"
    dataset = os.environ.get("EXP_DATASET", "digits")
    print(f"Device: {device_label(device)}, backend {backend}; data: {dataset}.")
    if note: print(note)
    print(f"\n| processes | threads each | batch per process | global batch "
          f"| samples/s (median of {repeats}) | ratio vs first row |")
    print("|---|---|---|---|---|---|")
    for (n, threads), values in rates.items():
        m = statistics.median(values)
        print(f"| {n} | {threads or 'torch default'} | {batch_size} | {n * batch_size} | {m:.0f} "
              f"| {m / base:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps, no shuffling")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--save", default=None, help="rank 0 saves the final weights here")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch table")
    parser.add_argument("--compare", default=None,
                        help="e.g. 1,2: launch torchrun for each count and compare")
    parser.add_argument("--repeats", type=int, default=3)
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.compare:
        counts = [int(n) for n in args.compare.split(",")]
        return compare(counts, args.repeats, args.epochs, args.batch_size, device)

    device = setup_distributed("nccl" if device.type == "cuda" else "gloo")
    try:
        x_train, y_train, x_valid, y_valid = get_data()
        dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, batch_size=args.batch_size)
        timer = Timer(device)
        # with --steps: no shuffling, so that DistributedSampler interleaves 0..n-1 across ranks
        # (comparable to one process)
        learn = Learner(make_model(x_train.shape[1]), dls, lr=args.lr,
                        cbs=[DistributedCallback(shuffle=args.steps is None, device=device), timer],
                        logger=None if args.steps is not None or args.quiet else print, device=device)
        if args.steps is None: learn.fit(args.epochs)
        else: learn.fit(1, cbs=StopAfter(args.steps))
        # on the device: NCCL reduces only CUDA tensors
        samples = torch.tensor([timer.samples], dtype=torch.float64, device=device)
        seconds = torch.tensor([timer.seconds], dtype=torch.float64, device=device)
        if world_size() > 1:
            torch.distributed.all_reduce(samples)
            torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
        if is_main_process():
            print(f"world_size={world_size()} batch_per_process={args.batch_size} "
                  f"samples={int(samples.item())} train_seconds={seconds.item():.3f} "
                  f"samples_per_s={samples.item() / seconds.item():.0f} device={device}")
            if args.save:
                torch.save({k: v.detach().cpu() for k, v in learn.model.state_dict().items()}, args.save)
                print(f"saved {args.save}")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
