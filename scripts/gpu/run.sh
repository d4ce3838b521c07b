#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repository root (carry
# [".device", "dist"] made by scripts/gpu/prepare.sh). Builds the addon with
# CUDA for the local GPU's architecture too, runs the whole test suite (the
# CUDA tests included) and the benchmarks against PyTorch, and leaves logs in
# $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" .device/bin
[ -x .device/bin/node ] || xz -dc .device/node.xz > .device/bin/node
chmod +x .device/bin/node
export PATH=$PWD/.device/bin:/usr/local/cuda/bin:$PATH
[ -d node_modules ] || tar -xJf .device/node_modules.tar.xz
{ nvidia-smi; node --version; nvcc --version | tail -1; } > "$OUT/machine.txt" 2>&1
node node_modules/cmake-js/bin/cmake-js build --out build --CDRLK_CPU_ONLY=OFF > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
node -e "import('./dist/index.js').then(r => console.log(JSON.stringify(r.buildInfo(), null, 1)))" | tee "$OUT/buildinfo.json"
RLK_SKIP_PACK_TEST=1 node node_modules/vitest/vitest.mjs run 2>&1 | tee "$OUT/test.log" | tail -40
if [ "${RLK_GPU_BENCH:-1}" = "1" ]; then
  node bench/run.mjs --gpu 2>&1 | tee "$OUT/bench.log" | tail -60
fi
