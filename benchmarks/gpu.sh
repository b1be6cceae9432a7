#!/usr/bin/env bash
# Measure a machine with a GPU in one command: every notebook on CUDA, then every benchmark with
# `--device cuda` and short settings (chosen to fit the whole run in about 10 minutes on one modern GPU).
#
#     benchmarks/gpu.sh                          # everything
#     benchmarks/gpu.sh matmul gpt               # only these steps (STEPS below; `gpt` also selects gpt_*)
#     GPU_DRY_RUN=1 benchmarks/gpu.sh matmul     # the script itself on the CPU, into a temporary folder
#
# Writes benchmarks/results/gpu/ (created by the run; nothing there is committed before a GPU run):
#   summary.md   the GPU (nvidia-smi's name, driver, memory), torch and CUDA versions, the CPU, and one row
#                per step: its exact command line, its seconds and its exit status
#   NAME.md      each step's markdown report;  NAME.log  its console output (progress, warnings, errors)
# Without a GPU (no nvidia-smi, or a torch that sees no CUDA device) it says so and exits with status 2.
# A failing step is recorded and the run goes on; the exit status is 1 when any step failed.
# Environment: GPU_DATASET (mnist or digits: default mnist when its files are on this machine, else
# digits), GPU_STEP_TIMEOUT (seconds a benchmark may run, default 300; the notebooks together:
# GPU_NOTEBOOKS_TIMEOUT, default 420), PYTHON (default python), GPU_DRY_RUN=1
# (no GPU checks, --device cpu, results in GPU_OUT or a new temporary folder: it tests this script only).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
STEP_TIMEOUT=${GPU_STEP_TIMEOUT:-300}
NOTEBOOKS_TIMEOUT=${GPU_NOTEBOOKS_TIMEOUT:-420}
STEPS=(notebooks matmul train_loop ddp_train gpt_throughput gpt_nanogpt attention norm_optim rnn autograd
       autograd_mnist time_to_accuracy serve tokenizer)

# ---------------------------------------------------------------- which steps
step_matches() {  # step_matches STEP WORD: WORD names STEP, or the group STEP belongs to (gpt: gpt_*)
    [[ $1 == "$2" || $1 == "$2"_* ]]
}
for word in "$@"; do
    known=0
    for name in "${STEPS[@]}"; do if step_matches "$name" "$word"; then known=1; fi; done
    if [ "$known" = 0 ]; then
        echo "gpu.sh: unknown step '$word'; the steps are: ${STEPS[*]}" >&2
        exit 2
    fi
done
selected=("$@")
is_selected() {  # is_selected STEP: whether the command line asked for STEP (every step when it names none)
    [ ${#selected[@]} -eq 0 ] && return 0
    local word
    for word in "${selected[@]}"; do if step_matches "$1" "$word"; then return 0; fi; done
    return 1
}

# ---------------------------------------------------------------- is there a GPU?
if [ "${GPU_DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu
    OUT=${GPU_OUT:-$(mktemp -d)}
    gpu_names="none (GPU_DRY_RUN=1: everything on the CPU, for testing this script)"
    torch_cuda=$("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}")')
else
    DEVICE=cuda
    OUT=benchmarks/results/gpu
    if ! command -v nvidia-smi > /dev/null; then
        echo "gpu.sh: no nvidia-smi on this machine: it needs an NVIDIA GPU and its driver" >&2
        exit 2
    fi
    if ! gpu_names=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
        echo "gpu.sh: nvidia-smi found no usable GPU: $gpu_names" >&2
        exit 2
    fi
    if ! torch_cuda=$("$PYTHON" -c '
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
n = torch.cuda.device_count()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s)")' 2>&1); then
        echo "gpu.sh: CUDA is not available to torch here: $torch_cuda" >&2
        exit 2
    fi
fi

# ---------------------------------------------------------------- which data
mnist_home=${EXP_DATA_HOME:-$HOME/.cache/foundations}
if [ -z "${EXP_DATA_HOME:-}" ] && [ -d ../shared/data/mnist ]; then mnist_home=$(cd ../shared/data && pwd); fi
export EXP_DATA_HOME=$mnist_home
if [ -z "${GPU_DATASET:-}" ]; then
    GPU_DATASET=digits
    if [ -f "$mnist_home/mnist/train-images-idx3-ubyte.gz" ]; then GPU_DATASET=mnist; fi
fi

# ---------------------------------------------------------------- the run
mkdir -p "$OUT"
summary=$OUT/summary.md
started=$(date +%s)
{
    echo "# GPU run: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "\`benchmarks/gpu.sh${*:+ $*}\`"
    echo
    echo "GPU (nvidia-smi: name, driver, memory): $(echo "$gpu_names" | paste -sd ';' -)."
    echo "$torch_cuda; Python $("$PYTHON" -c 'import platform; print(platform.python_version())')."
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo 2> /dev/null | cut -d: -f2 | xargs) ($(nproc) cores)."
    echo "Device: $DEVICE; data: $GPU_DATASET; load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| step | command | seconds | exit status |"
    echo "|---|---|---:|---:|"
} > "$summary"

failed=0
# run NAME KIND COMMAND...: KIND "md": the command writes $OUT/NAME.md itself and its console goes to
# NAME.log; "stdout": its standard output is the report (NAME.md), its standard error the log.
run() {
    local name=$1 kind=$2
    shift 2
    is_selected "$name" || return 0
    echo "== $name: $*" >&2
    local start status=0 seconds line limit=${STEP_LIMIT:-$STEP_TIMEOUT}
    start=$(date +%s)
    if [ "$kind" = md ]; then
        timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || status=$?
    else
        timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log" || status=$?
    fi
    seconds=$(($(date +%s) - start))
    if [ "$status" -ne 0 ]; then failed=1; fi
    if [ "$status" -eq 124 ]; then echo "   timed out after ${limit}s" >&2; fi
    echo "   ${seconds}s, exit status $status" >&2
    line="$*"
    echo "| $name | \`${line//|/\\|}\` | $seconds | $status |" >> "$summary"
}

B=benchmarks
D=$DEVICE
# the notebooks: the Learner picks $EXP_DEVICE; outputs are not saved (the shipped ones are the CPU's)
STEP_LIMIT=$NOTEBOOKS_TIMEOUT run notebooks stdout \
    env EXP_DEVICE="$D" "$PYTHON" run_notebook.py nbs --keep_going
run matmul md "$PYTHON" $B/matmul.py --device "$D" --repeats 5 --rounds 2 --inner 3 --out "$OUT/matmul.md"
run train_loop md "$PYTHON" $B/train_loop.py --device "$D" --dataset "$GPU_DATASET" --runs 2 \
    --overhead_runs 3 --out "$OUT/train_loop.md"
run ddp_train stdout "$PYTHON" $B/ddp_train.py --device "$D" --compare 1,2 --repeats 1 --epochs 1
run gpt_throughput md "$PYTHON" $B/gpt.py throughput --device "$D" --rounds 3 --out "$OUT/gpt.md"
run gpt_nanogpt md "$PYTHON" $B/gpt.py nanogpt --device "$D" --iters 500 --eval-iters 50 --out "$OUT/gpt.md"
run attention md "$PYTHON" $B/attention.py --device "$D" --lengths 256,1024,4096 --rounds 3 \
    --output "$OUT/attention.md"
# the other helpers' benchmarks (each takes --device). Compiling dominates norm_optim and rnn here:
# --python-wrapper spares them the C++ build of cpp_wrapper's kernel-calling code (their CPU default)
run norm_optim stdout "$PYTHON" $B/norm_optim.py --device "$D" --rounds 3 --steps 10 --python-wrapper
run rnn stdout "$PYTHON" $B/rnn.py --device "$D" --rounds 3 --python-wrapper
run autograd stdout "$PYTHON" $B/autograd.py --device "$D" --rounds 3 --inner 2
if [ "$GPU_DATASET" = mnist ]; then
    run autograd_mnist md "$PYTHON" $B/autograd_mnist.py --device "$D" --epochs 1 --limit 10000 \
        --out "$OUT/autograd_mnist.md"
fi
run time_to_accuracy stdout "$PYTHON" $B/time_to_accuracy.py --device "$D" --dataset "$GPU_DATASET" --runs 1 \
    --time-limit 60
# CPU-only peers: the flag is accepted, the reports say what stays on the CPU
run serve md "$PYTHON" $B/serve.py --device "$D" --requests 400 --rounds 2 --out "$OUT/serve.md"
run tokenizer md "$PYTHON" $B/tokenizer.py --device "$D" --rounds 1 --results "$OUT/tokenizer.md"

total=$(($(date +%s) - started))
{
    echo
    echo "Total: ${total} s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} >> "$summary"
echo "gpu.sh: ${total}s; results in $OUT/ (summary.md lists each step)" >&2
exit "$failed"
