// Group advantages against the float64 references of DESIGN 3.6 and LOSSES.md
// section 4: every method, consecutive and shuffled uneven groups with ids of
// any values (dense, sparse, negative, 64-bit hashes), tasks, the edge cases,
// broadcast, the cross-rank protocol on 2 and 4 simulated ranks,
// determinism, and garbage input. Fresh random inputs; the seed is in every
// failure message (RLK_SEED replays one).
import { describe, expect, test } from 'vitest';
import * as rlk from '../src/index.js';
import { cudaShape, describeCuda, expectClose, freshSeed, normal, rng, tensorKeeper, TOLERANCE } from './helpers.js';
import { numberGroups, refBroadcast, refGroupAdvantages, type RefMethod, type RefOptions } from './reference/group_advantages.js';

const TOL = TOLERANCE.float32;
const METHODS: RefMethod[] = ['grpo', 'drgrpo', 'rloo', 'reinforce++', 'tmn-reweight', 'gdpo', 'grpo-passk', 'opo', 'remax', 'gpg'];
const keep = tensorKeeper();

type RewardKind = 'binary' | 'normal' | 'offset' | 'mixed';
type IdKind = 'dense' | 'gaps' | 'negative' | 'hash';
type Ids = Int32Array | BigInt64Array;

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

/** G distinct labels of the kind asked: dense 0..G-1, odd numbers, negative int32, or 64-bit hashes. */
function labels(r: () => number, G: number, kind: IdKind): Ids {
  if (kind === 'hash') {
    const seen = new Set<bigint>();
    const out = new BigInt64Array(G);
    for (let g = 0; g < G; g++) {
      let v: bigint;
      do v = BigInt.asIntN(64, (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32)));
      while (seen.has(v));
      seen.add(v);
      out[g] = v;
    }
    // The extremes of int64 too, where there is room.
    if (G > 2) {
      out[0] = -(2n ** 63n);
      out[1] = 2n ** 63n - 1n;
    }
    return out;
  }
  if (kind === 'negative') {
    const seen = new Set<number>();
    const out = new Int32Array(G);
    for (let g = 0; g < G; g++) {
      let v: number;
      do v = Math.floor(r() * 2 ** 32) - 2 ** 31;
      while (seen.has(v));
      seen.add(v);
      out[g] = v;
    }
    return out;
  }
  return Int32Array.from({ length: G }, (_, g) => (kind === 'gaps' ? 2 * g + 1 : g));
}

/** Uneven group sizes in [minSize, maxSize] (the last may be smaller when B forces it), ids shuffled over the rows. */
function makeGroupIds(r: () => number, B: number, maxSize: number, kind: IdKind, minSize = 1): Ids {
  const sizes: number[] = [];
  let left = B;
  while (left > 0) {
    let s = Math.min(left, minSize + Math.floor(r() * (maxSize - minSize + 1)));
    if (left - s > 0 && left - s < minSize) s = left;
    sizes.push(s);
    left -= s;
  }
  const lab = labels(r, sizes.length, kind);
  const ids = lab instanceof BigInt64Array ? new BigInt64Array(B) : new Int32Array(B);
  let k = 0;
  sizes.forEach((s, g) => {
    for (let j = 0; j < s; j++) ids[k++] = lab[g] as never;
  });
  for (let i = B - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    const t = ids[i];
    ids[i] = ids[j] as never;
    ids[j] = t as never;
  }
  return ids;
}

/** Task per row, constant within each group: one of `tasks` arbitrary labels per group. */
function makeTasks(r: () => number, groupOf: Ids, tasks: number): Ids {
  const lab = labels(r, tasks, r() < 0.5 ? 'hash' : 'negative');
  const of = new Map<string, number>();
  const out = lab instanceof BigInt64Array ? new BigInt64Array(groupOf.length) : new Int32Array(groupOf.length);
  for (let i = 0; i < groupOf.length; i++) {
    const k = String(groupOf[i]);
    if (!of.has(k)) of.set(k, Math.floor(r() * tasks));
    out[i] = lab[of.get(k)!] as never;
  }
  return out;
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
  rewards: Float32Array; // [B] (gdpo: column 0)
  columns?: Float32Array; // gdpo: [B, K]
  K?: number;
  weights?: number[];
  baseline?: Float32Array;
  groupOf: Ids;
  consecutive?: number;
  taskOf?: Ids;
  mask?: Uint8Array;
  T?: number;
  counts?: Int32Array;
}

/** The method-specific inputs of a case: reward columns and weights (gdpo), baselines (remax). */
function withExtras(r: () => number, c: Case, kind: RewardKind): Case {
  const B = c.rewards.length;
  const K = 1 + Math.floor(r() * 3);
  const columns = new Float32Array(B * K);
  for (let i = 0; i < B; i++) {
    columns[i * K] = c.rewards[i];
    for (let k = 1; k < K; k++) columns[i * K + k] = makeRewards(r, 1, kind)[0];
  }
  return {
    ...c,
    columns,
    K,
    weights: Array.from({ length: K }, () => Math.round(r() * 20) / 10),
    baseline: makeRewards(r, B, kind),
  };
}

function refOf(c: Case, method: RefMethod, extra: Partial<RefOptions> = {}): ReturnType<typeof refGroupAdvantages> {
  const B = c.rewards.length;
  return refGroupAdvantages(Float64Array.from(c.rewards), {
    method,
    groupOf: c.groupOf,
    taskOf: method === 'tmn-reweight' ? c.taskOf : undefined,
    mask: c.mask && c.counts === undefined ? { data: c.mask, T: c.T! } : undefined,
    tokenCounts: c.counts,
    columns: method === 'gdpo' ? Array.from({ length: B }, (_, i) => Array.from(c.columns!.subarray(i * c.K!, (i + 1) * c.K!))) : undefined,
    rewardWeights: method === 'gdpo' ? c.weights : undefined,
    baseline: c.baseline,
    ...extra,
  });
}

interface OptionsExtra {
  /** Pass token counts rather than the mask. */
  useCounts?: boolean;
  /** gdpo without a mask (one token a row). */
  noMask?: boolean;
}

function optionsOf(c: Case, method: RefMethod, device: rlk.Device, extra: Partial<rlk.GroupAdvantagesOptions> = {}, x: OptionsExtra = {}): rlk.GroupAdvantagesOptions {
  const o: rlk.GroupAdvantagesOptions = { method, ...extra };
  if (c.consecutive) o.groupSize = c.consecutive;
  else o.groupIds = keep(rlk.tensor(c.groupOf, { device }));
  if (method === 'tmn-reweight' && c.taskOf) o.taskIds = keep(rlk.tensor(c.taskOf, { device }));
  if (method === 'reinforce++' || method === 'opo' || (method === 'gdpo' && !x.noMask && (c.mask || c.counts))) {
    if (x.useCounts || !c.mask) o.tokenCounts = keep(rlk.tensor(c.counts ?? rowCounts(c.mask!, c.rewards.length, c.T!), { device }));
    else o.mask = keep(rlk.tensor(c.mask, { shape: [c.rewards.length, c.T!], device }));
  }
  if (method === 'gdpo' && c.weights) o.rewardWeights = c.weights;
  if (method === 'remax') o.baselineRewards = keep(rlk.tensor(c.baseline!, { device }));
  return o;
}

function rewardsOf(c: Case, method: RefMethod, device: rlk.Device): rlk.Tensor {
  if (method === 'gdpo' && c.columns) return keep(rlk.tensor(c.columns, { shape: [c.rewards.length, c.K!], device }));
  if (method === 'gdpo') return keep(rlk.tensor(c.rewards, { shape: [c.rewards.length, 1], device }));
  return keep(rlk.tensor(c.rewards, { device }));
}

function consecutiveCase(r: () => number, B: number, gs: number, kind: RewardKind): Case {
  const groupOf = Int32Array.from({ length: B }, (_, i) => Math.floor(i / gs));
  const T = 1 + Math.floor(r() * 9);
  const mask = makeMask(r, B, T, 0.1);
  return withExtras(r, { rewards: makeRewards(r, B, kind), groupOf, consecutive: gs, mask, T, taskOf: makeTasks(r, groupOf, 3) }, kind);
}

function idsCase(r: () => number, B: number, maxSize: number, kind: RewardKind, ids: IdKind, minSize = 1): Case {
  const groupOf = makeGroupIds(r, B, maxSize, ids, minSize);
  const T = 1 + Math.floor(r() * 9);
  const mask = makeMask(r, B, T, 0.1);
  return withExtras(r, { rewards: makeRewards(r, B, kind), groupOf, mask, T, taskOf: makeTasks(r, groupOf, 4) }, kind);
}

/** What `informative`'s length is for these options: numGroups, else G on the CPU, B on CUDA (groupIds). */
function informativeLength(c: Case, o: rlk.GroupAdvantagesOptions, device: rlk.Device): number {
  if (o.numGroups !== undefined) return o.numGroups;
  if (c.consecutive) return c.rewards.length / c.consecutive;
  return device === 'cpu' ? numberGroups(c.groupOf).length : c.rewards.length;
}

function check(what: string, c: Case, method: RefMethod, device: rlk.Device, seed: number, extra: Partial<rlk.GroupAdvantagesOptions> = {}, x: OptionsExtra = {}): rlk.GroupAdvantagesResult {
  const rewards = rewardsOf(c, method, device);
  const o = optionsOf(c, method, device, extra, x);
  const len = informativeLength(c, o, device);
  const cc = x.noMask ? { ...c, mask: undefined, counts: undefined } : x.useCounts && !c.counts && c.mask ? { ...c, counts: rowCounts(c.mask, c.rewards.length, c.T!) } : c;
  const ref = refOf(cc, method, { ...(extra as Partial<RefOptions>), numGroups: len });
  const out = rlk.groupAdvantages(rewards, o);
  keep(out.advantages);
  keep(out.informative);
  expect(out.advantages.shape).toEqual([c.rewards.length]);
  expect(out.informative.shape).toEqual([len]);
  expectClose(`${what} ${method} advantages`, out.advantages.toArraySync(), ref.advantages, TOL, seed);
  expect(Array.from(out.informative.toArraySync()), `${what} ${method} informative (seed ${seed})`).toEqual(Array.from(ref.informative));
  return out;
}

/** gdpo whitens over the tokens: fewer than 2 is a RangeError (tested on its own). */
function gdpoInvalid(c: Case, method: RefMethod): boolean {
  if (method !== 'gdpo') return false;
  const B = c.rewards.length;
  const counts = c.counts ?? (c.mask ? rowCounts(c.mask, B, c.T!) : new Int32Array(B).fill(1));
  return counts.reduce((a, b) => a + b, 0) < 2;
}

/** grpo-passk needs groups of at least 2. */
const minSizeOf = (method: RefMethod): number => (method === 'grpo-passk' ? 2 : 1);

function runDevice(device: rlk.Device): void {
  test.each(METHODS)('%s, consecutive groups of several sizes', (method) => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, gs] of [[1, 1], [16, 16], [48, 16], [35, 5], [7, 1], [1000, 8], [4096, 16]]) {
      if (gs < minSizeOf(method)) continue;
      for (const kind of ['binary', 'normal', 'offset', 'mixed'] as RewardKind[]) {
        const c = consecutiveCase(r, B, gs, kind);
        if (!gdpoInvalid(c, method)) check(`B=${B} gs=${gs} ${kind}`, c, method, device, seed);
      }
    }
  });

  test.each(METHODS)('%s, shuffled uneven groupIds of any values (dense, sparse, negative, int64 hashes)', (method) => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const [B, maxSize] of [[2, 2], [5, 3], [64, 9], [333, 20], [2000, 40]]) {
      for (const ids of ['dense', 'gaps', 'negative', 'hash'] as IdKind[]) {
        const c = idsCase(r, B, maxSize, 'mixed', ids, minSizeOf(method));
        if (gdpoInvalid(c, method)) continue;
        check(`B=${B} ${ids} ids`, c, method, device, seed);
        // numGroups as an upper bound: informative is padded with zeros.
        const G = numberGroups(c.groupOf).length;
        check(`B=${B} ${ids} ids, numGroups = G + 3`, c, method, device, seed, { numGroups: G + 3 });
        // The same ids as the other integer dtype (where they fit) give the same.
        if (ids !== 'hash') {
          const as64 = { ...c, groupOf: BigInt64Array.from(Array.from(c.groupOf as Int32Array, (v) => BigInt(v))) };
          check(`B=${B} ${ids} ids as int64`, as64, method, device, seed);
        }
      }
    }
  });

  test('grpo scales: group, batch, none', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const scale of ['group', 'batch', 'none'] as const) {
      for (const [B, maxSize] of [[1, 1], [2, 1], [100, 7], [3000, 16]]) {
        check(`B=${B} scale ${scale}`, idsCase(r, B, maxSize, 'mixed', 'hash'), 'grpo', device, seed, { scale });
      }
      check(`consecutive scale ${scale}`, consecutiveCase(r, 64, 8, 'offset'), 'grpo', device, seed, { scale });
    }
    // 'none' is drgrpo; 'batch' divides every group by one std (closed form on a small case).
    const c: Case = { rewards: Float32Array.from([1, 0, 0, 0, 1, 1]), groupOf: Int32Array.from([7, 7, -3, -3, 7, -3]) };
    const b = check('batch closed form', c, 'grpo', device, seed, { scale: 'batch' }).advantages.toArraySync();
    const stdB = Math.sqrt((6 * 0.25) / 5);
    expectClose('batch closed form', b, [1 / 3, -2 / 3, -1 / 3, -1 / 3, 1 / 3, 2 / 3].map((x) => x / (stdB + 1e-6)), TOL, seed);
  });

  test('gdpo: weights, a mask, token counts, no mask, rows without tokens', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const B of [2, 33, 500]) {
      const c = idsCase(r, B, 8, 'mixed', 'negative');
      if (gdpoInvalid(c, 'gdpo')) continue;
      check(`B=${B} mask`, c, 'gdpo', device, seed);
      check(`B=${B} counts`, c, 'gdpo', device, seed, {}, { useCounts: true });
      check(`B=${B} no mask`, c, 'gdpo', device, seed, {}, { noMask: true });
      check(`B=${B} default weights`, { ...c, weights: undefined }, 'gdpo', device, seed);
    }
    // Rows with zero tokens get 0; the others are whitened over the tokens of the rest.
    const c = consecutiveCase(r, 40, 4, 'mixed');
    c.counts = Int32Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? 0 : 1 + (i % 5)));
    const out = check('zero-count rows', c, 'gdpo', device, seed, {}, { useCounts: true }).advantages.toArraySync();
    for (let i = 0; i < 40; i += 3) expect(out[i], `row ${i} has no token (seed ${seed})`).toBe(0);
    // informative: some column varies (column 0 constant, column 1 not).
    const k2: Case = { rewards: Float32Array.from([1, 1, 2, 2]), columns: Float32Array.from([1, 0, 1, 5, 2, 3, 2, 3]), K: 2, groupOf: Int32Array.from([0, 0, 1, 1]) };
    // (check() compares all of informative, padded to B on CUDA, with the reference.)
    expect(Array.from(check('column varies', k2, 'gdpo', device, seed).informative.toArraySync()).slice(0, 2)).toEqual([1, 0]);
  });

  test('grpo-passk: the first maximum, ties for the max, scale none', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const B of [2, 50, 900]) {
      for (const kind of ['binary', 'mixed'] as RewardKind[]) {
        const c = idsCase(r, B, 9, kind, 'hash', 2);
        check(`B=${B} ${kind}`, c, 'grpo-passk', device, seed);
        check(`B=${B} ${kind} none`, c, 'grpo-passk', device, seed, { scale: 'none' });
      }
    }
    // Group 5: max 3 at rows 1 and 3 (a tie: r_max - r_2nd = 0, all 0); group 9: max 4 at row 2 only.
    const c: Case = { rewards: Float32Array.from([1, 3, 4, 3, 1, 2]), groupOf: Int32Array.from([5, 5, 9, 5, 9, 9]) };
    const a = check('ties', c, 'grpo-passk', device, seed, { scale: 'none' }).advantages.toArraySync();
    expect(Array.from(a)).toEqual([0, 0, 2, 0, 0, 0]);
    const s = check('ties scaled', c, 'grpo-passk', device, seed).advantages.toArraySync();
    expectClose('ties scaled', s, [0, 0, 2 / (Math.sqrt(7 / 3) + 1e-6), 0, 0, 0], TOL, seed);
  });

  test('opo, remax, gpg closed forms', () => {
    const seed = freshSeed();
    const c: Case = {
      rewards: Float32Array.from([1, 0, 2, 5, 0, 0]),
      baseline: Float32Array.from([0.5, 0.5, 1, 1, 0, -1]),
      groupOf: BigInt64Array.from([10n, 10n, -4n, -4n, 10n, 99n]),
      counts: Int32Array.from([3, 1, 2, 0, 4, 7]),
    };
    // opo: b(10) = (3*1 + 1*0 + 4*0) / 8, b(-4) = (2*2 + 0*5) / 2, b(99) = 0 (a group of one).
    const opo = check('opo', c, 'opo', device, seed, {}, { useCounts: true }).advantages.toArraySync();
    expectClose('opo', opo, [1 - 3 / 8, -3 / 8, 0, 3, -3 / 8, 0], TOL, seed);
    expectClose('remax', check('remax', c, 'remax', device, seed).advantages.toArraySync(), [0.5, -0.5, 1, 4, 0, 1], TOL, seed);
    // gpg: alpha = 6 / 3 nonzero rewards.
    const gpg = check('gpg', c, 'gpg', device, seed).advantages.toArraySync();
    expectClose('gpg', gpg, [2 * (1 - 1 / 3), 2 * -(1 / 3), 2 * -1.5, 2 * 1.5, 2 * -(1 / 3), 0], TOL, seed);
    // opo: a group whose rows have no tokens has baseline 0.
    const z = check('opo zero tokens', { ...c, counts: Int32Array.from([0, 0, 1, 1, 0, 1]) }, 'opo', device, seed, {}, { useCounts: true });
    expectClose('opo zero tokens', z.advantages.toArraySync(), [1, 0, -1.5, 1.5, 0, 0], TOL, seed);
    // gpg with all-zero rewards: alpha = B / 1, advantages 0.
    const zero = check('gpg zeros', { ...c, rewards: new Float32Array(6) }, 'gpg', device, seed);
    expect(Array.from(zero.advantages.toArraySync())).toEqual([0, 0, 0, 0, 0, 0]);
  });

  test('tmn-reweight: tasks of any values, a task with one group, groups of one, alpha/gamma/reweight', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (let rep = 0; rep < 6; rep++) {
      const c = idsCase(r, 300, 12, rep % 2 ? 'binary' : 'mixed', rep % 3 === 0 ? 'hash' : 'gaps');
      // One task with a single group.
      const lone = String(c.groupOf[0]);
      const loneTask = c.taskOf instanceof BigInt64Array ? 123456789n : 123456789;
      for (let i = 0; i < c.rewards.length; i++) if (String(c.groupOf[i]) === lone) c.taskOf![i] = loneTask as never;
      check(`rep ${rep} tasks`, c, 'tmn-reweight', device, seed);
      check(`rep ${rep} no tasks`, { ...c, taskOf: undefined }, 'tmn-reweight', device, seed);
      check(`rep ${rep} reweight false`, c, 'tmn-reweight', device, seed, { reweight: false });
      check(`rep ${rep} alpha/gamma`, c, 'tmn-reweight', device, seed, { alpha: r(), gamma: 3 * r(), eps: 1e-3 });
    }
    // p counts rewards strictly above m: here m = mean_g = mean_task = 0.5 and two rewards equal it, so p = 1/4
    // (not 3/4), w = exp(0.25): A(1) = w / (std + eps), A(0) = -1 / (w (std + eps)) with std = sqrt(1/6).
    const tie: Case = { rewards: Float32Array.from([0, 1, 0.5, 0.5]), groupOf: Int32Array.from([0, 0, 0, 0]), consecutive: 4 };
    const tied = check('tie at m', tie, 'tmn-reweight', device, seed).advantages.toArraySync();
    const sd = Math.sqrt(1 / 6) + 1e-6;
    expectClose('tie at m (closed form)', tied, [-1 / (Math.exp(0.25) * 2 * sd), Math.exp(0.25) / (2 * sd), 0, 0], TOL, seed);
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
      const b = check(`B=${B} counts`, c, 'reinforce++', device, seed, {}, { useCounts: true });
      const av = a.advantages.toArraySync();
      expect(Array.from(b.advantages.toArraySync()), `seed ${seed}`).toEqual(Array.from(av));
      const counts = rowCounts(c.mask, B, 13);
      for (let i = 0; i < B; i++) if (counts[i] === 0) expect(av[i], `row ${i} has no token (seed ${seed})`).toBe(0);
    }
    // Fewer than two tokens in the whole batch: variance 0, the lone token's x equals the mean -> all 0.
    const c: Case = { rewards: Float32Array.from([1, 3, 5, 2]), groupOf: Int32Array.from([0, 0, 1, 1]), consecutive: 2, counts: Int32Array.from([0, 1, 0, 0]) };
    const out = check('one token', c, 'reinforce++', device, seed, {}, { useCounts: true });
    expect(Array.from(out.advantages.toArraySync())).toEqual([0, 0, 0, 0]);
  });

  test('edge cases: equal rewards, groups of one, eps, B = 0', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const method of METHODS) {
      // All rewards of each group equal: advantages 0 (remax: r - b), informative 0.
      const B = 40;
      const groupOf = Int32Array.from({ length: B }, (_, i) => 1000 - 7 * (i % 5));
      const rewards = Float32Array.from(groupOf, (g) => g * 0.003 - 0.2);
      const c: Case = withExtras(r, { rewards, groupOf, mask: makeMask(r, B, 6, 0), T: 6, taskOf: makeTasks(r, groupOf, 2) }, 'mixed');
      c.columns = Float32Array.from({ length: B * c.K! }, (_, j) => rewards[Math.floor(j / c.K!)] * (1 + (j % c.K!)));
      c.baseline = rewards;
      const out = check('equal', c, method, device, seed);
      expect(Array.from(out.advantages.toArraySync()).every((x) => x === 0), `${method} equal rewards (seed ${seed})`).toBe(true);
      expect(Array.from(out.informative.toArraySync()).slice(0, 5)).toEqual([0, 0, 0, 0, 0]);
    }
    // Groups of one: mean 0 (std / var 1), as verl.
    const single: Case = withExtras(r, { rewards: Float32Array.from([0.5, -2, 3]), groupOf: Int32Array.from([0, 1, 2]), consecutive: 1, mask: makeMask(r, 3, 4, 0), T: 4 }, 'mixed');
    const grpo = check('single', single, 'grpo', device, seed);
    expectClose('single grpo', grpo.advantages.toArraySync(), [0.5 / (1 + 1e-6), -2 / (1 + 1e-6), 3 / (1 + 1e-6)], TOL, seed);
    expect(Array.from(check('single', single, 'drgrpo', device, seed).advantages.toArraySync())).toEqual([0.5, -2, 3]);
    expect(Array.from(check('single', single, 'rloo', device, seed).advantages.toArraySync())).toEqual([0.5, -2, 3]);
    expect(Array.from(check('single', single, 'opo', device, seed).advantages.toArraySync())).toEqual([0.5, -2, 3]);
    for (const method of ['tmn-reweight', 'gdpo', 'gpg', 'remax', 'reinforce++'] as RefMethod[]) check('single', single, method, device, seed);
    // eps: a tiny spread is divided by std + eps, not std alone.
    const tiny: Case = { rewards: Float32Array.from([1, 1 + 2 ** -20]), groupOf: Int32Array.from([0, 0]), consecutive: 2 };
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
    const emptyIds = rlk.groupAdvantages(keep(rlk.tensor(new Float32Array(0), { device })), { groupIds: keep(rlk.tensor(new Int32Array(0), { device })), method: 'grpo' });
    expect(emptyIds.advantages.shape).toEqual([0]);
    expect(emptyIds.informative.shape).toEqual([0]);
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
        const variants: Array<[Partial<rlk.GroupAdvantagesOptions>, RewardKind, IdKind]> = [
          [{}, 'mixed', 'hash'],
          [{}, 'offset', 'negative'],
        ];
        if (method === 'tmn-reweight') variants.push([{ reweight: false }, 'mixed', 'gaps']);
        if (method === 'grpo') variants.push([{ scale: 'batch' }, 'mixed', 'dense'], [{ scale: 'none' }, 'offset', 'hash']);
        if (method === 'grpo-passk') variants.push([{ scale: 'none' }, 'binary', 'hash']);
        for (const [extra, kind, ids] of variants) {
          // 'offset' rewards (50 + 0.1 N(0, 1)) have a spread small beside their mean.
          const c = idsCase(r, 500, 16, kind, ids, minSizeOf(method));
          const B = c.rewards.length;
          // Rows dealt to ranks at random: groups are split across ranks. The single-process batch is the ranks'
          // rows laid end to end in rank order (whose numbering of groups the cross-rank form reproduces).
          const rankOf = Array.from({ length: B }, () => Math.floor(r() * R));
          const order = Array.from({ length: R }, (_, k) => rankOf.flatMap((q, i) => (q === k ? [i] : [])));
          const pick = (rows: number[]): Case => {
            const T = c.T!;
            const K = c.K!;
            const g = c.groupOf;
            return {
              rewards: Float32Array.from(rows, (i) => c.rewards[i]),
              columns: Float32Array.from(rows.flatMap((i) => Array.from(c.columns!.subarray(i * K, (i + 1) * K)))),
              K,
              weights: c.weights,
              baseline: Float32Array.from(rows, (i) => c.baseline![i]),
              groupOf: g instanceof BigInt64Array ? BigInt64Array.from(rows, (i) => g[i]) : Int32Array.from(rows, (i) => g[i]),
              taskOf: c.taskOf instanceof BigInt64Array ? BigInt64Array.from(rows, (i) => (c.taskOf as BigInt64Array)[i]) : Int32Array.from(rows, (i) => (c.taskOf as Int32Array)[i]),
              mask: Uint8Array.from(rows.flatMap((i) => Array.from(c.mask!.subarray(i * T, (i + 1) * T)))),
              T,
            };
          };
          const whole = pick(order.flat());
          const numGroups = numberGroups(whole.groupOf).length + 5;
          const single = rlk.groupAdvantages(rewardsOf(whole, method, device), { ...optionsOf(whole, method, device, extra), numGroups });
          const wholeAdv = keep(single.advantages).toArraySync();
          const wholeInf = keep(single.informative).toArraySync();
          const ref = refOf(whole, method, { ...(extra as Partial<RefOptions>), numGroups });
          const ranks = order.map((rows) => {
            const local = pick(rows);
            return { rows, rewards: rewardsOf(local, method, device), opts: { ...optionsOf(local, method, device, extra), numGroups } };
          });
          const rounds = rlk.groupAdvantagesRounds({ method, ...extra });
          const p1 = ranks.map((k) => keep(rlk.groupAdvantagesPartials(k.rewards, k.opts)));
          const s1 = keep(rlk.combineGroupAdvantagesPartials(p1));
          let s2: rlk.Tensor<'int64'> | undefined;
          if (rounds === 2) {
            const p2 = ranks.map((k) => keep(rlk.groupAdvantagesPartials(k.rewards, k.opts, s1)));
            // The all-gather form: one [R, K, W] tensor.
            const stacked = new BigInt64Array(p2.reduce((a, t) => a + t.numel, 0));
            let off = 0;
            for (const t of p2) {
              stacked.set(t.toArraySync() as BigInt64Array, off);
              off += t.numel;
            }
            s2 = keep(rlk.combineGroupAdvantagesPartials(keep(rlk.tensor(stacked, { shape: [R, ...p2[0].shape], device }))));
            expect(Array.from(s2.toArraySync())).toEqual(Array.from(keep(rlk.combineGroupAdvantagesPartials(p2)).toArraySync()));
          }
          const got = new Float32Array(B);
          let at = 0;
          ranks.forEach((k, rank) => {
            const res = rlk.finalizeGroupAdvantages(k.rewards, { ...k.opts, rank }, s1, s2);
            const a = keep(res.advantages).toArraySync();
            got.set(a, at);
            at += a.length;
            expect(Array.from(keep(res.informative).toArraySync()), `R=${R} ${method} informative (seed ${seed})`).toEqual(Array.from(wholeInf));
          });
          const what = `R=${R} ${method} ${kind} ${ids} ${JSON.stringify(extra)}`;
          expect(Array.from(wholeInf), `${what} informative vs reference (seed ${seed})`).toEqual(Array.from(ref.informative));
          expectClose(`${what} vs single process`, got, wholeAdv, TOL, seed);
          expectClose(`${what} vs reference`, got, ref.advantages, TOL, seed);
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
        const c = idsCase(r, cudaShape(20000, 2000, device), 24, 'mixed', 'hash', minSizeOf(method));
        const run = (): Float32Array => {
          const out = rlk.groupAdvantages(rewardsOf(c, method, device), optionsOf(c, method, device));
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
    check('B=65536 hashes', idsCase(r, cudaShape(65536, 4096, device), 16, 'mixed', 'hash'), 'grpo', device, seed);
  });

  test('data errors (LOSSES.md section 6 and the ids)', async () => {
    const dev = { device };
    const rewards = keep(rlk.tensor(new Float32Array([1, 2, 3, 4]), dev));
    const ids = (a: number[]) => keep(rlk.tensor(Int32Array.from(a), dev));
    const cases: Array<[rlk.GroupAdvantagesOptions, RegExp]> = [
      [{ groupIds: ids([0, 5, 1, 1]), numGroups: 2, method: 'grpo' }, /more distinct|group id|out of range/],
      [{ groupIds: ids([0, 5, 1, 1]), method: 'grpo-passk' }, /group of one|grpo-passk/],
      [{ groupSize: 2, method: 'tmn-reweight', taskIds: ids([0, 1, 0, 0]) }, /taskIds/],
      [{ groupSize: 2, method: 'reinforce++', tokenCounts: ids([1, -1, 2, 2]) }, /tokenCounts/],
      [{ groupSize: 2, method: 'gdpo', tokenCounts: ids([0, 1, 0, 0]) }, /gdpo|2 tokens/],
    ];
    for (const [opts, msg] of cases) {
      const r = opts.method === 'gdpo' ? keep(rlk.tensor(new Float32Array([1, 2, 3, 4]), { shape: [4, 1], device })) : rewards;
      if (device === 'cpu') {
        expect(() => rlk.groupAdvantages(r, opts), String(msg)).toThrow(msg);
        expect(() => rlk.groupAdvantages(r, opts)).toThrow(RangeError);
      } else {
        const out = rlk.groupAdvantages(r, opts);
        await expect(out.advantages.toArray()).rejects.toThrow(RangeError);
        out.advantages.dispose();
        out.informative.dispose();
      }
    }
  });
}

describe('groupAdvantages (cpu)', () => runDevice('cpu'));
describeCuda('groupAdvantages (cuda)', () => {
  runDevice('cuda');
  test('informative defaults to length B for groupIds on cuda (no host round trip to count the groups)', () => {
    const rewards = keep(rlk.tensor(new Float32Array([1, 2, 0, 0]), { device: 'cuda' }));
    const out = rlk.groupAdvantages(rewards, { groupIds: keep(rlk.tensor(new Int32Array([9, 9, -1, -1]), { device: 'cuda' })), method: 'grpo' });
    expect(Array.from(keep(out.informative).toArraySync())).toEqual([1, 0, 0, 0]);
    keep(out.advantages);
    expect(() => rlk.groupAdvantages(rewards, { groupIds: keep(rlk.tensor(new Int32Array([0, 1, 0, 1]))), method: 'grpo' })).toThrow(TypeError);
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
    bad(() => ga({ groupIds: ids, numGroups: 2, method: 'grpo' }), RangeError, /groupIds hold more distinct values than numGroups/);
    // Ids of any values are groups, not errors.
    for (const v of [Int32Array.from([0, 0, -1, 1, 2, 2]), Int32Array.from([0, 0, 1, 1, 2, 2 ** 31 - 1]), BigInt64Array.from([0n, 0n, 1n, 1n, 2n, -(2n ** 63n)])]) {
      const out = ga({ groupIds: keep(rlk.tensor(v)), method: 'grpo' }) as rlk.GroupAdvantagesResult;
      expect(keep(out.informative).shape).toEqual([4]);
      keep(out.advantages);
    }
    bad(() => ga({ groupIds: keep(rlk.tensor(new Float32Array(6))), method: 'grpo' }), TypeError, /groupIds must be int32 or int64, got float32/);
    bad(() => ga({ groupIds: keep(rlk.tensor(new Int32Array(5))), method: 'grpo' }), RangeError, /groupIds must have shape \[6\]/);
    bad(() => ga({ groupIds: [0, 0, 1, 1, 2, 2], method: 'grpo' }), TypeError, /groupIds must be a tensor/);
    bad(() => ga({ groupSize: 2, method: 'grpo', taskIds: ids }), TypeError, /option 'taskIds' applies only to method 'tmn-reweight'/);
    bad(() => ga({ groupSize: 2, method: 'grpo', alpha: 0.5 }), TypeError, /option 'alpha' applies only/);
    bad(() => ga({ groupSize: 2, method: 'grpo', mask }), TypeError, /option 'mask' applies only to methods 'reinforce\+\+', 'gdpo', 'opo'/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++' }), TypeError, /needs exactly one of mask and tokenCounts, got neither/);
    bad(() => ga({ groupSize: 2, method: 'opo' }), TypeError, /method 'opo' needs exactly one of mask and tokenCounts, got neither/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask, tokenCounts: ids }), TypeError, /at most one of mask and tokenCounts, got both/);
    // LOSSES.md section 6 and the other new options.
    bad(() => ga({ groupSize: 2, method: 'remax' }), TypeError, /method 'remax' needs baselineRewards/);
    bad(() => ga({ groupSize: 2, method: 'remax', baselineRewards: ids }), TypeError, /baselineRewards must be float32, got int32/);
    bad(() => ga({ groupSize: 2, method: 'remax', baselineRewards: keep(rlk.tensor(new Float32Array(5))) }), RangeError, /baselineRewards must have shape \[6\]/);
    bad(() => ga({ groupSize: 2, method: 'grpo', baselineRewards: rewards }), TypeError, /option 'baselineRewards' applies only to method 'remax'/);
    const cols2 = keep(rlk.tensor(new Float32Array(12), { shape: [6, 2] }));
    bad(() => ga({ groupSize: 2, method: 'gdpo', rewardWeights: [1, 2, 3] }, cols2), RangeError, /rewardWeights must have length K = 2 \(the reward columns\), got 3/);
    bad(() => ga({ groupSize: 2, method: 'gdpo', rewardWeights: [1] }, cols2), RangeError, /rewardWeights must have length K = 2/);
    bad(() => ga({ groupSize: 2, method: 'gdpo', rewardWeights: [1, NaN] }, cols2), RangeError, /rewardWeights\[1\] must be a finite number/);
    bad(() => ga({ groupSize: 2, method: 'gdpo', rewardWeights: [1, '2'] }, cols2), TypeError, /rewardWeights\[1\] must be a number/);
    bad(() => ga({ groupSize: 2, method: 'gdpo', rewardWeights: 2 }, cols2), TypeError, /rewardWeights must be an array of numbers/);
    bad(() => ga({ groupSize: 2, method: 'grpo', rewardWeights: [1] }), TypeError, /option 'rewardWeights' applies only to method 'gdpo'/);
    bad(() => ga({ groupSize: 2, method: 'gdpo' }), RangeError, /rewards must have shape \[B, K\] with K >= 1 for method 'gdpo', got \[6\]/);
    bad(() => ga({ groupSize: 2, method: 'grpo' }, cols2), RangeError, /rewards must have shape \[B\] for method 'grpo', got \[6, 2\]/);
    bad(() => ga({ groupSize: 2, method: 'grpo', scale: 'rows' }), RangeError, /scale must be one of 'group', 'batch', 'none', got "rows"/);
    bad(() => ga({ groupSize: 2, method: 'grpo', scale: 1 }), TypeError, /scale must be a string/);
    bad(() => ga({ groupSize: 2, method: 'grpo-passk', scale: 'batch' }), RangeError, /scale must be 'group' or 'none' for method 'grpo-passk'/);
    bad(() => ga({ groupSize: 2, method: 'rloo', scale: 'none' }), TypeError, /option 'scale' applies only to methods 'grpo', 'grpo-passk'/);
    bad(() => ga({ groupSize: 1, method: 'grpo-passk' }), RangeError, /grpo-passk needs groups of at least 2 rows, got a group of one/);
    bad(() => ga({ groupSize: 2, method: 'grpo', rank: 1 }), TypeError, /option 'rank' applies only to finalizeGroupAdvantages/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Float32Array(12), { shape: [6, 2] })) }), TypeError, /mask must be uint8, got float32/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Uint8Array(12), { shape: [4, 3] })) }), RangeError, /mask must have shape \[B = 6, T\], got \[4, 3\]/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', mask: keep(rlk.tensor(new Uint8Array(6))) }), RangeError, /mask must have shape/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', tokenCounts: keep(rlk.tensor(new Int32Array([1, 2, -3, 1, 1, 1]))) }), RangeError, /tokenCounts must be >= 0/);
    bad(() => ga({ groupSize: 2, method: 'reinforce++', tokenCounts: keep(rlk.tensor(new Float32Array(6))) }), TypeError, /tokenCounts must be int32 or int64/);
    bad(() => ga({ groupSize: 2, method: 'tmn-reweight', taskIds: keep(rlk.tensor(new Int32Array([0, 1, 0, 0, 0, 0]))) }), RangeError, /taskIds must be constant within a group/);
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
    expect(p1.shape).toEqual([3, 14]);
    expect(p1.dtype).toBe('int64');
    bad(() => rlk.groupAdvantagesPartials(rewards, { groupIds: ids, method: 'grpo' }), TypeError, /numGroups is required in the cross-rank form/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { groupSize: 2, method: 'grpo' }), TypeError, /groupSize is not supported in the cross-rank form/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { ...o, numGroups: 2 }), RangeError, /more distinct values than numGroups/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { ...o, method: 'grpo' }, p1), TypeError, /has no second round/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(new BigInt64Array(28), { shape: [2, 14] }))), RangeError, /stats must have shape \[3, 14\]/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(new Float32Array(42), { shape: [3, 14] }))), TypeError, /stats must be int64/);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, [1, 2] as unknown as rlk.Tensor), TypeError, /stats must be a tensor/);
    bad(() => rlk.groupAdvantagesPartials(rewards, { ...o, rank: 0 }), TypeError, /option 'rank' applies only to finalizeGroupAdvantages/);
    // Forged records: a negative count, an id twice.
    const forged = new BigInt64Array(42);
    forged.set([0n, 0n, 1n, -2n], 0);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(forged, { shape: [3, 14] }))), RangeError, /negative count/);
    const twice = new BigInt64Array(42);
    twice.set([0n, 0n, 1n, 2n], 0);
    twice.set([0n, 0n, 1n, 2n], 14);
    bad(() => rlk.groupAdvantagesPartials(rewards, o, keep(rlk.tensor(twice, { shape: [3, 14] }))), RangeError, /a group id twice/);
    bad(() => rlk.combineGroupAdvantagesPartials([]), RangeError, /at least one tensor/);
    bad(() => rlk.combineGroupAdvantagesPartials([p1, 3 as unknown as rlk.Tensor]), TypeError, /partials\[1\] must be a tensor/);
    bad(() => rlk.combineGroupAdvantagesPartials([p1, keep(rlk.tensor(new BigInt64Array(28), { shape: [2, 14] }))]), RangeError, /partials\[1\] must have shape \[3, 14\]/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new BigInt64Array(18), { shape: [3, 6] }))]), RangeError, /partials\[0\] must have shape \[K, W\]/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new BigInt64Array(0), { shape: [0, 3, 14] }))]), RangeError, /no rank/);
    bad(() => rlk.combineGroupAdvantagesPartials([keep(rlk.tensor(new Float32Array(42), { shape: [3, 14] }))]), TypeError, /partials\[0\] must be int64/);
    // Two ranks that disagree on a group's task; more groups over the ranks than rows.
    const other = keep(rlk.groupAdvantagesPartials(rewards, { ...o, taskIds: keep(rlk.tensor(new Int32Array([1, 1, 1, 1, 1, 1]))) }));
    bad(() => rlk.combineGroupAdvantagesPartials([p1, other]), RangeError, /disagree on a group's task/);
    const elsewhere = keep(rlk.groupAdvantagesPartials(rewards, { ...o, groupIds: keep(rlk.tensor(new Int32Array([7, 7, 8, 8, 9, 9]))) }));
    bad(() => rlk.combineGroupAdvantagesPartials([p1, elsewhere]), RangeError, /more distinct groups than rows/);
    const s1 = keep(rlk.combineGroupAdvantagesPartials([p1]));
    bad(() => rlk.finalizeGroupAdvantages(rewards, o, s1), TypeError, /stats2 .* is required/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo' }, s1, s1), TypeError, /stats2 must be omitted/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, o, undefined as unknown as rlk.Tensor), TypeError, /stats must be a tensor/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo', groupIds: keep(rlk.tensor(new Int32Array([0, 0, 1, 1, 2, 5]))) }, s1), RangeError, /no record of stats/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo-passk' }, s1), TypeError, /rank .* is required for method 'grpo-passk'/);
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo', rank: -1 }, s1), RangeError, /rank must be an integer >= 0/);
    const gone = rlk.tensor(new BigInt64Array(42), { shape: [3, 14] });
    gone.dispose();
    bad(() => rlk.finalizeGroupAdvantages(rewards, { ...o, method: 'grpo' }, gone), rlk.DisposedError, /stats was disposed/);
    bad(() => rlk.combineGroupAdvantagesPartials([gone]), rlk.DisposedError, /partials\[0\] was disposed/);
    bad(() => rlk.groupAdvantagesRounds({ method: 'nope' as 'grpo' }), RangeError, /method must be one of/);
    expect(rlk.groupAdvantagesRounds({ method: 'grpo' })).toBe(1);
    expect(rlk.groupAdvantagesRounds({ method: 'tmn-reweight', reweight: false })).toBe(1);
    expect(rlk.groupAdvantagesRounds({ method: 'reinforce++' })).toBe(2);
    expect(rlk.groupAdvantagesRounds({ method: 'gdpo' })).toBe(2);
    expect(rlk.groupAdvantagesRounds({ method: 'grpo-passk' })).toBe(1);
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
      const a: unknown[] = [h(rewards), h(ids), 0, 3, null, 0, null, null, 1e-6, 0.8, 1, true, 0, null, null, 0];
      for (const [k, v] of Object.entries(over)) a[Number(k)] = v;
      return a;
    };
    bad(() => n.groupAdvantages(...args({ 1: null })), TypeError, /exactly one of groupIds and groupSize/);
    bad(() => n.groupAdvantages(...args({ 3: 2 })), RangeError, /more distinct values than numGroups/);
    bad(() => n.groupAdvantages(...args({ 5: 10 })), RangeError, /method must be an integer/);
    bad(() => n.groupAdvantages(...args({ 1: h(mask) })), TypeError, /groupIds must be int32 or int64/);
    bad(() => n.groupAdvantages(...args({ 3: 1e12 })), RangeError, /numGroups/);
    bad(() => n.groupAdvantages(...args({ 5: 3 })), TypeError, /needs one of mask and tokenCounts/);
    bad(() => n.groupAdvantages(...args({ 5: 3, 6: h(keep(rlk.tensor(new Uint8Array(5)))) })), RangeError, /mask must have shape/);
    bad(() => n.groupAdvantages(...args({ 8: NaN })), RangeError, /eps/);
    bad(() => n.groupAdvantages(...args({ 12: 3 })), RangeError, /scale/);
    bad(() => n.groupAdvantages(...args({ 5: 2, 12: 1 })), RangeError, /scale applies only/);
    bad(() => n.groupAdvantages(...args({ 13: new Float64Array(1) })), TypeError, /rewardWeights applies only to method 'gdpo'/);
    bad(() => n.groupAdvantages(...args({ 5: 5, 0: h(keep(rlk.tensor(new Float32Array(12), { shape: [6, 2] }))), 13: new Float64Array(3) })), RangeError, /rewardWeights must have length K = 2/);
    bad(() => n.groupAdvantages(...args({ 5: 5, 0: h(keep(rlk.tensor(new Float32Array(12), { shape: [6, 2] }))), 13: [1, 2] })), TypeError, /rewardWeights must be a Float64Array/);
    bad(() => n.groupAdvantages(...args({ 5: 5 })), RangeError, /rewards must have shape \[B, K\]/);
    bad(() => n.groupAdvantages(...args({ 5: 8 })), TypeError, /baselineRewards is required for method 'remax'/);
    bad(() => n.groupAdvantages(...args({ 5: 8, 14: h(keep(rlk.tensor(new Float32Array(2)))) })), RangeError, /baselineRewards must have shape/);
    bad(() => n.groupAdvantages(...args({ 15: -1 })), RangeError, /rank/);
    bad(() => n.finalizeGroupAdvantages(...args({}), h(keep(rlk.tensor(new BigInt64Array(14), { shape: [1, 14] })))), RangeError, /stats must have shape \[3, 14\]/);
    bad(() => n.combineGroupAdvantagesPartials('x'), TypeError, /partials must be an array/);
    bad(() => n.broadcastAdvantages(h(rewards), h(keep(rlk.tensor(new Uint8Array(4), { shape: [2, 2] })))), RangeError, /mask must have shape/);
  });
});
