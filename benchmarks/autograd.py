#!/usr/bin/env python
"""Our autograd engine (exp.autograd) vs DeZero vs torch.autograd, measured in one run.

    python benchmarks/autograd.py [--rounds 9] [--inner 3] [--threads 1] [--only cnn]

Four workloads:
  (a) chain:  a 2,000-op scalar chain (sin and *1.01, alternating), forward + backward, float64
  (b) mlp:    one SGD training step of a 784-1000-10 ReLU MLP on a batch of 100 (cross-entropy)
  (c) grad2:  the second derivative of a 100-op scalar expression (backward with create_graph, twice)
  (d) cnn:    one SGD training step of a small CNN on a batch of 64 28x28 images (float32):
              conv 1->16 3x3 pad 1, ReLU, 2x2 max pool, conv 16->32 3x3 pad 1, ReLU, 2x2 max pool, linear 1568->10

Each library runs in its own worker process (torch's and numpy's thread pools never share a
process, limited to `--threads` threads: 1 by default, since on a small shared machine a thread pool
mostly waits for its other threads); the parent asks the workers in turn, round after round
(interleaved, rotating who goes first), and quotes medians of wall-clock and of process CPU time
(which the load from other work inflates less), and the median of per-round ratios. DeZero 0.0.13 from PyPI needs
`np.int = int` on numpy 2, where it silently computes its MLP in float64 (its weight init multiplies
a float32 array by a numpy float64 scalar): we time it as installed and with float32 weights and data
(dtype-matched). Prints a markdown table.
"""
import argparse, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN_OPS, EXPR_OPS, BATCH, SIZES = 2000, 100, 100, (784, 1000, 10)
CNN_BATCH, CNN_SIDE, CNN_WIDTH = 64, 28, 16


# ---------------------------------------------------------------- workers: one library each
def ours_cases():
    import torch
    sys.path.insert(0, str(ROOT))
    from exp.autograd import Variable, Sequential, Linear, SGD, relu, sin, softmax_cross_entropy

    def chain():
        x = Variable(torch.tensor(0.5, dtype=torch.float64))
        y = x
        for i in range(CHAIN_OPS): y = y * 1.01 if i % 2 else sin(y)
        y.backward()
        return x.grad.data.item()

    def grad2():
        x = Variable(torch.tensor(0.5, dtype=torch.float64))
        y = x
        for i in range(EXPR_OPS): y = y * x if i % 2 else sin(y)
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        return x.grad.data.item()

    def mlp_case(dtype):
        torch.manual_seed(0)
        model = Sequential(Linear(SIZES[0], SIZES[1], dtype=dtype), relu, Linear(SIZES[1], SIZES[2], dtype=dtype))
        opt = SGD(model.parameters(), lr=0.1)
        x, t = torch.rand(BATCH, SIZES[0], dtype=dtype), torch.randint(0, SIZES[2], (BATCH,))
        def step():
            loss = softmax_cross_entropy(model(x), t)
            opt.zero_grad(); loss.backward(); opt.step()
            return loss.data.item()
        return step
    def cnn_case():
        from exp.autograd_functions import max_pool2d, flatten
        from exp.autograd_layers import Conv2d
        torch.manual_seed(0)
        width = CNN_WIDTH
        model = Sequential(Conv2d(1, width, 3, padding=1), relu, lambda x: max_pool2d(x, 2),
                           Conv2d(width, 2 * width, 3, padding=1), relu, lambda x: max_pool2d(x, 2), flatten,
                           Linear(2 * width * (CNN_SIDE // 4) ** 2, 10))
        opt = SGD(model.parameters(), lr=0.01)
        x, t = torch.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE), torch.randint(0, 10, (CNN_BATCH,))
        def step():
            loss = softmax_cross_entropy(model(x), t)  # the batch is a plain tensor: no gradient for it
            opt.zero_grad(); loss.backward(); opt.step()
            return loss.data.item()
        return step
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(torch.float32), "mlp64": mlp_case(torch.float64),
            "cnn": cnn_case()}


def torch_cases():
    import torch
    import torch.nn.functional as F

    def chain():
        x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        y = x
        for i in range(CHAIN_OPS): y = y * 1.01 if i % 2 else torch.sin(y)
        y.backward()
        return x.grad.item()

    def grad2():
        x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        y = x
        for i in range(EXPR_OPS): y = y * x if i % 2 else torch.sin(y)
        gx, = torch.autograd.grad(y, x, create_graph=True)
        gx.backward()
        return x.grad.item()

    def mlp_case(dtype):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(), torch.nn.Linear(SIZES[1], SIZES[2])).to(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, t = torch.rand(BATCH, SIZES[0], dtype=dtype), torch.randint(0, SIZES[2], (BATCH,))
        def step():
            loss = F.cross_entropy(model(x), t)
            opt.zero_grad(); loss.backward(); opt.step()
            return loss.item()
        return step
    def cnn_case():
        torch.manual_seed(0)
        nn, width = torch.nn, CNN_WIDTH
        model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(2 * width * (CNN_SIDE // 4) ** 2, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, t = torch.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE), torch.randint(0, 10, (CNN_BATCH,))
        def step():
            loss = F.cross_entropy(model(x), t)
            opt.zero_grad(); loss.backward(); opt.step()
            return loss.item()
        return step
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(torch.float32), "mlp64": mlp_case(torch.float64),
            "cnn": cnn_case()}


def dezero_cases():
    import numpy as np
    np.int = int  # dezero 0.0.13 still uses the alias numpy 2 removed
    import dezero, dezero.functions as F
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

    def mlp_case(dtype):
        "dtype None: as installed (float32 data; numpy 2 makes W float64); else every weight and the data in dtype."
        np.random.seed(0)
        model = models.MLP((SIZES[1], SIZES[2]), activation=F.relu)
        opt = optimizers.SGD(lr=0.1).setup(model)
        x = np.random.rand(BATCH, SIZES[0]).astype(dtype or np.float32)
        t = np.random.randint(0, SIZES[2], BATCH)
        model(x)  # dezero creates its weights at the first call
        if dtype:
            for p in model.params(): p.data = p.data.astype(dtype)
        def step():
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads(); loss.backward(); opt.update()
            return float(loss.data)
        step()
        def dtypes(arrays): return "/".join(sorted({str(a.dtype) for a in arrays}))
        params = list(model.params())
        step.dtype = (f"W {dtypes(p.data for p in params if p.data.ndim == 2)}, b {dtypes(p.data for p in params if p.data.ndim == 1)}, "
                      f"gradients {dtypes(p.grad.data for p in params)}")
        return step
    def cnn_case():
        "Every weight cast to float32 after the first call (numpy 2 makes dezero's conv weights float64)."
        import dezero.layers as L
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
        model = CNN()
        opt = optimizers.SGD(lr=0.01).setup(model)
        x = np.random.rand(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE).astype(np.float32)
        t = np.random.randint(0, 10, CNN_BATCH)
        model(x)
        for p in model.params(): p.data = p.data.astype(np.float32)
        def step():
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads(); loss.backward(); opt.update()
            return float(loss.data)
        step()
        params = list(model.params())
        step.dtype = (f"weights {'/'.join(sorted({str(p.data.dtype) for p in params}))}, "
                      f"gradients {'/'.join(sorted({str(p.grad.data.dtype) for p in params}))}")
        return step
    return {"chain": chain, "grad2": grad2, "mlp": mlp_case(None), "mlp-f32": mlp_case(np.float32),
            "mlp64": mlp_case(np.float64), "cnn": cnn_case()}


def worker(library, inner):
    "Serve timing requests on stdin/stdout: one JSON line in (a case name), one out (seconds)."
    cases = {"ours": ours_cases, "torch": torch_cases, "dezero": dezero_cases}[library]()
    for f in cases.values(): f(); f()  # warm up
    info = {"threads": threads_info(library)}
    info["dtypes"] = {name: f.dtype for name, f in cases.items() if hasattr(f, "dtype")}
    print(json.dumps({"ready": sorted(cases), **info}), flush=True)
    for line in sys.stdin:
        name = json.loads(line)
        wall, cpu = [], []
        for _ in range(inner):
            start, start_cpu = time.perf_counter(), time.process_time()
            cases[name]()
            wall.append(time.perf_counter() - start); cpu.append(time.process_time() - start_cpu)
        print(json.dumps([statistics.median(wall), statistics.median(cpu)]), flush=True)


def threads_info(library):
    if library == "dezero":
        return os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "numpy default"
    import torch
    return torch.get_num_threads()


# ---------------------------------------------------------------- parent: interleave, summarise
class Worker:
    def __init__(self, library, inner, threads):
        self.library = library
        env = dict(os.environ)
        if threads: env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", library, "--inner", str(inner)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def time(self, case):
        self.proc.stdin.write(json.dumps(case) + "\n"); self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close(); self.proc.wait()


CONTENDERS = {  # column -> (library, case) for each workload
    "chain": [("ours", "chain"), ("dezero", "chain"), ("torch", "chain")],
    "mlp": [("ours", "mlp"), ("dezero", "mlp"), ("dezero", "mlp-f32"), ("torch", "mlp")],
    "mlp64": [("ours", "mlp64"), ("dezero", "mlp64"), ("torch", "mlp64")],
    "grad2": [("ours", "grad2"), ("dezero", "grad2"), ("torch", "grad2")],
    "cnn": [("ours", "cnn"), ("dezero", "cnn"), ("torch", "cnn")],
}
LABELS = {("dezero", "mlp"): "dezero 0.0.13 as installed (float32 data)", ("dezero", "mlp-f32"): "dezero 0.0.13, float32 weights and data"}
TITLES = {"chain": f"(a) {CHAIN_OPS:,}-op scalar chain, forward + backward (float64)",
          "mlp": f"(b) one training step, MLP {'-'.join(map(str, SIZES))}, batch {BATCH} (float32)",
          "mlp64": f"(b') the same step in float64 (every engine fully dtype-matched)",
          "grad2": f"(c) second derivative of a {EXPR_OPS}-op scalar expression (float64)",
          "cnn": f"(d) one training step, CNN conv{CNN_WIDTH}-pool-conv{2 * CNN_WIDTH}-pool-linear, batch {CNN_BATCH} "
                 f"of {CNN_SIDE}x{CNN_SIDE} (float32, every engine)"}


def main(rounds, inner, threads, only=None):
    import torch
    load = os.getloadavg()[0]
    workloads = {w: c for w, c in CONTENDERS.items() if not only or w in only}
    workers = {lib: Worker(lib, inner, threads) for lib in ("ours", "dezero", "torch")}
    times = {w: {c: [] for c in workloads[w]} for w in workloads}
    try:
        for r in range(rounds):
            for workload, contenders in workloads.items():
                order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]  # rotate who goes first
                for lib, case in order: times[workload][(lib, case)].append(workers[lib].time(case))
    finally:
        for w in workers.values(): w.close()
    print(f"# Autograd engines: exp.autograd vs DeZero vs torch.autograd\n")
    print(f"Machine: {platform.machine()} {os.cpu_count()}-core CPU ({platform.processor() or platform.platform()}), "
          f"load average {load:.1f} before the run and {os.getloadavg()[0]:.1f} after it; Python {platform.python_version()}, torch {torch.__version__}, "
          f"threads: ours {workers['ours'].info['threads']}, torch {workers['torch'].info['threads']}, "
          f"dezero {workers['dezero'].info['threads']}.\n")
    dtypes = workers["dezero"].info["dtypes"]
    print(f"DeZero's MLP dtypes after a step: as installed, {dtypes['mlp']}; with float32 weights and data, "
          f"{dtypes['mlp-f32']}; float64, {dtypes['mlp64']}. DeZero's CNN after a step: {dtypes['cnn']}.")
    print(f"{rounds} interleaved rounds, each timing the median of {inner} runs; medians over rounds of wall-clock "
          f"and of process CPU time; ratios are medians of per-round ratios (ours / this: < 1 means ours is faster).\n")
    for workload, contenders in workloads.items():
        ours = times[workload][("ours", workload)]
        print(f"## {TITLES[workload]}\n")
        print("| engine | wall ms | ours / this (wall) | CPU ms | ours / this (CPU) |\n|---|---:|---:|---:|---:|")
        for key in contenders:
            label = LABELS.get(key, "exp.autograd (ours)" if key[0] == "ours" else "torch.autograd" if key[0] == "torch" else "dezero 0.0.13")
            cells = []
            for i in (0, 1):
                theirs = [t[i] for t in times[workload][key]]
                ratio = statistics.median(o[i] / t for o, t in zip(ours, theirs))
                cells += [f"{statistics.median(theirs) * 1e3:.2f}", f"{ratio:.2f}"]
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per library (0: the libraries' defaults)")
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="run only these workloads")
    parser.add_argument("--worker", choices=["ours", "torch", "dezero"])
    args = parser.parse_args()
    if args.worker: worker(args.worker, args.inner)
    else: main(args.rounds, args.inner, args.threads, args.only)
