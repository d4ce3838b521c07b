// Group advantages against the float64 references of DESIGN 3.6: every
// method, consecutive and shuffled uneven groups, tasks, the edge cases,
// broadcast, the cross-rank protocol on 2 and 4 simulated ranks,
// determinism, and garbage input. Fresh random inputs; the seed is in every
// failure message (RLK_SEED replays one).
import { afterAll, describe, expect, test } from 'vitest';
import * as rlk from '../src/index.js';
import { cudaShape, describeCuda, expectClose, freshSeed, normal, rng, TOLERANCE } from './helpers.js';
import { refBroadcast, refGroupAdvantages, type RefMethod, type RefOptions } from './reference/group_advantages.js';

const TOL = TOLERANCE.float32;
const METHODS: RefMethod[] = ['grpo', 'drgrpo', 'rloo', 'reinforce++', 'tmn-reweight'];
const live: rlk.Tensor[] = [];
function keep<T extends rlk.Tensor>(t: T): T {
  live.push(t);
  return t;
}
afterAll(() => {
  for (const t of live) t.dispose();
});

type RewardKind = 'binary' | 'normal' | 'offset' | 'mixed';

/** Rewards as float32 (the values the kernel sees), widened to float64 for the reference. */
function makeRewards(r: () => number, B: number, kind: RewardKind): Float32Array {
  const out = new Float32Array(B);
  for (let i = 0; i < B; i++) {
    if (kind === 'binary') out[i] = r() < 0.4 ? 1 : 0;
    else if (kind === 'normal') out[i] = normal(r);
    else if (kind === 'offset') out[i] = 50 + 0.1 * normal(r);
    else out[i] = r() < 0.3 ? 1 : r() < 0.5 ? 0 : normal(r) * 2;
  }
  return out;
}

/** Uneven group sizes in [1, maxSize], ids shuffled over the rows; `gaps` leaves unused ids. */
function makeGroupIds(r: () => number, B: number, maxSize: number, gaps: boolean): { ids: Int32Array; numGroups: number } {
  const sizes: number[] = [];
  let left = B;
  while (left > 0) {
    const s = Math.min(left, 1 + Math.floor(r() * maxSize));
    sizes.push(s);
    left -= s;
  }
  const G = sizes.length;
  const labels = Array.from({ length: G }, (_, g) => (gaps ? 2 * g + 1 : g));
  const ids = new Int32Array(B);
  let k = 0;
  sizes.forEach((s, g) => {
    for (let j = 0; j < s; j++) ids[k++] = labels[g];
  });
  for (let i = B - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  return { ids, numGroups: gaps ? 2 * G + 1 : G };
}

/** Task per row, constant within each group: one of `tasks` chosen per group. */
function makeTasks(r: () => number, groupOf: ArrayLike<number>, numGroups: number, tasks: number): Int32Array {
  // Task ids must be < numGroups (never more tasks than groups).
  const t = Array.from({ length: numGroups }, () => Math.floor(r() * Math.min(tasks, numGroups)));
  return Int32Array.from(Array.from(groupOf, (g) => t[g]));
}

function makeMask(r: () => number, B: number, T: number, emptyRows: number): Uint8Array {
  const m = new Uint8Array(B * T);
  for (let i = 0; i < B; i++) {
    if (r() < emptyRows) continue;
    const len = 1 + Math.floor(r() * T);
    for (let t = 0; t < len && t < T; t++) m[i * T + t] = r() < 0.9 ? 1 : 0;
  }
  return m;
}

function rowCounts(mask: Uint8Array, B: number, T: number): Int32Array {
  const c = new Int32Array(B);
  for (let i = 0; i < B; i++) for (let t = 0; t < T; t++) c[i] += mask[i * T + t] ? 1 : 0;
  return c;
}

interface Case {
  rewards: Float32Array;
  groupOf: Int32Array;
  numGroups: number;
  consecutive?: number;
  taskOf?: Int32Array;
  mask?: Uint8Array;
  T?: number;
  counts?: Int32Array;
}

function refOf(c: Case, method: RefMethod, extra: Partial<RefOptions> = {}): ReturnType<typeof refGroupAdvantages> {
  return refGroupAdvantages(Float64Array.from(c.rewards), {
    method,
    groupOf: c.groupOf,
    numGroups: c.numGroups,
    taskOf: method === 'tmn-reweight' ? c.taskOf : undefined,
    mask: c.mask ? { data: c.mask, T: c.T! } : undefined,
    tokenCounts: c.counts,
    ...extra,
  });
}

function optionsOf(c: Case, method: RefMethod, device: rlk.Device, extra: Partial<rlk.GroupAdvantagesOptions> = {}, useCounts = false): rlk.GroupAdvantagesOptions {
  const o: rlk.GroupAdvantagesOptions = { method, ...extra };
  if (c.consecutive) o.groupSize = c.consecutive;
  else {
    o.groupIds = keep(rlk.tensor(c.groupOf, { device }));
    // The default (max id + 1, host only) where it gives the case's G.
    if (device !== 'cpu' || c.numGroups !== Math.max(-1, ...c.groupOf) + 1) o.numGroups = c.numGroups;
  }
  if (method === 'tmn-reweight' && c.taskOf) o.taskIds = keep(rlk.tensor(c.taskOf, { device }));
  if (method === 'reinforce++') {
    if (useCounts || !c.mask) o.tokenCounts = keep(rlk.tensor(c.counts ?? rowCounts(c.mask!, c.rewards.length, c.T!), { device }));
    else o.mask = keep(rlk.tensor(c.mask, { shape: [c.rewards.length, c.T!], device }));
  }
  return o;
}

function consecutiveCase(r: () => number, B: number, gs: number, kind: RewardKind): Case {
  const groupOf = Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs));
  const T = 1 + Math.floor(r() * 9);
  const mask = makeMask(r, B, T, 0.1);
  return { rewards: makeRewards(r, B, kind), groupOf, numGroups: B / gs, consecutive: gs, mask, T, taskOf: makeTasks(r, groupOf, B / gs, 3) };
}

function idsCase(r: () => number, B: number, maxSize: number, kind: RewardKind, gaps: boolean): Case {
  const { ids, numGroups } = makeGroupIds(r, B, maxSize, gaps);
  const T = 1 + Math.floor(r() * 9);
  const mask = makeMask(r, B, T, 0.1);
  return { rewards: makeRewards(r, B, kind), groupOf: ids, numGroups, mask, T, taskOf: makeTasks(r, ids, numGroups, 4) };
}

function check(what: string, c: Case, method: RefMethod, device: rlk.Device, seed: number, extra: Partial<rlk.GroupAdvantagesOptions> = {}, useCounts = false): rlk.GroupAdvantagesResult {
  const rewards = keep(rlk.tensor(c.rewards, { device }));
  const ref = refOf(c, method, extra as Partial<RefOptions>);
  const out = rlk.groupAdvantages(rewards, optionsOf(c, method, device, extra, useCounts));
  keep(out.advantages);
  keep(out.informative);
  expect(out.advantages.shape).toEqual([c.rewards.length]);
  expect(out.informative.shape).toEqual([c.numGroups]);
  expectClose(`${what} ${method} advantages`, out.advantages.toArraySync(), ref.advantages, TOL, seed);
  expect(Array.from(out.informative.toArraySync()), `${what} ${method} informative (seed ${seed})`).toEqual(Array.from(ref.informative));
  return out;
}

function runDevice(device: rlk.Device): void {
  test.each(METHODS)('%s, consecutive groups of several sizes', (method) => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, gs] of [[1, 1], [16, 16], [48, 16], [35, 5], [7, 1], [1000, 8], [4096, 16]]) {
      for (const kind of ['binary', 'normal', 'offset', 'mixed'] as RewardKind[]) {
        check(`B=${B} gs=${gs} ${kind}`, consecutiveCase(r, B, gs, kind), method, device, seed);
      }
    }
  });

  test.each(METHODS)('%s, shuffled uneven groupIds (int32/int64, with and without gaps)', (method) => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, maxSize] of [[1, 1], [5, 3], [64, 9], [333, 20], [2000, 40]]) {
      for (const gaps of [false, true]) {
        const c = idsCase(r, B, maxSize, 'mixed', gaps);
        check(`B=${B} ids gaps=${gaps}`, c, method, device, seed);
        // int64 ids and explicit numGroups give the same.
        const rewards = keep(rlk.tensor(c.rewards, { device }));
        const o = optionsOf(c, method, device);
        o.groupIds = keep(rlk.tensor(BigInt64Array.from(Array.from(c.groupOf, (x) => BigInt(x))), { device }));
        o.numGroups = c.numGroups;
        if (o.taskIds) o.taskIds = keep(rlk.tensor(BigInt64Array.from(Array.from(c.taskOf!, (x) => BigInt(x))), { device }));
        const out = rlk.groupAdvantages(rewards, o);
        expectClose(`B=${B} int64 ids ${method}`, keep(out.advantages).toArraySync(), refOf(c, method).advantages, TOL, seed);
        keep(out.informative);
      }
    }
  });

  test('tmn-reweight: tasks, a task with one group, groups of one, alpha/gamma/reweight', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (let rep = 0; rep < 6; rep++) {
      const c = idsCase(r, 300, 12, rep % 2 ? 'binary' : 'mixed', rep % 3 === 0);
      // One task with a single group, and a group of one in another task.
      const lone = c.groupOf[0];
      const loneTask = Math.min(7, c.numGroups - 1);
      for (let i = 0; i < c.rewards.length; i++) c.taskOf![i] = c.groupOf[i] === lone ? loneTask : c.taskOf![i] === loneTask ? 0 : c.taskOf![i];
      check(`rep ${rep} tasks`, c, 'tmn-reweight', device, seed);
      check(`rep ${rep} no tasks`, { ...c, taskOf: undefined }, 'tmn-reweight', device, seed);
      check(`rep ${rep} reweight false`, c, 'tmn-reweight', device, seed, { reweight: false });
      check(`rep ${rep} alpha/gamma`, c, 'tmn-reweight', device, seed, { alpha: r(), gamma: 3 * r(), eps: 1e-3 });
    }
    // p counts rewards strictly above m: here m = mean_g = mean_task = 0.5 and two rewards equal it, so p = 1/4
    // (not 3/4), w = exp(0.25): A(1) = w / (std + eps), A(0) = -1 / (w (std + eps)) with std = sqrt(1/6).
    const tie: Case = { rewards: Float32Array.from([0, 1, 0.5, 0.5]), groupOf: Int32Array.from([0, 0, 0, 0]), numGroups: 1, consecutive: 4 };
    const tied = check('tie at m', tie, 'tmn-reweight', device, seed).advantages.toArraySync();
    const sd = Math.sqrt(1 / 6) + 1e-6;
    expectClose('tie at m (closed form)', tied, [-1 / (Math.exp(0.25) * 2 * sd), Math.exp(0.25) / (2 * sd), 0, 0], TOL, seed);
    // reweight: false is the task-level normalisation alone (its own formula, not via the reference).
    const c = consecutiveCase(r, 64, 8, 'normal');
    const plain = check('plain', c, 'tmn-reweight', device, seed, { reweight: false });
    const gamma0 = check('gamma 0', c, 'tmn-reweight', device, seed, { gamma: 0 });
    expect(Array.from(gamma0.advantages.toArraySync())).toEqual(Array.from(plain.advantages.toArraySync()));
  });

  test('reinforce++: mask and tokenCounts agree; empty sequences give 0', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, gs] of [[8, 4], [96, 8], [1000, 10]]) {
      const c = consecutiveCase(r, B, gs, 'mixed');
      c.mask = makeMask(r, B, 13, 0.25);
      c.T = 13;
      const a = check(`B=${B} mask`, c, 'reinforce++', device, seed);
      const b = check(`B=${B} counts`, { ...c, counts: rowCounts(c.mask, B, 13) }, 'reinforce++', device, seed, {}, true);
      const av = a.advantages.toArraySync();
      expect(Array.from(b.advantages.toArraySync()), `seed ${seed}`).toEqual(Array.from(av));
      const counts = rowCounts(c.mask, B, 13);
      for (let i = 0; i < B; i++) if (counts[i] === 0) expect(av[i], `row ${i} has no token (seed ${seed})`).toBe(0);
    }
    // Fewer than two tokens in the whole batch: variance 0, the lone token's x equals the mean -> all 0.
    const c: Case = { rewards: Float32Array.from([1, 3, 5, 2]), groupOf: Int32Array.from([0, 0, 1, 1]), numGroups: 2, consecutive: 2, counts: Int32Array.from([0, 1, 0, 0]) };
    const out = check('one token', c, 'reinforce++', device, seed, {}, true);
    expect(Array.from(out.advantages.toArraySync())).toEqual([0, 0, 0, 0]);
    const none = check('no token', { ...c, counts: Int32Array.from([0, 0, 0, 0]) }, 'reinforce++', device, seed, {}, true);
    expect(Array.from(none.advantages.toArraySync())).toEqual([0, 0, 0, 0]);
  });

  test('edge cases: equal rewards, groups of one, eps, B = 0', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const method of METHODS) {
      // All rewards of each group equal: advantages 0, informative 0.
      const B = 40;
      const groupOf = Int32Array.from({ length: B }, (_, i) => i % 5);
      const rewards = Float32Array.from(groupOf, (g) => g * 0.3 - 0.2);
      const c: Case = { rewards, groupOf, numGroups: 5, mask: makeMask(r, B, 6, 0), T: 6, taskOf: makeTasks(r, groupOf, 5, 2) };
      const out = check('equal', c, method, device, seed);
      expect(Array.from(out.advantages.toArraySync()).every((x) => x === 0), `${method} equal rewards (seed ${seed})`).toBe(true);
      expect(Array.from(out.informative.toArraySync())).toEqual([0, 0, 0, 0, 0]);
    }
    // Groups of one: mean 0 (std / var 1), as verl.
    const single: Case = { rewards: Float32Array.from([0.5, -2, 3]), groupOf: Int32Array.from([0, 1, 2]), numGroups: 3, consecutive: 1 };
    const grpo = check('single', single, 'grpo', device, seed);
    expectClose('single grpo', grpo.advantages.toArraySync(), [0.5 / (1 + 1e-6), -2 / (1 + 1e-6), 3 / (1 + 1e-6)], TOL, seed);
    expect(Array.from(check('single', single, 'drgrpo', device, seed).advantages.toArraySync())).toEqual([0.5, -2, 3]);
    expect(Array.from(check('single', single, 'rloo', device, seed).advantages.toArraySync())).toEqual([0.5, -2, 3]);
    check('single', single, 'tmn-reweight', device, seed);
    // eps: a tiny spread is divided by std + eps, not std alone.
    const tiny: Case = { rewards: Float32Array.from([1, 1 + 2 ** -20]), groupOf: Int32Array.from([0, 0]), numGroups: 1, consecutive: 2 };
    const e1 = check('eps default', tiny, 'grpo', device, seed).advantages.toArraySync();
    const e2 = check('eps 1e-3', tiny, 'grpo', device, seed, { eps: 1e-3 }).advantages.toArraySync();
    const e0 = check('eps 0', tiny, 'grpo', device, seed, { eps: 0 }).advantages.toArraySync();
    expect(Math.abs(e0[0])).toBeCloseTo(Math.SQRT1_2, 6);
    expect(Math.abs(e1[0])).toBeLessThan(Math.abs(e0[0]));
    expect(Math.abs(e2[0])).toBeLessThan(Math.abs(e1[0]));
    // B = 0.
    const empty = rlk.groupAdvantages(keep(rlk.tensor(new Float32Array(0), { device })), { groupSize: 4, method: 'grpo' });
    expect(empty.advantages.shape).toEqual([0]);
    expect(empty.informative.shape).toEqual([0]);
  });

  test('broadcastAdvantages', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, T] of [[1, 1], [3, 0], [17, 33], [64, 1000]]) {
      const adv = Float32Array.from({ length: B }, () => normal(r));
      const mask = makeMask(r, B, T, 0.2);
      const out = keep(rlk.broadcastAdvantages(keep(rlk.tensor(adv, { device })), keep(rlk.tensor(mask, { shape: [B, T], device }))));
      expect(out.shape).toEqual([B, T]);
      const got = out.toArraySync();
      const want = refBroadcast(adv, mask, T);
      expect(Array.from(got), `B=${B} T=${T} (seed ${seed})`).toEqual(Array.from(want, Math.fround));
    }
  });

  test('cross-rank form equals the single-process result on 2 and 4 ranks', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const R of [2, 4]) {
      for (const method of METHODS) {
        for (const [reweight, kind] of [[true, 'mixed'], [true, 'offset'], ...(method === 'tmn-reweight' ? [[false, 'mixed']] : [])] as Array<[boolean, RewardKind]>) {
          // 'offset' rewards (50 + 0.1 N(0, 1)) have a spread small beside their mean: what a float32 mean in the
          // partials would get wrong.
          const c = idsCase(r, 500, 16, kind, true);
          const extra: Partial<rlk.GroupAdvantagesOptions> = method === 'tmn-reweight' ? { reweight } : {};
          const whole = rlk.groupAdvantages(keep(rlk.tensor(c.rewards, { device })), optionsOf(c, method, device, extra));
          const wholeAdv = keep(whole.advantages).toArraySync();
          const wholeInf = keep(whole.informative).toArraySync();
          const ref = refOf(c, method, extra as Partial<RefOptions>);
          // Rows dealt to ranks at random: groups are split across ranks.
          const rankOf = Array.from({ length: c.rewards.length }, () => Math.floor(r() * R));
          const ranks = Array.from({ length: R }, (_, k) => {
            const rows = rankOf.flatMap((q, i) => (q === k ? [i] : []));
            const T = c.T!;
            const local: Case = {
              rewards: Float32Array.from(rows, (i) => c.rewards[i]),
              groupOf: Int32Array.from(rows, (i) => c.groupOf[i]),
              numGroups: c.numGroups,
              taskOf: Int32Array.from(rows, (i) => c.taskOf![i]),
              mask: Uint8Array.from(rows.flatMap((i) => Array.from(c.mask!.subarray(i * T, (i + 1) * T)))),
              T,
            };
            const opts = { ...optionsOf(local, method, device, extra), numGroups: c.numGroups };
            return { rows, rewards: keep(rlk.tensor(local.rewards, { device })), opts };
          });
          const rounds = rlk.groupAdvantagesRounds({ method, ...extra });
          const p1 = ranks.map((k) => keep(rlk.groupAdvantagesPartials(k.rewards, k.opts)));
          const s1 = keep(rlk.combineGroupAdvantagesPartials(p1));
          let s2: rlk.Tensor<'float32'> | undefined;
          if (rounds === 2) {
            const p2 = ranks.map((k) => keep(rlk.groupAdvantagesPartials(k.rewards, k.opts, s1)));
            // The all-gather form: one [R, K, 7] tensor.
            const stacked = new Float32Array(p2.reduce((a, t) => a + t.numel, 0));
            let off = 0;
            for (const t of p2) {
              stacked.set(t.toArraySync() as Float32Array, off);
              off += t.numel;
            }
            s2 = keep(rlk.combineGroupAdvantagesPartials(keep(rlk.tensor(stacked, { shape: [R, ...p2[0].shape], device }))));
            expect(Array.from(s2.toArraySync())).toEqual(Array.from(keep(rlk.combineGroupAdvantagesPartials(p2)).toArraySync()));
          }
          const got = new Float32Array(c.rewards.length);
          for (const k of ranks) {
            const res = rlk.finalizeGroupAdvantages(k.rewards, k.opts, s1, s2);
            const a = keep(res.advantages).toArraySync();
            k.rows.forEach((i, j) => (got[i] = a[j]));
            expect(Array.from(keep(res.informative).toArraySync()), `R=${R} ${method} informative (seed ${seed})`).toEqual(Array.from(wholeInf));
          }
          expectClose(`R=${R} ${method} ${kind} reweight=${reweight} vs single process`, got, wholeAdv, TOL, seed);
          expectClose(`R=${R} ${method} ${kind} reweight=${reweight} vs reference`, got, ref.advantages, TOL, seed);
        }
      }
    }
  });

  test('deterministic: bitwise equal across runs and thread counts', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const threads = rlk.getNumThreads();
    try {
      for (const method of METHODS) {
        const c = idsCase(r, cudaShape(20000, 2000, device), 24, 'mixed', false);
        const run = (): Float32Array => {
          const out = rlk.groupAdvantages(keep(rlk.tensor(c.rewards, { device })), optionsOf(c, method, device));
          keep(out.informative);
          return keep(out.advantages).toArraySync();
        };
        const a = run();
        const b = run();
        rlk.setNumThreads(threads === 1 ? 2 : 1);
        const d = run();
        rlk.setNumThreads(threads);
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer)), `${method} run to run (seed ${seed})`).toBe(true);
        expect(Buffer.from(d.buffer).equals(Buffer.from(a.buffer)), `${method} thread count (seed ${seed})`).toBe(true);
      }
    } finally {
      rlk.setNumThreads(threads);
    }
  });

  test('large batch (B = 65536, groups of 16, and one group of all rows)', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const method of METHODS) {
      check('B=65536 gs=16', consecutiveCase(r, cudaShape(65536, 4096, device), 16, 'mixed'), method, device, seed);
    }
    check('one group', consecutiveCase(r, cudaShape(65536, 4096, device), cudaShape(65536, 4096, device), 'offset'), 'grpo', device, seed);
  });
}

describe('groupAdvantages (cpu)', () => runDevice('cpu'));
describeCuda('groupAdvantages (cuda)', () => {
  runDevice('cuda');
  const dev = { device: 'cuda' as const };
  test('bad data on the GPU surfaces as a RangeError at the next read', async () => {
    const rewards = keep(rlk.tensor(new Float32Array([1, 2, 3, 4]), dev));
    const cases: Array<[rlk.GroupAdvantagesOptions, RegExp]> = [
      [{ groupIds: keep(rlk.tensor(new Int32Array([0, 5, 1, 1]), dev)), numGroups: 2, method: 'grpo' }, /group id/],
      [{ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array([0, 1, 0, 0]), dev)) }, /taskIds/],
      [{ groupSize: 2, method: 'reinforce++', tokenCounts: keep(rlk.tensor(new Int32Array([1, -1, 2, 2]), dev)) }, /tokenCounts/],
    ];
    for (const [opts, msg] of cases) {
      const out = rlk.groupAdvantages(rewards, opts);
      await expect(out.advantages.toArray()).rejects.toThrow(msg);
      out.advantages.dispose();
      out.informative.dispose();
    }
  });
  test('numGroups is required for groupIds on cuda', () => {
    const rewards = keep(rlk.tensor(new Float32Array([1, 2]), dev));
    expect(() => rlk.groupAdvantages(rewards, { groupIds: keep(rlk.tensor(new Int32Array([0, 1]), dev)), method: 'grpo' })).toThrow(/numGroups is required/);
    expect(() => rlk.groupAdvantages(rewards, { groupIds: keep(rlk.tensor(new Int32Array([0, 1]))), numGroups: 2, method: 'grpo' })).toThrow(TypeError);
  });
});

describe('groupAdvantages: garbage input', () => {
  const rewards = keep(rlk.tensor(new Float32Array([1, 0, 1, 1, 0, 0])));
  const ids = keep(rlk.tensor(new Int32Array([0, 0, 1, 1, 2, 2])));
  const mask = keep(rlk.tensor(new Uint8Array(12).fill(1), { shape: [6, 2] }));
  const bad = (f: () => unknown, cls: new (...a: never[]) => Error, msg: RegExp): void => {
    let err: unknown;
    try {
      f();
    } catch (e) {
      err = e;
    }
    expect(err, `expected ${cls.name} ${msg}`).toBeInstanceOf(cls);
    expect((err as Error).message).toMatch(msg);
  };
  type Opts = rlk.GroupAdvantagesOptions;
  const ga = (o: unknown, r: unknown = rewards) => rlk.groupAdvantages(r as rlk.Tensor, o as Opts);

  test('groupAdvantages', () => {
    bad(() => ga({ groupSize: 2, method: 'grpo' }, [1, 2]), TypeError, /rewards must be a tensor/);
    bad(() => ga({ groupSize: 2, method: 'grpo' }, keep(rlk.tensor(new Int32Array(6)))), TypeError, /rewards must be float32/);
    bad(() => ga({ groupSize: 2, method: 'grpo' }, keep(rlk.tensor(new Float32Array(6), { shape: [2, 3] }))), RangeError, /rewards must have shape \[B\]/);
    bad(() => ga(undefined), TypeError, /options/);
    bad(() => ga(5), TypeError, /options must be an object/);
    bad(() => ga({ groupSize: 2 }), TypeError, /method must be a string/);
    bad(() => ga({ groupSize: 2, method: 'ppo' }), RangeError, /method must be one of/);
    bad(() => ga({ groupSize: 2, method: 'grpo', temperature: 1 }), TypeError, /unknown option 'temperature'/);
    bad(() => ga({ method: 'grpo' }), TypeError, /exactly one of groupIds and groupSize.*neither/);
    bad(() => ga({ groupSize: 2, groupIds: ids, method: 'grpo' }), TypeError, /exactly one of groupIds and groupSize.*both/);
    bad(() => ga({ groupSize: 4, method: 'grpo' }), RangeError, /groupSize 4 must divide the batch size B = 6/);
    bad(() => ga({ groupSize: 0, method: 'grpo' }), RangeError, /groupSize must be an integer >= 1/);
    bad(() => ga({ groupSize: 1.5, method: 'grpo' }), RangeError, /groupSize must be an integer/);
    bad(() => ga({ groupSize: NaN, method: 'grpo' }), RangeError, /groupSize/);
    bad(() => ga({ groupSize: '2', method: 'grpo' }), TypeError, /groupSize must be a number/);
    bad(() => ga({ groupSize: 2, numGroups: 4, method: 'grpo' }), RangeError, /numGroups must be B \/ groupSize = 3/);
    bad(() => ga({ groupIds: ids, numGroups: -1, method: 'grpo' }), RangeError, /numGroups must be an integer >= 0/);
    bad(() => ga({ groupIds: ids, numGroups: 2 ** 40, method: 'grpo' }), RangeError, /numGroups must be an integer/);
    bad(() => ga({ groupIds: ids, numGroups: 3.5, method: 'grpo' }), RangeError, /numGroups must be an integer/);
    bad(() => ga({ groupIds: ids, numGroups: '3', method: 'grpo' }), TypeError, /numGroups must be a number/);
    bad(() => ga({ groupSize: 2 ** 60, method: 'grpo' }), RangeError, /groupSize must be an integer/);
    bad(() => ga({ groupSize: 2, method: 'grpo' }, null), TypeError, /rewards must be a tensor, got null/);
    bad(() => ga({ groupSize: 2, method: 'grpo', eps: 1e-6, mask: undefined, bogus: undefined }), TypeError, /unknown option 'bogus'/);
    bad(() => ga({ groupIds: ids, numGroups: 2, method: 'grpo' }), RangeError, /groupIds must be in \[0, numGroups = 2\), got 2 at index 4/);
    bad(() => ga({ groupIds: keep(rlk.tensor(new Int32Array([0, 0, -1, 1, 2, 2]))), method: 'grpo' }), RangeError, /groupIds must be >= 0, got -1 at index 2/);
    bad(() => ga({ groupIds: keep(rlk.tensor(new Int32Array([0, 0, 1, 1, 2, 2 ** 31 - 1]))), method: 'grpo' }), RangeError, /groupIds must be < B = 6 unless numGroups is given/);
    bad(() => ga({ groupIds: keep(rlk.tensor([0n, 0n, 1n, 1n, 2n, 2n ** 40n])), method: 'grpo' }), RangeError, /groupIds must be < B/);
    bad(() => ga({ groupIds: keep(rlk.tensor([0n, 0n, 1n, 1n, 2n, -(2n ** 40n)])), method: 'grpo' }), RangeError, /groupIds must be >= 0/);
    bad(() => ga({ groupIds: keep(rlk.tensor(new Float32Array(6))), method: 'grpo' }), TypeError, /groupIds must be int32 or int64, got float32/);
    bad(() => ga({ groupIds: keep(rlk.tensor(new Int32Array(5))), method: 'grpo' }), RangeError, /groupIds must have shape \[6\]/);
    bad(() => ga({ groupIds: [0, 0, 1, 1, 2, 2], method: 'grpo' }), TypeError, /groupIds must be a tensor/);
    bad(() => ga({ groupSize: 2, method: 'grpo', taskIds: ids }), TypeError, /option 'taskIds' applies only to method 'tmn-reweight'/);
    bad(() => ga({ groupSize: 2, method: 'grpo', alpha: 0.5 }), TypeError, /option 'alpha' applies only/);
    bad(() => ga({ groupSize: 2, method: 'grpo', mask }), TypeError, /option 'mask' applies only to method 'reinforce\+\+'/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++' }), TypeError, /needs exactly one of mask and tokenCounts, got neither/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask, tokenCounts: ids }), TypeError, /needs exactly one of mask and tokenCounts, got both/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Float32Array(12), { shape: [6, 2] })) }), TypeError, /mask must be uint8, got float32/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Uint8Array(12), { shape: [4, 3] })) }), RangeError, /mask must have shape \[B = 6, T\], got \[4, 3\]/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Uint8Array(6))) }), RangeError, /mask must have shape/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', tokenCounts: keep(rlk.tensor(new Int32Array([1, 2, -3, 1, 1, 1]))) }), RangeError, /tokenCounts must be >= 0/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', tokenCounts: keep(rlk.tensor(new Float32Array(6))) }), TypeError, /tokenCounts must be int32 or int64/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array([0, 1, 0, 0, 0, 0]))) }), RangeError, /taskIds must be constant within a group/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array([0, 0, 9, 9, 0, 0]))) }), RangeError, /taskIds must be in \[0, numGroups\)/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array([0, 0, -1, -1, 0, 0]))) }), RangeError, /taskIds must be in/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array(3))) }), RangeError, /taskIds must have shape \[6\]/);
    bad(() => ga({ groupSize: 2, method: 'grpo', eps: -1 }), RangeError, /eps must be a finite number >= 0/);
    bad(() => ga({ groupSize: 2, method: 'grpo', eps: Infinity }), RangeError, /eps/);
    bad(() => ga({ groupSize: 2, method: 'grpo', eps: '1' }), TypeError, /eps must be a number/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', alpha: 1.5 }), RangeError, /alpha must be a finite number >= 0 and <= 1/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', alpha: NaN }), RangeError, /alpha/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', gamma: -1 }), RangeError, /gamma must be/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', reweight: 1 }), TypeError, /reweight must be a boolean/);
    const gone = rlk.tensor(new Float32Array(6));
    gone.dispose();
    bad(() => ga({ groupSize: 2, method: 'grpo' }, gone), rlk.DisposedError, /rewards was disposed/);
    const goneIds = rlk.tensor(new Int32Array(6));
    goneIds.dispose();
    bad(() => ga({ groupIds: goneIds, method: 'grpo' }), rlk.DisposedError, /groupIds was disposed/);
    const goneMask = rlk.tensor(new Uint8Array(12), { shape: [6, 2] });
    goneMask.dispose();
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: goneMask }), rlk.DisposedError, /mask was disposed/);
  });

  test('cross-rank functions', () => {
    const o: Opts = { groupIds: ids, numGroups: 3, method: 'tmn-reweight' };
    const p1 = keep(rlk.groupAdvantagesPartials(rewards, o));
    expect(p1.shape).toEqual([3, 7]);
    bad(() => rlk.groupAdvantagesPartials(rewards, { groupIds: ids, method: 'grpo' }), TypeError, /numGroups is required in the cross-rank form/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { groupSize: 2, method: 'grpo' }), TypeError, /groupSize is not supported in the cross-rank form/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { ...o, method: 'grpo' }, p1), TypeError, /has no second round/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(new Float32Array(14), { shape: [2, 7] }))), RangeError, /stats must have shape \[3, 7\]/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(new Int32Array(21), { shape: [3, 7] }))), TypeError, /stats must be float32/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, [1, 2] as unknown as rlk.Tensor), TypeError, /stats must be a tensor/);
    // Records with a task key out of range (a hand-made stats tensor).
    const forged = new Float32Array(21);
    forged.set([2, 0.5, 0.5, 0, 1, 99, 0], 0);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(forged, { shape: [3, 7] }))), RangeError, /stats1 holds a record/);
    bad(() => rlk.combineGroupAdvantagesPartials([]), RangeError, /at least one tensor/);
    bad(() => rlk.combineGroupAdvantagesPartials([p1, 3 as unknown as rlk.Tensor]), TypeError, /partials\[1\] must be a tensor/);
    bad(() => rlk.combineGroupAdvantagesPartials([p1, keep(rlk.tensor(new Float32Array(14), { shape: [2, 7] }))]), RangeError, /partials\[1\] must have shape \[3, 7\]/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new Float32Array(18), { shape: [3, 6] }))]), RangeError, /partials\[0\] must have shape \[K, 7\]/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new Float32Array(0), { shape: [0, 3, 7] }))]), RangeError, /no rank/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new Int32Array(21), { shape: [3, 7] }))]), TypeError, /partials\[0\] must be float32/);
    // Two ranks that disagree on a group's task.
    const other = keep(rlk.groupAdvantagesPartials(rewards, { ...o, taskIds: keep(rlk.tensor(new Int32Array([1, 1, 1, 1, 1, 1]))) }));
    bad(() => rlk.combineGroupAdvantagesPartials([p1, other]), RangeError, /disagree on a group's task/);
    const s1 = keep(rlk.combineGroupAdvantagesPartials([p1]));
    bad(() => rlk.finalizeGroupAdvantages(rewards, o, s1), TypeError, /stats2 .* is required/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo' }, s1, s1), TypeError, /stats2 must be omitted/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, o, undefined as unknown as rlk.Tensor), TypeError, /stats must be a tensor/);
    const gone = rlk.tensor(new Float32Array(21), { shape: [3, 7] });
    gone.dispose();
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo' }, gone), rlk.DisposedError, /stats was disposed/);
    bad(() => rlk.combineGroupAdvantagesPartials([gone]), rlk.DisposedError, /partials\[0\] was disposed/);
    bad(() => rlk.groupAdvantagesRounds({ method: 'nope' as 'grpo' }), RangeError, /method must be one of/);
    expect(rlk.groupAdvantagesRounds({ method: 'grpo' })).toBe(1);
    expect(rlk.groupAdvantagesRounds({ method: 'tmn-reweight', reweight: false })).toBe(1);
    expect(rlk.groupAdvantagesRounds({ method: 'reinforce++' })).toBe(2);
  });

  test('broadcastAdvantages', () => {
    const adv = keep(rlk.tensor(new Float32Array(6)));
    bad(() => rlk.broadcastAdvantages([1] as unknown as rlk.Tensor, mask), TypeError, /advantages must be a tensor/);
    bad(() => rlk.broadcastAdvantages(adv, 3 as unknown as rlk.Tensor), TypeError, /mask must be a tensor/);
    bad(() => rlk.broadcastAdvantages(keep(rlk.tensor(new Int32Array(6))), mask), TypeError, /advantages must be float32/);
    bad(() => rlk.broadcastAdvantages(adv, keep(rlk.tensor(new Int32Array(12), { shape: [6, 2] }))), TypeError, /mask must be uint8/);
    bad(() => rlk.broadcastAdvantages(adv, keep(rlk.tensor(new Uint8Array(10), { shape: [5, 2] }))), RangeError, /mask must have shape \[B = 6, T\]/);
    bad(() => rlk.broadcastAdvantages(keep(rlk.tensor(new Float32Array(6), { shape: [3, 2] })), mask), RangeError, /advantages must have shape \[B\]/);
    const gone = rlk.tensor(new Float32Array(6));
    gone.dispose();
    bad(() => rlk.broadcastAdvantages(gone, mask), rlk.DisposedError, /advantages was disposed/);
  });

  test('the addon re-checks what memory safety depends on', async () => {
    const { native } = await import('../src/native.js');
    const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    const h = (t: rlk.Tensor) => t.handle('test');
    const args = (over: Record<number, unknown>): unknown[] => {
      const a: unknown[] = [h(rewards), h(ids), 0, 3, null, 0, null, null, 1e-6, 0.8, 1, true];
      for (const [k, v] of Object.entries(over)) a[Number(k)] = v;
      return a;
    };
    bad(() => n.groupAdvantages(...args({ 1: null })), TypeError, /exactly one of groupIds and groupSize/);
    bad(() => n.groupAdvantages(...args({ 3: 2 })), RangeError, /groupIds must be in/);
    bad(() => n.groupAdvantages(...args({ 5: 9 })), RangeError, /method must be an integer/);
    bad(() => n.groupAdvantages(...args({ 1: h(mask) })), TypeError, /groupIds must be int32 or int64/);
    bad(() => n.groupAdvantages(...args({ 3: 1e12 })), RangeError, /numGroups/);
    bad(() => n.groupAdvantages(...args({ 5: 3 })), TypeError, /reinforce\+\+/);
    bad(() => n.groupAdvantages(...args({ 5: 3, 6: h(keep(rlk.tensor(new Uint8Array(5)))) })), RangeError, /mask must have shape/);
    bad(() => n.groupAdvantages(...args({ 8: NaN })), RangeError, /eps/);
    bad(() => n.finalizeGroupAdvantages(...args({}), h(keep(rlk.tensor(new Float32Array(6), { shape: [1, 6] })))), RangeError, /stats must have shape \[3, 7\]/);
    bad(() => n.combineGroupAdvantagesPartials('x'), TypeError, /partials must be an array/);
    bad(() => n.broadcastAdvantages(h(rewards), h(keep(rlk.tensor(new Uint8Array(4), { shape: [2, 2] })))), RangeError, /mask must have shape/);
  });
});
