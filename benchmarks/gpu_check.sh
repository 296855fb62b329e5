#!/usr/bin/env bash
# On a GPU machine with torch, triton, nvcc, pytest and ninja already installed (no registry access):
# builds dgmfast._C in place for the visible GPU, runs the test suite (gpu-marked tests included)
# and the benchmark table, and writes logs and results to OUTDIR.
#   usage: bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
if ! python setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  echo "build failed:"; tail -40 "$OUT/build.log"; exit 1
fi
python -m dgmfast.info > "$OUT/info.txt" 2>&1 || status=1
python -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
tail -5 "$OUT/tests.log"
python -m benchmarks.run --device cuda --out "$OUT" "${@:2}" > "$OUT/bench.log" 2>&1 || status=1
tail -40 "$OUT/bench.log"
exit $status
