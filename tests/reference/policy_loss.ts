// Float64 reference of DESIGN 3.3 (verl's compute_policy_loss_vanilla /
// compute_policy_loss_gspo, agg_loss and rollout correction), written from
// the formulas, independently of the kernels. It gives the per-token losses,
// the kept mask, the aggregated loss, its gradient (derived analytically,
// and also available by finite differences of `policyLossValueRef`) and the
// stats.
import { klRef, type KlRefEstimator } from './kl_penalty.js';
import { CompensatedSum } from './sum.js';

export interface PolicyLossRefInputs {
  logprobs: ArrayLike<number>;
  old: ArrayLike<number>;
  /** Per token ([N]) or per sequence ([B]) as `advPerSeq` says. */
  adv: ArrayLike<number>;
  advPerSeq: boolean;
  mask?: ArrayLike<number>;
  rollout?: ArrayLike<number>;
  ref?: ArrayLike<number>;
  entropy?: ArrayLike<number>;
  /** [begin, end) token ranges of the sequences in the flattened tensors. */
  seqs: Array<[number, number]>;
}

export interface PolicyLossRefOptions {
  mode: 'vanilla' | 'gspo';
  clipLow: number;
  clipHigh: number;
  dualClip: number | null;
  aggregation: 'token-mean' | 'seq-mean-token-sum' | 'seq-mean-token-mean' | 'seq-mean-token-sum-norm';
  tokenCount?: number;
  sequenceCount?: number;
  lossScale: number;
  dpSize: number;
  tis?: { level: 'token' | 'sequence' | 'geometric'; mode: 'truncate' | 'mask'; upper: number; lower: number; veto?: number };
  kl?: { estimator: KlRefEstimator; coef: number };
  entropyCoef?: number;
}

export interface PolicyLossRefResult {
  loss: number;
  /** Sum of the magnitudes of the per-token contributions: the scale a float32 sum of them is accurate to. */
  lossAbs: number;
  grad: Float64Array;
  gradEntropy: Float64Array;
  kept: Uint8Array;
  stats: Record<string, number>;
}

const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));

export function policyLossRef(inp: PolicyLossRefInputs, o: PolicyLossRefOptions): PolicyLossRefResult {
  const N = inp.logprobs.length;
  const B = inp.seqs.length;
  const m0 = new Uint8Array(N);
  for (let t = 0; t < N; t++) m0[t] = inp.mask ? (inp.mask[t] ? 1 : 0) : 1;
  const seqOf = new Int32Array(N).fill(-1);
  inp.seqs.forEach(([b, e], i) => {
    for (let t = b; t < e; t++) seqOf[t] = i;
  });

  // Rollout correction: weights and rejection.
  const kept = m0.slice();
  const w = new Float64Array(N).fill(1);
  const tokenRejected = new Uint8Array(N);
  let vetoed = 0;
  if (o.tis) {
    const tis = o.tis;
    const x = (t: number): number => inp.old[t] - inp.rollout![t];
    for (let i = 0; i < B; i++) {
      const [b, e] = inp.seqs[i];
      let n0 = 0;
      let sum = 0;
      let veto = false;
      for (let t = b; t < e; t++) {
        if (!m0[t]) continue;
        n0++;
        sum += x(t);
        if (tis.veto !== undefined && Math.exp(x(t)) < tis.veto) veto = true;
      }
      if (veto && n0 > 0) {
        vetoed++;
        for (let t = b; t < e; t++) kept[t] = 0;
      }
      if (tis.level === 'token') {
        for (let t = b; t < e; t++) {
          const wt = Math.exp(clamp(x(t), -20, 20));
          if (tis.mode === 'truncate') w[t] = Math.min(wt, tis.upper);
          else {
            w[t] = wt;
            if (wt < tis.lower || wt > tis.upper) {
              kept[t] = 0;
              tokenRejected[t] = 1;
            }
          }
        }
      } else {
        const lw = tis.level === 'sequence' ? sum : n0 > 0 ? sum / n0 : 0;
        const ws = Math.exp(clamp(lw, -20, 20));
        for (let t = b; t < e; t++) {
          if (tis.mode === 'truncate') w[t] = Math.min(ws, tis.upper);
          else {
            w[t] = ws;
            if (ws < tis.lower || ws > tis.upper) kept[t] = 0;
          }
        }
      }
    }
  }

  // Counts after rejection.
  const nSeq = new Float64Array(B);
  for (let t = 0; t < N; t++) if (kept[t] && seqOf[t] >= 0) nSeq[seqOf[t]]++;
  let tokens = 0;
  let sequences = 0;
  for (let i = 0; i < B; i++) {
    tokens += nSeq[i];
    if (nSeq[i] > 0) sequences++;
  }

  // GSPO sequence ratios: mean over kept tokens of logp - old, clamped above at 10 in log space.
  const sLog = new Float64Array(B);
  for (let i = 0; i < B; i++) {
    const [b, e] = inp.seqs[i];
    let sum = 0;
    let n = 0;
    for (let t = b; t < e; t++) {
      // Over the masked tokens that token-level rejection keeps (whole-sequence rejection makes it moot).
      if (!m0[t] || tokenRejected[t]) continue;
      sum += inp.logprobs[t] - inp.old[t];
      n++;
    }
    sLog[i] = n > 0 ? sum / n : 0;
  }

  // Aggregation weight of each kept token.
  const tokDen = o.tokenCount ?? tokens;
  const seqDen = o.sequenceCount ?? sequences;
  const alpha = (t: number): number => {
    const i = seqOf[t];
    switch (o.aggregation) {
      case 'token-mean':
        return tokDen > 0 ? o.dpSize / tokDen : 0;
      case 'seq-mean-token-sum':
        return seqDen > 0 ? o.dpSize / seqDen : 0;
      case 'seq-mean-token-mean':
        return seqDen > 0 ? o.dpSize / seqDen / nSeq[i] : 0;
      case 'seq-mean-token-sum-norm':
        return seqDen > 0 ? o.dpSize / seqDen / o.lossScale : 0;
    }
  };

  const lo = 1 - o.clipLow;
  const hi = 1 + o.clipHigh;
  const grad = new Float64Array(N);
  const gradEntropy = new Float64Array(N);
  // Compensated: a plain sum's rounding, divided by 2h in finite differences, swamped a gspo
  // gradient of 4e-5 whose sequence was the only unclipped one (seed 855544298: 1.09e-5 relative
  // at h = 1e-6, with the analytic gradient right to 3e-8 at h = 1e-4).
  const loss = new CompensatedSum();
  let lossAbs = 0;
  const st = { clip: 0, low: 0, high: 0, dual: 0, negLr: 0, ratio: 0, rmin: Infinity, rmax: -Infinity, weight: 0, kl: 0, ent: 0 };
  for (let t = 0; t < N; t++) {
    if (!kept[t]) continue;
    const i = seqOf[t];
    const A = inp.advPerSeq ? inp.adv[i] : inp.adv[t];
    const d = inp.logprobs[t] - inp.old[t];
    const lr = clamp(d, -20, 20);
    let r: number;
    let drdlogp: number;
    if (o.mode === 'gspo') {
      r = Math.exp(Math.min(sLog[i], 10));
      drdlogp = sLog[i] <= 10 ? r : 0;
    } else {
      r = Math.exp(lr);
      drdlogp = Math.abs(d) <= 20 ? r : 0;
    }
    const L1 = -A * r;
    const L2 = -A * clamp(r, lo, hi);
    let L = Math.max(L1, L2);
    // The unclipped branch carries the gradient; the clipped one is flat outside [lo, hi] and equal inside.
    let dLdr = L1 >= L2 ? -A : 0;
    const dualOn = o.mode === 'vanilla' && o.dualClip !== null && A < 0;
    let dualActive = false;
    if (dualOn) {
      const L3 = -A * (o.dualClip as number);
      if (L > L3) {
        L = L3;
        dLdr = 0;
        dualActive = true;
      }
    }
    const a = alpha(t);
    let obj = w[t] * L;
    let g = w[t] * dLdr * drdlogp;
    if (o.kl) {
      const k = klRef(o.kl.estimator, inp.logprobs[t], inp.ref![t]);
      obj += o.kl.coef * k.value;
      g += o.kl.coef * k.grad;
      st.kl += k.value;
    }
    if (inp.entropy) {
      const c = o.entropyCoef ?? 0;
      obj -= c * inp.entropy[t];
      gradEntropy[t] = -a * c;
      st.ent += inp.entropy[t];
    }
    const term = a * obj;
    loss.add(term);
    lossAbs += Math.abs(term);
    grad[t] = a * g;
    if (L2 > L1) st.clip++;
    if (r < lo && A < 0) st.low++;
    if (r > hi && A > 0) st.high++;
    if (dualActive) st.dual++;
    st.negLr -= lr;
    st.ratio += r;
    st.rmin = Math.min(st.rmin, r);
    st.rmax = Math.max(st.rmax, r);
    st.weight += w[t];
  }
  const mean = (v: number): number => (tokens > 0 ? v / tokens : 0);
  const stats: Record<string, number> = {
    clipFraction: mean(st.clip),
    clipFractionLow: mean(st.low),
    clipFractionHigh: mean(st.high),
    dualClipFraction: mean(st.dual),
    ppoKl: mean(st.negLr),
    ratioMean: mean(st.ratio),
    ratioMin: tokens > 0 ? st.rmin : 0,
    ratioMax: tokens > 0 ? st.rmax : 0,
    isWeightMean: mean(st.weight),
    vetoedSequences: vetoed,
  };
  if (o.kl) stats.klMean = mean(st.kl);
  if (inp.entropy) stats.entropyMean = mean(st.ent);
  return { loss: loss.value, lossAbs, grad, gradEntropy, kept, stats };
}

/**
 * The loss as a function of the log-probs alone, for finite differences. In GSPO mode the
 * sequence ratio is recomputed from the perturbed log-probs, so the finite difference is the
 * true derivative; it equals the GSPO-token gradient when advantages are per sequence.
 */
export function policyLossValueRef(inp: PolicyLossRefInputs, o: PolicyLossRefOptions, logprobs: ArrayLike<number>): number {
  return policyLossRef({ ...inp, logprobs }, o).loss;
}
