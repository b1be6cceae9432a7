#!/usr/bin/env python
"""Time to accuracy: 11a's speedrun (exp.speed), XResNet trained by our Learner, the same model and schedule
in a raw PyTorch loop, and PyTorch's classic MNIST example (two convs, Adadelta, StepLR), to the same
validation accuracy.

    python benchmarks/time_to_accuracy.py --dataset digits --runs 3          # target 98.5%
    python benchmarks/time_to_accuracy.py --dataset mnist --data-home DIR --runs 1 --time-limit 600
    python benchmarks/time_to_accuracy.py --dataset mnist --only speedrun --runs 3 --threads 2   # ~1 minute
    python benchmarks/time_to_accuracy.py --dataset mnist --only speedrun "ours (Learner)" \
        "PyTorch MNIST example" --runs 1 --time-limit 2400

DIR holds mnist/ with the four IDX files (or set $EXP_DATA_HOME; without either they are downloaded).

Each contender trains until its validation accuracy (checked after every epoch) reaches the target, or
its epochs or the time limit run out; the clock covers training and the per-epoch validation, not
data loading or model creation. The speedrun trains a fixed one-cycle schedule and is evaluated once, at
its end: its clock covers everything after the data is in memory (the bfloat16 check, the first step's
kernel set-up, training, the evaluation). Runs are interleaved (speedrun, ours, raw, example, speedrun,
...) with a new seed per round; medians and paired ratios are printed as a markdown table.
`--device cuda` runs the same code on a GPU.
"""
import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exp.augment import AugmentCallback, BatchAugment
from exp.data import get_data
from exp.learner import Callback, CancelFitException, Learner
from exp.mixup import LabelSmoothingCrossEntropy
from exp.optimizers import AdamW
from exp.resnet import xresnet_small
from exp.schedule import ParamScheduler, one_cycle, set_hyper
from exp.speed import predict, speedrun_net, train_speedrun
from exp.training import DataLoaders, accuracy

TARGETS = {"digits": 0.985, "mnist": 0.994}
# the recipe of nbs/11_resnet.ipynb: epochs of the one-cycle schedule, peak lr, batch size
RECIPES = {"digits": dict(epochs=12, lr=1e-2, batch_size=64),
           "mnist": dict(epochs=5, lr=1e-2, batch_size=128)}
# 11a's speedrun: network widths and space to depth, epochs (fractional), batch size, peak lr, label
# smoothing, test-time augmentation
SPEEDRUN = {"digits": dict(widths=(32, 64, 128), unshuffle=1, epochs=10, batch_size=64, lr=0.1,
                           label_smoothing=0.1, tta=False),
            "mnist": dict(widths=(32, 64, 128), unshuffle=2, epochs=3.0, batch_size=256, lr=0.3,
                          label_smoothing=0.0, tta=True)}


def load(dataset, device):
    "Normalised image tensors on `device`, and the image side."
    x_train, y_train, x_valid, y_valid = get_data(dataset)
    size = int(math.isqrt(x_train.shape[1]))
    mean, std = x_train.mean(), x_train.std()
    prep = lambda x: ((x - mean) / std).view(-1, 1, size, size).to(device)
    return prep(x_train), y_train.to(device), prep(x_valid), y_valid.to(device), size


class StopAtTarget(Callback):
    "Note the time when validation accuracy first reaches the target, and stop there."
    order = 200
    def __init__(self, target, time_limit): self.target, self.time_limit = target, time_limit
    def before_fit(self):
        self.start, self.reached, self.epochs = time.perf_counter(), None, 0
        self.best = self.elapsed = 0.0

    def after_epoch(self):
        acc, self.epochs = self.learn.metrics.values("valid_accuracy")[-1], self.learn.epoch + 1
        self.best = max(self.best, acc)
        self.elapsed = elapsed = time.perf_counter() - self.start
        if acc >= self.target:
            self.reached = elapsed
            raise CancelFitException()
        if elapsed > self.time_limit: raise CancelFitException()


def run_ours(data, recipe, target, seed, time_limit):
    "Our Learner, one-cycle ParamScheduler, our AdamW, batch augmentation, label smoothing."
    x_train, y_train, x_valid, y_valid, size = data
    torch.manual_seed(seed)
    model = xresnet_small(image_size=size).to(x_train.device)
    dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, batch_size=recipe["batch_size"],
                                   seed=seed)
    stop = StopAtTarget(target, time_limit)
    learn = Learner(model, dls, loss_func=LabelSmoothingCrossEntropy(0.1), lr=recipe["lr"], opt_func=AdamW,
                    metrics=[accuracy], logger=None,
                    cbs=[ParamScheduler(one_cycle(recipe["lr"])),
                         AugmentCallback(BatchAugment(pad=1, max_rotate=10, max_zoom=0.1, seed=seed)), stop])
    learn.fit(recipe["epochs"])
    return stop.reached, stop.epochs, stop.best, stop.elapsed


def evaluate(model, x_valid, y_valid, batch_size=1024):
    model.eval()
    with torch.no_grad():
        correct = sum((model(x_valid[i:i + batch_size]).argmax(1) == y_valid[i:i + batch_size]).sum().item()
                      for i in range(0, len(x_valid), batch_size))
    return correct / len(x_valid)


def run_raw(data, recipe, target, seed, time_limit):
    "The same model, schedule (lr and β1 from one_cycle), AdamW, augmentation and loss, in a plain loop."
    x_train, y_train, x_valid, y_valid, size = data
    torch.manual_seed(seed)
    model = xresnet_small(image_size=size).to(x_train.device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"])
    scheds, augment = one_cycle(recipe["lr"]), BatchAugment(pad=1, max_rotate=10, max_zoom=0.1, seed=seed)
    bs, n, epochs = recipe["batch_size"], len(x_train), recipe["epochs"]
    total, step = epochs * math.ceil(n / bs), 0
    generator, start, best = torch.Generator().manual_seed(seed), time.perf_counter(), 0.0
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=generator).split(bs):
            idx = idx.to(x_train.device)
            for group in opt.param_groups:
                for name, sched in scheds.items(): set_hyper(group, name, sched(step / total))
            loss = F.cross_entropy(model(augment(x_train[idx])), y_train[idx], label_smoothing=0.1)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
        acc = evaluate(model, x_valid, y_valid)
        best, elapsed = max(best, acc), time.perf_counter() - start
        if acc >= target: return elapsed, epoch + 1, best, elapsed
        if elapsed > time_limit: break
    return None, epoch + 1, best, elapsed


class ExampleNet(nn.Module):
    "The network of PyTorch's examples/mnist/main.py, sized for any square input."
    def __init__(self, size):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(64 * ((size - 4) // 2) ** 2, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(torch.flatten(F.max_pool2d(x, 2), 1))
        return self.fc2(self.dropout2(F.relu(self.fc1(x))))


def run_example(data, recipe, target, seed, time_limit):
    "PyTorch's MNIST example: batch 64, Adadelta lr=1.0, StepLR(1, γ=0.7), 14 epochs, no augmentation."
    x_train, y_train, x_valid, y_valid, size = data
    torch.manual_seed(seed)
    model = ExampleNet(size).to(x_train.device)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    generator, start, best = torch.Generator().manual_seed(seed), time.perf_counter(), 0.0
    for epoch in range(recipe.get("example_epochs", 14)):
        model.train()
        for idx in torch.randperm(len(x_train), generator=generator).split(64):
            idx = idx.to(x_train.device)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        acc = evaluate(model, x_valid, y_valid)
        best, elapsed = max(best, acc), time.perf_counter() - start
        if acc >= target: return elapsed, epoch + 1, best, elapsed
        if elapsed > time_limit: break
    return None, epoch + 1, best, elapsed


def run_speedrun(data, recipe, target, seed, time_limit):
    "11a's recipe: resident data, batched shifts, channels_last, bfloat16 where it pays, a small CNN."
    x_train, y_train, x_valid, y_valid, size = data
    start = time.perf_counter()
    settings = dict(recipe["speedrun"])
    torch.manual_seed(seed)
    model = speedrun_net(settings.pop("widths"), unshuffle=settings.pop("unshuffle"))
    model = model.to(x_train.device, memory_format=torch.channels_last)
    x_train, x_valid = (x.contiguous(memory_format=torch.channels_last) for x in (x_train, x_valid))
    run = train_speedrun(x_train, y_train, x_valid, y_valid, model, seed=seed, **settings)
    elapsed = time.perf_counter() - start
    if settings["tta"]:  # after the clock: what the test-time augmentation bought in this run
        plain = (predict(model, x_valid, run["use_bf16"]).argmax(1) == y_valid).float().mean().item()
        print(f"<!-- speedrun seed {seed}: {run['accuracy']:.4f} with test-time augmentation, "
              f"{plain:.4f} without -->")
    return (elapsed if run["accuracy"] >= target else None), settings["epochs"], run["accuracy"], elapsed


CONTENDERS = {"speedrun": run_speedrun, "ours (Learner)": run_ours, "raw PyTorch loop": run_raw,
              "PyTorch MNIST example": run_example}


def fmt(seconds): return "—" if seconds is None else f"{seconds:.1f}"


def cpu_seconds():
    "CPU time of this process and of the children it waited for (torch.compile's workers, if any)."
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(TARGETS), default="digits")
    parser.add_argument("--data-home", help="folder holding mnist/ (sets EXP_DATA_HOME)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, or all (cpu, and cuda when available)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 suits small convs on a busy machine; 2 a quiet one)")
    parser.add_argument("--time-limit", type=float, default=600,
                        help="seconds per contender and run before giving up")
    parser.add_argument("--epochs", type=int,
                        help="length of the one-cycle schedule for ours/raw (default: the recipe's)")
    parser.add_argument("--example-epochs", type=int, default=14, help="epochs of the MNIST example recipe")
    parser.add_argument("--speedrun-epochs", type=float,
                        help="epochs of the speedrun's schedule (default: its recipe's)")
    parser.add_argument("--only", nargs="*", choices=sorted(CONTENDERS), help="run only these contenders")
    args = parser.parse_args()
    if args.data_home: os.environ["EXP_DATA_HOME"] = args.data_home
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    target, recipe = TARGETS[args.dataset], dict(RECIPES[args.dataset])
    if args.epochs: recipe["epochs"] = args.epochs
    recipe["example_epochs"] = args.example_epochs
    recipe["speedrun"] = dict(SPEEDRUN[args.dataset])
    if args.speedrun_epochs: recipe["speedrun"]["epochs"] = args.speedrun_epochs
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    contenders = {k: v for k, v in CONTENDERS.items() if not args.only or k in args.only}

    print(f"# Time to {target:.1%} validation accuracy on {args.dataset}\n")
    print(f"`{shlex.join(['python', *sys.argv])}`\n")
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} CPU thread(s), "
          f"{os.cpu_count()} cores visible, load average before {os.getloadavg()[0]:.1f}; "
          f"{args.runs} interleaved run(s); recipe for "
          f"ours/raw: {recipe['epochs']}-epoch one-cycle, lr {recipe['lr']}, batch {recipe['batch_size']}; "
          f"speedrun: {recipe['speedrun']}\n")
    for device in devices:
        data = load(args.dataset, device)
        results = {name: [] for name in contenders}
        for run in range(args.runs):
            for name, func in contenders.items():
                cpu = cpu_seconds()
                results[name].append(func(data, recipe, target, seed=run, time_limit=args.time_limit))
                seconds, epochs, best, elapsed = results[name][-1]
                print(f"<!-- {device} run {run} {name}: target at {fmt(seconds)}s, {epochs} epochs in "
                      f"{elapsed:.1f}s "
                      f"({cpu_seconds() - cpu:.1f} CPU s), best {best:.4f}, "
                      f"load {os.getloadavg()[0]:.1f} -->",
                      flush=True)
        print(f"\n## {device}\n")
        print("| contender | median time to target (s) | runs reaching target | epochs (median) | "
              "s per epoch (median) | best accuracy (median) | × raw loop | × MNIST example |")
        print("|---|---|---|---|---|---|---|---|")
        def med_time(name):
            times = [r[0] for r in results.get(name, []) if r[0] is not None]
            return statistics.median(times) if times else None
        for name, rows in results.items():
            t, raw, ex = med_time(name), med_time("raw PyTorch loop"), med_time("PyTorch MNIST example")
            ratio = lambda other: "—" if t is None or other is None else f"{t / other:.2f}"
            print(f"| {name} | {fmt(t)} | {sum(r[0] is not None for r in rows)}/{len(rows)} | "
                  f"{statistics.median(r[1] for r in rows):.0f} | "
                  f"{statistics.median(r[3] / r[1] for r in rows):.2f} | "
                  f"{statistics.median(r[2] for r in rows):.4f} | "
                  f"{ratio(raw)} | {ratio(ex)} |")
        # paired ratios: ours / raw within the same round
        ours, raw = results.get("ours (Learner)", []), results.get("raw PyTorch loop", [])
        pairs = [a[0] / b[0] for a, b in zip(ours, raw)
                 if a[0] is not None and b[0] is not None]
        if pairs: print(f"\nPaired ratio ours / raw loop per round: {', '.join(f'{p:.2f}' for p in pairs)} "
                        f"(median {statistics.median(pairs):.2f}).")
        # time to target also counts epochs, which differ with the shuffling; seconds per epoch: the overhead
        per_epoch = [(a[3] / a[1]) / (b[3] / b[1]) for a, b in zip(ours, raw)]
        if per_epoch: print("Paired ratio of seconds per epoch, ours / raw loop: "
                            f"{', '.join(f'{p:.2f}' for p in per_epoch)} "
                            f"(median {statistics.median(per_epoch):.2f}).")
        for peer in ("ours (Learner)", "PyTorch MNIST example"):
            pairs = [a[0] / b[0] for a, b in zip(results.get("speedrun", []), results.get(peer, []))
                     if a[0] is not None and b[0] is not None]
            if pairs: print(f"Paired ratio speedrun / {peer} per round: "
                            f"{', '.join(f'{p:.3f}' for p in pairs)} "
                            f"(median {statistics.median(pairs):.3f}).")
        if "speedrun" in results:
            whole = [r[3] for r in results["speedrun"]]
            print(f"Speedrun: whole run {', '.join(f'{t:.1f}' for t in whole)} s "
                  f"(median {statistics.median(whole):.1f}), "
                  f"accuracy {', '.join(f'{r[2]:.4f}' for r in results['speedrun'])} "
                  f"(median {statistics.median(r[2] for r in results['speedrun']):.4f}).")
    print(f"\nLoad average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
