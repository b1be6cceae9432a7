#!/usr/bin/env python
"""One training epoch of the same small CNN, five ways, measured in one run.

    python benchmarks/train_loop.py                      # MNIST from ../shared/data when present
    python benchmarks/train_loop.py --dataset digits --runs 7
    python benchmarks/train_loop.py --device cuda        # on a GPU (data on the CPU, moved per batch)
    python benchmarks/train_loop.py --dataset digits --runs 1 --overhead_runs 1 --only raw learner  # quick

Contenders (same model and initial weights, data order, optimizer, batch size and loss):
  raw          a hand-written PyTorch loop over shuffled in-memory tensors
  raw+torchDL  the same loop fed by torch.utils.data.DataLoader(TensorDataset)
  learner      our Learner with its default callbacks and an accuracy metric
  learner+bar  the same with our ProgressCallback (fastprogress) on
  lightning    PyTorch Lightning's Trainer (progress bar, logger, checkpointing, summary off)
An "epoch" is one pass over the training set plus one over the validation set. The contenders run
interleaved, in a rotating order, after one untimed warm-up round; we quote medians and the median
of the per-round ratios to `raw`. Then the Learner's own cost per batch, on a linear model (almost no
compute): fed by our DataLoader, and fed the raw loop's own batches (the Learner alone); then our
DataLoader against torch's on the same tensors.

With `--device cuda` the models train on the GPU and every clock is read after `torch.cuda.synchronize()`;
without a GPU it stops at once with exit status 2. Lightning is left out, saying so, where it is not
installed. Prints a markdown report; `--out FILE` also appends it, with the command line, to FILE.
"""
import argparse
import contextlib
import io
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from _timing import add_device_argument, device_label, resolve_device, sync

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"


def load(dataset):
    "Train and valid tensors shaped (N, 1, size, size), plus labels."
    if dataset == "mnist" and not os.environ.get("EXP_DATA_HOME") and (SHARED_DATA / "mnist").exists():
        os.environ["EXP_DATA_HOME"] = str(SHARED_DATA)
    from exp.data import get_data, image_size
    x_train, y_train, x_valid, y_valid = get_data(dataset)
    size = image_size(dataset)
    return x_train.view(-1, 1, size, size), y_train, x_valid.view(-1, 1, size, size), y_valid


def make_cnn(seed):
    "A small CNN (four stride-2 convolutions, average pool, linear) with seeded initial weights."
    torch.manual_seed(seed)
    def conv(ni, nf): return nn.Sequential(nn.Conv2d(ni, nf, 3, stride=2, padding=1), nn.ReLU())
    return nn.Sequential(conv(1, 8), conv(8, 16), conv(16, 32), conv(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


DEVICE = torch.device("cpu")  # set from --device in main()


def to(x):
    "A batch on DEVICE, as the Learner moves it (pinned and non-blocking from the CPU to a GPU)."
    if DEVICE.type == "cpu": return x
    return x.pin_memory().to(DEVICE, non_blocking=True) if DEVICE.type == "cuda" else x.to(DEVICE)


def now():
    "Wall-clock and this process's CPU time (steadier on a loaded machine), once the device's work is done."
    sync(DEVICE)
    return time.perf_counter(), time.process_time()

def since(start):
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def make_linear(seed):
    "A linear model: almost no compute per batch, so an epoch's time is the loop's own overhead."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def make_opt(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


@torch.no_grad()
def accuracy_of(model, x, y, bs=1000):
    "Validation accuracy, computed the same way for every contender (not timed)."
    model.eval()
    correct = sum((model(to(x[i:i + bs])).argmax(1) == to(y[i:i + bs])).sum() for i in range(0, len(x), bs))
    return correct.item() / len(x)


# --- (a) and (b): hand-written loops --------------------------------------------------------------

@torch.no_grad()
def raw_validate(model, batches):
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for xb, yb in batches:
        xb, yb = to(xb), to(yb)
        preds = model(xb)
        total_loss += F.cross_entropy(preds, yb, reduction="sum").item()
        correct += (preds.argmax(1) == yb).sum().item()
        count += len(yb)
    return total_loss / count, correct / count


def run_raw(data, args):
    x_train, y_train, x_valid, y_valid = data
    model = args.make_model(args.seed).to(DEVICE)
    opt = make_opt(model.parameters(), args.lr)
    start = now()
    model.train()
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))
    for i in range(0, len(x_train), args.bs):
        idx = order[i:i + args.bs]
        loss = F.cross_entropy(model(to(x_train[idx])), to(y_train[idx]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    vbs = 2 * args.bs  # validation batches twice as large, as in DataLoaders.from_tensors
    raw_validate(model, ((x_valid[i:i + vbs], y_valid[i:i + vbs]) for i in range(0, len(x_valid), vbs)))
    return since(start), model


def torch_loaders(data, args):
    from torch.utils.data import DataLoader, TensorDataset
    x_train, y_train, x_valid, y_valid = data
    # The same shuffled order as the other contenders (torch's RandomSampler would first draw a seed
    # for its workers from the generator, and so visit the items in another order).
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.bs, sampler=order)
    return train, DataLoader(TensorDataset(x_valid, y_valid), batch_size=2 * args.bs)


def run_raw_torch_dl(data, args):
    model = args.make_model(args.seed).to(DEVICE)
    opt = make_opt(model.parameters(), args.lr)
    start = now()
    train, valid = torch_loaders(data, args)
    model.train()
    for xb, yb in train:
        loss = F.cross_entropy(model(to(xb)), to(yb))
        loss.backward()
        opt.step()
        opt.zero_grad()
    raw_validate(model, valid)
    return since(start), model


# --- (c) and (d): our Learner -----------------------------------------------------------------------

class RawBatches:
    "The raw loop's batches (one shuffled permutation, a whole batch indexed at once), as a sized loader."
    def __init__(self, x, y, bs, seed=None): self.x, self.y, self.bs, self.seed = x, y, bs, seed
    def __len__(self): return -(-len(self.x) // self.bs)
    def __iter__(self):
        order = None
        if self.seed is not None:
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed))
        for i in range(0, len(self.x), self.bs):
            idx = slice(i, i + self.bs) if order is None else order[i:i + self.bs]
            yield self.x[idx], self.y[idx]


def run_learner(data, args, progress=False, raw_batches=False):
    from exp.learner import Learner
    from exp.training import DataLoaders, accuracy
    model = args.make_model(args.seed)
    start = now()
    if raw_batches:  # the Learner alone: fed exactly what the raw loop computes on
        x_train, y_train, x_valid, y_valid = data
        dls = DataLoaders(RawBatches(x_train, y_train, args.bs, args.seed),
                          RawBatches(x_valid, y_valid, 2 * args.bs))
    else: dls = DataLoaders.from_tensors(*data, batch_size=args.bs, seed=args.seed)
    cbs = []
    if progress:
        from exp.progress import ProgressCallback
        cbs.append(ProgressCallback(bars=True))  # the console bars, even when stdout is not a terminal
    learn = Learner(model, dls, loss_func=F.cross_entropy, lr=args.lr, opt_func=make_opt,
                    metrics=[accuracy], cbs=cbs, device=DEVICE)
    with contextlib.redirect_stdout(io.StringIO()):  # the console table is not part of the benchmark output
        learn.fit(1)
    return since(start), model


# --- (e) PyTorch Lightning --------------------------------------------------------------------------

def run_lightning(data, args):
    import pytorch_lightning as pl

    class LitCNN(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x): return self.model(x)
        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)
        def validation_step(self, batch, batch_idx):
            xb, yb = batch
            preds = self.model(xb)
            self.log_dict({"valid_loss": F.cross_entropy(preds, yb),
                           "accuracy": (preds.argmax(1) == yb).float().mean()}, batch_size=len(yb))
        def configure_optimizers(self): return make_opt(self.parameters(), args.lr)

    model = args.make_model(args.seed)
    start = now()
    train, valid = torch_loaders(data, args)
    accelerator, devices = ("gpu", [DEVICE.index or 0]) if DEVICE.type == "cuda" else (DEVICE.type, 1)
    trainer = pl.Trainer(max_epochs=1, accelerator=accelerator, devices=devices, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    with contextlib.redirect_stdout(io.StringIO()):  # Lightning's tips
        trainer.fit(LitCNN(model), train, valid)
    return since(start), model


CONTENDERS = {"raw": run_raw, "raw+torchDL": run_raw_torch_dl, "learner": run_learner,
              "learner+bar": partial(run_learner, progress=True), "lightning": run_lightning,
              "learner (raw batches)": partial(run_learner, raw_batches=True)}
EPOCH_CONTENDERS = ["raw", "raw+torchDL", "learner", "learner+bar", "lightning"]


def bench_epochs(data, args, names):
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    accuracy = {}
    warmup = tuple(t[:len(t) // 10] for t in data)
    # round 0 warms up on a tenth of the data (imports, allocator, Lightning)
    for round_ in range(args.runs + 1):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            (seconds, cpu), model = CONTENDERS[name](data if round_ else warmup, args)
            if round_:
                times[name].append(seconds)
                cpu_times[name].append(cpu)
            accuracy[name] = accuracy_of(model, data[2], data[3])
        if round_:
            done = ", ".join(f"{n} {times[n][-1]:.2f}s ({cpu_times[n][-1]:.2f}s cpu)" for n in names)
            print(f"  round {round_}: {done}", file=sys.stderr, flush=True)
    return times, cpu_times, accuracy


OVERHEAD = ["raw", "learner", "learner (raw batches)"]


def bench_overhead(data, args):
    "CPU seconds per epoch of raw vs the Learner on a linear model: the Learner's own cost per batch."
    def linear_for_data(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(data[0][0].numel(), 10))
    tiny = argparse.Namespace(**{**vars(args), "make_model": make_linear})
    if data[0].shape[-1] != 28: tiny.make_model = linear_for_data
    cpu = {name: [] for name in OVERHEAD}
    for round_ in range(args.overhead_runs + 1):  # round 0 warms up
        for name in OVERHEAD[round_ % 3:] + OVERHEAD[:round_ % 3]:
            (_, seconds), _ = CONTENDERS[name](data, tiny)
            if round_: cpu[name].append(seconds)
    return cpu


# --- our DataLoader vs torch's ----------------------------------------------------------------------

def batches_per_second(make_loader, n_epochs):
    loader = make_loader()
    start, n = time.perf_counter(), 0
    for _ in range(n_epochs):
        for _batch in loader: n += 1
    return n / (time.perf_counter() - start)


def bench_dataloaders(data, args):
    from torch.utils.data import BatchSampler, RandomSampler, TensorDataset
    from torch.utils.data import DataLoader as TorchDL

    from exp.training import DataLoader, Dataset
    x, y = data[0], data[1]
    loaders = {
        "ours (shuffled)": lambda: DataLoader(Dataset(x, y), args.bs, shuffle=True, seed=args.seed),
        "torch (shuffled)": lambda: TorchDL(TensorDataset(x, y), batch_size=args.bs, shuffle=True),
        # torch's fast idiom for in-memory tensors: index a whole batch at once
        "torch, batched sampler": lambda: TorchDL(
            TensorDataset(x, y), batch_size=None,
            sampler=BatchSampler(RandomSampler(x), args.bs, drop_last=False)),
    }
    rates = {name: [] for name in loaders}
    for round_ in range(args.runs + 1):
        for name, make in loaders.items():
            rate = batches_per_second(make, args.dl_epochs)
            if round_: rates[name].append(rate)
    return rates


def lightning_missing(names):
    "Drop Lightning from `names` where it is not installed; a sentence saying so (empty when it is)."
    if "lightning" not in names: return ""
    import importlib.util
    if importlib.util.find_spec("pytorch_lightning") is not None: return ""
    names.remove("lightning")
    return "PyTorch Lightning is not installed here: its row is left out (`pip install pytorch-lightning`)."


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dl_epochs", type=int, default=1, help="epochs per DataLoader measurement")
    parser.add_argument("--only", nargs="*", default=None, choices=EPOCH_CONTENDERS,
                        help="a subset of the contenders")
    parser.add_argument("--skip_epochs", action="store_true",
                        help="only the overhead and DataLoader measurements")
    parser.add_argument("--overhead_runs", type=int, default=11,
                        help="timed rounds of the linear-model overhead")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a shared 2-core machine 2 threads oversubscribe: 20x swings)")
    parser.add_argument("--out", default=None, help="also append the report (and command line) to this file")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    global DEVICE
    DEVICE = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning"): logging.getLogger(name).setLevel(logging.ERROR)

    args.make_model = make_cnn
    data = load(args.dataset)
    names = list(args.only or EPOCH_CONTENDERS)
    note = lightning_missing(names)
    if note: print(note, file=sys.stderr)
    load_before = os.getloadavg()
    if not args.skip_epochs: times, cpu_times, accuracy = bench_epochs(data, args, names)
    overhead = bench_overhead(data, args)
    rates = bench_dataloaders(data, args)
    load_after = os.getloadavg()
    n_batches = -(-len(data[0]) // args.bs) + -(-len(data[2]) // (2 * args.bs))

    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        print(f"# Training loop: one epoch, {args.dataset} ({len(data[0])} train / {len(data[2])} valid "
              "images), "
              f"batch size {args.bs}, SGD(lr={args.lr}, momentum=0.9)\n")
        print(f"`python {shlex.join(['benchmarks/train_loop.py', *sys.argv[1:]])}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), device {device_label(DEVICE)}, "
              f"Python {platform.python_version()}; median of {args.runs} interleaved rounds after a warm-up "
              f"round; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n")
        if note: print(note + "\n")
        print_report(args, names, times if not args.skip_epochs else None,
                     cpu_times if not args.skip_epochs else None, accuracy if not args.skip_epochs else None,
                     overhead, rates, n_batches, data)
    print(report.getvalue(), end="")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f: f.write(report.getvalue() + "\n")


def paired(t, ref): return statistics.median(a / b for a, b in zip(t, ref)) if ref else float("nan")


def print_report(args, names, times, cpu_times, accuracy, overhead, rates, n_batches, data):
    "The epoch table (unless --skip_epochs), the Learner's own cost and the DataLoader table."
    def over_raw(name): return statistics.median(a - b for a, b in zip(overhead[name], overhead["raw"]))
    over_us = {name: 1e6 * over_raw(name) / n_batches for name in OVERHEAD[1:]}
    if times is None:
        return print_overhead(overhead, over_us, n_batches, None)
    print("| contender | wall s (median) | wall min–max | wall ratio to raw | CPU s (median) "
          "| CPU ratio to raw | valid accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        t, c = times[name], cpu_times[name]
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f}–{max(t):.2f} | "
              f"{paired(t, times.get('raw')):.3f} | {statistics.median(c):.2f} | "
              f"{paired(c, cpu_times.get('raw')):.3f} | {accuracy[name]:.4f} |")
    print("\nRatios are medians of the per-round ratios (contenders interleaved, rotating order). "
          "CPU time is the process's user+system time (one torch thread), which waiting for a busy core "
          "does not inflate.")
    cnn_batch_s = statistics.median(cpu_times["raw"]) / n_batches if "raw" in cpu_times else None
    print_overhead(overhead, over_us, n_batches, cnn_batch_s)
    print(f"\n## DataLoader on in-memory tensors ({len(data[0])} images, batch size {args.bs})\n")
    print("| loader | batches/s (median) | ours is × faster (median of paired) |")
    print("|---|---|---|")
    ours = rates["ours (shuffled)"]
    for name, r in rates.items():
        ratio = statistics.median(a / b for a, b in zip(ours, r))
        print(f"| {name} | {statistics.median(r):.0f} | {ratio:.2f} |")


def print_overhead(overhead, over_us, n_batches, cnn_batch_s):
    print(f"\n## The Learner's own cost per batch (linear model, one epoch = {n_batches} batches, CPU time, "
          f"median of {len(overhead['raw'])} interleaved rounds)\n")
    # on a shared machine other processes only ever add time: the fastest round is the least disturbed one
    best_us = {name: 1e6 * (min(overhead[name]) - min(overhead["raw"])) / n_batches for name in OVERHEAD}
    print("| contender | CPU s per epoch (median) | CPU s (fastest round) | µs per batch over raw "
          "(median of paired) | µs per batch over raw (fastest rounds) |")
    print("|---|---|---|---|---|")
    for name in OVERHEAD:
        print(f"| {name} | {statistics.median(overhead[name]):.3f} | {min(overhead[name]):.3f} | "
              f"{over_us.get(name, 0):.0f} | {best_us[name]:.0f} |")
    own = over_us["learner (raw batches)"]
    share = ""
    if cnn_batch_s:
        share = (f", {100 * over_us['learner'] * 1e-6 / cnn_batch_s:.1f}% of the CNN's "
                 f"{1e3 * cnn_batch_s:.2f} ms per batch")
    best = best_us["learner (raw batches)"]
    print("\nThe Learner alone (callbacks, metrics on every batch, loss check, device placement), fed the "
          f"raw loop's batches, adds {own:.0f} µs per batch (fastest rounds: {best:.0f} µs); "
          f"with our DataLoader, {over_us['learner']:.0f} µs{share}.")


if __name__ == "__main__":
    main()
