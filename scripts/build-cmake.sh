#!/bin/sh
# The full cmake-js build into build/Release. prebuildify calls this as its
# node-gyp (ignoring prebuildify's arguments) and then copies the binary to
# prebuilds/<platform>-<arch>/. RLK_CPU_ONLY=1 forces a build without CUDA.
set -e
cd "$(dirname "$0")/.."
if [ "${RLK_CPU_ONLY:-0}" = "1" ]; then
  exec npx --no-install cmake-js build --out build --CDRLK_CPU_ONLY=ON
fi
exec npx --no-install cmake-js build --out build --CDRLK_CPU_ONLY=OFF
