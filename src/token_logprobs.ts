// Token log-probs and entropy from logits (DESIGN 3.1): the forward, its fused
// backward, and the vocabulary-parallel form for logits sharded over ranks.
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

/** Default `temperature`: logits are used as they are. */
export const DEFAULT_TEMPERATURE = 1;
/** Default `ignoreIndex`, as PyTorch's cross-entropy and Hugging Face labels use it. */
export const DEFAULT_IGNORE_INDEX = -100;
/** Default `entropy`: entropy work is done only when asked for. */
export const DEFAULT_ENTROPY = false;
/** Default `saveForBackward`. */
export const DEFAULT_SAVE_FOR_BACKWARD = false;
/** Default `inPlace`. */
export const DEFAULT_IN_PLACE = false;
/** Columns of the saved statistics (`stats`): row max of the logits, sum of exp minus 1, entropy. */
export const TOKEN_LOGPROBS_STATS_COLUMNS = 3;
/** The most shards that one `combineTokenLogprobs` call takes. */
export const MAX_VOCAB_SHARDS = 128;

/** A positive finite number, or a float32 tensor of one value per row (shape of `targets`, or `[rows]`) on the logits' device. */
export type Temperature = number | Tensor;

export interface TokenLogprobsOptions {
  /** Divides the logits before the softmax (`z = logits / temperature`). Defaults to `1`. */
  temperature?: Temperature;
  /** Also return the entropy `-sum_j p_j log p_j` of each row. Defaults to `false`. */
  entropy?: boolean;
  /** Rows whose target equals this give 0 (log-prob and entropy) and get zero gradient. Defaults to `-100`. */
  ignoreIndex?: number;
  /**
   * Also return `stats`, a float32 `[rows, 3]` tensor (row max of the logits, sum of
   * `exp((x - max) / T)` minus 1, entropy) that `tokenLogprobsBackward` takes as `stats`, so the
   * backward reads the logits once and writes once instead of recomputing the row
   * statistics (a second read). Computes the entropy even when `entropy` is false.
   * Defaults to `false`.
   */
  saveForBackward?: boolean;
  /** Write into these float32 tensors instead of allocating (shape of `targets`; `stats`: `[rows, 3]`). */
  out?: { logprobs?: Tensor; entropy?: Tensor; stats?: Tensor };
}

export interface TokenLogprobsResult {
  /** float32, shape of `targets`: `z[target] - logsumexp(z)`, 0 on ignored rows. */
  logprobs: Tensor;
  /** float32, shape of `targets`; present when `entropy: true`. */
  entropy?: Tensor;
  /** float32 `[rows, 3]`; present when `saveForBackward: true`. */
  stats?: Tensor;
}

export interface TokenLogprobsBackwardOptions {
  /** The forward's temperature. Defaults to `1`. */
  temperature?: Temperature;
  /** Upstream gradient of the entropy (float32, shape of `targets`); adds `-gE p_j (log p_j + H) / T`. */
  gradEntropy?: Tensor;
  /** The forward's ignore index; those rows get a zero gradient. Defaults to `-100`. */
  ignoreIndex?: number;
  /** Write the gradient over `logits` and return it (halves peak memory); the logits are lost. Defaults to `false`. */
  inPlace?: boolean;
  /** The forward's `stats` (`saveForBackward: true`): skips recomputing the row statistics. */
  stats?: Tensor;
  /** Write into this tensor (logits' dtype, shape and device) instead of allocating. Not with `inPlace`. */
  out?: Tensor;
}

export interface TokenLogprobsPartialsOptions {
  /** Global vocabulary index of the shard's first column. Required. */
  vocabStart: number;
  /** Size of the whole vocabulary (targets are checked against it). Required. */
  vocabSize: number;
  /** As in `tokenLogprobs`. Defaults to `1`. */
  temperature?: Temperature;
  /** Add the entropy column (needed for `entropy` or `gradEntropy` later). Defaults to `false`. */
  entropy?: boolean;
  /** Defaults to `-100`. */
  ignoreIndex?: number;
  /** Write into this float32 `[rows, 3 | 4]` tensor instead of allocating. */
  out?: Tensor;
}

export interface CombineTokenLogprobsOptions {
  /** The temperature the partials were computed with. Defaults to `1`. */
  temperature?: Temperature;
  /** Return the entropy (the partials must carry it). Defaults to `false`. */
  entropy?: boolean;
  /** Defaults to `-100`. */
  ignoreIndex?: number;
  /** Also return `stats` for `tokenLogprobsShardBackward`. Defaults to `false`. */
  saveForBackward?: boolean;
  /** Write into these float32 tensors instead of allocating. */
  out?: { logprobs?: Tensor; entropy?: Tensor; stats?: Tensor };
}

export interface TokenLogprobsShardBackwardOptions {
  /** Global vocabulary index of the shard's first column. Required. */
  vocabStart: number;
  /** Size of the whole vocabulary. Required. */
  vocabSize: number;
  /** The combined statistics (`combineTokenLogprobs(..., { saveForBackward: true }).stats`). Required. */
  stats: Tensor;
  /** Defaults to `1`. */
  temperature?: Temperature;
  /** Upstream entropy gradient (the partials must have carried the entropy). */
  gradEntropy?: Tensor;
  /** Defaults to `-100`. */
  ignoreIndex?: number;
  /** Write over `logitsShard`. Defaults to `false`. */
  inPlace?: boolean;
  /** Write into this tensor instead of allocating. */
  out?: Tensor;
}

interface TokenLogprobsNative {
  tokenLogprobsForward(
    logits: NativeTensor, targets: NativeTensor, temperature: number, temperatureTensor: NativeTensor | null, ignoreIndex: number,
    entropy: boolean, saveStats: boolean, outLogprobs: NativeTensor | null, outEntropy: NativeTensor | null, outStats: NativeTensor | null,
  ): [NativeTensor, NativeTensor | null, NativeTensor | null];
  tokenLogprobsBackward(
    logits: NativeTensor, targets: NativeTensor, gradLogprobs: NativeTensor, temperature: number, temperatureTensor: NativeTensor | null,
    ignoreIndex: number, gradEntropy: NativeTensor | null, stats: NativeTensor | null, vocabStart: number, vocabSize: number,
    inPlace: boolean, out: NativeTensor | null,
  ): NativeTensor;
  tokenLogprobsShardBackward: TokenLogprobsNative['tokenLogprobsBackward'];
  tokenLogprobsPartials(
    logits: NativeTensor, targets: NativeTensor, temperature: number, temperatureTensor: NativeTensor | null, ignoreIndex: number,
    entropy: boolean, vocabStart: number, vocabSize: number, out: NativeTensor | null,
  ): NativeTensor;
  combineTokenLogprobs(
    partials: NativeTensor[], targets: NativeTensor, temperature: number, temperatureTensor: NativeTensor | null, ignoreIndex: number,
    entropy: boolean, saveStats: boolean, outLogprobs: NativeTensor | null, outEntropy: NativeTensor | null, outStats: NativeTensor | null,
  ): [NativeTensor, NativeTensor | null, NativeTensor | null];
}
const n = native as unknown as TokenLogprobsNative;

const FWD_KEYS = ['temperature', 'entropy', 'ignoreIndex', 'saveForBackward', 'out'] as const;
const OUT_KEYS = ['logprobs', 'entropy', 'stats'] as const;
const BWD_KEYS = ['temperature', 'gradEntropy', 'ignoreIndex', 'inPlace', 'stats', 'out'] as const;
const PARTIAL_KEYS = ['vocabStart', 'vocabSize', 'temperature', 'entropy', 'ignoreIndex', 'out'] as const;
const COMBINE_KEYS = ['temperature', 'entropy', 'ignoreIndex', 'saveForBackward', 'out'] as const;
const SHARD_BWD_KEYS = ['vocabStart', 'vocabSize', 'stats', 'temperature', 'gradEntropy', 'ignoreIndex', 'inPlace', 'out'] as const;

/** logits [..., V] of a float dtype and targets [...] of int32/int64 on the same device. */
function checkLogitsTargets(fn: string, logitsName: string, logits: unknown, targets: unknown): { logits: Tensor; targets: Tensor; rows: number } {
  const l = checkTensor(fn, logitsName, logits);
  const t = checkTensor(fn, 'targets', targets);
  checkDTypeOf(fn, logitsName, l, FLOAT_DTYPES);
  checkDTypeOf(fn, 'targets', t, ['int32', 'int64']);
  if (l.shape.length < 1) throw rangeError(fn, `${logitsName} must have at least 1 dimension (the vocabulary), got shape []`);
  if (l.shape[l.shape.length - 1] < 1) throw rangeError(fn, `${logitsName} must have a vocabulary (last dimension) of at least 1, got shape [${l.shape.join(', ')}]`);
  checkSameDevice(fn, [logitsName, l], ['targets', t]);
  checkShapeEquals(fn, 'targets', t, l.shape.slice(0, -1));
  return { logits: l, targets: t, rows: t.numel };
}

function parseTemperature(fn: string, v: unknown, ref: [string, Tensor], targets: Tensor): { value: number; tensor: NativeTensor | null } {
  if (v === undefined) return { value: DEFAULT_TEMPERATURE, tensor: null };
  if (typeof v === 'number') {
    checkNumber(fn, 'temperature', v, { greaterThan: 0 });
    if (!Number.isFinite(Math.fround(1 / v)) || Math.fround(1 / v) === 0) throw rangeError(fn, `temperature must be a positive finite number whose inverse is a finite float32, got ${v}`);
    return { value: v, tensor: null };
  }
  if (!(v instanceof Tensor)) throw typeError(fn, `temperature must be a number or a float32 tensor, got ${describe(v)}`);
  const t = checkTensor(fn, 'temperature', v);
  checkDTypeOf(fn, 'temperature', t, ['float32']);
  checkSameDevice(fn, ref, ['temperature', t]);
  const same = t.shape.length === targets.shape.length && t.shape.every((d, i) => d === targets.shape[i]);
  if (!same && !(t.shape.length === 1 && t.shape[0] === targets.numel)) {
    throw rangeError(fn, `temperature must have shape [${targets.shape.join(', ')}]${targets.shape.length === 1 ? '' : ` or [${targets.numel}]`} (one value per row), got [${t.shape.join(', ')}]`);
  }
  return { value: DEFAULT_TEMPERATURE, tensor: t.handle(fn, 'temperature') };
}

function parseIgnoreIndex(fn: string, v: unknown): number {
  return v === undefined ? DEFAULT_IGNORE_INDEX : checkNumber(fn, 'ignoreIndex', v, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
}

function parseBool(fn: string, name: string, v: unknown, def: boolean): boolean {
  return v === undefined ? def : checkBoolean(fn, name, v);
}

/** An optional float32 tensor of a given shape on the reference's device. */
function optionalFloat(fn: string, name: string, v: unknown, ref: [string, Tensor], shape: readonly number[]): Tensor | undefined {
  if (v === undefined) return undefined;
  const t = checkTensor(fn, name, v);
  checkDTypeOf(fn, name, t, ['float32']);
  checkSameDevice(fn, ref, [name, t]);
  checkShapeEquals(fn, name, t, shape);
  return t;
}

function parseOuts(fn: string, v: unknown, ref: [string, Tensor], rowShape: readonly number[], rows: number, entropy: boolean, save: boolean) {
  const o = checkOptions(fn, v, OUT_KEYS, 'out');
  const logprobs = optionalFloat(fn, 'out.logprobs', o.logprobs, ref, rowShape);
  const ent = optionalFloat(fn, 'out.entropy', o.entropy, ref, rowShape);
  const stats = optionalFloat(fn, 'out.stats', o.stats, ref, [rows, TOKEN_LOGPROBS_STATS_COLUMNS]);
  if (ent && !entropy) throw typeError(fn, 'out.entropy was given but entropy is false');
  if (stats && !save) throw typeError(fn, 'out.stats was given but saveForBackward is false');
  return { logprobs, entropy: ent, stats };
}

function handleOf(fn: string, name: string, t: Tensor | undefined): NativeTensor | null {
  return t ? t.handle(fn, name) : null;
}

/** The user's `out` tensor when the addon wrote into it, else a new Tensor around the addon's output. */
function wrap(h: NativeTensor, out: Tensor | undefined, like?: Tensor): Tensor {
  if (out && out.handle('wrap') === h) return out;
  return like ? new Tensor(h, like, 'float32') : new Tensor(h);
}

/** `targets` (when given) has the shape and device of the per-token outputs, which are float32. */
function result(fn: string, res: [NativeTensor, NativeTensor | null, NativeTensor | null], outs: { logprobs?: Tensor; entropy?: Tensor; stats?: Tensor }, targets?: Tensor): TokenLogprobsResult {
  const r: TokenLogprobsResult = { logprobs: wrap(res[0], outs.logprobs, targets) };
  if (res[1]) r.entropy = wrap(res[1], outs.entropy, targets);
  if (res[2]) r.stats = wrap(res[2], outs.stats);
  return r;
}

function vocabRange(fn: string, o: Record<string, unknown>, shardVocab: number): { start: number; size: number } {
  if (o.vocabStart === undefined) throw typeError(fn, 'options.vocabStart is required (the shard\'s first global vocabulary index)');
  if (o.vocabSize === undefined) throw typeError(fn, 'options.vocabSize is required (the whole vocabulary)');
  const start = checkNumber(fn, 'vocabStart', o.vocabStart, { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER });
  const size = checkNumber(fn, 'vocabSize', o.vocabSize, { integer: true, min: 1, max: Number.MAX_SAFE_INTEGER });
  if (start + shardVocab > size) throw rangeError(fn, `vocabStart + the shard's vocabulary (${start} + ${shardVocab}) must be <= vocabSize, got vocabSize ${size}`);
  return { start, size };
}

/**
 * Log-probability of each target token under `softmax(logits / temperature)`, and
 * optionally the entropy of each row, in one read of the logits (online
 * log-sum-exp in fp32, no softmax or fp32 copy materialised).
 *
 * @param logits `[..., V]` float32, bfloat16 or float16.
 * @param targets `[...]` (the logits' leading dimensions) int32 or int64, in `[0, V)` or `ignoreIndex`.
 * @returns `{ logprobs, entropy?, stats? }`, float32, shaped like `targets`.
 * @throws TypeError for a wrong kind (not a tensor, dtype, device, unknown option);
 *   RangeError for a wrong value (shape, temperature <= 0, a target outside [0, V)
 *   that is not ignoreIndex: on CPU before anything is written, on CUDA at the next
 *   read of a result); DisposedError for a released tensor.
 */
export function tokenLogprobs(logits: Tensor, targets: Tensor, options?: TokenLogprobsOptions): TokenLogprobsResult {
  const fn = 'tokenLogprobs';
  const o = checkOptions(fn, options, FWD_KEYS);
  const { logits: l, targets: t, rows } = checkLogitsTargets(fn, 'logits', logits, targets);
  const temp = parseTemperature(fn, o.temperature, ['logits', l], t);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const entropy = parseBool(fn, 'entropy', o.entropy, DEFAULT_ENTROPY);
  const save = parseBool(fn, 'saveForBackward', o.saveForBackward, DEFAULT_SAVE_FOR_BACKWARD);
  const outs = parseOuts(fn, o.out, ['logits', l], t.shape, rows, entropy, save);
  const res = n.tokenLogprobsForward(
    l.handle(fn, 'logits'), t.handle(fn, 'targets'), temp.value, temp.tensor, ignoreIndex, entropy, save,
    handleOf(fn, 'out.logprobs', outs.logprobs), handleOf(fn, 'out.entropy', outs.entropy), handleOf(fn, 'out.stats', outs.stats),
  );
  return result(fn, res, outs, t);
}

/**
 * Gradient of `sum(gradLogprobs * logprobs + gradEntropy * entropy)` with respect to
 * the logits: `dlogits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T`, in
 * the logits' dtype and shape, zero on ignored rows. A target whose logit is -inf has
 * log-prob -inf whatever the other logits; its `1[j = target]` term is dropped so the
 * gradient stays finite (DESIGN 4). With `stats` from the forward the logits are read
 * once and the gradient written once; without, each row is read twice (statistics,
 * then gradient), still without temporaries.
 *
 * @param logits `[..., V]` float32, bfloat16 or float16 (the forward's input).
 * @param targets `[...]` int32 or int64.
 * @param gradLogprobs float32, shape of `targets`.
 * @throws TypeError, RangeError, DisposedError as `tokenLogprobs`.
 */
export function tokenLogprobsBackward(logits: Tensor, targets: Tensor, gradLogprobs: Tensor, options?: TokenLogprobsBackwardOptions): Tensor {
  return backward('tokenLogprobsBackward', 'logits', BWD_KEYS, logits, targets, gradLogprobs, options, false);
}

function backward(
  fn: string, logitsName: string, keys: readonly string[], logits: unknown, targets: unknown, gradLogprobs: unknown, options: unknown, shard: boolean,
): Tensor {
  const o = checkOptions(fn, options, keys);
  const { logits: l, targets: t, rows } = checkLogitsTargets(fn, logitsName, logits, targets);
  const ref: [string, Tensor] = [logitsName, l];
  const g = checkTensor(fn, 'gradLogprobs', gradLogprobs);
  checkDTypeOf(fn, 'gradLogprobs', g, ['float32']);
  checkSameDevice(fn, ref, ['gradLogprobs', g]);
  checkShapeEquals(fn, 'gradLogprobs', g, t.shape);
  const vocab = l.shape[l.shape.length - 1];
  const range = shard ? vocabRange(fn, o, vocab) : { start: 0, size: vocab };
  if (shard && o.stats === undefined) throw typeError(fn, 'options.stats is required (from combineTokenLogprobs with saveForBackward: true)');
  const temp = parseTemperature(fn, o.temperature, ref, t);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const gradEntropy = optionalFloat(fn, 'gradEntropy', o.gradEntropy, ref, t.shape);
  const stats = optionalFloat(fn, 'stats', o.stats, ref, [rows, TOKEN_LOGPROBS_STATS_COLUMNS]);
  const inPlace = parseBool(fn, 'inPlace', o.inPlace, DEFAULT_IN_PLACE);
  let out: Tensor | undefined;
  if (o.out !== undefined) {
    if (inPlace) throw typeError(fn, 'out cannot be given with inPlace: true');
    out = checkTensor(fn, 'out', o.out);
    checkDTypeOf(fn, 'out', out, [l.dtype]);
    checkSameDevice(fn, ref, ['out', out]);
    checkShapeEquals(fn, 'out', out, l.shape);
  }
  const call = shard ? n.tokenLogprobsShardBackward : n.tokenLogprobsBackward;
  const h = call(
    l.handle(fn, logitsName), t.handle(fn, 'targets'), g.handle(fn, 'gradLogprobs'), temp.value, temp.tensor, ignoreIndex,
    handleOf(fn, 'gradEntropy', gradEntropy), handleOf(fn, 'stats', stats), range.start, range.size, inPlace, handleOf(fn, 'out', out),
  );
  if (inPlace) return l;
  return wrap(h, out);
}

/**
 * Vocabulary-parallel forward, step 1: this rank's partials from its shard of the
 * vocabulary (columns `vocabStart .. vocabStart + V_shard` of the full logits). One
 * float32 row per token: `[max, sumExpM1, targetLogit, entropyPartial?]` where
 * `sumExpM1 = sum exp((x - max) / T) - 1` over the shard (the max's own term left
 * out, so a confident token keeps its digits; -1 for a shard of -inf), `targetLogit` is the target's raw
 * logit when this shard holds it and 0 otherwise, and (with `entropy`)
 * `entropyPartial = sum exp((x - max) / T) (x - max) / T`. Gather the partials of all
 * shards (one all-gather of a `[rows, 3 | 4]` tensor per rank) and pass them to
 * `combineTokenLogprobs`.
 *
 * @returns float32 `[rows, 3]`, or `[rows, 4]` with `entropy`.
 * @throws TypeError, RangeError, DisposedError as `tokenLogprobs`; targets are checked against `[0, vocabSize)`.
 */
export function tokenLogprobsPartials(logitsShard: Tensor, targets: Tensor, options: TokenLogprobsPartialsOptions): Tensor {
  const fn = 'tokenLogprobsPartials';
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart and vocabSize, got undefined');
  const o = checkOptions(fn, options, PARTIAL_KEYS);
  const { logits: l, targets: t, rows } = checkLogitsTargets(fn, 'logitsShard', logitsShard, targets);
  const range = vocabRange(fn, o, l.shape[l.shape.length - 1]);
  const temp = parseTemperature(fn, o.temperature, ['logitsShard', l], t);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const entropy = parseBool(fn, 'entropy', o.entropy, DEFAULT_ENTROPY);
  const out = optionalFloat(fn, 'out', o.out, ['logitsShard', l], [rows, entropy ? 4 : 3]);
  const h = n.tokenLogprobsPartials(
    l.handle(fn, 'logitsShard'), t.handle(fn, 'targets'), temp.value, temp.tensor, ignoreIndex, entropy, range.start, range.size,
    handleOf(fn, 'out', out),
  );
  return wrap(h, out);
}

/**
 * Vocabulary-parallel forward, step 2: combines the partials of every shard (in any
 * order; the result does not depend on it beyond rounding of a sum of a few terms,
 * and is bitwise fixed for a fixed order) into the same `{ logprobs, entropy?, stats? }`
 * as `tokenLogprobs` on the whole vocabulary: with `M` = the largest shard max,
 * `S = sum_k sumExp_k e^{(max_k - M)/T}`, `logprob = (targetLogit - M)/T - log S`.
 *
 * @param partials the shards' `[rows, 3 | 4]` tensors, or one `[shards, rows, 3 | 4]` tensor, or an array of either.
 * @param targets `[...]` int32 or int64 (only compared with `ignoreIndex`); `rows` = its element count.
 * @throws TypeError, RangeError, DisposedError.
 */
export function combineTokenLogprobs(partials: Tensor | readonly Tensor[], targets: Tensor, options?: CombineTokenLogprobsOptions): TokenLogprobsResult {
  const fn = 'combineTokenLogprobs';
  const o = checkOptions(fn, options, COMBINE_KEYS);
  const list = partials instanceof Tensor ? [partials] : partials;
  if (!Array.isArray(list)) throw typeError(fn, `partials must be a tensor or an array of tensors, got ${describe(partials)}`);
  if (list.length === 0) throw rangeError(fn, 'partials must hold at least one shard, got an empty array');
  const t = checkTensor(fn, 'targets', targets);
  checkDTypeOf(fn, 'targets', t, ['int32', 'int64']);
  const rows = t.numel;
  let cols = 0;
  let shards = 0;
  const parts = list.map((p, k) => {
    const name = `partials[${k}]`;
    const pt = checkTensor(fn, name, p);
    checkDTypeOf(fn, name, pt, ['float32']);
    checkSameDevice(fn, ['targets', t], [name, pt]);
    const s = pt.shape;
    const ok = (s.length === 2 || s.length === 3) && s[s.length - 2] === rows && (s[s.length - 1] === 3 || s[s.length - 1] === 4);
    if (!ok) throw rangeError(fn, `${name} must have shape [${rows}, 3 or 4] or [shards, ${rows}, 3 or 4], got [${s.join(', ')}]`);
    if (cols === 0) cols = s[s.length - 1];
    if (s[s.length - 1] !== cols) throw rangeError(fn, `${name} has ${s[s.length - 1]} columns but partials[0] has ${cols}: compute every shard with the same entropy option`);
    shards += s.length === 3 ? s[0] : 1;
    return pt;
  });
  if (shards === 0 || shards > MAX_VOCAB_SHARDS) throw rangeError(fn, `partials must hold 1 to ${MAX_VOCAB_SHARDS} shards, got ${shards}`);
  const temp = parseTemperature(fn, o.temperature, ['targets', t], t);
  const ignoreIndex = parseIgnoreIndex(fn, o.ignoreIndex);
  const entropy = parseBool(fn, 'entropy', o.entropy, DEFAULT_ENTROPY);
  if (entropy && cols !== 4) throw rangeError(fn, 'entropy: true needs partials computed with entropy: true (4 columns), got 3 columns');
  const save = parseBool(fn, 'saveForBackward', o.saveForBackward, DEFAULT_SAVE_FOR_BACKWARD);
  const outs = parseOuts(fn, o.out, ['targets', t], t.shape, rows, entropy, save);
  const res = n.combineTokenLogprobs(
    parts.map((p, k) => p.handle(fn, `partials[${k}]`)), t.handle(fn, 'targets'), temp.value, temp.tensor, ignoreIndex, entropy, save,
    handleOf(fn, 'out.logprobs', outs.logprobs), handleOf(fn, 'out.entropy', outs.entropy), handleOf(fn, 'out.stats', outs.stats),
  );
  return result(fn, res, outs, t);
}

/**
 * Vocabulary-parallel backward: the gradient of this rank's logit shard, from the
 * combined `stats` (`combineTokenLogprobs(..., { saveForBackward: true })`). Same
 * formula as `tokenLogprobsBackward`; the `1[j = target]` term lands only in the shard
 * that holds the target. Reads the shard once and writes it once. `gradEntropy` needs
 * stats combined from partials computed with `entropy: true` (their entropy column is
 * NaN otherwise, and so would the gradient be).
 *
 * @throws TypeError, RangeError, DisposedError as `tokenLogprobs`.
 */
export function tokenLogprobsShardBackward(logitsShard: Tensor, targets: Tensor, gradLogprobs: Tensor, options: TokenLogprobsShardBackwardOptions): Tensor {
  const fn = 'tokenLogprobsShardBackward';
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart, vocabSize and stats, got undefined');
  return backward(fn, 'logitsShard', SHARD_BWD_KEYS, logitsShard, targets, gradLogprobs, options, true);
}
