#!/usr/bin/env python
"""Our attention and pre-norm block vs F.scaled_dot_product_attention and nn.TransformerEncoderLayer.

    python benchmarks/attention.py [--lengths 128,256,512,1024,2048] [--dtypes float32,bfloat16]
                                   [--rounds 5] [--embed 256] [--heads 4] [--batch 1] [--threads 1]
                                   [--output benchmarks/results/attention.md] [--device cpu|cuda]

Two pairs, each timed for one training step (forward, then backward of a fixed output gradient), causal:
  attention  exp.attention.scaled_dot_product_attention (scores materialised, (L, L) per head)
             vs F.scaled_dot_product_attention (PyTorch's fused CPU kernel), on (batch, heads, L, head_dim)
  block      our pre-norm block: x + MultiHeadAttention(LayerNorm(x)), then x + MLP(LayerNorm(x)), with
             exp.attention.MultiHeadAttention, exp.norm.LayerNorm and a GELU MLP of 4 * embed hidden units,
             vs nn.TransformerEncoderLayer(embed, heads, 4 * embed, dropout=0, activation="gelu",
             batch_first=True, norm_first=True) with the same weights (copied; outputs checked equal first)
in float32 and in bfloat16 (modules and inputs cast, no autocast), for each sequence length.

Time: the four contenders run interleaved, in a rotating order, round after round, after an untimed
warm-up; each timing is `inner` steps (more at short lengths, one at 1024 and above; fewer rounds at
long lengths). We quote medians of wall-clock and of process CPU time per step, and medians of the
per-round ratios ours / PyTorch's (< 1: ours is faster).

Peak memory: tracemalloc cannot see torch's allocations, so a worker process (same threads) measures
each step's peak resident memory: it resets Linux's high-water mark (writing 5 to
/proc/self/clear_refs), runs one step after a warm-up, and reports VmHWM minus the VmRSS before the
step, with glibc's mmap threshold fixed at 64 kB (MALLOC_MMAP_THRESHOLD_) so freed tensors go back to
the system instead of hiding in the heap. That is the memory the step needs beyond its inputs and
weights: activations kept for backward, temporaries, gradients. Linux only. On a GPU (`--device cuda`)
the peak is CUDA's own count instead, in this process: `torch.cuda.max_memory_allocated()` during one step
minus `torch.cuda.memory_allocated()` before it; and every clock is read after `torch.cuda.synchronize()`.
Without a GPU, `--device cuda` stops at once with exit status 2.

Appends a markdown section (command line, machine, load average before and after) to --output.
"""
import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import add_device_argument, device_label, resolve_device, sync
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exp.attention import MultiHeadAttention, copy_from_torch, scaled_dot_product_attention  # noqa: E402
from exp.norm import LayerNorm  # noqa: E402

CONTENDERS = ["ours attention", "torch sdpa", "ours block", "torch block"]
PAIRS = {"attention": ("ours attention", "torch sdpa"), "block": ("ours block", "torch block")}


class PreNormBlock(nn.Module):
    "x + attention(norm(x)), then x + MLP(norm(x)): nn.TransformerEncoderLayer(norm_first=True)'s maths."
    def __init__(self, embed_dim, num_heads, hidden):
        super().__init__()
        self.norm1, self.attention = LayerNorm(embed_dim), MultiHeadAttention(embed_dim, num_heads)
        self.norm2 = LayerNorm(embed_dim)
        self.linear1, self.linear2 = nn.Linear(embed_dim, hidden), nn.Linear(hidden, embed_dim)

    def forward(self, x):
        x = x + self.attention(self.norm1(x), is_causal=True)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


def block_from_torch(layer):
    "Our block with the weights of an nn.TransformerEncoderLayer."
    embed_dim, hidden = layer.linear1.in_features, layer.linear1.out_features
    ours = PreNormBlock(embed_dim, layer.self_attn.num_heads, hidden)
    copy_from_torch(ours.attention, layer.self_attn)
    with torch.no_grad():
        for name in ("norm1", "norm2", "linear1", "linear2"):
            mine, theirs = getattr(ours, name), getattr(layer, name)
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    return ours


def make_steps(length, dtype, embed, heads, batch, device="cpu"):
    "One training step per contender (closures), and a forward per contender for the equality check."
    torch.manual_seed(0)
    head_dim = embed // heads
    def randn(*shape): return torch.randn(*shape, device=device).to(dtype)
    qkv = [randn(batch, heads, length, head_dim).requires_grad_() for _ in range(3)]
    grad_heads = randn(batch, heads, length, head_dim)
    layer = nn.TransformerEncoderLayer(embed, heads, 4 * embed, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    ours_block = block_from_torch(layer).to(device, dtype)
    layer = layer.to(device, dtype)
    x = randn(batch, length, embed).requires_grad_()
    grad_x = randn(batch, length, embed)
    causal = nn.Transformer.generate_square_subsequent_mask(length, device=device, dtype=dtype)

    forwards = {
        "ours attention": lambda: scaled_dot_product_attention(*qkv, is_causal=True),
        "torch sdpa": lambda: F.scaled_dot_product_attention(*qkv, is_causal=True),
        "ours block": lambda: ours_block(x),
        "torch block": lambda: layer(x, src_mask=causal, is_causal=True),
    }
    tensors = {"ours attention": qkv, "torch sdpa": qkv, "ours block": [x] + list(ours_block.parameters()),
               "torch block": [x] + list(layer.parameters())}

    def step_for(name):
        grad = grad_heads if "attention" in name or "sdpa" in name else grad_x
        def step():
            forwards[name]().backward(grad)
            for t in tensors[name]: t.grad = None
        return step
    return {name: step_for(name) for name in CONTENDERS}, forwards


def check_equal(forwards, dtype):
    "Ours and PyTorch's give the same outputs (to float32 or bfloat16 rounding) before we time them."
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    with torch.no_grad():
        for ours, theirs in PAIRS.values():
            a, b = forwards[ours]().float(), forwards[theirs]().float()
            error = (a - b).abs().max().item()
            limit = tolerance * max(1.0, b.abs().max().item())
            assert error < limit, f"{ours} vs {theirs}: max error {error}"


def timed(step, inner, device="cpu"):
    "Wall-clock and process CPU seconds per step, over `inner` steps, the device's work included."
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner): step()
    sync(device)
    return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner


def measure_time(length, dtype, args):
    steps, forwards = make_steps(length, dtype, args.embed, args.heads, args.batch, args.device)
    check_equal(forwards, dtype)
    for step in steps.values(): step()          # warm-up
    inner = max(1, 1024 // length)
    rounds = args.rounds if length <= 512 else max(3, args.rounds - 2)
    results = {name: [] for name in CONTENDERS}
    for r in range(rounds):
        for name in CONTENDERS[r % 4:] + CONTENDERS[:r % 4]:
            results[name].append(timed(steps[name], inner, args.device))
    return results, rounds, inner


# ---------------------------------------------------------------- peak memory, in a worker process
def proc_status(key):
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def peak_memory(step):
    "Bytes above the resident set at the start that one step needed at its peak."
    step()                                       # warm-up: one-time allocations do not count
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark VmHWM to the current RSS
    before = proc_status("VmRSS")
    step()
    return proc_status("VmHWM") - before


def peak_cuda_memory(step, device):
    "Bytes above those allocated at the start that one step needed at its peak, by CUDA's allocator's count."
    step()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def peaks(args):
    "Peak bytes per 'dtype length contender'."
    result = {}
    for dtype_name in args.dtypes:
        for length in args.lengths:
            for name in CONTENDERS:
                steps, _ = make_steps(length, getattr(torch, dtype_name), args.embed, args.heads, args.batch,
                                      args.device)
                on_cuda = args.device.type == "cuda"
                step = steps[name]
                result[f"{dtype_name} {length} {name}"] = (peak_cuda_memory(step, args.device) if on_cuda
                                                           else peak_memory(step))
                del steps
    return result


def memory_worker(args):
    torch.set_num_threads(args.threads)
    print(json.dumps(peaks(args)))


def measure_memory(argv, args):
    if args.device.type == "cuda": return peaks(args)  # CUDA counts its own allocations: no worker needed
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory-worker", *argv], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def median(values): return statistics.median(values)


def machine_line(args):
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {args.threads} torch thread(s), "
            f"device {device_label(args.device)}")


def main(args, argv):
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    memory = measure_memory(argv, args)
    rows = {pair: [] for pair in PAIRS}
    for dtype_name in args.dtypes:
        for length in args.lengths:
            results, rounds, inner = measure_time(length, getattr(torch, dtype_name), args)
            for pair, (ours, theirs) in PAIRS.items():
                wall = {n: median([w for w, _ in results[n]]) * 1e3 for n in (ours, theirs)}
                cpu = {n: median([c for _, c in results[n]]) * 1e3 for n in (ours, theirs)}
                wall_ratio = median([a[0] / b[0] for a, b in zip(results[ours], results[theirs])])
                cpu_ratio = median([a[1] / b[1] for a, b in zip(results[ours], results[theirs])])
                mem = {n: memory[f"{dtype_name} {length} {n}"] / 2 ** 20 for n in (ours, theirs)}
                cells = [dtype_name, length, f"{rounds}x{inner}", f"{wall[ours]:.2f}", f"{wall[theirs]:.2f}",
                         f"{wall_ratio:.2f}", f"{cpu[ours]:.2f}", f"{cpu[theirs]:.2f}", f"{cpu_ratio:.2f}",
                         f"{mem[ours]:.1f}", f"{mem[theirs]:.1f}", f"{mem[ours] / max(mem[theirs], 0.1):.2f}"]
                rows[pair].append("| " + " | ".join(map(str, cells)) + " |")
                print(rows[pair][-1], file=sys.stderr)
    load_after = os.getloadavg()
    columns = ["dtype", "L", "rounds x steps", "ours wall ms", "torch wall ms", "wall ratio", "ours CPU ms",
               "torch CPU ms", "CPU ratio", "ours peak MiB", "torch peak MiB", "memory ratio"]
    header = "| " + " | ".join(columns) + " |\n|---|---:|---|" + "---:|" * (len(columns) - 3)
    command = "python " + shlex.join([os.path.relpath(__file__, ROOT)] + argv)
    report = [f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", f"`{command}`", "",
              machine_line(args) + f"; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
              f"the whole run took {time.perf_counter() - started:.0f} s.", "",
              (f"Sizes: batch {args.batch}, embed {args.embed}, {args.heads} heads of "
               f"{args.embed // args.heads}, MLP {4 * args.embed}; causal; one training step (forward + "
               "backward). Ratios: ours / PyTorch's, medians of per-round ratios (< 1: ours is faster); "
               "peak = memory the step needs above its inputs and weights (see the script's docstring"
               + ("; on the GPU, by CUDA's allocator's count)." if args.device.type == "cuda" else ").")), "",
              "### Attention: exp.attention.scaled_dot_product_attention vs F.scaled_dot_product_attention",
              "",
              header, *rows["attention"], "",
              "### Block: our pre-norm block vs nn.TransformerEncoderLayer(norm_first=True)", "",
              header, *rows["block"], ""]
    text = "\n".join(report)
    print(text)
    path = Path(args.output)
    title = "# Attention: ours vs PyTorch's (time and peak memory of a training step)\n\n"
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f: f.write((title if new else "") + text + "\n")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=lambda s: [int(n) for n in s.split(",")],
                        default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds at lengths <= 512 (2 fewer, at least 3, above)")
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 suits a shared 2-core machine)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "attention.md"))
    add_device_argument(parser)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


if __name__ == "__main__":
    argv = sys.argv[1:]
    args = parse(argv)
    if args.memory_worker: memory_worker(args)
    else: main(args, argv)
