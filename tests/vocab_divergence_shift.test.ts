// A constant added to every logit of a row leaves its distribution, and so every divergence
// and gradient, unchanged. Float32 logits of two models often differ by such a shift (another
// model's logit scale), and a student near its teacher makes x = log p_t - log p_s small
// everywhere: the KL is ~E[x^2] / 2, so an absolute error in x of the shift's ulp (2e-6 at
// 20-40), which forming x from t - s gave, was 2.2e-5 of the KL (DESIGN 4 allows 5e-6) and
// 7e-5 of the gradients. Rows of a teacher near its student, shifted by 20-40 (the student by
// -5..5), every kind, values alone and with gradients, on every ISA path and the CUDA device.
import { describe, it } from 'vitest';
import * as rlk from '../src/index.js';
import { DEVICES, TOLERANCE, cudaShape, expectClose, freshSeed, randn, rng, runOnIsaPath } from './helpers.js';
import { vocabDivergenceRef, type Kind } from './reference/vocab_divergence.js';

// Gradients of close rows are small differences p_s - p_t ~ x p, and the fp32 normalisers'
// rounding moves them by ~1e-7 p (tests/vocab_divergence.test.ts, expectCloseUpToNormaliser):
// measured at most 3.4e-6 here (24 seeded runs over the three ISA paths), 7.1e-5 when x came
// from t - s.
const GRAD_TOL = 1e-5;
const KINDS: Array<{ kind: Kind; beta?: number }> = [{ kind: 'forward-kl' }, { kind: 'reverse-kl' }, { kind: 'jsd', beta: 0.5 }];

function shiftedRows(seed: number, rows: number, V: number, noise: number): { s: Float32Array; t: Float32Array } {
  const r = rng(seed);
  const s = new Float32Array(rows * V);
  const t = new Float32Array(rows * V);
  for (let i = 0; i < rows; i++) {
    const scale = 1 + 4 * r();
    const shiftT = 20 + 20 * r();
    const shiftS = 10 * (r() - 0.5);
    const a = randn(r, V, scale);
    const n = randn(r, V, noise);
    for (let j = 0; j < V; j++) {
      s[i * V + j] = a[j] + shiftS;
      t[i * V + j] = a[j] + n[j] + shiftT;
    }
  }
  return { s, t };
}

function check(device: rlk.Device, label: string, seed: number): void {
  for (const V of cudaShape([37, 1030, 4100], [37, 1030], device)) {
    const rows = V > 2000 ? 16 : 32;
    for (const noise of [0.03, 0.1]) {
      const { s, t } = shiftedRows(seed + V + Math.round(1000 * noise), rows, V, noise);
      for (const temperature of [1, 0.7]) {
        for (const { kind, beta } of KINDS) {
          const what = `${label} ${kind} V=${V} noise=${noise} T=${temperature}`;
          const ref = vocabDivergenceRef(s, t, rows, V, { kind, beta, temperature });
          rlk.scope(() => {
            const S = rlk.tensor(s, { shape: [rows, V], device });
            const T = rlk.tensor(t, { shape: [rows, V], device });
            const vals = rlk.vocabDivergence(S, T, { kind, beta, temperature, grad: false });
            expectClose(`${what} values (grad: false)`, vals.values.toArraySync() as Float32Array, ref.values, TOLERANCE.divergence, seed);
            const g = rlk.vocabDivergence(S, T, { kind, beta, temperature, teacherGrad: true });
            expectClose(`${what} values`, g.values.toArraySync() as Float32Array, ref.values, TOLERANCE.divergence, seed);
            expectClose(`${what} gradStudent`, g.gradStudent.toArraySync() as Float32Array, ref.gradStudent, GRAD_TOL, seed);
            expectClose(`${what} gradTeacher`, g.gradTeacher!.toArraySync() as Float32Array, ref.gradTeacher, GRAD_TOL, seed);
          });
        }
      }
    }
  }
}

describe('vocabDivergence is shift-invariant within DESIGN 4: close rows whose logits differ by a constant', () => {
  const seed = freshSeed();
  it(`the native path (${rlk.buildInfo().cpu.simd})`, () => check('cpu', rlk.buildInfo().cpu.simd, seed));
  if (!process.env.RLK_SIMD) {
    for (const isa of ['avx2', 'baseline'] as const) {
      it(`the ${isa} path (child process with RLK_SIMD=${isa})`, () => {
        runOnIsaPath('tests/vocab_divergence_shift.test.ts', 'the native path', isa, { RLK_SEED: String(seed) });
      });
    }
  }
  if (DEVICES.includes('cuda')) it('the CUDA device', () => check('cuda', 'cuda', seed));
});
