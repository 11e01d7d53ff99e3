#!/usr/bin/env bash
# The issue-18 GPU benchmarks in one go (~8 minutes of device time on an H100/H200):
#   1. installs bench/gpu/wheels/*.whl (--no-index --no-deps, into /tmp/site) when diffusers is missing
#      (build them here first with bench/gpu/build_wheels.sh, and carry bench/gpu/wheels);
#   2. writes full-size random SD1.5 and SDXL checkpoints (bench/write_full_checkpoints.py; the switch
#      bench writes a second SD1.5 file and two LoRAs itself);
#   3. txt2img ours vs raw diffusers: SD1.5 512 batch 1 and 4, SDXL 1024 batch 1, eager and compiled;
#   4. the switch bench (SD1.5: disk, RAM cache, LoRA);
#   and writes the result lines to $OUT/summary.txt (full logs and JSON beside it).
#
#   device:  run(command="bash bench/gpu/run_all.sh", carry=["bench/gpu/wheels"], timeout_s=600)
#   here:    bash bench/gpu/run_all.sh --smoke      # tiny models on the CPU, proves the wiring (~2 min)
#
# Knobs (environment): STEPS (20), REPEATS (3), SKIP_SDXL=1, SKIP_COMPILED=1, SKIP_SWITCH=1,
# PHASE_TIMEOUT (seconds per bench command, 240), BUDGET (seconds for the whole script, 480), PYTHON.
# Order: eager cells, switch bench, then compiled cells; a phase with too little budget left is skipped
# and says so in the summary.
set -uo pipefail
cd "$(dirname "$0")/../.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x venv/bin/python ]; then PY=venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-3}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-240}
say() { echo "$*" | tee -a "$SUMMARY"; }
started=$(date +%s)

if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ! ls bench/gpu/wheels/*.whl >/dev/null 2>&1; then
        say "error: diffusers is not installed and bench/gpu/wheels/ is empty (run bench/gpu/build_wheels.sh and carry it)"
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        bench/gpu/wheels/*.whl || { say "error: installing the carried wheels failed"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
say "$("$PY" - <<'PYEOF'
import platform

import diffusers
import torch
import transformers

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print(f"python {platform.python_version()} torch {torch.__version__} diffusers {diffusers.__version__}"
      f" transformers {transformers.__version__} GPU: {gpu}")
PYEOF
)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"

MODES="eager compiled"
[ "${SKIP_COMPILED:-0}" = 1 ] && MODES="eager"
SMOKE_ARG=()
if [ "$SMOKE" = 1 ]; then
    SMOKE_ARG=(--smoke --compile-backend aot_eager)
    say "smoke run: tiny random models (numbers mean nothing)"
else
    t0=$(date +%s)
    fams="sd1"
    [ "${SKIP_SDXL:-0}" = 1 ] || fams="sd1 sdxl"
    # shellcheck disable=SC2086
    "$PY" bench/write_full_checkpoints.py --out bench/out --families $fams --dtype fp16 --skip-existing 2>&1 \
        | tee "$OUT/write.log" || { say "error: writing checkpoints failed (see write.log)"; exit 2; }
    say "checkpoints written in $(($(date +%s) - t0)) s"
fi

BUDGET=${BUDGET:-480}  # seconds for the whole script; a phase that would start with too little left is skipped
run_phase() { # name, least seconds it needs, command...
    local name=$1 need=$2
    shift 2
    local t0 left limit
    t0=$(date +%s)
    left=$((BUDGET - (t0 - started)))
    say ""
    if [ "$left" -lt "$need" ]; then
        say "== $name: skipped (${left}s of the ${BUDGET}s budget left, needs ~${need}s; raise BUDGET or run it alone)"
        return
    fi
    limit=$((left < PHASE_TIMEOUT ? left : PHASE_TIMEOUT))
    say "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -E '^(txt2img|sd1|sdxl|switch|  |    )' "$OUT/$name.log" | grep -v -E 'Warning|warn|it/s\]' >>"$SUMMARY"
    if [ "$rc" != 0 ]; then
        say "  ($name exited $rc$([ "$rc" = 124 ] && echo ": cut at ${limit}s"); tail of its log:)"
        tail -5 "$OUT/$name.log" | sed 's/^/    /' >>"$SUMMARY"
    fi
    say "  ($name took $(($(date +%s) - t0)) s)"
}

T2I=("$PY" bench/bench_txt2img.py --steps "$STEPS" --repeats "$REPEATS" "${SMOKE_ARG[@]}")
# most important first: the eager cells, then the switch bench, then the compiled cells (each
# compiled cell compiles the UNet twice, ours and raw: the slow part)
run_phase sd1_eager 40 "${T2I[@]}" --families sd1 --batches 1 4 --modes eager --json "$OUT/sd1_eager.json"
[ "${SKIP_SDXL:-0}" = 1 ] ||
    run_phase sdxl_eager 60 "${T2I[@]}" --families sdxl --batches 1 --modes eager --json "$OUT/sdxl_eager.json"
if [ "${SKIP_SWITCH:-0}" != 1 ]; then
    sw=()
    [ "$SMOKE" = 1 ] && sw=(--smoke)
    run_phase switch 60 "$PY" bench/bench_switch.py --families sd1 --repeats "$REPEATS" "${sw[@]}"
fi
if [ "$MODES" != eager ]; then
    run_phase sd1_compiled_b1 90 "${T2I[@]}" --families sd1 --batches 1 --modes compiled --json "$OUT/sd1_c1.json"
    [ "${SKIP_SDXL:-0}" = 1 ] ||
        run_phase sdxl_compiled 150 "${T2I[@]}" --families sdxl --batches 1 --modes compiled --json "$OUT/sdxl_c.json"
    run_phase sd1_compiled_b4 90 "${T2I[@]}" --families sd1 --batches 4 --modes compiled --json "$OUT/sd1_c4.json"
fi
say ""
say "total $(($(date +%s) - started)) s; logs and JSON in $OUT"
