#!/usr/bin/env python
"""Our from-scratch LSTM (exp.rnn.LSTM) vs PyTorch's nn.LSTM: time per training step, in one run.

    python benchmarks/rnn.py [--rounds 9] [--threads 1]

A training step: forward a batch-first sequence through the LSTM and a linear head, an MSE loss on
every step's output, backward, one SGD step. Contenders, with the same initial weights and data:
  ours        exp.rnn.LSTM: our cell's equations on torch tensors, a Python loop over time and layers
  LSTMCell    nn.LSTMCell in the same Python loop (PyTorch's fused cell, our loop: splits the gap
              into "per-step kernels" and "the loop")
  nn.LSTM     PyTorch's whole-sequence module (one call, its own fused CPU kernels)
They run interleaved, in a rotating order, round after round, after an untimed warm-up; we quote the
median time per step and the median of the per-round ratios to nn.LSTM. All contenders are torch in
one process (one thread pool). Prints a markdown table.
"""
import argparse, os, platform, statistics, sys, time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

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
        self.cells = nn.ModuleList([nn.LSTMCell(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)])

    def forward(self, x):
        for cell in self.cells:
            h = c = x.new_zeros(x.shape[0], cell.hidden_size)
            outputs = []
            for x_t in x.unbind(1):
                h, c = cell(x_t, (h, c))
                outputs.append(h)
            x = torch.stack(outputs, 1)
        return x, None


def contenders(batch, steps, input_size, hidden_size, layers):
    "name -> a function doing one training step; all start from the same weights."
    torch.manual_seed(0)
    reference = nn.LSTM(input_size, hidden_size, layers, batch_first=True)
    head = nn.Linear(hidden_size, input_size)
    ours = copy_from_torch(LSTM(input_size, hidden_size, layers), reference)
    cell_loop = CellLoop(input_size, hidden_size, layers)
    with torch.no_grad():
        for k, cell in enumerate(cell_loop.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"): getattr(cell, name).copy_(getattr(reference, f"{name}_l{k}"))
    x, y = torch.randn(batch, steps, input_size), torch.randn(batch, steps, input_size)

    def trainer(recurrent):
        model = nn.ModuleDict({"recurrent": recurrent, "head": nn.Linear(hidden_size, input_size)})
        model.head.load_state_dict(head.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        def step():
            out, _ = model.recurrent(x)
            loss = F.mse_loss(model.head(out), y)
            loss.backward(); opt.step(); opt.zero_grad()
            return loss.item()
        return step

    return {"ours": trainer(ours), "LSTMCell": trainer(cell_loop), "nn.LSTM": trainer(reference)}


def time_steps(step, n):
    start = time.perf_counter()
    for _ in range(n): step()
    return (time.perf_counter() - start) / n


def measure(shape, rounds, inner):
    steps = contenders(*shape)
    first_losses = {name: step() for name, step in steps.items()}  # warm-up, and a sanity check
    assert max(first_losses.values()) - min(first_losses.values()) < 1e-4, first_losses
    names, times = list(steps), {name: [] for name in steps}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_steps(steps[name], inner))
    return times


def main(rounds=9, inner=3, threads=1):
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average before "
             f"{load_before[0]:.1f}",
             "", f"Median time per training step over {rounds} interleaved rounds of {inner} steps; "
             "ratio = median of the per-round ratios to nn.LSTM.", "",
             "| batch, steps, input, hidden, layers | ours (ms) | LSTMCell loop (ms) | nn.LSTM (ms) | ours / nn.LSTM | LSTMCell loop / nn.LSTM |",
             "|---|---|---|---|---|---|"]
    for shape in SHAPES:
        times = measure(shape, rounds, inner)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        ratio = {name: statistics.median(a / b for a, b in zip(times[name], times["nn.LSTM"])) for name in times}
        lines.append(f"| {', '.join(map(str, shape))} | {med['ours']:.1f} | {med['LSTMCell']:.1f} | {med['nn.LSTM']:.1f} "
                     f"| {ratio['ours']:.2f}x | {ratio['LSTMCell']:.2f}x |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Load average after: {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a shared 2-core machine)")
    main(**vars(parser.parse_args()))
