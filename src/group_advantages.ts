// Group advantages (DESIGN 3.6, LOSSES.md section 4): one advantage per
// sequence from its group's rewards (GRPO with its scales, Dr.GRPO, RLOO,
// REINFORCE++-baseline, GoLongRL's TMN-Reweight, GDPO, GRPO pass@k, OPO,
// ReMax, GPG), DAPO's informative flag per group, the broadcast of sequence
// advantages to tokens, and the cross-rank form.
//
// Groups. `groupSize: n` puts rows [k n, (k + 1) n) in group k (B must be a
// multiple of n). `groupIds` ([B] int32/int64 of any values: a prompt hash,
// negative, sparse) puts rows with equal ids in one group, in any order and
// of any sizes; the package numbers the groups 0, 1, ... in order of first
// appearance, which is the order of `informative`. `numGroups`, when given,
// is an upper bound on the number of groups and the length of
// `informative` (entries past the last group are 0); without it the length
// is the number of groups on the CPU, and B on CUDA (where counting them
// would need a host round trip).
//
// Cross-rank protocol (data-parallel ranks, each with some rows of some
// groups; ids global; all ranks pass the same options and the same
// `numGroups`, an upper bound on the number of groups over all ranks):
//   1. p1 = groupAdvantagesPartials(rewards, opts)            // int64 [numGroups, W]
//   2. s1 = combineGroupAdvantagesPartials(all ranks' p1)     // in rank order
//   3. if groupAdvantagesRounds(opts) === 2:
//        p2 = groupAdvantagesPartials(rewards, opts, s1)
//        s2 = combineGroupAdvantagesPartials(all ranks' p2)
//   4. { advantages, informative } = finalizeGroupAdvantages(rewards, { ...opts, rank }, s1, s2)
// A partial row is keyed by its group id and holds the group's statistics
// records (count, Chan mean and M2, min, max, the top two rewards and where
// the first maximum is, token-weighted mean, nonzero count) as int64 words
// (doubles by their bits), so an all-gather moves them exactly and any
// conversion of the tensor keeps them. combine merges rows with equal ids in
// rank order and numbers the groups in order of first appearance over the
// ranks in rank order: the single-process numbering of the ranks' rows laid
// end to end. Round 2 exists where a statistic needs round 1's result:
// tmn-reweight's fraction of rewards above the smoothed mean m, and the
// whitening statistics of reinforce++ and gdpo.
import {
  checkBoolean,
  checkDTypeOf,
  checkEnum,
  checkNumber,
  checkOptionalTensor,
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

/** `eps` of grpo, gdpo, grpo-passk and tmn-reweight. */
const DEFAULT_EPS = 1e-6;
/** tmn-reweight's smoothing weight of the group mean (the paper's setting). */
const DEFAULT_ALPHA = 0.8;
/** tmn-reweight's reweighting strength. */
const DEFAULT_GAMMA = 1;
/** tmn-reweight reweights by default. */
const DEFAULT_REWEIGHT = true;
/** grpo's normalisation by the group's std (DESIGN 3.6). */
const DEFAULT_SCALE = 'group';

export const ADVANTAGE_METHODS = ['grpo', 'drgrpo', 'rloo', 'reinforce++', 'tmn-reweight', 'gdpo', 'grpo-passk', 'opo', 'remax', 'gpg'] as const;
export type AdvantageMethod = (typeof ADVANTAGE_METHODS)[number];
export const ADVANTAGE_SCALES = ['group', 'batch', 'none'] as const;
export type AdvantageScale = (typeof ADVANTAGE_SCALES)[number];
/** Shared with native/include/rlk/group_advantages.h (`rlk::AdvantageMethod`, `rlk::AdvantageScale`). */
const METHOD_CODES: Readonly<Record<AdvantageMethod, number>> = {
  grpo: 0, drgrpo: 1, rloo: 2, 'reinforce++': 3, 'tmn-reweight': 4, gdpo: 5, 'grpo-passk': 6, opo: 7, remax: 8, gpg: 9,
};
const SCALE_CODES: Readonly<Record<AdvantageScale, number>> = { group: 0, batch: 1, none: 2 };
const MAX_GROUPS = 2 ** 31 - 1;
/** Words of a partial row: a head of 4, then 10 per reward column (native PartialWidth). */
const partialWidth = (cols: number): number => 4 + 10 * cols;

export interface GroupAdvantagesOptions {
  /** [B] int32/int64 group of each row: any values, any order, uneven sizes. Exactly one of `groupIds` and `groupSize`. */
  groupIds?: Tensor;
  /** Consecutive groups of this many rows; B must be a multiple. Exactly one of `groupIds` and `groupSize`. */
  groupSize?: number;
  /**
   * An upper bound on the number of groups, and the length of `informative` (0 past the last group; more groups
   * than this is a RangeError). Defaults to the number of groups on the CPU, B on CUDA, B / groupSize with
   * `groupSize` (where it must equal that). Required in the cross-rank form (the same on every rank).
   */
  numGroups?: number;
  /**
   * `grpo`: (r - mean_g) / (std_g + eps), std unbiased, or as `scale` says. `drgrpo`: r - mean_g. `rloo`:
   * n/(n-1) (r - mean_g). `reinforce++`: r - mean_g whitened over the masked tokens (verl's REINFORCE++-baseline; a
   * sequence with no masked token gets 0; with fewer than two tokens in the batch, where verl raises, the variance
   * is taken as 0). `tmn-reweight`: GoLongRL's task-mean-normalised, reweighted advantage.
   * `gdpo` (rewards [B, K]): S = sum_k rewardWeights[k] grpo_k, then verl's masked_whiten over the token counts
   * (TRL's GDPO uses (S - mean) / (std + 1e-4) instead); a row without tokens gets 0.
   * `grpo-passk`: the first row holding the group's maximum gets (r_max - r_2nd) / (std_g + eps), the others 0
   * (groups of at least 2). `opo`: r - the token-length-weighted mean of the group. `remax`: r - baselineRewards.
   * `gpg`: B / max(#{r != 0}, 1) (r - mean_g). A group of one has mean 0 (std 1), as verl.
   */
  method: AdvantageMethod;
  /**
   * grpo: `'group'` divides by std_g + eps, `'batch'` by the unbiased std of all B rewards + eps (TRL
   * scale_rewards='batch'; 1 for B = 1), `'none'` not at all (Dr.GRPO). grpo-passk: `'group'` or `'none'`.
   * Defaults to `'group'`.
   */
  scale?: AdvantageScale;
  /** tmn-reweight only: [B] int32/int64 task of each row, any values, constant within a group. Defaults to one task. */
  taskIds?: Tensor;
  /** reinforce++, opo (it or `tokenCounts` is required) and gdpo (optional: 1 token a row): [B, T] uint8, nonzero = a token. */
  mask?: Tensor;
  /** reinforce++, opo and gdpo, instead of `mask`: [B] int32/int64 tokens of each sequence, >= 0. */
  tokenCounts?: Tensor;
  /** gdpo only: the weight of each of the K reward columns. Defaults to ones. */
  rewardWeights?: ArrayLike<number>;
  /** remax only (required): [B] float32 reward of each row's greedy baseline. */
  baselineRewards?: Tensor;
  /** Added to the std (grpo, gdpo, grpo-passk) or the task's sqrt(mean var) (tmn-reweight). Defaults to `1e-6` (TRL: 1e-4). */
  eps?: number;
  /** tmn-reweight: m = alpha mean_g + (1 - alpha) mean_task, in [0, 1]. Defaults to `0.8`. */
  alpha?: number;
  /** tmn-reweight: w = exp(gamma (0.5 - p)), >= 0. Defaults to `1`. */
  gamma?: number;
  /** tmn-reweight: apply the weight w; `false` gives the task-level normalisation alone. Defaults to `true`. */
  reweight?: boolean;
  /** finalizeGroupAdvantages only: this rank's index (the order its partials had in combine). Required for grpo-passk; defaults to `0`. */
  rank?: number;
}

export interface GroupAdvantagesResult {
  /** [B] float32, one advantage per sequence. */
  advantages: Tensor<'float32'>;
  /**
   * [numGroups] uint8, groups in order of first appearance: 1 where the group's rewards are not all equal (DAPO
   * dynamic sampling; gdpo: some reward column is not); 0 for a group of one and past the last group.
   */
  informative: Tensor<'uint8'>;
}

interface GroupAdvantagesNative {
  groupAdvantages(...args: unknown[]): [NativeTensor, NativeTensor];
  groupAdvantagesPartials(...args: unknown[]): NativeTensor;
  finalizeGroupAdvantages(...args: unknown[]): [NativeTensor, NativeTensor];
  combineGroupAdvantagesPartials(parts: NativeTensor[]): NativeTensor;
  broadcastAdvantages(advantages: NativeTensor, mask: NativeTensor): NativeTensor;
}
const n = native as unknown as GroupAdvantagesNative;

const OPTION_KEYS = [
  'groupIds', 'groupSize', 'numGroups', 'method', 'scale', 'taskIds', 'mask', 'tokenCounts', 'rewardWeights',
  'baselineRewards', 'eps', 'alpha', 'gamma', 'reweight', 'rank',
] as const;
/** Options that only some methods read (an option of another method is a TypeError, not silently ignored). */
const METHOD_ONLY: ReadonlyArray<[string, readonly AdvantageMethod[]]> = [
  ['taskIds', ['tmn-reweight']],
  ['alpha', ['tmn-reweight']],
  ['gamma', ['tmn-reweight']],
  ['reweight', ['tmn-reweight']],
  ['mask', ['reinforce++', 'gdpo', 'opo']],
  ['tokenCounts', ['reinforce++', 'gdpo', 'opo']],
  ['rewardWeights', ['gdpo']],
  ['baselineRewards', ['remax']],
  ['scale', ['grpo', 'grpo-passk']],
];
const quote = (xs: readonly string[]): string => xs.map((x) => `'${x}'`).join(', ');

interface Parsed {
  method: AdvantageMethod;
  reweight: boolean;
  numGroups: number;
  cols: number;
  /** The outputs' shapes and device as the addon makes them (`informative` null where only the CPU numbering knows G). */
  advantages: OutputLike;
  informative: OutputLike | null;
  args: unknown[];
}
type OutputLike = Pick<Tensor, 'shape' | 'device' | 'numel'>;
const outputLike = (n: number, device: Tensor['device']): OutputLike => ({ shape: Object.freeze([n]), device, numel: n });

/** Checks the rewards and options; gives the addon's positional arguments. */
function parse(fn: string, rewardsArg: unknown, options: unknown, crossRank: boolean): Parsed {
  const rewards = checkTensor(fn, 'rewards', rewardsArg);
  checkDTypeOf(fn, 'rewards', rewards, ['float32']);
  if (options === undefined) throw typeError(fn, `options must be an object with method and groupIds or groupSize, got undefined`);
  const o = checkOptions(fn, options, OPTION_KEYS);
  const method = checkEnum(fn, 'method', o.method, ADVANTAGE_METHODS);
  for (const [key, methods] of METHOD_ONLY) {
    if (o[key] !== undefined && !methods.includes(method)) {
      throw typeError(fn, `option '${key}' applies only to method${methods.length > 1 ? 's' : ''} ${quote(methods)}, got method '${method}'`);
    }
  }
  const gdpo = method === 'gdpo';
  if (gdpo ? rewards.shape.length !== 2 || rewards.shape[1] < 1 : rewards.shape.length !== 1) {
    throw rangeError(fn, `rewards must have shape ${gdpo ? '[B, K] with K >= 1' : '[B]'} for method '${method}', got [${rewards.shape.join(', ')}]`);
  }
  const B = rewards.shape[0];
  const cols = gdpo ? rewards.shape[1] : 1;

  const groupIds = checkOptionalTensor(fn, 'groupIds', o.groupIds);
  if ((groupIds === undefined) === (o.groupSize === undefined)) {
    throw typeError(fn, `exactly one of groupIds and groupSize must be given, got ${groupIds ? 'both' : 'neither'}`);
  }
  let groupSize = 0;
  let numGroups = -1;
  if (o.numGroups !== undefined) numGroups = checkNumber(fn, 'numGroups', o.numGroups, { integer: true, min: 0, max: MAX_GROUPS });
  if (groupIds) {
    checkDTypeOf(fn, 'groupIds', groupIds, ['int32', 'int64']);
    checkSameDevice(fn, ['rewards', rewards], ['groupIds', groupIds]);
    checkShapeEquals(fn, 'groupIds', groupIds, [B]);
    if (numGroups < 0 && crossRank) throw typeError(fn, `numGroups is required in the cross-rank form (an upper bound on the groups over all ranks)`);
  } else {
    if (crossRank) throw typeError(fn, `groupSize is not supported in the cross-rank form: pass global groupIds and numGroups`);
    groupSize = checkNumber(fn, 'groupSize', o.groupSize, { integer: true, min: 1, max: Number.MAX_SAFE_INTEGER });
    if (B % groupSize !== 0) throw rangeError(fn, `groupSize ${groupSize} must divide the batch size B = ${B}`);
    if (numGroups >= 0 && numGroups !== B / groupSize) throw rangeError(fn, `numGroups must be B / groupSize = ${B / groupSize}, got ${numGroups}`);
  }
  const scale = o.scale === undefined ? DEFAULT_SCALE : checkEnum(fn, 'scale', o.scale, ADVANTAGE_SCALES);
  if (method === 'grpo-passk' && scale === 'batch') throw rangeError(fn, `scale must be 'group' or 'none' for method 'grpo-passk', got 'batch'`);

  const taskIds = checkOptionalTensor(fn, 'taskIds', o.taskIds);
  if (taskIds) {
    checkDTypeOf(fn, 'taskIds', taskIds, ['int32', 'int64']);
    checkSameDevice(fn, ['rewards', rewards], ['taskIds', taskIds]);
    checkShapeEquals(fn, 'taskIds', taskIds, [B]);
  }
  const mask = checkOptionalTensor(fn, 'mask', o.mask);
  const tokenCounts = checkOptionalTensor(fn, 'tokenCounts', o.tokenCounts);
  if (mask && tokenCounts) throw typeError(fn, `give at most one of mask and tokenCounts, got both`);
  if ((method === 'reinforce++' || method === 'opo') && !mask && !tokenCounts) {
    throw typeError(fn, `method '${method}' needs exactly one of mask and tokenCounts, got neither`);
  }
  if (mask) {
    checkDTypeOf(fn, 'mask', mask, ['uint8']);
    checkSameDevice(fn, ['rewards', rewards], ['mask', mask]);
    if (mask.shape.length !== 2 || mask.shape[0] !== B) throw rangeError(fn, `mask must have shape [B = ${B}, T], got [${mask.shape.join(', ')}]`);
  }
  if (tokenCounts) {
    checkDTypeOf(fn, 'tokenCounts', tokenCounts, ['int32', 'int64']);
    checkSameDevice(fn, ['rewards', rewards], ['tokenCounts', tokenCounts]);
    checkShapeEquals(fn, 'tokenCounts', tokenCounts, [B]);
  }
  let weights: Float64Array | null = null;
  if (o.rewardWeights !== undefined) {
    const w = o.rewardWeights as ArrayLike<unknown>;
    if (w === null || typeof w !== 'object' || typeof w.length !== 'number') {
      throw typeError(fn, `rewardWeights must be an array of numbers, got ${describe(o.rewardWeights)}`);
    }
    if (w.length !== cols) throw rangeError(fn, `rewardWeights must have length K = ${cols} (the reward columns), got ${w.length}`);
    weights = Float64Array.from({ length: cols }, (_, k) => checkNumber(fn, `rewardWeights[${k}]`, w[k]));
  }
  const baseline = checkOptionalTensor(fn, 'baselineRewards', o.baselineRewards);
  if (method === 'remax' && !baseline) throw typeError(fn, `method 'remax' needs baselineRewards ([B] float32), got undefined`);
  if (baseline) {
    checkDTypeOf(fn, 'baselineRewards', baseline, ['float32']);
    checkSameDevice(fn, ['rewards', rewards], ['baselineRewards', baseline]);
    checkShapeEquals(fn, 'baselineRewards', baseline, [B]);
  }
  if (o.rank !== undefined && fn !== 'finalizeGroupAdvantages') throw typeError(fn, `option 'rank' applies only to finalizeGroupAdvantages`);
  if (o.rank === undefined && fn === 'finalizeGroupAdvantages' && method === 'grpo-passk') {
    throw typeError(fn, `rank (this rank's index in combine's order) is required for method 'grpo-passk', got undefined`);
  }
  const rank = o.rank === undefined ? 0 : checkNumber(fn, 'rank', o.rank, { integer: true, min: 0, max: MAX_GROUPS });
  const eps = o.eps === undefined ? DEFAULT_EPS : checkNumber(fn, 'eps', o.eps, { min: 0 });
  const alpha = o.alpha === undefined ? DEFAULT_ALPHA : checkNumber(fn, 'alpha', o.alpha, { min: 0, max: 1 });
  const gamma = o.gamma === undefined ? DEFAULT_GAMMA : checkNumber(fn, 'gamma', o.gamma, { min: 0 });
  const reweight = o.reweight === undefined ? DEFAULT_REWEIGHT : checkBoolean(fn, 'reweight', o.reweight);

  const h = (t: Tensor | undefined, name: string): NativeTensor | null => (t ? t.handle(fn, name) : null);
  // informative's length as native/addon/group_advantages.cc sets it: B / groupSize, numGroups, else B on CUDA.
  const groups = groupSize ? B / groupSize : numGroups >= 0 ? numGroups : rewards.device === 'cpu' ? -1 : B;
  return {
    method,
    reweight,
    numGroups,
    cols,
    advantages: gdpo ? outputLike(B, rewards.device) : rewards,
    informative: groups >= 0 ? outputLike(groups, rewards.device) : null,
    args: [
      rewards.handle(fn, 'rewards'),
      h(groupIds, 'groupIds'),
      groupSize,
      numGroups,
      h(taskIds, 'taskIds'),
      METHOD_CODES[method],
      h(mask, 'mask'),
      h(tokenCounts, 'tokenCounts'),
      eps,
      alpha,
      gamma,
      reweight,
      SCALE_CODES[scale],
      weights,
      h(baseline, 'baselineRewards'),
      rank,
    ],
  };
}

function wrapResult(parsed: Parsed, [adv, inf]: [NativeTensor, NativeTensor]): GroupAdvantagesResult {
  return {
    advantages: new Tensor<'float32'>(adv, parsed.advantages, 'float32'),
    informative: parsed.informative ? new Tensor<'uint8'>(inf, parsed.informative, 'uint8') : new Tensor<'uint8'>(inf),
  };
}

/**
 * One advantage per sequence from its group's rewards (DESIGN 3.6, LOSSES.md section 4), and the groups whose
 * rewards are not all equal. Float32 rewards; CPU work runs synchronously (multithreaded, deterministic), CUDA work
 * is enqueued.
 *
 * @param rewards [B] float32 sequence rewards ([B, K] for gdpo: K reward columns).
 * @throws TypeError for a wrong type, dtype or device, an unknown option, an option of another method, both/neither
 *   of groupIds and groupSize, a missing mask/tokenCounts (reinforce++, opo) or baselineRewards (remax).
 * @throws RangeError for a wrong shape, an unknown method or scale, groupSize not dividing B, more groups than
 *   numGroups, a task id that changes within a group, a negative token count, a grpo-passk group of one, gdpo with
 *   fewer than 2 tokens, rewardWeights of the wrong length, or a bad option value (on CUDA, data errors surface at
 *   the next read).
 * @throws DisposedError for a disposed tensor.
 */
export function groupAdvantages(rewards: Tensor, options: GroupAdvantagesOptions): GroupAdvantagesResult {
  const parsed = parse('groupAdvantages', rewards, options, false);
  return wrapResult(parsed, n.groupAdvantages(...parsed.args));
}

/** Rounds of partials the cross-rank form needs for these options: 2 for reinforce++, gdpo and tmn-reweight with reweight, else 1. */
export function groupAdvantagesRounds(options: Pick<GroupAdvantagesOptions, 'method' | 'reweight'>): 1 | 2 {
  const fn = 'groupAdvantagesRounds';
  const o = checkOptions(fn, options, OPTION_KEYS);
  const method = checkEnum(fn, 'method', o.method, ADVANTAGE_METHODS);
  const reweight = o.reweight === undefined ? DEFAULT_REWEIGHT : checkBoolean(fn, 'reweight', o.reweight);
  return method === 'reinforce++' || method === 'gdpo' || (method === 'tmn-reweight' && reweight) ? 2 : 1;
}

function checkStats(fn: string, name: string, v: unknown, rows: number, cols: number, rewards: Tensor): Tensor {
  const t = checkTensor(fn, name, v);
  checkDTypeOf(fn, name, t, ['int64']);
  checkSameDevice(fn, ['rewards', rewards], [name, t]);
  checkShapeEquals(fn, name, t, [rows, partialWidth(cols)]);
  return t;
}

/**
 * Cross-rank form, rounds 1 and 2: this rank's partials (int64 [numGroups, 4 + 10 K] keyed by group id; round 2
 * is [numGroups, 14], or [1, 14] for reinforce++ and gdpo). Without `stats` it is round 1; with `stats` (the
 * combined round-1 partials) it is round 2. Options as {@link groupAdvantages}, with `groupIds` and `numGroups`
 * (the same on every rank: an upper bound on the groups over all ranks) required.
 * @throws as {@link groupAdvantages}; TypeError for `stats` with a method that has no second round.
 */
export function groupAdvantagesPartials(rewards: Tensor, options: GroupAdvantagesOptions, stats?: Tensor): Tensor<'int64'> {
  const fn = 'groupAdvantagesPartials';
  const parsed = parse(fn, rewards, options, true);
  let s: NativeTensor | null = null;
  if (stats !== undefined) {
    if (groupAdvantagesRounds({ method: parsed.method, reweight: parsed.reweight }) !== 2) {
      throw typeError(fn, `method '${parsed.method}'${parsed.method === 'tmn-reweight' ? ' without reweight' : ''} has no second round: stats must be omitted, got ${describe(stats)}`);
    }
    s = checkStats(fn, 'stats', stats, parsed.numGroups, parsed.cols, rewards).handle(fn, 'stats');
  }
  return new Tensor<'int64'>(n.groupAdvantagesPartials(...parsed.args, s));
}

/**
 * Merges the ranks' partials of one round, in the order given (rank order: the order of first appearance of the
 * groups, and deterministic). Takes an array of int64 [K, W] tensors, or a one-element array holding an
 * all-gather's [R, K, W] tensor; gives [K, W].
 * @throws TypeError for a non-tensor, a wrong dtype or device; RangeError for mismatched shapes, records that
 *   disagree on a group's task, or more groups than K rows; DisposedError for a disposed tensor.
 */
export function combineGroupAdvantagesPartials(partials: readonly Tensor[] | Tensor): Tensor<'int64'> {
  const fn = 'combineGroupAdvantagesPartials';
  const list = Array.isArray(partials) ? partials : [partials];
  if (list.length === 0) throw rangeError(fn, `partials must hold at least one tensor, got none`);
  const handles = list.map((p, i) => {
    const t = checkTensor(fn, `partials[${i}]`, p);
    checkDTypeOf(fn, `partials[${i}]`, t, ['int64']);
    return t;
  });
  const first = handles[0];
  const stacked = handles.length === 1 && first.shape.length === 3;
  const width = first.shape[first.shape.length - 1];
  if (!((first.shape.length === 2 || stacked) && width > 4 && (width - 4) % 10 === 0)) {
    throw rangeError(fn, `partials[0] must have shape [K, W] or [R, K, W] with W = 4 + 10 x columns, got [${first.shape.join(', ')}]`);
  }
  if (stacked && first.shape[0] === 0) throw rangeError(fn, `partials[0] holds no rank (R = 0)`);
  handles.forEach((t, i) => {
    if (i === 0) return;
    checkSameDevice(fn, ['partials[0]', first], [`partials[${i}]`, t]);
    checkShapeEquals(fn, `partials[${i}]`, t, first.shape);
  });
  return new Tensor<'int64'>(n.combineGroupAdvantagesPartials(handles.map((t, i) => t.handle(fn, `partials[${i}]`))));
}

/**
 * Cross-rank form, last step: this rank's advantages and the (global) informative flags from the combined
 * partials of round 1 (`stats`) and, where the method has one, round 2 (`stats2`). `rank` (this rank's place in
 * combine's order) is required for grpo-passk, whose one nonzero advantage a group gives to its first maximum.
 * @throws as {@link groupAdvantages}; TypeError for a missing or superfluous `stats2`; RangeError for a row whose
 *   group no record of `stats` holds (on CUDA: at the next read).
 */
export function finalizeGroupAdvantages(rewards: Tensor, options: GroupAdvantagesOptions, stats: Tensor, stats2?: Tensor): GroupAdvantagesResult {
  const fn = 'finalizeGroupAdvantages';
  const parsed = parse(fn, rewards, options, true);
  const s1 = checkStats(fn, 'stats', stats, parsed.numGroups, parsed.cols, rewards);
  let s2: Tensor | undefined;
  if (groupAdvantagesRounds({ method: parsed.method, reweight: parsed.reweight }) === 2) {
    if (stats2 === undefined) throw typeError(fn, `stats2 (the combined round-2 partials) is required for method '${parsed.method}', got undefined`);
    s2 = checkStats(fn, 'stats2', stats2, parsed.method === 'reinforce++' || parsed.method === 'gdpo' ? 1 : parsed.numGroups, 1, rewards);
  } else if (stats2 !== undefined) {
    throw typeError(fn, `stats2 must be omitted: method '${parsed.method}' has no second round, got ${describe(stats2)}`);
  }
  return wrapResult(parsed, n.finalizeGroupAdvantages(...parsed.args, s1.handle(fn, 'stats'), s2 ? s2.handle(fn, 'stats2') : null));
}

/**
 * Spreads one advantage per sequence over its tokens: out[i, t] = advantages[i] where mask[i, t] is nonzero,
 * else 0 (what verl's `scores.unsqueeze(-1) * response_mask` gives).
 * @param advantages [B] float32.
 * @param mask [B, T] uint8.
 * @returns [B, T] float32.
 * @throws TypeError for a wrong type, dtype or device; RangeError for a wrong shape; DisposedError for a disposed tensor.
 */
export function broadcastAdvantages(advantages: Tensor, mask: Tensor): Tensor<'float32'> {
  const fn = 'broadcastAdvantages';
  const a = checkTensor(fn, 'advantages', advantages);
  const m = checkTensor(fn, 'mask', mask);
  checkDTypeOf(fn, 'advantages', a, ['float32']);
  checkDTypeOf(fn, 'mask', m, ['uint8']);
  checkSameDevice(fn, ['advantages', a], ['mask', m]);
  if (a.shape.length !== 1) throw rangeError(fn, `advantages must have shape [B], got [${a.shape.join(', ')}]`);
  if (m.shape.length !== 2 || m.shape[0] !== a.shape[0]) throw rangeError(fn, `mask must have shape [B = ${a.shape[0]}, T], got [${m.shape.join(', ')}]`);
  return new Tensor<'float32'>(n.broadcastAdvantages(a.handle(fn, 'advantages'), m.handle(fn, 'mask')));
}
