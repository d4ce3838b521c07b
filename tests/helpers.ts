// Shared test utilities: seeded random inputs (seed in every failure
// message), relative error against float64 references, poisoning, and the
// visible CUDA skip.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe } from 'vitest';
import * as rlk from '../src/index.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Runs the tests of `file` whose names match `filter` in a child vitest on the CPU ISA path `isa`
 * (the addon reads RLK_SIMD once, when it loads, so another path needs another process), with `env`
 * added. Throws with the child's first failure (or the end of its output) unless it exits 0, and
 * returns its output without colour codes for the caller's own checks.
 */
export function runOnIsaPath(file: string, filter: string, isa: 'avx2' | 'baseline', env: Record<string, string> = {}, timeout = 300_000): string {
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'vitest', 'vitest.mjs'), 'run', file, '-t', filter], {
    env: { ...process.env, RLK_SIMD: isa, ...env },
    encoding: 'utf8',
    cwd: ROOT,
    timeout,
  });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.replace(/\x1b\[[0-9;]*m/g, '');
  if (r.status !== 0) {
    // The first failure with its message: the output's end is the summary of skipped tests.
    const at = out.search(/ FAIL |Error:/);
    throw new Error(`RLK_SIMD=${isa} run of ${file} failed (exit ${r.status}):\n${at >= 0 ? out.slice(at, at + 4000) : out.slice(-4000)}`);
  }
  return out;
}

/** A `keep(t)` that holds tensors a test file makes once (shared inputs) and disposes them after all its tests. */
export function tensorKeeper(): <T extends rlk.Tensor>(t: T) => T {
  const live: rlk.Tensor[] = [];
  afterAll(() => {
    for (const t of live) t.dispose();
  });
  return (t) => {
    live.push(t);
    return t;
  };
}

/** Mulberry32: small, fast, seedable. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A fresh seed per run (override with RLK_SEED to replay a failure). */
export function freshSeed(): number {
  return process.env.RLK_SEED ? Number(process.env.RLK_SEED) : (Math.random() * 2 ** 31) >>> 0;
}

export function normal(r: () => number): number {
  const u = 1 - r();
  const v = r();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Fills an array with N(0, scale^2) values. */
export function randn(r: () => number, n: number, scale = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = normal(r) * scale;
  return out;
}

/** Tolerances of DESIGN section 4 (relative error over the array, against float64 on the same values). */
export const TOLERANCE = {
  float32: 1e-6,
  bfloat16: 1e-5,
  float16: 1e-5,
  divergence: 5e-6,
} as const;

/**
 * ||out - ref|| / ||ref|| over the finite reference entries; entries where the reference is
 * not finite must match exactly (same infinity, or both NaN). Returns the error and the worst index.
 */
export function relError(out: ArrayLike<number>, ref: ArrayLike<number>): { err: number; worst: number; nonFiniteMismatch: number } {
  if (out.length !== ref.length) throw new Error(`length mismatch: ${out.length} vs ${ref.length}`);
  let num = 0;
  let den = 0;
  let worst = -1;
  let worstDiff = -1;
  let nonFiniteMismatch = -1;
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i];
    const o = out[i];
    if (!Number.isFinite(r)) {
      if (!(Object.is(o, r) || (Number.isNaN(o) && Number.isNaN(r)))) nonFiniteMismatch = nonFiniteMismatch < 0 ? i : nonFiniteMismatch;
      continue;
    }
    const d = o - r;
    if (!Number.isFinite(o)) nonFiniteMismatch = nonFiniteMismatch < 0 ? i : nonFiniteMismatch;
    num += d * d;
    den += r * r;
    if (Math.abs(d) > worstDiff) {
      worstDiff = Math.abs(d);
      worst = i;
    }
  }
  const err = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  return { err, worst, nonFiniteMismatch };
}

/** Throws (with seed, worst index and both values) unless out matches ref within tol. */
export function expectClose(what: string, out: ArrayLike<number>, ref: ArrayLike<number>, tol: number, seed: number): void {
  const { err, worst, nonFiniteMismatch } = relError(out, ref);
  if (nonFiniteMismatch >= 0) {
    throw new Error(`${what}: non-finite mismatch at ${nonFiniteMismatch}: got ${out[nonFiniteMismatch]}, want ${ref[nonFiniteMismatch]} (seed ${seed})`);
  }
  if (!(err <= tol)) {
    throw new Error(`${what}: relative error ${err.toExponential(3)} > ${tol} (seed ${seed}); worst at ${worst}: got ${out[worst]}, want ${ref[worst]}`);
  }
}

export const HAS_CUDA = rlk.cuda.isAvailable();

/** True when the `cuda` device is the CPU emulation (native/sim, RLK_CUDA_SIM=1). */
export const CUDA_EMULATED = HAS_CUDA && rlk.buildInfo().cuda.emulated;

/**
 * Shapes for the CUDA tests: `full` on a GPU, `emulated` on the emulated device, where every
 * CUDA thread is a fiber on the CPU (still reaching every path: see README, "CUDA without a GPU").
 */
export function cudaShape<T>(full: T, emulated: T, device: rlk.Device = 'cuda'): T {
  return CUDA_EMULATED && device !== 'cpu' ? emulated : full;
}

/** describe() that runs only with a GPU and says so, visibly, without one. */
export const describeCuda: typeof describe = (HAS_CUDA ? describe : describe.skip) as typeof describe;
// Printed once per test file that imports this module.
if (!HAS_CUDA) {
  console.log(`[rlkernels] CUDA tests skipped: ${rlk.buildInfo().cuda.reason}`);
} else {
  console.log(`[rlkernels] CUDA tests run on ${rlk.buildInfo().cuda.devices.join(', ')}${CUDA_EMULATED ? ' (emulated device: RLK_CUDA_SIM=1)' : ''}`);
}

/** Devices to run device-generic tests on. */
export const DEVICES: rlk.Device[] = HAS_CUDA ? ['cpu', 'cuda'] : ['cpu'];
