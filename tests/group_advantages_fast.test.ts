// The vectorised CPU path of groupAdvantages (consecutive groups of at most 256 rows, one reward
// column; methods grpo with every scale, drgrpo, rloo, opo, remax, gpg, reinforce++, grpo-passk
// (groups of 2 or more), tmn-reweight with and without taskIds and reweight): blocks of 2 x 8 (AVX-512),
// 2 x 4 (AVX2) or 2 x 2 (baseline) groups at once, tails of blocks, chunks of 512 groups for the
// batch-wide sums. Checked against the float64 reference of tests/reference/group_advantages.ts on
// shapes that hit each edge (one group, odd B, G not a multiple of any lane count, group sizes 1,
// 256 (the largest the path takes) and 257 (the generic path), several chunks), bitwise equal across
// thread counts, and once more in child processes on the AVX2 and baseline paths.
import { describe, expect, it, test } from 'vitest';
import * as rlk from '../src/index.js';
import { expectClose, freshSeed, normal, rng, runOnIsaPath, tensorKeeper, TOLERANCE } from './helpers.js';
import { refGroupAdvantages, type RefMethod } from './reference/group_advantages.js';

const keep = tensorKeeper();

type Variant = {
  method: RefMethod;
  scale?: 'group' | 'batch' | 'none';
  tokens?: 'counts' | 'mask';
  /** tmn-reweight: taskIds of this dtype (a task per group, a few tasks), else one task. */
  tasks?: 'int32' | 'int64';
  reweight?: boolean;
  alpha?: number;
  gamma?: number;
};
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
  { method: 'grpo-passk' },
  { method: 'grpo-passk', scale: 'none' },
  { method: 'tmn-reweight' },
  { method: 'tmn-reweight', tasks: 'int32' },
  { method: 'tmn-reweight', tasks: 'int64', reweight: false },
  { method: 'tmn-reweight', tasks: 'int32', alpha: 0.3, gamma: 2.5 },
];
const label = (v: Variant): string =>
  `${v.method}${v.scale ? ` scale ${v.scale}` : ''}${v.tokens ? ` (${v.tokens})` : ''}${v.tasks ? ` ${v.tasks} tasks` : ''}` +
  `${v.reweight === false ? ' no reweight' : ''}${v.alpha !== undefined ? ` alpha ${v.alpha} gamma ${v.gamma}` : ''}`;

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
  /** A task of each group (0..3). */
  groupTask: Int32Array;
}

// Rewards of kind 0: 0/1; 1: 50 + 0.1 N(0, 1); 2: mixed; 3: 3 + 1e-6 N(0, 1), a few float ulps about 3,
// so that the centring cancels all but the last bits (the rows' float centre hi + lo must keep its lo:
// without it these rows are ~10 % off).
function makeCase(r: () => number, B: number, kind: number): Case {
  const value = (): number =>
    kind === 0
      ? r() < 0.4 ? 1 : 0
      : kind === 1
        ? 50 + 0.1 * normal(r)
        : kind === 3
          ? 3 + 1e-6 * normal(r)
          : r() < 0.3 ? 1 : r() < 0.5 ? 0 : 2 * normal(r);
  const T = 1 + Math.floor(r() * 6);
  const mask = Uint8Array.from({ length: B * T }, () => (r() < 0.7 ? 1 : 0));
  const counts = Int32Array.from({ length: B }, (_, i) => mask.subarray(i * T, (i + 1) * T).reduce((a, b) => a + b, 0));
  const groupTask = Int32Array.from({ length: B }, () => Math.floor(r() * 4));
  return { rewards: Float32Array.from({ length: B }, value), baseline: Float32Array.from({ length: B }, value), counts, mask, T, groupTask };
}

// Task ids of the rows: each group's task, as -7, 12, 1000, 3 (not 0..T-1: the ids are labels).
const TASK_LABELS = [-7, 12, 1000, 3];
const taskOf = (c: Case, gs: number): Int32Array => Int32Array.from(c.rewards, (_, i) => TASK_LABELS[c.groupTask[Math.floor(i / gs)]]);

function run(c: Case, v: Variant, gs: number): rlk.GroupAdvantagesResult {
  const o: rlk.GroupAdvantagesOptions = { method: v.method, groupSize: gs };
  if (v.scale) o.scale = v.scale;
  if (v.tokens === 'counts') o.tokenCounts = keep(rlk.tensor(c.counts));
  if (v.tokens === 'mask') o.mask = keep(rlk.tensor(c.mask, { shape: [c.rewards.length, c.T] }));
  if (v.method === 'remax') o.baselineRewards = keep(rlk.tensor(c.baseline));
  if (v.tasks) o.taskIds = keep(rlk.tensor(taskOf(c, gs), { dtype: v.tasks }));
  if (v.reweight !== undefined) o.reweight = v.reweight;
  if (v.alpha !== undefined) o.alpha = v.alpha;
  if (v.gamma !== undefined) o.gamma = v.gamma;
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
      for (const kind of [0, 1, 2, 3]) {
        const c = makeCase(r, B, kind);
        if (v.method === 'grpo-passk' && gs < 2) {
          expect(() => run(c, v, gs), `${label(v)} gs=${gs}`).toThrow(/groups of at least 2 rows/);
          continue;
        }
        const groupOf = Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs));
        const ref = refGroupAdvantages(Float64Array.from(c.rewards), {
          method: v.method,
          groupOf,
          scale: v.scale,
          tokenCounts: v.tokens ? c.counts : undefined,
          baseline: c.baseline,
          taskOf: v.tasks ? taskOf(c, gs) : undefined,
          reweight: v.reweight,
          alpha: v.alpha,
          gamma: v.gamma,
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

  test('rewards near the float range: grpo rows stay finite where r - mean overflows a float (the double rows)', () => {
    // |r| up to 3e38: r - mean can pass FLT_MAX while (r - mean) / std is ~1, so these groups must
    // not take the float rows; tiny rewards (1e-36) have a mean below 1e-30, kept in double too.
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, gs] of [[16 * 40, 16], [8 * 9, 8], [37 * 3, 3]]) {
      for (const size of [1e38, 1e-36]) {
        const rewards = Float32Array.from({ length: B }, () => size * (6 * r() - 3));
        const groupOf = Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs));
        for (const scale of ['group', 'batch'] as const) {
          const ref = refGroupAdvantages(Float64Array.from(rewards), { method: 'grpo', groupOf, scale, baseline: rewards });
          const out = rlk.groupAdvantages(keep(rlk.tensor(rewards)), { method: 'grpo', groupSize: gs, scale });
          const a = keep(out.advantages).toArraySync();
          keep(out.informative);
          expect(a.every(Number.isFinite), `grpo ${scale} B=${B} gs=${gs} size ${size} finite (seed ${seed})`).toBe(true);
          expectClose(`grpo ${scale} B=${B} gs=${gs} size ${size}`, a, ref.advantages, TOLERANCE.float32, seed);
        }
      }
    }
  });

  test("reinforce++: tokens only on each group's top rows (a weighted mean of r - mean_g far from 0, a small spread)", () => {
    // The chunks' M2 is sum w d^2 - (sum w d)^2 / n in one pass, d = x - k: here mean^2 / var ~ 200,
    // so a dropped or wrong correction term is far outside the tolerance; and with groups of one
    // (centred on 0: x = r = 300 + 1e-3 N(0, 1)) mean^2 / var ~ 1e11, where k = 0 would lose ~1e-4
    // of the variance. Several chunks of 512 groups, groups of 1, 8 and 16 (one and two AVX-512
    // registers), the AVX2 and baseline paths below.
    const seed = freshSeed();
    const r = rng(seed);
    for (const gs of [1, 8, 16]) {
      const B = gs * (512 * 2 + 37);
      const c = makeCase(r, B, 0);
      for (let i = 0; i < B; i++) {
        const j = i % gs;
        c.rewards[i] = gs === 1 ? 300 + 1e-3 * normal(r) : j + 0.3 * normal(r);
        c.counts[i] = gs === 1 || j >= gs - 2 ? 1 + Math.floor(r() * 300) : 0;
      }
      const ref = refGroupAdvantages(Float64Array.from(c.rewards), {
        method: 'reinforce++',
        groupOf: Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs)),
        tokenCounts: c.counts,
      });
      const out = run(c, { method: 'reinforce++', tokens: 'counts' }, gs);
      expectClose(`reinforce++ top rows gs=${gs}`, out.advantages.toArraySync(), ref.advantages, TOLERANCE.float32, seed);
    }
  });

  test('informative of groups of 8, 16 and 32: half the groups constant, the others with one row that differs', () => {
    // Each group's min and max come from its own rows in every lane of a block (groups of 16 on
    // AVX2: a register-halving reduction of 8 groups and a lane reorder), so a constant group next to
    // one that varies in a single row, at any row, must keep its own flag; G = 8 k + 5 leaves a
    // partial last block. The rows too, for methods that read the min, max, sum and M2 of a block.
    const seed = freshSeed();
    const r = rng(seed);
    for (const gs of [8, 16, 32]) {
      const G = 8 * 70 + 5, B = G * gs;
      const c = makeCase(r, B, 0);
      for (let g = 0; g < G; g++) {
        const base = Math.floor(r() * 5) - 2;
        const odd = r() < 0.5 ? Math.floor(r() * gs) : -1;
        for (let j = 0; j < gs; j++) c.rewards[g * gs + j] = j === odd ? base + (r() < 0.5 ? 0.5 : -0.5) : base;
      }
      for (const v of [{ method: 'grpo' }, { method: 'rloo' }, { method: 'opo', tokens: 'counts' }] as Variant[]) {
        const ref = refGroupAdvantages(Float64Array.from(c.rewards), {
          method: v.method,
          groupOf: Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs)),
          tokenCounts: v.tokens ? c.counts : undefined,
        });
        const out = run(c, v, gs);
        const what = `${label(v)} gs=${gs}`;
        expect(Array.from(out.informative.toArraySync()), `${what} informative (seed ${seed})`).toEqual(Array.from(ref.informative));
        expectClose(what, out.advantages.toArraySync(), ref.advantages, TOLERANCE.float32, seed);
      }
    }
  });

  test('tmn-reweight: a task id that changes within a group is still a RangeError (int32 and int64)', () => {
    const c = makeCase(rng(2), 64, 2);
    for (const dtype of ['int32', 'int64'] as const) {
      const ids = taskOf(c, 16);
      ids[37] = ids[36] + 1;
      const o = { method: 'tmn-reweight' as const, groupSize: 16, taskIds: keep(rlk.tensor(ids, { dtype })) };
      expect(() => rlk.groupAdvantages(keep(rlk.tensor(c.rewards)), o)).toThrow(RangeError);
      expect(() => rlk.groupAdvantages(keep(rlk.tensor(c.rewards)), o)).toThrow(/taskIds must be constant within a group/);
    }
  });

  test("the outputs' shape, numel and device are the addon's (taken from the call, not read back)", () => {
    const B = 24;
    const rewards = keep(rlk.tensor(Float32Array.from({ length: B }, (_, i) => i % 5)));
    const ids = keep(rlk.tensor(Int32Array.from({ length: B }, (_, i) => (i * 7) % 5)));
    const columns = keep(rlk.tensor(Float32Array.from({ length: B * 3 }, (_, i) => (i * 3) % 7), { shape: [B, 3] }));
    const forms: Array<[string, rlk.Tensor, rlk.GroupAdvantagesOptions]> = [
      ['groupSize', rewards, { method: 'grpo', groupSize: 4 }],
      ['groupIds', rewards, { method: 'grpo', groupIds: ids }],
      ['groupIds and numGroups', rewards, { method: 'rloo', groupIds: ids, numGroups: 9 }],
      ['gdpo [B, K]', columns, { method: 'gdpo', groupSize: 6 }],
      ['tmn-reweight', rewards, { method: 'tmn-reweight', groupSize: 8 }],
    ];
    for (const [what, x, o] of forms) {
      const out = rlk.groupAdvantages(x, o);
      for (const t of [keep(out.advantages), keep(out.informative)]) {
        const h = t.handle('test') as unknown as { shape: number[]; device: number };
        expect(t.shape, what).toEqual(h.shape);
        expect(t.numel, what).toBe(h.shape.reduce((a, b) => a * b, 1));
        expect(t.device, what).toBe(h.device < 0 ? 'cpu' : `cuda:${h.device}`);
        expect(Object.isFrozen(t.shape), what).toBe(true);
      }
    }
  });

  test('a negative token count is still a RangeError (opo), and nothing is left half written', () => {
    const c = makeCase(rng(1), 64, 2);
    c.counts[37] = -1;
    expect(() => run(c, { method: 'opo', tokens: 'counts' }, 16)).toThrow(RangeError);
    expect(() => run(c, { method: 'opo', tokens: 'counts' }, 16)).toThrow(/tokenCounts/);
    // The counts are checked in the chunks (512 groups) that read them, on whichever thread runs
    // a chunk: a negative count in the first, a middle or the last chunk of a batch of several.
    const big = makeCase(rng(2), 16 * 512 * 3 + 16, 2);
    for (const at of [0, 16 * 512 + 5, big.counts.length - 1]) {
      const saved = big.counts[at];
      big.counts[at] = -2;
      for (const method of ['opo', 'reinforce++'] as const) expect(() => run(big, { method, tokens: 'counts' }, 16), `${method} at ${at}`).toThrow(/tokenCounts must be >= 0/);
      big.counts[at] = saved;
    }
    expect(() => run(big, { method: 'opo', tokens: 'counts' }, 16)).not.toThrow();
  });
});

// The ISA is chosen at load time: run this file again in child processes on the narrower paths.
describe('groupAdvantages (cpu), consecutive groups: other ISA paths', () => {
  for (const isa of ['avx2', 'baseline'] as const) {
    it.skipIf(process.env.RLK_SIMD !== undefined)(`passes with RLK_SIMD=${isa}`, () => {
      const out = runOnIsaPath('tests/group_advantages_fast.test.ts', 'the vectorised path', isa);
      expect(out).toMatch(/\b[1-9]\d* passed/);
    });
  }
});
