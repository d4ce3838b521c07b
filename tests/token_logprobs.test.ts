// Token log-probs and entropy (DESIGN 3.1 and 4): forward and backward against
// float64 references on fresh random inputs, finite differences, the
// vocabulary-parallel form, numerics edge cases, every ISA path, determinism
// and bad input. CUDA variants run under describeCuda.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { cudaShape, TOLERANCE, describeCuda, expectClose, freshSeed, randn, rng, runOnIsaPath } from './helpers.js';
import { native } from '../src/native.js';
import { roundArray, roundTo } from './reference/dtype.js';
import { refBackward, refForward, refObjective, type RefInput } from './reference/token_logprobs.js';

type FloatDType = 'float32' | 'bfloat16' | 'float16';
const FLOAT_DTYPES: FloatDType[] = ['float32', 'bfloat16', 'float16'];
const IS_CHILD = process.env.RLK_TLP_CHILD === '1';

interface Case {
  logits: rlk.Tensor;
  targets: rlk.Tensor;
  x: Float64Array; // the stored logit values
  tgt: number[];
  rows: number;
  vocab: number;
  seed: number;
}

/** Random logits (rounded to the dtype) and targets with a random subset of ignored rows. */
function makeCase(
  seed: number,
  shape: number[],
  dtype: FloatDType,
  opts: { scale?: number; ignoreFrac?: number; targetDType?: 'int32' | 'int64'; device?: rlk.Device; ignoreIndex?: number } = {},
): Case {
  const r = rng(seed);
  const vocab = shape[shape.length - 1];
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const raw = randn(r, rows * vocab, opts.scale ?? 3);
  const device = opts.device ?? 'cpu';
  const logits = rlk.tensor(raw, { shape, dtype, device });
  const x = Float64Array.from(logits.toArraySync() as Float32Array);
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const tgt: number[] = [];
  for (let i = 0; i < rows; i++) tgt.push(r() < (opts.ignoreFrac ?? 0.2) ? ignoreIndex : Math.floor(r() * vocab));
  const targetDType = opts.targetDType ?? (seed % 2 ? 'int32' : 'int64');
  const targets =
    targetDType === 'int32'
      ? rlk.tensor(Int32Array.from(tgt), { shape: shape.slice(0, -1), dtype: 'int32', device })
      : rlk.tensor(BigInt64Array.from(tgt.map((t) => BigInt(t))), { shape: shape.slice(0, -1), dtype: 'int64', device });
  return { logits, targets, x, tgt, rows, vocab, seed };
}

function refInput(c: Case, temperature: number | ArrayLike<number> = 1, ignoreIndex = -100): RefInput {
  return { x: c.x, rows: c.rows, vocab: c.vocab, targets: c.tgt, temperature, ignoreIndex };
}

function randomTemps(seed: number, rows: number): Float64Array {
  const r = rng(seed ^ 0x5bd1e995);
  return Float64Array.from({ length: rows }, () => Math.fround(0.3 + 1.7 * r()));
}

function upstream(seed: number, rows: number, scale = 1): Float64Array {
  return Float64Array.from(randn(rng(seed ^ 0x1234567), rows, scale), (v) => Math.fround(v));
}

const fwdTol = (d: FloatDType): number => TOLERANCE[d];

/**
 * Entropy of float32 logits, within `tol` over the array once each row's difference is reduced by
 * the rounding the kernel cannot avoid: d_j = (x_j - max) / T is formed in float32 (x - max,
 * the float32 1/T, the product: three roundings, |error| <= 3 * 2^-24 * |d_j|) and e^{d_j} in
 * float32 (2 units), and dH/dd_j = -p_j (log p_j + H). For ordinary rows this slack is a small
 * part of the tolerance; for a very peaked row (T = 0.3, V = 7, H ~ 2e-10 carried by a logit 22
 * units below the max) it is the whole error: seed 1173215029 failed at 2.8e-6 with a correct
 * kernel. A wrong value (a missing term, a wrong log) is orders of magnitude above it.
 */
function expectEntropyClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, c: Case, temperature: number | ArrayLike<number>, tol: number, seed: number): void {
  const shrunk = Float64Array.from(got);
  for (let r = 0; r < c.rows; r++) {
    const H = want[r];
    if (c.tgt[r] === -100 || !Number.isFinite(H) || !Number.isFinite(got[r])) continue;
    const T = typeof temperature === 'number' ? temperature : temperature[r];
    const off = r * c.vocab;
    let m = -Infinity;
    for (let j = 0; j < c.vocab; j++) m = Math.max(m, c.x[off + j] / T);
    let s = 0;
    for (let j = 0; j < c.vocab; j++) s += Math.exp(c.x[off + j] / T - m);
    let slack = 0;
    for (let j = 0; j < c.vocab; j++) {
      const d = c.x[off + j] / T - m;
      const lp = d - Math.log(s);
      const p = Math.exp(lp);
      if (p > 0) slack += p * Math.abs(lp + H) * (3 * Math.abs(d) + 2);
    }
    slack *= 2 ** -24;
    const diff = got[r] - H;
    shrunk[r] = H + Math.sign(diff) * Math.max(0, Math.abs(diff) - slack);
  }
  expectClose(what, shrunk, want, tol, seed);
}

/**
 * 16-bit gradients are rounded once at the store: each element within one unit in the last
 * place of the float64 value, plus 1e-7 of the array's largest value for elements where the
 * two terms of the gradient (-g p and -gE p (log p + H)) cancel, whose fp32 value carries
 * the absolute rounding error of the terms.
 * `termScale(i)` (|g| / T at a row's target element, 0 elsewhere) adds 2^-23 of it: at the target of a
 * peaked row, g (1 - p_t) / T is formed from p_t = 1 / s with s near 1 in float32 (the saved
 * stats are float32), whose rounding is an absolute 2^-24 |g| / T however small the result:
 * seed 177033338 ([3,33] bfloat16, 1 - p_t ~ 1e-5) was 4 bfloat16 ulps off with a correct kernel.
 * Both checks (each element, and the array against the rounded reference) allow it.
 */
function expectGradClose(what: string, out: Float32Array, ref: Float64Array, dtype: FloatDType, seed: number, termScale?: (i: number) => number): void {
  const cancel = (i: number): number => (termScale ? 2 ** -23 * termScale(i) : 0);
  // The differences less the cancellation allowance, for the array-level checks.
  const shrink = (want: ArrayLike<number>): Float64Array =>
    Float64Array.from(out, (o, i) => {
      const d = o - want[i];
      return Number.isFinite(d) ? want[i] + Math.sign(d) * Math.max(0, Math.abs(d) - cancel(i)) : o;
    });
  if (dtype === 'float32') return expectClose(what, shrink(ref), ref, TOLERANCE.float32, seed);
  const mant = dtype === 'bfloat16' ? 7 : 10;
  const minExp = dtype === 'bfloat16' ? -126 : -14;
  let maxAbs = 0;
  for (const r of ref) if (Number.isFinite(r)) maxAbs = Math.max(maxAbs, Math.abs(r));
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i];
    const o = out[i];
    if (!Number.isFinite(r)) {
      if (!(Object.is(o, r) || (Number.isNaN(o) && Number.isNaN(r)))) throw new Error(`${what}: non-finite mismatch at ${i}: got ${o}, want ${r} (seed ${seed})`);
      continue;
    }
    const e = r === 0 ? minExp : Math.max(Math.floor(Math.log2(Math.abs(r))), minExp);
    const ulp = 2 ** (e - mant);
    if (!(Math.abs(o - r) <= ulp + 1e-7 * maxAbs + cancel(i))) {
      throw new Error(`${what}: element ${i} got ${o}, want ${r} (rounded ${roundTo(r, dtype)}), more than one ${dtype} ulp (seed ${seed})`);
    }
  }
  // Over the array: against the reference rounded to the dtype (outputs in the float16
  // subnormal range carry an absolute rounding error no kernel can avoid), where only
  // elements at a rounding boundary may differ, by one ulp.
  // A reference within float32 error (2^-20 relative, plus the cancellation allowance) of a
  // rounding midpoint may round either way (seed 219143360: float16 -1.2769 -> -1.2773, one
  // ulp, alone dominating the array): such an element counts as matching when it is one of the
  // two neighbours (it passed the one-ulp element check above).
  const rounded = roundArray(ref, dtype);
  const adjusted = shrink(rounded);
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i];
    if (!Number.isFinite(r)) continue;
    const slack = 2 ** -20 * Math.abs(r) + cancel(i);
    const lo = roundTo(r - slack, dtype);
    const hi = roundTo(r + slack, dtype);
    if (lo !== hi && (out[i] === lo || out[i] === hi)) adjusted[i] = rounded[i];
  }
  expectClose(what, adjusted, rounded, 2 ** -(mant + 1), seed);
}

function f32(t: rlk.Tensor): Float32Array {
  return t.toArraySync() as Float32Array;
}

function poisoned(shape: number[], device: rlk.Device = 'cpu', dtype: FloatDType = 'float32'): rlk.Tensor {
  return rlk.full(shape, NaN, { dtype, device });
}

function expectIgnoredZero(what: string, out: Float32Array, c: Case, seed: number, ignoreIndex = -100, width = 1): void {
  for (let r = 0; r < c.rows; r++) {
    if (c.tgt[r] !== ignoreIndex) continue;
    for (let k = 0; k < width; k++) {
      if (!Object.is(out[r * width + k], 0)) throw new Error(`${what}: ignored row ${r} gave ${out[r * width + k]}, want 0 (seed ${seed})`);
    }
  }
}

// ---------------------------------------------------------------------------
function forwardSuite(device: rlk.Device): void {
  const SHAPES = [[1, 1], [1, 7], [3, 33], [2, 3, 65], [5, 100], [4, 1000], [3, 4099], [1, 151936]];

  it.each(FLOAT_DTYPES)('matches the float64 reference (%s, several shapes, temperature number and tensor, entropy on/off)', (dtype) => {
    const seed = freshSeed();
    SHAPES.forEach((shape, k) => {
      const c = makeCase(seed + k, shape, dtype, { device });
      const perRow = k % 2 === 1;
      const temps = perRow ? randomTemps(seed + k, c.rows) : undefined;
      const temperature = perRow ? rlk.tensor(Float32Array.from(temps!), { shape: shape.slice(0, -1), device }) : 0.7;
      const entropy = k % 3 !== 2;
      const res = rlk.tokenLogprobs(c.logits, c.targets, { temperature, entropy });
      expect(res.logprobs.shape).toEqual(shape.slice(0, -1));
      expect(res.logprobs.dtype).toBe('float32');
      const ref = refForward(refInput(c, temps ?? 0.7));
      const lp = f32(res.logprobs);
      expectClose(`logprobs ${dtype} [${shape}]`, lp, ref.logprobs, fwdTol(dtype), seed + k);
      expectIgnoredZero('logprobs', lp, c, seed + k);
      if (entropy) {
        const h = f32(res.entropy!);
        expectEntropyClose(`entropy ${dtype} [${shape}]`, h, ref.entropy, c, temps ?? 0.7, fwdTol(dtype), seed + k);
        expectIgnoredZero('entropy', h, c, seed + k);
      } else {
        expect(res.entropy).toBeUndefined();
      }
      for (const v of lp) expect(v <= 0).toBe(true);
    });
  });

  it('V = 262144 and 151936 in bfloat16 with a few rows', () => {
    const seed = freshSeed();
    for (const [shape, dtype] of [[[2, 262144], 'float32'], [[2, 151936], 'bfloat16'], [[1, 262144], 'float16']] as Array<[number[], FloatDType]>) {
      const c = makeCase(seed, shape, dtype, { device, ignoreFrac: 0 });
      const res = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true, temperature: 1.3 });
      const ref = refForward(refInput(c, 1.3));
      expectClose(`logprobs [${shape}] ${dtype}`, f32(res.logprobs), ref.logprobs, fwdTol(dtype), seed);
      expectClose(`entropy [${shape}] ${dtype}`, f32(res.entropy!), ref.entropy, fwdTol(dtype), seed);
    }
  });

  it('writes into poisoned out tensors (logprobs, entropy, stats) and returns them', () => {
    const seed = freshSeed();
    const c = makeCase(seed, [6, 77], 'float32', { device });
    const out = { logprobs: poisoned([6], device), entropy: poisoned([6], device), stats: poisoned([6, 3], device) };
    const res = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true, saveForBackward: true, out, temperature: 0.9 });
    expect(res.logprobs).toBe(out.logprobs);
    expect(res.entropy).toBe(out.entropy);
    expect(res.stats).toBe(out.stats);
    const ref = refForward(refInput(c, 0.9));
    expectClose('out.logprobs', f32(out.logprobs), ref.logprobs, TOLERANCE.float32, seed);
    expectClose('out.entropy', f32(out.entropy), ref.entropy, TOLERANCE.float32, seed);
    for (const v of f32(out.stats)) expect(Number.isNaN(v)).toBe(false);
  });

  it('properties: logprob <= 0, shift invariance (+100), equal logits give -log V, ignored rows exactly 0', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 9;
    const V = 513;
    // Multiples of 1/64 below 64 in size: x + 100 is exact in float32.
    const xs = Float64Array.from({ length: rows * V }, () => Math.round((r() * 2 - 1) * 64 * 40) / 64);
    const tg = Int32Array.from({ length: rows }, (_, i) => (i === 4 ? -100 : Math.floor(r() * V)));
    const targets = rlk.tensor(tg, { shape: [rows], device });
    const a = rlk.tokenLogprobs(rlk.tensor(xs, { shape: [rows, V], device }), targets, { entropy: true });
    const b = rlk.tokenLogprobs(rlk.tensor(xs.map((v) => v + 100), { shape: [rows, V], device }), targets, { entropy: true });
    const la = f32(a.logprobs);
    const lb = f32(b.logprobs);
    expectClose('shifted logprobs', lb, la, 1e-6, seed);
    expectClose('shifted entropy', f32(b.entropy!), f32(a.entropy!), 1e-6, seed);
    for (const v of la) expect(v).toBeLessThanOrEqual(0);
    expect(Object.is(la[4], 0)).toBe(true);
    expect(Object.is(f32(a.entropy!)[4], 0)).toBe(true);
    for (const Vq of [1, 5, 32000]) {
      const eq = rlk.tokenLogprobs(rlk.full([3, Vq], -7.25, { device }), rlk.tensor(Int32Array.from([0, Vq - 1, Vq >> 1]), { device }), { entropy: true });
      expectClose(`equal logits V=${Vq}`, f32(eq.logprobs), [-Math.log(Vq), -Math.log(Vq), -Math.log(Vq)], 1e-6, seed);
      expectClose(`equal logits entropy V=${Vq}`, f32(eq.entropy!), [Math.log(Vq), Math.log(Vq), Math.log(Vq)], 1e-6, seed);
    }
  });

  it('numerics: all-negative rows, |logits| up to 1e4 (fp32) and the fp16 range, rows spanning 90-190 / T, V = 1', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 301;
    const cases: Array<[FloatDType, (i: number) => number]> = [
      ['float32', () => -1e4 + r() * 50],
      ['float32', (i) => (i % V === 3 ? 1e4 : (r() * 2 - 1) * 1e4)],
      ['float32', () => (r() * 2 - 1) * 1e4],
      ['float16', () => (r() * 2 - 1) * 65000],
      ['float16', () => -60000 + r() * 8],
      ['bfloat16', () => (r() * 2 - 1) * 3e4],
      // (x - max) / T down to -186 but finite: the rows whose exps take their bottom clamp (below
      // -87) though pass 1's minimum could have let a wrong threshold skip it.
      ['float32', () => -r() * 130],
      ['bfloat16', () => -r() * 100],
    ];
    for (const [dtype, gen] of cases) {
      const xs = Float64Array.from({ length: 4 * V }, (_, i) => gen(i));
      const logits = rlk.tensor(xs, { shape: [4, V], dtype, device });
      const x = Float64Array.from(logits.toArraySync() as Float32Array);
      const tgt = [3, 0, V - 1, 150];
      const inp: RefInput = { x, rows: 4, vocab: V, targets: tgt, temperature: 0.7, ignoreIndex: -100 };
      const res = rlk.tokenLogprobs(logits, rlk.tensor(Int32Array.from(tgt), { device }), { entropy: true, temperature: 0.7 });
      const ref = refForward(inp);
      expectClose(`large logits ${dtype} logprobs`, f32(res.logprobs), ref.logprobs, fwdTol(dtype), seed);
      const h = f32(res.entropy!);
      for (let i = 0; i < 4; i++) expect(Math.abs(h[i] - ref.entropy[i])).toBeLessThanOrEqual(1e-5 * Math.max(1, ref.entropy[i]));
      for (const v of f32(res.logprobs)) expect(v <= 0).toBe(true);
    }
    const one = rlk.tokenLogprobs(rlk.tensor([[3.5], [-2]], { device }), rlk.tensor(Int32Array.from([0, 0]), { device }), { entropy: true });
    expect(Array.from(f32(one.logprobs))).toEqual([0, 0]);
    expect(Array.from(f32(one.entropy!))).toEqual([0, 0]);
  });

  it('-inf logits (masked vocabulary) give no NaN; a -inf target gives -inf and a finite gradient; NaN stays in its row', () => {
    const seed = freshSeed();
    const V = 70;
    const c = makeCase(seed, [5, V], 'float32', { device, ignoreFrac: 0 });
    const x = Float64Array.from(c.x);
    for (let j = 0; j < V; j += 3) x[j] = -Infinity; // row 0: every third masked
    for (let j = 0; j < 40; j++) x[V + j] = -Infinity; // row 1: a masked prefix
    x[2 * V + 5] = -Infinity; // row 2: the target is masked
    x[3 * V + 17] = NaN; // row 3: NaN
    const tgt = [1, 45, 5, 2, 9];
    const logits = rlk.tensor(x, { shape: [5, V], device });
    const targets = rlk.tensor(Int32Array.from(tgt), { device });
    const inp: RefInput = { x, rows: 5, vocab: V, targets: tgt, temperature: 0.8, ignoreIndex: -100 };
    const res = rlk.tokenLogprobs(logits, targets, { entropy: true, temperature: 0.8 });
    const lp = f32(res.logprobs);
    const h = f32(res.entropy!);
    const ref = refForward(inp);
    expectClose('masked logprobs', lp, ref.logprobs, 1e-6, seed);
    expect(lp[2]).toBe(-Infinity);
    expect(Number.isNaN(lp[3]) && Number.isNaN(h[3])).toBe(true);
    for (const i of [0, 1, 2, 4]) expect(Number.isFinite(h[i])).toBe(true);
    expectClose('masked entropy', [h[0], h[1], h[2], h[4]], [ref.entropy[0], ref.entropy[1], ref.entropy[2], ref.entropy[4]], 1e-6, seed);
    const g = upstream(seed, 5);
    const gE = upstream(seed + 1, 5);
    const grad = f32(rlk.tokenLogprobsBackward(logits, targets, rlk.tensor(g, { device }), { temperature: 0.8, gradEntropy: rlk.tensor(gE, { device }) }));
    const gref = refBackward(inp, g, gE);
    for (let i = 0; i < 5 * V; i++) {
      const row = Math.floor(i / V);
      if (row === 3) expect(Number.isNaN(grad[i])).toBe(true);
      else expect(Number.isFinite(grad[i])).toBe(true);
    }
    expect(grad[2 * V + 5]).toBeCloseTo(Math.fround(g[2]) / 0.8, 6); // PyTorch's g / T at a -inf target
    const keep = (a: ArrayLike<number>) => Array.from(a).filter((_, i) => Math.floor(i / V) !== 3);
    expectClose('masked gradient', keep(grad), keep(gref), 1e-6, seed);
  });

  it('zero rows and 1-D logits (one row, 0-d targets)', () => {
    const empty = rlk.tokenLogprobs(rlk.zeros([0, 5], { device }), rlk.tensor(new Int32Array(0), { shape: [0], device }), { entropy: true, saveForBackward: true });
    expect([empty.logprobs.shape, empty.entropy!.shape, empty.stats!.shape]).toEqual([[0], [0], [0, 3]]);
    expect(rlk.tokenLogprobsBackward(rlk.zeros([0, 5], { device }), rlk.tensor(new Int32Array(0), { shape: [0], device }), rlk.zeros([0], { device })).shape).toEqual([0, 5]);
    const x = [1.5, -2, 3.25];
    const t = rlk.tensor(Int32Array.from([0]), { shape: [], device });
    const res = rlk.tokenLogprobs(rlk.tensor(x, { device }), t, { entropy: true });
    expect(res.logprobs.shape).toEqual([]);
    const ref = refForward({ x, rows: 1, vocab: 3, targets: [0], temperature: 1, ignoreIndex: -100 });
    expectClose('1-D logprobs', f32(res.logprobs), ref.logprobs, 1e-6, 0);
    expectClose('1-D entropy', f32(res.entropy!), ref.entropy, 1e-6, 0);
    const g = rlk.tokenLogprobsBackward(rlk.tensor(x, { device }), t, rlk.tensor([0.5], { shape: [], device }));
    expect(g.shape).toEqual([3]);
    expectClose('1-D gradient', f32(g), refBackward({ x, rows: 1, vocab: 3, targets: [0], temperature: 1, ignoreIndex: -100 }, [0.5]), 1e-6, 0);
  });

  it('out-of-range targets throw a RangeError naming targets before anything is written', () => {
    const c = makeCase(1, [3, 10], 'float32', { device: 'cpu', ignoreFrac: 0 });
    for (const bad of [10, -1, -101, 2 ** 40]) {
      const targets = rlk.tensor(BigInt64Array.from([0n, BigInt(bad), 3n]), { dtype: 'int64' });
      const out = { logprobs: poisoned([3]) };
      expect(() => rlk.tokenLogprobs(c.logits, targets, { out })).toThrow(RangeError);
      expect(() => rlk.tokenLogprobs(c.logits, targets)).toThrow(/targets\[1\]/);
      expect(Array.from(f32(out.logprobs)).every(Number.isNaN)).toBe(true);
      const grad = poisoned([3, 10]);
      expect(() => rlk.tokenLogprobsBackward(c.logits, targets, rlk.zeros([3]), { out: grad })).toThrow(/targets/);
      expect(Array.from(f32(grad)).every(Number.isNaN)).toBe(true);
    }
    // A custom ignoreIndex is honoured and -100 is then out of range.
    const t2 = rlk.tensor(Int32Array.from([0, 7, -1]));
    expect(Array.from(f32(rlk.tokenLogprobs(c.logits, t2, { ignoreIndex: -1 }).logprobs))[2]).toBe(0);
    expect(() => rlk.tokenLogprobs(c.logits, rlk.tensor(Int32Array.from([0, -100, 1])), { ignoreIndex: -1 })).toThrow(RangeError);
  });
}

// ---------------------------------------------------------------------------
function backwardSuite(device: rlk.Device): void {
  const SHAPES = [[1, 1], [2, 9], [3, 33], [2, 2, 100], [3, 1027], [1, 151936]];

  it.each(FLOAT_DTYPES)('matches the float64 analytic gradient (%s; recompute and saved stats; gradEntropy; upstream not ones)', (dtype) => {
    const seed = freshSeed();
    SHAPES.forEach((shape, k) => {
      const c = makeCase(seed + k, shape, dtype, { device });
      const lead = shape.slice(0, -1);
      const perRow = k % 2 === 0;
      const temps = perRow ? randomTemps(seed + k, c.rows) : undefined;
      const temperature = perRow ? rlk.tensor(Float32Array.from(temps!), { shape: [c.rows], device }) : 1.4;
      const g = upstream(seed + k, c.rows, 2);
      const gE = upstream(seed + k + 99, c.rows, 0.5);
      const inp = refInput(c, temps ?? 1.4);
      for (const withEntropy of [false, true]) {
        const ref = refBackward(inp, g, withEntropy ? gE : undefined);
        const gradEntropy = withEntropy ? rlk.tensor(gE, { shape: lead, device }) : undefined;
        const gl = rlk.tensor(g, { shape: lead, device });
        const a = rlk.tokenLogprobsBackward(c.logits, c.targets, gl, { temperature, gradEntropy });
        expect(a.dtype).toBe(dtype);
        expect(a.shape).toEqual(shape);
        const ga = f32(a);
        // Only the target's element has the cancellation (1 - p_t); elsewhere p_j's error is relative.
        const scale = (i: number): number => {
          const row = Math.floor(i / c.vocab);
          return c.tgt[row] === i % c.vocab ? Math.abs(g[row]) / (temps ? temps[row] : 1.4) : 0;
        };
        expectGradClose(`grad ${dtype} [${shape}] entropy=${withEntropy} (recompute)`, ga, ref, dtype, seed + k, scale);
        expectIgnoredZero('grad', ga, c, seed + k, -100, c.vocab);
        const fwd = rlk.tokenLogprobs(c.logits, c.targets, { temperature, saveForBackward: true });
        const b = f32(rlk.tokenLogprobsBackward(c.logits, c.targets, gl, { temperature, gradEntropy, stats: fwd.stats }));
        expectGradClose(`grad ${dtype} [${shape}] entropy=${withEntropy} (stats)`, b, ref, dtype, seed + k, scale);
      }
    });
  });

  it.each(FLOAT_DTYPES)('inPlace writes over the logits and out writes into a poisoned tensor (%s)', (dtype) => {
    const seed = freshSeed();
    const c = makeCase(seed, [4, 257], dtype, { device });
    const g = upstream(seed, 4, 3);
    const gl = rlk.tensor(g, { device });
    const ref = refBackward(refInput(c, 0.6), g);
    const out = poisoned([4, 257], device, dtype);
    const r1 = rlk.tokenLogprobsBackward(c.logits, c.targets, gl, { temperature: 0.6, out });
    expect(r1).toBe(out);
    expectGradClose('out', f32(out), ref, dtype, seed);
    const r2 = rlk.tokenLogprobsBackward(c.logits, c.targets, gl, { temperature: 0.6, inPlace: true });
    expect(r2).toBe(c.logits);
    expect(Array.from(f32(r2))).toEqual(Array.from(f32(out)));
  });

  it('the reference gradient matches central differences of the float64 objective', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 3;
    const V = 7;
    const x = randn(r, rows * V, 2);
    x[V + 2] = -Infinity;
    const inp: RefInput = { x, rows, vocab: V, targets: [2, 4, -100], temperature: [0.7, 1.3, 2], ignoreIndex: -100 };
    const g = [1.5, -0.7, 3];
    const gE = [-0.4, 2.2, 1];
    const analytic = refBackward(inp, g, gE);
    const h = 1e-6;
    for (let i = 0; i < rows * V; i++) {
      if (!Number.isFinite(x[i])) continue;
      const xp = Float64Array.from(x);
      const xm = Float64Array.from(x);
      xp[i] += h;
      xm[i] -= h;
      const fd = (refObjective({ ...inp, x: xp }, g, gE) - refObjective({ ...inp, x: xm }, g, gE)) / (2 * h);
      expect(Math.abs(fd - analytic[i])).toBeLessThan(1e-6 * Math.max(1, Math.abs(fd)));
    }
  });

  it('the kernel gradient matches central differences through the kernel (float32)', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 2;
    const V = 6;
    const x = Float64Array.from(randn(r, rows * V, 1.5), (v) => Math.fround(v));
    const tg = Int32Array.from([1, 5]);
    const targets = rlk.tensor(tg, { device });
    const g = [1.25, -0.5];
    const gE = [0.75, -1.5];
    const T = 0.8;
    const objective = (xs: Float64Array): number => {
      const res = rlk.tokenLogprobs(rlk.tensor(xs, { shape: [rows, V], device }), targets, { entropy: true, temperature: T });
      const lp = f32(res.logprobs);
      const h = f32(res.entropy!);
      return g[0] * lp[0] + g[1] * lp[1] + gE[0] * h[0] + gE[1] * h[1];
    };
    const grad = f32(
      rlk.tokenLogprobsBackward(rlk.tensor(x, { shape: [rows, V], device }), targets, rlk.tensor(g, { device }), {
        temperature: T,
        gradEntropy: rlk.tensor(gE, { device }),
      }),
    );
    const step = 1e-2;
    const fd = new Float64Array(rows * V);
    for (let i = 0; i < rows * V; i++) {
      const xp = Float64Array.from(x);
      const xm = Float64Array.from(x);
      xp[i] += step;
      xm[i] -= step;
      fd[i] = (objective(xp) - objective(xm)) / (2 * step);
    }
    // float32 forward differences: truncation O(step^2) plus rounding ~1e-7 / step.
    expectClose('finite differences through the kernel', grad, fd, 2e-3, seed);
  });

  it('ignored rows get exactly zero gradient, including in place', () => {
    const seed = freshSeed();
    const c = makeCase(seed, [8, 50], 'bfloat16', { device, ignoreFrac: 0.5, ignoreIndex: -1 });
    const g = rlk.tensor(upstream(seed, 8), { device });
    const grad = f32(rlk.tokenLogprobsBackward(c.logits, c.targets, g, { ignoreIndex: -1, gradEntropy: g, inPlace: true }));
    expectIgnoredZero('ignored grad', grad, c, seed, -1, 50);
  });
}

// ---------------------------------------------------------------------------
function shardSuite(device: rlk.Device): void {
  /** Uneven cut points of [0, V) into n shards. */
  function cuts(seed: number, V: number, n: number): number[] {
    const r = rng(seed);
    const pts = new Set<number>();
    while (pts.size < n - 1) pts.add(1 + Math.floor(r() * (V - 1)));
    return [0, ...Array.from(pts).sort((a, b) => a - b), V];
  }

  function slice(c: Case, dtype: FloatDType, a: number, b: number): rlk.Tensor {
    const xs = new Float64Array(c.rows * (b - a));
    for (let r = 0; r < c.rows; r++) for (let j = a; j < b; j++) xs[r * (b - a) + j - a] = c.x[r * c.vocab + j];
    return rlk.tensor(xs, { shape: [c.rows, b - a], dtype, device });
  }

  it.each([2, 3, 8])('%i uneven shards give the unsharded log-probs, entropy and gradient', (nShards) => {
    const seed = freshSeed();
    FLOAT_DTYPES.forEach((dtype, k) => {
      const V = [1000, 517, 4099][k];
      const c = makeCase(seed + k, [6, V], dtype, { device, ignoreFrac: 0.3 });
      const temps = randomTemps(seed + k, 6);
      const temperature = k === 1 ? rlk.tensor(Float32Array.from(temps), { device }) : 0.9;
      const tRef = k === 1 ? temps : 0.9;
      const cp = cuts(seed + k, V, nShards);
      const shards = cp.slice(0, -1).map((a, i) => slice(c, dtype, a, cp[i + 1]));
      const partials = shards.map((s, i) =>
        rlk.tokenLogprobsPartials(s, c.targets, { vocabStart: cp[i], vocabSize: V, temperature, entropy: true }),
      );
      expect(partials[0].shape).toEqual([6, 4]);
      const comb = rlk.combineTokenLogprobs(partials, c.targets, { temperature, entropy: true, saveForBackward: true });
      const full = rlk.tokenLogprobs(c.logits, c.targets, { temperature, entropy: true });
      const ref = refForward(refInput(c, tRef));
      expectClose(`sharded logprobs ${dtype}`, f32(comb.logprobs), ref.logprobs, fwdTol(dtype), seed + k);
      expectClose(`sharded entropy ${dtype}`, f32(comb.entropy!), ref.entropy, fwdTol(dtype), seed + k);
      expectClose(`sharded vs unsharded ${dtype}`, f32(comb.logprobs), f32(full.logprobs), 2e-6, seed + k);
      expectIgnoredZero('sharded logprobs', f32(comb.logprobs), c, seed + k);
      // Without entropy: 3 columns.
      const p3 = shards.map((s, i) => rlk.tokenLogprobsPartials(s, c.targets, { vocabStart: cp[i], vocabSize: V, temperature }));
      expect(p3[0].shape).toEqual([6, 3]);
      expectClose('sharded logprobs (3 columns)', f32(rlk.combineTokenLogprobs(p3, c.targets, { temperature }).logprobs), ref.logprobs, fwdTol(dtype), seed + k);
      // Backward from each shard, concatenated, against the reference.
      const g = upstream(seed + k, 6, 2);
      const gE = upstream(seed + k + 5, 6);
      const gref = refBackward(refInput(c, tRef), g, gE);
      const got = new Float32Array(6 * V);
      shards.forEach((s, i) => {
        const gs = f32(
          rlk.tokenLogprobsShardBackward(s, c.targets, rlk.tensor(g, { device }), {
            vocabStart: cp[i], vocabSize: V, stats: comb.stats!, temperature, gradEntropy: rlk.tensor(gE, { device }), inPlace: i % 2 === 0,
          }),
        );
        const w = cp[i + 1] - cp[i];
        for (let r = 0; r < 6; r++) for (let j = 0; j < w; j++) got[r * V + cp[i] + j] = gs[r * w + j];
      });
      const scale = (i: number): number => {
        const row = Math.floor(i / V);
        return c.tgt[row] === i % V ? Math.abs(g[row]) / (typeof tRef === 'number' ? tRef : tRef[row]) : 0;
      };
      expectGradClose(`sharded gradient ${dtype}`, got, gref, dtype, seed + k, scale);
      // Stats combined from 3-column partials hold no entropy (NaN): a backward without
      // gradEntropy must not let it reach any element (the target's included).
      const comb3 = rlk.combineTokenLogprobs(p3, c.targets, { temperature, saveForBackward: true });
      const gref3 = refBackward(refInput(c, tRef), g);
      const got3 = new Float32Array(6 * V);
      // Fresh shards: the loop above overwrote half of them in place.
      const fresh = cp.slice(0, -1).map((a, i) => slice(c, dtype, a, cp[i + 1]));
      fresh.forEach((s, i) => {
        const gs = f32(
          rlk.tokenLogprobsShardBackward(s, c.targets, rlk.tensor(g, { device }), { vocabStart: cp[i], vocabSize: V, stats: comb3.stats!, temperature }),
        );
        const w = cp[i + 1] - cp[i];
        for (let r = 0; r < 6; r++) for (let j = 0; j < w; j++) got3[r * V + cp[i] + j] = gs[r * w + j];
      });
      expectGradClose(`sharded gradient from 3-column stats ${dtype}`, got3, gref3, dtype, seed + k, scale);
    });
  });

  it('takes the partials stacked as one [shards, rows, k] tensor', () => {
    const seed = freshSeed();
    const c = makeCase(seed, [5, 64], 'float32', { device });
    const cp = [0, 20, 64];
    const partials = cp.slice(0, -1).map((a, i) => f32(rlk.tokenLogprobsPartials(slice(c, 'float32', a, cp[i + 1]), c.targets, { vocabStart: a, vocabSize: 64, entropy: true })));
    const stacked = rlk.tensor(Float32Array.from([...partials[0], ...partials[1]]), { shape: [2, 5, 4], device });
    const comb = rlk.combineTokenLogprobs(stacked, c.targets, { entropy: true });
    const ref = refForward(refInput(c));
    expectClose('stacked', f32(comb.logprobs), ref.logprobs, 1e-6, seed);
    expectClose('stacked entropy', f32(comb.entropy!), ref.entropy, 1e-6, seed);
  });
}

// ---------------------------------------------------------------------------
function determinismSuite(device: rlk.Device): void {
  it('is bitwise deterministic run to run and across thread counts', () => {
    const seed = freshSeed();
    const c = makeCase(seed, [64, 3001], 'bfloat16', { device });
    const g = rlk.tensor(upstream(seed, 64), { device });
    const run = () => {
      const f = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true, temperature: 0.7 });
      const b = rlk.tokenLogprobsBackward(c.logits, c.targets, g, { temperature: 0.7, gradEntropy: g });
      return [f32(f.logprobs), f32(f.entropy!), f32(b)];
    };
    const threads = rlk.getNumThreads();
    const a = run();
    const b = run();
    rlk.setNumThreads(1);
    const d = run();
    rlk.setNumThreads(threads);
    for (let k = 0; k < a.length; k++) {
      expect(Buffer.from(b[k].buffer).equals(Buffer.from(a[k].buffer))).toBe(true);
      expect(Buffer.from(d[k].buffer).equals(Buffer.from(a[k].buffer))).toBe(true);
    }
  });
}

// ---------------------------------------------------------------------------
describe('tokenLogprobs core (cpu)', () => {
  it('runs on the ISA path RLK_SIMD asks for', () => {
    const want = process.env.RLK_SIMD;
    if (want === 'avx2' || want === 'baseline') expect(rlk.buildInfo().cpu.simd).toBe(want);
  });
  forwardSuite('cpu');
  backwardSuite('cpu');
  shardSuite('cpu');
});

describe('tokenLogprobs (cpu)', () => {
  determinismSuite('cpu');

  it('handles 1,000,000 rows of a small vocabulary', () => {
    const seed = freshSeed();
    const rows = 1_000_000;
    const V = 8;
    const c = makeCase(seed, [rows, V], 'float32', { ignoreFrac: 0.1 });
    const res = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true });
    const ref = refForward(refInput(c));
    expectClose('1M rows logprobs', f32(res.logprobs), ref.logprobs, 1e-6, seed);
    expectClose('1M rows entropy', f32(res.entropy!), ref.entropy, 1e-6, seed);
    const g = rlk.full([rows], 0.5);
    const grad = f32(rlk.tokenLogprobsBackward(c.logits, c.targets, g, { inPlace: true }));
    // Spot-check a sample of rows against the reference.
    const sample: number[] = [0, rows - 1];
    for (let i = 0; i < 200; i++) sample.push(Math.floor(rng(seed + i)() * rows));
    const sx = new Float64Array(sample.length * V);
    sample.forEach((r, i) => sx.set(c.x.subarray(r * V, r * V + V), i * V));
    const gref = refBackward({ x: sx, rows: sample.length, vocab: V, targets: sample.map((r) => c.tgt[r]), temperature: 1, ignoreIndex: -100 }, sample.map(() => 0.5));
    const got = new Float32Array(sample.length * V);
    sample.forEach((r, i) => got.set(grad.subarray(r * V, r * V + V), i * V));
    expectClose('1M rows gradient sample', got, gref, 1e-6, seed);
  });

  it.skipIf(IS_CHILD)('every ISA path (avx2, baseline) agrees with the reference', () => {
    for (const isa of ['avx2', 'baseline'] as const) {
      const out = runOnIsaPath('tests/token_logprobs.test.ts', 'core', isa, { RLK_TLP_CHILD: '1' }, 180_000);
      // The child checks that it ran on that path ('runs on the ISA path RLK_SIMD asks for').
      expect(out).toMatch(/passed/);
      expect(out).not.toMatch(/failed/);
    }
  });
});

// ---------------------------------------------------------------------------
describe('tokenLogprobs rejects bad input', () => {
  const logits = rlk.tensor(new Float32Array(12), { shape: [3, 4] });
  const targets = rlk.tensor(Int32Array.from([0, 1, 2]));
  const g = rlk.zeros([3]);
  const stats = rlk.zeros([3, 3]);
  const partial = rlk.zeros([3, 3]);
  const disposed = rlk.zeros([3, 4]);
  disposed.dispose();

  type Call = () => unknown;
  function expectThrow(call: Call, kind: typeof TypeError | typeof RangeError | typeof rlk.DisposedError, name: RegExp): void {
    let err: unknown;
    try {
      call();
    } catch (e) {
      err = e;
    }
    expect(err, `expected ${kind.name} matching ${name}`).toBeInstanceOf(kind);
    expect((err as Error).message).toMatch(name);
  }

  it('tokenLogprobs', () => {
    const f = rlk.tokenLogprobs as (...a: unknown[]) => unknown;
    expectThrow(() => f(null, targets), TypeError, /logits must be a tensor/);
    expectThrow(() => f([1, 2], targets), TypeError, /logits/);
    expectThrow(() => f(logits, new Int32Array(3)), TypeError, /targets must be a tensor/);
    expectThrow(() => f(rlk.zeros([3, 4], { dtype: 'int32' }), targets), TypeError, /logits must be float32, bfloat16 or float16, got int32/);
    expectThrow(() => f(logits, rlk.zeros([3])), TypeError, /targets must be int32 or int64, got float32/);
    expectThrow(() => f(logits, rlk.tensor(Int32Array.from([0, 1]))), RangeError, /targets must have shape \[3\]/);
    expectThrow(() => f(rlk.zeros([3, 0]), targets), RangeError, /vocabulary/);
    expectThrow(() => f(disposed, targets), rlk.DisposedError, /logits was disposed/);
    expectThrow(() => f(logits, targets, { temprature: 1 }), TypeError, /unknown option 'temprature'/);
    expectThrow(() => f(logits, targets, 5), TypeError, /options must be an object/);
    for (const t of [0, -1, NaN, Infinity, 1e-320, 1e-40]) expectThrow(() => f(logits, targets, { temperature: t }), RangeError, /temperature/);
    expectThrow(() => f(logits, targets, { temperature: '1' }), TypeError, /temperature/);
    expectThrow(() => f(logits, targets, { temperature: rlk.zeros([3], { dtype: 'bfloat16' }) }), TypeError, /temperature must be float32/);
    expectThrow(() => f(logits, targets, { temperature: rlk.zeros([4]) }), RangeError, /temperature must have shape/);
    expectThrow(() => f(logits, targets, { temperature: rlk.tensor([1, 0, 1]) }), RangeError, /temperature\[1\]/);
    expectThrow(() => f(logits, targets, { temperature: rlk.tensor([1, NaN, 1]) }), RangeError, /temperature\[1\]/);
    // 1e-40 is a float32 subnormal whose inverse overflows float32 (finite in double).
    expectThrow(() => f(logits, targets, { temperature: rlk.tensor([1, 1e-40, 1]) }), RangeError, /temperature\[1\]/);
    expectThrow(() => f(logits, targets, { entropy: 1 }), TypeError, /entropy must be a boolean/);
    expectThrow(() => f(logits, targets, { ignoreIndex: 1.5 }), RangeError, /ignoreIndex/);
    expectThrow(() => f(logits, targets, { ignoreIndex: 2 ** 60 }), RangeError, /ignoreIndex/);
    expectThrow(() => f(logits, targets, { out: { logprobs: rlk.zeros([4]) } }), RangeError, /out.logprobs must have shape/);
    expectThrow(() => f(logits, targets, { out: { logprobs: rlk.zeros([3], { dtype: 'float16' }) } }), TypeError, /out.logprobs must be float32/);
    expectThrow(() => f(logits, targets, { out: { entropy: rlk.zeros([3]) } }), TypeError, /entropy is false/);
    expectThrow(() => f(logits, targets, { out: { lp: rlk.zeros([3]) } }), TypeError, /unknown option 'lp'/);
    expectThrow(() => f(logits, targets, { out: { stats: rlk.zeros([3, 2]) }, saveForBackward: true }), RangeError, /out.stats/);
    expectThrow(() => f(logits, rlk.tensor(Int32Array.from([0, 4, 1]))), RangeError, /targets\[1\] = 4/);
  });

  it('tokenLogprobsBackward', () => {
    const f = rlk.tokenLogprobsBackward as (...a: unknown[]) => unknown;
    expectThrow(() => f(logits, targets), TypeError, /gradLogprobs must be a tensor/);
    expectThrow(() => f(logits, targets, rlk.zeros([3], { dtype: 'bfloat16' })), TypeError, /gradLogprobs must be float32/);
    expectThrow(() => f(logits, targets, rlk.zeros([4])), RangeError, /gradLogprobs must have shape/);
    expectThrow(() => f(logits, targets, g, { gradEntropy: rlk.zeros([2]) }), RangeError, /gradEntropy/);
    expectThrow(() => f(logits, targets, g, { gradEntropy: 1 }), TypeError, /gradEntropy must be a tensor/);
    expectThrow(() => f(logits, targets, g, { stats: rlk.zeros([3, 4]) }), RangeError, /stats must have shape \[3, 3\]/);
    expectThrow(() => f(logits, targets, g, { inPlace: 'yes' }), TypeError, /inPlace must be a boolean/);
    expectThrow(() => f(logits, targets, g, { inPlace: true, out: rlk.zeros([3, 4]) }), TypeError, /out cannot be given with inPlace/);
    expectThrow(() => f(logits, targets, g, { out: rlk.zeros([3, 4], { dtype: 'bfloat16' }) }), TypeError, /out must be float32/);
    expectThrow(() => f(logits, targets, g, { out: rlk.zeros([4, 3]) }), RangeError, /out must have shape \[3, 4\]/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 0 }), TypeError, /unknown option 'vocabStart'/);
    expectThrow(() => f(logits, targets, g, { temperature: -2 }), RangeError, /temperature/);
    expectThrow(() => f(logits, targets, disposed), rlk.DisposedError, /gradLogprobs was disposed/);
    expectThrow(() => f(logits, rlk.tensor(Int32Array.from([0, 1, 9])), g), RangeError, /targets\[2\] = 9/);
  });

  it('tokenLogprobsPartials', () => {
    const f = rlk.tokenLogprobsPartials as (...a: unknown[]) => unknown;
    expectThrow(() => f(logits, targets), TypeError, /options/);
    expectThrow(() => f(logits, targets, { vocabSize: 8 }), TypeError, /vocabStart is required/);
    expectThrow(() => f(logits, targets, { vocabStart: 0 }), TypeError, /vocabSize is required/);
    expectThrow(() => f(logits, targets, { vocabStart: -1, vocabSize: 8 }), RangeError, /vocabStart/);
    expectThrow(() => f(logits, targets, { vocabStart: 5, vocabSize: 8 }), RangeError, /vocabSize/);
    expectThrow(() => f(logits, targets, { vocabStart: 0.5, vocabSize: 8 }), RangeError, /vocabStart/);
    expectThrow(() => f(logits, targets, { vocabStart: 0, vocabSize: NaN }), RangeError, /vocabSize/);
    expectThrow(() => f(logits, rlk.tensor(Int32Array.from([0, 8, 1])), { vocabStart: 4, vocabSize: 8 }), RangeError, /targets\[1\] = 8/);
    expectThrow(() => f(logits, targets, { vocabStart: 0, vocabSize: 8, out: rlk.zeros([3, 4]) }), RangeError, /out must have shape \[3, 3\]/);
    expectThrow(() => f(logits, targets, { vocabStart: 0, vocabSize: 8, stats: stats }), TypeError, /unknown option 'stats'/);
    expectThrow(() => f(disposed, targets, { vocabStart: 0, vocabSize: 8 }), rlk.DisposedError, /logitsShard was disposed/);
  });

  it('combineTokenLogprobs', () => {
    const f = rlk.combineTokenLogprobs as (...a: unknown[]) => unknown;
    expectThrow(() => f(undefined, targets), TypeError, /partials/);
    expectThrow(() => f([], targets), RangeError, /at least one/);
    expectThrow(() => f([partial, 3], targets), TypeError, /partials\[1\] must be a tensor/);
    expectThrow(() => f([rlk.zeros([3, 5])], targets), RangeError, /partials\[0\] must have shape/);
    expectThrow(() => f([rlk.zeros([4, 3])], targets), RangeError, /partials\[0\] must have shape/);
    expectThrow(() => f([partial, rlk.zeros([3, 4])], targets), RangeError, /columns/);
    expectThrow(() => f([partial], targets, { entropy: true }), RangeError, /entropy: true needs/);
    expectThrow(() => f([partial], rlk.zeros([3])), TypeError, /targets must be int32 or int64/);
    expectThrow(() => f([rlk.zeros([3, 3], { dtype: 'float16' })], targets), TypeError, /partials\[0\] must be float32/);
    expectThrow(() => f([rlk.zeros([200, 3, 3])], targets), RangeError, /shards/);
    expectThrow(() => f([disposed], targets), rlk.DisposedError, /partials\[0\] was disposed/);
    expectThrow(() => f([partial], targets, { vocabStart: 0 }), TypeError, /unknown option/);
    expectThrow(() => f([partial], targets, { temperature: 0 }), RangeError, /temperature/);
  });

  it('tokenLogprobsShardBackward', () => {
    const f = rlk.tokenLogprobsShardBackward as (...a: unknown[]) => unknown;
    expectThrow(() => f(logits, targets, g), TypeError, /options/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 0, vocabSize: 8 }), TypeError, /stats is required/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 6, vocabSize: 8, stats }), RangeError, /vocabSize/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 0, vocabSize: 8, stats: rlk.zeros([3]) }), RangeError, /stats must have shape/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 0, vocabSize: 8, stats: disposed }), rlk.DisposedError, /stats was disposed/);
    expectThrow(() => f(logits, targets, g, { vocabStart: 0, vocabSize: 8, stats, entropy: true }), TypeError, /unknown option 'entropy'/);
    expectThrow(() => f(logits, rlk.tensor(Int32Array.from([0, 8, 1])), g, { vocabStart: 0, vocabSize: 8, stats }), RangeError, /targets\[1\] = 8/);
  });

  it('the addon re-checks what memory safety depends on', () => {
    // The addon itself, called past the TypeScript checks.
    const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    expect(() => n.tokenLogprobsForward(logits, targets, 1, null, -100, false, false, null, null, null)).toThrow(TypeError);
    const h = (t: rlk.Tensor) => t.handle('test');
    expect(() => n.tokenLogprobsForward(h(logits), h(rlk.tensor(Int32Array.from([0, 1]))), 1, null, -100, false, false, null, null, null)).toThrow(RangeError);
    expect(() => n.tokenLogprobsForward(h(logits), h(targets), 0, null, -100, false, false, null, null, null)).toThrow(RangeError);
    expect(() => n.tokenLogprobsForward(h(logits), h(rlk.tensor(Int32Array.from([0, 1, 99]))), 1, null, -100, false, false, null, null, null)).toThrow(/targets\[2\]/);
    expect(() => n.tokenLogprobsBackward(h(logits), h(targets), h(g), 1, null, -100, null, null, 0, 4, false, h(rlk.zeros([3, 5])))).toThrow(RangeError);
    expect(() => n.tokenLogprobsShardBackward(h(logits), h(targets), h(g), 1, null, -100, null, null, 2, 4, false, null)).toThrow(/vocabSize|stats/);
    expect(() => n.combineTokenLogprobs([h(rlk.zeros([2, 3]))], h(targets), 1, null, -100, false, false, null, null, null)).toThrow(RangeError);
  });
});


// ---------------------------------------------------------------------------
describeCuda('tokenLogprobs (cuda)', () => {
  forwardSuite('cuda');
  backwardSuite('cuda');
  shardSuite('cuda');
  determinismSuite('cuda');

  it('matches the CPU on [4096, 2000] bf16 and handles 200,000 rows', () => {
    const seed = freshSeed();
    const c = makeCase(seed, [cudaShape(4096, 300), 2000], 'bfloat16', { device: 'cuda' });
    const cpuLogits = c.logits.to('cpu');
    const cpuTargets = c.targets.to('cpu');
    const a = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true });
    const b = rlk.tokenLogprobs(cpuLogits, cpuTargets, { entropy: true });
    const ref = refForward(refInput(c));
    expectClose('cuda logprobs', f32(a.logprobs), ref.logprobs, TOLERANCE.bfloat16, seed);
    expectClose('cuda entropy', f32(a.entropy!), ref.entropy, TOLERANCE.bfloat16, seed);
    expectClose('cuda vs cpu logprobs', f32(a.logprobs), f32(b.logprobs), 2 * TOLERANCE.bfloat16, seed);
    const big = makeCase(seed, [cudaShape(200_000, 20_000), 8], 'float32', { device: 'cuda' });
    const res = rlk.tokenLogprobs(big.logits, big.targets);
    expectClose('200k rows', f32(res.logprobs), refForward(refInput(big)).logprobs, 1e-6, seed);
  });

  it('reports an out-of-range target as a RangeError at the next read', async () => {
    const logits = rlk.zeros([3, 10], { device: 'cuda' });
    const targets = rlk.tensor(Int32Array.from([0, 10, 1]), { device: 'cuda' });
    const res = rlk.tokenLogprobs(logits, targets);
    await expect(res.logprobs.toArray()).rejects.toThrow(RangeError);
    // The error is taken once: the next op and read succeed.
    const ok = rlk.tokenLogprobs(logits, rlk.tensor(Int32Array.from([0, 9, 1]), { device: 'cuda' }));
    expectClose('after the error', (await ok.logprobs.toArray()) as Float32Array, new Array(3).fill(-Math.log(10)), 1e-6, 0);
  });

  // The launchers set the tensor's device: the runtime sets it only when it creates a
  // stream or cudaMallocs, so after work on cuda:0 served from the cache, cuda:1's
  // launch would go to the wrong device.
  it('runs on the tensors\' device whichever device was used last (2 GPUs or more)', (ctx) => {
    if (rlk.cuda.deviceCount() < 2) ctx.skip();
    const seed = freshSeed();
    const cases = [makeCase(seed, [5, 300], 'float32', { device: 'cuda:0' }), makeCase(seed + 1, [5, 3000], 'bfloat16', { device: 'cuda:1' })];
    for (let round = 0; round < 3; round++) {
      for (const c of [cases[round % 2], cases[(round + 1) % 2]]) {
        const res = rlk.tokenLogprobs(c.logits, c.targets, { entropy: true });
        const ref = refForward(refInput(c));
        expectClose(`logprobs on ${c.logits.device}`, f32(res.logprobs), ref.logprobs, fwdTol(c.logits.dtype as FloatDType), c.seed);
        res.logprobs.dispose();
        res.entropy!.dispose();
      }
    }
  });

  it('reports a bad per-row temperature at the next read, on an ignored row too (as the CPU throws)', async () => {
    const logits = rlk.zeros([3, 10], { device: 'cuda' });
    const targets = rlk.tensor(Int32Array.from([0, -100, 1]), { device: 'cuda' });
    for (const bad of [0, 1e-40]) {
      const temperature = rlk.tensor(Float32Array.from([1, bad, 1]), { device: 'cuda' });
      const res = rlk.tokenLogprobs(logits, targets, { temperature });
      await expect(res.logprobs.toArray()).rejects.toThrow(RangeError);
      const g = rlk.tokenLogprobsBackward(logits, targets, rlk.full([3], 1, { device: 'cuda' }), { temperature });
      await expect(g.toArray()).rejects.toThrow(RangeError);
    }
  });
});
