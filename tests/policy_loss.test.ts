// policyLoss against the float64 reference of DESIGN 3.3 (tests/reference/policy_loss.ts):
// loss, gradient (also against central finite differences of the reference loss), gradEntropy,
// stats, every mode / aggregation / rollout-correction level and mode / veto, KL and entropy
// terms, dpSize and explicit counts, padded and packed layouts, edge cases, determinism, bad input.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { TOLERANCE, cudaShape, describeCuda, expectClose, freshSeed, normal, rng, runOnIsaPath } from './helpers.js';
import type { KlRefEstimator } from './reference/kl_penalty.js';
import { policyLossRef, policyLossValueRef, type PolicyLossRefInputs, type PolicyLossRefOptions } from './reference/policy_loss.js';

type Agg = PolicyLossRefOptions['aggregation'];
const AGGS: Agg[] = ['token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'];

interface CaseSpec {
  B: number;
  T: number;                // padded length (packed: the longest allowed sequence)
  packed?: boolean;
  lens?: number[];          // packed sequence lengths (default random in [0, T])
  advPerSeq?: boolean;
  maskDensity?: number;     // fraction of tokens kept within a sequence's length
  emptyRows?: number;       // sequences with no masked token
  ratioScale?: number;      // std of logp - old
  rolloutScale?: number;    // std of old - rollout
  noMask?: boolean;
}

interface Case {
  seed: number;
  spec: CaseSpec;
  shape: number[];
  ref: PolicyLossRefInputs;
  lens: number[];
  arrays: { logp: Float32Array; old: Float32Array; adv: Float32Array; mask: Uint8Array; rollout: Float32Array; refLp: Float32Array; ent: Float32Array; cu: Int32Array };
}

function makeCase(seed: number, spec: CaseSpec): Case {
  const r = rng(seed);
  const { B, T } = spec;
  const lens = spec.packed ? (spec.lens ?? Array.from({ length: B }, () => Math.floor(r() * (T + 1)))) : Array(B).fill(T);
  const N = lens.reduce((a, b) => a + b, 0);
  const seqs: Array<[number, number]> = [];
  const cu = new Int32Array(B + 1);
  for (let i = 0; i < B; i++) {
    cu[i + 1] = cu[i] + lens[i];
    seqs.push([cu[i], cu[i + 1]]);
  }
  const logp = new Float32Array(N);
  const old = new Float32Array(N);
  const rollout = new Float32Array(N);
  const refLp = new Float32Array(N);
  const ent = new Float32Array(N);
  const mask = new Uint8Array(N);
  const rs = spec.ratioScale ?? 0.3;
  const ro = spec.rolloutScale ?? 0.3;
  const density = spec.maskDensity ?? 0.85;
  const empty = new Set<number>();
  for (let k = 0; k < (spec.emptyRows ?? 0); k++) empty.add(Math.floor(r() * B));
  for (let i = 0; i < B; i++) {
    // Padded rows: a response prefix of random length with holes; packed: holes only.
    const respLen = spec.packed ? lens[i] : Math.max(1, Math.floor(T * (0.3 + 0.7 * r())));
    for (let t = seqs[i][0]; t < seqs[i][1]; t++) {
      const lp = -Math.abs(normal(r)) * 2 - 0.01;
      logp[t] = lp;
      old[t] = lp + normal(r) * rs;
      rollout[t] = old[t] + normal(r) * ro;
      refLp[t] = lp + normal(r) * 0.3;
      ent[t] = Math.abs(normal(r)) * 2;
      const pos = t - seqs[i][0];
      mask[t] = spec.noMask ? 1 : !empty.has(i) && pos < respLen && r() < density ? 1 : 0;
    }
  }
  const advLen = spec.advPerSeq ? B : N;
  const adv = Float32Array.from({ length: advLen }, () => normal(r));
  const shape = spec.packed ? [N] : [B, T];
  return {
    seed,
    spec,
    shape,
    lens,
    arrays: { logp, old, adv, mask, rollout, refLp, ent, cu },
    ref: {
      logprobs: logp,
      old,
      adv,
      advPerSeq: !!spec.advPerSeq,
      mask: spec.noMask ? undefined : mask,
      rollout,
      ref: refLp,
      entropy: ent,
      seqs,
    },
  };
}

interface RunOpts {
  opts: rlk.PolicyLossOptions & { kl?: never; entropy?: never };
  kl?: { estimator: KlRefEstimator; coef: number };
  entropyCoef?: number;
  tis?: boolean;
}

/** The test's own reading of DESIGN's defaults, to build the reference options. */
function refOptions(c: Case, run: RunOpts): PolicyLossRefOptions {
  const o = run.opts;
  const mode = o.mode ?? 'vanilla';
  const clipLow = o.clipLow ?? 0.2;
  const tis = o.tis
    ? {
        level: o.tis.level ?? 'token',
        mode: o.tis.mode ?? 'truncate',
        upper: o.tis.upper ?? 2,
        lower: o.tis.lower ?? 1 / (o.tis.upper ?? 2),
        veto: o.tis.vetoThreshold ?? undefined,
      }
    : undefined;
  // This file's cases use vanilla/gspo and DESIGN's aggregations; the other modes are tests/policy_loss_modes.test.ts'.
  return {
    mode: mode as PolicyLossRefOptions['mode'],
    clipLow,
    clipHigh: o.clipHigh ?? clipLow,
    dualClip: o.dualClip === null ? null : (o.dualClip ?? 3),
    aggregation: (o.aggregation ?? (mode === 'gspo' ? 'seq-mean-token-mean' : 'token-mean')) as PolicyLossRefOptions['aggregation'],
    tokenCount: o.tokenCount,
    sequenceCount: o.sequenceCount,
    lossScale: o.lossScale ?? (c.spec.packed ? Math.max(0, ...c.lens) : c.spec.T),
    dpSize: o.dpSize ?? 1,
    tis,
    kl: run.kl,
    entropyCoef: run.entropyCoef,
  };
}

/** The reference's inputs for a run: the entropy term only when the run has one. */
function refInputs(c: Case, run: RunOpts): PolicyLossRefInputs {
  return { ...c.ref, entropy: run.entropyCoef !== undefined ? c.ref.entropy : undefined };
}

function tensors(c: Case, device: rlk.Device) {
  const a = c.arrays;
  return {
    logprobs: rlk.tensor(a.logp, { shape: c.shape, device }),
    oldLogprobs: rlk.tensor(a.old, { shape: c.shape, device }),
    advantages: rlk.tensor(a.adv, { shape: c.spec.advPerSeq ? [c.spec.B] : c.shape, device }),
    mask: c.spec.noMask ? undefined : rlk.tensor(a.mask, { shape: c.shape, dtype: 'uint8', device }),
    rolloutLogprobs: rlk.tensor(a.rollout, { shape: c.shape, device }),
    cuSeqlens: c.spec.packed ? rlk.tensor(a.cu, { dtype: 'int32', device }) : undefined,
    refLogprobs: rlk.tensor(a.refLp, { shape: c.shape, device }),
    entropy: rlk.tensor(a.ent, { shape: c.shape, device }),
  };
}

function callKernel(c: Case, run: RunOpts, device: rlk.Device): rlk.PolicyLossResult {
  const t = tensors(c, device);
  const opts: rlk.PolicyLossOptions = { ...run.opts };
  if (run.kl) opts.kl = { refLogprobs: t.refLogprobs, estimator: run.kl.estimator, coef: run.kl.coef };
  if (run.entropyCoef !== undefined) opts.entropy = { values: t.entropy, coef: run.entropyCoef };
  return rlk.policyLoss(
    { logprobs: t.logprobs, oldLogprobs: t.oldLogprobs, advantages: t.advantages, mask: t.mask, rolloutLogprobs: run.opts.tis ? t.rolloutLogprobs : undefined, cuSeqlens: t.cuSeqlens },
    opts,
  );
}

/** |got - want| <= tol * max(1, |want|) (for stats), or <= tol itself when tol already carries the scale. */
function closeScalar(what: string, got: number, want: number, tol: number, seed: number, scaled = true): void {
  if (!Number.isFinite(got) || Math.abs(got - want) > (scaled ? tol * Math.max(1, Math.abs(want)) : tol)) {
    throw new Error(`${what}: got ${got}, want ${want} (seed ${seed})`);
  }
}

/**
 * Both devices form each token's ratio and terms in float32 (DESIGN 4; the CPU's token pass runs
 * on float lanes, its scalar path in double), GSPO's sequence ratio and the GPU's rollout weights
 * too, the reference in float64. A value within rounding of a bound where the result jumps (the
 * clip bounds and the dual clip, where the gradient switches between -A r and 0; `lower` /
 * `upper` of mask-mode rejection; the veto threshold) can land on the other side there and fail
 * the whole array's tolerance with a correct kernel: about one token in 10^6 lies within 2e-7 of a
 * bound, and one suite checks ~2e5 tokens. Such inputs (within 1e-5, relative) are moved 5e-5
 * away before a check: the rollout log-probs for a rollout decision (the whole sequence's for a
 * sequence-level one), and the old and rollout log-probs together for a ratio (the weights stay
 * as they were).
 */
function nudgeOffKinks(c: Case, run: RunOpts): void {
  const o = refOptions(c, run);
  const a = c.arrays;
  const step = 5e-5;
  const near = (v: number, bounds: number[]): boolean => bounds.some((b) => Math.abs(v / b - 1) < 1e-5);
  const masked = (t: number): boolean => !!c.spec.noMask || a.mask[t] !== 0;
  const seqs = c.ref.seqs;
  const rejected = new Uint8Array(a.logp.length);
  if (o.tis) {
    const tb = [o.tis.lower, o.tis.upper, ...(o.tis.veto !== undefined ? [o.tis.veto] : [])];
    for (const [b, e] of seqs) {
      let n0 = 0;
      let sum = 0;
      for (let t = b; t < e; t++) {
        if (!masked(t)) continue;
        if (near(Math.exp(a.old[t] - a.rollout[t]), tb)) a.rollout[t] -= step;
        n0++;
        sum += a.old[t] - a.rollout[t];
      }
      if (o.tis.level !== 'token' && n0 > 0 && near(Math.exp(o.tis.level === 'sequence' ? sum : sum / n0), tb)) {
        for (let t = b; t < e; t++) if (masked(t)) a.rollout[t] -= step;
      }
      if (o.tis.level === 'token' && o.tis.mode === 'mask') {
        for (let t = b; t < e; t++) {
          const w = Math.exp(a.old[t] - a.rollout[t]);
          if (w < o.tis.lower || w > o.tis.upper) rejected[t] = 1;
        }
      }
    }
  }
  const clip = [1 - o.clipLow, 1 + o.clipHigh, ...(o.mode === 'vanilla' && o.dualClip !== null ? [o.dualClip] : [])];
  const shift = (t: number): void => {
    a.old[t] -= step;
    a.rollout[t] -= step;
  };
  for (const [b, e] of seqs) {
    if (o.mode === 'gspo') {
      let n = 0;
      let sum = 0;
      for (let t = b; t < e; t++) {
        if (!masked(t) || rejected[t]) continue;
        n++;
        sum += a.logp[t] - a.old[t];
      }
      if (n > 0 && near(Math.exp(Math.min(sum / n, 10)), clip)) for (let t = b; t < e; t++) shift(t);
    } else {
      for (let t = b; t < e; t++) if (masked(t) && near(Math.exp(a.logp[t] - a.old[t]), clip)) shift(t);
    }
  }
}

/** Runs the kernel and checks loss, grad, gradEntropy and stats against the reference. */
async function checkCase(c: Case, run: RunOpts, device: rlk.Device, label: string): Promise<void> {
  nudgeOffKinks(c, run);
  const out = callKernel(c, run, device);
  const want = policyLossRef(refInputs(c, run), refOptions(c, run));
  const what = `${label} on ${device} [${c.shape}]`;
  expect(out.loss.shape).toEqual([]);
  expect(out.grad.shape).toEqual(c.shape);
  const loss = await out.loss.item();
  // Float32 token terms summed in double (CPU) or compensated (GPU): the error is relative to the
  // sum of the terms' magnitudes, which is what float32 terms can promise when advantages of both
  // signs cancel (seed 532588363: 5e-6 of a gspo loss whose terms cancel, 1e-7 of their sum).
  closeScalar(`${what} loss`, loss, want.loss, TOLERANCE.float32 * Math.max(Math.abs(want.loss), want.lossAbs), c.seed, false);
  const grad = await out.grad.toArray();
  expectClose(`${what} grad`, grad, want.grad, TOLERANCE.float32, c.seed);
  for (let t = 0; t < grad.length; t++) {
    if (!want.kept[t] && grad[t] !== 0) throw new Error(`${what}: grad of dropped token ${t} is ${grad[t]} (seed ${c.seed})`);
  }
  if (run.entropyCoef !== undefined) {
    expect(out.gradEntropy).toBeDefined();
    expectClose(`${what} gradEntropy`, await out.gradEntropy!.toArray(), want.gradEntropy, TOLERANCE.float32, c.seed);
  } else {
    expect(out.gradEntropy).toBeUndefined();
  }
  const stats = await out.readStats();
  if (Object.keys(stats).sort().join() !== Object.keys(want.stats).sort().join()) {
    throw new Error(`${what}: stats keys ${Object.keys(stats).sort()} != ${Object.keys(want.stats).sort()} (seed ${c.seed})`);
  }
  for (const [k, v] of Object.entries(want.stats)) closeScalar(`${what} stats.${k}`, (stats as unknown as Record<string, number>)[k], v, 1e-6, c.seed);
}

/** Central differences of the float64 reference loss against the reference's analytic gradient. */
function checkFiniteDifferences(c: Case, run: RunOpts, label: string): void {
  const o = refOptions(c, run);
  const inp = refInputs(c, run);
  const want = policyLossRef(inp, o);
  const r = rng(c.seed ^ 0x5bd1e995);
  const N = c.ref.logprobs.length;
  const idx: number[] = [];
  for (let k = 0; k < 24 && N > 0; k++) idx.push(Math.floor(r() * N));
  // The token with the largest analytic gradient is always checked too, so the sample has the
  // gradient's scale even when the random picks all fall on flat (clipped, dropped) tokens.
  if (N > 0) idx.push(want.grad.reduce((best, g, t) => (Math.abs(g) > Math.abs(want.grad[best]) ? t : best), 0));
  const lp = Float64Array.from(c.ref.logprobs);
  const fd: number[] = [];
  const an: number[] = [];
  const central = (t: number, h: number): number => {
    const x = lp[t];
    lp[t] = x + h;
    const up = policyLossValueRef(inp, o, lp);
    lp[t] = x - h;
    const down = policyLossValueRef(inp, o, lp);
    lp[t] = x;
    return (up - down) / (2 * h);
  };
  const scale = Math.max(1e-12, ...Array.from(want.grad, Math.abs));
  for (const t of idx) {
    const a = central(t, 1e-6);
    // A token within h of a kink (a clip bound, the dual-clip bound, a clamp) has no derivative
    // there; two step sizes that disagree show it, and such a token is left out.
    const b = central(t, 1.25e-7);
    if (Math.abs(a - b) > 1e-6 * scale) continue;
    fd.push(a);
    an.push(want.grad[t]);
  }
  // Relative to the larger of the sample's norm and the gradient's largest entry: the float64
  // central differences carry an absolute rounding error (about eps * |loss terms| / h), which a
  // norm of only small entries (a sequence with a tiny advantage) would magnify past 1e-5 (seed
  // 245502: one entry of 4e-5 next to a scale of 1e-2 failed at 1.9e-5 with correct gradients).
  let num = 0;
  let den = 0;
  for (let k = 0; k < fd.length; k++) {
    num += (fd[k] - an[k]) ** 2;
    den += an[k] ** 2;
  }
  // (An all-zero gradient is compared absolutely, as relError does.)
  const norm = Math.max(Math.sqrt(den), scale);
  const err = norm > 1e-12 ? Math.sqrt(num) / norm : Math.sqrt(num);
  if (!(err <= 1e-5)) throw new Error(`${label}: finite differences differ from the analytic gradient by ${err} (seed ${c.seed}); fd ${fd.slice(0, 4)} an ${an.slice(0, 4)}`);
}

function suite(device: rlk.Device): void {
  const padded: CaseSpec = { B: 6, T: 37, emptyRows: 1 };
  const packed: CaseSpec = { B: 7, T: 41, packed: true };

  describe('vanilla: every aggregation, padded and packed, per-token and per-sequence advantages', () => {
    for (const aggregation of AGGS) {
      it(aggregation, async () => {
        for (const base of [padded, packed, { B: 1, T: 1 }, { B: 1, T: 129, packed: true, lens: [129] }]) {
          for (const advPerSeq of [false, true]) {
            const c = makeCase(freshSeed(), { ...base, advPerSeq });
            const run: RunOpts = { opts: { aggregation, clipLow: 0.2, clipHigh: 0.28, dualClip: 3 } };
            await checkCase(c, run, device, `vanilla ${aggregation} advPerSeq ${advPerSeq}`);
            if (device === 'cpu') checkFiniteDifferences(c, run, `vanilla ${aggregation}`);
          }
        }
      });
    }
  });

  it('defaults: clipLow 0.2, clipHigh = clipLow, dualClip 3, token-mean', async () => {
    const c = makeCase(freshSeed(), { ...padded, ratioScale: 0.8 });
    await checkCase(c, { opts: {} }, device, 'defaults');
    await checkCase(c, { opts: { dualClip: null } }, device, 'dual clip off');
    await checkCase(c, { opts: { clipLow: 0.1, dualClip: 1.5 } }, device, 'clipLow 0.1 dual 1.5');
  });

  describe('gspo', () => {
    for (const aggregation of [undefined, ...AGGS]) {
      it(`aggregation ${aggregation ?? '(default seq-mean-token-mean)'}`, async () => {
        for (const base of [padded, packed]) {
          for (const advPerSeq of [true, false]) {
            const c = makeCase(freshSeed(), { ...base, advPerSeq, ratioScale: 0.2 });
            const run: RunOpts = { opts: { mode: 'gspo', aggregation, clipLow: 0.0003, clipHigh: 0.0004 } };
            await checkCase(c, run, device, `gspo ${aggregation} advPerSeq ${advPerSeq}`);
            // The GSPO-token gradient is the true derivative when advantages are per sequence.
            if (device === 'cpu' && advPerSeq) checkFiniteDifferences(c, run, `gspo ${aggregation}`);
          }
        }
      });
    }
    it('sequence log-ratio above 10 is clamped and passes no gradient', async () => {
      const c = makeCase(freshSeed(), { B: 3, T: 9, advPerSeq: true, noMask: true });
      for (let t = 0; t < 9; t++) c.arrays.old[t] = c.arrays.logp[t] - 12;  // sequence 0: mean 12 > 10
      await checkCase(c, { opts: { mode: 'gspo' } }, device, 'gspo clamp');
      const g = callKernel(c, { opts: { mode: 'gspo' } }, device).grad.toArraySync();
      expect(Array.from(g.slice(0, 9), (v) => v + 0)).toEqual(Array(9).fill(0));
    });
  });

  describe('rollout correction', () => {
    for (const level of ['token', 'sequence', 'geometric'] as const) {
      for (const mode of ['truncate', 'mask'] as const) {
        it(`${level} ${mode}, with and without veto`, async () => {
          for (const base of [padded, packed]) {
            for (const vetoThreshold of [undefined, 0.5]) {
              const c = makeCase(freshSeed(), { ...base, rolloutScale: 0.35 });
              const tis = { level, mode, upper: 1.6, vetoThreshold };
              await checkCase(c, { opts: { tis, aggregation: 'seq-mean-token-mean' } }, device, `tis ${level} ${mode} veto ${vetoThreshold}`);
              await checkCase(c, { opts: { tis: { ...tis, lower: 0.7 }, mode: 'gspo' } }, device, `gspo tis ${level} ${mode} veto ${vetoThreshold}`);
              if (device === 'cpu') checkFiniteDifferences(c, { opts: { tis } }, `tis ${level} ${mode}`);
            }
          }
        });
      }
    }
    it('veto rejects whole sequences and counts them', async () => {
      const c = makeCase(freshSeed(), { B: 4, T: 8, noMask: true, rolloutScale: 0.01 });
      c.arrays.rollout[9] = c.arrays.old[9] + 5;  // sequence 1: weight e^-5 < 0.01
      const out = callKernel(c, { opts: { tis: { vetoThreshold: 0.01 } } }, device);
      const s = await out.readStats();
      expect(s.vetoedSequences).toBe(1);
      expect(Array.from(out.grad.toArraySync().slice(8, 16), (v) => v + 0)).toEqual(Array(8).fill(0));
      await checkCase(c, { opts: { tis: { vetoThreshold: 0.01 } } }, device, 'veto');
    });
    it('defaults: level token, truncate at 2; isWeightMean is 1 without tis', async () => {
      const c = makeCase(freshSeed(), padded);
      await checkCase(c, { opts: { tis: {} } }, device, 'tis defaults');
      const s = await callKernel(c, { opts: {} }, device).readStats();
      expect(s.isWeightMean).toBe(1);
    });
  });

  describe('KL and entropy terms', () => {
    for (const estimator of ['k1', 'abs', 'k2', 'k3', 'k1+', 'k3+'] as const) {
      it(`kl ${estimator} with entropy`, async () => {
        for (const base of [padded, packed]) {
          for (const aggregation of ['token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'] as const) {
            const c = makeCase(freshSeed(), base);
            const run: RunOpts = { opts: { aggregation, dpSize: 2 }, kl: { estimator, coef: 0.05 }, entropyCoef: 0.01 };
            await checkCase(c, run, device, `kl ${estimator} ${aggregation}`);
            if (device === 'cpu' && !estimator.endsWith('+')) checkFiniteDifferences(c, run, `kl ${estimator}`);
          }
        }
      });
    }
    it('entropy alone (coef 0 still gives gradEntropy and entropyMean); KL default estimator k3, coef 0.001', async () => {
      const c = makeCase(freshSeed(), padded);
      await checkCase(c, { opts: {}, entropyCoef: 0 }, device, 'entropy coef 0');
      const t = tensors(c, device);
      const out = rlk.policyLoss(
        { logprobs: t.logprobs, oldLogprobs: t.oldLogprobs, advantages: t.advantages, mask: t.mask },
        { kl: { refLogprobs: t.refLogprobs } },
      );
      const want = policyLossRef(c.ref, { ...refOptions(c, { opts: {} }), kl: { estimator: 'k3', coef: 0.001 } });
      // As checkCase: float32 terms are accurate relative to the sum of their magnitudes (seed
      // 648752700: 3e-6 of a loss whose terms cancel).
      closeScalar('kl defaults loss', await out.loss.item(), want.loss, TOLERANCE.float32 * Math.max(Math.abs(want.loss), want.lossAbs), c.seed, false);
      expectClose('kl defaults grad', await out.grad.toArray(), want.grad, TOLERANCE.float32, c.seed);
    });
  });

  it('dpSize and explicit tokenCount / sequenceCount / lossScale', async () => {
    for (const aggregation of AGGS) {
      const c = makeCase(freshSeed(), packed);
      await checkCase(c, { opts: { aggregation, dpSize: 4, tokenCount: 1234, sequenceCount: 77, lossScale: 4096 } }, device, `explicit ${aggregation}`);
      await checkCase(c, { opts: { aggregation, dpSize: 3 } }, device, `dp ${aggregation}`);
    }
  });

  it('edge cases: all-masked batch gives loss 0, zero gradient, finite stats', async () => {
    for (const base of [padded, packed]) {
      const c = makeCase(freshSeed(), { ...base, maskDensity: 0 });
      for (const aggregation of AGGS) {
        const out = callKernel(c, { opts: { aggregation }, kl: { estimator: 'k3', coef: 0.1 }, entropyCoef: 0.1 }, device);
        expect(await out.loss.item()).toBe(0);
        expect((await out.grad.toArray()).every((v) => v === 0)).toBe(true);
        expect((await out.gradEntropy!.toArray()).every((v) => v === 0)).toBe(true);
        const s = await out.readStats();
        for (const [k, v] of Object.entries(s)) if (v !== 0) throw new Error(`all-masked stats.${k} = ${v}`);
      }
    }
    // B = 0 and zero-length packed sequences.
    const z = makeCase(freshSeed(), { B: 3, T: 5, packed: true, lens: [0, 0, 0] });
    await checkCase(z, { opts: {} }, device, 'empty packed');
  });

  it('edge cases: ratios at the clamp limits, A = 0, negative A with the dual clip active', async () => {
    const c = makeCase(freshSeed(), { B: 2, T: 8, noMask: true });
    const a = c.arrays;
    const set = (t: number, d: number, A: number): void => {
      a.old[t] = a.logp[t] - d;
      a.adv[t] = A;
    };
    set(0, 25, 1);     // r = e^20, clipped high
    set(1, -25, 1);    // r = e^-20: unclipped branch, but the log-ratio clamp passes no gradient
    set(2, 25, -1);    // dual clip
    set(3, -25, -1);   // clipped low
    set(4, 0.5, 0);    // A = 0
    set(5, 2, -1);     // r = e^2: dual clip active (L1 = 7.39 > 3)
    set(6, 0.1, -2);   // within the clip range
    set(7, -1, 1);     // unclipped below
    c.ref.adv = a.adv;
    for (const dualClip of [3, null]) {
      await checkCase(c, { opts: { dualClip } }, device, `clamp limits dual ${dualClip}`);
      const out = callKernel(c, { opts: { dualClip } }, device);
      const g = out.grad.toArraySync();
      expect(Array.from(g.slice(0, 5), (v) => v + 0)).toEqual([0, 0, 0, 0, 0]);
      if (dualClip !== null) expect(g[5] + 0).toBe(0);
      else expect(g[5]).not.toBe(0);
      expect(g[6]).not.toBe(0);
      const s = await out.readStats();
      expect(s.ratioMax).toBeCloseTo(Math.exp(20), -3);
      if (dualClip !== null) {
        // Tokens 2 and 5, and any of the random row's with A < 0 and r > 3 (a 3.7-sigma
        // log-ratio: ~5e-4 of seeds; the likely cause of one emulated-device failure that read
        // 3 / 16; the seed is now in the message).
        let dual = 2;
        for (let t = 8; t < 16; t++) if (a.adv[t] < 0 && Math.exp(a.logp[t] - a.old[t]) > dualClip) dual++;
        expect(s.dualClipFraction, `seed ${c.seed}`).toBeCloseTo(dual / 16, 6);
      }
    }
    checkFiniteDifferences(c, { opts: {} }, 'clamp limits');
  });

  it('deterministic: bitwise the same run to run and for any thread count', async () => {
    const c = makeCase(freshSeed(), { B: 3, T: cudaShape(20000, 3000, device), advPerSeq: false });
    const run: RunOpts = { opts: { aggregation: 'seq-mean-token-mean', tis: { level: 'geometric' }, clipHigh: 0.28 }, kl: { estimator: 'k3', coef: 0.01 }, entropyCoef: 0.01 };
    const before = rlk.getNumThreads();
    const results: Array<[Float32Array, Float32Array, number]> = [];
    for (const threads of device === 'cpu' ? [before, 1, 2, before] : [before, before]) {
      if (device === 'cpu') rlk.setNumThreads(threads);
      const out = callKernel(c, run, device);
      results.push([await out.grad.toArray(), await out.gradEntropy!.toArray(), await out.loss.item()]);
    }
    rlk.setNumThreads(before);
    for (const r of results.slice(1)) {
      expect(Buffer.from(r[0].buffer).equals(Buffer.from(results[0][0].buffer))).toBe(true);
      expect(r[2]).toBe(results[0][2]);
    }
    await checkCase(c, run, device, 'long rows');
  });

  it('readStats() works after the scope that made the result closed, and twice', async () => {
    const c = makeCase(freshSeed(), padded);
    const out = rlk.scope(() => callKernel(c, { opts: {} }, device));
    expect(out.loss.disposed).toBe(false);
    const a = await out.readStats();
    const b = await out.readStats();
    expect(b).toEqual(a);
    expect(a.isWeightMean).toBe(1);
  });

  it('one long packed sequence and many short ones', async () => {
    const long = cudaShape(70000, 9000, device);
    const c = makeCase(freshSeed(), { B: 5, T: long, packed: true, lens: [3, long, 0, 1, 17], advPerSeq: true });
    await checkCase(c, { opts: { mode: 'gspo', aggregation: 'token-mean' } }, device, 'long packed gspo');
    await checkCase(c, { opts: { aggregation: 'seq-mean-token-mean', tis: { level: 'sequence', mode: 'truncate' } } }, device, 'long packed');
  });
}

describe('policyLoss (cpu)', () => suite('cpu'));

// The pass is chosen at load time (16 or 8 float lanes on AVX-512 or AVX2 CPUs); run this file's CPU
// suite once more in child processes with RLK_SIMD=avx2 and with the scalar double pass (CPUs
// without AVX2, and every rollout option everywhere) forced.
describe('policyLoss (cpu, other ISA paths)', () => {
  for (const isa of ['avx2', 'baseline'] as const) {
    it.skipIf(process.env.RLK_SIMD !== undefined)(`passes the CPU suite with RLK_SIMD=${isa}`, () => {
      const out = runOnIsaPath('tests/policy_loss.test.ts', 'policyLoss \\(cpu\\)', isa);
      expect(out).toMatch(/\b[1-9]\d+ passed/);
    });
  }
});

describeCuda('policyLoss (cuda)', () => suite('cuda'));

describeCuda('policyLoss (cuda) bad cuSeqlens', () => {
  it('are checked on the device and reported as a RangeError at the next read', async () => {
    const flat = rlk.tensor([-1, -2, -3, -4, -5], { device: 'cuda' });
    for (const cu of [[0, 3, 2, 5], [0, 2, 4], [1, 2, 5], [0, 2, 9]]) {
      const out = rlk.policyLoss({ logprobs: flat, oldLogprobs: flat, advantages: flat, cuSeqlens: rlk.tensor(cu, { dtype: 'int32', device: 'cuda' }) });
      await expect(out.loss.item()).rejects.toThrow(/out of range/);
      await expect(out.loss.item()).resolves.toBeTypeOf('number');  // the error word was cleared
    }
  });
  it('a copy to the cpu is a read: to(\'cpu\') reports the error too', () => {
    const flat = rlk.tensor([-1, -2, -3, -4, -5], { device: 'cuda' });
    const out = rlk.policyLoss({ logprobs: flat, oldLogprobs: flat, advantages: flat, cuSeqlens: rlk.tensor([0, 2, 9], { dtype: 'int32', device: 'cuda' }) });
    expect(() => out.grad.to('cpu')).toThrow(RangeError);
    expect(() => out.grad.to('cpu')).not.toThrow();
  });
});

// NaN in an input reaches the loss (DESIGN 4) on every device and CPU path: a clamp or a min
// must not turn it into a bound (CUDA's fminf, or min/max_pd with the NaN as first operand,
// gave e^10 for GSPO, `upper` for a truncated weight, e^-20 for a vanilla ratio).
function nanSuite(device: rlk.Device): void {
  it(`a NaN log-prob, rollout or reference log-prob gives a NaN loss (${device})`, async () => {
    const t = (rows: number[][]) => rlk.tensor(rows, { device });
    const lp = [[-1, -2, -3, -1.25, -0.5, -2, -1, -3, -0.75], [-1, -1.5, -2, -0.25, -1, -1, -2, -1.5, -1]];
    const nanLp = lp.map((r, i) => r.map((v, j) => (i === 0 && j === 5 ? NaN : v)));
    const old = t(lp);
    const adv = t(lp.map((r) => r.map((v, j) => (j % 2 ? -v : v + 0.5))));
    for (const mode of ['vanilla', 'gspo'] as const) {
      const out = rlk.policyLoss({ logprobs: t(nanLp), oldLogprobs: old, advantages: adv }, { mode });
      expect(await out.loss.item(), `${mode} with a NaN log-prob`).toBeNaN();
    }
    for (const level of ['token', 'sequence', 'geometric'] as const) {
      const out = rlk.policyLoss(
        { logprobs: t(lp), oldLogprobs: old, advantages: adv, rolloutLogprobs: t(nanLp) },
        { tis: { level, mode: 'truncate', upper: 2 } },
      );
      expect(await out.loss.item(), `tis ${level} truncate with a NaN rollout log-prob`).toBeNaN();
    }
    for (const estimator of ['k1', 'k3'] as const) {
      const out = rlk.policyLoss({ logprobs: t(lp), oldLogprobs: old, advantages: adv }, { kl: { refLogprobs: t(nanLp), estimator, coef: 0.1 } });
      expect(await out.loss.item(), `kl ${estimator} with a NaN reference log-prob`).toBeNaN();
    }
    // A -inf log-prob (a masked-vocabulary target) with the k1 term: the loss is -inf, not NaN
    // (the GPU's compensated sum once turned an infinite total into NaN).
    const ninf = lp.map((r, i) => r.map((v, j) => (i === 1 && j === 2 ? -Infinity : v)));
    const out = rlk.policyLoss({ logprobs: t(ninf), oldLogprobs: old, advantages: adv }, { kl: { refLogprobs: old, estimator: 'k1', coef: 0.1 } });
    expect(await out.loss.item(), 'k1 with a -inf log-prob').toBe(-Infinity);
  });
}
describe('policyLoss NaN propagation', () => nanSuite('cpu'));
describeCuda('policyLoss NaN propagation (cuda)', () => nanSuite('cuda'));

describe('policyLoss bad input', () => {
  const lp = rlk.tensor([[-1, -2, -3], [-1, -1, -1]]);
  const old = rlk.tensor([[-1, -2, -3], [-1, -1, -1]]);
  const adv = rlk.tensor([1, -1]);
  const mask = rlk.tensor([[1, 1, 0], [1, 0, 0]], { dtype: 'uint8' });
  const base = { logprobs: lp, oldLogprobs: old, advantages: adv, mask };
  const bad = (f: () => unknown, kind: ErrorConstructor | typeof rlk.DisposedError, re: RegExp): void => {
    expect(f).toThrow(kind);
    expect(f).toThrow(re);
  };
  it('inputs: types, dtypes, shapes, layout, disposed', () => {
    bad(() => rlk.policyLoss(undefined as never), TypeError, /policyLoss: inputs/);
    bad(() => rlk.policyLoss({ ...base, logprobs: [1] as never }), TypeError, /logprobs must be a tensor/);
    bad(() => rlk.policyLoss({ ...base, extra: lp } as never), TypeError, /unknown option 'extra' in inputs/);
    bad(() => rlk.policyLoss({ ...base, oldLogprobs: rlk.tensor([[1, 2], [3, 4]]) }), RangeError, /oldLogprobs must have shape \[2, 3\]/);
    bad(() => rlk.policyLoss({ ...base, advantages: rlk.tensor([1, 2, 3]) }), RangeError, /advantages must have shape \[2, 3\] or \[2\], got \[3\]/);
    bad(() => rlk.policyLoss({ ...base, mask: rlk.tensor([[1, 1, 0], [1, 0, 0]]) }), TypeError, /mask must be uint8, got float32/);
    bad(() => rlk.policyLoss({ ...base, mask: rlk.tensor([1, 1, 0], { dtype: 'uint8' }) }), RangeError, /mask must have shape \[2, 3\]/);
    bad(() => rlk.policyLoss({ ...base, logprobs: rlk.tensor([[1, 2, 3], [1, 2, 3]], { dtype: 'float16' }) }), TypeError, /logprobs must be float32, got float16/);
    bad(() => rlk.policyLoss({ ...base, advantages: rlk.tensor([1, 2], { dtype: 'int32' }) }), TypeError, /advantages must be float32/);
    bad(() => rlk.policyLoss({ ...base, logprobs: rlk.tensor([1, 2, 3, 4, 5, 6]) }), RangeError, /logprobs must be 2-D/);
    const gone = rlk.tensor([[-1, -2, -3], [-1, -1, -1]]);
    gone.dispose();
    bad(() => rlk.policyLoss({ ...base, oldLogprobs: gone }), rlk.DisposedError, /oldLogprobs was disposed/);
  });
  it('packed layout: cuSeqlens dtype, shape and values', () => {
    const flat = rlk.tensor([-1, -2, -3, -4, -5]);
    const pk = (cu: rlk.Tensor) => rlk.policyLoss({ logprobs: flat, oldLogprobs: flat, advantages: flat, cuSeqlens: cu });
    bad(() => pk(rlk.tensor([0, 2, 5])), TypeError, /cuSeqlens must be int32, got float32/);
    bad(() => pk(rlk.tensor([[0, 2, 5]], { dtype: 'int32' })), RangeError, /cuSeqlens must have shape \[B \+ 1\]/);
    bad(() => pk(rlk.tensor([0, 3, 2, 5], { dtype: 'int32' })), RangeError, /cuSeqlens must start at 0, never decrease/);
    bad(() => pk(rlk.tensor([0, 2, 4], { dtype: 'int32' })), RangeError, /policyLoss: cuSeqlens .*end at the number of tokens/);
    bad(() => pk(rlk.tensor([1, 2, 5], { dtype: 'int32' })), RangeError, /cuSeqlens must start at 0/);
    bad(() => pk(rlk.tensor([0, 2, 7], { dtype: 'int32' })), RangeError, /cuSeqlens/);
    bad(() => rlk.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv, cuSeqlens: rlk.tensor([0, 6], { dtype: 'int32' }) }), RangeError, /logprobs must be 1-D \[N\] with cuSeqlens/);
    expect(() => pk(rlk.tensor([0, 2, 2, 5], { dtype: 'int32' }))).not.toThrow();
  });
  it('options: unknown names and bad values', () => {
    bad(() => rlk.policyLoss(base, { bogus: 1 } as never), TypeError, /unknown option 'bogus'/);
    bad(() => rlk.policyLoss(base, { clipLow: -0.1 }), RangeError, /clipLow must be a finite number >= 0/);
    bad(() => rlk.policyLoss(base, { clipLow: NaN }), RangeError, /clipLow/);
    bad(() => rlk.policyLoss(base, { clipLow: '0.2' as never }), TypeError, /clipLow must be a number/);
    bad(() => rlk.policyLoss(base, { clipHigh: -1 }), RangeError, /clipHigh/);
    bad(() => rlk.policyLoss(base, { dualClip: 1 }), RangeError, /dualClip must be a finite number > 1, got 1/);
    bad(() => rlk.policyLoss(base, { dualClip: 0.5 }), RangeError, /dualClip/);
    bad(() => rlk.policyLoss(base, { mode: 'ppo' as never }), RangeError, /mode must be one of 'vanilla', 'gspo'/);
    bad(() => rlk.policyLoss(base, { aggregation: 'mean' as never }), RangeError, /aggregation must be one of/);
    bad(() => rlk.policyLoss(base, { tokenCount: 0 }), RangeError, /tokenCount must be a finite number > 0/);
    bad(() => rlk.policyLoss(base, { sequenceCount: -1 }), RangeError, /sequenceCount/);
    bad(() => rlk.policyLoss(base, { lossScale: Infinity }), RangeError, /lossScale/);
    bad(() => rlk.policyLoss(base, { dpSize: 1.5 }), RangeError, /dpSize must be an integer >= 1/);
    bad(() => rlk.policyLoss(base, { dpSize: 0 }), RangeError, /dpSize/);
    bad(() => rlk.policyLoss(base, { tis: {} }), TypeError, /rolloutLogprobs must be a tensor when tis is given/);
    const withRollout = { ...base, rolloutLogprobs: old };
    bad(() => rlk.policyLoss(withRollout, { tis: { level: 'seq' as never } }), RangeError, /tis\.level must be one of 'token', 'sequence', 'geometric'/);
    bad(() => rlk.policyLoss(withRollout, { tis: { mode: 'clip' as never } }), RangeError, /tis\.mode must be one of/);
    bad(() => rlk.policyLoss(withRollout, { tis: { upper: 0 } }), RangeError, /tis\.upper must be a finite number > 0/);
    bad(() => rlk.policyLoss(withRollout, { tis: { upper: 2, lower: 3 } }), RangeError, /tis\.lower must be a finite number >= 0 and <= 2/);
    bad(() => rlk.policyLoss(withRollout, { tis: { vetoThreshold: -1 } }), RangeError, /tis\.vetoThreshold/);
    bad(() => rlk.policyLoss(withRollout, { tis: { typo: 1 } as never }), TypeError, /unknown option 'typo' in tis/);
    bad(() => rlk.policyLoss({ ...base, rolloutLogprobs: rlk.tensor([1]) }, { tis: {} }), RangeError, /rolloutLogprobs must have shape \[2, 3\]/);
    bad(() => rlk.policyLoss(base, { kl: {} as never }), TypeError, /kl\.refLogprobs must be a tensor/);
    bad(() => rlk.policyLoss(base, { kl: { refLogprobs: old, estimator: 'k9' as never } }), RangeError, /kl\.estimator must be one of/);
    bad(() => rlk.policyLoss(base, { kl: { refLogprobs: old, coef: -1 } }), RangeError, /kl\.coef/);
    bad(() => rlk.policyLoss(base, { kl: { refLogprobs: rlk.tensor([1, 2]) } }), RangeError, /kl\.refLogprobs must have shape/);
    bad(() => rlk.policyLoss(base, { entropy: { values: rlk.tensor([[1, 2, 3], [1, 2, 3]], { dtype: 'int32' }) } }), TypeError, /entropy\.values must be float32/);
    bad(() => rlk.policyLoss(base, { entropy: { values: old, coef: NaN } }), RangeError, /entropy\.coef/);
    bad(() => rlk.policyLoss(base, { entropy: { values: old, scale: 1 } as never }), TypeError, /unknown option 'scale' in entropy/);
    bad(() => rlk.policyLoss(base, 5 as never), TypeError, /options must be an object/);
  });
});
