#!/usr/bin/env python
"""Our GPT (exp.transformer) on character-level tiny Shakespeare: nanoGPT's CPU recipe, a tuned recipe, and
training throughput against the same architecture built from PyTorch's modules.

    python benchmarks/gpt.py nanogpt [--iters 2000] [--threads 2]      # (a) nanoGPT's CPU recipe, our code
    python benchmarks/gpt.py tuned [--minutes 5] [--threads 2]         # (b) our recipe: bfloat16, one-cycle
    python benchmarks/gpt.py throughput [--rounds 7] [--steps 5]       # (c) ours vs TorchGPT, tokens/s
    python benchmarks/gpt.py throughput --device cuda                   # any part, on a GPU
    add --no-write to print without appending to benchmarks/results/gpt.md, --out FILE to append elsewhere

(a) nanoGPT's README trains `config/train_shakespeare_char.py` on a laptop CPU with `--device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` and reports a validation loss of about
1.88 in about 3 minutes. We train the same configuration with our parts: GPT(65, 64, 128, 4, 4), our
Learner, our AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the matrices only, as nanoGPT),
nanoGPT's schedule (100 warm-up iterations, cosine to 1e-4 at 2,000), gradient clipping at 1, random
windows of the first 90% of the text; float32.
(b) The same parts with bfloat16 autocast (exp.mixed_precision), a one-cycle schedule at a higher learning
rate, and the sizes in TUNED; it trains for a fixed wall-clock budget (`--minutes`), whatever that buys.
Both report the loss estimated as nanoGPT's `estimate_loss` does: the mean over `--eval-iters` (200)
random batches of each split, in eval mode.
(c) One training step (forward, cross-entropy, backward, torch.optim.AdamW step) of our GPT and of
TorchGPT (nn.Embedding, nn.TransformerEncoderLayer(norm_first=True, activation="gelu"), nn.LayerNorm, a
tied nn.Linear) with the same weights and batch, interleaved (A B A B, alternating who goes first), in
float32 and under bfloat16 autocast; medians of tokens/s and of the per-round ratios.

With `--device cuda` the models, batches and loss estimates live on the GPU, autocast is CUDA's (still
bfloat16), and every clock is read after `torch.cuda.synchronize()`; without a GPU it stops at once with exit
status 2.

Each run appends a section to benchmarks/results/gpt.md with the command line, the machine and the load
average (this machine is shared: read the ratios, measured in the same run, before the absolute times).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import add_device_argument, clock, device_label, resolve_device

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exp.data import load_tinyshakespeare  # noqa: E402
from exp.learner import Callback, CancelFitException, Learner  # noqa: E402
from exp.mixed_precision import MixedPrecision  # noqa: E402
from exp.optimizers import AdamW  # noqa: E402
from exp.rnn import CharVocab, sequence_loss  # noqa: E402
from exp.schedule import ParamScheduler, combine_scheds, one_cycle, sched_cos, sched_lin, set_hyper  # noqa: E402
from exp.training import DataLoaders  # noqa: E402
from exp.transformer import GPT, GradientClipping, RandomWindows, torch_twin  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpt.md"
NANOGPT = dict(block_size=64, embed_dim=128, num_heads=4, num_layers=4, batch_size=12, lr=1e-3, min_lr=1e-4,
               warmup=100, weight_decay=0.1, betas=(0.9, 0.99))
TUNED = dict(block_size=128, embed_dim=128, num_heads=4, num_layers=4, batch_size=16, lr=3e-3,
             weight_decay=0.1, betas=(0.9, 0.99), pct_start=0.1)


def shakespeare_splits():
    "Character ids of tiny Shakespeare: nanoGPT's first 90% for training, last 10% for validation."
    text = load_tinyshakespeare()
    vocab = CharVocab(text)
    data = vocab.encode(text)
    n_train = int(0.9 * len(data))
    return vocab, data[:n_train], data[n_train:]


def adamw_groups(model, lr, weight_decay, betas):
    "nanoGPT's optimizer: AdamW with weight decay on the matrices (dim >= 2) only, not on biases and norms."
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def estimate_loss(model, data, block_size, batch_size, n_batches, seed, bf16=False):
    "nanoGPT's estimate: the mean loss over `n_batches` random batches, in eval mode (read once, at the end)."
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for x, y in RandomWindows(data, block_size, batch_size, n_batches, seed=seed, resample=False):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        losses.append(sequence_loss(logits.float(), y))
    return torch.stack(losses).mean().item()


class ClockSchedule(Callback):
    "Set the learning rate to `schedule(elapsed / seconds)` before each batch; stop the fit after `seconds`."
    order = 1
    def __init__(self, schedule, seconds): self.schedule, self.seconds = schedule, seconds
    def before_fit(self): self.start = time.perf_counter()

    def before_batch(self):
        pos = (time.perf_counter() - self.start) / self.seconds
        if pos >= 1: raise CancelFitException()
        for group in self.learn.opt.param_groups: set_hyper(group, "lr", self.schedule(pos))


def train(config, iters, schedule, bf16=False, budget_seconds=None, eval_iters=200, seed=0, device="cpu"):
    "Train a GPT with our Learner; return the model, the number of steps, the training seconds, the losses."
    vocab, train_data, valid_data = shakespeare_splits()
    torch.manual_seed(seed)
    sizes = [config[key] for key in ("block_size", "embed_dim", "num_heads", "num_layers")]
    model = GPT(len(vocab), *sizes)
    windows = RandomWindows(train_data, config["block_size"], config["batch_size"], iters, seed=seed)
    def opt_func(params, lr): return adamw_groups(model, lr, config["weight_decay"], config["betas"])
    # a fixed number of steps follows the schedule by step; a time budget follows it by the clock
    cbs = [ClockSchedule(schedule, budget_seconds) if budget_seconds else ParamScheduler(lr=schedule),
           GradientClipping(1.0)]
    if bf16: cbs.append(MixedPrecision(torch.bfloat16))
    learn = Learner(model, DataLoaders(windows, None), loss_func=sequence_loss, lr=config["lr"],
                    opt_func=opt_func, cbs=cbs, logger=None, device=device)
    start, cpu_start = clock(device), time.process_time()
    learn.fit(1)
    seconds, cpu_seconds = clock(device) - start, time.process_time() - cpu_start
    steps = learn.train_iter
    start = clock(device)
    splits = (("train", train_data, 1), ("valid", valid_data, 2))
    losses = {split: estimate_loss(model, data, config["block_size"], 12, eval_iters, split_seed, bf16)
              for split, data, split_seed in splits}
    eval_seconds = clock(device) - start
    return model, vocab, steps, seconds, cpu_seconds, eval_seconds, losses


def machine(threads, device):
    return (f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, {threads} thread(s), "
            f"device {device_label(device)}")


def write(section, args):
    print(section)
    if args.no_write: return
    results = Path(args.out)
    if not results.exists():
        results.write_text("# GPT on tiny Shakespeare: nanoGPT's CPU recipe, a tuned recipe, throughput\n\n"
                           "Written by `benchmarks/gpt.py`; each section is one run.\n\n", encoding="utf-8")
    with results.open("a", encoding="utf-8") as f: f.write(section + "\n")


def header(title, args, load_before, started):
    return (f"## {title}\n\n`python benchmarks/gpt.py {' '.join(sys.argv[1:])}`, started "
            f"{started:%Y-%m-%d %H:%M} UTC\n\nMachine: {machine(args.threads, args.device)}; load "
            f"average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}\n")


def sample_text(model, vocab, bf16):
    from exp.transformer import generate
    device = next(model.parameters()).device
    prompt = vocab.encode("\n")[None].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = generate(model, prompt, 200, temperature=0.8,
                       generator=torch.Generator(device=device).manual_seed(0))
    return vocab.decode(out[0].tolist())


def run_training(args, title, config, iters, schedule, bf16, budget_seconds):
    load_before, started = os.getloadavg(), datetime.now(timezone.utc)
    model, vocab, steps, seconds, cpu_seconds, eval_seconds, losses = train(
        config, iters, schedule, bf16, budget_seconds, args.eval_iters, device=args.device)
    tokens = steps * config["batch_size"] * config["block_size"]
    n_params = sum(p.numel() for p in model.parameters())
    sizes = ", ".join(f"{k}={v}" for k, v in config.items())
    section = header(title, args, load_before, started) + f"""
Configuration: {sizes}; {n_params:,} parameters; {'bfloat16 autocast' if bf16 else 'float32'}.

| steps | tokens | training wall time (s) | its CPU time (s) | tokens/s | train loss | **val loss** | \
estimate (s) |
|---:|---:|---:|---:|---:|---:|---:|---:|
| {steps:,} | {tokens:,} | {seconds:.1f} | {cpu_seconds:.1f} | {tokens / seconds:,.0f} | \
{losses['train']:.4f} | **{losses['valid']:.4f}** | {eval_seconds:.1f} |

Losses: mean cross-entropy (nats per character) over {args.eval_iters} random batches of 12 windows of
{config['block_size']} characters of each split (nanoGPT's `estimate_loss`). Load average after:
{', '.join(f'{v:.1f}' for v in os.getloadavg())}.

A sample (temperature 0.8, after a newline):

```
{sample_text(model, vocab, bf16)}
```
"""
    write(section, args)


def nanogpt(args):
    c = NANOGPT
    warm = min(c["warmup"] / args.iters, 0.5)  # 100 of 2,000 steps
    schedule = combine_scheds([warm, 1 - warm], [sched_lin(c["lr"] / (c["warmup"] + 1), c["lr"]),
                                                sched_cos(c["lr"], c["min_lr"])])
    run_training(args, f"(a) nanoGPT's CPU recipe with our code, {args.iters:,} iterations", c, args.iters,
                 schedule, bf16=False, budget_seconds=None)


def tuned(args):
    c = dict(TUNED)
    for key in ("block_size", "embed_dim", "num_heads", "num_layers", "batch_size", "lr"):
        value = getattr(args, key)
        if value is not None: c[key] = value
    # one-cycle over the time budget (--iters only bounds the number of steps)
    schedule = one_cycle(c["lr"], pct_start=c["pct_start"])["lr"]
    run_training(args, f"(b) tuned recipe: {args.minutes:g} minutes, bfloat16", c, args.iters, schedule,
                 bf16=not args.float32, budget_seconds=args.minutes * 60)


def throughput(args):
    c = NANOGPT
    load_before, started = os.getloadavg(), datetime.now(timezone.utc)
    device = args.device
    torch.manual_seed(0)
    ours = GPT(65, c["block_size"], c["embed_dim"], c["num_heads"], c["num_layers"])
    theirs = torch_twin(ours).to(device)
    ours = ours.to(device)
    x = torch.randint(65, (c["batch_size"], c["block_size"]), device=device)
    y = torch.randint(65, (c["batch_size"], c["block_size"]), device=device)
    tokens = x.numel() * args.steps

    def stepper(model, bf16):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        def steps():
            for _ in range(args.steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
                opt.step()
                opt.zero_grad()
        return steps

    rows = []
    for bf16 in (False, True):
        contenders = {"ours": stepper(ours, bf16), "TorchGPT": stepper(theirs, bf16)}
        for step in contenders.values(): step()  # warm-up
        rates = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
            for name in order:
                start = clock(device)
                contenders[name]()
                rates[name].append(tokens / (clock(device) - start))
        ratio = statistics.median(o / t for o, t in zip(rates["ours"], rates["TorchGPT"]))
        medians = [statistics.median(rates[name]) for name in ("ours", "TorchGPT")]
        precision = "bfloat16 autocast" if bf16 else "float32"
        rows.append(f"| {precision} | {medians[0]:,.0f} | {medians[1]:,.0f} | {ratio:.2f}x |")
    section = header("(c) training throughput: our GPT vs the same architecture from PyTorch's modules", args,
                     load_before, started) + f"""
GPT(65, block 64, 128 dims, 4 heads, 4 layers), batch 12: forward, cross-entropy, backward, torch.optim.AdamW
step; {args.rounds} interleaved rounds of {args.steps} steps after a warm-up; medians.

| precision | ours (tokens/s) | TorchGPT (tokens/s) | ours / TorchGPT (median of per-round ratios) |
|---|---:|---:|---:|
""" + "\n".join(rows) + f"""

Load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.
"""
    write(section, args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["nanogpt", "tuned", "throughput"])
    parser.add_argument("--iters", type=int, default=None, help="training steps (nanogpt: 2000; tuned: the "
                        "one-cycle's length, the budget may stop it earlier)")
    parser.add_argument("--minutes", type=float, default=5.0, help="tuned: the wall-clock training budget")
    parser.add_argument("--eval-iters", type=int, default=200, help="batches per split for the loss estimate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on a loaded 2-core machine, 2 "
                        "threads were several times slower than 1)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="throughput: training steps per timing")
    parser.add_argument("--float32", action="store_true", help="tuned: without bfloat16 autocast")
    for key in ("block_size", "embed_dim", "num_heads", "num_layers", "batch_size"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help="tuned only")
    parser.add_argument("--lr", type=float, default=None, help="tuned: the one-cycle's peak learning rate")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to the results")
    parser.add_argument("--out", default=str(RESULTS), help="the markdown file each run appends to")
    add_device_argument(parser)
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if args.iters is None: args.iters = 2000 if args.part == "nanogpt" else 100_000
    {"nanogpt": nanogpt, "tuned": tuned, "throughput": throughput}[args.part](args)


if __name__ == "__main__":
    main()
