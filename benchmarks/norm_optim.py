"""Our BatchNorm (eager and torch.compile'd) and optimizers vs PyTorch's (time per training step of one CNN),
BatchNorm alone (forward+backward), and our convolutions (im2col + matmul, direct loop) vs F.conv2d.

    python benchmarks/norm_optim.py [--rounds 7] [--steps 20] [--threads 1] [--device cpu|cuda]
                                    [--python-wrapper]

Contenders are interleaved (A B A B ..., the order rotating each round); we print the median time
per step of each, and the median of the per-round ratios against the PyTorch peer measured in the
same round. Everything is torch, so it runs in one process. torch.compile's compile time is measured
separately (the first call) and printed; the timed calls come after it. Compiled either each BatchNorm
layer or the whole model, with options={"cpp_wrapper": True} (TorchInductor calls its kernels from
generated C++, not Python); --python-wrapper compiles with the default options instead.
"""
import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.nn.functional as F
from torch import nn

from exp.conv import conv2d_loop, conv2d_unfold, get_cnn_model, init_cnn
from exp.data import dataset_name, get_data
from exp.norm import BatchNorm, RunningBatchNorm
from exp.optimizers import SGD, AdamW

COMPILE_SECONDS = {}  # contender -> seconds of its first (compiling) call
CPP_WRAPPER = {"cpp_wrapper": True}  # the compile options, unless --python-wrapper (then None)


def compiled(module, options):
    "`module` under torch.compile: one static graph per shape, fused kernels forward and backward."
    return torch.compile(module, dynamic=False, options=options)


def compiled_batchnorm(n_channels, options):
    "Our BatchNorm layer, compiled on its own."
    return compiled(BatchNorm(n_channels), options)


def synchronize(device):
    if device.type == "cuda": torch.cuda.synchronize()


def training_step(norm, opt_func, xb, yb, name=None, compile_model=False, options=None):
    "A function doing one training step of the digits CNN with `norm` layers and `opt_func`, maybe compiled."
    torch.manual_seed(0)
    model = init_cnn(get_cnn_model((16, 32, 64), norm=norm)).to(xb.device)
    opt = opt_func(model.parameters())
    forward = compiled(model, options) if compile_model else model
    def step():
        F.cross_entropy(forward(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    start = time.perf_counter()
    step()  # warm-up: allocate the optimizer state (and compile, if the model is compiled)
    synchronize(xb.device)
    if name: COMPILE_SECONDS[name] = time.perf_counter() - start
    return step


def layer_step(layer, x):
    "A function running `layer` forward and backward on `x` (a fixed random projection as the loss)."
    weights = torch.randn_like(x)
    def step():
        (layer(x) * weights).sum().backward()
    return step


def per_call(f, n, device):
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n): f()
    synchronize(device)
    return (time.perf_counter() - start) / n


ROUND_RATIOS = {}  # (contender, other) -> per-round time ratios, from the last compare()


def compare(contenders, rounds, n, device):
    "Median seconds per call of each contender, and the median per-round ratio to the first (the peer)."
    names, times = list(contenders), {name: [] for name in contenders}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order: times[name].append(per_call(contenders[name], n, device))
    peer = names[0]
    ROUND_RATIOS.clear()
    ROUND_RATIOS.update({(a, b): [x / y for x, y in zip(times[a], times[b])] for a in names for b in names})
    return [(name, statistics.median(times[name]),
             statistics.median(t / p for t, p in zip(times[name], times[peer]))) for name in names]


def table(title, rows, peer):
    print(f"\n### {title}\n\n| contender | ms per call | ratio to {peer} |\n|---|---:|---:|")
    for name, seconds, ratio in rows: print(f"| {name} | {seconds * 1e3:.3f} | {ratio:.2f}× |")


def main(rounds=7, steps=20, threads=1, batch_size=64, device="cpu", python_wrapper=False):
    options = None if python_wrapper else CPP_WRAPPER
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    x_train, y_train, _, _ = get_data()
    xb, yb = x_train[:batch_size].to(device), y_train[:batch_size].to(device)
    print(f"`{shlex.join(['python', *sys.argv])}`\n")
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores (shared), "
          f"{threads} torch thread(s), device {device}, load average {os.getloadavg()[0]:.1f}; "
          f"data {dataset_name()}, batch {batch_size}; median of {rounds} interleaved rounds × {steps} calls;"
          f" compiled with options={options}")

    sgd_torch = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4)
    each, ours, theirs = "our BatchNorm, each layer compiled", "model compiled, our BatchNorm", \
        "model compiled, nn.BatchNorm2d"
    norms = {"nn.BatchNorm2d": training_step(nn.BatchNorm2d, sgd_torch, xb, yb),
             "our BatchNorm": training_step(BatchNorm, sgd_torch, xb, yb),
             each: training_step(partial(compiled_batchnorm, options=options), sgd_torch, xb, yb, each),
             ours: training_step(BatchNorm, sgd_torch, xb, yb, ours, compile_model=True, options=options),
             theirs: training_step(nn.BatchNorm2d, sgd_torch, xb, yb, theirs, compile_model=True,
                                   options=options),
             "our RunningBatchNorm": training_step(RunningBatchNorm, sgd_torch, xb, yb)}
    rows = compare(norms, rounds, steps, device)
    table("Normalisation: one training step of the CNN (torch SGD)", rows, "nn.BatchNorm2d")
    same_compile = statistics.median(r for r in ROUND_RATIOS[ours, theirs])
    print(f"\n{ours} / {theirs} (the same compilation, only the BatchNorm differs): median of the "
          f"per-round ratios {same_compile:.2f}×.")
    print("\nCompile time (first step): " + "; ".join(f"{name} {COMPILE_SECONDS[name]:.1f} s"
                                                      for name in (each, ours, theirs)) + ".")

    torch.manual_seed(0)
    x = torch.randn(64, 32, 14, 14, device=device, requires_grad=True)
    ours, theirs = BatchNorm(32).to(device), nn.BatchNorm2d(32).to(device)
    compiled_layer = compiled(BatchNorm(32).to(device), options)
    start = time.perf_counter()
    layer_step(compiled_layer, x)()
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    layers = {"nn.BatchNorm2d": layer_step(theirs, x), "our BatchNorm": layer_step(ours, x),
              "our BatchNorm, compiled": layer_step(compiled_layer, x)}
    table(f"BatchNorm alone, forward+backward, input {tuple(x.shape)}",
          compare(layers, rounds, steps, device), "nn.BatchNorm2d")
    print(f"\nCompile time of the layer alone (first call): {compile_seconds:.1f} s.")

    adamw_torch = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    adamw_torch_loop = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01, foreach=False)
    our_sgd = partial(SGD, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opts = {"torch.optim.AdamW": training_step(nn.BatchNorm2d, adamw_torch, xb, yb),
            "torch.optim.AdamW(foreach=False)": training_step(nn.BatchNorm2d, adamw_torch_loop, xb, yb),
            "our AdamW": training_step(nn.BatchNorm2d, partial(AdamW, lr=1e-3, weight_decay=0.01), xb, yb),
            "torch.optim.SGD(momentum)": training_step(nn.BatchNorm2d, sgd_torch, xb, yb),
            "our SGD(momentum)": training_step(nn.BatchNorm2d, our_sgd, xb, yb)}
    table("Optimizers: one training step of the CNN (nn.BatchNorm2d)", compare(opts, rounds, steps, device),
          "torch.optim.AdamW")

    torch.manual_seed(0)
    for shape, kernels in [((64, 16, 8, 8), (32, 16, 3, 3)), ((64, 8, 28, 28), (16, 8, 3, 3))]:
        x = torch.randn(shape, device=device)
        w, b = torch.randn(kernels, device=device), torch.randn(kernels[0], device=device)
        convs = {"F.conv2d": lambda: F.conv2d(x, w, b, 1, 1),
                 "conv2d_unfold (im2col + matmul)": lambda: conv2d_unfold(x, w, b, 1, 1),
                 "conv2d_loop": lambda: conv2d_loop(x, w, b, 1, 1)}
        table(f"Convolution forward, input {shape}, kernels {kernels}, padding 1",
              compare(convs, rounds, max(2, steps // 4), device), "F.conv2d")
    print(f"\nLoad average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--python-wrapper", action="store_true",
                        help="compile with default options (a Python wrapper around the kernels)")
    main(**vars(parser.parse_args()))
