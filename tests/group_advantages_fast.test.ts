// The vectorised CPU path of groupAdvantages (consecutive groups of at most 256 rows, one reward
// column; methods grpo with every scale, drgrpo, rloo, opo, remax, gpg, reinforce++): blocks of 2 x 8 (AVX-512),
// 2 x 4 (AVX2) or 2 x 2 (baseline) groups at once, tails of blocks, chunks of 512 groups for the
// batch-wide sums. Checked against the float64 reference of tests/reference/group_advantages.ts on
// shapes that hit each edge (one group, odd B, G not a multiple of any lane count, group sizes 1,
// 256 (the largest the path takes) and 257 (the generic path), several chunks), bitwise equal across
// thread counts, and once more in child processes on the AVX2 and baseline paths.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, test } from 'vitest';
import * as rlk from '../src/index.js';
import { expectClose, freshSeed, normal, rng, TOLERANCE } from './helpers.js';
import { refGroupAdvantages, type RefMethod } from './reference/group_advantages.js';

const live: rlk.Tensor[] = [];
function keep<T extends rlk.Tensor>(t: T): T {
  live.push(t);
  return t;
}
afterAll(() => {
  for (const t of live) t.dispose();
});

type Variant = { method: RefMethod; scale?: 'group' | 'batch' | 'none'; tokens?: 'counts' | 'mask' };
const VARIANTS: Variant[] = [
  { method: 'grpo' },
  { method: 'grpo', scale: 'batch' },
  { method: 'grpo', scale: 'none' },
  { method: 'drgrpo' },
  { method: 'rloo' },
  { method: 'opo', tokens: 'counts' },
  { method: 'opo', tokens: 'mask' },
  { method: 'remax' },
  { method: 'gpg' },
  { method: 'reinforce++', tokens: 'counts' },
  { method: 'reinforce++', tokens: 'mask' },
];
const label = (v: Variant): string => `${v.method}${v.scale ? ` scale ${v.scale}` : ''}${v.tokens ? ` (${v.tokens})` : ''}`;

// [B, groupSize]: one group; G below one block; G = 37 (no lane count divides it); group size 1 with
// G = 1000; odd group sizes; 256 and 257 (either side of the path's limit); 1500 groups (three chunks).
const SHAPES: Array<[number, number]> = [
  [1, 1], [7, 7], [35, 5], [3 * 37, 3], [1000, 1], [17 * 9, 17], [256 * 5, 256], [257 * 3, 257], [2 * 1500, 2], [16 * 1100, 16],
];

interface Case {
  rewards: Float32Array;
  baseline: Float32Array;
  counts: Int32Array;
  mask: Uint8Array;
  T: number;
}

function makeCase(r: () => number, B: number, kind: number): Case {
  const value = (): number =>
    kind === 0 ? (r() < 0.4 ? 1 : 0) : kind === 1 ? 50 + 0.1 * normal(r) : r() < 0.3 ? 1 : r() < 0.5 ? 0 : 2 * normal(r);
  const T = 1 + Math.floor(r() * 6);
  const mask = Uint8Array.from({ length: B * T }, () => (r() < 0.7 ? 1 : 0));
  const counts = Int32Array.from({ length: B }, (_, i) => mask.subarray(i * T, (i + 1) * T).reduce((a, b) => a + b, 0));
  return { rewards: Float32Array.from({ length: B }, value), baseline: Float32Array.from({ length: B }, value), counts, mask, T };
}

function run(c: Case, v: Variant, gs: number): rlk.GroupAdvantagesResult {
  const o: rlk.GroupAdvantagesOptions = { method: v.method, groupSize: gs };
  if (v.scale) o.scale = v.scale;
  if (v.tokens === 'counts') o.tokenCounts = keep(rlk.tensor(c.counts));
  if (v.tokens === 'mask') o.mask = keep(rlk.tensor(c.mask, { shape: [c.rewards.length, c.T] }));
  if (v.method === 'remax') o.baselineRewards = keep(rlk.tensor(c.baseline));
  const out = rlk.groupAdvantages(keep(rlk.tensor(c.rewards)), o);
  keep(out.advantages);
  keep(out.informative);
  return out;
}

describe('groupAdvantages (cpu), consecutive groups: the vectorised path', () => {
  test.each(VARIANTS.map((v) => [label(v), v] as const))('%s against the float64 reference', (_, v) => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, gs] of SHAPES) {
      for (const kind of [0, 1, 2]) {
        const c = makeCase(r, B, kind);
        const groupOf = Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs));
        const ref = refGroupAdvantages(Float64Array.from(c.rewards), {
          method: v.method,
          groupOf,
          scale: v.scale,
          tokenCounts: v.tokens ? c.counts : undefined,
          baseline: c.baseline,
        });
        const out = run(c, v, gs);
        const what = `${label(v)} B=${B} gs=${gs} kind ${kind}`;
        expect(out.advantages.shape).toEqual([B]);
        expect(out.informative.shape).toEqual([B / gs]);
        expectClose(what, out.advantages.toArraySync(), ref.advantages, TOLERANCE.float32, seed);
        expect(Array.from(out.informative.toArraySync()), `${what} informative (seed ${seed})`).toEqual(Array.from(ref.informative));
      }
    }
  });

  test('bitwise equal across runs and thread counts (several chunks of the batch-wide sums)', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const threads = rlk.getNumThreads();
    try {
      for (const v of VARIANTS) {
        for (const [B, gs] of [[16 * 2100, 16], [3 * 1337, 3]]) {
          const c = makeCase(r, B, 2);
          const a = run(c, v, gs).advantages.toArraySync();
          const b = run(c, v, gs).advantages.toArraySync();
          rlk.setNumThreads(threads === 1 ? 2 : 1);
          const d = run(c, v, gs).advantages.toArraySync();
          rlk.setNumThreads(3);
          const e = run(c, v, gs).advantages.toArraySync();
          rlk.setNumThreads(threads);
          const same = (x: Float32Array): boolean => Buffer.from(x.buffer).equals(Buffer.from(a.buffer));
          expect(same(b), `${label(v)} B=${B} run to run (seed ${seed})`).toBe(true);
          expect(same(d) && same(e), `${label(v)} B=${B} thread count (seed ${seed})`).toBe(true);
        }
      }
    } finally {
      rlk.setNumThreads(threads);
    }
  });

  test('a negative token count is still a RangeError (opo), and nothing is left half written', () => {
    const c = makeCase(rng(1), 64, 2);
    c.counts[37] = -1;
    expect(() => run(c, { method: 'opo', tokens: 'counts' }, 16)).toThrow(RangeError);
    expect(() => run(c, { method: 'opo', tokens: 'counts' }, 16)).toThrow(/tokenCounts/);
  });
});

// The ISA is chosen at load time: run this file again in child processes on the narrower paths.
describe('groupAdvantages (cpu), consecutive groups: other ISA paths', () => {
  for (const isa of ['avx2', 'baseline']) {
    it.skipIf(process.env.RLK_SIMD !== undefined)(`passes with RLK_SIMD=${isa}`, () => {
      const root = join(dirname(fileURLToPath(import.meta.url)), '..');
      const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
      const r = spawnSync(process.execPath, [vitest, 'run', 'tests/group_advantages_fast.test.ts', '-t', 'the vectorised path'], {
        env: { ...process.env, RLK_SIMD: isa },
        encoding: 'utf8',
        cwd: root,
      });
      const out = (r.stdout + r.stderr).replace(/\x1b\[[0-9;]*m/g, '');
      if (r.status !== 0) throw new Error(`RLK_SIMD=${isa} run failed:\n${out.slice(-4000)}`);
      expect(out).toMatch(/\b[1-9]\d* passed/);
    });
  }
});
