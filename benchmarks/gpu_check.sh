#!/usr/bin/env bash
# On a GPU machine with torch, triton, nvcc, pytest and ninja already installed (no registry access):
# builds dgmfast._C in place for the visible GPU, runs the test suite (gpu-marked tests included)
# and the CUDA benchmark table, and writes logs and results to OUTDIR.
#   usage: bash benchmarks/gpu_check.sh OUTDIR [STAGE ...] [-- BENCH_ARGS ...]
# STAGE: build, test, bench (default: all three). The build is incremental, so a later call on the same
# machine that names `build bench` only rebuilds what changed. Each stage stops itself after
# GPU_CHECK_SECONDS (default 540) so its log still comes back from a machine that allows 10-minute
# commands: run `build test` in one call and `build bench` in the next when time is short.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [build] [test] [bench] [-- BENCH_ARGS ...]}
shift
stages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do stages+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the remaining arguments go to benchmarks.run
[ ${#stages[@]} -eq 0 ] && stages=(build test bench)
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
limit=${GPU_CHECK_SECONDS:-540}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
for stage in "${stages[@]}"; do
  case $stage in
    build)
      if ! timeout "$limit" python setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
        echo "build failed:"; tail -40 "$OUT/build.log"; exit 1
      fi
      python -m dgmfast.info > "$OUT/info.txt" 2>&1 || status=1 ;;
    test)
      timeout "$limit" python -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
      tail -5 "$OUT/tests.log" ;;
    bench)
      timeout "$limit" python -m benchmarks.run --device cuda --out "$OUT" "$@" > "$OUT/bench.log" 2>&1 || status=1
      tail -40 "$OUT/bench.log" ;;
    *) echo "unknown stage '$stage' (expected build, test or bench)"; exit 2 ;;
  esac
done
exit $status
