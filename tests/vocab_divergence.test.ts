// vocabDivergence against float64 references (tests/reference/vocab_divergence.ts),
// on fresh random inputs (seed in every failure), every kind, several betas,
// temperatures, mixed dtypes, masks, edge cases, each CPU ISA path, CUDA.
import { spawnSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import * as rlk from '../src/index.js';
import { native, nativePath } from '../src/native.js';
import { TOLERANCE, cudaShape, describeCuda, expectClose, freshSeed, randn, rng } from './helpers.js';
import { roundArray } from './reference/dtype.js';
import { divergenceRow, vocabDivergenceRef, type Kind } from './reference/vocab_divergence.js';

type FDType = 'float32' | 'bfloat16' | 'float16';

/**
 * Relative-error tolerance for a gradient written in `dtype` (compared with the float64 gradient rounded the same
 * way). float32: 3e-5: in tiny rows of distant distributions, terms such as beta p_t (y_t - KL(p_t || M)) subtract the
 * row's fp32 value (relative error ~1e-7) from a log-ratio of similar size; typical errors are ~1e-7 (see the V =
 * 151936 cases). 16-bit: one ulp of the output format (the two roundings can straddle a rounding boundary).
 */
const GRAD_TOL: Record<FDType, number> = { float32: 3e-5, bfloat16: 2 ** -7, float16: 2 ** -10 };

const KIND_CASES: Array<{ kind: Kind; beta?: number }> = [
  { kind: 'forward-kl' },
  { kind: 'reverse-kl' },
  { kind: 'jsd', beta: 0 },
  { kind: 'jsd', beta: 0.3 },
  { kind: 'jsd', beta: 0.5 },
  { kind: 'jsd', beta: 1 },
];

interface RunOut {
  values: Float32Array;
  gs: Float32Array;
  gt?: Float32Array;
  sIn: Float32Array; // the values the kernel read (after rounding to the dtype)
  tIn: Float32Array;
}

/**
 * Gradients of close distributions (p_s - p_t ~ 1e-2 p): the fp32 normalisers' rounding (sums
 * of exp, DESIGN 4 allows fp32 reductions) shifts log(S_t / S_s) by a few 2^-24, which moves a
 * row's gradient by (that shift) * p_s: relative to |p_s - p_t| ~ 1e-2 p, a few 1e-7 of shift is
 * 1e-5 of error (the AVX-512 path reached 1.6e-5 in 151 runs against a tolerance of 2e-5).
 * That component is fitted per row and must stay below 16 * 2^-24 (a wrong normaliser is far
 * above); the rest of the difference must be within `tol` of the array, as before.
 */
function expectCloseUpToNormaliser(what: string, got: ArrayLike<number>, want: ArrayLike<number>, sIn: ArrayLike<number>,
  rows: number, V: number, tol: number, seed: number): void {
  const adjusted = Float64Array.from(got);
  for (let r = 0; r < rows; r++) {
    const off = r * V;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, sIn[off + j]);
    let z = 0;
    for (let j = 0; j < V; j++) z += Math.exp(sIn[off + j] - m);
    let num = 0;
    let den = 0;
    for (let j = 0; j < V; j++) {
      const p = Math.exp(sIn[off + j] - m) / z;
      num += (got[off + j] - want[off + j]) * p;
      den += p * p;
    }
    const shift = den > 0 ? num / den : 0;
    if (!(Math.abs(shift) <= 16 * 2 ** -24)) {
      throw new Error(`${what}: row ${r} is off by ${shift} * p_s, more than fp32 normalisers explain (seed ${seed})`);
    }
    for (let j = 0; j < V; j++) adjusted[off + j] -= shift * (Math.exp(sIn[off + j] - m) / z);
  }
  expectClose(what, adjusted, want, tol, seed);
}

async function run(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  shape: number[],
  sd: FDType,
  td: FDType,
  opts: Omit<rlk.VocabDivergenceOptions, 'mask' | 'targets' | 'grad'> & { mask?: Uint8Array; targets?: Int32Array },
  device: rlk.Device = 'cpu',
): Promise<RunOut> {
  return rlk.scope(async () => {
    const S = rlk.tensor(Float32Array.from(s), { shape, dtype: sd, device });
    const T = rlk.tensor(Float32Array.from(t), { shape, dtype: td, device });
    const rowShape = shape.slice(0, -1);
    const mask = opts.mask ? rlk.tensor(opts.mask, { shape: rowShape, dtype: 'uint8', device }) : undefined;
    const targets = opts.targets ? rlk.tensor(opts.targets, { shape: rowShape, dtype: 'int32', device }) : undefined;
    const r = rlk.vocabDivergence(S, T, { ...opts, mask, targets });
    expect(r.values.shape).toEqual(rowShape);
    expect(r.values.dtype).toBe('float32');
    expect(r.gradStudent.shape).toEqual(shape);
    expect(r.gradStudent.dtype).toBe(sd);
    if (opts.teacherGrad) {
      expect(r.gradTeacher!.dtype).toBe(td);
      expect(r.gradTeacher!.shape).toEqual(shape);
    } else {
      expect(r.gradTeacher).toBeUndefined();
    }
    return {
      values: (await r.values.toArray()) as Float32Array,
      gs: (await r.gradStudent.toArray()) as Float32Array,
      gt: r.gradTeacher ? ((await r.gradTeacher.toArray()) as Float32Array) : undefined,
      sIn: (await S.toArray()) as Float32Array,
      tIn: (await T.toArray()) as Float32Array,
    };
  });
}

/** The values alone (`grad: false`): no gradient tensor comes back. */
async function runValues(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  shape: number[],
  sd: FDType,
  td: FDType,
  opts: Omit<rlk.VocabDivergenceOptions, 'mask' | 'targets' | 'grad' | 'teacherGrad'> & { mask?: Uint8Array; targets?: Int32Array },
  device: rlk.Device = 'cpu',
): Promise<{ values: Float32Array; sIn: Float32Array; tIn: Float32Array }> {
  return rlk.scope(async () => {
    const S = rlk.tensor(Float32Array.from(s), { shape, dtype: sd, device });
    const T = rlk.tensor(Float32Array.from(t), { shape, dtype: td, device });
    const rowShape = shape.slice(0, -1);
    const mask = opts.mask ? rlk.tensor(opts.mask, { shape: rowShape, dtype: 'uint8', device }) : undefined;
    const targets = opts.targets ? rlk.tensor(opts.targets, { shape: rowShape, dtype: 'int32', device }) : undefined;
    const r = rlk.vocabDivergence(S, T, { ...opts, mask, targets, grad: false });
    expect(Object.keys(r)).toEqual(['values']);
    expect(r.values.shape).toEqual(rowShape);
    expect(r.values.dtype).toBe('float32');
    return {
      values: (await r.values.toArray()) as Float32Array,
      sIn: (await S.toArray()) as Float32Array,
      tIn: (await T.toArray()) as Float32Array,
    };
  });
}

/**
 * The values-only path (`grad: false`, its own code: it reuses pass 1's exps) on the same inputs: the same
 * non-finite entries as the values that come with the gradient, and the finite ones within the divergence
 * tolerance of float64.
 */
async function expectValuesOnly(what: string, s: ArrayLike<number>, t: ArrayLike<number>, shape: number[], sd: FDType, td: FDType,
  opts: { kind: Kind; beta?: number; temperature?: number }, withGrad: ArrayLike<number>, ref: ArrayLike<number>, seed: number): Promise<void> {
  const v = await runValues(s, t, shape, sd, td, opts);
  const fin: number[] = [];
  const finRef: number[] = [];
  for (let i = 0; i < v.values.length; i++) {
    if (Number.isFinite(withGrad[i])) {
      fin.push(v.values[i]);
      finRef.push(ref[i]);
    } else if (!Object.is(v.values[i], withGrad[i])) {
      throw new Error(`${what} (grad: false): row ${i} gives ${v.values[i]}, with the gradient ${withGrad[i]} (seed ${seed})`);
    }
  }
  expectClose(`${what} values (grad: false)`, fin, finRef, TOLERANCE.divergence, seed);
}

function checkAgainstRef(
  what: string,
  out: RunOut,
  rows: number,
  V: number,
  sd: FDType,
  td: FDType,
  kind: Kind,
  beta: number | undefined,
  temperature: number | undefined,
  seed: number,
  ignored?: boolean[],
): void {
  const ref = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta, temperature, ignored });
  expectClose(`${what} values`, out.values, ref.values, TOLERANCE.divergence, seed);
  expectClose(`${what} gradStudent`, out.gs, roundArray(ref.gradStudent, sd), GRAD_TOL[sd], seed);
  if (out.gt) expectClose(`${what} gradTeacher`, out.gt, roundArray(ref.gradTeacher, td), GRAD_TOL[td], seed);
}

async function accuracySweep(device: rlk.Device): Promise<void> {
  const seed = freshSeed();
  const r = rng(seed);
  const shapes = [[1, 1], [1, 7], [5, 37], [3, 1003], [2, 3, 17]];
  const dtypePairs: Array<[FDType, FDType]> = [
    ['float32', 'float32'],
    ['bfloat16', 'float32'],
    ['float16', 'bfloat16'],
    ['bfloat16', 'bfloat16'],
    ['float32', 'float16'],
  ];
  for (const shape of shapes) {
    const V = shape[shape.length - 1];
    const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
    for (const [sd, td] of dtypePairs) {
      const s = randn(r, rows * V, 2);
      const t = randn(r, rows * V, 2);
      for (const { kind, beta } of KIND_CASES) {
        for (const temperature of [1, 0.7]) {
          const what = `${device} [${shape}] ${sd}/${td} ${kind} beta=${beta} T=${temperature}`;
          const out = await run(s, t, shape, sd, td, { kind, beta, temperature, teacherGrad: true }, device);
          checkAgainstRef(what, out, rows, V, sd, td, kind, beta, temperature, seed);
          // Without the teacher gradient (forward KL then writes its gradient in the value pass).
          const out2 = await run(s, t, shape, sd, td, { kind, beta, temperature }, device);
          // (the value pass may round differently: FMA contraction depends on what is fused)
          expectClose(`${what} values (no teacherGrad)`, out2.values, out.values, 1e-6, seed);
          expectClose(`${what} gradStudent (no teacherGrad)`, out2.gs, out.gs, sd === 'float32' ? 1e-6 : 4e-3, seed);
          // The values alone (grad: false): against float64, and masked rows give 0.
          const mask = Uint8Array.from({ length: rows }, (_, i) => (rows > 1 && i === 1 ? 0 : 1));
          const out3 = await runValues(s, t, shape, sd, td, { kind, beta, temperature, mask }, device);
          const ignored = Array.from(mask, (m) => m === 0);
          const ref3 = vocabDivergenceRef(out3.sIn, out3.tIn, rows, V, { kind, beta, temperature, ignored });
          expectClose(`${what} values (grad: false)`, out3.values, ref3.values, TOLERANCE.divergence, seed);
          for (let i = 0; i < rows; i++) if (ignored[i]) expect(out3.values[i]).toBe(0);
        }
      }
    }
  }
}

describe('vocabDivergence (cpu)', () => {
  test('values and gradients match float64 for every kind, beta, temperature and dtype pair', async () => {
    await accuracySweep('cpu');
  });

  test('large vocabularies: V = 151936 and 262144 (few rows)', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const cases: Array<{ rows: number; V: number; sd: FDType; td: FDType; kind: Kind; beta?: number; T: number }> = [
      { rows: 2, V: 151936, sd: 'float32', td: 'float32', kind: 'forward-kl', T: 1 },
      { rows: 2, V: 151936, sd: 'bfloat16', td: 'float32', kind: 'jsd', beta: 0.3, T: 0.7 },
      { rows: 1, V: 151936, sd: 'float16', td: 'bfloat16', kind: 'reverse-kl', T: 1.3 },
      { rows: 1, V: 262144, sd: 'float32', td: 'bfloat16', kind: 'forward-kl', T: 1 },
    ];
    for (const c of cases) {
      const s = randn(r, c.rows * c.V, 3);
      const t = randn(r, c.rows * c.V, 3);
      const out = await run(s, t, [c.rows, c.V], c.sd, c.td, { kind: c.kind, beta: c.beta, temperature: c.T, teacherGrad: true });
      checkAgainstRef(`V=${c.V} ${c.sd}/${c.td} ${c.kind}`, out, c.rows, c.V, c.sd, c.td, c.kind, c.beta, c.T, seed);
      const ref = vocabDivergenceRef(out.sIn, out.tIn, c.rows, c.V, { kind: c.kind, beta: c.beta, temperature: c.T });
      await expectValuesOnly(`V=${c.V} ${c.kind}`, s, t, [c.rows, c.V], c.sd, c.td, { kind: c.kind, beta: c.beta, temperature: c.T }, out.values, ref.values, seed);
    }
  });

  test('close distributions keep their relative accuracy (cancellation-free values and gradients)', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 4;
    const V = 5000;
    const t = randn(r, rows * V, 2);
    const noise = randn(r, rows * V, 0.01);
    const s = t.map((v, i) => v + noise[i]);
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, teacherGrad: true });
      const ref = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta });
      // The divergences are ~1e-4 here: a log-sum-exp difference would lose ~3 digits.
      for (const v of ref.values) expect(v).toBeLessThan(1e-3);
      expectClose(`close ${kind} ${beta} values`, out.values, ref.values, TOLERANCE.divergence, seed);
      await expectValuesOnly(`close ${kind} ${beta}`, s, t, [rows, V], 'float32', 'float32', { kind, beta }, out.values, ref.values, seed);
      expectCloseUpToNormaliser(`close ${kind} ${beta} gradStudent`, out.gs, ref.gradStudent, out.sIn, rows, V, 2e-5, seed);
      expectCloseUpToNormaliser(`close ${kind} ${beta} gradTeacher`, out.gt!, ref.gradTeacher, out.sIn, rows, V, 2e-5, seed);
    }
  });

  test('mask and ignoreIndex: ignored rows give exactly 0 and a zero gradient, others are unchanged', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 9;
    const V = 53;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    const mask = Uint8Array.from({ length: rows }, () => (r() < 0.35 ? 0 : 1 + Math.floor(r() * 3)));
    const targets = Int32Array.from({ length: rows }, () => (r() < 0.35 ? -7 : Math.floor(r() * V)));
    mask[0] = 0;
    targets[1] = -7;
    mask[2] = 1;
    targets[2] = 3;
    const ignored = Array.from({ length: rows }, (_, i) => mask[i] === 0 || targets[i] === -7);
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [rows, V], 'float32', 'bfloat16', { kind, beta, mask, targets, ignoreIndex: -7, teacherGrad: true });
      checkAgainstRef(`masked ${kind}`, out, rows, V, 'float32', 'bfloat16', kind, beta, 1, seed, ignored);
      for (let i = 0; i < rows; i++) {
        if (!ignored[i]) continue;
        expect(out.values[i]).toBe(0);
        for (let j = 0; j < V; j++) {
          expect(out.gs[i * V + j]).toBe(0);
          expect(out.gt![i * V + j]).toBe(0);
        }
      }
      // mask alone, and targets with the default ignoreIndex (-100)
      const onlyMask = await run(s, t, [rows, V], 'float32', 'bfloat16', { kind, beta, mask });
      const refMask = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta, ignored: Array.from(mask, (m) => m === 0) });
      expectClose(`mask-only ${kind}`, onlyMask.values, refMask.values, TOLERANCE.divergence, seed);
      const t100 = targets.map((v) => (v === -7 ? -100 : v));
      const onlyTargets = await run(s, t, [rows, V], 'float32', 'bfloat16', { kind, beta, targets: t100 });
      const refT = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta, ignored: Array.from(t100, (v) => v === -100) });
      expectClose(`targets-only ${kind}`, onlyTargets.values, refT.values, TOLERANCE.divergence, seed);
    }
  });

  test('identical logits give exactly 0 and a zero gradient; divergences are >= 0', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const dtype of ['float32', 'bfloat16', 'float16'] as FDType[]) {
      const x = randn(r, 3 * 211, 4);
      for (const { kind, beta } of KIND_CASES) {
        const out = await run(x, x, [3, 211], dtype, dtype, { kind, beta, temperature: 0.8, teacherGrad: true });
        for (const v of out.values) expect(v).toBe(0);
        for (const g of out.gs) expect(g).toBe(0);
        for (const g of out.gt!) expect(g).toBe(0);
      }
    }
    const s = randn(r, 40 * 33, 3);
    const t = randn(r, 40 * 33, 3);
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [40, 33], 'float32', 'float32', { kind, beta });
      for (const v of out.values) expect(v).toBeGreaterThanOrEqual(0);
    }
  });

  test('-inf logits: masked vocabulary, one-sided zeros, +inf where the math says so; no NaN', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 29;
    const rows = 4;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    // row 0: the same 5 tokens masked on both sides; row 1: teacher-only -inf (p_t = 0, p_s > 0);
    // row 2: student-only -inf (p_s = 0, p_t > 0); row 3: all but one token masked on both sides.
    for (const j of [0, 3, 4, 17, 28]) s[j] = t[j] = -Infinity;
    for (const j of [2, 9]) t[V + j] = -Infinity;
    for (const j of [5, 6]) s[2 * V + j] = -Infinity;
    for (let j = 0; j < V; j++) if (j !== 11) s[3 * V + j] = t[3 * V + j] = -Infinity;
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, temperature: 0.9, teacherGrad: true });
      const ref = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta, temperature: 0.9 });
      const eff = kind === 'jsd' && beta === 0 ? 'forward-kl' : kind === 'jsd' && beta === 1 ? 'reverse-kl' : kind;
      // Row 1 under reverse KL and row 2 under forward KL are +inf; all others finite.
      const infRow = eff === 'reverse-kl' ? 1 : eff === 'forward-kl' ? 2 : -1;
      await expectValuesOnly(`-inf ${kind} ${beta}`, s, t, [rows, V], 'float32', 'float32', { kind, beta, temperature: 0.9 }, out.values, ref.values, seed);
      for (let i = 0; i < rows; i++) {
        if (i === infRow) {
          expect(out.values[i]).toBe(Infinity);
          expect(ref.values[i]).toBe(Infinity);
          continue;
        }
        expect(Number.isFinite(out.values[i])).toBe(true);
        const sl = (a: ArrayLike<number>) => Array.prototype.slice.call(a, i * V, (i + 1) * V) as number[];
        expectClose(`-inf ${kind} ${beta} row ${i} value`, [out.values[i]], [ref.values[i]], TOLERANCE.divergence, seed);
        expectClose(`-inf ${kind} ${beta} row ${i} gradStudent`, sl(out.gs), sl(ref.gradStudent), TOLERANCE.divergence, seed);
        expectClose(`-inf ${kind} ${beta} row ${i} gradTeacher`, sl(out.gt!), sl(ref.gradTeacher), TOLERANCE.divergence, seed);
      }
      // Masked tokens on both sides contribute nothing: the same as the row without them.
      const keep = [...Array(V).keys()].filter((j) => ![0, 3, 4, 17, 28].includes(j));
      const reduced = divergenceRow(keep.map((j) => out.sIn[j]), keep.map((j) => out.tIn[j]), kind, beta ?? 0.5, 0.9);
      expectClose(`-inf ${kind} reduced row`, [out.values[0]], [reduced.value], TOLERANCE.divergence, seed);
      expect(Math.abs(out.values[3])).toBeLessThan(1e-6); // one token each side: p_t = p_s = 1
      for (const j of [0, 3, 4, 17, 28]) {
        expect(out.gs[j]).toBe(0);
        expect(out.gt![j]).toBe(0);
      }
    }
  });

  test('wide rows: -inf logits and spans beyond 87 / T inside full vector groups (the exps\' clamp choice)', async () => {
    // Pass 1 drops the exps' bottom clamp in a block whose (min - max) / T is
    // >= -86.6 (-125 in base 2, the exps') and keeps it elsewhere; these rows
    // put each case inside blocks of 1024 (V = 2500: two full blocks and a short one).
    const seed = freshSeed();
    const r = rng(seed);
    const V = 2500;
    const rows = 6;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    for (let j = 100; j < 900; j += 7) t[j] = -Infinity; // row 0: a masked teacher vocabulary in block 0
    for (let j = 1100; j < 1900; j += 11) s[V + j] = -Infinity; // row 1: masked student tokens in block 1
    for (let j = 0; j < V; j += 13) s[2 * V + j] -= 150; // row 2: finite logits 150 below the rest
    for (let j = 5; j < V; j += 17) t[3 * V + j] -= 60; // row 3: 60 below, beyond 87 at T = 0.5 only
    // Row 4: 82 below, a block span near 96 (the logits are +-7): just beyond 87, the exps' base-2
    // arguments down to about -138, where AVX2's exponent field wraps without the clamp (a clamp-free
    // threshold of -151, scalef's, fails here).
    for (let j = 2; j < V; j += 19) s[4 * V + j] -= 82;
    // Row 5: one model masks with -inf, the other with the lowest float (Hugging Face's mask), on both
    // sides: the lowest-float side's probability underflows to 0 (0 log 0 = 0), so every kind is finite.
    for (let j = 3; j < V; j += 29) [t[5 * V + j], s[5 * V + j]] = [-3.4028234663852886e38, -Infinity];
    for (let j = 5; j < V; j += 31) [s[5 * V + j], t[5 * V + j]] = [-3.4028234663852886e38, -Infinity];
    for (const T of [1, 0.5]) {
      for (const { kind, beta } of KIND_CASES) {
        const out = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, temperature: T, teacherGrad: true });
        const ref = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta, temperature: T });
        const eff = kind === 'jsd' && beta === 0 ? 'forward-kl' : kind === 'jsd' && beta === 1 ? 'reverse-kl' : kind;
        // Student-only -inf under forward KL: +inf (row 1); teacher-only under reverse KL (row 0).
        const infRow = eff === 'forward-kl' ? 1 : eff === 'reverse-kl' ? 0 : -1;
        for (let i = 0; i < rows; i++) {
          if (i === infRow) expect(out.values[i]).toBe(Infinity);
          else expect(Number.isFinite(out.values[i])).toBe(true);
        }
        expectClose(`wide ${kind} ${beta} T=${T} values`, out.values, ref.values, TOLERANCE.divergence, seed);
        // The gradients of the rows with a finite value (an infinite one's are not defined).
        const rowsOf = (a: ArrayLike<number>) =>
          [...Array(rows).keys()].filter((i) => i !== infRow).flatMap((i) => Array.prototype.slice.call(a, i * V, (i + 1) * V) as number[]);
        expectClose(`wide ${kind} ${beta} T=${T} gradStudent`, rowsOf(out.gs), rowsOf(ref.gradStudent), GRAD_TOL.float32, seed);
        expectClose(`wide ${kind} ${beta} T=${T} gradTeacher`, rowsOf(out.gt!), rowsOf(ref.gradTeacher), GRAD_TOL.float32, seed);
        await expectValuesOnly(`wide ${kind} ${beta} T=${T}`, s, t, [rows, V], 'float32', 'float32', { kind, beta, temperature: T }, out.values, ref.values, seed);
      }
    }
  });

  test('a temperature whose log2(e) / T overflows float32 (T = 3e-39; 1 / T is finite): equal rows give 0, not NaN', async () => {
    // The exps work in base 2 with the scale log2(e) / T; unclamped it is inf
    // here, and 0 * inf made a row of equal logits NaN.
    const V = 300;
    const x = new Array<number>(2 * V).fill(0); // row 0: all equal
    for (let j = 0; j < V; j += 7) x[V + j] = 1; // row 1: uniform over the 1s
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(x, x, [2, V], 'float32', 'float32', { kind, beta, temperature: 3e-39, teacherGrad: true });
      for (const v of out.values) expect(v, `${kind} ${beta} value`).toBe(0);
      for (const v of [...out.gs, ...out.gt!]) expect(v, `${kind} ${beta} gradient`).toBe(0);
      const vals = await runValues(x, x, [2, V], 'float32', 'float32', { kind, beta, temperature: 3e-39 });
      for (const v of vals.values) expect(v, `${kind} ${beta} value (grad: false)`).toBe(0);
    }
  });

  test('NaN in a row gives NaN for that row only; an all -inf row is NaN', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 4;
    const V = 100;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    s[V + 37] = NaN;
    t[2 * V + 99] = NaN;
    for (let j = 0; j < V; j++) t[3 * V + j] = -Infinity;
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, teacherGrad: true });
      expect(Number.isNaN(out.values[1])).toBe(true);
      expect(Number.isNaN(out.values[2])).toBe(true);
      expect(Number.isNaN(out.values[3])).toBe(true);
      const ref = vocabDivergenceRef(out.sIn.slice(0, V), out.tIn.slice(0, V), 1, V, { kind, beta });
      expectClose(`NaN isolation ${kind}`, [out.values[0]], ref.values, TOLERANCE.divergence, seed);
      expectClose(`NaN isolation ${kind} grad`, out.gs.slice(0, V), ref.gradStudent, TOLERANCE.divergence, seed);
      expect(out.gs.slice(V, 2 * V).some(Number.isNaN)).toBe(true);
      await expectValuesOnly(`NaN isolation ${kind}`, s, t, [rows, V], 'float32', 'float32', { kind, beta }, out.values, [ref.values[0], NaN, NaN, NaN], seed);
    }
  });

  test('large logits (|x| ~ 1e4, float32)', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 3;
    const V = 257;
    // Below the planted maxima, so both distributions stay on the planted tokens (finite divergences).
    const s = randn(r, rows * V, 1e4).map((v) => Math.max(-2.5e4, Math.min(2.5e4, v)));
    const t = randn(r, rows * V, 1e4).map((v) => Math.max(-2.5e4, Math.min(2.5e4, v)));
    // Keep some mass spread: a few near-max tokens per row.
    for (let i = 0; i < rows; i++) for (let j = 0; j < 5; j++) t[i * V + j] = 3e4 + j * 0.5;
    for (let i = 0; i < rows; i++) for (let j = 3; j < 8; j++) s[i * V + j] = 3e4 + j * 0.25;
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, teacherGrad: true });
      for (const v of out.values) expect(Number.isFinite(v)).toBe(true);
      checkAgainstRef(`large ${kind} ${beta}`, out, rows, V, 'float32', 'float32', kind, beta, 1, seed);
      const ref = vocabDivergenceRef(out.sIn, out.tIn, rows, V, { kind, beta });
      await expectValuesOnly(`large ${kind} ${beta}`, s, t, [rows, V], 'float32', 'float32', { kind, beta }, out.values, ref.values, seed);
    }
  });

  test('the float64 reference gradient matches central differences of the reference value', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 6;
    const s = Array.from(randn(r, V, 1.5));
    const t = Array.from(randn(r, V, 1.5));
    for (const { kind, beta } of KIND_CASES) {
      const T = 0.7;
      const { gs, gt } = divergenceRow(s, t, kind, beta ?? 0.5, T);
      const h = 1e-6;
      const fdS = new Float64Array(V);
      const fdT = new Float64Array(V);
      for (let j = 0; j < V; j++) {
        const sp = s.slice();
        const sm = s.slice();
        sp[j] += h;
        sm[j] -= h;
        fdS[j] = (divergenceRow(sp, t, kind, beta ?? 0.5, T).value - divergenceRow(sm, t, kind, beta ?? 0.5, T).value) / (2 * h);
        const tp = t.slice();
        const tm = t.slice();
        tp[j] += h;
        tm[j] -= h;
        fdT[j] = (divergenceRow(s, tp, kind, beta ?? 0.5, T).value - divergenceRow(s, tm, kind, beta ?? 0.5, T).value) / (2 * h);
      }
      expectClose(`reference FD student ${kind} ${beta}`, gs, fdS, 1e-7, seed);
      expectClose(`reference FD teacher ${kind} ${beta}`, gt, fdT, 1e-7, seed);
    }
  });

  test('kernel gradients of a randomly weighted sum of rows match central differences through the kernel', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 3;
    const V = 24;
    const s = randn(r, rows * V, 1.5);
    const t = randn(r, rows * V, 1.5);
    const w = randn(r, rows, 1);
    const dS = randn(r, rows * V, 1);
    const dT = randn(r, rows * V, 1);
    const h = 2e-2;
    const loss = async (sx: Float64Array, tx: Float64Array, kind: Kind, beta?: number): Promise<number> => {
      const o = await run(sx, tx, [rows, V], 'float32', 'float32', { kind, beta, temperature: 0.8 });
      let l = 0;
      for (let i = 0; i < rows; i++) l += w[i] * o.values[i];
      return l;
    };
    for (const { kind, beta } of KIND_CASES) {
      const o = await run(s, t, [rows, V], 'float32', 'float32', { kind, beta, temperature: 0.8, teacherGrad: true });
      // Directional derivatives of sum_r w_r value_r along dS (student) and dT (teacher).
      let anS = 0;
      let anT = 0;
      for (let i = 0; i < rows * V; i++) {
        anS += w[Math.floor(i / V)] * o.gs[i] * dS[i];
        anT += w[Math.floor(i / V)] * o.gt![i] * dT[i];
      }
      // Central differences with Richardson extrapolation (truncation O(h^4)); float32 values add ~1e-7 / h of noise.
      const central = async (which: 'student' | 'teacher', step: number): Promise<number> => {
        const d = which === 'student' ? dS : dT;
        const plus = s.map((v, i) => v + (which === 'student' ? step * d[i] : 0));
        const minus = s.map((v, i) => v - (which === 'student' ? step * d[i] : 0));
        const tp = t.map((v, i) => v + (which === 'teacher' ? step * d[i] : 0));
        const tm = t.map((v, i) => v - (which === 'teacher' ? step * d[i] : 0));
        return ((await loss(plus, tp, kind, beta)) - (await loss(minus, tm, kind, beta))) / (2 * step);
      };
      const fdS = (4 * (await central('student', h / 2)) - (await central('student', h))) / 3;
      const fdT = (4 * (await central('teacher', h / 2)) - (await central('teacher', h))) / 3;
      for (const [who, an, fd] of [['student', anS, fdS], ['teacher', anT, fdT]] as const) {
        if (!(Math.abs(an - fd) <= 1e-4 + 2e-3 * Math.abs(fd))) {
          throw new Error(`kernel FD ${who} ${kind} ${beta}: analytic ${an} vs central difference ${fd} (seed ${seed})`);
        }
      }
    }
  });

  test('deterministic: bitwise equal across runs and thread counts', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 64;
    const V = 3001;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    // Every third row close to its teacher: the values-only KLs then change form from row to row (one
    // pass or two), and each thread's hint of which to expect follows its own rows.
    for (let i = 0; i < rows * V; i++) if (Math.floor(i / V) % 3 === 1) t[i] = s[i] + 0.05 * t[i];
    const threads = rlk.getNumThreads();
    try {
      for (const { kind, beta } of [KIND_CASES[0], KIND_CASES[1], KIND_CASES[3]]) {
        rlk.setNumThreads(2);
        const a = await run(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta, teacherGrad: true });
        const b = await run(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta, teacherGrad: true });
        rlk.setNumThreads(1);
        const c = await run(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta, teacherGrad: true });
        for (const x of [b, c]) {
          expect(Buffer.from(x.values.buffer).equals(Buffer.from(a.values.buffer))).toBe(true);
          expect(Buffer.from(x.gs.buffer).equals(Buffer.from(a.gs.buffer))).toBe(true);
          expect(Buffer.from(x.gt!.buffer).equals(Buffer.from(a.gt!.buffer))).toBe(true);
        }
        // The student gradient alone and the values alone: their own passes, also per row.
        const d = await run(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta });
        const v1 = await runValues(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta });
        rlk.setNumThreads(2);
        const e = await run(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta });
        const v2 = await runValues(s, t, [rows, V], 'bfloat16', 'float32', { kind, beta });
        expect(Buffer.from(e.values.buffer).equals(Buffer.from(d.values.buffer))).toBe(true);
        expect(Buffer.from(e.gs.buffer).equals(Buffer.from(d.gs.buffer))).toBe(true);
        expect(Buffer.from(v2.values.buffer).equals(Buffer.from(v1.values.buffer))).toBe(true);
      }
    } finally {
      rlk.setNumThreads(threads);
    }
  });

  test('zero rows give empty outputs', () => {
    const S = rlk.zeros([0, 5]);
    const T = rlk.zeros([0, 5], { dtype: 'bfloat16' });
    const out = rlk.vocabDivergence(S, T, { kind: 'jsd', teacherGrad: true });
    expect(out.values.shape).toEqual([0]);
    expect(out.gradStudent.shape).toEqual([0, 5]);
    expect(out.gradTeacher!.shape).toEqual([0, 5]);
  });

  // Each ISA path (AVX-512, AVX2, scalar baseline) in a child process with RLK_SIMD set, since the
  // choice is made once per process. The child calls the addon directly and prints JSON.
  for (const isa of ['avx2', 'baseline'] as const) {
    test(`the ${isa} path matches float64 (child process with RLK_SIMD=${isa})`, () => {
      const native = rlk.buildInfo().cpu.simd;
      const order = ['baseline', 'avx2', 'avx512'];
      if (order.indexOf(native) < order.indexOf(isa)) {
        console.log(`[rlkernels] ${isa} path not tested: this CPU has only ${native}`);
        return;
      }
      const seed = freshSeed();
      const r = rng(seed);
      const cases = [
        { rows: 3, V: 45, sd: 0, td: 0, kind: 0, beta: 0.5 },
        { rows: 2, V: 1030, sd: 1, td: 0, kind: 1, beta: 0.5 },
        { rows: 2, V: 77, sd: 2, td: 1, kind: 2, beta: 0.3 },
        { rows: 1, V: 5, sd: 0, td: 2, kind: 2, beta: 0.7 },
        // Several blocks and a tail; a masked vocabulary (-inf on both sides, and the teacher at the lowest
        // finite float32, Hugging Face's mask) and a confident teacher row.
        { rows: 3, V: 2100, sd: 0, td: 0, kind: 0, beta: 0.5 },
        { rows: 3, V: 2100, sd: 1, td: 0, kind: 2, beta: 0.5 },
        { rows: 3, V: 2100, sd: 0, td: 0, kind: 1, beta: 0.5 },
        // T = 1 (an exact 1 / T) on rows of small span: the gradient passes' clamp-free exps and short
        // log-ratio; row 2 of each has logits 82 below the rest, a span near 96 (an exp argument near
        // -138 in base 2, where AVX2's exponent field wraps without the clamp), which must clamp.
        { rows: 3, V: 2500, sd: 0, td: 0, kind: 0, beta: 0.5, T: 1 },
        { rows: 3, V: 2500, sd: 0, td: 0, kind: 1, beta: 0.5, T: 1 },
        { rows: 3, V: 2500, sd: 0, td: 0, kind: 2, beta: 0.5, T: 1 },
      ].map((c) => ({ T: 0.8, ...c, s: Array.from(randn(r, c.rows * c.V, 2)), t: Array.from(randn(r, c.rows * c.V, 2)) }));
      cases[0].t[4] = cases[0].s[4] = -Infinity;
      for (const c of cases.slice(7)) for (let j = 2; j < c.V; j += 19) (c.kind === 1 ? c.s : c.t)[2 * c.V + j] -= 82;
      for (const c of cases.slice(4, 7)) {
        // Reverse KL masks the student: a lowest-float teacher logit under p_s > 0 makes (t - s) / T overflow
        // float32 (+inf, as PyTorch's fp32 log_softmax gives) where float64 gives ~1e36.
        for (let j = 0; j < 50; j++) (c.kind === 1 ? c.s : c.t)[j] = -3.4028234663852886e38;
        c.t[60] = c.s[60] = -Infinity;
        c.t[2 * c.V + 1500] = 40;
      }
      const script = `
        const n = require(process.argv[1]);
        const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
        const out = { simd: n.buildInfo().cpuSimd, results: [] };
        for (const c of cases) {
          const S = n.fromData([c.rows, c.V], c.sd, -1, Float32Array.from(c.s));
          const T = n.fromData([c.rows, c.V], c.td, -1, Float32Array.from(c.t));
          const m = n.fromData([c.rows], 5, -1, Uint8Array.from({ length: c.rows }, (_, i) => (i === 1 ? 0 : 1)));
          const r = n.vocabDivergence(S, T, m, null, c.kind, c.beta, 1 / c.T, -100, true);
          const v = n.vocabDivergence(S, T, m, null, c.kind, c.beta, 1 / c.T, -100, false, false);
          const st = n.vocabDivergence(S, T, m, null, c.kind, c.beta, 1 / c.T, -100, false);
          const f = (t) => Array.from(new Float32Array(t.to(0, -1).read()));
          out.results.push({ values: f(r.values), gs: f(r.gradStudent), gt: f(r.gradTeacher), sIn: f(S), tIn: f(T),
            valuesOnly: f(v.values), valuesOnlyKeys: Object.keys(v), studentOnly: f(st.values), gsStudentOnly: f(st.gradStudent) });
        }
        process.stdout.write(JSON.stringify(out, (k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)));
      `;
      const child = spawnSync(process.execPath, ['-e', script, nativePath], {
        input: JSON.stringify(cases, (k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)),
        env: { ...process.env, RLK_SIMD: isa },
        encoding: 'utf8',
        maxBuffer: 1 << 26,
      });
      expect(child.status, child.stderr).toBe(0);
      const parsed = JSON.parse(child.stdout, (k, v) => (typeof v === 'string' && /^(-?Infinity|NaN)$/.test(v) ? Number(v) : v)) as {
        simd: string;
        results: Array<{ values: number[]; gs: number[]; gt: number[]; sIn: number[]; tIn: number[]; valuesOnly: number[]; valuesOnlyKeys: string[];
          studentOnly: number[]; gsStudentOnly: number[] }>;
      };
      expect(parsed.simd).toBe(isa);
      const dts: FDType[] = ['float32', 'bfloat16', 'float16'];
      const kinds: Kind[] = ['forward-kl', 'reverse-kl', 'jsd'];
      cases.forEach((c, i) => {
        const o = parsed.results[i];
        const ignored = Array.from({ length: c.rows }, (_, k) => k === 1);
        const ref = vocabDivergenceRef(o.sIn, o.tIn, c.rows, c.V, { kind: kinds[c.kind], beta: c.beta, temperature: c.T, ignored });
        const what = `${isa} case ${i}`;
        expectClose(`${what} values`, o.values, ref.values, TOLERANCE.divergence, seed);
        expectClose(`${what} gradStudent`, o.gs, roundArray(ref.gradStudent, dts[c.sd]), GRAD_TOL[dts[c.sd]], seed);
        expectClose(`${what} gradTeacher`, o.gt, roundArray(ref.gradTeacher, dts[c.td]), GRAD_TOL[dts[c.td]], seed);
        // The values-only path (grad = false), its own code on each ISA.
        expect(o.valuesOnlyKeys).toEqual(['values']);
        expectClose(`${what} values (grad = false)`, o.valuesOnly, ref.values, TOLERANCE.divergence, seed);
        if (c.rows > 1) expect(o.valuesOnly[1]).toBe(0);
        // The student gradient alone (no teacher gradient): the KLs' own pass-2 code on each ISA.
        expectClose(`${what} values (no teacherGrad)`, o.studentOnly, ref.values, TOLERANCE.divergence, seed);
        expectClose(`${what} gradStudent (no teacherGrad)`, o.gsStudentOnly, roundArray(ref.gradStudent, dts[c.sd]), GRAD_TOL[dts[c.sd]], seed);
      });
    });
  }
});

describe('vocabDivergence: bad input', () => {
  const S = rlk.zeros([2, 5]);
  const T = rlk.zeros([2, 5], { dtype: 'bfloat16' });
  const call = (s: unknown, t: unknown, o: unknown) => () => rlk.vocabDivergence(s as rlk.Tensor, t as rlk.Tensor, o as rlk.VocabDivergenceOptions);

  test('wrong types, dtypes, shapes and devices throw TypeError/RangeError naming the argument', () => {
    const ok = { kind: 'forward-kl' };
    expect(call(null, T, ok)).toThrow(TypeError);
    expect(call(null, T, ok)).toThrow(/studentLogits must be a tensor/);
    expect(call(S, [1, 2], ok)).toThrow(/teacherLogits must be a tensor/);
    expect(call(new Float32Array(10), T, ok)).toThrow(TypeError);
    expect(call(rlk.zeros([2, 5], { dtype: 'int32' }), T, ok)).toThrow(/studentLogits must be float32, bfloat16 or float16, got int32/);
    expect(call(S, rlk.zeros([2, 5], { dtype: 'uint8' }), ok)).toThrow(/teacherLogits must be/);
    expect(call(S, rlk.zeros([2, 6]), ok)).toThrow(RangeError);
    expect(call(S, rlk.zeros([2, 6]), ok)).toThrow(/teacherLogits must have shape \[2, 5\]/);
    expect(call(S, rlk.zeros([10]), ok)).toThrow(/teacherLogits must have shape/);
    expect(call(rlk.zeros([]), rlk.zeros([]), ok)).toThrow(/studentLogits must have at least 1 dimension/);
    expect(call(rlk.zeros([3, 0]), rlk.zeros([3, 0]), ok)).toThrow(/last dimension >= 1/);
    expect(call(S, T, { kind: 'forward-kl', mask: rlk.zeros([2], { dtype: 'float32' }) })).toThrow(/mask must be uint8, got float32/);
    expect(call(S, T, { kind: 'forward-kl', mask: rlk.zeros([3], { dtype: 'uint8' }) })).toThrow(/mask must have shape \[2\]/);
    expect(call(S, T, { kind: 'forward-kl', mask: [1, 0] })).toThrow(/mask must be a tensor/);
    expect(call(S, T, { kind: 'forward-kl', targets: rlk.zeros([2], { dtype: 'float32' }) })).toThrow(/targets must be int32 or int64/);
    expect(call(S, T, { kind: 'forward-kl', targets: rlk.zeros([2, 5], { dtype: 'int64' }) })).toThrow(/targets must have shape \[2\]/);
  });

  test('unknown options and bad option values', () => {
    expect(call(S, T, undefined)).toThrow(TypeError);
    expect(call(S, T, 'forward-kl')).toThrow(/options must be an object/);
    expect(call(S, T, { kind: 'forward-kl', temprature: 1 })).toThrow(/unknown option 'temprature'/);
    expect(call(S, T, {})).toThrow(/kind must be a string, got undefined/);
    expect(call(S, T, { kind: 'kl' })).toThrow(RangeError);
    expect(call(S, T, { kind: 'kl' })).toThrow(/kind must be one of 'forward-kl', 'reverse-kl', 'jsd'/);
    expect(call(S, T, { kind: 3 })).toThrow(TypeError);
    for (const beta of [-0.1, 1.5, NaN, Infinity]) expect(call(S, T, { kind: 'jsd', beta })).toThrow(/beta must be/);
    expect(call(S, T, { kind: 'jsd', beta: -0.1 })).toThrow(RangeError);
    expect(call(S, T, { kind: 'jsd', beta: '0.5' })).toThrow(TypeError);
    for (const temperature of [0, -1, NaN, Infinity, 1e-300]) expect(call(S, T, { kind: 'jsd', temperature })).toThrow(RangeError);
    expect(call(S, T, { kind: 'jsd', temperature: 0 })).toThrow(/temperature must/);
    expect(call(S, T, { kind: 'jsd', temperature: '1' })).toThrow(TypeError);
    expect(call(S, T, { kind: 'jsd', ignoreIndex: 1.5 })).toThrow(/ignoreIndex must be an integer/);
    expect(call(S, T, { kind: 'jsd', ignoreIndex: 2 ** 60 })).toThrow(RangeError);
    expect(call(S, T, { kind: 'jsd', teacherGrad: 1 })).toThrow(/teacherGrad must be a boolean/);
    expect(call(S, T, { kind: 'jsd', grad: 0 })).toThrow(TypeError);
    expect(call(S, T, { kind: 'jsd', grad: 0 })).toThrow(/grad must be a boolean, got 0/);
    expect(call(S, T, { kind: 'jsd', grad: false, teacherGrad: true })).toThrow(RangeError);
    expect(call(S, T, { kind: 'jsd', grad: false, teacherGrad: true })).toThrow(/teacherGrad must be false when grad is false/);
  });

  test('disposed tensors throw DisposedError naming the argument', () => {
    const d = rlk.zeros([2, 5]);
    d.dispose();
    expect(call(d, T, { kind: 'jsd' })).toThrow(rlk.DisposedError);
    expect(call(d, T, { kind: 'jsd' })).toThrow(/studentLogits was disposed/);
    expect(call(S, d, { kind: 'jsd' })).toThrow(/teacherLogits was disposed/);
    const m = rlk.zeros([2], { dtype: 'uint8' });
    m.dispose();
    expect(call(S, T, { kind: 'jsd', mask: m })).toThrow(/mask was disposed/);
  });

  test('the addon re-checks what memory safety depends on', () => {
    const n = native as unknown as { vocabDivergence: (...a: unknown[]) => unknown };
    const s = S.handle('t');
    const t = T.handle('t');
    expect(() => n.vocabDivergence(s, rlk.zeros([2, 4]).handle('t'), null, null, 0, 0.5, 1, -100, false)).toThrow(/teacherLogits must have shape/);
    expect(() => n.vocabDivergence(s, t, rlk.zeros([3], { dtype: 'uint8' }).handle('t'), null, 0, 0.5, 1, -100, false)).toThrow(/mask must have shape/);
    expect(() => n.vocabDivergence(s, t, null, rlk.zeros([2], { dtype: 'float32' }).handle('t'), 0, 0.5, 1, -100, false)).toThrow(/targets must be int32 or int64/);
    expect(() => n.vocabDivergence(s, t, null, null, 3, 0.5, 1, -100, false)).toThrow(/kind must be an integer/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 1.5, 1, -100, false)).toThrow(/beta must be in \[0, 1\]/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 0.5, -1, -100, false)).toThrow(/invTemperature/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 0.5, 1, 0.5, false)).toThrow(RangeError);
    expect(() => n.vocabDivergence(s, {}, null, null, 2, 0.5, 1, -100, false)).toThrow(/teacherLogits must be a tensor/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 0.5, 1, -100, 'yes')).toThrow(/teacherGrad must be a boolean/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 0.5, 1, -100, false, 1)).toThrow(/grad must be a boolean/);
    expect(() => n.vocabDivergence(s, t, null, null, 2, 0.5, 1, -100, true, false)).toThrow(/teacherGrad must be false when grad is false/);
  });
});

describeCuda('vocabDivergence (cuda)', () => {
  test('values and gradients match float64 for every kind, beta, temperature and dtype pair', async () => {
    await accuracySweep('cuda');
  });

  test('large vocabulary and many rows (> 65535, grid-stride) match float64', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    {
      const rows = 2;
      const V = 151936;
      const s = randn(r, rows * V, 3);
      const t = randn(r, rows * V, 3);
      for (const [sd, td, kind, beta] of [
        ['float32', 'float32', 'forward-kl', undefined],
        ['bfloat16', 'float16', 'jsd', 0.3],
        ['float16', 'bfloat16', 'reverse-kl', undefined],
      ] as Array<[FDType, FDType, Kind, number | undefined]>) {
        const out = await run(s, t, [rows, V], sd, td, { kind, beta, temperature: 0.7, teacherGrad: true }, 'cuda');
        checkAgainstRef(`cuda V=${V} ${sd}/${td} ${kind}`, out, rows, V, sd, td, kind, beta, 0.7, seed);
      }
    }
    {
      const rows = cudaShape(70000, 2500);  // emulated: still more rows than the grid's 8 blocks per SM
      const V = 3;
      const s = randn(r, rows * V, 2);
      const t = randn(r, rows * V, 2);
      const out = await run(s, t, [rows, V], 'float32', 'float32', { kind: 'jsd', beta: 0.4, teacherGrad: true }, 'cuda');
      checkAgainstRef(`cuda rows=${rows}`, out, rows, V, 'float32', 'float32', 'jsd', 0.4, 1, seed);
    }
  });

  test('tensors on different devices throw TypeError naming the argument', () => {
    const sc = rlk.zeros([2, 5], { device: 'cuda' });
    const tc = rlk.zeros([2, 5], { device: 'cuda' });
    const s = rlk.zeros([2, 5]);
    expect(() => rlk.vocabDivergence(sc, s, { kind: 'jsd' })).toThrow(TypeError);
    expect(() => rlk.vocabDivergence(sc, s, { kind: 'jsd' })).toThrow(/teacherLogits must be on cuda:0 like studentLogits, got cpu/);
    expect(() => rlk.vocabDivergence(sc, tc, { kind: 'jsd', mask: rlk.zeros([2], { dtype: 'uint8' }) })).toThrow(/mask must be on cuda:0/);
  });

  test('edge cases on cuda: identical logits, -inf, NaN isolation, masks, determinism', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const x = randn(r, 3 * 211, 4);
    for (const { kind, beta } of KIND_CASES) {
      const out = await run(x, x, [3, 211], 'bfloat16', 'bfloat16', { kind, beta, teacherGrad: true }, 'cuda');
      // Either zero: the emulated device's host math (no FMA contraction) gives -0 where a GPU's fma gives +0.
      for (const v of out.values) expect(Math.abs(v)).toBe(0);
      for (const g of out.gs) expect(Math.abs(g)).toBe(0);
    }
    const rows = 5;
    const V = 1001;
    const s = randn(r, rows * V, 2);
    const t = randn(r, rows * V, 2);
    for (const j of [0, 7, 500]) s[j] = t[j] = -Infinity;
    s[V + 3] = NaN;
    const mask = Uint8Array.from([1, 1, 0, 1, 1]);
    for (const { kind, beta } of KIND_CASES) {
      const a = await run(s, t, [rows, V], 'float32', 'bfloat16', { kind, beta, mask, teacherGrad: true }, 'cuda');
      const b = await run(s, t, [rows, V], 'float32', 'bfloat16', { kind, beta, mask, teacherGrad: true }, 'cuda');
      expect(Buffer.from(a.values.buffer).equals(Buffer.from(b.values.buffer))).toBe(true);
      expect(Buffer.from(a.gs.buffer).equals(Buffer.from(b.gs.buffer))).toBe(true);
      expect(Number.isNaN(a.values[1])).toBe(true);
      expect(a.values[2]).toBe(0);
      const keep = [0, 3, 4];
      const ref = vocabDivergenceRef(a.sIn, a.tIn, rows, V, { kind, beta });
      expectClose(`cuda edge ${kind}`, keep.map((i) => a.values[i]), keep.map((i) => ref.values[i]), TOLERANCE.divergence, seed);
    }
  });
});
