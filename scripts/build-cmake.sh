#!/bin/sh
# prebuildify calls this as its node-gyp: ignore its arguments and run the
# full cmake-js build into build/Release, which prebuildify then copies.
set -e
cd "$(dirname "$0")/.."
exec npx --no-install cmake-js rebuild --out build
