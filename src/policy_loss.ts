// Policy loss of GRPO-family training (DESIGN 3.3, LOSSES.md): the modes of
// verl's POLICY_LOSS_REGISTRY and TRL's loss types (trainer/ppo/core_algos.py,
// grpo_trainer.py), verl's rollout correction (IS weights, IcePop, rejection
// criteria) and DESIGN's `tis`, TRL's off-policy mask, KL (with TRL's bias
// correction) and entropy terms, five aggregations, the gradient with respect
// to the log-probs and the stats, from one call. Defaults, option names and
// aggregation names live here; the kernels get integer codes and scalars.
import {
  checkBoolean,
  checkDTypeOf,
  checkEnum,
  checkNumber,
  checkOptions,
  checkOptionalTensor,
  checkSameDevice,
  checkShapeEquals,
  checkTensor,
  describe,
  rangeError,
  typeError,
} from './checks.js';
import { klEstimatorCode, type KlEstimator } from './kl_penalty.js';
import { native, type NativeTensor } from './native.js';
import { Tensor, keep } from './tensor.js';

/** verl's `clip_ratio_low` / `clip_ratio` default. */
export const DEFAULT_CLIP_LOW = 0.2;
/** verl's `clip_ratio_c`. */
export const DEFAULT_DUAL_CLIP = 3;
export const DEFAULT_AGGREGATION: PolicyLossAggregation = 'token-mean';
/** GSPO's aggregation (verl forces it; here an explicit `aggregation` wins). */
export const DEFAULT_GSPO_AGGREGATION: PolicyLossAggregation = 'seq-mean-token-mean';
export const DEFAULT_DP_SIZE = 1;
/** verl's `rollout_is_threshold` default. */
export const DEFAULT_TIS_UPPER = 2;
export const DEFAULT_TIS_LEVEL: RolloutCorrectionLevel = 'token';
export const DEFAULT_TIS_MODE: RolloutCorrectionMode = 'truncate';
/** verl's `kl_loss_type` default (`low_var_kl`). */
export const DEFAULT_KL_ESTIMATOR: KlEstimator = 'k3';
/** verl's `kl_loss_coef` default. */
export const DEFAULT_KL_COEF = 0.001;
/** verl's `entropy_coeff` default. */
export const DEFAULT_ENTROPY_COEF = 0;
/** sapo's temperatures (verl / TRL). */
export const DEFAULT_TAU_POS = 1.0;
export const DEFAULT_TAU_NEG = 1.05;
/** dppo's ratio cap R when `ratioCap` is absent (verl's fallback; verl's ActorConfig `clip_ratio_c` is 3). */
export const DEFAULT_DPPO_RATIO_CAP = 20;
/** clip-cov (verl PolicyLossConfig). */
export const DEFAULT_CLIP_COV_RATIO = 2e-4;
export const DEFAULT_CLIP_COV_LB = 1;
export const DEFAULT_CLIP_COV_UB = 5;
/** kl-cov (verl PolicyLossConfig; the function's own fallback for ppoKlCoef is 1.0). */
export const DEFAULT_KL_COV_RATIO = 2e-4;
export const DEFAULT_PPO_KL_COEF = 0.1;
/** vespo's gamma-weight shape (TRL). */
export const DEFAULT_VESPO = { kPos: 2, lambdaPos: 3, kNeg: 3, lambdaNeg: 2 } as const;
/** rolloutCorrection.is upper bound (verl's `rollout_is_threshold`). */
export const DEFAULT_IS_UPPER = 2;

export type PolicyLossMode =
  | 'vanilla' | 'gspo' | 'sapo' | 'gpg' | 'cispo' | 'geo-mean' | 'dppo-tv' | 'dppo-kl' | 'dro' | 'clip-cov' | 'kl-cov' | 'reinforce' | 'luspo' | 'vespo';
export type PolicyLossAggregation = 'token-mean' | 'seq-mean-token-sum' | 'seq-mean-token-mean' | 'seq-mean-token-sum-norm' | 'token-sum';
export type RolloutCorrectionLevel = 'token' | 'sequence' | 'geometric';
export type RolloutCorrectionMode = 'truncate' | 'mask';
export type RejectionCriterion =
  | 'token_k1' | 'token_k2' | 'token_k3'
  | 'seq_sum_k1' | 'seq_sum_k2' | 'seq_sum_k3'
  | 'seq_mean_k1' | 'seq_mean_k2' | 'seq_mean_k3'
  | 'seq_max_k2' | 'seq_max_k3';

/** Kernel codes: the order of native/include/rlk/policy_loss_modes.h's PolicyLossMode. */
const MODES: readonly PolicyLossMode[] = [
  'vanilla', 'gspo', 'sapo', 'gpg', 'cispo', 'geo-mean', 'dppo-tv', 'dppo-kl', 'dro', 'clip-cov', 'kl-cov', 'reinforce', 'luspo', 'vespo',
];
const AGGREGATIONS: readonly PolicyLossAggregation[] = ['token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm', 'token-sum'];
/** Default aggregation per mode (LOSSES.md section 2); an explicit `aggregation` always wins. */
const MODE_AGGREGATION: Partial<Record<PolicyLossMode, PolicyLossAggregation>> = {
  gspo: 'seq-mean-token-mean',
  sapo: 'seq-mean-token-mean',
  'geo-mean': 'seq-mean-token-mean',
  luspo: 'seq-mean-token-sum',
};
const CRITERIA: readonly RejectionCriterion[] = [
  'token_k1', 'token_k2', 'token_k3', 'seq_sum_k1', 'seq_sum_k2', 'seq_sum_k3', 'seq_mean_k1', 'seq_mean_k2', 'seq_mean_k3', 'seq_max_k2', 'seq_max_k3',
];
const TIS_LEVELS: readonly RolloutCorrectionLevel[] = ['token', 'sequence', 'geometric'];
const TIS_MODES: readonly RolloutCorrectionMode[] = ['truncate', 'mask'];

/** Indices of the stats tensor, as native/include/rlk/policy_loss.h lays it out. */
const STAT = {
  clipFraction: 0,
  clipFractionLow: 1,
  clipFractionHigh: 2,
  dualClipFraction: 3,
  ppoKl: 4,
  ratioMean: 5,
  ratioMin: 6,
  ratioMax: 7,
  isWeightMean: 8,
  vetoedSequences: 9,
  klMean: 10,
  entropyMean: 11,
  rejectedFraction: 14,
  rejectedSequences: 15,
  offPolicyMaskedFraction: 16,
} as const;

export interface PolicyLossInputs {
  /** float32 log-probs of the current policy: `[B, T]` padded, or `[N]` packed with `cuSeqlens`. */
  logprobs: Tensor;
  /** float32, the shape of `logprobs`: log-probs of the policy that collected the batch (verl's `old_log_prob`). */
  oldLogprobs: Tensor;
  /**
   * float32 advantages: one per token (the shape of `logprobs`) or one per sequence (`[B]`).
   * In the packed layout a `[N]` tensor is read per token when `N == B`.
   */
  advantages: Tensor;
  /** uint8, the shape of `logprobs`: 1 for response tokens that count. Defaults to every token counting. */
  mask?: Tensor;
  /**
   * float32, the shape of `logprobs`: the rollout engine's log-probs, needed by `tis` and `rolloutCorrection`
   * (except in `reinforce`, which never reads them), and read by `offPolicyMask` when given.
   */
  rolloutLogprobs?: Tensor;
  /** int32 `[B + 1]` sequence offsets into packed `[N]` tensors: starts at 0, never decreases, ends at N. */
  cuSeqlens?: Tensor;
}

/** Rollout correction (verl's rollout importance sampling); the weights are constants for the gradient. */
export interface RolloutCorrectionOptions {
  /**
   * `token`: `w = exp(clamp(old - rollout, -20, 20))` per token; `sequence`: one weight per sequence from the
   * clamped sum of the token log-ratios over its masked tokens; `geometric`: from their clamped mean.
   * Defaults to `'token'`.
   */
  level?: RolloutCorrectionLevel;
  /**
   * `truncate`: the per-token loss is multiplied by `min(w, upper)`; `mask`: tokens (token level) or whole
   * sequences (sequence levels) whose weight lies outside `[lower, upper]` are removed from the mask (so from
   * the denominators and the stats) and the kept ones carry their weight `w`. Defaults to `'truncate'`.
   */
  mode?: RolloutCorrectionMode;
  /** Upper bound of the weight, > 0. Defaults to `2` (verl's `rollout_is_threshold`). */
  upper?: number;
  /** Lower bound for `mode: 'mask'`, in [0, upper]. Defaults to `1 / upper`. */
  lower?: number;
  /**
   * A sequence with any masked token whose weight `exp(old - rollout)` (before the clamp) is below this is
   * rejected as in `mask` mode, whatever the mode, and counted in `vetoedSequences`. Defaults to no veto.
   */
  vetoThreshold?: number | null;
}

/** Current verl's IS weights (`compute_rollout_correction_and_rejection_mask`); constants for the gradient. */
export interface RolloutIsOptions {
  /**
   * `token`: `w = exp(clamp(log rho, -20, 20))` per token; `sequence`: `exp(clamp(sum of log rho over the sequence's
   * masked tokens, -20, 20))` on each of its tokens. `log rho = old - rollout` (`reinforce`: `logp - old`).
   * Defaults to `'token'`.
   */
  level?: 'token' | 'sequence';
  /**
   * `truncate` (TIS): `min(w, upper)`, then `max(., lower)` when `lower` is given (TRL's `clip_min`; verl has none);
   * `mask` (IcePop): `w` inside `[lower, upper]`, else 0 — the token stays in the mask and every denominator
   * (DESIGN's `tis` mask mode removes it instead). Defaults to `'truncate'`.
   */
  mode?: 'truncate' | 'mask';
  /** Upper bound, > 0. Defaults to `2`. */
  upper?: number;
  /** Lower bound in [0, upper]. Defaults to none for `truncate`, `1 / upper` for `mask` (TRL's token_mask uses 0). */
  lower?: number;
  /** Divide the weights by their mean over the masked tokens (token) or the sequences with a masked token (sequence) when it exceeds 1e-8. Defaults to `false`. */
  batchNormalize?: boolean;
}

/** One rejection criterion on an estimator of KL(pi_rollout || pi_old) from `ls = clamp(log rho, -20, 20)`. */
export interface RejectionCriterionOptions {
  /**
   * `token_kX` rejects the token; `seq_sum_kX`, `seq_mean_kX`, `seq_max_k2/k3` (over the sequence's masked tokens,
   * 0 for none) reject the whole sequence. `k1 = -ls`, `k2 = ls^2 / 2`, `k3 = e^ls - 1 - ls`.
   */
  criterion: RejectionCriterion;
  /** Required, > 0. k1: keep iff `ln(lower) <= stat <= ln(upper)` (bounds on `pi_rollout / pi_old`); k2 / k3: keep iff `stat <= upper`. */
  upper: number;
  /** k1 only, in (0, upper]. Defaults to `1 / upper`. */
  lower?: number;
}

/** Current verl rollout correction (LOSSES.md section 3); replaces `tis` (giving both is an error). */
export interface RolloutCorrectionOptions2 {
  is?: RolloutIsOptions;
  /** Criteria, AND-ed: a token is kept when every criterion keeps it. At most 8. */
  reject?: RejectionCriterionOptions[];
}

export interface PolicyLossKlOptions {
  /** float32 reference-policy log-probs, the shape of `logprobs`. */
  refLogprobs: Tensor;
  /** The KL estimator of `klPenalty`. Defaults to `'k3'` (verl's `low_var_kl`). */
  estimator?: KlEstimator;
  /** Weight of the aggregated KL in the loss, >= 0. Defaults to `0.001` (verl's `kl_loss_coef`). */
  coef?: number;
}

export interface PolicyLossEntropyOptions {
  /** float32 per-token entropies, the shape of `logprobs` (from `tokenLogprobs(..., { entropy: true })`). */
  values: Tensor;
  /** Weight of the aggregated entropy, subtracted from the loss, >= 0. Defaults to `0` (verl's `entropy_coeff`). */
  coef?: number;
}

export interface PolicyLossOptions {
  /**
   * The loss (LOSSES.md section 2): `vanilla` (PPO clipped surrogate with dual clip, `ratioCap`), `gspo` (sequence
   * ratio, verl's GSPO-token form), `sapo`, `gpg`, `cispo`, `geo-mean` (GMPO), `dppo-tv`, `dppo-kl`, `dro`,
   * `clip-cov`, `kl-cov`, `reinforce` (verl bypass mode), `luspo` and `vespo` (TRL). The loss values of `gpg`,
   * `cispo`, `dppo-*`, `reinforce`, `vespo` and `dro` are the peers' surrogates (they contain `logp`).
   * Defaults to `'vanilla'`.
   */
  mode?: PolicyLossMode;
  /**
   * Lower clip: the ratio is clipped below at `1 - clipLow` (>= 0; at most 1 except in `cispo`, where `clipLow >= 1`
   * means no lower bound, and in `geo-mean` / `dppo-*`, where it is a log-ratio / divergence threshold).
   * Defaults to `0.2`.
   */
  clipLow?: number;
  /** Upper clip (clip-higher): the ratio is clipped above at `1 + clipHigh`; >= 0. Defaults to `clipLow`. */
  clipHigh?: number;
  /**
   * vanilla: TRL's `delta` (INTELLECT-2), `L1 = -A min(r, ratioCap)`; dppo: the cap `R` on the ratio. > 1.
   * Defaults to none (vanilla), `20` (dppo; verl ActorConfig users get 3).
   */
  ratioCap?: number;
  /** sapo temperatures for `A > 0` and `A <= 0`, > 0. Default `1.0` and `1.05`. */
  tauPos?: number;
  tauNeg?: number;
  /** dro's `beta`, required by `dro`, > 0. */
  beta?: number;
  /** clip-cov: fraction of kept tokens to zero (>= 0), covariance bounds, selection seed (integer in [0, 2^32)). Defaults `2e-4`, `1`, `5`, `0`. */
  clipCovRatio?: number;
  clipCovLb?: number;
  clipCovUb?: number;
  seed?: number;
  /** kl-cov: fraction of kept tokens given the KL term (>= 0) and its coefficient (>= 0). Defaults `2e-4` and `0.1`. */
  klCovRatio?: number;
  ppoKlCoef?: number;
  /** vespo's gamma-weight shape: `kPos`, `lambdaPos` (A >= 0), `kNeg`, `lambdaNeg`. Defaults `2`, `3`, `3`, `2`. */
  kPos?: number;
  lambdaPos?: number;
  kNeg?: number;
  lambdaNeg?: number;
  /** Dual-clip constant `c` (> 1) bounding the loss at `-A c` where `A < 0`; `null` turns it off; unused by `gspo`. Defaults to `3`. */
  dualClip?: number | null;
  /**
   * `token-mean`: sum(L m) / sum(m); `seq-mean-token-sum`: mean over sequences of sum_t L m;
   * `seq-mean-token-mean`: mean over sequences of the token mean; `seq-mean-token-sum-norm` (current verl): the
   * sequence mean of sum_t L m divided by `lossScale` (verl before February 2026 left out the sequence mean);
   * `token-sum`: sum(L m). Each times `dpSize`. Sequences are those with at least one kept token (TRL and verl's
   * geo_mean divide by all B rows). Defaults to `'token-mean'`; `'seq-mean-token-mean'` for `gspo`, `sapo`,
   * `geo-mean`; `'seq-mean-token-sum'` for `luspo`.
   */
  aggregation?: PolicyLossAggregation;
  /** Global token count (> 0) across data-parallel ranks for `token-mean`. Defaults to this batch's kept tokens. */
  tokenCount?: number;
  /** Global sequence count (> 0) for the `seq-mean-*` modes. Defaults to this batch's sequences with a kept token. */
  sequenceCount?: number;
  /** Divisor (> 0) of `seq-mean-token-sum-norm`. Defaults to T (padded) or the longest sequence (packed). */
  lossScale?: number;
  /** Data-parallel size (integer >= 1) multiplying the loss and gradient in every aggregation, as verl's agg_loss does. Defaults to `1`. */
  dpSize?: number;
  /** DESIGN's rollout correction (its mask mode rejects tokens); needs `rolloutLogprobs`. Defaults to none. */
  tis?: RolloutCorrectionOptions;
  /** Current verl's rollout correction; needs `rolloutLogprobs` except in `reinforce`. Not with `tis`. Defaults to none. */
  rolloutCorrection?: RolloutCorrectionOptions2;
  /**
   * TRL's off-policy mask (DeepSeek-V3.2): a sequence whose mean of `b - logp` over its masked tokens exceeds
   * `threshold` (b: rolloutLogprobs if given, else oldLogprobs) drops its `A < 0` tokens from the policy term
   * (they stay in the denominators). Defaults to none.
   */
  offPolicyMask?: { threshold: number };
  /** TRL's `use_bias_correction_kl`: the KL value per token becomes `k r` (r differentiable). Needs `kl`. Defaults to `false` (TRL: true). */
  klBiasCorrection?: boolean;
  /** Adds `coef * agg(klPenalty(logprobs, refLogprobs))` with the same mask and aggregation. Defaults to none. */
  kl?: PolicyLossKlOptions;
  /** Subtracts `coef * agg(entropy)`; the result then has `gradEntropy`. Defaults to none. */
  entropy?: PolicyLossEntropyOptions;
}

/**
 * Stats of the batch, float32, masked token means over the kept tokens (the mask after rollout rejection)
 * unless said. With no kept token every mean, the ratio extremes included, is 0.
 */
export interface PolicyLossStats {
  /** Tokens where the clipped term is larger (verl's `pg_clipfrac`; per mode as LOSSES.md section 2 says). */
  clipFraction: number;
  /** Tokens with `r < 1 - clipLow` and `A < 0`. */
  clipFractionLow: number;
  /** Tokens with `r > 1 + clipHigh` and `A > 0`. */
  clipFractionHigh: number;
  /** Tokens with `A < 0` where the dual clip is active (verl's `pg_clipfrac_lower`); 0 in `gspo`. */
  dualClipFraction: number;
  /** Mean of `-clamp(logp - old, -20, 20)`. */
  ppoKl: number;
  /** Mean, min and max of the ratio (of the sequence ratio `s` in `gspo`). */
  ratioMean: number;
  ratioMin: number;
  ratioMax: number;
  /** Mean applied rollout weight; 1 without `tis`. */
  isWeightMean: number;
  /** Sequences (with a masked token) rejected by `tis.vetoThreshold` (a count). */
  vetoedSequences: number;
  /** Mean KL estimator value, when `kl` is given. */
  klMean?: number;
  /** Mean entropy, when `entropy` is given. */
  entropyMean?: number;
  /** With `rolloutCorrection`: `1 - sum M / sum m`, and the sequences with a rejected masked token (a count). */
  rejectedFraction?: number;
  rejectedSequences?: number;
  /** With `offPolicyMask`: the kept tokens it drops from the policy term. */
  offPolicyMaskedFraction?: number;
}

export interface PolicyLossResult {
  /** 0-d float32 tensor: the aggregated loss. */
  loss: Tensor<'float32'>;
  /** float32, the shape of `logprobs`: d loss / d logprobs (KL term included), 0 on tokens not kept. */
  grad: Tensor<'float32'>;
  /** float32, the shape of `logprobs`: d loss / d entropy, when `entropy` is given (for `tokenLogprobsBackward`). */
  gradEntropy?: Tensor<'float32'>;
  /** Reads the stats (kept on the device until then). */
  readStats(): Promise<PolicyLossStats>;
}

interface PolicyLossNative {
  policyLoss(
    logprobs: NativeTensor,
    oldLogprobs: NativeTensor,
    advantages: NativeTensor,
    mask: NativeTensor | null,
    rollout: NativeTensor | null,
    ref: NativeTensor | null,
    entropy: NativeTensor | null,
    cuSeqlens: NativeTensor | null,
    config: Record<string, number | number[]>,
  ): [NativeTensor, NativeTensor, NativeTensor | undefined, NativeTensor];
}

function optionalPositive(fn: string, name: string, v: unknown): number {
  return v === undefined ? 0 : checkNumber(fn, name, v, { greaterThan: 0 });
}

/**
 * The clipped-surrogate policy loss with its gradient and stats (DESIGN 3.3; verl's semantics).
 *
 * Per token: `log r = clamp(logp - old, -20, 20)`, `L = max(-A r, -A clamp(r, 1 - clipLow, 1 + clipHigh))`,
 * and where `A < 0`, `L = min(L, -A dualClip)`; then rollout weights, aggregation, KL and entropy terms.
 *
 * @throws TypeError for a non-tensor, a wrong dtype or device, an unknown option or a missing required tensor;
 *   RangeError for mismatched shapes, bad option values (`clipLow` < 0, `dualClip` <= 1, unknown `mode`,
 *   `aggregation` or estimator) or `cuSeqlens` that do not start at 0, decrease or do not end at N (for CUDA
 *   tensors reported at the next read or synchronize); DisposedError for a disposed tensor.
 */
export function policyLoss(inputs: PolicyLossInputs, options?: PolicyLossOptions): PolicyLossResult {
  const fn = 'policyLoss';
  if (inputs === undefined) throw typeError(fn, 'inputs must be an object of tensors, got undefined');
  const i = checkOptions(fn, inputs, ['logprobs', 'oldLogprobs', 'advantages', 'mask', 'rolloutLogprobs', 'cuSeqlens'], 'inputs');
  const logp = checkTensor(fn, 'logprobs', i.logprobs);
  const old = checkTensor(fn, 'oldLogprobs', i.oldLogprobs);
  const adv = checkTensor(fn, 'advantages', i.advantages);
  const mask = checkOptionalTensor(fn, 'mask', i.mask);
  const rollout = checkOptionalTensor(fn, 'rolloutLogprobs', i.rolloutLogprobs);
  const cu = checkOptionalTensor(fn, 'cuSeqlens', i.cuSeqlens);

  const o = checkOptions(fn, options, [
    'mode', 'clipLow', 'clipHigh', 'dualClip', 'aggregation', 'tokenCount', 'sequenceCount', 'lossScale', 'dpSize', 'tis', 'kl', 'entropy',
    'ratioCap', 'tauPos', 'tauNeg', 'beta', 'clipCovRatio', 'clipCovLb', 'clipCovUb', 'seed', 'klCovRatio', 'ppoKlCoef',
    'kPos', 'lambdaPos', 'kNeg', 'lambdaNeg', 'rolloutCorrection', 'offPolicyMask', 'klBiasCorrection',
  ]);
  const mode = o.mode === undefined ? 'vanilla' : checkEnum(fn, 'mode', o.mode, MODES);
  const clipLowMax = mode === 'cispo' || mode === 'geo-mean' || mode === 'dppo-tv' || mode === 'dppo-kl' ? undefined : 1;
  const clipLow = o.clipLow === undefined ? DEFAULT_CLIP_LOW : checkNumber(fn, 'clipLow', o.clipLow, clipLowMax === undefined ? { min: 0 } : { min: 0, max: clipLowMax });
  const clipHigh = o.clipHigh === undefined ? clipLow : checkNumber(fn, 'clipHigh', o.clipHigh, { min: 0 });
  let dualClip: number | null = DEFAULT_DUAL_CLIP;
  if (o.dualClip === null) dualClip = null;
  else if (o.dualClip !== undefined) dualClip = checkNumber(fn, 'dualClip', o.dualClip, { greaterThan: 1 });
  const aggregation =
    o.aggregation === undefined ? (MODE_AGGREGATION[mode] ?? DEFAULT_AGGREGATION) : checkEnum(fn, 'aggregation', o.aggregation, AGGREGATIONS);
  const tokenCount = optionalPositive(fn, 'tokenCount', o.tokenCount);
  const sequenceCount = optionalPositive(fn, 'sequenceCount', o.sequenceCount);
  const lossScale = optionalPositive(fn, 'lossScale', o.lossScale);
  const dpSize = o.dpSize === undefined ? DEFAULT_DP_SIZE : checkNumber(fn, 'dpSize', o.dpSize, { integer: true, min: 1 });
  const dppo = mode === 'dppo-tv' || mode === 'dppo-kl';
  let ratioCap = dppo ? DEFAULT_DPPO_RATIO_CAP : 0;
  if (o.ratioCap !== undefined) ratioCap = checkNumber(fn, 'ratioCap', o.ratioCap, { greaterThan: 1 });
  const positive = (name: string, v: unknown, dflt: number): number => (v === undefined ? dflt : checkNumber(fn, name, v, { greaterThan: 0 }));
  const nonNegative = (name: string, v: unknown, dflt: number): number => (v === undefined ? dflt : checkNumber(fn, name, v, { min: 0 }));
  const anyNumber = (name: string, v: unknown, dflt: number): number => (v === undefined ? dflt : checkNumber(fn, name, v));
  const tauPos = positive('tauPos', o.tauPos, DEFAULT_TAU_POS);
  const tauNeg = positive('tauNeg', o.tauNeg, DEFAULT_TAU_NEG);
  let beta = 0;
  if (mode === 'dro') {
    if (o.beta === undefined) throw typeError(fn, 'beta must be a number > 0 for mode dro, got undefined');
    beta = checkNumber(fn, 'beta', o.beta, { greaterThan: 0 });
  } else if (o.beta !== undefined) {
    beta = checkNumber(fn, 'beta', o.beta, { greaterThan: 0 });
  }
  const clipCovRatio = nonNegative('clipCovRatio', o.clipCovRatio, DEFAULT_CLIP_COV_RATIO);
  const clipCovLb = anyNumber('clipCovLb', o.clipCovLb, DEFAULT_CLIP_COV_LB);
  const clipCovUb = anyNumber('clipCovUb', o.clipCovUb, DEFAULT_CLIP_COV_UB);
  const seed = o.seed === undefined ? 0 : checkNumber(fn, 'seed', o.seed, { integer: true, min: 0, max: 2 ** 32 - 1 });
  const klCovRatio = nonNegative('klCovRatio', o.klCovRatio, DEFAULT_KL_COV_RATIO);
  const ppoKlCoef = nonNegative('ppoKlCoef', o.ppoKlCoef, DEFAULT_PPO_KL_COEF);
  const kPos = anyNumber('kPos', o.kPos, DEFAULT_VESPO.kPos);
  const lambdaPos = anyNumber('lambdaPos', o.lambdaPos, DEFAULT_VESPO.lambdaPos);
  const kNeg = anyNumber('kNeg', o.kNeg, DEFAULT_VESPO.kNeg);
  const lambdaNeg = anyNumber('lambdaNeg', o.lambdaNeg, DEFAULT_VESPO.lambdaNeg);

  let tisLevel = 0;
  let tisMode = 0;
  let tisUpper = DEFAULT_TIS_UPPER;
  let tisLower = 1 / DEFAULT_TIS_UPPER;
  let useVeto = 0;
  let logVeto = 0;
  let rolloutSource = 0;
  let isNormalize = 0;
  let isHasLower = 0;
  const criteria: number[] = [];
  if (o.tis !== undefined && o.rolloutCorrection !== undefined) {
    throw typeError(fn, 'tis and rolloutCorrection must not both be given (rolloutCorrection replaces tis), got both');
  }
  if (o.tis !== undefined) {
    const t = checkOptions(fn, o.tis, ['level', 'mode', 'upper', 'lower', 'vetoThreshold'], 'tis');
    tisLevel = 1 + TIS_LEVELS.indexOf(t.level === undefined ? DEFAULT_TIS_LEVEL : checkEnum(fn, 'tis.level', t.level, TIS_LEVELS));
    tisMode = TIS_MODES.indexOf(t.mode === undefined ? DEFAULT_TIS_MODE : checkEnum(fn, 'tis.mode', t.mode, TIS_MODES));
    tisUpper = t.upper === undefined ? DEFAULT_TIS_UPPER : checkNumber(fn, 'tis.upper', t.upper, { greaterThan: 0 });
    tisLower = t.lower === undefined ? 1 / tisUpper : checkNumber(fn, 'tis.lower', t.lower, { min: 0, max: tisUpper });
    if (t.vetoThreshold !== undefined && t.vetoThreshold !== null) {
      useVeto = 1;
      logVeto = Math.log(checkNumber(fn, 'tis.vetoThreshold', t.vetoThreshold, { greaterThan: 0 }));
    }
    if (!rollout) throw typeError(fn, `inputs.rolloutLogprobs must be a tensor when tis is given, got ${describe(i.rolloutLogprobs)}`);
    if (mode === 'vespo' && tisLevel !== 1) {
      throw rangeError(fn, `tis.level must be 'token' in mode vespo (TRL allows only token-level IS there), got '${TIS_LEVELS[tisLevel - 1]}'`);
    }
  }
  let hasReject = false;
  if (o.rolloutCorrection !== undefined) {
    rolloutSource = 1;
    const rc = checkOptions(fn, o.rolloutCorrection, ['is', 'reject'], 'rolloutCorrection');
    if (rc.is !== undefined) {
      const t = checkOptions(fn, rc.is, ['level', 'mode', 'upper', 'lower', 'batchNormalize'], 'rolloutCorrection.is');
      const level = t.level === undefined ? 'token' : checkEnum(fn, 'rolloutCorrection.is.level', t.level, ['token', 'sequence'] as const);
      if (mode === 'vespo' && level !== 'token') {
        throw rangeError(fn, `rolloutCorrection.is.level must be 'token' in mode vespo (TRL allows only token-level IS there), got '${level}'`);
      }
      const m = t.mode === undefined ? 'truncate' : checkEnum(fn, 'rolloutCorrection.is.mode', t.mode, TIS_MODES);
      tisLevel = level === 'token' ? 1 : 2;
      tisMode = TIS_MODES.indexOf(m);
      tisUpper = t.upper === undefined ? DEFAULT_IS_UPPER : checkNumber(fn, 'rolloutCorrection.is.upper', t.upper, { greaterThan: 0 });
      if (t.lower !== undefined) {
        tisLower = checkNumber(fn, 'rolloutCorrection.is.lower', t.lower, { min: 0, max: tisUpper });
        isHasLower = 1;
      } else {
        tisLower = m === 'mask' ? 1 / tisUpper : 0;
      }
      isNormalize = t.batchNormalize === undefined ? 0 : checkBoolean(fn, 'rolloutCorrection.is.batchNormalize', t.batchNormalize) ? 1 : 0;
    }
    if (rc.reject !== undefined) {
      if (!Array.isArray(rc.reject)) throw typeError(fn, `rolloutCorrection.reject must be an array of criteria, got ${describe(rc.reject)}`);
      if (rc.reject.length > 8) throw rangeError(fn, `rolloutCorrection.reject must hold at most 8 criteria, got ${rc.reject.length}`);
      rc.reject.forEach((c0, k) => {
        const name = `rolloutCorrection.reject[${k}]`;
        const c = checkOptions(fn, c0, ['criterion', 'upper', 'lower'], name);
        const crit = checkEnum(fn, `${name}.criterion`, c.criterion, CRITERIA);
        if (c.upper === undefined) throw typeError(fn, `${name}.upper must be a number > 0, got undefined`);
        const upper = checkNumber(fn, `${name}.upper`, c.upper, { greaterThan: 0 });
        const est = Number(crit[crit.length - 1]);
        const agg = crit.startsWith('token_') ? 0 : crit.startsWith('seq_sum_') ? 1 : crit.startsWith('seq_mean_') ? 2 : 3;
        let lo: number;
        let hi: number;
        if (est === 1) {
          const lower = c.lower === undefined ? 1 / upper : checkNumber(fn, `${name}.lower`, c.lower, { greaterThan: 0, max: upper });
          lo = Math.log(lower);
          hi = Math.log(upper);
        } else {
          if (c.lower !== undefined) throw rangeError(fn, `${name}.lower must be absent for ${crit} (k2 and k3 have only an upper bound), got ${describe(c.lower)}`);
          lo = -Infinity;
          hi = upper;
        }
        criteria.push(est, agg, lo, hi);
      });
      hasReject = true;
    }
    if (!rollout && mode !== 'reinforce' && (tisLevel !== 0 || criteria.length > 0)) {
      throw typeError(fn, `inputs.rolloutLogprobs must be a tensor when rolloutCorrection is given (except in mode reinforce), got ${describe(i.rolloutLogprobs)}`);
    }
  }
  let offPolicy = 0;
  let offPolicyDelta = 0;
  if (o.offPolicyMask !== undefined) {
    const m = checkOptions(fn, o.offPolicyMask, ['threshold'], 'offPolicyMask');
    if (m.threshold === undefined) throw typeError(fn, 'offPolicyMask.threshold must be a number, got undefined');
    offPolicyDelta = checkNumber(fn, 'offPolicyMask.threshold', m.threshold);
    offPolicy = 1;
  }
  const klBiasCorrection = o.klBiasCorrection === undefined ? false : checkBoolean(fn, 'klBiasCorrection', o.klBiasCorrection);
  if (klBiasCorrection && o.kl === undefined) throw typeError(fn, 'kl must be given when klBiasCorrection is true, got undefined');

  let ref: Tensor | undefined;
  let klEstimator = 0;
  let klCoef = 0;
  if (o.kl !== undefined) {
    const k = checkOptions(fn, o.kl, ['refLogprobs', 'estimator', 'coef'], 'kl');
    ref = checkTensor(fn, 'kl.refLogprobs', k.refLogprobs);
    klEstimator = klEstimatorCode(fn, 'kl.estimator', k.estimator === undefined ? DEFAULT_KL_ESTIMATOR : k.estimator);
    klCoef = k.coef === undefined ? DEFAULT_KL_COEF : checkNumber(fn, 'kl.coef', k.coef, { min: 0 });
  }
  let ent: Tensor | undefined;
  let entropyCoef = 0;
  if (o.entropy !== undefined) {
    const e = checkOptions(fn, o.entropy, ['values', 'coef'], 'entropy');
    ent = checkTensor(fn, 'entropy.values', e.values);
    entropyCoef = e.coef === undefined ? DEFAULT_ENTROPY_COEF : checkNumber(fn, 'entropy.coef', e.coef, { min: 0 });
  }

  // Tensors: dtypes, devices, layout and shapes.
  checkDTypeOf(fn, 'logprobs', logp, ['float32']);
  checkSameDevice(fn, ['logprobs', logp], ['oldLogprobs', old], ['advantages', adv], ['mask', mask], ['rolloutLogprobs', rollout], ['cuSeqlens', cu], ['kl.refLogprobs', ref], ['entropy.values', ent]);
  let B: number;
  if (cu) {
    checkDTypeOf(fn, 'cuSeqlens', cu, ['int32']);
    if (cu.shape.length !== 1 || cu.numel < 1) throw rangeError(fn, `cuSeqlens must have shape [B + 1], got [${cu.shape.join(', ')}]`);
    if (logp.shape.length !== 1) throw rangeError(fn, `logprobs must be 1-D [N] with cuSeqlens, got [${logp.shape.join(', ')}]`);
    B = cu.numel - 1;
  } else {
    if (logp.shape.length !== 2) throw rangeError(fn, `logprobs must be 2-D [B, T] (or 1-D [N] with cuSeqlens), got [${logp.shape.join(', ')}]`);
    B = logp.shape[0];
  }
  for (const [name, t] of [['oldLogprobs', old], ['rolloutLogprobs', rollout], ['kl.refLogprobs', ref], ['entropy.values', ent]] as const) {
    if (!t) continue;
    checkDTypeOf(fn, name, t, ['float32']);
    checkShapeEquals(fn, name, t, logp.shape);
  }
  checkDTypeOf(fn, 'advantages', adv, ['float32']);
  const perToken = adv.shape.length === logp.shape.length && adv.shape.every((d, k) => d === logp.shape[k]);
  if (!perToken && !(adv.shape.length === 1 && adv.shape[0] === B)) {
    throw rangeError(fn, `advantages must have shape [${logp.shape.join(', ')}] or [${B}], got [${adv.shape.join(', ')}]`);
  }
  if (mask) {
    checkDTypeOf(fn, 'mask', mask, ['uint8']);
    checkShapeEquals(fn, 'mask', mask, logp.shape);
  }

  const config: Record<string, number | number[]> = {
    criteria,
    mode: MODES.indexOf(mode),
    aggregation: AGGREGATIONS.indexOf(aggregation),
    useDualClip: dualClip === null ? 0 : 1,
    tisLevel,
    tisMode,
    useVeto,
    klEstimator,
    clipLow,
    clipHigh,
    dualClip: dualClip ?? 0,
    tokenCount,
    sequenceCount,
    lossScale,
    dpSize,
    tisUpper,
    tisLower,
    logVeto,
    klCoef,
    entropyCoef,
    klBiasCorrection: klBiasCorrection ? 1 : 0,
    rolloutSource,
    isNormalize,
    isHasLower,
    offPolicy,
    offPolicyDelta,
    ratioCap,
    tauPos,
    tauNeg,
    beta,
    covRatio: mode === 'kl-cov' ? klCovRatio : clipCovRatio,
    covLb: clipCovLb,
    covUb: clipCovUb,
    covSeed: seed,
    klCovCoef: ppoKlCoef,
    kPos,
    lambdaPos,
    kNeg,
    lambdaNeg,
  };
  const h = (t: Tensor | undefined, name: string): NativeTensor | null => (t ? t.handle(fn, name) : null);
  const n = native as unknown as PolicyLossNative;
  const [loss, grad, gradEntropy, stats] = n.policyLoss(
    logp.handle(fn, 'logprobs'),
    old.handle(fn, 'oldLogprobs'),
    adv.handle(fn, 'advantages'),
    h(mask, 'mask'),
    (tisLevel || criteria.length || offPolicy) && mode !== 'reinforce' ? h(rollout, 'rolloutLogprobs') : null,
    h(ref, 'kl.refLogprobs'),
    h(ent, 'entropy.values'),
    h(cu, 'cuSeqlens'),
    config,
  );
  // Not returned, so a surrounding scope() would dispose it: readStats() disposes it after reading.
  const statsTensor = keep(new Tensor<'float32'>(stats));
  const hasKl = ref !== undefined;
  const hasEnt = ent !== undefined;
  const hasRc = hasReject || rolloutSource === 1;
  let pending: Promise<PolicyLossStats> | undefined;
  const result: PolicyLossResult = {
    loss: new Tensor<'float32'>(loss),
    grad: new Tensor<'float32'>(grad),
    readStats(): Promise<PolicyLossStats> {
      pending ??= statsTensor.toArray().then((a) => {
        statsTensor.dispose();
        const s: PolicyLossStats = {
          clipFraction: a[STAT.clipFraction],
          clipFractionLow: a[STAT.clipFractionLow],
          clipFractionHigh: a[STAT.clipFractionHigh],
          dualClipFraction: a[STAT.dualClipFraction],
          ppoKl: a[STAT.ppoKl],
          ratioMean: a[STAT.ratioMean],
          ratioMin: a[STAT.ratioMin],
          ratioMax: a[STAT.ratioMax],
          isWeightMean: a[STAT.isWeightMean],
          vetoedSequences: a[STAT.vetoedSequences],
        };
        if (hasKl) s.klMean = a[STAT.klMean];
        if (hasEnt) s.entropyMean = a[STAT.entropyMean];
        if (hasRc) {
          s.rejectedFraction = a[STAT.rejectedFraction];
          s.rejectedSequences = a[STAT.rejectedSequences];
        }
        if (offPolicy) s.offPolicyMaskedFraction = a[STAT.offPolicyMaskedFraction];
        return s;
      });
      return pending;
    },
  };
  if (gradEntropy) result.gradEntropy = new Tensor<'float32'>(gradEntropy);
  return result;
}
