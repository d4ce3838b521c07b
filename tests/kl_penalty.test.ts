// klPenalty against the float64 reference of DESIGN 3.4 (tests/reference/kl_penalty.ts), on
// every CPU ISA path (the AVX2 and baseline ones in child processes) and the devices found.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { DEVICES, TOLERANCE, describeCuda, expectClose, freshSeed, randn, rng, runOnIsaPath } from './helpers.js';
import { klPenaltyRef, type KlRefEstimator } from './reference/kl_penalty.js';

const ESTIMATORS: KlRefEstimator[] = ['k1', 'abs', 'k2', 'k3', 'k1+', 'k3+'];
const IS_CHILD = process.env.RLK_KL_CHILD === '1';

function f32(a: ArrayLike<number>): Float32Array {
  return Float32Array.from(a);
}

function makeInputs(seed: number, n: number, scale: number): { logp: Float32Array; ref: Float32Array; mask: Uint8Array } {
  const r = rng(seed);
  const logp = f32(randn(r, n, 2).map((v) => -Math.abs(v) - 0.01));
  const noise = randn(r, n, scale);
  const ref = f32(Array.from(logp, (v, i) => v + noise[i]));
  const mask = Uint8Array.from({ length: n }, () => (r() < 0.8 ? 1 : 0));
  return { logp, ref, mask };
}

function check(device: rlk.Device, estimator: KlRefEstimator, shape: number[], scale: number, withMask: boolean): void {
  const seed = freshSeed();
  const n = shape.reduce((a, b) => a * b, 1);
  const { logp, ref, mask } = makeInputs(seed, n, scale);
  const lt = rlk.tensor(logp, { shape, device });
  const rt = rlk.tensor(ref, { shape, device });
  const mt = withMask ? rlk.tensor(mask, { shape, dtype: 'uint8', device }) : undefined;
  const out = rlk.klPenalty(lt, rt, { estimator, mask: mt });
  expect(out.values.shape).toEqual(shape);
  expect(out.grad.shape).toEqual(shape);
  const want = klPenaltyRef(estimator, logp, ref, withMask ? mask : undefined);
  const what = `klPenalty ${estimator} [${shape}] scale ${scale} mask ${withMask} on ${device}`;
  expectClose(`${what} values`, out.values.toArraySync(), want.values, TOLERANCE.float32, seed);
  expectClose(`${what} grad`, out.grad.toArraySync(), want.grad, TOLERANCE.float32, seed);
  if (withMask) {
    const v = out.values.toArraySync();
    const g = out.grad.toArraySync();
    for (let i = 0; i < n; i++) if (!mask[i] && (v[i] !== 0 || g[i] !== 0)) throw new Error(`${what}: masked element ${i} not 0 (seed ${seed})`);
  }
}

function suite(device: rlk.Device): void {
  for (const estimator of ESTIMATORS) {
    it(`${estimator}: values and gradient match float64 (several shapes, masks)`, () => {
      check(device, estimator, [1], 0.5, false);
      check(device, estimator, [37], 0.5, true);
      check(device, estimator, [3, 5, 67], 1, true);
      check(device, estimator, [4, 8193], 3, false);  // |d| beyond the clamps of k3 too
    });
  }

  it('k3 is accurate for tiny differences (no cancellation in e^x - x - 1)', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const n = 4000;
    const logp = f32(Array.from({ length: n }, () => -1 - r()));
    // |ref - logp| from ~1e-7 to ~1: the value spans 5e-15 to 0.7, each must be right to float precision.
    const ref = f32(Array.from(logp, (v, i) => v + (i % 2 ? 1 : -1) * 10 ** (-7 + 7 * r()) * 1));
    const out = rlk.klPenalty(rlk.tensor(logp, { device }), rlk.tensor(ref, { device }), { estimator: 'k3' });
    const want = klPenaltyRef('k3', logp, ref);
    const got = out.values.toArraySync();
    // Elementwise relative error, so the tiny values are not hidden by the large ones.
    let worst = 0;
    let at = -1;
    for (let i = 0; i < n; i++) {
      if (want.values[i] === 0) continue;
      const e = Math.abs(got[i] - want.values[i]) / want.values[i];
      if (e > worst) {
        worst = e;
        at = i;
      }
    }
    if (worst > 1e-6) throw new Error(`k3 near 0: elementwise relative error ${worst} at ${at}: got ${got[at]}, want ${want.values[at]} (seed ${seed})`);
    expectClose('k3 near 0 grad', out.grad.toArraySync(), want.grad, TOLERANCE.float32, seed);
  });

  it('k3 clamps: |ref - logp| > 20 and values above 10 give value 10 and gradient 0', () => {
    // x = -25, 29, -3.5, 3, 0, 0, -20, 20 (on the bounds: value 10, gradient 0 whichever side of
    // the x clamp they fall), repeated 11 times: the vector paths (16 or 8 a step) see them too.
    const rep = <T,>(a: T[]) => Array.from({ length: 11 }, () => a).flat();
    const logpAll = f32(rep([-1, -30, -1, -5, -1, -2, -1, -21]));
    const refAll = f32(rep([-26, -1, -4.5, -2, -1, -2, -21, -1]));
    const outAll = rlk.klPenalty(rlk.tensor(logpAll, { device }), rlk.tensor(refAll, { device }), { estimator: 'k3' });
    const vAll = outAll.values.toArraySync();
    const gAll = outAll.grad.toArraySync();
    for (let b = 0; b < 11; b++) {
      const v = vAll.slice(8 * b, 8 * b + 8);
      const g = gAll.slice(8 * b, 8 * b + 8);
    expect(Array.from(v.slice(0, 2))).toEqual([10, 10]);
    expect(Array.from(g.slice(0, 2))).toEqual([0, 0]);
    expect(Array.from(v.slice(6, 8))).toEqual([10, 10]);
    expect(Array.from(g.slice(6, 8), (x) => x + 0)).toEqual([0, 0]);
    expect(v[2]).toBeCloseTo(Math.exp(-3.5) + 3.5 - 1, 6);
    expect(g[2]).toBeCloseTo(1 - Math.exp(-3.5), 6);
    expect(v[3]).toBe(10); // e^3 - 4 = 16.09 > 10
    expect(g[3]).toBe(0);
    expect(v[4]).toBe(0);
    expect(Math.abs(g[4])).toBe(0);
    }
  });

  it('verl aliases map to the same estimators', () => {
    const seed = freshSeed();
    const { logp, ref } = makeInputs(seed, 101, 1);
    const lt = rlk.tensor(logp, { device });
    const rt = rlk.tensor(ref, { device });
    for (const [alias, name] of [['kl', 'k1'], ['mse', 'k2'], ['low_var_kl', 'k3']] as const) {
      const a = rlk.klPenalty(lt, rt, { estimator: alias });
      const b = rlk.klPenalty(lt, rt, { estimator: name });
      expect(a.values.toArraySync()).toEqual(b.values.toArraySync());
      expect(a.grad.toArraySync()).toEqual(b.grad.toArraySync());
    }
  });

  it('empty tensors and determinism', () => {
    const e = rlk.klPenalty(rlk.zeros([0, 3], { device }), rlk.zeros([0, 3], { device }), { estimator: 'k3' });
    expect(e.values.shape).toEqual([0, 3]);
    const seed = freshSeed();
    const { logp, ref } = makeInputs(seed, 20001, 1);
    const lt = rlk.tensor(logp, { device });
    const rt = rlk.tensor(ref, { device });
    const a = rlk.klPenalty(lt, rt, { estimator: 'k3' });
    const b = rlk.klPenalty(lt, rt, { estimator: 'k3' });
    expect(Buffer.from(a.values.toArraySync().buffer).equals(Buffer.from(b.values.toArraySync().buffer))).toBe(true);
    expect(Buffer.from(a.grad.toArraySync().buffer).equals(Buffer.from(b.grad.toArraySync().buffer))).toBe(true);
  });
}

describe('klPenalty (cpu)', () => {
  it('runs on the ISA path RLK_SIMD asks for', () => {
    const want = process.env.RLK_SIMD;
    if (want === 'avx2' || want === 'baseline') expect(rlk.buildInfo().cpu.simd).toBe(want);
  });
  suite('cpu');
  // k3 has its own AVX-512 and AVX2 vector code (native/cpu/kl_penalty.cc); the baseline path is
  // the double-precision scalar one. Each runs the same checks in a child process.
  it.skipIf(IS_CHILD)('every ISA path (avx2, baseline) agrees with the reference', () => {
    for (const isa of ['avx2', 'baseline'] as const) {
      const out = runOnIsaPath('tests/kl_penalty.test.ts', 'klPenalty \\(cpu\\)', isa, { RLK_KL_CHILD: '1' }, 180_000);
      expect(out).toMatch(/passed/);
      expect(out).not.toMatch(/failed/);
    }
  });
});
describeCuda('klPenalty (cuda)', () => suite('cuda'));

describe('klPenalty bad input', () => {
  const lp = rlk.tensor([-1, -2, -3]);
  const rf = rlk.tensor([-1.5, -2, -2.5]);
  const bad = (f: () => unknown, kind: ErrorConstructor | typeof rlk.DisposedError, re: RegExp): void => {
    expect(f).toThrow(kind);
    expect(f).toThrow(re);
  };
  it('throws TypeError / RangeError / DisposedError naming the argument', () => {
    bad(() => rlk.klPenalty([1, 2] as never, rf, { estimator: 'k1' }), TypeError, /klPenalty: logprobs must be a tensor/);
    bad(() => rlk.klPenalty(lp, null as never, { estimator: 'k1' }), TypeError, /refLogprobs must be a tensor/);
    bad(() => rlk.klPenalty(lp, rf, undefined as never), TypeError, /options/);
    bad(() => rlk.klPenalty(lp, rf, {} as never), TypeError, /estimator/);
    bad(() => rlk.klPenalty(lp, rf, { estimator: 'k4' as never }), RangeError, /options\.estimator must be one of/);
    bad(() => rlk.klPenalty(lp, rf, { estimator: 3 as never }), TypeError, /options\.estimator must be a string/);
    bad(() => rlk.klPenalty(lp, rf, { estimator: 'k1', bogus: 1 } as never), TypeError, /unknown option 'bogus'/);
    bad(() => rlk.klPenalty(lp, rlk.tensor([1, 2]), { estimator: 'k1' }), RangeError, /refLogprobs must have shape \[3\]/);
    bad(() => rlk.klPenalty(lp, rlk.tensor([1, 2, 3], { dtype: 'bfloat16' }), { estimator: 'k1' }), TypeError, /refLogprobs must be float32, got bfloat16/);
    bad(() => rlk.klPenalty(rlk.tensor([1, 2, 3], { dtype: 'int32' }), rf, { estimator: 'k1' }), TypeError, /logprobs must be float32, got int32/);
    bad(() => rlk.klPenalty(lp, rf, { estimator: 'k1', mask: rlk.tensor([1, 0, 1]) }), TypeError, /options\.mask must be uint8, got float32/);
    bad(() => rlk.klPenalty(lp, rf, { estimator: 'k1', mask: rlk.tensor([1, 0], { dtype: 'uint8' }) }), RangeError, /options\.mask must have shape \[3\]/);
    const gone = rlk.tensor([1, 2, 3]);
    gone.dispose();
    bad(() => rlk.klPenalty(lp, gone, { estimator: 'k1' }), rlk.DisposedError, /refLogprobs was disposed/);
  });
});

describe('klPenalty devices', () => {
  it('runs on every available device', () => {
    for (const device of DEVICES) {
      const out = rlk.klPenalty(rlk.tensor([-1], { device }), rlk.tensor([-2], { device }), { estimator: 'k2' });
      expect(out.values.toArraySync()[0]).toBeCloseTo(0.5, 6);
    }
  });
});
