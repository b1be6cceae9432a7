"""Our BatchNorm and optimizers vs PyTorch's (time per training step of one CNN), and our
convolutions (im2col + matmul, direct loop) vs F.conv2d.

    python benchmarks/norm_optim.py [--rounds 7] [--steps 20] [--threads 1]

Contenders are interleaved (A B A B ..., the order rotating each round); we print the median time
per step of each, and the median of the per-round ratios against the PyTorch peer measured in the
same round. Everything is torch, so it runs in one process.
"""
import argparse, copy, os, platform, statistics, sys, time
from functools import partial
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.nn.functional as F
from torch import nn
from exp.data import get_data, dataset_name
from exp.conv import get_cnn_model, init_cnn, conv2d_unfold, conv2d_loop
from exp.norm import BatchNorm, RunningBatchNorm
from exp.optimizers import SGD, AdamW

def training_step(norm, opt_func, xb, yb):
    "A function doing one training step of the digits CNN with `norm` layers and `opt_func`."
    torch.manual_seed(0)
    model = init_cnn(get_cnn_model((16, 32, 64), norm=norm))
    opt = opt_func(model.parameters())
    def step():
        F.cross_entropy(model(xb), yb).backward()
        opt.step(); opt.zero_grad()
    step()  # warm-up: allocate the optimizer state
    return step

def per_call(f, n):
    start = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - start) / n

def compare(contenders, rounds, n):
    "Median seconds per call of each contender, and the median per-round ratio to the first (the peer)."
    names, times = list(contenders), {name: [] for name in contenders}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order: times[name].append(per_call(contenders[name], n))
    peer = names[0]
    return [(name, statistics.median(times[name]),
             statistics.median(t / p for t, p in zip(times[name], times[peer]))) for name in names]

def table(title, rows, peer):
    print(f"\n### {title}\n\n| contender | ms per call | ratio to {peer} |\n|---|---:|---:|")
    for name, seconds, ratio in rows: print(f"| {name} | {seconds * 1e3:.3f} | {ratio:.2f}× |")

def main(rounds=7, steps=20, threads=1, batch_size=64):
    torch.set_num_threads(threads)
    x_train, y_train, _, _ = get_data()
    xb, yb = x_train[:batch_size], y_train[:batch_size]
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores (shared), {threads} torch thread(s), "
          f"load average {os.getloadavg()[0]:.1f}; data {dataset_name()}, batch {batch_size}; "
          f"median of {rounds} interleaved rounds × {steps} calls")

    sgd_torch = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4)
    norms = {"nn.BatchNorm2d": training_step(nn.BatchNorm2d, sgd_torch, xb, yb),
             "our BatchNorm": training_step(BatchNorm, sgd_torch, xb, yb),
             "our RunningBatchNorm": training_step(RunningBatchNorm, sgd_torch, xb, yb)}
    table("Normalisation: one training step of the CNN (torch SGD)", compare(norms, rounds, steps), "nn.BatchNorm2d")

    adamw_torch = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    adamw_torch_loop = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01, foreach=False)
    opts = {"torch.optim.AdamW": training_step(nn.BatchNorm2d, adamw_torch, xb, yb),
            "torch.optim.AdamW(foreach=False)": training_step(nn.BatchNorm2d, adamw_torch_loop, xb, yb),
            "our AdamW": training_step(nn.BatchNorm2d, partial(AdamW, lr=1e-3, weight_decay=0.01), xb, yb),
            "torch.optim.SGD(momentum)": training_step(nn.BatchNorm2d, sgd_torch, xb, yb),
            "our SGD(momentum)": training_step(nn.BatchNorm2d, partial(SGD, lr=0.1, momentum=0.9, weight_decay=1e-4), xb, yb)}
    table("Optimizers: one training step of the CNN (nn.BatchNorm2d)", compare(opts, rounds, steps), "torch.optim.AdamW")

    torch.manual_seed(0)
    for shape, kernels in [((64, 16, 8, 8), (32, 16, 3, 3)), ((64, 8, 28, 28), (16, 8, 3, 3))]:
        x, w, b = torch.randn(shape), torch.randn(kernels), torch.randn(kernels[0])
        convs = {"F.conv2d": lambda: F.conv2d(x, w, b, 1, 1),
                 "conv2d_unfold (im2col + matmul)": lambda: conv2d_unfold(x, w, b, 1, 1),
                 "conv2d_loop": lambda: conv2d_loop(x, w, b, 1, 1)}
        table(f"Convolution forward, input {shape}, kernels {kernels}, padding 1",
              compare(convs, rounds, max(2, steps // 4)), "F.conv2d")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=64)
    main(**vars(parser.parse_args()))
