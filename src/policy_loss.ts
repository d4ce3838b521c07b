// Policy loss of GRPO-family training (DESIGN 3.3): verl's clipped surrogate
// (trainer/ppo/core_algos.py compute_policy_loss_vanilla / _gspo, agg_loss,
// rollout correction), with KL and entropy terms, its gradient with respect
// to the log-probs and its stats from one pass. Defaults, option names and
// aggregation names live here; the kernels get integer codes and scalars.
import {
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

export type PolicyLossMode = 'vanilla' | 'gspo';
export type PolicyLossAggregation = 'token-mean' | 'seq-mean-token-sum' | 'seq-mean-token-mean' | 'seq-mean-token-sum-norm';
export type RolloutCorrectionLevel = 'token' | 'sequence' | 'geometric';
export type RolloutCorrectionMode = 'truncate' | 'mask';

const MODES: readonly PolicyLossMode[] = ['vanilla', 'gspo'];
const AGGREGATIONS: readonly PolicyLossAggregation[] = ['token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'];
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
  /** float32, the shape of `logprobs`: the rollout engine's log-probs, needed by `tis`. */
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
  /** `vanilla` (PPO clipped surrogate with dual clip) or `gspo` (sequence ratio, verl's GSPO-token form). Defaults to `'vanilla'`. */
  mode?: PolicyLossMode;
  /** Lower clip: the ratio is clipped below at `1 - clipLow`; in [0, 1]. Defaults to `0.2`. */
  clipLow?: number;
  /** Upper clip (clip-higher): the ratio is clipped above at `1 + clipHigh`; >= 0. Defaults to `clipLow`. */
  clipHigh?: number;
  /** Dual-clip constant `c` (> 1) bounding the loss at `-A c` where `A < 0`; `null` turns it off; unused by `gspo`. Defaults to `3`. */
  dualClip?: number | null;
  /**
   * `token-mean`: sum(L m) / sum(m); `seq-mean-token-sum`: mean over sequences of sum_t L m;
   * `seq-mean-token-mean`: mean over sequences of the token mean; `seq-mean-token-sum-norm`: sum(L m) / `lossScale`.
   * Sequences are those with at least one kept token. Defaults to `'token-mean'` (`'seq-mean-token-mean'` for `gspo`).
   */
  aggregation?: PolicyLossAggregation;
  /** Global token count (> 0) across data-parallel ranks for `token-mean`. Defaults to this batch's kept tokens. */
  tokenCount?: number;
  /** Global sequence count (> 0) for the `seq-mean-*` modes. Defaults to this batch's sequences with a kept token. */
  sequenceCount?: number;
  /** Divisor (> 0) of `seq-mean-token-sum-norm`. Defaults to T (padded) or the longest sequence (packed). */
  lossScale?: number;
  /** Data-parallel size (integer >= 1) multiplying the loss and gradient as verl's agg_loss does (not `seq-mean-token-sum-norm`). Defaults to `1`. */
  dpSize?: number;
  /** Rollout correction; needs `rolloutLogprobs`. Defaults to none. */
  tis?: RolloutCorrectionOptions;
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
  /** Tokens where the clipped term is larger (verl's `pg_clipfrac`). */
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
    config: Record<string, number>,
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
  ]);
  const mode = o.mode === undefined ? 'vanilla' : checkEnum(fn, 'mode', o.mode, MODES);
  const clipLow = o.clipLow === undefined ? DEFAULT_CLIP_LOW : checkNumber(fn, 'clipLow', o.clipLow, { min: 0, max: 1 });
  const clipHigh = o.clipHigh === undefined ? clipLow : checkNumber(fn, 'clipHigh', o.clipHigh, { min: 0 });
  let dualClip: number | null = DEFAULT_DUAL_CLIP;
  if (o.dualClip === null) dualClip = null;
  else if (o.dualClip !== undefined) dualClip = checkNumber(fn, 'dualClip', o.dualClip, { greaterThan: 1 });
  const aggregation =
    o.aggregation === undefined ? (mode === 'gspo' ? DEFAULT_GSPO_AGGREGATION : DEFAULT_AGGREGATION) : checkEnum(fn, 'aggregation', o.aggregation, AGGREGATIONS);
  const tokenCount = optionalPositive(fn, 'tokenCount', o.tokenCount);
  const sequenceCount = optionalPositive(fn, 'sequenceCount', o.sequenceCount);
  const lossScale = optionalPositive(fn, 'lossScale', o.lossScale);
  const dpSize = o.dpSize === undefined ? DEFAULT_DP_SIZE : checkNumber(fn, 'dpSize', o.dpSize, { integer: true, min: 1 });

  let tisLevel = 0;
  let tisMode = 0;
  let tisUpper = DEFAULT_TIS_UPPER;
  let tisLower = 1 / DEFAULT_TIS_UPPER;
  let useVeto = 0;
  let logVeto = 0;
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
  }

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

  const config: Record<string, number> = {
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
  };
  const h = (t: Tensor | undefined, name: string): NativeTensor | null => (t ? t.handle(fn, name) : null);
  const n = native as unknown as PolicyLossNative;
  const [loss, grad, gradEntropy, stats] = n.policyLoss(
    logp.handle(fn, 'logprobs'),
    old.handle(fn, 'oldLogprobs'),
    adv.handle(fn, 'advantages'),
    h(mask, 'mask'),
    tisLevel ? h(rollout, 'rolloutLogprobs') : null,
    h(ref, 'kl.refLogprobs'),
    h(ent, 'entropy.values'),
    h(cu, 'cuSeqlens'),
    config,
  );
  // Not returned, so a surrounding scope() would dispose it: readStats() disposes it after reading.
  const statsTensor = keep(new Tensor<'float32'>(stats));
  const hasKl = ref !== undefined;
  const hasEnt = ent !== undefined;
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
        return s;
      });
      return pending;
    },
  };
  if (gradEntropy) result.gradEntropy = new Tensor<'float32'>(gradEntropy);
  return result;
}
