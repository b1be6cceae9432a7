#!/usr/bin/env python
"""Our from-scratch LSTM (exp.rnn.LSTM), eager and torch.compile'd, vs PyTorch's nn.LSTM: time per training
step, in one run.

    python benchmarks/rnn.py [--rounds 9] [--threads 1] [--device cpu|cuda]

A training step: forward a batch-first sequence through the LSTM and a linear head, an MSE loss on
every step's output, backward, one SGD step. Contenders, with the same initial weights and data:
  ours        exp.rnn.LSTM: our cell's equations on torch tensors, a Python loop over time and layers
  LSTMCell    nn.LSTMCell in the same Python loop (PyTorch's fused cell, our loop: splits the gap
              into "per-step kernels" and "the loop")
  nn.LSTM     PyTorch's whole-sequence module (one call, its own fused CPU kernels)
  compiled    torch.compile(ours): the loop over time unrolled into one graph, the gates' pointwise
              operations fused (compile time measured separately, on the first step, and printed)
They run interleaved, in a rotating order, round after round, after an untimed warm-up; we quote the
median time per step and the median of the per-round ratios to nn.LSTM. All contenders are torch in
one process (one thread pool). Prints a markdown table.
"""
import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exp.rnn import LSTM, copy_from_torch  # noqa: E402

SHAPES = [  # batch, time steps, input size, hidden size, layers
    (32, 35, 32, 64, 1),
    (32, 35, 128, 256, 2),
]


class CellLoop(nn.Module):
    "nn.LSTMCell layers unrolled by a Python loop, batch-first (the middle contender)."
    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(input_size if k == 0 else hidden_size, hidden_size)
                                    for k in range(num_layers)])

    def forward(self, x):
        for cell in self.cells:
            h = c = x.new_zeros(x.shape[0], cell.hidden_size)
            outputs = []
            for x_t in x.unbind(1):
                h, c = cell(x_t, (h, c))
                outputs.append(h)
            x = torch.stack(outputs, 1)
        return x, None


def contenders(batch, steps, input_size, hidden_size, layers, device):
    "name -> a function doing one training step; all start from the same weights."
    torch.manual_seed(0)
    reference = nn.LSTM(input_size, hidden_size, layers, batch_first=True)
    head = nn.Linear(hidden_size, input_size)
    ours = copy_from_torch(LSTM(input_size, hidden_size, layers), reference)
    compiled = torch.compile(copy_from_torch(LSTM(input_size, hidden_size, layers), reference).to(device))
    cell_loop = CellLoop(input_size, hidden_size, layers)
    with torch.no_grad():
        for k, cell in enumerate(cell_loop.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(reference, f"{name}_l{k}"))
    x = torch.randn(batch, steps, input_size, device=device)
    y = torch.randn(batch, steps, input_size, device=device)

    def trainer(recurrent):
        model = nn.ModuleDict({"recurrent": recurrent, "head": nn.Linear(hidden_size, input_size)})
        model.head.load_state_dict(head.state_dict())
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        def step():
            out, _ = model.recurrent(x)
            loss = F.mse_loss(model.head(out), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()
        return step

    return {"ours": trainer(ours), "LSTMCell": trainer(cell_loop), "nn.LSTM": trainer(reference),
            "compiled": trainer(compiled)}


def time_steps(step, n):
    start = time.perf_counter()
    for _ in range(n): step()  # each step ends with loss.item(), which waits for a GPU
    return (time.perf_counter() - start) / n


def measure(shape, rounds, inner, device):
    "Per-round seconds per step of each contender, and the compile time of the compiled one."
    steps = contenders(*shape, device)
    first_losses = {}
    for name, step in steps.items():  # warm-up, a sanity check, and the compile
        start = time.perf_counter()
        first_losses[name] = step()
        if name == "compiled": compile_seconds = time.perf_counter() - start
    assert max(first_losses.values()) - min(first_losses.values()) < 1e-4, first_losses
    names, times = list(steps), {name: [] for name in steps}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_steps(steps[name], inner))
    return times, compile_seconds


def main(rounds=9, inner=3, threads=1, device="cpu"):
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    load_before = os.getloadavg()
    lines = [f"`{shlex.join(['python', *sys.argv])}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}; load average "
             f"before {load_before[0]:.1f}",
             "", f"Median time per training step over {rounds} interleaved rounds of {inner} steps; "
             "ratio = median of the per-round ratios to nn.LSTM.", "",
             "| batch, steps, input, hidden, layers | ours (ms) | ours compiled (ms) | LSTMCell loop (ms) "
             "| nn.LSTM (ms) | ours / nn.LSTM | compiled / nn.LSTM | LSTMCell loop / nn.LSTM | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        times, compile_seconds = measure(shape, rounds, inner, device)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        peer = times["nn.LSTM"]
        ratio = {name: statistics.median(a / b for a, b in zip(ts, peer)) for name, ts in times.items()}
        lines.append(f"| {', '.join(map(str, shape))} | {med['ours']:.1f} | {med['compiled']:.1f} "
                     f"| {med['LSTMCell']:.1f} | {med['nn.LSTM']:.1f} | {ratio['ours']:.2f}x "
                     f"| {ratio['compiled']:.2f}x | {ratio['LSTMCell']:.2f}x | {compile_seconds:.1f} |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Load average after: {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 suits a shared 2-core machine)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    main(**vars(parser.parse_args()))
