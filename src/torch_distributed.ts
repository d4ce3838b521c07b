// `rlkernels/torch` `distributed` (DESIGN 8): data- and vocabulary-parallel
// training on c10d, PyTorch's own collective layer, through the bridge.
//
// One process group per process, over a c10d TCPStore: Gloo on the CPU, NCCL
// where the bridge was built against a CUDA torch. Store connections and
// collective waits run off the Node thread; each collective is issued on it,
// in program order (c10d matches the ranks' collectives by order), and
// resolves a promise when complete. Every wait is bounded by `timeoutMs`.
//
// On top of the collectives: the vocabulary-parallel log-probs of DESIGN 3.1
// (one all-gather of 3-4 floats per token; the backward is local), their
// fused form on a sharded LM head (3.2; the backward all-reduces the hidden
// states' gradient), the
// cross-rank group advantages of 3.6, and the data-parallel policy loss of 3.3
// with global token and sequence counts.
import { checkBoolean, checkEnum, checkNumber, checkOptions, describe, rangeError, typeError } from './checks.js';
import {
  combineGroupAdvantagesPartials,
  finalizeGroupAdvantages,
  groupAdvantagesPartials,
  groupAdvantagesRounds,
  type GroupAdvantagesOptions,
} from './group_advantages.js';
import type { PolicyLossOptions } from './policy_loss.js';
import { DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE } from './linear_logprobs.js';
import { DEFAULT_IGNORE_INDEX, DEFAULT_TEMPERATURE } from './token_logprobs.js';
import { aten, bridge, checkTorchTensor, TorchTensor, type NativeTorchTensor } from './torch_tensor.js';
import { fromCore, full, policyLoss as torchPolicyLoss, tensor, toCore, type TorchPolicyLossInputs, type TorchPolicyLossResult } from './torch.js';

export type Backend = 'gloo' | 'nccl';
export type ReduceOp = 'sum' | 'avg' | 'product' | 'min' | 'max';

/** Defaults to 30 minutes, as torch.distributed. */
export const DEFAULT_TIMEOUT_MS = 30 * 60 * 1000;
/** torchrun's default MASTER_PORT. */
export const DEFAULT_PORT = 29500;
export const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'avg', 'product', 'min', 'max'];
const BACKENDS: readonly Backend[] = ['gloo', 'nccl'];

interface NativeDistributed {
  init(o: Record<string, unknown>): Promise<void>;
  allReduce(t: NativeTorchTensor, op: string): Promise<NativeTorchTensor>;
  allGather(t: NativeTorchTensor): Promise<NativeTorchTensor>;
  broadcast(t: NativeTorchTensor, src: number): Promise<NativeTorchTensor>;
  barrier(): Promise<void>;
  destroy(): Promise<void>;
  state(): { initialized: boolean; initializing: boolean; rank?: number; worldSize?: number; backend?: Backend; timeoutMs?: number; backends: Backend[] };
  shardPartials(...a: unknown[]): NativeTorchTensor;
  shardCombine(...a: unknown[]): [NativeTorchTensor, NativeTorchTensor | null];
  linearShardPartials(...a: unknown[]): NativeTorchTensor;
  linearShardCombine(...a: unknown[]): [NativeTorchTensor, NativeTorchTensor | null];
}

function nd(): NativeDistributed {
  return (bridge() as unknown as { distributed: NativeDistributed }).distributed;
}

export interface InitOptions {
  /** `'gloo'` (CPU tensors) or `'nccl'` (CUDA tensors). Defaults to `'gloo'`. */
  backend?: Backend;
  /** This process's rank in `[0, worldSize)`. Defaults to `RANK` from the environment (torchrun). */
  rank?: number;
  /** Number of processes. Defaults to `WORLD_SIZE` from the environment. */
  worldSize?: number;
  /**
   * The c10d TCPStore: rank 0 serves it (unless `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent does), every
   * rank connects. Defaults to `MASTER_ADDR` / `MASTER_PORT`, then `127.0.0.1:29500`.
   */
  store?: { host?: string; port?: number };
  /** Bound on the store connection, the rendezvous and every collective. Defaults to 30 minutes. */
  timeoutMs?: number;
  /**
   * Gloo's network device: `interface` (a name or comma-separated names, as `GLOO_SOCKET_IFNAME`, which is the
   * default) or `hostname` (an address to bind). Without either: the loopback when the store host is a loopback
   * address, else torch's default device (this machine's hostname).
   */
  gloo?: { interface?: string; hostname?: string; threads?: number };
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw rangeError('distributed.init', `environment variable ${name} must be an integer, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * Joins the process group (torch.distributed.init_process_group): connects to the TCPStore (rank 0 serves it)
 * and runs the backend's rendezvous, off the Node thread.
 * @throws TypeError for a second init, an unknown option or a backend not built in; RangeError for a rank out of
 *   range, a bad world size, port or timeout. The promise rejects when the peers do not all arrive in `timeoutMs`.
 */
export function init(options?: InitOptions): Promise<void> {
  const fn = 'distributed.init';
  const o = checkOptions(fn, options, ['backend', 'rank', 'worldSize', 'store', 'timeoutMs', 'gloo']);
  const backend = o.backend === undefined ? 'gloo' : checkEnum(fn, 'backend', o.backend, BACKENDS);
  const worldSize = checkNumber(fn, o.worldSize === undefined ? 'worldSize (WORLD_SIZE)' : 'worldSize',
    o.worldSize ?? envInt('WORLD_SIZE') ?? 1, { integer: true, min: 1, max: 65535 });
  const rank = checkNumber(fn, o.rank === undefined ? 'rank (RANK)' : 'rank', o.rank ?? envInt('RANK') ?? 0, { integer: true, min: 0 });
  if (rank >= worldSize) throw rangeError(fn, `rank must be an integer in [0, worldSize = ${worldSize}), got ${rank}`);
  const store = o.store === undefined ? {} : checkOptions(fn, o.store, ['host', 'port'], 'store');
  const host = store.host ?? process.env.MASTER_ADDR ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw typeError(fn, `store.host must be a non-empty string, got ${describe(host)}`);
  const port = checkNumber(fn, 'store.port', store.port ?? envInt('MASTER_PORT') ?? DEFAULT_PORT, { integer: true, min: 1, max: 65535 });
  const timeoutMs = o.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : checkNumber(fn, 'timeoutMs', o.timeoutMs, { integer: true, min: 1, max: 2 ** 31 - 1 });
  const gloo = o.gloo === undefined ? {} : checkOptions(fn, o.gloo, ['interface', 'hostname', 'threads'], 'gloo');
  for (const k of ['interface', 'hostname'] as const) {
    if (gloo[k] !== undefined && (typeof gloo[k] !== 'string' || gloo[k] === '')) throw typeError(fn, `gloo.${k} must be a non-empty string, got ${describe(gloo[k])}`);
  }
  const threads = gloo.threads === undefined ? 2 : checkNumber(fn, 'gloo.threads', gloo.threads, { integer: true, min: 1, max: 64 });
  const agentStore = process.env.TORCHELASTIC_USE_AGENT_STORE === 'True';
  return nd().init({
    backend, rank, worldSize, host, port, timeoutMs, threads,
    isServer: rank === 0 && !agentStore,
    useLibUV: process.env.USE_LIBUV === '1',
    glooInterface: gloo.interface ?? process.env.GLOO_SOCKET_IFNAME ?? '',
    glooHostname: gloo.hostname ?? '',
  });
}

/** True once `init` has resolved and until `destroy`. Does not load the bridge when it is not loaded. */
export function isInitialized(): boolean {
  try {
    return nd().state().initialized;
  } catch {
    return false;
  }
}

/** The backends this bridge was built with (`'gloo'` needs Gloo's headers at build time, `'nccl'` a CUDA torch). */
export function availableBackends(): Backend[] {
  return nd().state().backends;
}

function state(fn: string): { rank: number; worldSize: number; backend: Backend; timeoutMs: number } {
  const s = nd().state();
  if (!s.initialized) throw typeError(`distributed.${fn}`, 'the process group is not initialized: await torch.distributed.init(...) first');
  return s as { rank: number; worldSize: number; backend: Backend; timeoutMs: number };
}

/** This process's rank. @throws TypeError before init. */
export function rank(): number {
  return state('rank').rank;
}

/** The number of processes. @throws TypeError before init. */
export function worldSize(): number {
  return state('worldSize').worldSize;
}

/** The group's backend. @throws TypeError before init. */
export function backend(): Backend {
  return state('backend').backend;
}

/**
 * Reduces `tensor` across ranks, in place (torch.distributed.all_reduce); `'avg'` divides the sum by the world size.
 * Do not read or write the tensor until the promise settles. Resolves with `tensor`.
 * @throws TypeError before init, for a tensor on the wrong device (Gloo: CPU; NCCL: CUDA), non-contiguous or bool;
 *   RangeError for an unknown op. The promise rejects when a peer dies or does not take part within the timeout.
 */
export async function allReduce<T extends TorchTensor>(tensor: T, options?: { op?: ReduceOp }): Promise<T> {
  const fn = 'distributed.allReduce';
  const t = checkTorchTensor(fn, 'tensor', tensor);
  const o = checkOptions(fn, options, ['op']);
  const op = o.op === undefined ? 'sum' : checkEnum(fn, 'op', o.op, REDUCE_OPS);
  const h = await nd().allReduce(t.handle(fn, 'tensor'), op);
  new TorchTensor(h).dispose();
  return tensor;
}

/**
 * Gathers every rank's `tensor` (same shape and dtype everywhere) into a new `[worldSize, ...shape]` tensor, rank
 * r's at index r (torch.distributed.all_gather_into_tensor, stacked).
 * @throws as {@link allReduce}.
 */
export async function allGather(tensor: TorchTensor): Promise<TorchTensor> {
  const fn = 'distributed.allGather';
  const t = checkTorchTensor(fn, 'tensor', tensor);
  return new TorchTensor(await nd().allGather(t.handle(fn, 'tensor')));
}

/**
 * Copies rank `src`'s `tensor` into every rank's `tensor`, in place. Resolves with `tensor`.
 * @throws as {@link allReduce}; RangeError for `src` outside `[0, worldSize)`.
 */
export async function broadcast<T extends TorchTensor>(tensor: T, options?: { src?: number }): Promise<T> {
  const fn = 'distributed.broadcast';
  const t = checkTorchTensor(fn, 'tensor', tensor);
  const o = checkOptions(fn, options, ['src']);
  const src = o.src === undefined ? 0 : checkNumber(fn, 'src', o.src, { integer: true, min: 0 });
  const h = await nd().broadcast(t.handle(fn, 'tensor'), src);
  new TorchTensor(h).dispose();
  return tensor;
}

/** Resolves once every rank has reached it. @throws TypeError before init. */
export function barrier(): Promise<void> {
  return nd().barrier();
}

/** Leaves the process group (queued collectives finish first); `init` may be called again. Idempotent. */
export function destroy(): Promise<void> {
  return nd().destroy();
}

// ---- vocabulary-parallel token log-probs --------------------------------------------

/** The columns `[start, end)` of a vocabulary of `vocabSize` that rank `rank` of `worldSize` holds (contiguous, the first `vocabSize % worldSize` ranks one more). */
export function vocabShard(vocabSize: number, rank: number, worldSize: number): { start: number; end: number } {
  const fn = 'distributed.vocabShard';
  checkNumber(fn, 'vocabSize', vocabSize, { integer: true, min: 1 });
  checkNumber(fn, 'worldSize', worldSize, { integer: true, min: 1 });
  checkNumber(fn, 'rank', rank, { integer: true, min: 0, max: worldSize - 1 });
  const base = Math.floor(vocabSize / worldSize);
  const extra = vocabSize % worldSize;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}

export interface VocabParallelOptions {
  /** Global vocabulary index of this rank's first column. Required. */
  vocabStart: number;
  /** The whole vocabulary's size (targets are checked against it). Required. */
  vocabSize: number;
  /** A positive number, or a float32 TorchTensor of one value per row. Defaults to `1`. */
  temperature?: number | TorchTensor;
  /** Also return the entropy (differentiable). Defaults to `false`. */
  entropy?: boolean;
  /** Defaults to `-100`. */
  ignoreIndex?: number;
}

// The options both vocabulary-parallel forms share, checked.
function shardOptions(fn: string, o: Record<string, unknown>): {
  vocabSize: number; vocabStart: number; temperature: number; tt: TorchTensor | null; entropy: boolean; ignoreIndex: number;
} {
  const vocabSize = checkNumber(fn, 'vocabSize', o.vocabSize, { integer: true, min: 1 });
  const vocabStart = checkNumber(fn, 'vocabStart', o.vocabStart, { integer: true, min: 0, max: vocabSize - 1 });
  let temperature = DEFAULT_TEMPERATURE;
  let tt: TorchTensor | null = null;
  if (o.temperature instanceof TorchTensor) tt = checkTorchTensor(fn, 'temperature', o.temperature);
  else if (o.temperature !== undefined) {
    temperature = checkNumber(fn, 'temperature', o.temperature, { greaterThan: 0 });
    if (!(Math.fround(1 / temperature) > 0) || !Number.isFinite(Math.fround(1 / temperature))) throw rangeError(fn, `temperature must be a positive number with a finite float32 inverse, got ${temperature}`);
  }
  const entropy = o.entropy === undefined ? false : checkBoolean(fn, 'entropy', o.entropy);
  const ignoreIndex = o.ignoreIndex === undefined ? DEFAULT_IGNORE_INDEX
    : checkNumber(fn, 'ignoreIndex', o.ignoreIndex, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
  return { vocabSize, vocabStart, temperature, tt, entropy, ignoreIndex };
}

// Both vocabulary-parallel forms: this rank's partials, one all-gather, the combine. `args` is called
// again after the all-gather, re-reading the handles: the caller may have disposed a tensor meanwhile.
async function gatherAndCombine(
  fn: string, args: () => unknown[], partialsOf: (...a: unknown[]) => NativeTorchTensor,
  combine: (...a: unknown[]) => [NativeTorchTensor, NativeTorchTensor | null],
): Promise<{ logprobs: TorchTensor; entropy?: TorchTensor }> {
  const partials = new TorchTensor(partialsOf(...args()));
  let gathered: TorchTensor;
  try {
    gathered = await allGather(partials);
  } finally {
    partials.dispose();
  }
  try {
    const [lp, ent] = combine(...args(), gathered.handle(fn, 'partials'));
    const r: { logprobs: TorchTensor; entropy?: TorchTensor } = { logprobs: new TorchTensor(lp) };
    if (ent) r.entropy = new TorchTensor(ent);
    return r;
  } finally {
    gathered.dispose();
  }
}

/**
 * Vocabulary-parallel token log-probs and entropy (DESIGN 3.1, 8) over the process group: every rank holds the
 * columns `[vocabStart, vocabStart + V_shard)` of the logits and the same targets, and gets the same
 * `{ logprobs, entropy? }` as `tokenLogprobs` on the whole vocabulary. One all-gather of float32 `[rows, 3 | 4]`
 * partials (max, sum of exp, target logit, entropy sum) per call: 12 or 16 bytes per token a rank, whatever the
 * vocabulary. The result is an autograd function of `logitsShard`; its backward is local (the combined row
 * statistics give the softmax on this shard) and needs no communication. The ranks' shards must tile the
 * vocabulary without overlap (see {@link vocabShard}).
 * @throws TypeError before init, for a non-TorchTensor, wrong dtype or device, non-contiguous tensors;
 *   RangeError for targets outside `[0, vocabSize)`, a shard outside the vocabulary, bad temperatures.
 */
export async function tokenLogprobs(
  logitsShard: TorchTensor, targets: TorchTensor, options: VocabParallelOptions,
): Promise<{ logprobs: TorchTensor; entropy?: TorchTensor }> {
  const fn = 'distributed.tokenLogprobs';
  state('tokenLogprobs');
  const l = checkTorchTensor(fn, 'logitsShard', logitsShard);
  const t = checkTorchTensor(fn, 'targets', targets);
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart and vocabSize, got undefined');
  const o = checkOptions(fn, options, ['vocabStart', 'vocabSize', 'temperature', 'entropy', 'ignoreIndex']);
  const { vocabSize, vocabStart, temperature, tt, entropy, ignoreIndex } = shardOptions(fn, o);
  const args = () => [l.handle(fn, 'logitsShard'), t.handle(fn, 'targets'), temperature, tt ? tt.handle(fn, 'temperature') : null,
    ignoreIndex, entropy, vocabStart, vocabSize];
  return gatherAndCombine(fn, args, nd().shardPartials, nd().shardCombine);
}

// ---- vocabulary-parallel linear log-probs (a sharded LM head) -------------------------

export interface LinearVocabParallelOptions extends VocabParallelOptions {
  /** This rank's bias rows `[V_shard]` (the weight's dtype); gets a gradient when it requires grad. */
  bias?: TorchTensor;
  /** Rows per chunk (memory beyond inputs and outputs grows with it). Defaults to `0`: the kernel's choice. */
  chunkSize?: number;
}

/**
 * Vocabulary-parallel fused linear log-probs (DESIGN 3.1, 3.2, 8): every rank holds the rows
 * `[vocabStart, vocabStart + V_shard)` of the LM head (`weightShard` `[V_shard, H]`, and of the bias) and the same
 * `hidden` `[..., H]` and targets, and gets the same `{ logprobs, entropy? }` as `torch.linearLogprobs` on the whole
 * weight, without the logits. One all-gather of float32 `[rows, 3 | 4]` partials per call (12 or 16 bytes per
 * token a rank, whatever the vocabulary, never a row of it); the ranks' shards must tile the vocabulary (see
 * {@link vocabShard}).
 *
 * The results are autograd functions of `hidden`, `weightShard` and `bias`. `backward()` gives `weightShard` and
 * `bias` this shard's exact gradient, locally. The gradient of `hidden` through the logits is a sum over the ranks
 * (each holds `dlogits_shard @ weightShard`): the backward all-reduces it (a sum over the process group, Megatron's
 * copy-to-tensor-parallel-region backward) before autograd accumulates it, so `hidden.grad` is the whole gradient
 * on every rank, as with one process. That all-reduce runs inside `backward()`, which is synchronous: the Node
 * thread waits for it (bounded by the group's `timeoutMs`; a peer that never reaches its backward makes
 * `backward()` throw after the timeout). Hence every rank must call `backward()` through these results (with
 * `hidden` requiring grad on all or none), in the same order relative to its other collectives. The all-reduce is
 * skipped when `hidden` does not require grad. Destroying the group between the forward and the backward makes
 * the backward throw.
 * @throws TypeError before init, for a non-TorchTensor, wrong dtype or device, non-contiguous tensors, an unknown
 *   option; RangeError for a shard outside the vocabulary, a weight shard whose H differs from hidden's, targets
 *   outside `[0, vocabSize)`, bad temperatures or chunk sizes; DisposedError for a disposed tensor.
 */
export async function linearLogprobs(
  hidden: TorchTensor, weightShard: TorchTensor, targets: TorchTensor, options: LinearVocabParallelOptions,
): Promise<{ logprobs: TorchTensor; entropy?: TorchTensor }> {
  const fn = 'distributed.linearLogprobs';
  const { backend: be } = state('linearLogprobs');
  const h = checkTorchTensor(fn, 'hidden', hidden);
  const w = checkTorchTensor(fn, 'weightShard', weightShard);
  const t = checkTorchTensor(fn, 'targets', targets);
  if (options === undefined) throw typeError(fn, 'options must be an object with vocabStart and vocabSize, got undefined');
  const o = checkOptions(fn, options, ['vocabStart', 'vocabSize', 'temperature', 'entropy', 'bias', 'ignoreIndex', 'chunkSize']);
  const { vocabSize, vocabStart, temperature, tt, entropy, ignoreIndex } = shardOptions(fn, o);
  const chunk = o.chunkSize === undefined ? DEFAULT_CHUNK_SIZE : checkNumber(fn, 'chunkSize', o.chunkSize, { integer: true, min: 0, max: MAX_CHUNK_SIZE });
  const b = o.bias === undefined ? null : checkTorchTensor(fn, 'bias', o.bias);
  // The kernels are the CPU ones (the partials travel over the group's backend): NCCL would need CUDA kernels.
  if (be !== 'gloo') throw typeError(fn, `needs the 'gloo' backend (the bridge's kernels run on the CPU), got '${be}'`);
  if (!['float32', 'bfloat16', 'float16'].includes(h.dtype)) throw typeError(fn, `hidden must be float32, bfloat16 or float16, got ${h.dtype}`);
  if (w.dtype !== h.dtype) throw typeError(fn, `weightShard must be ${h.dtype} like hidden, got ${w.dtype}`);
  if (t.dtype !== 'int32' && t.dtype !== 'int64') throw typeError(fn, `targets must be int32 or int64, got ${t.dtype}`);
  if (h.shape.length < 1 || w.shape.length !== 2 || w.shape[1] !== h.shape[h.shape.length - 1]) {
    throw rangeError(fn, `weightShard must have shape [V_shard, ${h.shape[h.shape.length - 1] ?? 'H'}] (H of hidden), got ${describe(w)}`);
  }
  const args = () => [h.handle(fn, 'hidden'), w.handle(fn, 'weightShard'), b ? b.handle(fn, 'bias') : null, t.handle(fn, 'targets'),
    temperature, tt ? tt.handle(fn, 'temperature') : null, ignoreIndex, entropy, vocabStart, vocabSize, chunk];
  return gatherAndCombine(fn, args, nd().linearShardPartials, nd().linearShardCombine);
}

// ---- data parallel: advantages, policy loss, gradients --------------------------------

/**
 * Cross-rank group advantages (DESIGN 3.6): each rank passes its own rewards with *global* `groupIds` and
 * `numGroups` (a group may be split across ranks); one all-gather of `[numGroups, 7]` records per round (two for
 * `reinforce++` and `tmn-reweight`), then the same advantages each sample gets from `groupAdvantages` on the whole
 * batch, and the global `informative` flags.
 * @throws as `rlk.groupAdvantages` and `finalizeGroupAdvantages`; TypeError before init.
 */
export async function groupAdvantages(
  rewards: TorchTensor, options: GroupAdvantagesOptions | Record<string, unknown>,
): Promise<{ advantages: TorchTensor; informative: TorchTensor }> {
  const fn = 'distributed.groupAdvantages';
  state('groupAdvantages');
  const r = checkTorchTensor(fn, 'rewards', rewards);
  if (r.device !== 'cpu') throw typeError(fn, `rewards must be on the CPU, got ${describe(r)}`);
  const views: Array<{ dispose(): void }> = [];
  const core = (t: TorchTensor) => {
    const c = toCore(t.isContiguous ? t : t.contiguous());
    views.push(c);
    return c;
  };
  const opts: Record<string, unknown> = { ...(options as Record<string, unknown>) };
  for (const k of ['groupIds', 'taskIds', 'mask', 'tokenCounts'] as const) {
    if (opts[k] instanceof TorchTensor) opts[k] = core(opts[k] as TorchTensor);
  }
  try {
    const rc = core(r);
    const gatherCombine = async (part: ReturnType<typeof groupAdvantagesPartials>) => {
      const tp = fromCore(part);
      part.dispose();
      try {
        const all = await allGather(tp);
        try {
          const c = toCore(all);
          views.push(c);
          return combineGroupAdvantagesPartials([c]);
        } finally {
          all.dispose();
        }
      } finally {
        tp.dispose();
      }
    };
    const s1 = await gatherCombine(groupAdvantagesPartials(rc, opts as unknown as GroupAdvantagesOptions));
    views.push(s1);
    let s2: typeof s1 | undefined;
    if (groupAdvantagesRounds(opts as Pick<GroupAdvantagesOptions, 'method' | 'reweight'>) === 2) {
      s2 = await gatherCombine(groupAdvantagesPartials(rc, opts as unknown as GroupAdvantagesOptions, s1));
      views.push(s2);
    }
    const res = finalizeGroupAdvantages(rc, opts as unknown as GroupAdvantagesOptions, s1, s2);
    const out = { advantages: fromCore(res.advantages), informative: fromCore(res.informative) };
    res.advantages.dispose();
    res.informative.dispose();
    return out;
  } finally {
    for (const v of views) v.dispose();
  }
}

/**
 * The global token and sequence counts of a data-parallel batch: sums over ranks of this rank's masked tokens and
 * of its sequences with at least one masked token (`mask` `[B, T]`, uint8/bool/float; without a mask every token
 * of `[B, T]` `shape` counts). One all-reduce of two float64 numbers.
 */
export async function globalCounts(mask: TorchTensor): Promise<{ tokenCount: number; sequenceCount: number }> {
  const fn = 'distributed.globalCounts';
  state('globalCounts');
  const m = checkTorchTensor(fn, 'mask', mask);
  if (m.shape.length !== 2) throw rangeError(fn, `mask must be [B, T], got ${describe(m)}`);
  const data = await m.toArray();
  const [B, T] = m.shape;
  let tokens = 0;
  let seqs = 0;
  for (let i = 0; i < B; i++) {
    let n = 0;
    for (let j = 0; j < T; j++) if (Number((data as ArrayLike<number>)[i * T + j]) !== 0) n++;
    tokens += n;
    if (n > 0) seqs++;
  }
  const c = tensor(new Float64Array([tokens, seqs]), { dtype: 'float64' });
  try {
    await allReduce(c);
    const [tokenCount, sequenceCount] = c.toArraySync() as Float64Array;
    return { tokenCount, sequenceCount };
  } finally {
    c.dispose();
  }
}

/**
 * The data-parallel policy loss (DESIGN 3.3): `torch.policyLoss` on this rank's part of the batch with the global
 * `tokenCount` and `sequenceCount` (all-reduced from the masks) and `dpSize = worldSize`, so that averaging the
 * ranks' gradients ({@link allReduceGradients}) gives the gradient of the loss on the whole batch. Explicit
 * `tokenCount`/`sequenceCount`/`dpSize` in `options` are kept. Rejection by rollout correction changes the
 * counts after this: give them explicitly then.
 * @throws as `torch.policyLoss`; TypeError before init.
 */
export async function policyLoss(inputs: TorchPolicyLossInputs, options?: PolicyLossOptions | Record<string, unknown>): Promise<TorchPolicyLossResult> {
  const fn = 'distributed.policyLoss';
  const { worldSize: W } = state('policyLoss');
  if (typeof inputs !== 'object' || inputs === null) throw typeError(fn, `inputs must be an object of TorchTensors, got ${describe(inputs)}`);
  const o: Record<string, unknown> = { ...((options ?? {}) as Record<string, unknown>) };
  if (o.tokenCount === undefined || o.sequenceCount === undefined) {
    const lp = checkTorchTensor(fn, 'inputs.logprobs', inputs.logprobs);
    let counts: { tokenCount: number; sequenceCount: number };
    if (inputs.mask !== undefined) counts = await globalCounts(checkTorchTensor(fn, 'inputs.mask', inputs.mask));
    else {
      const m = full([...lp.shape], 1, { dtype: 'uint8' });
      try {
        counts = await globalCounts(m);
      } finally {
        m.dispose();
      }
    }
    if (o.tokenCount === undefined && counts.tokenCount > 0) o.tokenCount = counts.tokenCount;
    if (o.sequenceCount === undefined && counts.sequenceCount > 0) o.sequenceCount = counts.sequenceCount;
  }
  if (o.dpSize === undefined) o.dpSize = W;
  return torchPolicyLoss(inputs, o);
}

/**
 * Averages the gradients of `params` over the ranks (what DDP does after backward): one all-reduce of their
 * flattened concatenation. Parameters without a gradient take part with zeros (every rank must pass the same list).
 * @throws TypeError before init or for a non-TorchTensor.
 */
export async function allReduceGradients(params: ReadonlyArray<TorchTensor | [string, TorchTensor]>, options?: { op?: 'avg' | 'sum' }): Promise<void> {
  const fn = 'distributed.allReduceGradients';
  state('allReduceGradients');
  if (!Array.isArray(params)) throw typeError(fn, `params must be an array of TorchTensors, got ${describe(params)}`);
  const o = checkOptions(fn, options, ['op']);
  const op = o.op === undefined ? 'avg' : checkEnum(fn, 'op', o.op, ['avg', 'sum'] as const);
  const ps = params.map((p, i) => checkTorchTensor(fn, `params[${i}]`, Array.isArray(p) ? p[1] : p));
  const flats: TorchTensor[] = [];
  for (const p of ps) {
    const g = p.grad;
    flats.push(g ? (aten('reshape', g, [-1]) as TorchTensor) : (aten('zeros', [p.numel], { dtype: p.dtype, device: p.device }) as TorchTensor));
  }
  const flat = aten('cat', flats) as TorchTensor;
  for (const f of flats) f.dispose();
  try {
    await allReduce(flat, { op });
    let off = 0;
    for (const p of ps) {
      const part = aten('slice.Tensor', flat, 0, off, off + p.numel, 1) as TorchTensor;
      off += p.numel;
      const g = p.grad;
      if (g) {
        const view = part.reshape(p.shape);
        (aten('copy_', g, view) as TorchTensor).dispose();
        view.dispose();
        g.dispose();
      }
      part.dispose();
    }
  } finally {
    flat.dispose();
  }
}
