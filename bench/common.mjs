// Shared by the benches: seeded inputs and the PyTorch side of a comparison.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** Debian's python3-torch lives here, not in the pyenv python3 on PATH. */
export const PYTHON = process.env.RLK_BENCH_PYTHON || '/usr/bin/python3';

/** Mulberry32, as in tests/helpers.ts. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function normal(r) {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/**
 * Runs bench/<script> with PYTHON and parses the last line of its stdout as JSON;
 * `{}` (and a note on stderr) when PyTorch is not there, so the table shows n/a.
 */
export function runTorch(script, args) {
  if (!existsSync(PYTHON)) {
    console.error(`PyTorch comparison unavailable: ${PYTHON} not found`);
    return {};
  }
  const r = spawnSync(PYTHON, [join(BENCH_DIR, script), ...args], { encoding: 'utf8' });
  if (r.status === 0) return JSON.parse(r.stdout.trim().split('\n').pop());
  console.error(`PyTorch comparison unavailable: ${(r.stderr || '').trim().split('\n').pop()}`);
  return {};
}
