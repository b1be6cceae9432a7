#!/usr/bin/env python
"""A CNN trained on MNIST by our own engine (exp.autograd*, no torch.autograd), next to the same CNN,
initialisation and schedule on torch.autograd, with wall-clock time and test accuracy after every epoch.

    EXP_DATA_HOME=DIR python benchmarks/autograd_mnist.py [--epochs 4] [--batch-size 128] [--threads 2]
        [--limit N] [--peer torch|none] [--device cpu|cuda] [--out benchmarks/results/autograd_mnist.md]

MNIST is read with exp.data.load_mnist() (from $EXP_DATA_HOME/mnist/, else downloaded). The model:
conv 1->32 3x3 pad 1, batch norm, ReLU, 2x2 max pool, conv 32->64 3x3 pad 1, batch norm, ReLU, 2x2 max pool,
dropout 0.25, linear 3136->10; Adam (lr 2e-3 annealed to 0 along a cosine, step by step), weight decay
1e-4 as a hook.
The two engines alternate epoch by epoch (ours, torch, ours, torch, ...) in one process, so a change in
the machine's load hits both; each epoch's time and the ratio of the two are reported, with the test
accuracy after each epoch. Appends a markdown section to --out. `--device cuda` trains both on the GPU
(data, weights and every temporary there; each epoch's time waits for the device); on a machine without
CUDA it exits with status 2 and says so.
"""
import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exp.autograd import Linear, eval_mode, relu, softmax_cross_entropy  # noqa: E402
from exp.autograd_functions import accuracy, dropout, flatten, max_pool2d  # noqa: E402
from exp.autograd_layers import BatchNorm2d, Conv2d, Sequential, named_tensors  # noqa: E402
from exp.autograd_optimizers import Adam, WeightDecay  # noqa: E402
from exp.data import load_mnist  # noqa: E402

WIDTH, LR, WEIGHT_DECAY = 32, 2e-3, 1e-4


def ours_model():
    return Sequential(Conv2d(1, WIDTH, 3, padding=1), BatchNorm2d(WIDTH), relu, lambda x: max_pool2d(x, 2),
                      Conv2d(WIDTH, 2 * WIDTH, 3, padding=1), BatchNorm2d(2 * WIDTH), relu,
                      lambda x: max_pool2d(x, 2), flatten, lambda x: dropout(x, 0.25),
                      Linear(2 * WIDTH * 49, 10))


def torch_model_like(ours):
    "The same architecture in torch.nn, with our initial weights copied in."
    model = nn.Sequential(nn.Conv2d(1, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(WIDTH, 2 * WIDTH, 3, padding=1),
                          nn.BatchNorm2d(2 * WIDTH),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25),
                          nn.Linear(2 * WIDTH * 49, 10))
    state = model.state_dict()
    names = {"W": "weight", "b": "bias"}
    for name, v in named_tensors(ours):
        index, attribute = name.split(".")[1:]
        state[f"{index}.{names.get(attribute, attribute)}"].copy_(v.data)
    model.load_state_dict(state)
    return model


class OursRun:
    "Our engine: the model, its optimizer, one epoch, the test accuracy."
    name = "exp.autograd (ours)"
    def __init__(self, model):
        self.model = model
        self.opt = Adam(model.parameters(), lr=LR, hooks=[WeightDecay(WEIGHT_DECAY)])
    def set_lr(self, lr): self.opt.lr = lr
    def epoch(self, x, y, order, batch_size, lrs):
        for i, lr in zip(range(0, len(order), batch_size), lrs):
            batch = order[i:i + batch_size]
            self.set_lr(lr)
            loss = softmax_cross_entropy(self.model(x[batch]), y[batch])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
    def test_accuracy(self, x, y, batch_size=1000):
        with eval_mode():
            hits = sum(accuracy(self.model(x[i:i + batch_size]), y[i:i + batch_size])
                       * len(y[i:i + batch_size]) for i in range(0, len(y), batch_size))
        return (hits / len(y)).item()


class TorchRun(OursRun):
    "torch.autograd and torch.optim.Adam (with `weight_decay`, the same L2 rule as our hook)."
    name = "torch.autograd"
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    def set_lr(self, lr):
        for group in self.opt.param_groups: group["lr"] = lr
    def epoch(self, x, y, order, batch_size, lrs):
        self.model.train()
        for i, lr in zip(range(0, len(order), batch_size), lrs):
            batch = order[i:i + batch_size]
            self.set_lr(lr)
            loss = F.cross_entropy(self.model(x[batch]), y[batch])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
    def test_accuracy(self, x, y, batch_size=1000):
        self.model.eval()
        with torch.no_grad():
            hits = sum((self.model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                       for i in range(0, len(y), batch_size))
        return hits / len(y)


def main(epochs, batch_size, threads, limit, peer, out, device="cpu"):
    torch.set_num_threads(threads)
    x_train, y_train, x_test, y_test = load_mnist()
    if limit: x_train, y_train = x_train[:limit], y_train[:limit]
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = ((x.reshape(-1, 1, 28, 28) - mean) / std for x in (x_train, x_test))
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    torch.manual_seed(0)
    ours = ours_model()
    runs = [OursRun(ours)] + ([TorchRun(torch_model_like(ours))] if peer == "torch" else [])
    ours.to(device)  # after the copy into torch's model, which then moves itself
    if peer == "torch": runs[1].model.to(device)
    load_before = os.getloadavg()
    rows = {run.name: [] for run in runs}
    steps = math.ceil(len(y_train) / batch_size)
    for epoch in range(epochs):
        lrs = [LR * 0.5 * (1 + math.cos(math.pi * (epoch * steps + i) / (epochs * steps)))
               for i in range(steps)]
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch)).to(device)
        for run in (runs if epoch % 2 == 0 else runs[::-1]):  # alternate who goes first
            torch.manual_seed(100 + epoch)  # the same dropout stream for both
            start = time.perf_counter()
            run.epoch(x_train, y_train, order, batch_size, lrs)
            if device == "cuda": torch.cuda.synchronize()  # the epoch is done when the device is
            seconds = time.perf_counter() - start
            rows[run.name].append((seconds, run.test_accuracy(x_test, y_test)))
            print(f"epoch {epoch + 1} {run.name}: {seconds:.1f}s, test accuracy {rows[run.name][-1][1]:.4f}",
                  flush=True)
    report(rows, epochs, batch_size, threads, len(y_train), load_before, os.getloadavg(), out, device)


def report(rows, epochs, batch_size, threads, n_train, load_before, load_after, out, device):
    names = list(rows)
    command = " ".join(["python"] + sys.argv)
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{command}`\n",
             f"Machine: {platform.machine()} {os.cpu_count()}-core CPU ({platform.platform()}), device "
             f"{device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, Python "
             f"{platform.python_version()}, torch {torch.__version__}, {threads} thread(s); load average "
             f"{load_before[0]:.1f} before and {load_after[0]:.1f} after. {n_train:,} training images, "
             f"the 10,000 test images, batch {batch_size}, {epochs} epoch(s).\n",
             "| epoch | " + " | ".join(f"{n} s | {n} test acc." for n in names)
             + (" | ours / torch (time) |" if len(names) > 1 else " |"),
             "|---:|" + "---:|---:|" * len(names) + ("---:|" if len(names) > 1 else "")]
    for e in range(epochs):
        cells = [f"{rows[n][e][0]:.1f} | {rows[n][e][1]:.4f}" for n in names]
        ratio = f" | {rows[names[0]][e][0] / rows[names[1]][e][0]:.2f}" if len(names) > 1 else ""
        lines.append(f"| {e + 1} | " + " | ".join(cells) + ratio + " |")
    total = {n: sum(s for s, _ in rows[n]) for n in names}
    summary = "; ".join(f"{n}: {total[n]:.0f} s in all, final test accuracy {rows[n][-1][1]:.4f}"
                        for n in names)
    if len(names) > 1:
        ratio = statistics.median(rows[names[0]][e][0] / rows[names[1]][e][0] for e in range(epochs))
        summary += f"; median per-epoch ratio {ratio:.2f}"
    lines.append(f"\n{summary}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out = Path(out)
        if not out.exists():
            out.write_text("# A CNN on MNIST on our own engine (benchmarks/autograd_mnist.py)\n",
                           encoding="utf-8")
        with out.open("a", encoding="utf-8") as f: f.write(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0,
                        help="train on the first N images only (0: all 60,000)")
    parser.add_argument("--peer", choices=["torch", "none"], default="torch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autograd_mnist.md"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: no CUDA device is visible to torch on this machine (torch "
              f"{torch.__version__}, built with CUDA {torch.version.cuda}); run with --device cpu",
              file=sys.stderr)
        sys.exit(2)
    main(args.epochs, args.batch_size, args.threads, args.limit, args.peer, args.out, args.device)
