"""The benchmarks' `--device` flag: a clear, fast refusal where CUDA is missing, and real runs on the CPU.

On a CPU-only machine `--device cuda` must stop before any work with exit status 2 and one line that says
why (not a traceback); `--device cpu` must run to the end with tiny sizes and write where it is told,
never over the committed results. `benchmarks/gpu.sh` must refuse the same way, and its plumbing runs on
the CPU with GPU_DRY_RUN=1.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _timing  # noqa: E402

NO_CUDA = "CUDA is not available on this machine"
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: no refusal to test")

# each benchmark with the arguments it needs before --device (gpt.py's part)
OWNED = {"matmul": [], "train_loop": [], "ddp_train": [], "gpt": ["throughput"], "serve": [], "tokenizer": [],
         "attention": []}


def run_benchmark(name, *args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), **kwargs)


@needs_no_gpu
@pytest.mark.parametrize("name", sorted(OWNED))
def test_device_cuda_without_a_gpu_exits_2_with_a_clear_message(name):
    result = run_benchmark(name, *OWNED[name], "--device", "cuda", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert NO_CUDA in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--device cpu" in result.stderr  # the way out


def test_resolve_device(capsys):
    assert _timing.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit) as stop:
        _timing.resolve_device("gpu")
    assert stop.value.code == 2 and "'gpu' is not a device name torch knows" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stop:
            _timing.resolve_device("cuda:0")
        assert stop.value.code == 2 and NO_CUDA in capsys.readouterr().err


def test_clock_and_labels_on_the_cpu():
    _timing.sync("cpu")  # a no-op, but it must accept a device name
    first, second = _timing.clock("cpu"), _timing.clock(torch.device("cpu"))
    assert second >= first
    assert _timing.device_label("cpu") == "cpu"
    assert _timing.stays_on_cpu("DeZero", "cpu") == ""
    assert _timing.stays_on_cpu("DeZero", "meta") == "DeZero stays on the CPU (it has no meta version)."


@pytest.mark.slow
def test_gpt_throughput_runs_on_the_cpu_and_writes_where_told(tmp_path):
    committed = (BENCHMARKS / "results" / "gpt.md").read_bytes()
    out = tmp_path / "gpt.md"
    result = run_benchmark("gpt", "throughput", "--device", "cpu", "--rounds", "1", "--steps", "1",
                           "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "device cpu" in text and "| float32 |" in text and "| bfloat16 autocast |" in text
    assert (BENCHMARKS / "results" / "gpt.md").read_bytes() == committed


@pytest.mark.slow
def test_train_loop_runs_on_the_cpu_and_writes_where_told(tmp_path):
    out = tmp_path / "train_loop.md"
    result = run_benchmark("train_loop", "--device", "cpu", "--dataset", "digits", "--runs", "1",
                           "--overhead_runs", "1", "--only", "raw", "learner", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "device cpu" in text and "| raw |" in text and "| learner |" in text
    assert "The Learner's own cost per batch" in text


def test_rnn_refuses_a_malformed_shape_before_any_work():
    result = run_benchmark("rnn", "--shape", "32,35,x", timeout=120)
    assert result.returncode == 2 and "give five positive integers" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_rnn_shape_parsing():
    import rnn
    assert rnn.parse_shape("32,35,32,64,1") == (32, 35, 32, 64, 1)
    for bad in ("32,35,32,64", "32,35,32,64,0", "a,b,c,d,e"):
        with pytest.raises(Exception, match="five positive integers"): rnn.parse_shape(bad)


# ---------------------------------------------------------------- benchmarks/gpu.sh
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu.sh needs bash and coreutils' timeout")


def fake_nvidia_smi(folder, succeeds):
    "An `nvidia-smi` that prints a GPU (or fails), first on PATH: gpu.sh then reaches its torch check."
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA Fake GPU, 1.0, 1 MiB'\n" if succeeds
                      else "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable}


def run_gpu_sh(*args, env=None, timeout=60):
    return subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@needs_bash
@needs_no_gpu
def test_gpu_sh_without_a_gpu_exits_2(tmp_path):
    result = run_gpu_sh(env=fake_nvidia_smi(tmp_path, succeeds=False))
    assert result.returncode == 2 and "nvidia-smi found no usable GPU" in result.stderr, result.stderr
    result = run_gpu_sh(env=fake_nvidia_smi(tmp_path, succeeds=True))
    assert result.returncode == 2 and "CUDA is not available to torch here" in result.stderr, result.stderr
    assert not (BENCHMARKS / "results" / "gpu").exists()  # created only by a run that measures


@needs_bash
def test_gpu_sh_refuses_an_unknown_step():
    result = run_gpu_sh("matmull")
    assert result.returncode == 2 and "unknown step 'matmull'" in result.stderr and "matmul" in result.stderr


@needs_bash
@pytest.mark.slow
def test_gpu_sh_dry_run_records_each_step(tmp_path):
    env = {**os.environ, "GPU_DRY_RUN": "1", "GPU_OUT": str(tmp_path), "PYTHON": sys.executable}
    result = run_gpu_sh("gpt_throughput", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| gpt_throughput | `" in summary and "gpt.py throughput --device cpu" in summary, summary
    assert summary.rstrip().splitlines()[-1].startswith("Total: ")
    assert "| float32 |" in (tmp_path / "gpt.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt.md", "gpt_throughput.log", "summary.md"]
