#!/bin/sh
# The full cmake-js build into build/Release. prebuildify calls this as its
# node-gyp (ignoring prebuildify's arguments) and then copies the binary to
# prebuilds/<platform>-<arch>/. RLK_CPU_ONLY=1 forces a build without CUDA.
set -e
cd "$(dirname "$0")/.."
want=OFF
if [ "${RLK_CPU_ONLY:-0}" = "1" ]; then want=ON; fi
# `cmake-js build` configures only a fresh folder: a build/ configured the
# other way (a CPU-only build before) would silently keep its setting.
if [ -f build/CMakeCache.txt ] && ! grep -q "^RLK_CPU_ONLY:[A-Z]*=$want\$" build/CMakeCache.txt; then
  npx --no-install cmake-js configure --out build --CDRLK_CPU_ONLY=$want
fi
exec npx --no-install cmake-js build --out build --CDRLK_CPU_ONLY=$want
