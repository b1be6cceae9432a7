#!/usr/bin/env python
"""Our byte-level BPE (exp.tokenizer) vs Hugging Face `tokenizers`: training time and encoding speed.

    python benchmarks/tokenizer.py [--rounds 7] [--vocab-sizes 512 1000] [--encode-vocab 1000]
                                   [--results benchmarks/results/tokenizer.md] [--device cpu|cuda]

Both train GPT-2's byte-level BPE (the same split regex, no prefix space, the 256 bytes as the initial
alphabet, ids = 256 bytes + merges + one special token) on the first 90% of tiny Shakespeare
(`exp.data.load_tinyshakespeare`), at each vocabulary size; then each encodes the whole corpus
(1,115,394 characters) with its tokenizer trained at `--encode-vocab`, as one string and as its
40,000 lines (ours in a loop, Hugging Face's `encode_batch`, parallel in its default setting). Ours
starts every encoding with an empty chunk cache (a fresh `BPETokenizer` from the merges), so what is
timed includes merging each distinct chunk once, not only look-ups in a warm cache.

Contenders, each in its own worker process: ours (pure Python, one thread), Hugging Face with
parallelism off (`TOKENIZERS_PARALLELISM=false`, `RAYON_NUM_THREADS=1`: one thread, like ours) and
Hugging Face as installed (its Rust thread pool on every core). The parent asks the workers in turn,
round after round, rotating who goes first (interleaved), and reports medians of wall-clock and of
process CPU time over the rounds, and the median of the per-round ratios ours / theirs (> 1: ours is
slower). Each worker also reports its tokens per character on the held-out 10% (the two must agree
within a few percent) so the timings compare tokenizers that do the same job. The markdown report,
with the command line, the machine and the load average, is printed and appended to `--results`.

`--device` is accepted like every benchmark's (and `cuda` stops at once, exit status 2, without a GPU), but
both tokenizers are CPU code: on a GPU machine this measures its CPU, and the report says so.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import add_device_argument, resolve_device, stays_on_cpu

ROOT = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"
CONTENDERS = ("ours", "hf-1thread", "hf")
LABELS = {"ours": "exp.tokenizer (ours, pure Python, 1 thread)",
          "hf-1thread": "HF tokenizers, 1 thread", "hf": "HF tokenizers, default threads"}


# ---------------------------------------------------------------- workers: one library each
def ours_cases(train_text):
    sys.path.insert(0, str(ROOT))
    from exp.tokenizer import BPETokenizer

    def train(vocab_size): return BPETokenizer.train(train_text, vocab_size, special_tokens=[EOT])
    def encoder(vocab_size):
        merges = train(vocab_size).merges
        def encode(text): return BPETokenizer(merges, [EOT]).encode(text)  # a fresh, empty chunk cache
        def encode_lines(lines):
            tokenizer = BPETokenizer(merges, [EOT])
            return [tokenizer.encode(line) for line in lines]
        return encode, encode_lines
    return train, encoder


def hf_cases(train_text):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def train(vocab_size):
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([train_text], trainer)
        return hf
    def encoder(vocab_size):
        hf = train(vocab_size)
        def encode(text): return hf.encode(text).ids
        def encode_lines(lines): return [e.ids for e in hf.encode_batch(lines)]
        return encode, encode_lines
    return train, encoder


def timed(f, *args):
    start, start_cpu = time.perf_counter(), time.process_time()
    result = f(*args)
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def worker(library, encode_vocab):
    "Serve requests on stdin/stdout: a JSON request per line in, [wall, cpu] seconds out."
    sys.path.insert(0, str(ROOT))
    from exp.data import load_tinyshakespeare
    text = load_tinyshakespeare()
    split = int(0.9 * len(text))
    train, encoder = (ours_cases if library == "ours" else hf_cases)(text[:split])
    encode, encode_lines = encoder(encode_vocab)
    lines = text.splitlines(keepends=True)
    encode(text[:10_000])  # warm up
    assert sum(map(len, encode_lines(lines))) == len(encode(text))  # chunks never cross a line end
    tokens_per_char = len(encode(text[split:])) / (len(text) - split)
    print(json.dumps({"tokens_per_char": tokens_per_char, "tokens": len(encode(text))}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request[0] == "train": _, wall, cpu = timed(train, request[1])
        else: _, wall, cpu = timed(encode, text) if request[0] == "encode" else timed(encode_lines, lines)
        print(json.dumps([wall, cpu]), flush=True)


# ---------------------------------------------------------------- parent: interleave, summarise
class Worker:
    def __init__(self, name, encode_vocab):
        env = dict(os.environ)
        if name == "hf-1thread": env.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
        command = [sys.executable, __file__, "--worker", name, "--encode-vocab", str(encode_vocab)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def time(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def table(times, workloads, value):
    "Markdown rows: per contender and workload, the median `value` (s) and the median paired ratio ours / it."
    lines = ["| contender | " + " | ".join(f"{w}: s | ours / this" for w in workloads) + " |",
             "|---|" + "---:|---:|" * len(workloads)]
    for name in CONTENDERS:
        cells = []
        for workload in workloads:
            ours, theirs = ([value(t) for t in times[workload][n]] for n in ("ours", name))
            cells += [f"{statistics.median(theirs):.3f}",
                      f"{statistics.median(o / t for o, t in zip(ours, theirs)):.2f}"]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return lines


def main(rounds, vocab_sizes, encode_vocab, results, device="cpu"):
    load_before = os.getloadavg()
    workers = {name: Worker(name, encode_vocab) for name in CONTENDERS}
    requests = {f"train {size}": ["train", size] for size in vocab_sizes}
    requests.update({"encode": ["encode"], "encode lines": ["lines"]})
    times = {w: {name: [] for name in CONTENDERS} for w in requests}
    try:
        for r in range(rounds):
            order = CONTENDERS[r % 3:] + CONTENDERS[:r % 3]  # rotate who goes first
            for workload, request in requests.items():
                for name in order: times[workload][name].append(workers[name].time(request))
    finally:
        for w in workers.values(): w.close()
    load_after = os.getloadavg()
    note = stays_on_cpu("Tokenization (ours and Hugging Face's)", device)
    report = "\n".join(header_lines(rounds, vocab_sizes, encode_vocab, workers, load_before, load_after) +
                       ([note, ""] if note else []) +
                       ["Wall-clock seconds:", ""] + table(times, list(requests), lambda t: t[0]) +
                       ["", "Process CPU seconds (all of a process's threads):", ""] +
                       table(times, list(requests), lambda t: t[1]) +
                       ["", throughput(times["encode"], "as one string"),
                        throughput(times["encode lines"], "line by line (HF: encode_batch)"), ""])
    print(report)
    if results:
        path = Path(results)
        title = "# Tokenizers: exp.tokenizer's byte-level BPE vs Hugging Face `tokenizers`\n\n"
        title = "" if path.exists() else title  # before open("a") creates the file
        with path.open("a", encoding="utf-8") as f: f.write(title + report + "\n")


def header_lines(rounds, vocab_sizes, encode_vocab, workers, load_before, load_after):
    "The run's command line, machine, load, method and the tokenizers' agreement, as markdown lines."
    import torch
    command = "python " + shlex.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    loads = [", ".join(f"{x:.1f}" for x in load) for load in (load_before, load_after)]
    per_char = ", ".join(f"{LABELS[n]} {workers[n].info['tokens_per_char']:.4f}" for n in CONTENDERS)
    tokens = ", ".join(f"{workers[n].info['tokens']:,}" for n in CONTENDERS)
    return [f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{command}`", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} (not used), "
            f"tokenizers {importlib.metadata.version('tokenizers')}; load average (1, 5, 15 min) "
            f"before {loads[0]}, after {loads[1]}.", "",
            f"{rounds} interleaved rounds (rotating who goes first); medians over rounds; ratio = median of "
            "the per-round ratios ours / this (> 1: ours is slower). Training: on the first 1,003,854 "
            f"characters, vocabulary sizes {', '.join(map(str, vocab_sizes))} (one id is a special token). "
            "Encoding: the whole corpus, 1,115,394 characters, as one string (`encode`) and as its 40,000 "
            f"lines (`encode lines`: ours in a loop, HF's `encode_batch`), at vocabulary {encode_vocab} "
            "(ours from an empty chunk cache each time).", "",
            f"Held-out tokens per character at vocabulary {encode_vocab}: {per_char}; "
            f"tokens for the whole corpus: {tokens}.", ""]


def throughput(encode_times, how):
    "A line with each contender's median encoding rate."
    rates = {n: statistics.median(1_115_394 / wall for wall, _ in encode_times[n]) for n in CONTENDERS}
    return f"Encoding throughput, {how} (median, wall-clock): " + ", ".join(
        f"{LABELS[n]} {rates[n] / 1e6:.2f} M characters/s" for n in CONTENDERS) + "."

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 1000])
    parser.add_argument("--encode-vocab", type=int, default=1000)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "tokenizer.md"),
                        help="markdown file the report is appended to ('' to only print it)")
    parser.add_argument("--worker", choices=CONTENDERS)
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.worker: worker(args.worker, args.encode_vocab)
    else: main(args.rounds, args.vocab_sizes, args.encode_vocab, args.results, device)
