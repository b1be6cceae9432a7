#!/usr/bin/env python
"""Load test of `python -m exp.serve` on loopback, batched and not; then with bad requests mixed in.

    python benchmarks/serve.py [--requests 2000] [--concurrency 32] [--rounds 4] [--models cnn mlp]
                               [--width 4096] [--max-wait-ms 5] [--bad-fraction 0.1]
                               [--out benchmarks/results/serve.md] [--device cpu|cuda]

For each model, two servers run at once: batched (`--max-batch 32 --max-wait-ms 5`) and one at a time
(`--max-batch 1`). `--concurrency` clients (asyncio connections kept open, each posting one PNG after
another) send `--requests` requests to each server, split into `--rounds` interleaved rounds
(A B, B A, ...: a change in the machine's load hits both). Reported: requests/s (median over rounds),
p50 and p99 latency (over all requests), errors (a status other than 200 or a class other than
exp.deploy's `predict_files` on the same PNG file: must be 0), the mean batch size the server ran (from
its `/stats`), and the median of the per-round ratios batched / one at a time.

The second phase sends `--requests` requests to the batched server with `--bad-fraction` of them bad
(wrong content type, malformed JSON, a JSON array of the wrong size, bytes that are not an image, a PNG
of the wrong size) and checks that every good one is still answered correctly and every bad one gets
a 4xx JSON error.

Models (random weights: the time of a forward pass does not depend on their values):
  cnn  lesson 14a's CNN (channels 8, 16, 32) on 8x8 digits: a forward pass costs microseconds
  mlp  an MLP 64-W-W-10 (W = --width): its weights do not fit in a CPU cache, a pass costs milliseconds

The client is ~20 lines of HTTP/1.1 on asyncio streams: httpx spends more CPU per request than the
server does. Client and servers share the machine's cores: these are loopback figures, not a
production server's. Appends a markdown report (command line, machine, load average) to --out.

`--device` is accepted like every benchmark's (and `cuda` stops at once, exit status 2, without a GPU), but
the server runs onnxruntime's CPUExecutionProvider whatever the device: on a GPU machine this measures its
CPU serving, and the report says so.
"""
import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from _timing import add_device_argument, resolve_device, stays_on_cpu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(name, width, folder):
    "The model `name`, exported to ONNX in `folder`, and 64 validation digits as PNG files."
    import torch
    from torch import nn

    from exp.conv import get_cnn_model, init_cnn
    from exp.data import get_data, image_size
    from exp.deploy import export_onnx, model_info, save_image
    torch.manual_seed(0)
    _, _, x_valid, _ = get_data()
    side = image_size()
    if name == "cnn": model = init_cnn(get_cnn_model((8, 16, 32)))
    else:
        model = nn.Sequential(nn.Linear(side * side, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                              nn.Linear(width, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic ONNX exporter announces its deprecation
        path = export_onnx(model.eval(), folder / f"{name}.onnx", x_valid[:64], model_info(side))
    images = [save_image(row, folder / f"{name}_{i}.png") for i, row in enumerate(x_valid[:64].numpy())]
    return path, images, sum(p.numel() for p in model.parameters())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, *options):
    "`python -m exp.serve MODEL` on a free port, logging beside the model: `(process, port)`."
    port = free_port()
    command = [sys.executable, "-m", "exp.serve", str(model), "--port", str(port), *options]
    log = Path(model).parent / f"server_{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    process.log = log
    return process, port


def wait_until_ready(process, port):
    try: get_json(port, "/health", wait=120)
    except OSError:
        process.kill()
        log = process.log.read_text()
        raise RuntimeError(f"the server on port {port} never answered /health: {log}") from None


def get_json(port, path, wait=0):
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.1)


# ---------------------------------------------------------------- the client: HTTP/1.1 on asyncio streams
async def post(reader, writer, body, content_type):
    "One POST /predict on an open connection: `(status, parsed JSON body, the server closes the connection)`."
    writer.write(f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status = int((await reader.readline()).split()[1])
    length, closes = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length": length = int(value)
        if name == b"connection" and value.strip().lower() == b"close": closes = True
    return status, json.loads(await reader.readexactly(length)), closes


async def load(port, requests, concurrency):
    "Send `requests` (content type, body, expected class or None for a bad one): latencies and outcomes."
    todo, latencies, outcomes = list(requests), [], []

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while todo:
            content_type, body, expected = todo.pop()
            start = time.perf_counter()
            try: status, answer, closes = await post(reader, writer, body, content_type)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                status, answer, closes = None, None, True
            latencies.append(time.perf_counter() - start)
            outcomes.append((status, answer, expected))
            if closes:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return np.array(latencies), outcomes, time.perf_counter() - start


def good_requests(images, expected, n):
    bodies = [p.read_bytes() for p in images]
    return [("image/png", bodies[i % len(bodies)], expected[i % len(bodies)]) for i in range(n)]


def bad_requests(side, wrong_size_png):
    "One of each kind of bad request; the expected outcome is a 4xx."
    return [("text/plain", b"hello", None), ("application/json", b"[0.1, 0.2", None),
            ("application/json", json.dumps([0.5] * (side * side - 1)).encode(), None),
            ("image/png", b"\x89PNG not really", None), ("image/png", wrong_size_png, None)]


def is_error(outcome):
    status, answer, expected = outcome
    return status != 200 or answer.get("class") != expected


# ---------------------------------------------------------------- the two phases
def compare(model, images, expected, args):
    "Phase 1: batched vs one at a time, interleaved rounds. Rows for the table and the per-round ratios."
    servers = {"batched": start_server(model, "--max-batch", "32", "--max-wait-ms", f"{args.max_wait_ms:g}"),
               "one at a time": start_server(model, "--max-batch", "1")}
    try:
        for process, port in servers.values(): wait_until_ready(process, port)
        for _, port in servers.values():  # warm up: connections, the session's first runs
            asyncio.run(load(port, good_requests(images, expected, 64), args.concurrency))
        warm = {name: get_json(port, "/stats") for name, (_, port) in servers.items()}
        per_round = args.requests // args.rounds
        runs = {name: [] for name in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for name in order:
                requests = good_requests(images, expected, per_round)
                runs[name].append(asyncio.run(load(servers[name][1], requests, args.concurrency)))
        stats = {name: get_json(port, "/stats") for name, (_, port) in servers.items()}
    finally:
        exits = {}
        for name, (process, _) in servers.items():
            process.terminate()
            exits[name] = process.wait(timeout=60)
    rows = {}
    for name, rounds in runs.items():
        latencies = np.concatenate([lat for lat, _, _ in rounds])
        errors = sum(is_error(o) for _, outcomes, _ in rounds for o in outcomes)
        warm_sizes = warm[name]["batch_sizes"]
        sizes = {int(k): v - warm_sizes.get(k, 0) for k, v in stats[name]["batch_sizes"].items()}
        mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        rps = [len(lat) / wall for lat, _, wall in rounds]
        rows[name] = dict(rps=statistics.median(rps), rounds=rps, p50=np.percentile(latencies, 50) * 1e3,
                          p99=np.percentile(latencies, 99) * 1e3, errors=errors, n=len(latencies),
                          mean_batch=mean_batch, exit=exits[name])
    ratios = [b / s for b, s in zip(rows["batched"]["rounds"], rows["one at a time"]["rounds"])]
    return rows, ratios


def mixed(model, images, expected, args, side):
    "Phase 2: the batched server under good and bad requests mixed. Counts of each outcome."
    from exp.deploy import save_image
    wrong = save_image(np.zeros((side + 1) ** 2), images[0].parent / "wrong_size.png").read_bytes()
    bad = bad_requests(side, wrong)
    n_bad = int(round(args.requests * args.bad_fraction))
    requests = good_requests(images, expected, args.requests - n_bad)
    requests += [bad[i % len(bad)] for i in range(n_bad)]
    np.random.default_rng(0).shuffle(requests)
    process, port = start_server(model, "--max-batch", "32", "--max-wait-ms", f"{args.max_wait_ms:g}")
    try:
        wait_until_ready(process, port)
        latencies, outcomes, wall = asyncio.run(load(port, requests, args.concurrency))
        health = get_json(port, "/health")
    finally:
        process.terminate()
        exit_code = process.wait(timeout=60)
    good = [o for o in outcomes if o[2] is not None]
    bad_out = [o for o in outcomes if o[2] is None]
    return dict(n=len(outcomes), good=len(good), good_ok=sum(not is_error(o) for o in good), bad=len(bad_out),
                bad_4xx=sum(o[0] is not None and 400 <= o[0] < 500 and "error" in o[1] for o in bad_out),
                other=sum(o[0] is None or o[0] >= 500 for o in outcomes), rps=len(outcomes) / wall,
                p99=np.percentile(latencies, 99) * 1e3, health=health["status"], exit=exit_code)


def model_report(name, args, folder, side):
    "Both phases for one model: the report's lines and the problems found (errors that must be 0)."
    from exp.deploy import predict_files
    path, images, n_weights = build_model(name, args.width, folder)
    expected = [label for _, label, _ in predict_files(path, images)]
    rows, ratios = compare(path, images, expected, args)
    title = "lesson 14a's CNN (8, 16, 32)" if name == "cnn" else f"MLP 64-{args.width}-{args.width}-10"
    size = path.stat().st_size
    size = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"
    lines = [f"### {name}: {title}, {n_weights:,} weights, {size} of ONNX", "",
             f"{args.requests} requests to each server from {args.concurrency} clients in {args.rounds} "
             "interleaved rounds.", "",
             "| server | requests/s | p50 ms | p99 ms | errors | mean batch | exit on SIGTERM |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, row in rows.items():
        batched = f"--max-batch 32 --max-wait-ms {args.max_wait_ms:g}"
        options = batched if label == "batched" else "--max-batch 1"
        lines.append(f"| {label} (`{options}`) | {row['rps']:.0f} | {row['p50']:.1f} | {row['p99']:.1f} | "
                     f"{row['errors']} of {row['n']} | {row['mean_batch']:.1f} | {row['exit']} |")
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    lines += ["", f"batched / one at a time, requests/s: median of per-round ratios "
              f"**{statistics.median(ratios):.2f}** (rounds: {rounds})", ""]
    m = mixed(path, images, expected, args, side)
    lines += [f"Mixed: {m['n']} requests, {m['bad']} of them bad ({args.bad_fraction:.0%}), to the batched "
              f"server: {m['good_ok']} of {m['good']} good requests answered correctly, {m['bad_4xx']} of "
              f"{m['bad']} bad ones got a 4xx JSON error, {m['other']} other outcomes (5xx or no answer); "
              f"{m['rps']:.0f} requests/s, p99 {m['p99']:.1f} ms; /health afterwards: {m['health']}; "
              f"exit on SIGTERM {m['exit']}.", ""]
    problems = [f"{name}, {label}: {row['errors']} errors" for label, row in rows.items() if row["errors"]]
    if m["good_ok"] != m["good"] or m["bad_4xx"] != m["bad"] or m["other"]:
        problems.append(f"{name}, mixed: {m}")
    return lines, problems


def machine(load_before):
    import onnxruntime
    import starlette
    import torch
    import uvicorn
    return (f"Machine: {platform.machine()} {os.cpu_count()}-core CPU ({platform.platform()}), load average "
            f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
            f"Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}. "
            "Client and servers share these cores.")


HEADER = ("# Serving: `python -m exp.serve`, batched vs one request at a time, on loopback\n\n"
          "Written by `benchmarks/serve.py` (its docstring says what is measured). "
          "Newest runs at the end.\n\n")


def main(args):
    from exp.data import image_size
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load_before = os.getloadavg()[0]
    lines, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_lines, model_problems = model_report(name, args, Path(tmp), image_size())
            print("\n".join(model_lines), flush=True)
            lines += model_lines
            problems += model_problems
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    note = stays_on_cpu("The server (exp.deploy, onnxruntime's CPUExecutionProvider)", args.device)
    notes = [note, ""] if note else []
    report = "\n".join([f"## {when}: `{command}`", "", machine(load_before), "", *notes, *lines]) + "\n"
    out = Path(args.out)
    new_file = not out.exists()
    with out.open("a", encoding="utf-8") as f: f.write(HEADER + report if new_file else report)
    print(f"appended to {out}")
    if problems:
        print("benchmark failed: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="to each server, and in the mixed phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--models", nargs="+", choices=["cnn", "mlp"], default=["cnn", "mlp"])
    parser.add_argument("--width", type=int, default=4096, help="the MLP's hidden width")
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    add_device_argument(parser)
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    note = stays_on_cpu("The server (exp.deploy, onnxruntime's CPUExecutionProvider)", args.device)
    if note: print(note, flush=True)
    main(args)
