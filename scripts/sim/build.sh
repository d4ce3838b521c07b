#!/bin/sh
# The test build whose `cuda` device is the emulated one (native/sim): the
# addon in build-sim/Release, and the sanitizer drivers in build-sim/sim.
# Skipped, saying why, where the CUDA headers or Boost.Context are missing
# (the CUDA tests are then skipped too, visibly).
set -e
cd "$(dirname "$0")/../.."
cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
if [ ! -f "$cuda_inc/cuda_runtime_api.h" ] && [ ! -f /usr/include/cuda_runtime_api.h ]; then
  echo "rlkernels: emulated CUDA build skipped: no CUDA headers ($cuda_inc/cuda_runtime_api.h); the CUDA tests will be skipped" >&2
  exit 0
fi
if [ ! -f /usr/include/boost/context/detail/fcontext.hpp ]; then
  echo "rlkernels: emulated CUDA build skipped: Boost.Context missing (apt-get install libboost-context-dev); the CUDA tests will be skipped" >&2
  exit 0
fi
exec npx --no-install cmake-js build --out build-sim --CDRLK_CUDA_SIM=ON --CDRLK_CPU_ONLY=OFF
