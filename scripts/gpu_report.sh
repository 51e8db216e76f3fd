#!/usr/bin/env bash
# Check and measure wgtrain on a machine with a GPU, in one go:
#
#   scripts/gpu_report.sh
#
# 1. the adapters wgpu sees;
# 2. the GPU tests (kernels against their CPU twins, GPU training against
#    CPU training, the GPU predictor, the int8 kernels, f16-mixed against
#    its CPU twin, distillation, the memory count), with
#    WGTRAIN_REQUIRE_GPU=1 so that a missing adapter fails them;
# 3. `wgtrain bench` on the GPU: epoch times, matmul GFLOP/s (every tile
#    variant, and the chosen one with wgpu's shader checks on), per-kernel
#    timestamps, a 37M-parameter model in f32 and f16-mixed, two replicas
#    on the one GPU, inference latency and throughput (and the CPU inference
#    rows for comparison), their JSON lines gathered in $REPORT/bench.jsonl
#    and turned into $REPORT/report.html and $REPORT/report.md
#    (`wgtrain bench --report`);
# 4. the full Fashion-MNIST recipe trained on the GPU, then evaluated;
# 5. scripts/compare_pytorch.py on CUDA with --matmul, and for the large
#    model with --amp, when PyTorch sees a CUDA device;
# 6. scripts/loadtest.sh at concurrency 256 with the server on the CPU and
#    on the GPU, when wrk is installed.
#
# Every step logs to $REPORT/<step>.log (with nvidia-smi, clocks.csv samples
# the clocks and load through the run); a failed step is reported and the
# others still run; the exit status is 1 if any step failed. The summary at
# the end lists each step with its time and status.
#
# Environment:
#   WGTRAIN    the wgtrain binary (default: build target/release/wgtrain)
#   TEST_BINS  a folder holding prebuilt test executables named gpu_kernels,
#              train_equivalence, gpu_predict, gpu_int8, mixed_precision,
#              gpu_distill, memory (default: cargo test)
#   DATA       Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)
#   REPORT     folder for the logs (default target/gpu-report)
#   PYTHON     interpreter with torch for the comparison (default python3)
#   SKIP       space-separated step names to leave out
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-/usr/share/datasets/fashion-mnist}
REPORT=${REPORT:-target/gpu-report}
PYTHON=${PYTHON:-python3}
SKIP=${SKIP:-}
mkdir -p "$REPORT"
export WGTRAIN_REQUIRE_GPU=1

if [ -z "${WGTRAIN:-}" ]; then
    cargo build --release --quiet || exit 1
    WGTRAIN=target/release/wgtrain
fi

SUMMARY=()
FAILED=0
# step NAME COMMAND...: run COMMAND with its output in $REPORT/NAME.log
# (and on stdout), and record the time and exit status.
step() {
    local name=$1
    shift
    if [[ " $SKIP " == *" $name "* ]]; then
        SUMMARY+=("$(printf '%-22s %8s  %s' "$name" - skipped)")
        return
    fi
    echo "=== $name: $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    "$@" 2>&1 | tee "$REPORT/$name.log"
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    local status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
        FAILED=1
    fi
    SUMMARY+=("$(printf '%-22s %7.1fs  %s' "$name" "$(awk "BEGIN { print $t1 - $t0 }")" "$status")")
}

# jsonl COMMAND...: run COMMAND (a `wgtrain bench`) with its stdout, the
# JSON lines, also appended to $REPORT/bench.jsonl for the report.
jsonl() {
    "$@" | tee -a "$REPORT/bench.jsonl"
    return "${PIPESTATUS[0]}"
}

run_tests() {
    local rc=0 t
    for t in gpu_kernels train_equivalence gpu_predict gpu_int8 mixed_precision gpu_distill memory; do
        if [ -n "${TEST_BINS:-}" ]; then
            "$TEST_BINS/$t" --test-threads 1 || rc=1
        else
            cargo test --release --quiet --test "$t" -- --test-threads 1 || rc=1
        fi
    done
    return $rc
}

train_gpu() {
    local model=$REPORT/fashion-gpu.safetensors
    "$WGTRAIN" train --data "$DATA" --device gpu --hidden 500 --epochs 10 --batch 64 --lr 0.1 \
        --save "$model" || return 1
    "$WGTRAIN" eval --model "$model" --data "$DATA" --device cpu || return 1
}

# Clock and load samples for the whole run, where the driver offers them.
CLOCKS=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,pstate,utilization.gpu,power.draw \
        --format=csv -lms 250 >"$REPORT/clocks.csv" 2>&1 &
    CLOCKS=$!
fi

step devices "$WGTRAIN" devices
step tests run_tests
: >"$REPORT/bench.jsonl"
step bench-epoch jsonl "$WGTRAIN" bench --epoch --device gpu --epochs 4 --data "$DATA"
# Epoch time against batch and model size, for the report's figures.
step bench-epoch-sizes jsonl "$WGTRAIN" bench --epoch --device gpu --epochs 3 --data "$DATA" \
    --batch 32,128,1024 --hidden 128,1024,500x500
# Step cost of the stateful optimizers against the SGD epoch above (targets:
# momentum at most 1.1x, AdamW 1.15x).
step bench-epoch-momentum jsonl "$WGTRAIN" bench --epoch --device gpu --epochs 4 --data "$DATA" --momentum 0.9
step bench-epoch-adamw jsonl "$WGTRAIN" bench --epoch --device gpu --epochs 4 --data "$DATA" --optimizer adamw --weight-decay 0.01
step bench-matmul jsonl "$WGTRAIN" bench --matmul --device gpu --square 1024,2048,4096 --tile all
step bench-matmul-checked env WGTRAIN_SHADER_CHECKS=1 "$WGTRAIN" bench --matmul --device gpu --square 4096
# A large model (784-4096-4096-4096-10, 37M parameters) at batch 1024, in
# f32 and f16-mixed, with the memory each run logs (issue 14's large-model
# target compares these with PyTorch below).
step bench-large jsonl "$WGTRAIN" bench --model 4096,4096,4096 --device gpu --data "$DATA" --batch 1024 --epochs 2 --max-steps 20
step bench-large-f16 jsonl "$WGTRAIN" bench --model 4096,4096,4096 --device gpu --data "$DATA" --batch 1024 --epochs 2 --max-steps 20 \
    --precision f16-mixed
# Two replicas on the one GPU against one: the machinery's overhead and the
# measured readback, upload and host-sum times of the parallel cost model.
step bench-parallel jsonl "$WGTRAIN" bench --parallel --device gpu:0,gpu:0 --batch 64,256 --max-steps 200
step bench-kernels jsonl "$WGTRAIN" bench --kernels --device gpu --batch 64,256
step bench-inference jsonl "$WGTRAIN" bench --inference --device cpu,gpu
step bench-report "$WGTRAIN" bench --report "$REPORT/report.html" "gpu-report=$REPORT/bench.jsonl"
step bench-report-md "$WGTRAIN" bench --report "$REPORT/report.md" "gpu-report=$REPORT/bench.jsonl"
step train-fashion train_gpu
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    step compare-pytorch env PYTHONUNBUFFERED=1 "$PYTHON" scripts/compare_pytorch.py --devices cuda --matmul \
        --data "$DATA" --wgtrain "$WGTRAIN" --epochs 4
    step compare-pytorch-large env PYTHONUNBUFFERED=1 "$PYTHON" scripts/compare_pytorch.py --devices cuda --amp \
        --model 4096,4096,4096 --batch 1024 --max-steps 20 --data "$DATA" --wgtrain "$WGTRAIN" --epochs 3
else
    SUMMARY+=("$(printf '%-22s %8s  %s' compare-pytorch - 'skipped (no CUDA PyTorch)')")
fi
if command -v wrk >/dev/null; then
    # loadtest.sh runs target/release/wgtrain.
    if [ "$WGTRAIN" != target/release/wgtrain ]; then
        mkdir -p target/release && cp "$WGTRAIN" target/release/wgtrain
    fi
    export SKIP_BUILD=1 LEVELS="32 256" WRK_THREADS=${WRK_THREADS:-4} DURATION=${DURATION:-8s}
    step serve-cpu env SERVE_ARGS="--device cpu" scripts/loadtest.sh
    step serve-cpu-4 env SERVE_ARGS="--device cpu --infer-threads 4" scripts/loadtest.sh
    step serve-gpu env SERVE_ARGS="--device gpu" scripts/loadtest.sh
    step serve-gpu-256 env SERVE_ARGS="--device gpu --max-batch 256" scripts/loadtest.sh
else
    SUMMARY+=("$(printf '%-22s %8s  %s' serve - 'skipped (no wrk)')")
fi

[ -n "$CLOCKS" ] && kill "$CLOCKS" 2>/dev/null

echo
echo "=== summary ($REPORT)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
