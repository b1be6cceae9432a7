#!/usr/bin/env python
"""Our from-scratch LSTMs (exp.rnn.LSTM, exp.rnn.BPTTLSTM), eager and torch.compile'd, vs PyTorch's nn.LSTM:
time per training step, in one run.

    python benchmarks/rnn.py [--rounds 9] [--threads 1] [--device cpu|cuda] [--python-wrapper]
                             [--shape BATCH,STEPS,INPUT,HIDDEN,LAYERS ...]

A training step: forward a batch-first sequence through the LSTM and a linear head, an MSE loss on
every step's output, backward, one SGD step. Contenders, with the same initial weights and data:
  ours        exp.rnn.LSTM: our cell's equations on torch tensors, a Python loop over time and layers;
              autograd records every operation of every step
  BPTTLSTM    exp.rnn.BPTTLSTM: the same loop with backpropagation through time written by hand (12):
              the input projection and the weight gradients in one product over all steps
  LSTMCell    nn.LSTMCell in the same Python loop (PyTorch's fused cell, our loop: splits the gap
              into "per-step kernels" and "the loop")
  nn.LSTM     PyTorch's whole-sequence module (one call, its own fused CPU kernels)
  ... compiled  torch.compile of ours or of BPTTLSTM: the loop over time unrolled into one graph, the
              gates' pointwise operations fused, with options={"cpp_wrapper": True} (TorchInductor calls
              its kernels from generated C++, not Python: a step is hundreds of small calls);
              --python-wrapper compiles with the default options instead. Compile time is measured
              separately, on the first step, and printed.
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
from exp.rnn import BPTTLSTM, LSTM, copy_from_torch  # noqa: E402

SHAPES = [  # batch, time steps, input size, hidden size, layers
    (32, 35, 32, 64, 1),
    (32, 35, 128, 256, 2),
]


def parse_shape(text):
    "`32,35,32,64,1` -> (32, 35, 32, 64, 1), for --shape."
    try: shape = tuple(int(v) for v in text.split(","))
    except ValueError: shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give five positive integers, "
                                         "batch,steps,input,hidden,layers (e.g. 32,35,32,64,1)")
    return shape


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


CONTENDERS = ["nn.LSTM", "ours", "ours compiled", "BPTTLSTM", "BPTTLSTM compiled", "LSTMCell"]
COMPILED = [name for name in CONTENDERS if name.endswith("compiled")]


def contenders(batch, steps, input_size, hidden_size, layers, device, compile_options):
    "name -> a function doing one training step; all start from the same weights."
    torch.manual_seed(0)
    reference = nn.LSTM(input_size, hidden_size, layers, batch_first=True)
    head = nn.Linear(hidden_size, input_size)
    def copy(kind): return copy_from_torch(kind(input_size, hidden_size, layers), reference).to(device)
    def compiled(kind): return torch.compile(copy(kind), options=compile_options)
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

    steps = {"nn.LSTM": trainer(reference),
             "ours": trainer(copy(LSTM)), "ours compiled": trainer(compiled(LSTM)),
             "BPTTLSTM": trainer(copy(BPTTLSTM)), "BPTTLSTM compiled": trainer(compiled(BPTTLSTM)),
             "LSTMCell": trainer(cell_loop)}
    assert list(steps) == CONTENDERS
    return steps


def time_steps(step, n):
    start = time.perf_counter()
    for _ in range(n): step()  # each step ends with loss.item(), which waits for a GPU
    return (time.perf_counter() - start) / n


def measure(shape, rounds, inner, device, compile_options):
    "Per-round seconds per step of each contender, and the compile time of the compiled ones."
    steps = contenders(*shape, device, compile_options)
    first_losses, compile_seconds = {}, {}
    for name, step in steps.items():  # warm-up, a sanity check, and the compiles
        start = time.perf_counter()
        first_losses[name] = step()
        if name in COMPILED: compile_seconds[name] = time.perf_counter() - start
    assert max(first_losses.values()) - min(first_losses.values()) < 1e-4, first_losses
    names, times = list(steps), {name: [] for name in steps}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_steps(steps[name], inner))
    return times, compile_seconds


def main(rounds=9, inner=3, threads=1, device="cpu", python_wrapper=False, shape=None):
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    compile_options = None if python_wrapper else {"cpp_wrapper": True}
    load_before = os.getloadavg()
    names = ["ours", "ours compiled", "BPTTLSTM", "BPTTLSTM compiled", "LSTMCell loop"]
    def row(shape, values): return "| " + " | ".join([", ".join(map(str, shape)), *values]) + " |"
    def header(first): return [f"| batch, steps, input, hidden, layers | {' | '.join(first)} |",
                               "|---" * (len(first) + 1) + "|"]
    times_table = header(["nn.LSTM", *names])
    ratio_table = header(names)
    compile_table = header(COMPILED)
    for shape in shape or SHAPES:
        times, compile_seconds = measure(shape, rounds, inner, device, compile_options)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        peer = times["nn.LSTM"]
        ratio = {name: statistics.median(a / b for a, b in zip(ts, peer)) for name, ts in times.items()}
        times_table.append(row(shape, [f"{med[name]:.1f}" for name in CONTENDERS]))
        ratio_table.append(row(shape, [f"{ratio[name]:.2f}x" for name in CONTENDERS[1:]]))
        compile_table.append(row(shape, [f"{compile_seconds[name]:.1f}" for name in COMPILED]))
        print(times_table[-1], ratio_table[-1], sep="\n", file=sys.stderr)
    lines = [f"`{shlex.join(['python', *sys.argv])}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}; load average "
             f"before {load_before[0]:.1f}; compiled with options={compile_options}",
             "", f"Median time per training step (ms) over {rounds} interleaved rounds of {inner} steps:", "",
             *times_table, "", "Ratio to nn.LSTM (median of the per-round ratios):", "", *ratio_table, "",
             "Compile time (s): the first training step of each compiled contender:", "", *compile_table, "",
             f"Load average after: {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 suits a shared 2-core machine)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--shape", type=parse_shape, action="append",
                        help="batch,steps,input,hidden,layers (repeatable; default: the two SHAPES)")
    parser.add_argument("--python-wrapper", action="store_true",
                        help="compile with default options (a Python wrapper around the kernels)")
    main(**vars(parser.parse_args()))
