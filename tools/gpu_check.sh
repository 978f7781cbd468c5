#!/usr/bin/env bash
# The GPU check: one prepared script for a GPU machine that has torch but no TorchRec / FBGEMM.
#
#   OUT=/some/dir tools/gpu_check.sh           # from the repository root; the machine's python3
#
# No venv, no installs, nothing but this working tree (PYTHONPATH=.); every model runs with the
# torch embedding backend. Three phases, each under its own time limit (the whole script stays
# under 8 minutes), each writing its results as it goes; at most 7 files under $OUT:
#
#   (a) pytest on the device:  CTR_TEST_DEVICE=$DEVICE pytest -m device tests  (the step,
#       optimizer, model and backend tests that run on any device; what needs TorchRec skips)
#       -> pytest.txt, pytest-junit.xml
#   (b) throughput:  tools/gpu_bench.py throughput: DeepFM at batch 1K..128K on synthetic data
#       with >= 6M table rows: samples/s, peak memory, forward / backward / optimizer ms
#       -> bench.json
#   (c) CowClip vs none:  tools/gpu_bench.py cowclip: test AUC at batch 1K and 128K on the
#       built-in synthetic generator -> cowclip.json
#   and env.txt (python, torch, GPU), summary.md (everything in one page), gpu_check.log.
#
# Sizes and limits come from the environment (GPU defaults); a dry run on a CPU:
#   OUT=/tmp/gc CTR_GPU_CHECK_DEVICE=cpu CTR_GPU_CHECK_BATCHES=1k,2k CTR_GPU_CHECK_TABLE_ROWS=200k \
#     CTR_GPU_CHECK_BENCH_ROWS=10k CTR_GPU_CHECK_SYNTH_ROWS=10k CTR_GPU_CHECK_COWCLIP_BATCHES=1k \
#     CTR_GPU_CHECK_TESTS=tests/test_optimizer.py tools/gpu_check.sh     (tests/test_gpu_check.py)
# Exit code: 0 when every phase passed, 1 otherwise.
set -u

cd "$(dirname "$0")/.." || exit 1
: "${OUT:?set OUT to the directory the results go to}"
PY=${CTR_GPU_CHECK_PYTHON:-python3}
DEVICE=${CTR_GPU_CHECK_DEVICE:-cuda}
TESTS=${CTR_GPU_CHECK_TESTS:-tests}
BATCHES=${CTR_GPU_CHECK_BATCHES:-1k,8k,64k,128k}
TABLE_ROWS=${CTR_GPU_CHECK_TABLE_ROWS:-6.5m}
BENCH_ROWS=${CTR_GPU_CHECK_BENCH_ROWS:-1.5m}
STEPS=${CTR_GPU_CHECK_STEPS:-10}
WARMUP=${CTR_GPU_CHECK_WARMUP:-3}
SYNTH_ROWS=${CTR_GPU_CHECK_SYNTH_ROWS:-1m}
COWCLIP_BATCHES=${CTR_GPU_CHECK_COWCLIP_BATCHES:-1k,128k}
EPOCHS=${CTR_GPU_CHECK_EPOCHS:-1}
T_PYTEST=${CTR_GPU_CHECK_PYTEST_SECONDS:-140}
T_BENCH=${CTR_GPU_CHECK_BENCH_SECONDS:-170}
T_COWCLIP=${CTR_GPU_CHECK_COWCLIP_SECONDS:-130}

mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ctr-gpu-check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 CTR_TEST_DEVICE="$DEVICE"
# every phase under ctr's allocator set-up (ctr/allocator.py: tcmalloc, else glibc tunables)
while IFS= read -r kv; do [ -n "$kv" ] && export "$kv"; done < <("$PY" -m ctr.allocator env)
LOG="$OUT/gpu_check.log"
: > "$LOG"
: > "$WORK/phases"
FAILED=0

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# phase NAME SECONDS CMD...: runs CMD under a time limit, its output appended to the log
phase() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    log "== $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && log "$name: TIMED OUT after ${limit}s"
    log "== $name: exit $rc after $((SECONDS - start))s"
    echo "$name $rc $((SECONDS - start))" >> "$WORK/phases"
    [ "$rc" -eq 0 ] || FAILED=1
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "device: $DEVICE"
    echo "sizes: batches=$BATCHES table_rows=$TABLE_ROWS bench_rows=$BENCH_ROWS steps=$STEPS synth_rows=$SYNTH_ROWS cowclip_batches=$COWCLIP_BATCHES epochs=$EPOCHS"
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -m ctr.allocator show
    "$PY" - <<'PYEOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
for name in ("torchrec", "fbgemm_gpu", "numpy", "pandas", "pyarrow", "sklearn", "yaml", "tqdm", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(name, "not importable:", type(e).__name__)
PYEOF
} > "$OUT/env.txt" 2>&1
log "environment: $OUT/env.txt"

# (a) the device-independent tests, on the device
phase pytest "$T_PYTEST" "$PY" -m pytest -m device -q -rfEs -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$OUT/pytest-junit.xml" $TESTS
# the pytest part of the log, on its own
sed -n '/== pytest (limit/,/== pytest: exit/p' "$LOG" > "$OUT/pytest.txt"

# (b) throughput of the torch backend, DeepFM, >= 6M table rows
phase throughput "$T_BENCH" "$PY" tools/gpu_bench.py throughput --device "$DEVICE" \
    --batches "$BATCHES" --table-rows "$TABLE_ROWS" --rows "$BENCH_ROWS" --steps "$STEPS" \
    --warmup "$WARMUP" --work "$WORK" --json "$OUT/bench.json"

# (c) CowClip vs no scaling, small and large batch
phase cowclip "$T_COWCLIP" "$PY" tools/gpu_bench.py cowclip --device "$DEVICE" \
    --batches "$COWCLIP_BATCHES" --rows "$SYNTH_ROWS" --epochs "$EPOCHS" --work "$WORK" \
    --json "$OUT/cowclip.json"

"$PY" tools/gpu_bench.py summary --bench "$OUT/bench.json" --cowclip "$OUT/cowclip.json" \
    --junit "$OUT/pytest-junit.xml" --phases "$WORK/phases" --out "$OUT/summary.md" >> "$LOG" 2>&1 \
    || log "summary failed"
log "done: $(tr '\n' ';' < "$WORK/phases") -> $OUT (failed: $FAILED)"
exit "$FAILED"
