#!/usr/bin/env bash
# Issue 15's GPU checks in one run, for a session whose task has a GPU
# machine: the tests with backend 'cupy', cupy beside PyTorch CUDA on the
# MNIST CNN (benchmarks/gpu_check.py), and one epoch of
# `fastcnn train --backend cupy`. Sized for about 10 minutes of one run.
#
# Before the run, here (the machine has no network and gets only the checkout):
#   mkdir -p .mnist && cp ../shared/data/mnist/*.gz .mnist/ && echo /.mnist/ >> .git/info/exclude
# then run: command "bash benchmarks/gpu_check.sh", carry [".mnist"], timeout_s 600.
# Results come back from $OUT (7 files; the machine returns 8 at most):
#   summary.txt   one line per step with its exit status and time, then the benchmark table
#   setup.log     nvidia-smi, versions, the install, fastcnn info
#   tests.log     tests/test_cupy_backend.py (mirror, C and GPU engines), then the whole suite
#   run.log       the benchmark's and the training run's output
#   gpu_bench.json, gpu_bench.md   the benchmark (written by gpu_check.py)
#   train_cupy.json                the 1-epoch run's metrics
# The steps run most important first, each capped by what is left of 540 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DATA="${FASTCNN_DATA:-$PWD/.mnist}"
started=$(date +%s)

deadline=$(( started + 540 ))

step() {   # step NAME SECONDS LOG COMMAND...: run with a limit, log, record the status
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$(date +%s)
    local left=$(( deadline - t0 ))
    if [ "$left" -lt 15 ]; then
        echo "$name: skipped, out of time" | tee -a "$OUT/summary.txt"
        return 124
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name" >>"$OUT/$log"
    timeout "$limit" "$@" >>"$OUT/$log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s; log $log)" \
        | tee -a "$OUT/summary.txt"
    return $rc
}

{
    nvidia-smi
    "$PY" -c "import sys, numpy, cupy, torch; print(sys.version); print('numpy', numpy.__version__, '| cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s), runtime', cupy.cuda.runtime.runtimeGetVersion(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >>"$OUT/setup.log" 2>&1

# The Cython kernels build here (no network: the image's setuptools, Cython
# and numpy); if that fails the checks run from the source tree, cython absent.
if ! step install 240 setup.log "$PY" -m pip install -q --no-deps --no-build-isolation -e .; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "install failed: running from the source tree (PYTHONPATH)" | tee -a "$OUT/summary.txt"
fi
step info 60 setup.log "$PY" -m fastcnn info

step tests_cupy 150 tests.log "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cupy_backend.py
step bench 150 run.log "$PY" -m benchmarks.gpu_check --out "$OUT"
if [ -d "$DATA" ]; then
    step train_1_epoch 180 run.log "$PY" -m fastcnn train --backend cupy --epochs 1 \
        --data-dir "$DATA" --no-progress --metrics "$OUT/train_cupy.json"
else
    echo "train_1_epoch: skipped, no MNIST at $DATA (see this script's header)" \
        | tee -a "$OUT/summary.txt"
fi
step tests_all 240 tests.log "$PY" -m pytest -q -rfEs -p no:cacheprovider --maxfail=30
echo "total: $(( $(date +%s) - started )) s" | tee -a "$OUT/summary.txt"
cat "$OUT/gpu_bench.md" >>"$OUT/summary.txt" 2>/dev/null
exit 0
