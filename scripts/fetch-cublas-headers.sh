#!/bin/sh
# Puts cuBLAS's headers (only the headers: cublas_api.h and friends) in
# third_party/cublas/include, from the nvidia-cublas wheel of the machine's
# Python package index; the build then compiles the CUDA linear log-probs,
# which load libcublas at run time (never linked). Without them the build
# still succeeds, without that path (buildInfo says so).
set -e
cd "$(dirname "$0")/.."
DEST=third_party/cublas/include
if [ -f "$DEST/cublas_api.h" ]; then echo "cuBLAS headers already in $DEST"; exit 0; fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download --no-deps --quiet --retries 0 nvidia-cublas -d "$TMP"
WHL=$(ls "$TMP"/nvidia_cublas-*.whl | head -n 1)
mkdir -p "$DEST"
python3 - "$WHL" "$DEST" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if '/include/' in n and n.endswith('.h'):
            with open(os.path.join(dest, os.path.basename(n)), 'wb') as f:
                f.write(z.read(n))
PY
echo "cuBLAS headers from $(basename "$WHL") in $DEST"
