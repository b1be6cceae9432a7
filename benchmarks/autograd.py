#!/usr/bin/env python
"""Our autograd engine (exp.autograd) vs DeZero vs torch.autograd, measured in one run; and what each of
the engine's speed tricks buys.

    python benchmarks/autograd.py [--rounds 9] [--inner 3] [--threads 1] [--only cnn] [--device cpu]
    python benchmarks/autograd.py --tricks [--baseline OLD_AUTOGRAD_PY ...] [--rounds 9] [--only chain mlp]

Five workloads:
  (a) chain:  a 2,000-op scalar chain (sin and *1.01, alternating), forward + backward, float64
  (b) mlp:    one SGD training step of a 784-1000-10 ReLU MLP on a batch of 100 (cross-entropy), float32
  (b') mlp64: the same step in float64
  (c) grad2:  the second derivative of a 100-op scalar expression (backward with create_graph, twice)
  (d) cnn:    one SGD training step of a small CNN on a batch of 64 28x28 images (float32):
              conv 1->16 3x3 pad 1, ReLU, 2x2 max pool, conv 16->32 3x3 pad 1, ReLU, 2x2 max pool,
              linear 1568->10

Each contender runs in its own worker process (torch's and numpy's thread pools never share a
process, limited to `--threads` threads: 1 by default, since on a small shared machine a thread pool
mostly waits for its other threads); the parent asks the workers in turn, round after round
(interleaved, rotating who goes first), and quotes medians of wall-clock and of process CPU time
(which the load from other work inflates less), and the median of per-round ratios. DeZero 0.0.13 from
PyPI needs `np.int = int` on numpy 2, where it silently computes its MLP in float64 (its weight init
multiplies a float32 array by a numpy float64 scalar): we time it as installed and with float32 weights
and data (dtype-matched). Prints a markdown table.

`--tricks` times our engine only, once as it is and once with each speed trick taken out (the TRICKS
table below: each is a text patch of exp/autograd.py, applied in that worker's process before anything
imports the engine), and, with `--baseline FILE ...`, other versions of exp/autograd.py (e.g. from
`git show REV:exp/autograd.py`). Ratios are "without the trick / as it is": 1.10 means the trick saves 9%.

`--device cuda` runs our engine and torch.autograd on the GPU (DeZero, numpy only, is left out); on a
machine without CUDA it exits with status 2 and says so.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "exp" / "autograd.py"
CHAIN_OPS, EXPR_OPS, BATCH, SIZES = 2000, 100, 100, (784, 1000, 10)
CNN_BATCH, CNN_SIDE, CNN_WIDTH = 64, 28, 16

# trick: (what it does, [(text in exp/autograd.py, what replaces it to take the trick out), ...])
TRICKS = {
    "one-output branches": (
        "`Function.__call__` and the walk unroll their general code for one output",
        [("        if single:  # one output", "        if False:  # one output"),
         ("            if len(f.outputs) == 1:  # one output", "            if False:  # one output")]),
    "no conversion of plain tensors": (
        "a function's outputs skip `Variable.__init__` (`object.__new__`); plain tensor arguments skip "
        "`as_data`",
        [("    v = object.__new__(Variable)\n",
          "    v = Variable(data, requires_grad=creator is not None)\n"
          "    v.creator, v.generation = creator, generation\n    return v\n"),
         ("x if type(x) is torch.Tensor and not x.requires_grad else _plain(x, inputs)",
          "_plain(x, inputs)")]),
    "constant cache": (
        "numbers in an expression (`x * 1.01`) become cached 0-dim tensors",
        [("@functools.lru_cache(maxsize=1024)\ndef _constant", "def _constant")]),
    "needs_input_grad": (
        "backward skips the gradients of inputs that need none (constants, the data batch)",
        [("return [x.requires_grad for x in f.inputs]", "return [True] * len(f.inputs)")]),
    "shape shortcuts": (
        "`sum_to`, `broadcast_to`, `reshape` make no Function when the shape already fits",
        [("return x if _tensor(x).shape == tuple(shape) else Reshape(shape)(x)", "return Reshape(shape)(x)"),
         ("return x if _tensor(x).shape == shape else BroadcastTo(shape)(x)", "return BroadcastTo(shape)(x)"),
         ("return x if _tensor(x).shape == shape else SumTo(shape)(x)", "return SumTo(shape)(x)")]),
    "tensors in, tensors out": (
        "a Function called on tensors only returns tensors (a plain backward runs on tensors)",
        [("        like = _first_data(inputs)\n",
          "        like = _first_data(inputs)\n        if like is None:\n"
          "            inputs = [_output(_plain(x, inputs)) for x in inputs]\n"
          "            like = inputs[0].data\n")]),
}


def load_engine(patches=(), source=ENGINE):
    "Import exp.autograd from `source` with text patches applied, before anything else imports it."
    sys.path.insert(0, str(ROOT))
    import exp  # noqa: F401 -- the package must exist for `exp.autograd_functions` to import `.autograd`
    text = Path(source).read_text(encoding="utf-8")
    for old, new in patches:
        if text.count(old) != 1:
            raise SystemExit(f"--tricks: expected {old!r} once in {source}, found it {text.count(old)} "
                             f"times: update TRICKS in {Path(__file__).name} to match the engine")
        text = text.replace(old, new)
    module = types.ModuleType("exp.autograd")
    module.__file__, module.__package__ = str(source), "exp"
    sys.modules["exp.autograd"] = module
    exec(compile(text, str(source), "exec"), module.__dict__)
    return module


# ---------------------------------------------------------------- workers: one library each
def ours_cases(device):
    import torch

    from exp.autograd import SGD, Linear, Sequential, Variable, relu, sin, softmax_cross_entropy

    def chain():
        x = Variable(torch.tensor(0.5, dtype=torch.float64, device=device))
        y = x
        for i in range(CHAIN_OPS): y = y * 1.01 if i % 2 else sin(y)
        y.backward()
        return x.grad.data.item()

    def grad2():
        x = Variable(torch.tensor(0.5, dtype=torch.float64, device=device))
        y = x
        for i in range(EXPR_OPS): y = y * x if i % 2 else sin(y)
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        return x.grad.data.item()

    def train_step(model, x, t, lr):
        for p in model.parameters(): p.data = p.data.to(device)
        opt = SGD(model.parameters(), lr=lr)
        def step():
            loss = softmax_cross_entropy(model(x), t)  # the batch is a plain tensor: no gradient for it
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.data.item()
        return step

    def mlp_case(dtype):
        torch.manual_seed(0)
        model = Sequential(Linear(SIZES[0], SIZES[1], dtype=dtype), relu,
                           Linear(SIZES[1], SIZES[2], dtype=dtype))
        x, t = torch.rand(BATCH, SIZES[0], dtype=dtype), torch.randint(0, SIZES[2], (BATCH,))
        return train_step(model, x.to(device), t.to(device), 0.1)

    def cnn_case():
        from exp.autograd_functions import flatten, max_pool2d
        from exp.autograd_layers import Conv2d
        torch.manual_seed(0)
        width = CNN_WIDTH
        model = Sequential(Conv2d(1, width, 3, padding=1), relu, lambda x: max_pool2d(x, 2),
                           Conv2d(width, 2 * width, 3, padding=1), relu, lambda x: max_pool2d(x, 2), flatten,
                           Linear(2 * width * (CNN_SIDE // 4) ** 2, 10))
        x, t = torch.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE), torch.randint(0, 10, (CNN_BATCH,))
        return train_step(model, x.to(device), t.to(device), 0.01)
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(torch.float32), "mlp64": mlp_case(torch.float64),
            "cnn": cnn_case()}


def torch_cases(device):
    import torch
    import torch.nn.functional as F

    def chain():
        x = torch.tensor(0.5, dtype=torch.float64, device=device, requires_grad=True)
        y = x
        for i in range(CHAIN_OPS): y = y * 1.01 if i % 2 else torch.sin(y)
        y.backward()
        return x.grad.item()

    def grad2():
        x = torch.tensor(0.5, dtype=torch.float64, device=device, requires_grad=True)
        y = x
        for i in range(EXPR_OPS): y = y * x if i % 2 else torch.sin(y)
        gx, = torch.autograd.grad(y, x, create_graph=True)
        gx.backward()
        return x.grad.item()

    def train_step(model, x, t, lr):
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        def step():
            loss = F.cross_entropy(model(x), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
        return step

    def mlp_case(dtype):
        torch.manual_seed(0)
        nn = torch.nn
        model = nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]))
        model.to(dtype)
        x, t = torch.rand(BATCH, SIZES[0], dtype=dtype), torch.randint(0, SIZES[2], (BATCH,))
        return train_step(model, x.to(device), t.to(device), 0.1)

    def cnn_case():
        torch.manual_seed(0)
        nn, width = torch.nn, CNN_WIDTH
        model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(),
                              nn.Linear(2 * width * (CNN_SIDE // 4) ** 2, 10))
        x, t = torch.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE), torch.randint(0, 10, (CNN_BATCH,))
        return train_step(model, x.to(device), t.to(device), 0.01)
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(torch.float32), "mlp64": mlp_case(torch.float64),
            "cnn": cnn_case()}


def dezero_cases(device):
    import numpy as np
    np.int = int  # dezero 0.0.13 still uses the alias numpy 2 removed
    import dezero.functions as F
    import dezero.layers as L
    from dezero import Variable, models, optimizers

    def chain():
        x = Variable(np.array(0.5))
        y = x
        for i in range(CHAIN_OPS): y = y * 1.01 if i % 2 else F.sin(y)
        y.backward()
        return float(x.grad.data)

    def grad2():
        x = Variable(np.array(0.5))
        y = x
        for i in range(EXPR_OPS): y = y * x if i % 2 else F.sin(y)
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        return float(x.grad.data)

    def train_step(model, x, t, lr, cast):
        "dezero creates its weights at the first call; `cast`: every weight to that dtype afterwards."
        opt = optimizers.SGD(lr=lr).setup(model)
        model(x)
        if cast:
            for p in model.params(): p.data = p.data.astype(cast)
        def step():
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            opt.update()
            return float(loss.data)
        step()
        def dtypes(arrays): return "/".join(sorted({str(a.dtype) for a in arrays}))
        params = list(model.params())
        step.dtype = (f"W {dtypes(p.data for p in params if p.data.ndim >= 2)}, "
                      f"b {dtypes(p.data for p in params if p.data.ndim == 1)}, "
                      f"gradients {dtypes(p.grad.data for p in params)}")
        return step

    def mlp_case(dtype):
        "dtype None: as installed (float32 data; numpy 2 makes W float64); else all weights and data in it."
        np.random.seed(0)
        model = models.MLP((SIZES[1], SIZES[2]), activation=F.relu)
        x = np.random.rand(BATCH, SIZES[0]).astype(dtype or np.float32)
        return train_step(model, x, np.random.randint(0, SIZES[2], BATCH), 0.1, dtype)

    def cnn_case():
        "Every weight cast to float32 after the first call (numpy 2 makes dezero's conv weights float64)."
        np.random.seed(0)
        width = CNN_WIDTH
        class CNN(models.Model):
            def __init__(self):
                super().__init__()
                self.conv1, self.conv2 = L.Conv2d(width, 3, 1, 1), L.Conv2d(2 * width, 3, 1, 1)
                self.head = L.Linear(10)
            def forward(self, x):
                x = F.pooling(F.relu(self.conv1(x)), 2, 2)
                x = F.pooling(F.relu(self.conv2(x)), 2, 2)
                return self.head(F.reshape(x, (len(x), -1)))
        x = np.random.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE).astype(np.float32)
        return train_step(CNN(), x, np.random.randint(0, 10, CNN_BATCH), 0.01, np.float32)
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(None), "mlp-f32": mlp_case(np.float32),
            "mlp64": mlp_case(np.float64), "cnn": cnn_case()}


def worker(library, inner, device, trick=None):
    "Serve timing requests on stdin/stdout: one JSON line in (a case name), one out (seconds)."
    if library == "ours":
        if trick in TRICKS: load_engine(TRICKS[trick][1])
        elif trick: load_engine(source=trick)  # another version of the engine's file
        else: sys.path.insert(0, str(ROOT))
    cases = {"ours": ours_cases, "torch": torch_cases, "dezero": dezero_cases}[library](device)
    for f in cases.values():  # warm up
        f()
        f()
    info = {"threads": threads_info(library)}
    info["dtypes"] = {name: f.dtype for name, f in cases.items() if hasattr(f, "dtype")}
    print(json.dumps({"ready": sorted(cases), **info}), flush=True)
    for line in sys.stdin:
        name = json.loads(line)
        wall, cpu = [], []
        for _ in range(inner):
            start, start_cpu = time.perf_counter(), time.process_time()
            cases[name]()  # each case ends in .item(): on a GPU that waits for the device
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(json.dumps([statistics.median(wall), statistics.median(cpu)]), flush=True)


def threads_info(library):
    if library == "dezero":
        return os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "numpy default"
    import torch
    return torch.get_num_threads()


# ---------------------------------------------------------------- parent: interleave, summarise
class Worker:
    def __init__(self, library, inner, threads, device, trick=None):
        self.library = library
        env = dict(os.environ)
        if threads: env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS")})
        command = [sys.executable, __file__, "--worker", library, "--inner", str(inner), "--device", device]
        if trick: command += ["--trick", trick]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def time(self, case):
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


CONTENDERS = {  # column -> (library, case) for each workload
    "chain": [("ours", "chain"), ("dezero", "chain"), ("torch", "chain")],
    "mlp": [("ours", "mlp"), ("dezero", "mlp"), ("dezero", "mlp-f32"), ("torch", "mlp")],
    "mlp64": [("ours", "mlp64"), ("dezero", "mlp64"), ("torch", "mlp64")],
    "grad2": [("ours", "grad2"), ("dezero", "grad2"), ("torch", "grad2")],
    "cnn": [("ours", "cnn"), ("dezero", "cnn"), ("torch", "cnn")],
}
LABELS = {("dezero", "mlp"): "dezero 0.0.13 as installed (float32 data)",
          ("dezero", "mlp-f32"): "dezero 0.0.13, float32 weights and data"}
TITLES = {"chain": f"(a) {CHAIN_OPS:,}-op scalar chain, forward + backward (float64)",
          "mlp": f"(b) one training step, MLP {'-'.join(map(str, SIZES))}, batch {BATCH} (float32)",
          "mlp64": "(b') the same step in float64 (every engine fully dtype-matched)",
          "grad2": f"(c) second derivative of a {EXPR_OPS}-op scalar expression (float64)",
          "cnn": f"(d) one training step, CNN conv{CNN_WIDTH}-pool-conv{2 * CNN_WIDTH}-pool-linear, "
                 f"batch {CNN_BATCH} of {CNN_SIDE}x{CNN_SIDE} (float32, every engine)"}


def interleave(workers, workloads, rounds):
    "Time every (worker, case) of every workload, round after round, rotating who goes first."
    times = {w: {c: [] for c in workloads[w]} for w in workloads}
    for r in range(rounds):
        for workload, contenders in workloads.items():
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for key, case in order: times[workload][(key, case)].append(workers[key].time(case))
    return times


def table(times, contenders, label, ratio_name="ours / this", invert=False):
    "A markdown table: each contender's median wall and CPU ms, and its median per-round ratio to the first."
    first = times[contenders[0]]
    lines = [f"| engine | wall ms | {ratio_name} (wall) | CPU ms | {ratio_name} (CPU) |",
             "|---|---:|---:|---:|---:|"]
    for key in contenders:
        cells = []
        for i in (0, 1):
            theirs = [t[i] for t in times[key]]
            pairs = zip(first, times[key])
            ratio = statistics.median((t[i] / o[i]) if invert else (o[i] / t[i]) for o, t in pairs)
            cells += [f"{statistics.median(theirs) * 1e3:.2f}", f"{ratio:.2f}"]
        lines.append(f"| {label(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line(load, workers, device):
    import torch
    threads = ", ".join(f"{w.library} {w.info['threads']}" for w in {w.library: w for w in workers}.values())
    return (f"Machine: {platform.machine()} {os.cpu_count()}-core CPU "
            f"({platform.processor() or platform.platform()}), "
            f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, "
            f"load average {load:.1f} before the run and {os.getloadavg()[0]:.1f} after it; "
            f"Python {platform.python_version()}, torch {torch.__version__}, threads: {threads}.\n")


def main(rounds, inner, threads, device, only=None):
    load = os.getloadavg()[0]
    libraries = ("ours", "torch") if device == "cuda" else ("ours", "dezero", "torch")
    workloads = {w: [c for c in contenders if c[0] in libraries]
                 for w, contenders in CONTENDERS.items() if not only or w in only}
    workers = {lib: Worker(lib, inner, threads, device) for lib in libraries}
    try: times = interleave(workers, workloads, rounds)
    finally:
        for w in workers.values(): w.close()
    print("# Autograd engines: exp.autograd vs DeZero vs torch.autograd\n")
    print(machine_line(load, workers.values(), device))
    if "dezero" in workers:
        dtypes = workers["dezero"].info["dtypes"]
        print(f"DeZero's MLP dtypes after a step: as installed, {dtypes['mlp']}; with float32 weights and "
              f"data, {dtypes['mlp-f32']}; float64, {dtypes['mlp64']}. DeZero's CNN after a step: "
              f"{dtypes['cnn']}.")
    else: print("DeZero (numpy only) is left out on the GPU.")
    print(f"{rounds} interleaved rounds, each timing the median of {inner} runs; medians over rounds of "
          f"wall-clock and of process CPU time; ratios are medians of per-round ratios (ours / this: < 1 "
          f"means ours is faster).\n")
    def label(key):
        names = {"ours": "exp.autograd (ours)", "torch": "torch.autograd"}
        return LABELS.get(key, names.get(key[0], "dezero 0.0.13"))
    for workload, contenders in workloads.items():
        print(f"## {TITLES[workload]}\n\n{table(times[workload], contenders, label)}\n")


def main_tricks(rounds, inner, threads, device, only=None, baseline=None):
    "Our engine as it is, next to itself with each trick taken out (and a baseline version, if given)."
    load = os.getloadavg()[0]
    variants = ["as is"] + list(TRICKS) + [str(path) for path in baseline or []]
    workers = {v: Worker("ours", inner, threads, device, None if v == "as is" else v) for v in variants}
    workloads = {w: [(v, w) for v in variants] for w in CONTENDERS if not only or w in only}
    try: times = interleave(workers, workloads, rounds)
    finally:
        for w in workers.values(): w.close()
    print("# What each speed trick of exp.autograd buys\n")
    print(machine_line(load, workers.values(), device))
    print(f"{rounds} interleaved rounds, each timing the median of {inner} runs, each variant in its own "
          f"process; ratios are medians of per-round ratios, *without the trick / as it is* (> 1: the trick "
          f"saves time).\n")
    for name, (what, _) in TRICKS.items(): print(f"- without {name}: {what}, taken out")
    print()
    def label(key):
        if key[0] == "as is": return "exp.autograd as it is"
        return f"without {key[0]}" if key[0] in TRICKS else key[0]
    for workload, contenders in workloads.items():
        text = table(times[workload], contenders, label, "this / as is", invert=True)
        print(f"## {TITLES[workload]}\n\n{text}\n")


def check_device(device):
    "Exit with status 2 and a clear message when the device is not there."
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device is visible to torch on this machine "
                  f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); run with --device cpu",
                  file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per library (0: the libraries' defaults)")
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="run only these workloads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tricks", action="store_true", help="time our engine with each trick taken out")
    parser.add_argument("--baseline", type=Path, nargs="+",
                        help="with --tricks: other versions of exp/autograd.py to time too")
    parser.add_argument("--worker", choices=["ours", "torch", "dezero"], help=argparse.SUPPRESS)
    parser.add_argument("--trick", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_device(args.device)
    for path in args.baseline or []:
        if not path.is_file(): parser.error(f"--baseline {path}: no such file")
    if args.worker: worker(args.worker, args.inner, args.device, args.trick)
    elif args.tricks:
        main_tricks(args.rounds, args.inner, args.threads, args.device, args.only, args.baseline)
    else: main(args.rounds, args.inner, args.threads, args.device, args.only)
