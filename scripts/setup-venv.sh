#!/usr/bin/env bash
# Makes .venv (git-ignored) hold PyTorch 2.13 CPU, the libtorch bridge's build
# target and the benchmarks' baseline. pip installs it offline from the
# machine's local package index. Prints the venv's python on the last line.
# RLK_PYTHON names another interpreter that already has torch >= 2.4 (then
# nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
has_torch() { "$1" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 4) else 1)' 2>/dev/null; }
if [ -n "${RLK_PYTHON:-}" ]; then
  has_torch "$RLK_PYTHON" || { echo "setup-venv: RLK_PYTHON=$RLK_PYTHON has no torch >= 2.4" >&2; exit 1; }
  echo "$RLK_PYTHON"; exit 0
fi
PY=.venv/bin/python
if ! has_torch "$PY"; then
  command -v python3 >/dev/null || { echo "setup-venv: python3 is needed (apt-get install python3 python3-venv)" >&2; exit 1; }
  python3 -m venv .venv
  # --retries 0: where only the local index answers, do not wait on others.
  "$PY" -m pip install -q --retries 0 --timeout 10 torch==2.13.0 numpy >&2
  has_torch "$PY" || { echo "setup-venv: torch did not install into .venv" >&2; exit 1; }
fi
echo "$(pwd)/$PY"
