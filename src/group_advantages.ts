// Group advantages (DESIGN 3.6): one advantage per sequence from its group's
// rewards (GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline, GoLongRL's
// TMN-Reweight), DAPO's informative flag per group, the broadcast of
// sequence advantages to tokens, and the cross-rank form.
//
// Groups. `groupSize: n` puts rows [k n, (k + 1) n) in group k (B must be a
// multiple of n). `groupIds` ([B] int32/int64, any order, uneven sizes) puts
// row i in group groupIds[i], which must be in [0, numGroups); an id with no
// row is an empty group (informative 0). `numGroups` defaults to max id + 1,
// read on the host, which needs max id < B; on CUDA, where reading the ids
// would need a host round trip, and in the cross-rank form, it must be given.
// Task ids (tmn-reweight) must be in [0, numGroups) too: there are never more
// tasks than groups.
//
// Cross-rank protocol (data-parallel ranks, each with some rows of some
// groups; group and task ids global; all ranks pass the same options):
//   1. p1 = groupAdvantagesPartials(rewards, opts)            // [G, 7] float32
//   2. s1 = combineGroupAdvantagesPartials(all ranks' p1)     // in rank order
//   3. if groupAdvantagesRounds(opts) === 2:
//        p2 = groupAdvantagesPartials(rewards, opts, s1)      // [G, 7] or [1, 7]
//        s2 = combineGroupAdvantagesPartials(all ranks' p2)
//   4. { advantages, informative } = finalizeGroupAdvantages(rewards, opts, s1, s2)
// A partial row is a statistics record (count, mean, M2, min, max, key,
// meanLo: the mean is mean + meanLo, a float32 pair, so that merging groups
// whose spread is small beside their mean keeps its digits; key = task + 1, 0
// for no rows; counts and task ids are exact below 2^24). Records merge with
// Chan's formula, not by summation, so the exchange is an all-gather
// ([R, G, 7], which combine accepts as is) rather than a sum all-reduce. Round 2 exists where a statistic needs round 1's result:
// tmn-reweight's fraction of rewards above the smoothed mean m, and
// REINFORCE++'s whitening statistics of r - mean_g over the masked tokens.
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

/** `eps` of grpo and tmn-reweight. */
const DEFAULT_EPS = 1e-6;
/** tmn-reweight's smoothing weight of the group mean (the paper's setting). */
const DEFAULT_ALPHA = 0.8;
/** tmn-reweight's reweighting strength. */
const DEFAULT_GAMMA = 1;
/** tmn-reweight reweights by default. */
const DEFAULT_REWEIGHT = true;

export const ADVANTAGE_METHODS = ['grpo', 'drgrpo', 'rloo', 'reinforce++', 'tmn-reweight'] as const;
export type AdvantageMethod = (typeof ADVANTAGE_METHODS)[number];
/** Shared with native/include/rlk/group_advantages.h (`rlk::AdvantageMethod`). */
const METHOD_CODES: Readonly<Record<AdvantageMethod, number>> = { grpo: 0, drgrpo: 1, rloo: 2, 'reinforce++': 3, 'tmn-reweight': 4 };
const MAX_GROUPS = 2 ** 31 - 1;
/** Columns of a statistics record (native kGroupStatCols). */
const STAT_COLS = 7;

export interface GroupAdvantagesOptions {
  /** [B] int32/int64 group of each row, in [0, numGroups), any order. Exactly one of `groupIds` and `groupSize`. */
  groupIds?: Tensor;
  /** Consecutive groups of this many rows; B must be a multiple. Exactly one of `groupIds` and `groupSize`. */
  groupSize?: number;
  /**
   * Number of groups G (the length of `informative`). Defaults to max(groupIds) + 1 (which must then be < B)
   * for CPU tensors, or B / groupSize; required for `groupIds` on CUDA and in the cross-rank form.
   */
  numGroups?: number;
  /**
   * `grpo`: (r - mean_g) / (std_g + eps), std unbiased. `drgrpo`: r - mean_g. `rloo`: n/(n-1) (r - mean_g).
   * `reinforce++`: r - mean_g whitened over the masked tokens (verl's REINFORCE++-baseline); a sequence with no
   * masked token gets 0; with fewer than two masked tokens in the whole batch (where verl's masked_var raises) the
   * variance is taken as 0, so every advantage is 0.
   * `tmn-reweight`: GoLongRL's task-mean-normalised, reweighted advantage. A group of one has mean 0 (std 1).
   */
  method: AdvantageMethod;
  /** tmn-reweight only: [B] int32/int64 task of each row, in [0, numGroups), constant within a group. Defaults to one task. */
  taskIds?: Tensor;
  /** reinforce++ only (it or `tokenCounts` is required): [B, T] uint8, nonzero = a response token (counts as 1). */
  mask?: Tensor;
  /** reinforce++ only (it or `mask` is required): [B] int32/int64 masked tokens of each sequence, >= 0. */
  tokenCounts?: Tensor;
  /** Added to the std (grpo) or the task's sqrt(mean var) (tmn-reweight). Defaults to `1e-6`. */
  eps?: number;
  /** tmn-reweight: m = alpha mean_g + (1 - alpha) mean_task, in [0, 1]. Defaults to `0.8`. */
  alpha?: number;
  /** tmn-reweight: w = exp(gamma (0.5 - p)), >= 0. Defaults to `1`. */
  gamma?: number;
  /** tmn-reweight: apply the weight w; `false` gives the task-level normalisation alone. Defaults to `true`. */
  reweight?: boolean;
}

export interface GroupAdvantagesResult {
  /** [B] float32, one advantage per sequence. */
  advantages: Tensor<'float32'>;
  /** [G] uint8: 1 where the group's rewards are not all equal (DAPO dynamic sampling); 0 for a group of one or none. */
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

const OPTION_KEYS = ['groupIds', 'groupSize', 'numGroups', 'method', 'taskIds', 'mask', 'tokenCounts', 'eps', 'alpha', 'gamma', 'reweight'] as const;
const TMN_ONLY = ['taskIds', 'alpha', 'gamma', 'reweight'] as const;
const REINFORCE_ONLY = ['mask', 'tokenCounts'] as const;

interface Parsed {
  method: AdvantageMethod;
  reweight: boolean;
  numGroups: number;
  args: unknown[];
}

/** Checks the rewards and options; gives the addon's positional arguments. */
function parse(fn: string, rewardsArg: unknown, options: unknown, crossRank: boolean): Parsed {
  const rewards = checkTensor(fn, 'rewards', rewardsArg);
  checkDTypeOf(fn, 'rewards', rewards, ['float32']);
  if (rewards.shape.length !== 1) throw rangeError(fn, `rewards must have shape [B], got [${rewards.shape.join(', ')}]`);
  const B = rewards.shape[0];
  if (options === undefined) throw typeError(fn, `options must be an object with method and groupIds or groupSize, got undefined`);
  const o = checkOptions(fn, options, OPTION_KEYS);
  const method = checkEnum(fn, 'method', o.method, ADVANTAGE_METHODS);
  for (const key of TMN_ONLY) {
    if (o[key] !== undefined && method !== 'tmn-reweight') throw typeError(fn, `option '${key}' applies only to method 'tmn-reweight', got method '${method}'`);
  }
  for (const key of REINFORCE_ONLY) {
    if (o[key] !== undefined && method !== 'reinforce++') throw typeError(fn, `option '${key}' applies only to method 'reinforce++', got method '${method}'`);
  }

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
    if (numGroups < 0 && crossRank) throw typeError(fn, `numGroups is required in the cross-rank form (the global number of groups)`);
    if (numGroups < 0 && groupIds.device !== 'cpu') {
      throw typeError(fn, `numGroups is required when groupIds is on ${groupIds.device} (reading the ids would need a host round trip)`);
    }
  } else {
    if (crossRank) throw typeError(fn, `groupSize is not supported in the cross-rank form: pass global groupIds and numGroups`);
    groupSize = checkNumber(fn, 'groupSize', o.groupSize, { integer: true, min: 1, max: Number.MAX_SAFE_INTEGER });
    if (B % groupSize !== 0) throw rangeError(fn, `groupSize ${groupSize} must divide the batch size B = ${B}`);
    if (numGroups >= 0 && numGroups !== B / groupSize) throw rangeError(fn, `numGroups must be B / groupSize = ${B / groupSize}, got ${numGroups}`);
  }

  const taskIds = checkOptionalTensor(fn, 'taskIds', o.taskIds);
  if (taskIds) {
    checkDTypeOf(fn, 'taskIds', taskIds, ['int32', 'int64']);
    checkSameDevice(fn, ['rewards', rewards], ['taskIds', taskIds]);
    checkShapeEquals(fn, 'taskIds', taskIds, [B]);
  }
  const mask = checkOptionalTensor(fn, 'mask', o.mask);
  const tokenCounts = checkOptionalTensor(fn, 'tokenCounts', o.tokenCounts);
  if (method === 'reinforce++' && (mask === undefined) === (tokenCounts === undefined)) {
    throw typeError(fn, `method 'reinforce++' needs exactly one of mask and tokenCounts, got ${mask ? 'both' : 'neither'}`);
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
  const eps = o.eps === undefined ? DEFAULT_EPS : checkNumber(fn, 'eps', o.eps, { min: 0 });
  const alpha = o.alpha === undefined ? DEFAULT_ALPHA : checkNumber(fn, 'alpha', o.alpha, { min: 0, max: 1 });
  const gamma = o.gamma === undefined ? DEFAULT_GAMMA : checkNumber(fn, 'gamma', o.gamma, { min: 0 });
  const reweight = o.reweight === undefined ? DEFAULT_REWEIGHT : checkBoolean(fn, 'reweight', o.reweight);

  const h = (t: Tensor | undefined, name: string): NativeTensor | null => (t ? t.handle(fn, name) : null);
  return {
    method,
    reweight,
    numGroups,
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
    ],
  };
}

function wrapResult([adv, inf]: [NativeTensor, NativeTensor]): GroupAdvantagesResult {
  return { advantages: new Tensor<'float32'>(adv), informative: new Tensor<'uint8'>(inf) };
}

/**
 * One advantage per sequence from its group's rewards (DESIGN 3.6), and the groups whose rewards are not all
 * equal. Float32 rewards; CPU work runs synchronously (multithreaded, deterministic), CUDA work is enqueued.
 *
 * @param rewards [B] float32 sequence rewards.
 * @throws TypeError for a wrong type, dtype or device, an unknown option, an option of another method, or both/neither
 *   of groupIds and groupSize (or mask and tokenCounts for reinforce++).
 * @throws RangeError for a wrong shape, an unknown method, groupSize not dividing B, an id or task id out of range,
 *   a task id that changes within a group, a negative token count, or a bad option value (on CUDA, id errors surface
 *   at the next read).
 * @throws DisposedError for a disposed tensor.
 */
export function groupAdvantages(rewards: Tensor, options: GroupAdvantagesOptions): GroupAdvantagesResult {
  const parsed = parse('groupAdvantages', rewards, options, false);
  return wrapResult(n.groupAdvantages(...parsed.args));
}

/** Rounds of partials the cross-rank form needs for these options: 2 for reinforce++ and tmn-reweight with reweight, else 1. */
export function groupAdvantagesRounds(options: Pick<GroupAdvantagesOptions, 'method' | 'reweight'>): 1 | 2 {
  const fn = 'groupAdvantagesRounds';
  const o = checkOptions(fn, options, OPTION_KEYS);
  const method = checkEnum(fn, 'method', o.method, ADVANTAGE_METHODS);
  const reweight = o.reweight === undefined ? DEFAULT_REWEIGHT : checkBoolean(fn, 'reweight', o.reweight);
  return method === 'reinforce++' || (method === 'tmn-reweight' && reweight) ? 2 : 1;
}

function checkStats(fn: string, name: string, v: unknown, rows: number, rewards: Tensor): Tensor {
  const t = checkTensor(fn, name, v);
  checkDTypeOf(fn, name, t, ['float32']);
  checkSameDevice(fn, ['rewards', rewards], [name, t]);
  checkShapeEquals(fn, name, t, [rows, STAT_COLS]);
  return t;
}

/**
 * Cross-rank form, rounds 1 and 2: this rank's statistics records ([G, 7] float32; round 2 of reinforce++ is
 * [1, 7]). Without `stats` it is round 1; with `stats` (the combined round-1 records) it is round 2. Options as
 * {@link groupAdvantages}, with global `groupIds` and `numGroups` required.
 * @throws as {@link groupAdvantages}; TypeError for `stats` with a method that has no second round.
 */
export function groupAdvantagesPartials(rewards: Tensor, options: GroupAdvantagesOptions, stats?: Tensor): Tensor<'float32'> {
  const fn = 'groupAdvantagesPartials';
  const parsed = parse(fn, rewards, options, true);
  let s: NativeTensor | null = null;
  if (stats !== undefined) {
    if (groupAdvantagesRounds({ method: parsed.method, reweight: parsed.reweight }) !== 2) {
      throw typeError(fn, `method '${parsed.method}'${parsed.method === 'tmn-reweight' ? ' without reweight' : ''} has no second round: stats must be omitted, got ${describe(stats)}`);
    }
    s = checkStats(fn, 'stats', stats, parsed.numGroups, rewards).handle(fn, 'stats');
  }
  return new Tensor<'float32'>(n.groupAdvantagesPartials(...parsed.args, s));
}

/**
 * Merges the ranks' partials of one round, in the order given (fixed order: deterministic). Takes an array of
 * [K, 7] tensors, or a one-element array holding an all-gather's [R, K, 7] tensor.
 * @throws TypeError for a non-tensor, a wrong dtype or device; RangeError for mismatched shapes, or records that
 *   disagree on a group's task; DisposedError for a disposed tensor.
 */
export function combineGroupAdvantagesPartials(partials: readonly Tensor[] | Tensor): Tensor<'float32'> {
  const fn = 'combineGroupAdvantagesPartials';
  const list = Array.isArray(partials) ? partials : [partials];
  if (list.length === 0) throw rangeError(fn, `partials must hold at least one tensor, got none`);
  const handles = list.map((p, i) => {
    const t = checkTensor(fn, `partials[${i}]`, p);
    checkDTypeOf(fn, `partials[${i}]`, t, ['float32']);
    return t;
  });
  const first = handles[0];
  const stacked = handles.length === 1 && first.shape.length === 3;
  if (!((first.shape.length === 2 || stacked) && first.shape[first.shape.length - 1] === STAT_COLS)) {
    throw rangeError(fn, `partials[0] must have shape [K, 7] or [R, K, 7], got [${first.shape.join(', ')}]`);
  }
  if (stacked && first.shape[0] === 0) throw rangeError(fn, `partials[0] holds no rank (R = 0)`);
  handles.forEach((t, i) => {
    if (i === 0) return;
    checkSameDevice(fn, ['partials[0]', first], [`partials[${i}]`, t]);
    checkShapeEquals(fn, `partials[${i}]`, t, first.shape);
  });
  return new Tensor<'float32'>(n.combineGroupAdvantagesPartials(handles.map((t, i) => t.handle(fn, `partials[${i}]`))));
}

/**
 * Cross-rank form, last step: this rank's advantages and the (global) informative flags from the combined
 * records of round 1 (`stats`) and, where the method has one, round 2 (`stats2`).
 * @throws as {@link groupAdvantages}; TypeError for a missing or superfluous `stats2`.
 */
export function finalizeGroupAdvantages(rewards: Tensor, options: GroupAdvantagesOptions, stats: Tensor, stats2?: Tensor): GroupAdvantagesResult {
  const fn = 'finalizeGroupAdvantages';
  const parsed = parse(fn, rewards, options, true);
  const s1 = checkStats(fn, 'stats', stats, parsed.numGroups, rewards);
  let s2: Tensor | undefined;
  if (groupAdvantagesRounds({ method: parsed.method, reweight: parsed.reweight }) === 2) {
    if (stats2 === undefined) throw typeError(fn, `stats2 (the combined round-2 partials) is required for method '${parsed.method}', got undefined`);
    s2 = checkStats(fn, 'stats2', stats2, parsed.method === 'reinforce++' ? 1 : parsed.numGroups, rewards);
  } else if (stats2 !== undefined) {
    throw typeError(fn, `stats2 must be omitted: method '${parsed.method}' has no second round, got ${describe(stats2)}`);
  }
  return wrapResult(n.finalizeGroupAdvantages(...parsed.args, s1.handle(fn, 'stats'), s2 ? s2.handle(fn, 'stats2') : null));
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
