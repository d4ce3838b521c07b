// Fused linear log-probs (DESIGN 3.2): token log-probs and entropy from the
// hidden states and the LM-head weight without ever holding the [N, V]
// logits, their backward to the hidden states, the weight and the bias, and
// the vocabulary-parallel form for a weight sharded over ranks (the partials
// and stats of 3.1, so `combineTokenLogprobs` combines them).
// Defaults and option checks live here; the kernels know none of them.
import {
  checkBoolean,
  checkDTypeOf,
  checkNumber,
  checkOptions,
  checkSameDevice,
  checkShapeEquals,
  checkTensor,
  describe,
  rangeError,
  typeError,
} from './checks.js';
import { native, type NativeTensor } from './native.js';
import { Tensor } from './tensor.js';
import { FLOAT_DTYPES } from './types.js';
import { TOKEN_LOGPROBS_STATS_COLUMNS, type Temperature } from './token_logprobs.js';

/** Default `temperature`. */
export const DEFAULT_TEMPERATURE = 1;
/** Default `ignoreIndex`, as PyTorch's cross-entropy and Hugging Face labels use it. */
export const DEFAULT_IGNORE_INDEX = -100;
/** Default `chunkSize`: `0` lets the kernel choose (CPU: rows whose fp32 logits fill about 64 MB, 32 to 256). */
export const DEFAULT_CHUNK_SIZE = 0;
/** The largest `chunkSize` accepted. */
export const MAX_CHUNK_SIZE = 2 ** 30;

export interface LinearLogprobsOptions {
  /** Divides the logits before the softmax. A number or a float32 `[N]` tensor. Defaults to `1`. */
  temperature?: Temperature;
  /** Also return the entropy of each row. Defaults to `false`. */
  entropy?: boolean;
  /** `[V]` in the weight's dtype, added to the logits (`hidden @ weight^T + bias`). */
  bias?: Tensor;
  /** Rows whose target equals this give 0 and get zero gradient. Defaults to `-100`. */
  ignoreIndex?: number;
  /**
   * Also return `stats` (float32 `[N, 3]`: row max of the logits, sum of exp, entropy), which
   * `linearLogprobsBackward` takes so that it needs no second log-sum-exp pass. Defaults to `false`.
   */
  saveForBackward?: boolean;
  /** Rows per chunk (memory beyond inputs and outputs grows with it, never with N). Defaults to the kernel's choice. */
  chunkSize?: number;
}

export interface LinearLogprobsResult {
  /** float32 `[N]`. */
  logprobs: Tensor;
  /** float32 `[N]`, with `entropy: true`. */
  entropy?: Tensor;
  /** float32 `[N, 3]`, with `saveForBackward: true`. */
  stats?: Tensor;
}

export interface LinearLogprobsBackwardOptions {
  /** The forward's temperature. Defaults to `1`. */
  temperature?: Temperature;
  /** Upstream gradient of the entropy (float32 `[N]`). */
  gradEntropy?: Tensor;
  /** The forward's bias; `gradBias` is then returned. */
  bias?: Tensor;
  /** Defaults to `-100`. */
  ignoreIndex?: number;
  /** The forward's `stats` (`saveForBackward: true`): skips recomputing the row statistics. */
  stats?: Tensor;
  /** Rows per chunk. Defaults to the kernel's choice. */
  chunkSize?: number;
}

export interface LinearLogprobsBackwardResult {
  /** `[N, H]` in the hidden states' dtype (a shard's part with `linearLogprobsShardBackward`: sum it over ranks). */
  gradHidden: Tensor;
  /** `[V, H]` in the weight's dtype, accumulated in float32 in a fixed order. */
  gradWeight: Tensor;
  /** `[V]` in the bias' dtype, when `bias` was given. */
  gradBias?: Tensor;
}

export interface LinearLogprobsPartialsOptions {
  /** Global vocabulary index of the shard's first weight row. Required. */
  vocabStart: number;
  /** Size of the whole vocabulary. Required. */
  vocabSize: number;
  temperature?: Temperature;
  /** Add the entropy column (needed for `entropy` or `gradEntropy` later). Defaults to `false`. */
  entropy?: boolean;
  /** This shard's bias `[V_shard]`. */
  bias?: Tensor;
  ignoreIndex?: number;
  chunkSize?: number;
}

export interface LinearLogprobsShardBackwardOptions {
  vocabStart: number;
  vocabSize: number;
  /** The combined stats (`combineTokenLogprobs(..., { saveForBackward: true }).stats`). Required. */
  stats: Tensor;
  temperature?: Temperature;
  gradEntropy?: Tensor;
  bias?: Tensor;
  ignoreIndex?: number;
  chunkSize?: number;
}

type N = NativeTensor;
interface LinearLogprobsNative {
  linearLogprobsForward(
    hidden: N, weight: N, targets: N, temperature: number, temperatureTensor: N | null, ignoreIndex: number, entropy: boolean,
    saveStats: boolean, bias: N | null, chunkSize: number,
  ): [N, N | null, N | null];
  linearLogprobsPartials(
    hidden: N, weight: N, targets: N, temperature: number, temperatureTensor: N | null, ignoreIndex: number, entropy: boolean,
    vocabStart: number, vocabSize: number, bias: N | null, chunkSize: number,
  ): N;
  linearLogprobsBackward(
    hidden: N, weight: N, targets: N, gradLogprobs: N, temperature: number, temperatureTensor: N | null, ignoreIndex: number,
    gradEntropy: N | null, stats: N | null, vocabStart: number, vocabSize: number, bias: N | null, chunkSize: number,
  ): [N, N, N | null];
  linearLogprobsShardBackward: LinearLogprobsNative['linearLogprobsBackward'];
}
const n = native as unknown as LinearLogprobsNative;

const FWD_KEYS = ['temperature', 'entropy', 'bias', 'ignoreIndex', 'saveForBackward', 'chunkSize'] as const;
const BWD_KEYS = ['temperature', 'gradEntropy', 'bias', 'ignoreIndex', 'stats', 'chunkSize'] as const;
const PARTIAL_KEYS = ['vocabStart', 'vocabSize', 'temperature', 'entropy', 'bias', 'ignoreIndex', 'chunkSize'] as const;
const SHARD_BWD_KEYS = ['vocabStart', 'vocabSize', 'stats', 'temperature', 'gradEntropy', 'bias', 'ignoreIndex', 'chunkSize'] as const;

interface Inputs {
  hidden: Tensor;
  weight: Tensor;
  targets: Tensor;
  bias?: Tensor;
  rows: number;
  vocab: number;
}

/** hidden [N, H] float, weight [V, H] of hidden's dtype, targets [N] int32/int64, bias [V], one device. */
function checkInputs(fn: string, weightName: string, hidden: unknown, weight: unknown, targets: unknown, bias: unknown): Inputs {
  const h = checkTensor(fn, 'hidden', hidden);
  const w = checkTensor(fn, weightName, weight);
  const t = checkTensor(fn, 'targets', targets);
  checkDTypeOf(fn, 'hidden', h, FLOAT_DTYPES);
  checkDTypeOf(fn, weightName, w, [h.dtype]);
  checkDTypeOf(fn, 'targets', t, ['int32', 'int64']);
  if (h.shape.length !== 2) throw rangeError(fn, `hidden must have shape [N, H], got [${h.shape.join(', ')}]`);
  if (w.shape.length !== 2) throw rangeError(fn, `${weightName} must have shape [V, H], got [${w.shape.join(', ')}]`);
  checkSameDevice(fn, ['hidden', h], [weightName, w], ['targets', t]);
  const [rows, dim] = h.shape;
  const vocab = w.shape[0];
  if (dim < 1) throw rangeError(fn, `hidden must have H >= 1, got [${h.shape.join(', ')}]`);
  if (vocab < 1) throw rangeError(fn, `${weightName} must have V >= 1, got [${w.shape.join(', ')}]`);
  if (w.shape[1] !== dim) throw rangeError(fn, `${weightName} must have shape [V, ${dim}] (H of hidden), got [${w.shape.join(', ')}]`);
  checkShapeEquals(fn, 'targets', t, [rows]);
  let b: Tensor | undefined;
  if (bias !== undefined) {
    b = checkTensor(fn, 'bias', bias);
    checkDTypeOf(fn, 'bias', b, [w.dtype]);
    checkSameDevice(fn, ['hidden', h], ['bias', b]);
    checkShapeEquals(fn, 'bias', b, [vocab]);
  }
  return { hidden: h, weight: w, targets: t, bias: b, rows, vocab };
}

function parseTemperature(fn: string, v: unknown, inp: Inputs): { value: number; tensor: NativeTensor | null } {
  if (v === undefined) return { value: DEFAULT_TEMPERATURE, tensor: null };
  if (typeof v === 'number') {
    checkNumber(fn, 'temperature', v, { greaterThan: 0 });
    if (!Number.isFinite(Math.fround(1 / v)) || Math.fround(1 / v) === 0) throw rangeError(fn, `temperature must be a positive finite number whose inverse is a finite float32, got ${v}`);
    return { value: v, tensor: null };
  }
  if (!(v instanceof Tensor)) throw typeError(fn, `temperature must be a number or a float32 tensor, got ${describe(v)}`);
  const t = checkTensor(fn, 'temperature', v);
  checkDTypeOf(fn, 'temperature', t, ['float32']);
  checkSameDevice(fn, ['hidden', inp.hidden], ['temperature', t]);
  checkShapeEquals(fn, 'temperature', t, [inp.rows]);
  return { value: DEFAULT_TEMPERATURE, tensor: t.handle(fn, 'temperature') };
}

function parseIgnoreIndex(fn: string, v: unknown): number {
  return v === undefined ? DEFAULT_IGNORE_INDEX : checkNumber(fn, 'ignoreIndex', v, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
}

function parseChunk(fn: string, v: unknown): number {
  return v === undefined ? DEFAULT_CHUNK_SIZE : checkNumber(fn, 'chunkSize', v, { integer: true, min: 1, max: MAX_CHUNK_SIZE });
}

function parseBool(fn: string, name: string, v: unknown, def: boolean): boolean {
  return v === undefined ? def : checkBoolean(fn, name, v);
}

function optionalFloat(fn: string, name: string, v: unknown, inp: Inputs, shape: readonly number[]): Tensor | undefined {
  if (v === undefined) return undefined;
  const t = checkTensor(fn, name, v);
  checkDTypeOf(fn, name, t, ['float32']);
  checkSameDevice(fn, ['hidden', inp.hidden], [name, t]);
  checkShapeEquals(fn, name, t, shape);
  return t;
}

function vocabRange(fn: string, o: Record<string, unknown>, shardVocab: number): { start: number; size: number } {
  if (o.vocabStart === undefined) throw typeError(fn, "options.vocabStart is required (the shard's first global vocabulary index)");
  if (o.vocabSize === undefined) throw typeError(fn, 'options.vocabSize is required (the whole vocabulary)');
  const start = checkNumber(fn, 'vocabStart', o.vocabStart, { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER });
  const size = checkNumber(fn, 'vocabSize', o.vocabSize, { integer: true, min: 1, max: Number.MAX_SAFE_INTEGER });
  if (start + shardVocab > size) throw rangeError(fn, `vocabStart + the shard's vocabulary (${start} + ${shardVocab}) must be <= vocabSize, got vocabSize ${size}`);
  return { start, size };
}

const handle = (fn: string, name: string, t: Tensor | undefined): NativeTensor | null => (t ? t.handle(fn, name) : null);

/**
 * Log-probability of each target under `softmax((hidden @ weight^T + bias) / temperature)`, and
 * optionally each row's entropy, without holding the `[N, V]` logits: rows go in chunks, the
 * logits of a chunk are formed in float32 tile by tile and reduced by an online log-sum-exp.
 * Same results and semantics as `tokenLogprobs` on the materialised float32 logits.
 *
 * @param hidden `[N, H]` float32, bfloat16 or float16.
 * @param weight `[V, H]`, the hidden states' dtype (the LM head).
 * @param targets `[N]` int32 or int64 in `[0, V)` or `ignoreIndex`.
 * @returns `{ logprobs, entropy?, stats? }`, float32.
 * @throws TypeError for a wrong kind (dtype, device, not a tensor, unknown option); RangeError for
 *   a wrong value (shapes, mismatched H, temperature <= 0, a target out of range); DisposedError.
 */
export function linearLogprobs(hidden: Tensor, weight: Tensor, targets: Tensor, options?: LinearLogprobsOptions): LinearLogprobsResult {
  const fn = 'linearLogprobs';
  const o = checkOptions(fn, options, FWD_KEYS);
  const inp = checkInputs(fn, 'weight', hidden, weight, targets, o.bias);
  const temp = parseTemperature(fn, o.temperature, inp);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const entropy = parseBool(fn, 'entropy', o.entropy, false);
  const save = parseBool(fn, 'saveForBackward', o.saveForBackward, false);
  const chunk = parseChunk(fn, o.chunkSize);
  const res = n.linearLogprobsForward(
    inp.hidden.handle(fn, 'hidden'), inp.weight.handle(fn, 'weight'), inp.targets.handle(fn, 'targets'), temp.value, temp.tensor,
    ignoreIndex, entropy, save, handle(fn, 'bias', inp.bias), chunk,
  );
  const r: LinearLogprobsResult = { logprobs: new Tensor(res[0]) };
  if (res[1]) r.entropy = new Tensor(res[1]);
  if (res[2]) r.stats = new Tensor(res[2]);
  return r;
}

function backward(
  fn: string, weightName: string, keys: readonly string[], hidden: unknown, weight: unknown, targets: unknown, gradLogprobs: unknown,
  options: unknown, shard: boolean,
): LinearLogprobsBackwardResult {
  const o = checkOptions(fn, options, keys);
  const inp = checkInputs(fn, weightName, hidden, weight, targets, o.bias);
  const g = checkTensor(fn, 'gradLogprobs', gradLogprobs);
  checkDTypeOf(fn, 'gradLogprobs', g, ['float32']);
  checkSameDevice(fn, ['hidden', inp.hidden], ['gradLogprobs', g]);
  checkShapeEquals(fn, 'gradLogprobs', g, [inp.rows]);
  const range = shard ? vocabRange(fn, o, inp.vocab) : { start: 0, size: inp.vocab };
  if (shard && o.stats === undefined) throw typeError(fn, 'options.stats is required (from combineTokenLogprobs with saveForBackward: true)');
  const temp = parseTemperature(fn, o.temperature, inp);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const gradEntropy = optionalFloat(fn, 'gradEntropy', o.gradEntropy, inp, [inp.rows]);
  const stats = optionalFloat(fn, 'stats', o.stats, inp, [inp.rows, TOKEN_LOGPROBS_STATS_COLUMNS]);
  const chunk = parseChunk(fn, o.chunkSize);
  const call = shard ? n.linearLogprobsShardBackward : n.linearLogprobsBackward;
  const res = call(
    inp.hidden.handle(fn, 'hidden'), inp.weight.handle(fn, weightName), inp.targets.handle(fn, 'targets'), g.handle(fn, 'gradLogprobs'),
    temp.value, temp.tensor, ignoreIndex, handle(fn, 'gradEntropy', gradEntropy), handle(fn, 'stats', stats), range.start, range.size,
    handle(fn, 'bias', inp.bias), chunk,
  );
  const r: LinearLogprobsBackwardResult = { gradHidden: new Tensor(res[0]), gradWeight: new Tensor(res[1]) };
  if (res[2]) r.gradBias = new Tensor(res[2]);
  return r;
}

/**
 * Gradients of `sum(gradLogprobs * logprobs + gradEntropy * entropy)`: with
 * `dlogits = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T` (as `tokenLogprobsBackward`,
 * never materialised beyond a chunk), `gradHidden = dlogits @ weight`,
 * `gradWeight = dlogits^T @ hidden` and `gradBias = sum over rows of dlogits`. `gradWeight` and
 * `gradBias` accumulate in float32 in a fixed order: bitwise the same for any thread count.
 *
 * @throws TypeError, RangeError, DisposedError as `linearLogprobs`.
 */
export function linearLogprobsBackward(
  hidden: Tensor, weight: Tensor, targets: Tensor, gradLogprobs: Tensor, options?: LinearLogprobsBackwardOptions,
): LinearLogprobsBackwardResult {
  return backward('linearLogprobsBackward', 'weight', BWD_KEYS, hidden, weight, targets, gradLogprobs, options, false);
}

/**
 * Vocabulary-parallel forward, step 1: this rank's partials from its shard of the weight
 * (rows `vocabStart .. vocabStart + V_shard` of the LM head), in `tokenLogprobsPartials`' layout
 * (`[N, 3 | 4]`: max, sum of exp, target logit or 0, entropy partial). All-gather them and pass
 * them to `combineTokenLogprobs` (with `saveForBackward: true` for the backward's `stats`).
 *
 * @throws TypeError, RangeError, DisposedError as `linearLogprobs`; targets are checked against `[0, vocabSize)`.
 */
export function linearLogprobsPartials(hidden: Tensor, weightShard: Tensor, targets: Tensor, options: LinearLogprobsPartialsOptions): Tensor {
  const fn = 'linearLogprobsPartials';
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart and vocabSize, got undefined');
  const o = checkOptions(fn, options, PARTIAL_KEYS);
  const inp = checkInputs(fn, 'weightShard', hidden, weightShard, targets, o.bias);
  const range = vocabRange(fn, o, inp.vocab);
  const temp = parseTemperature(fn, o.temperature, inp);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const entropy = parseBool(fn, 'entropy', o.entropy, false);
  const chunk = parseChunk(fn, o.chunkSize);
  return new Tensor(
    n.linearLogprobsPartials(
      inp.hidden.handle(fn, 'hidden'), inp.weight.handle(fn, 'weightShard'), inp.targets.handle(fn, 'targets'), temp.value, temp.tensor,
      ignoreIndex, entropy, range.start, range.size, handle(fn, 'bias', inp.bias), chunk,
    ),
  );
}

/**
 * Vocabulary-parallel backward: this shard's `gradWeight` (and `gradBias`) and its part of
 * `gradHidden` (sum it over ranks with an all-reduce), from the combined `stats`.
 *
 * @throws TypeError, RangeError, DisposedError as `linearLogprobs`.
 */
export function linearLogprobsShardBackward(
  hidden: Tensor, weightShard: Tensor, targets: Tensor, gradLogprobs: Tensor, options: LinearLogprobsShardBackwardOptions,
): LinearLogprobsBackwardResult {
  const fn = 'linearLogprobsShardBackward';
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart, vocabSize and stats, got undefined');
  return backward(fn, 'weightShard', SHARD_BWD_KEYS, hidden, weightShard, targets, gradLogprobs, options, true);
}
