// 16-bit gradients of vocabDivergence at V = 151936 (issue 9): each element
// within one unit in the last place of the float64 value. Rows where one
// logit dominates (a confident teacher and student) and 16-bit logits whose
// differences are exact make p_t ~ p_s on many elements at once, where the
// gradient p_s - p_t is a small difference of the two: the normalisers and
// the row offset of x = log p_t - log p_s must carry more than float32 digits
// there. The only slack allowed is for genuine cancellation inside an
// element's formula: 2^-20 of the magnitude of the terms it subtracts.
import { describe, it } from 'vitest';
import * as rlk from '../src/index.js';
import { freshSeed, randn, rng } from './helpers.js';
import { vocabDivergenceRef, type Kind } from './reference/vocab_divergence.js';

function logSoftmax(z: ArrayLike<number>, off: number, V: number, T: number): Float64Array {
  let m = -Infinity;
  for (let j = 0; j < V; j++) m = Math.max(m, z[off + j] / T);
  let s = 0;
  for (let j = 0; j < V; j++) s += Math.exp(z[off + j] / T - m);
  const l = Math.log(s);
  return Float64Array.from({ length: V }, (_, j) => z[off + j] / T - m - l);
}

/**
 * Per element, the magnitude of the terms its gradient subtracts (times 1/T): p |x| and p KL for
 * p (x - KL); for jsd w p |y| and w p KL(p || M). For p_s - p_t the kernels form p_t expm1(-x),
 * accurate relative to the result when x = log p_t - log p_s is; x itself is a float32 difference
 * of log-probs of size |log p| (~15 here), so near x = 0 its error is ~2^-22 (|log p_t| + |log p_s|)
 * and the term's scale is p (|log p_t| + |log p_s|) (seed 1803051755: x ~ 5e-3, 1.02 ulps).
 */
function termScale(s: ArrayLike<number>, t: ArrayLike<number>, rows: number, V: number, kind: Kind, beta: number, T: number): { gs: Float64Array; gt: Float64Array } {
  const gs = new Float64Array(rows * V);
  const gt = new Float64Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const off = r * V;
    const ls = logSoftmax(s, off, V, T);
    const lt = logSoftmax(t, off, V, T);
    let klF = 0, klR = 0, klT = 0, klS = 0;
    const lm = new Float64Array(V);
    for (let j = 0; j < V; j++) {
      const ps = Math.exp(ls[j]), pt = Math.exp(lt[j]);
      if (pt > 0) klF += pt * (lt[j] - ls[j]);
      if (ps > 0) klR += ps * (ls[j] - lt[j]);
      lm[j] = Math.log(beta * pt + (1 - beta) * ps);
      if (pt > 0) klT += pt * (lt[j] - lm[j]);
      if (ps > 0) klS += ps * (ls[j] - lm[j]);
    }
    for (let j = 0; j < V; j++) {
      const ps = Math.exp(ls[j]), pt = Math.exp(lt[j]);
      const x = lt[j] - ls[j];
      if (kind === 'forward-kl') {
        gs[off + j] = pt * (Math.abs(lt[j]) + Math.abs(ls[j])); // p_s - p_t = p_t expm1(-x): x's own float32 error
        gt[off + j] = pt * (Math.abs(x) + Math.abs(klF) + Math.abs(lt[j]) + Math.abs(ls[j])); // x - KL from float32 logit differences, as above
      } else if (kind === 'reverse-kl') {
        // x - KL is formed from float32 differences of the logits (t_j - t_r) - (s_j - s_r), whose
        // rounding scales with them, not with x - KL (seed 1965850931: x ~ KL, 3 ulps off).
        gs[off + j] = ps * (Math.abs(x) + Math.abs(klR) + Math.abs(lt[j]) + Math.abs(ls[j]));
        gt[off + j] = ps * (Math.abs(lt[j]) + Math.abs(ls[j])); // p_t - p_s = p_s expm1(x), as above
      } else {
        gs[off + j] = (1 - beta) * ps * (Math.abs(ls[j] - lm[j]) + Math.abs(klS));
        gt[off + j] = beta * pt * (Math.abs(lt[j] - lm[j]) + Math.abs(klT));
      }
      gs[off + j] /= T;
      gt[off + j] /= T;
    }
  }
  return { gs, gt };
}

function expectWithinUlp(what: string, got: ArrayLike<number>, want: ArrayLike<number>, scale: ArrayLike<number>, mant: number, seed: number): void {
  for (let i = 0; i < want.length; i++) {
    const w = want[i];
    const e = w === 0 ? -126 : Math.max(Math.floor(Math.log2(Math.abs(w))), -126);
    const allowed = 2 ** (e - mant) + 2 ** -20 * scale[i];
    if (!(Math.abs(got[i] - w) <= allowed)) {
      throw new Error(`${what}: element ${i} got ${got[i]}, want ${w}: ${(Math.abs(got[i] - w) / 2 ** (e - mant)).toFixed(2)} ulps (seed ${seed})`);
    }
  }
}

describe('vocabDivergence 16-bit gradients at V = 151936 (issue 9)', () => {
  it.each([
    ['forward-kl', 0.5, 1],
    ['reverse-kl', 0.5, 0.7],
    ['jsd', 0.3, 0.7],
  ] as Array<[Kind, number, number]>)('%s: bfloat16 gradients of confident and random rows within one ulp', (kind, beta, T) => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 151936;
    const rows = 2;
    const s = randn(r, rows * V, 3);
    const t = randn(r, rows * V, 3);
    // Row 0: student and teacher confident on the same token, their maxima 2 apart, so every
    // element with t - s = -2 (common in bfloat16) has p_t within ~1e-5 of p_s.
    const a = Math.floor(r() * V);
    s[a] = 25;
    t[a] = 23;
    const S = rlk.tensor(s, { shape: [rows, V], dtype: 'bfloat16' });
    const Tt = rlk.tensor(t, { shape: [rows, V], dtype: 'bfloat16' });
    const sIn = S.toArraySync() as Float32Array;
    const tIn = Tt.toArraySync() as Float32Array;
    const out = rlk.vocabDivergence(S, Tt, { kind, beta, temperature: T, teacherGrad: true });
    const ref = vocabDivergenceRef(sIn, tIn, rows, V, { kind, beta, temperature: T });
    const scale = termScale(sIn, tIn, rows, V, kind, beta, T);
    expectWithinUlp(`${kind} gradStudent`, out.gradStudent.toArraySync() as Float32Array, ref.gradStudent, scale.gs, 7, seed);
    expectWithinUlp(`${kind} gradTeacher`, out.gradTeacher!.toArraySync() as Float32Array, ref.gradTeacher, scale.gt, 7, seed);
    S.dispose();
    Tt.dispose();
  });
});
