// KL penalties between policy and reference token log-probs (DESIGN 3.4),
// with verl's estimators (trainer/ppo/core_algos.py kl_penalty).
import { checkDTypeOf, checkEnum, checkOptions, checkOptionalTensor, checkSameDevice, checkShapeEquals, checkTensor, typeError } from './checks.js';
import { native } from './native.js';
import { Tensor } from './tensor.js';
import type { NativeTensor } from './native.js';

/**
 * KL estimators, as verl names them:
 * - `k1`: `logp - ref`;
 * - `abs`: `|logp - ref|`;
 * - `k2`: `0.5 (logp - ref)^2`;
 * - `k3` (low-variance KL): `x = clamp(ref - logp, -20, 20)`, `clamp(e^x - x - 1, -10, 10)`;
 * - `k1+`, `k3+`: the value of k1 / k3 with the gradient of k2 (straight-through).
 * verl's aliases `kl` (k1), `mse` (k2) and `low_var_kl` (k3) are accepted too.
 */
export type KlEstimator = 'k1' | 'abs' | 'k2' | 'k3' | 'k1+' | 'k3+' | 'kl' | 'mse' | 'low_var_kl';

export const KL_ESTIMATORS: readonly KlEstimator[] = Object.freeze(['k1', 'abs', 'k2', 'k3', 'k1+', 'k3+', 'kl', 'mse', 'low_var_kl'] as KlEstimator[]);

/** Codes shared with native/include/rlk/kl_penalty.h (`rlk::KlEstimator`). */
const ESTIMATOR_CODES: Readonly<Record<KlEstimator, number>> = Object.freeze({
  k1: 0,
  kl: 0,
  abs: 1,
  k2: 2,
  mse: 2,
  k3: 3,
  low_var_kl: 3,
  'k1+': 4,
  'k3+': 5,
});

/** @internal The estimator's code for the kernels; throws naming `name` for an unknown estimator. */
export function klEstimatorCode(fn: string, name: string, v: unknown): number {
  return ESTIMATOR_CODES[checkEnum(fn, name, v, KL_ESTIMATORS)];
}

export interface KlPenaltyOptions {
  /** The estimator (see {@link KlEstimator}). Required. */
  estimator: KlEstimator;
  /** uint8 tensor of the same shape; elements where it is 0 get value 0 and gradient 0. Defaults to every element counting. */
  mask?: Tensor;
}

export interface KlPenaltyResult {
  /** float32, the shape of `logprobs`: each element's estimator value (0 where masked). */
  values: Tensor<'float32'>;
  /** float32, the shape of `logprobs`: d value / d logprobs elementwise (0 where masked). */
  grad: Tensor<'float32'>;
}

interface KlNative {
  klPenalty(logprobs: NativeTensor, ref: NativeTensor, mask: NativeTensor | null, estimator: number): [NativeTensor, NativeTensor];
}

/**
 * Per-token KL penalty between `logprobs` and `refLogprobs` (float32, same shape, any shape)
 * and its gradient with respect to `logprobs`.
 * @throws TypeError for a non-tensor, a wrong dtype or device, a missing or unknown-kind option;
 *   RangeError for mismatched shapes or an unknown estimator; DisposedError for a disposed tensor.
 */
export function klPenalty(logprobs: Tensor, refLogprobs: Tensor, options: KlPenaltyOptions): KlPenaltyResult {
  const fn = 'klPenalty';
  const lp = checkTensor(fn, 'logprobs', logprobs);
  const ref = checkTensor(fn, 'refLogprobs', refLogprobs);
  if (options === undefined) throw typeError(fn, 'options must be an object with an estimator, got undefined');
  const o = checkOptions(fn, options, ['estimator', 'mask']);
  if (o.estimator === undefined) throw typeError(fn, 'options.estimator must be one of ' + KL_ESTIMATORS.map((e) => `'${e}'`).join(', ') + ', got undefined');
  const code = klEstimatorCode(fn, 'options.estimator', o.estimator);
  const mask = checkOptionalTensor(fn, 'options.mask', o.mask);
  checkDTypeOf(fn, 'logprobs', lp, ['float32']);
  checkDTypeOf(fn, 'refLogprobs', ref, ['float32']);
  checkSameDevice(fn, ['logprobs', lp], ['refLogprobs', ref], ['options.mask', mask]);
  checkShapeEquals(fn, 'refLogprobs', ref, lp.shape);
  if (mask) {
    checkDTypeOf(fn, 'options.mask', mask, ['uint8']);
    checkShapeEquals(fn, 'options.mask', mask, lp.shape);
  }
  const n = native as unknown as KlNative;
  const [values, grad] = n.klPenalty(lp.handle(fn, 'logprobs'), ref.handle(fn, 'refLogprobs'), mask ? mask.handle(fn, 'options.mask') : null, code);
  return { values: new Tensor<'float32'>(values, lp, 'float32'), grad: new Tensor<'float32'>(grad, lp, 'float32') };
}
