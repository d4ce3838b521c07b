// Float64 reference of LOSSES.md sections 1-3 (every policyLoss mode, rollout
// correction, the off-policy mask, KL bias correction, the aggregations),
// written from the contract's formulas, independently of the kernels.
//
// `modeLossRef(inp, o, logp, base)` evaluates the objective at log-probs
// `logp` with every stop-gradient quantity (sg(...) in LOSSES.md: rollout
// weights, the off-policy mask, clip-cov / kl-cov selection and covariance,
// cispo's clipped ratio, dppo's valid and min(r, R), vespo's phi, reinforce's
// log rho, decisions) taken at `base`. Central differences of it in `logp`
// at `logp = base` are then the surrogate's gradient, what the kernel returns.
import { klRef, type KlRefEstimator } from './kl_penalty.js';
import { CompensatedSum } from './sum.js';

export type ModeName =
  | 'vanilla' | 'gspo' | 'sapo' | 'gpg' | 'cispo' | 'geo-mean' | 'dppo-tv' | 'dppo-kl' | 'dro' | 'clip-cov' | 'kl-cov' | 'reinforce' | 'luspo' | 'vespo';
export type AggName = 'token-mean' | 'seq-mean-token-sum' | 'seq-mean-token-mean' | 'seq-mean-token-sum-norm' | 'token-sum';

export interface ModeRefInputs {
  old: ArrayLike<number>;
  adv: ArrayLike<number>;
  advPerSeq: boolean;
  mask?: ArrayLike<number>;
  rollout?: ArrayLike<number>;
  ref?: ArrayLike<number>;
  entropy?: ArrayLike<number>;
  seqs: Array<[number, number]>;
}

export interface ModeRefOptions {
  mode: ModeName;
  clipLow: number;
  clipHigh: number;
  dualClip: number | null;
  ratioCap?: number;            // vanilla: none when undefined; dppo: R
  tauPos: number;
  tauNeg: number;
  beta: number;
  clipCovRatio: number;
  clipCovLb: number;
  clipCovUb: number;
  seed: number;
  klCovRatio: number;
  ppoKlCoef: number;
  kPos: number;
  lambdaPos: number;
  kNeg: number;
  lambdaNeg: number;
  aggregation: AggName;
  tokenCount?: number;
  sequenceCount?: number;
  lossScale: number;
  dpSize: number;
  rc?: {
    is?: { level: 'token' | 'sequence'; mode: 'truncate' | 'mask'; upper: number; lower?: number; batchNormalize: boolean };
    reject?: Array<{ criterion: string; upper: number; lower?: number }>;
  };
  offPolicy?: number;
  kl?: { estimator: KlRefEstimator; coef: number; bias: boolean };
  entropyCoef?: number;
}

export interface ModeRefResult {
  loss: number;
  /** Sum of |per-token contributions|: the scale a float32 sum of them is accurate to. */
  lossAbs: number;
  stats: Record<string, number>;
  kept: Uint8Array;
}

const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));
const M64 = (1n << 64n) - 1n;

/** LOSSES.md's clip-cov key. */
export function clipCovKey(seed: number, i: number, j: number): bigint {
  let z = (BigInt(i) * 2n ** 32n + BigInt(j) + (BigInt(seed) + 1n) * 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

export function modeLossRef(inp: ModeRefInputs, o: ModeRefOptions, logp: ArrayLike<number>, base: ArrayLike<number>): ModeRefResult {
  const N = base.length;
  const B = inp.seqs.length;
  const seqOf = new Int32Array(N).fill(-1);
  inp.seqs.forEach(([b, e], i) => {
    for (let t = b; t < e; t++) seqOf[t] = i;
  });
  const m = new Float64Array(N);
  for (let t = 0; t < N; t++) m[t] = seqOf[t] >= 0 && (inp.mask ? inp.mask[t] !== 0 : true) ? 1 : 0;
  const A = (t: number): number => (inp.advPerSeq ? inp.adv[seqOf[t]] : inp.adv[t]);
  const reinforce = o.mode === 'reinforce';

  // ---- section 3: IS weights, rejection, off-policy mask (all at base).
  const logRho = new Float64Array(N);
  for (let t = 0; t < N; t++) logRho[t] = reinforce ? base[t] - inp.old[t] : inp.rollout ? inp.old[t] - inp.rollout[t] : 0;
  const w = new Float64Array(N).fill(1);
  const is = o.rc?.is;
  if (is) {
    const lower = is.lower ?? (is.mode === 'mask' ? 1 / is.upper : undefined);
    const rule = (x: number): number => {
      if (is.mode === 'truncate') {
        let v = Math.min(x, is.upper);
        if (lower !== undefined) v = Math.max(v, lower);
        return v;
      }
      return x >= (lower as number) && x <= is.upper ? x : 0;
    };
    if (is.level === 'token') {
      for (let t = 0; t < N; t++) w[t] = rule(Math.exp(clamp(logRho[t], -20, 20)));
    } else {
      for (const [b, e] of inp.seqs) {
        let s = 0;
        for (let t = b; t < e; t++) s += m[t] * logRho[t];
        const ws = rule(Math.exp(clamp(s, -20, 20)));
        for (let t = b; t < e; t++) w[t] = ws;
      }
    }
    if (is.batchNormalize) {
      let mu = 0;
      if (is.level === 'token') {
        let sw = 0;
        let sm = 0;
        for (let t = 0; t < N; t++) {
          sw += m[t] * w[t];
          sm += m[t];
        }
        mu = sm > 0 ? sw / sm : 0;
      } else {
        let sw = 0;
        let ns = 0;
        for (const [b, e] of inp.seqs) {
          let sm = 0;
          for (let t = b; t < e; t++) sm += m[t];
          if (sm > 0) {
            sw += w[b];
            ns++;
          }
        }
        mu = ns > 0 ? sw / ns : 0;
      }
      if (mu > 1e-8) for (let t = 0; t < N; t++) w[t] /= mu;
    }
  }
  const k = new Float64Array(N).fill(1);
  const est = (x: number, e: number): number => {
    const ls = clamp(x, -20, 20);
    if (e === 1) return -ls;
    if (e === 2) return 0.5 * ls * ls;
    // e^ls - 1 - ls without cancellation near 0.
    if (Math.abs(ls) < 1e-3) return ls * ls * (0.5 + ls * (1 / 6 + ls * (1 / 24 + ls / 120)));
    return Math.expm1(ls) - ls;
  };
  for (const c of o.rc?.reject ?? []) {
    const e = Number(c.criterion[c.criterion.length - 1]);
    const keep = (v: number): boolean => (e === 1 ? v >= Math.log(c.lower ?? 1 / c.upper) && v <= Math.log(c.upper) : v <= c.upper);
    if (c.criterion.startsWith('token_')) {
      for (let t = 0; t < N; t++) if (m[t] && !keep(est(logRho[t], e))) k[t] = 0;
      continue;
    }
    for (const [b, e2] of inp.seqs) {
      let n = 0;
      let sum = 0;
      let mx = -Infinity;
      for (let t = b; t < e2; t++) {
        if (!m[t]) continue;
        n++;
        const v = est(logRho[t], e);
        sum += v;
        mx = Math.max(mx, v);
      }
      let stat = 0;
      if (n > 0) stat = c.criterion.startsWith('seq_sum_') ? sum : c.criterion.startsWith('seq_mean_') ? sum / n : mx;
      if (!keep(stat)) for (let t = b; t < e2; t++) k[t] = 0;
    }
  }
  const M = new Float64Array(N);
  for (let t = 0; t < N; t++) M[t] = m[t] * k[t];
  const n = new Float64Array(B);
  for (let t = 0; t < N; t++) if (seqOf[t] >= 0) n[seqOf[t]] += M[t];
  let Ntok = 0;
  let S = 0;
  let mSum = 0;
  let rejectedSeqs = 0;
  for (let i = 0; i < B; i++) {
    Ntok += n[i];
    if (n[i] > 0) S++;
    const [b, e] = inp.seqs[i];
    let mi = 0;
    for (let t = b; t < e; t++) mi += m[t];
    mSum += mi;
    if (mi > 0 && n[i] < mi) rejectedSeqs++;
  }
  const off = new Float64Array(N).fill(1);
  if (o.offPolicy !== undefined) {
    for (const [b, e] of inp.seqs) {
      let s = 0;
      let c = 0;
      for (let t = b; t < e; t++) {
        const bt = inp.rollout && !reinforce ? inp.rollout[t] : inp.old[t];
        s += m[t] * (bt - base[t]);
        c += m[t];
      }
      const kl = s / Math.max(c, 1);
      for (let t = b; t < e; t++) off[t] = A(t) >= 0 || kl <= o.offPolicy ? 1 : 0;
    }
  }

  // ---- section 1: aggregation weights.
  const tokDen = o.tokenCount ?? Ntok;
  const seqDen = o.sequenceCount ?? S;
  const agg = (i: number): number => {
    if (!(n[i] > 0)) return 0;
    switch (o.aggregation) {
      case 'token-mean': return tokDen > 0 ? o.dpSize / tokDen : 0;
      case 'token-sum': return o.dpSize;
      case 'seq-mean-token-sum': return seqDen > 0 ? o.dpSize / seqDen : 0;
      case 'seq-mean-token-mean': return seqDen > 0 ? o.dpSize / seqDen / n[i] : 0;
      case 'seq-mean-token-sum-norm': return seqDen > 0 ? o.dpSize / seqDen / o.lossScale : 0;
    }
  };

  // ---- section 2: per-token losses, per mode.
  const lo = 1 - o.clipLow;
  const hi = 1 + o.clipHigh;
  const d = (t: number): number => logp[t] - inp.old[t];
  const d0 = (t: number): number => base[t] - inp.old[t];
  const rTok = (t: number): number => Math.exp(clamp(d(t), -20, 20));
  const ell = new Float64Array(N);     // the mode's per-token loss l_t (at logp)
  const ratio = new Float64Array(N);   // the ratio the stats read (at base)
  const flags = { clip: new Uint8Array(N), low: new Uint8Array(N), high: new Uint8Array(N), dual: new Uint8Array(N) };
  let wEff: Float64Array = w;          // the weight multiplying l (1 where the mode folds IS in)
  const wStat = w.slice();
  const isOn = !!is;

  const seqMeanD = (i: number, at: (t: number) => number): number => {
    const [b, e] = inp.seqs[i];
    let s = 0;
    for (let t = b; t < e; t++) s += M[t] * at(t);
    return n[i] > 0 ? s / n[i] : 0;
  };

  // Selection for the covariance modes (at base).
  const sel = new Uint8Array(N);
  if (o.mode === 'clip-cov' || o.mode === 'kl-cov') {
    let sa = 0;
    let sl = 0;
    for (let t = 0; t < N; t++) {
      sa += M[t] * A(t);
      sl += M[t] * base[t];
    }
    const abar = Ntok > 0 ? sa / Ntok : 0;
    const lbar = Ntok > 0 ? sl / Ntok : 0;
    const cov = (t: number): number => (A(t) - abar) * (base[t] - lbar);
    if (o.mode === 'clip-cov') {
      const cands: Array<{ key: bigint; t: number }> = [];
      for (let t = 0; t < N; t++) {
        if (!M[t]) continue;
        const r = Math.exp(d0(t));
        const L1 = -A(t) * r;
        const L2 = -A(t) * clamp(r, lo, hi);
        const c = cov(t);
        if (L2 > L1 || !(c > o.clipCovLb && c < o.clipCovUb)) continue;
        const i = seqOf[t];
        cands.push({ key: clipCovKey(o.seed, i, t - inp.seqs[i][0]), t });
      }
      const kk = Ntok > 0 ? Math.min(Math.max(Math.floor(o.clipCovRatio * Ntok), 1), cands.length) : 0;
      cands.sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
      for (let j = 0; j < kk; j++) sel[cands[j].t] = 1;
    } else {
      const cands: Array<{ c: number; t: number }> = [];
      for (let t = 0; t < N; t++) if (M[t]) cands.push({ c: Math.fround(cov(t)), t });
      cands.sort((x, y) => (y.c - x.c) || (x.t - y.t));
      const kk = Ntok > 0 ? Math.min(Math.max(1, Math.floor(Ntok * o.klCovRatio)), cands.length) : 0;
      for (let j = 0; j < kk; j++) sel[cands[j].t] = 1;
    }
  }

  // Sequence quantities.
  const sSeq = new Float64Array(B);   // gspo / luspo / geo-mean ratio at logp
  const sSeq0 = new Float64Array(B);  // at base
  const geoG = new Float64Array(B).fill(1);
  const geoAbar = new Float64Array(B);
  const vespoLnW = new Float64Array(B);
  const geoClipped = (Av: number, dv: number): number => (Av > 0 ? Math.min(dv, o.clipHigh) : Av < 0 ? Math.max(dv, -o.clipLow) : 0);
  if (o.mode === 'luspo' || o.mode === 'gspo') {
    for (let i = 0; i < B; i++) {
      sSeq[i] = Math.exp(Math.min(seqMeanD(i, d), 10));
      sSeq0[i] = Math.exp(Math.min(seqMeanD(i, d0), 10));
    }
  }
  if (o.mode === 'geo-mean') {
    wEff = new Float64Array(N).fill(1);
    for (let i = 0; i < B; i++) {
      sSeq[i] = Math.exp(seqMeanD(i, (t) => geoClipped(A(t), d(t))));
      sSeq0[i] = Math.exp(seqMeanD(i, (t) => geoClipped(A(t), d0(t))));
      geoAbar[i] = seqMeanD(i, A);
      if (isOn) geoG[i] = Math.exp(seqMeanD(i, (t) => Math.log(w[t] + 1e-10)));
      const [b, e] = inp.seqs[i];
      for (let t = b; t < e; t++) wStat[t] = geoG[i];
    }
  }
  if (o.mode === 'vespo') {
    wEff = new Float64Array(N).fill(1);
    for (let i = 0; i < B; i++) {
      const [b, e] = inp.seqs[i];
      let s = 0;
      for (let t = b; t < e; t++) {
        if (!M[t]) continue;
        s += clamp(d0(t), -20, 20);
        if (isOn) s += clamp(Math.log(w[t]), Math.log(1e-8), 20);
      }
      vespoLnW[i] = clamp(s, Math.log(1e-8), 20);
    }
  }

  for (let t = 0; t < N; t++) {
    if (!M[t]) continue;
    const a = A(t);
    const i = seqOf[t];
    switch (o.mode) {
      case 'vanilla': {
        const r = rTok(t);
        const cap = o.ratioCap;
        const L1 = -a * (cap !== undefined ? Math.min(r, cap) : r);
        const L2 = -a * clamp(r, lo, hi);
        let L = Math.max(L1, L2);
        const r0 = Math.exp(clamp(d0(t), -20, 20));
        const L10 = -a * (cap !== undefined ? Math.min(r0, cap) : r0);
        const L20 = -a * clamp(r0, lo, hi);
        if (L20 > L10) flags.clip[t] = 1;
        if (r0 < lo && a < 0) flags.low[t] = 1;
        if (r0 > hi && a > 0) flags.high[t] = 1;
        if (o.dualClip !== null && a < 0) {
          L = Math.min(L, -a * o.dualClip);
          if (Math.max(L10, L20) > -a * o.dualClip) flags.dual[t] = 1;
        }
        ell[t] = L;
        ratio[t] = r0;
        break;
      }
      case 'gspo':
      case 'luspo': {
        // gspo: the token form exp(logp_t - sg(logp_t) + sg(min(mean, 10))); luspo: through the mean.
        const s = o.mode === 'gspo' ? sSeq0[i] * Math.exp(seqMeanD(i, d0) <= 10 ? logp[t] - base[t] : 0) : sSeq[i];
        const s0 = sSeq0[i];
        ell[t] = Math.max(-a * s, -a * clamp(s, lo, hi));
        if (-a * clamp(s0, lo, hi) > -a * s0) flags.clip[t] = 1;
        if (s0 < lo && a < 0) flags.low[t] = 1;
        if (s0 > hi && a > 0) flags.high[t] = 1;
        ratio[t] = s0;
        break;
      }
      case 'sapo': {
        const r = rTok(t);
        const tau = a > 0 ? o.tauPos : o.tauNeg;
        ell[t] = (-a * 4) / tau / (1 + Math.exp(-tau * (r - 1)));
        ratio[t] = Math.exp(clamp(d0(t), -20, 20));
        break;
      }
      case 'gpg':
      case 'reinforce':
        ell[t] = -a * logp[t];
        ratio[t] = Math.exp(clamp(d0(t), -20, 20));
        break;
      case 'cispo': {
        const r0 = Math.exp(clamp(d0(t), -20, 20));
        ell[t] = -clamp(r0, lo, hi) * a * logp[t];
        if (r0 < lo || r0 > hi) flags.clip[t] = 1;
        if (r0 < lo && a < 0) flags.low[t] = 1;
        if (r0 > hi && a > 0) flags.high[t] = 1;
        ratio[t] = r0;
        break;
      }
      case 'geo-mean': {
        const dv = d0(t);
        ell[t] = -geoG[i] * geoAbar[i] * sSeq[i];
        const h = a > 0 && dv > o.clipHigh;
        const l = a < 0 && dv < -o.clipLow;
        if (h || l) flags.clip[t] = 1;
        if (l) flags.low[t] = 1;
        if (h) flags.high[t] = 1;
        ratio[t] = sSeq0[i];
        break;
      }
      case 'dppo-tv':
      case 'dppo-kl': {
        const p = Math.exp(base[t]);
        const po = Math.exp(inp.old[t]);
        let valid: boolean;
        if (o.mode === 'dppo-tv') valid = a > 0 ? p - po <= o.clipHigh : p - po >= -o.clipLow;
        else {
          const bdiv = po * (inp.old[t] - base[t]) + (1 - po) * Math.log((1 - po + 1e-8) / (1 - p + 1e-8));
          valid = a > 0 ? bdiv <= o.clipHigh || p <= po : bdiv <= o.clipLow || p >= po;
        }
        const r0 = Math.exp(clamp(d0(t), -20, 20));
        const R = o.ratioCap ?? 20;
        ell[t] = valid ? -a * Math.min(r0, R) * logp[t] : 0;
        if (!valid) {
          flags.clip[t] = 1;
          if (a > 0) flags.high[t] = 1;
          else flags.low[t] = 1;
        }
        if (valid && r0 > R) flags.dual[t] = 1;
        ratio[t] = r0;
        break;
      }
      case 'dro':
        ell[t] = -(a * logp[t] - 0.5 * o.beta * d(t) * d(t));
        ratio[t] = Math.exp(clamp(d0(t), -20, 20));
        break;
      case 'clip-cov': {
        const r = Math.exp(d(t));
        const r0 = Math.exp(d0(t));
        ell[t] = sel[t] ? 0 : Math.max(-a * r, -a * clamp(r, lo, hi));
        if (sel[t]) flags.clip[t] = 1;
        if (r0 < lo && a < 0) flags.low[t] = 1;
        if (r0 > hi && a > 0) flags.high[t] = 1;
        ratio[t] = r0;
        break;
      }
      case 'kl-cov': {
        ell[t] = -a * Math.exp(d(t)) + (sel[t] ? o.ppoKlCoef * Math.abs(d(t)) : 0);
        if (sel[t]) flags.clip[t] = 1;
        ratio[t] = Math.exp(d0(t));
        break;
      }
      case 'vespo': {
        const pos = a >= 0;
        const kk = pos ? o.kPos : o.kNeg;
        const lam = Math.max(pos ? o.lambdaPos : o.lambdaNeg, 1e-4);
        let phi = Math.exp(lam + kk * vespoLnW[i] - lam * Math.exp(vespoLnW[i]));
        if (!Number.isFinite(phi)) phi = 0;
        ell[t] = -phi * a * logp[t];
        ratio[t] = Math.exp(clamp(d0(t), -20, 20));
        break;
      }
    }
  }

  // ---- the objective.
  const loss = new CompensatedSum();  // differentiated by finite differences (sum.ts says why)
  let lossAbs = 0;
  const st = { clip: 0, low: 0, high: 0, dual: 0, negLr: 0, ratio: 0, rmin: Infinity, rmax: -Infinity, weight: 0, kl: 0, ent: 0, off: 0 };
  for (let t = 0; t < N; t++) {
    if (!M[t]) continue;
    const i = seqOf[t];
    const ai = agg(i);
    let term = wEff[t] * off[t] * ell[t];
    if (o.kl) {
      let kv = klRef(o.kl.estimator, logp[t], inp.ref![t]).value;
      if (o.kl.bias) kv *= rTok(t);
      term += o.kl.coef * kv;
      let kv0 = klRef(o.kl.estimator, base[t], inp.ref![t]).value;
      if (o.kl.bias) kv0 *= Math.exp(clamp(d0(t), -20, 20));
      st.kl += kv0;
    }
    if (o.entropyCoef !== undefined) {
      term -= o.entropyCoef * inp.entropy![t];
      st.ent += inp.entropy![t];
    }
    // geo-mean: the sequence's term carried by each of its tokens counts once per token (P = sum_i C_i L_i).
    loss.add(ai * term);
    lossAbs += Math.abs(ai * term);
    st.clip += flags.clip[t];
    st.low += flags.low[t];
    st.high += flags.high[t];
    st.dual += flags.dual[t];
    st.negLr -= clamp(d0(t), -20, 20);
    st.ratio += ratio[t];
    st.rmin = Math.min(st.rmin, ratio[t]);
    st.rmax = Math.max(st.rmax, ratio[t]);
    st.weight += wStat[t];
    st.off += 1 - off[t];
  }
  const mean = (v: number): number => (Ntok > 0 ? v / Ntok : 0);
  const stats: Record<string, number> = {
    clipFraction: mean(st.clip),
    clipFractionLow: mean(st.low),
    clipFractionHigh: mean(st.high),
    dualClipFraction: mean(st.dual),
    ppoKl: mean(st.negLr),
    ratioMean: mean(st.ratio),
    ratioMin: Ntok > 0 ? st.rmin : 0,
    ratioMax: Ntok > 0 ? st.rmax : 0,
    isWeightMean: mean(st.weight),
    vetoedSequences: 0,
  };
  if (o.kl) stats.klMean = mean(st.kl);
  if (o.entropyCoef !== undefined) stats.entropyMean = mean(st.ent);
  if (o.rc) {
    stats.rejectedFraction = mSum > 0 ? 1 - Ntok / mSum : 0;
    stats.rejectedSequences = rejectedSeqs;
  }
  if (o.offPolicy !== undefined) stats.offPolicyMaskedFraction = mean(st.off);
  const kept = new Uint8Array(N);
  for (let t = 0; t < N; t++) kept[t] = M[t] ? 1 : 0;
  return { loss: loss.value, lossAbs, stats, kept };
}

/** Central differences of the objective at `base`, every token (sg quantities fixed at base). */
export function modeGradFd(inp: ModeRefInputs, o: ModeRefOptions, base: ArrayLike<number>, h = 1e-6): Float64Array {
  const N = base.length;
  const x = Float64Array.from(base);
  const g = new Float64Array(N);
  for (let t = 0; t < N; t++) {
    const v = x[t];
    x[t] = v + h;
    const fp = modeLossRef(inp, o, x, base).loss;
    x[t] = v - h;
    const fm = modeLossRef(inp, o, x, base).loss;
    x[t] = v;
    g[t] = (fp - fm) / (2 * h);
  }
  return g;
}
