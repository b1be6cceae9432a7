"""What every benchmark shares about devices: the `--device` flag, a fast clear failure where the device is
missing, and clocks that wait for the device.

    from _timing import add_device_argument, resolve_device, sync, clock, device_label

On a GPU, work is queued and a call returns before it ran: a clock read right after it measures the
queueing, not the work. `sync(device)` waits for the queue to drain (a no-op on the CPU), so every timing
in the benchmarks reads `clock(device)` (sync, then `time.perf_counter()`).
"""
import sys
import time

import torch

EXIT_NO_DEVICE = 2  # the exit status when the machine lacks the device asked for (argparse's for bad usage)


def add_device_argument(parser, default="cpu"):
    "Add `--device` to an argparse parser: where the torch contenders run."
    parser.add_argument("--device", default=default,
                        help=f"where the torch contenders run: cpu, cuda, cuda:N, mps (default {default})")


def fail(message):
    "Print `message` to stderr and exit with status 2: a usage problem, not a crash, so no traceback."
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_NO_DEVICE)


def cuda_missing_reason():
    "Why torch sees no GPU here, in words."
    if torch.version.cuda is None: return f"torch {torch.__version__} was built without CUDA support"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) found no GPU: check `nvidia-smi` "
            "and CUDA_VISIBLE_DEVICES")


def resolve_device(name):
    "`torch.device(name)`, checked: exits with status 2 and says why when this machine lacks that device."
    try: device = torch.device(name)
    except RuntimeError as error: fail(f"--device {name!r} is not a device name torch knows ({error}); "
                                       "use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"CUDA is not available on this machine: {cuda_missing_reason()}. "
                 "Run with --device cpu, or on a machine with a GPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail("MPS is not available on this machine (it needs Apple silicon and a torch built with MPS). "
             "Run with --device cpu.")
    return device


def sync(device):
    "Wait until `device` has run all the work queued on it (a no-op on the CPU): read clocks only after this."
    device = torch.device(device)
    if device.type == "cuda": torch.cuda.synchronize(device)
    elif device.type == "mps": torch.mps.synchronize()


def clock(device):
    "`time.perf_counter()` once `device` has finished its queued work."
    sync(device)
    return time.perf_counter()


def device_label(device):
    "The device for a results table: `cpu`, or `cuda:0 (NVIDIA H200)`."
    device = torch.device(device)
    if device.type != "cuda": return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def stays_on_cpu(what, device):
    "A sentence for the output when part of a benchmark cannot follow `--device` (empty on the CPU)."
    device = torch.device(device)
    return "" if device.type == "cpu" else f"{what} stays on the CPU (it has no {device.type} version)."
