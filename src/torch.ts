// `rlkernels/torch` (DESIGN 7): the package's kernels as autograd functions on
// libtorch tensors, zero-copy exchange with core tensors (DLPack), TorchScript
// models, AdamW and the few tensor ops a trainer needs around the kernels.
//
// The bridge addon (native/torch/) is loaded on first use, never at import:
// importing works everywhere, and the first call says how to build the bridge
// where it is missing (`bridgeStatus()` reports without loading libtorch).
//
// tokenLogprobs and linearLogprobs run in the bridge on the tensors' memory. The loss families
// (policyLoss, klPenalty, vocabDivergence; groupAdvantages, no gradient) run
// the core function on DLPack views of the tensors, so their options,
// defaults, checks and modes are the core's own, and the bridge attaches the
// gradient the core returns as the value's grad_fn.
import { checkBoolean, checkNumber, checkOptions, checkShape, describe, rangeError, typeError } from './checks.js';
import { groupAdvantages as coreGroupAdvantages, type GroupAdvantagesOptions } from './group_advantages.js';
import {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_IGNORE_INDEX as LINEAR_DEFAULT_IGNORE_INDEX,
  DEFAULT_TEMPERATURE as LINEAR_DEFAULT_TEMPERATURE,
  MAX_CHUNK_SIZE,
} from './linear_logprobs.js';
import { klPenalty as coreKlPenalty, type KlPenaltyOptions } from './kl_penalty.js';
import { native, type NativeTensor } from './native.js';
import { policyLoss as corePolicyLoss, type PolicyLossOptions, type PolicyLossStats } from './policy_loss.js';
import { keep as keepCore, Tensor } from './tensor.js';
import { DEFAULT_IGNORE_INDEX, DEFAULT_TEMPERATURE } from './token_logprobs.js';
import {
  aten,
  bridge,
  checkTorchTensor,
  keep,
  scope,
  TorchTensor,
  TORCH_DTYPES,
  type NativeAdamW,
  type TorchDType,
  type TorchDevice,
} from './torch_tensor.js';
import { vocabDivergence as coreVocabDivergence, type VocabDivergenceOptions } from './vocab_divergence.js';
import * as jit from './torch_jit.js';
import * as distributed from './torch_distributed.js';

export { bridgeStatus, bridgeDir, type BridgeStatus, type TorchBuildRecord } from './torch_status.js';
export { TorchTensor, aten, scope, keep, TORCH_DTYPES, jit, distributed };
export type { TorchDType, TorchDevice, TorchArrayFor } from './torch_tensor.js';
export type { JitModule, JitLoadOptions } from './torch_jit.js';

import { bridgeStatus } from './torch_status.js';

/** True when the bridge is built for the torch found now (does not load it). */
export function isAvailable(): boolean {
  return bridgeStatus().loadable;
}

/**
 * Loads the bridge now (it otherwise loads on first use) and returns what it was built with.
 * @throws NativeLoadError when it is not built or was built for another torch, saying what to do.
 */
export function load(): { torchVersion: string; cudaKernels: boolean; torchHasCuda: boolean; threads: number } {
  const { torchVersion, cudaKernels, torchHasCuda, threads } = bridge().buildInfo();
  return { torchVersion, cudaKernels, torchHasCuda, threads };
}

// ---- creation and conversion ------------------------------------------------------

export interface TorchTensorOptions {
  /** Defaults to `[data.length]`, or the nesting of nested arrays. */
  shape?: readonly number[];
  /** Defaults to the typed array's type (`float32` for Float32Array, Float64Array and numbers; `int64` for bigints). */
  dtype?: TorchDType;
  /** Defaults to `'cpu'`. */
  device?: TorchDevice;
  /** Defaults to `false`. */
  requiresGrad?: boolean;
}

type Data = number | bigint | readonly Data[] | Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Int16Array;

function flatten(fn: string, data: unknown): { flat: Float64Array | BigInt64Array; shape: number[] } {
  const shape: number[] = [];
  let probe: unknown = data;
  while (Array.isArray(probe)) {
    shape.push(probe.length);
    if (probe.length === 0) break;
    probe = probe[0];
  }
  const n = shape.reduce((a, b) => a * b, 1);
  const big = typeof probe === 'bigint';
  const flat = big ? new BigInt64Array(n) : new Float64Array(n);
  let k = 0;
  const walk = (v: unknown, d: number): void => {
    if (d === shape.length) {
      if (big ? typeof v !== 'bigint' : typeof v !== 'number') throw typeError(fn, `data must hold ${big ? 'bigints' : 'numbers'} only, got ${describe(v)}`);
      flat[k++] = v as never;
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[d]) throw rangeError(fn, `data must be a rectangular nested array, got ${describe(v)} at depth ${d}`);
    for (const x of v) walk(x, d + 1);
  };
  walk(data, 0);
  return { flat, shape };
}

/**
 * A TorchTensor from JS data (nested arrays, a typed array or a scalar), copied.
 * @throws TypeError/RangeError for data, shape or options that do not fit.
 */
export function tensor(data: Data, options?: TorchTensorOptions): TorchTensor {
  const fn = 'tensor';
  const o = checkOptions(fn, options, ['shape', 'dtype', 'device', 'requiresGrad']);
  let flat: ArrayBufferView;
  let shape: number[];
  if (ArrayBuffer.isView(data)) {
    if (!(data instanceof Float32Array || data instanceof Float64Array || data instanceof Int32Array || data instanceof BigInt64Array ||
      data instanceof Uint8Array || data instanceof Int8Array || data instanceof Int16Array)) {
      throw typeError(fn, `data must be an array, a number or a Float32Array, Float64Array, Int32Array, BigInt64Array, Uint8Array, Int8Array or Int16Array, got ${describe(data)}`);
    }
    flat = data;
    shape = [(data as Float32Array).length];
  } else if (typeof data === 'number' || typeof data === 'bigint') {
    const r = flatten(fn, [data]);
    flat = r.flat;
    shape = [];
  } else if (Array.isArray(data)) {
    const r = flatten(fn, data);
    flat = r.flat;
    shape = r.shape;
  } else {
    throw typeError(fn, `data must be an array, a number or a typed array, got ${describe(data)}`);
  }
  let dtype: TorchDType;
  if (o.dtype !== undefined) {
    if (!TORCH_DTYPES.includes(o.dtype as TorchDType)) throw rangeError(fn, `dtype must be one of ${TORCH_DTYPES.map((d) => `'${d}'`).join(', ')}, got ${describe(o.dtype)}`);
    dtype = o.dtype as TorchDType;
  } else {
    dtype = flat instanceof BigInt64Array ? 'int64' : flat instanceof Int32Array ? 'int32' : flat instanceof Uint8Array ? 'uint8'
      : flat instanceof Int8Array ? 'int8' : flat instanceof Int16Array ? 'int16' : 'float32';
  }
  if (o.shape !== undefined) {
    shape = checkShape(fn, 'shape', o.shape);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== (flat as Float32Array).length) throw rangeError(fn, `shape [${shape.join(', ')}] needs ${n} elements, data has ${(flat as Float32Array).length}`);
  }
  const requiresGrad = o.requiresGrad === undefined ? false : checkBoolean(fn, 'requiresGrad', o.requiresGrad);
  return new TorchTensor(bridge().fromData(shape, dtype, (o.device as string) ?? 'cpu', flat, requiresGrad));
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], options?: { dtype?: TorchDType; device?: TorchDevice; requiresGrad?: boolean }): TorchTensor {
  const o = checkOptions('zeros', options, ['dtype', 'device', 'requiresGrad']);
  const t = aten('zeros', checkShape('zeros', 'shape', shape as unknown), { dtype: o.dtype ?? 'float32', device: o.device ?? 'cpu' }) as TorchTensor;
  if (o.requiresGrad !== undefined) t.requiresGrad = checkBoolean('zeros', 'requiresGrad', o.requiresGrad);
  return t;
}

/** A tensor of `value`. */
export function full(shape: readonly number[], value: number, options?: { dtype?: TorchDType; device?: TorchDevice }): TorchTensor {
  const o = checkOptions('full', options, ['dtype', 'device']);
  checkNumber('full', 'value', value);
  return aten('full', checkShape('full', 'shape', shape as unknown), value, { dtype: o.dtype ?? 'float32', device: o.device ?? 'cpu' }) as TorchTensor;
}

/**
 * A TorchTensor sharing a core tensor's memory (DLPack, no copy). The memory lives while either side holds it.
 * @throws TypeError for something that is not a live core tensor.
 */
export function fromCore(t: Tensor): TorchTensor {
  const fn = 'fromCore';
  if (!(t instanceof Tensor)) throw typeError(fn, `t must be a core tensor (rlkernels), got ${describe(t)}`);
  const capsule = (native as unknown as { toDLPack(h: NativeTensor): unknown }).toDLPack(t.handle(fn, 't'));
  return new TorchTensor(bridge().fromDLPack(capsule));
}

/**
 * A core tensor sharing a TorchTensor's memory (DLPack, no copy): contiguous tensors of the core's dtypes only.
 * Autograd does not see through it (the core tensor holds values).
 * @throws TypeError for a non-contiguous tensor or a dtype the core lacks (bool masks: `.to({ dtype: 'uint8' })`).
 */
export function toCore(t: TorchTensor): Tensor {
  const fn = 'toCore';
  const h = checkTorchTensor(fn, 't', t).handle(fn, 't');
  if (!h.isContiguous) throw typeError(fn, `t must be contiguous (core tensors are row-major), got ${describe(t)}; call .contiguous() first`);
  const n = native as unknown as { fromDLPack(c: unknown): NativeTensor };
  return new Tensor(n.fromDLPack(h.toDLPack()));
}

// ---- the trainer's tensor ops -----------------------------------------------------

/** Concatenation along `dim` (default 0). */
export function cat(tensors: readonly TorchTensor[], dim = 0): TorchTensor {
  if (!Array.isArray(tensors)) throw typeError('cat', `tensors must be an array of TorchTensors, got ${describe(tensors)}`);
  tensors.forEach((t, i) => checkTorchTensor('cat', `tensors[${i}]`, t));
  return aten('cat', tensors, checkNumber('cat', 'dim', dim, { integer: true })) as TorchTensor;
}

/** Rows `index` (int64/int32 1-D) of `t` along dimension 0 (`index_select`). */
export function indexRows(t: TorchTensor, index: TorchTensor): TorchTensor {
  checkTorchTensor('indexRows', 't', t);
  checkTorchTensor('indexRows', 'index', index);
  return aten('index_select', t, 0, index) as TorchTensor;
}

/** `t[start:end]` along `dim` (a view). */
export function slice(t: TorchTensor, dim: number, start: number, end: number): TorchTensor {
  checkTorchTensor('slice', 't', t);
  return aten('slice.Tensor', t, dim, start, end, 1) as TorchTensor;
}

/** Softmax along `dim` (default -1). */
export function softmax(t: TorchTensor, dim = -1): TorchTensor {
  checkTorchTensor('softmax', 't', t);
  return aten('softmax.int', t, checkNumber('softmax', 'dim', dim, { integer: true })) as TorchTensor;
}

/** Log-softmax along `dim` (default -1). */
export function logSoftmax(t: TorchTensor, dim = -1): TorchTensor {
  checkTorchTensor('logSoftmax', 't', t);
  return aten('log_softmax.int', t, checkNumber('logSoftmax', 'dim', dim, { integer: true })) as TorchTensor;
}

/** `numSamples` indices per row drawn from the rows of `probs` (torch's generator: `manualSeed` fixes it). */
export function multinomial(probs: TorchTensor, numSamples: number, options?: { replacement?: boolean }): TorchTensor {
  checkTorchTensor('multinomial', 'probs', probs);
  const o = checkOptions('multinomial', options, ['replacement']);
  return aten('multinomial', probs, checkNumber('multinomial', 'numSamples', numSamples, { integer: true, min: 1 }), o.replacement === true) as TorchTensor;
}

/** Index of the largest value along `dim` (default -1). */
export function argmax(t: TorchTensor, dim = -1, keepdim = false): TorchTensor {
  checkTorchTensor('argmax', 't', t);
  return aten('argmax', t, checkNumber('argmax', 'dim', dim, { integer: true }), keepdim) as TorchTensor;
}

/** Runs `fn` with autograd recording off (the synchronous part of `fn`), as `with torch.no_grad()`. */
export function noGrad<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw typeError('noGrad', `fn must be a function, got ${describe(fn)}`);
  const b = bridge();
  const prev = b.setGradEnabled(false);
  try {
    return fn();
  } finally {
    b.setGradEnabled(prev);
  }
}

/** Seeds torch's default generators (sampling, initialisation). */
export function manualSeed(seed: number): void {
  bridge().manualSeed(checkNumber('manualSeed', 'seed', seed, { integer: true, min: 0 }));
}

/** libtorch's intra-op thread count (torch.set_num_threads), and the bridge's own kernels' (tokenLogprobs, linearLogprobs, the distributed shards). */
export function setNumThreads(n: number): void {
  bridge().setNumThreads(checkNumber('setNumThreads', 'n', n, { integer: true, min: 1 }));
}

// ---- optimizers ----------------------------------------------------------------------

export interface AdamWOptions {
  /** Defaults to `1e-3`. */
  lr?: number;
  /** Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Defaults to `1e-8`. */
  eps?: number;
  /** Decoupled weight decay. Defaults to `1e-2` (torch's). */
  weightDecay?: number;
}

class AdamW {
  #o: NativeAdamW;
  /**
   * torch.optim.AdamW over `params` (TorchTensors, or `[name, tensor]` pairs from `namedParameters()`).
   * @throws TypeError for parameters that are not floating-point leaf TorchTensors; RangeError for bad options.
   */
  constructor(params: ReadonlyArray<TorchTensor | [string, TorchTensor]>, options?: AdamWOptions) {
    const fn = 'optim.AdamW';
    if (!Array.isArray(params) || params.length === 0) throw typeError(fn, `params must be a non-empty array of TorchTensors, got ${describe(params)}`);
    const o = checkOptions(fn, options, ['lr', 'betas', 'eps', 'weightDecay']);
    const lr = o.lr === undefined ? 1e-3 : checkNumber(fn, 'lr', o.lr, { min: 0 });
    let betas: [number, number] = [0.9, 0.999];
    if (o.betas !== undefined) {
      if (!Array.isArray(o.betas) || o.betas.length !== 2) throw typeError(fn, `betas must be [beta1, beta2], got ${describe(o.betas)}`);
      betas = [checkNumber(fn, 'betas[0]', o.betas[0], { min: 0, max: 0.999999 }), checkNumber(fn, 'betas[1]', o.betas[1], { min: 0, max: 0.999999 })];
    }
    const eps = o.eps === undefined ? 1e-8 : checkNumber(fn, 'eps', o.eps, { greaterThan: 0 });
    const wd = o.weightDecay === undefined ? 1e-2 : checkNumber(fn, 'weightDecay', o.weightDecay, { min: 0 });
    const handles = params.map((p, i) => {
      const t = Array.isArray(p) ? p[1] : p;
      return checkTorchTensor(fn, `params[${i}]`, t).handle(fn, `params[${i}]`);
    });
    const B = bridge();
    this.#o = new B.AdamW(handles, lr, betas[0], betas[1], eps, wd);
  }
  /** One update from the parameters' accumulated gradients. */
  step(): void {
    this.#o.step();
  }
  /** Clears the gradients (to none, as torch's default). */
  zeroGrad(): void {
    this.#o.zeroGrad(true);
  }
  get lr(): number {
    return this.#o.lr;
  }
  set lr(v: number) {
    this.#o.lr = checkNumber('lr', 'value', v, { min: 0 });
  }
}

export const optim = { AdamW };
export type { AdamW };

// ---- kernels as autograd functions --------------------------------------------------

export interface TorchTokenLogprobsOptions {
  /** A positive number, or a float32 TorchTensor of one value per row. Defaults to `1`. */
  temperature?: number | TorchTensor;
  /** Also return the entropy (differentiable too). Defaults to `false`. */
  entropy?: boolean;
  /** Rows whose target equals this give 0 and get zero gradient. Defaults to `-100`. */
  ignoreIndex?: number;
}

/**
 * Token log-probs (and entropy) of `targets` under `softmax(logits / T)` as an autograd function (DESIGN 3.1):
 * `backward()` reaches the logits through the package's fused backward kernel.
 * @throws TypeError for a non-TorchTensor, a wrong dtype or device, a non-contiguous tensor, an unknown option;
 *   RangeError for shapes, targets out of range, bad temperatures; DisposedError for a disposed tensor.
 */
export function tokenLogprobs(logits: TorchTensor, targets: TorchTensor, options?: TorchTokenLogprobsOptions): { logprobs: TorchTensor; entropy?: TorchTensor } {
  const fn = 'tokenLogprobs';
  const l = checkTorchTensor(fn, 'logits', logits);
  const t = checkTorchTensor(fn, 'targets', targets);
  const o = checkOptions(fn, options, ['temperature', 'entropy', 'ignoreIndex']);
  let temperature = DEFAULT_TEMPERATURE;
  let tt: TorchTensor | null = null;
  if (o.temperature instanceof TorchTensor) tt = checkTorchTensor(fn, 'temperature', o.temperature);
  else if (o.temperature !== undefined) temperature = checkNumber(fn, 'temperature', o.temperature, { greaterThan: 0 });
  const entropy = o.entropy === undefined ? false : checkBoolean(fn, 'entropy', o.entropy);
  const ignoreIndex = o.ignoreIndex === undefined ? DEFAULT_IGNORE_INDEX
    : checkNumber(fn, 'ignoreIndex', o.ignoreIndex, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
  if (!['float32', 'bfloat16', 'float16'].includes(l.dtype)) throw typeError(fn, `logits must be float32, bfloat16 or float16, got ${l.dtype}`);
  if (t.dtype !== 'int32' && t.dtype !== 'int64') throw typeError(fn, `targets must be int32 or int64, got ${t.dtype}`);
  const [lp, ent] = bridge().tokenLogprobs(l.handle(fn, 'logits'), t.handle(fn, 'targets'), temperature, tt ? tt.handle(fn, 'temperature') : null, ignoreIndex, entropy);
  const meta = { shape: t.shape, dtype: 'float32', device: l.device } as const;
  const r: { logprobs: TorchTensor; entropy?: TorchTensor } = { logprobs: new TorchTensor(lp, meta) };
  if (ent) r.entropy = new TorchTensor(ent, meta);
  return r;
}

export interface TorchLinearLogprobsOptions {
  /** A positive number, or a float32 TorchTensor of one value per row. Defaults to `1`. */
  temperature?: number | TorchTensor;
  /** Also return the entropy (differentiable too). Defaults to `false`. */
  entropy?: boolean;
  /** `[V]` in the weight's dtype, added to the logits; gets a gradient when it requires grad. */
  bias?: TorchTensor;
  /** Rows whose target equals this give 0 and get zero gradient. Defaults to `-100`. */
  ignoreIndex?: number;
  /** Rows per chunk (memory beyond inputs and outputs grows with it). Defaults to `0`: the kernel's choice. */
  chunkSize?: number;
}

/**
 * Fused linear log-probs (DESIGN 3.2) as an autograd function: the log-probs (and entropy) of `targets` under
 * `softmax((hidden @ weight^T + bias) / T)` without the `[N, V]` logits; `backward()` fills the gradients of
 * `hidden`, `weight` (and `bias`) through the core's fused backward kernel (native/cpu/linear_logprobs.cc).
 * `hidden` is `[..., H]`, `weight` `[V, H]` of its dtype, `targets` of `hidden`'s leading shape.
 * @throws TypeError for a non-TorchTensor, a wrong dtype or device, a non-contiguous tensor, an unknown option;
 *   RangeError for shapes, targets out of range, bad temperatures or chunk sizes; DisposedError for a disposed tensor.
 */
export function linearLogprobs(
  hidden: TorchTensor, weight: TorchTensor, targets: TorchTensor, options?: TorchLinearLogprobsOptions,
): { logprobs: TorchTensor; entropy?: TorchTensor } {
  const fn = 'linearLogprobs';
  const h = checkTorchTensor(fn, 'hidden', hidden);
  const w = checkTorchTensor(fn, 'weight', weight);
  const t = checkTorchTensor(fn, 'targets', targets);
  const o = checkOptions(fn, options, ['temperature', 'entropy', 'bias', 'ignoreIndex', 'chunkSize']);
  let temperature = LINEAR_DEFAULT_TEMPERATURE;
  let tt: TorchTensor | null = null;
  if (o.temperature instanceof TorchTensor) tt = checkTorchTensor(fn, 'temperature', o.temperature);
  else if (o.temperature !== undefined) temperature = checkNumber(fn, 'temperature', o.temperature, { greaterThan: 0 });
  const entropy = o.entropy === undefined ? false : checkBoolean(fn, 'entropy', o.entropy);
  const ignoreIndex = o.ignoreIndex === undefined ? LINEAR_DEFAULT_IGNORE_INDEX
    : checkNumber(fn, 'ignoreIndex', o.ignoreIndex, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
  const chunk = o.chunkSize === undefined ? DEFAULT_CHUNK_SIZE : checkNumber(fn, 'chunkSize', o.chunkSize, { integer: true, min: 0, max: MAX_CHUNK_SIZE });
  const b = o.bias === undefined ? null : checkTorchTensor(fn, 'bias', o.bias);
  if (!['float32', 'bfloat16', 'float16'].includes(h.dtype)) throw typeError(fn, `hidden must be float32, bfloat16 or float16, got ${h.dtype}`);
  if (w.dtype !== h.dtype) throw typeError(fn, `weight must be ${h.dtype} like hidden, got ${w.dtype}`);
  if (t.dtype !== 'int32' && t.dtype !== 'int64') throw typeError(fn, `targets must be int32 or int64, got ${t.dtype}`);
  const [lp, ent] = bridge().linearLogprobs(
    h.handle(fn, 'hidden'), w.handle(fn, 'weight'), b ? b.handle(fn, 'bias') : null, t.handle(fn, 'targets'), temperature,
    tt ? tt.handle(fn, 'temperature') : null, ignoreIndex, entropy, chunk,
  );
  const meta = { shape: t.shape, dtype: 'float32', device: h.device } as const;
  const r: { logprobs: TorchTensor; entropy?: TorchTensor } = { logprobs: new TorchTensor(lp, meta) };
  if (ent) r.entropy = new TorchTensor(ent, meta);
  return r;
}

const coreNative = native as unknown as { toDLPack(h: NativeTensor): unknown; fromDLPack(c: unknown): NativeTensor };

const CORE_DTYPES: readonly TorchDType[] = ['float32', 'bfloat16', 'float16', 'int32', 'int64', 'uint8'];

// A TorchTensor's core view, kept on the TorchTensor (its companion) while the
// tensor's memory stays where it was: the core-backed functions then make no
// DLPack capsule for an input they saw before. Disposed with the TorchTensor.
class CoreView {
  constructor(readonly key: number, readonly view: Tensor) {}
  dispose(): void {
    this.view.dispose();
  }
}

// The core view of a CPU TorchTensor, made once per memory address.
function coreView(fn: string, v: TorchTensor): Tensor {
  const h = v.handle(fn, 'a tensor argument');
  const key = h.viewKey();
  if (key < 0) throw typeError(fn, `tensors must be contiguous, got ${describe(v)}; call .contiguous() first`);
  const c = v.companion();
  if (c instanceof CoreView && c.key === key && !c.view.disposed) return c.view;
  // Not the caller's: no enclosing rlk.scope may dispose it.
  const view = keepCore(new Tensor(coreNative.fromDLPack(h.toDLPack())));
  v.setCompanion(new CoreView(key, view));
  return view;
}

// Core views of the TorchTensors found in a value (depth-limited, plain objects and arrays):
// the core functions then see their own tensor type and do all the option handling.
function coreViews(fn: string, v: unknown, depth = 0): unknown {
  if (v instanceof TorchTensor) {
    checkTorchTensor(fn, 'a tensor argument', v);
    if (v.device !== 'cpu') throw typeError(fn, `tensors must be on the CPU in this bridge (built without CUDA kernels), got ${describe(v)}`);
    if (v.dtype === 'bool') throw typeError(fn, `masks must be uint8, got a bool TorchTensor; convert with .to({ dtype: 'uint8' })`);
    if (!CORE_DTYPES.includes(v.dtype)) throw typeError(fn, `tensors must be float32, bfloat16, float16, int32, int64 or uint8, got ${describe(v)}`);
    return coreView(fn, v);
  }
  if (depth >= 3 || v === null || typeof v !== 'object' || ArrayBuffer.isView(v) || v instanceof Tensor) return v;
  if (Array.isArray(v)) return v.map((x) => coreViews(fn, x, depth + 1));
  if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) return v;
  const out: Record<string, unknown> = {};
  for (const k in v) out[k] = coreViews(fn, (v as Record<string, unknown>)[k], depth + 1);
  return out;
}

// A core result as a TorchTensor (DLPack, no copy); the core handle goes.
function toTorch(t: Tensor): TorchTensor {
  const h = bridge().fromDLPack(coreNative.toDLPack(t.handle('toTorch', 'result')));
  const tt = t.device === 'cpu' ? new TorchTensor(h, { shape: t.shape, dtype: t.dtype as TorchDType, device: 'cpu' }) : new TorchTensor(h);
  t.dispose();
  return tt;
}

function withViews<T>(fn: string, args: unknown[], body: (...core: unknown[]) => T): T {
  return body(...args.map((a) => coreViews(fn, a)));
}

enum GradKind {
  Scalar = 0,
  Elementwise = 1,
  PerRow = 2,
}

// The core result `value` as a TorchTensor whose grad_fn scales the precomputed gradients: its DLPack
// capsule goes straight into attachGrad (no intermediate handle); the core handle goes.
function attach(kind: GradKind, value: Tensor, in0: TorchTensor, g0: TorchTensor, in1?: TorchTensor, g1?: TorchTensor): TorchTensor {
  const fn = 'attachGrad';
  const capsule = coreNative.toDLPack(value.handle(fn, 'value'));
  const out = new TorchTensor(
    bridge().attachGrad(kind, capsule, in0.handle(fn), g0.handle(fn), in1 ? in1.handle(fn) : null, g1 ? g1.handle(fn) : null),
    value.device === 'cpu' ? { shape: value.shape, dtype: value.dtype as TorchDType, device: 'cpu' } : undefined,
  );
  value.dispose();
  return out;
}

export interface TorchPolicyLossInputs {
  logprobs: TorchTensor;
  oldLogprobs: TorchTensor;
  advantages: TorchTensor;
  mask?: TorchTensor;
  rolloutLogprobs?: TorchTensor;
  cuSeqlens?: TorchTensor;
}

export interface TorchPolicyLossResult {
  /** 0-d float32: the aggregated loss, differentiable with respect to `logprobs` (and `entropy.values`). */
  loss: TorchTensor;
  /** d loss / d logprobs as computed (no grad_fn). */
  grad: TorchTensor;
  /** d loss / d entropy, when an entropy term is given. */
  gradEntropy?: TorchTensor;
  readStats(): Promise<PolicyLossStats>;
}

/**
 * The policy loss of `rlk.policyLoss` (DESIGN 3.3, every mode and option of the core) as an autograd function:
 * `loss.backward()` reaches `logprobs` (and the entropy values) with the kernel's own gradient.
 * Options take TorchTensors where the core takes tensors (`kl.refLogprobs`, `entropy.values`, ...).
 * @throws as `rlk.policyLoss`; TypeError for a non-TorchTensor `logprobs` or a non-contiguous or CUDA tensor.
 */
export function policyLoss(inputs: TorchPolicyLossInputs, options?: PolicyLossOptions | Record<string, unknown>): TorchPolicyLossResult {
  const fn = 'policyLoss';
  if (typeof inputs !== 'object' || inputs === null) throw typeError(fn, `inputs must be an object of TorchTensors, got ${describe(inputs)}`);
  const logp = checkTorchTensor(fn, 'logprobs', (inputs as TorchPolicyLossInputs).logprobs);
  const entValues = (options as { entropy?: { values?: unknown } } | undefined)?.entropy?.values;
  const ent = entValues instanceof TorchTensor ? entValues : undefined;
  const r = withViews(fn, [inputs, options], (i, o) => corePolicyLoss(i as never, o as never));
  const grad = toTorch(r.grad);
  const gradEntropy = r.gradEntropy ? toTorch(r.gradEntropy) : undefined;
  const loss = attach(GradKind.Scalar, r.loss, logp, grad, ent && gradEntropy ? ent : undefined, ent && gradEntropy ? gradEntropy : undefined);
  const out: TorchPolicyLossResult = { loss, grad, readStats: r.readStats };
  if (gradEntropy) out.gradEntropy = gradEntropy;
  return out;
}

/**
 * Per-token KL penalty of `rlk.klPenalty` (DESIGN 3.4) as an autograd function of `logprobs`.
 * @throws as `rlk.klPenalty`.
 */
export function klPenalty(logprobs: TorchTensor, refLogprobs: TorchTensor, options: KlPenaltyOptions | Record<string, unknown>): { values: TorchTensor; grad: TorchTensor } {
  const fn = 'klPenalty';
  const lp = checkTorchTensor(fn, 'logprobs', logprobs);
  checkTorchTensor(fn, 'refLogprobs', refLogprobs);
  const r = withViews(fn, [logprobs, refLogprobs, options], (a, b, o) => coreKlPenalty(a as Tensor, b as Tensor, o as KlPenaltyOptions));
  const grad = toTorch(r.grad);
  return { values: attach(GradKind.Elementwise, r.values, lp, grad), grad };
}

/**
 * Per-row vocabulary divergence of `rlk.vocabDivergence` (DESIGN 3.5) as an autograd function of the student
 * logits, and of the teacher's when it requires grad (or `teacherGrad: true`).
 * @throws as `rlk.vocabDivergence`.
 */
export function vocabDivergence(
  studentLogits: TorchTensor,
  teacherLogits: TorchTensor,
  options: VocabDivergenceOptions | Record<string, unknown>,
): { values: TorchTensor; gradStudent: TorchTensor; gradTeacher?: TorchTensor } {
  const fn = 'vocabDivergence';
  const s = checkTorchTensor(fn, 'studentLogits', studentLogits);
  const t = checkTorchTensor(fn, 'teacherLogits', teacherLogits);
  let o = options as Record<string, unknown> | undefined;
  if (o && typeof o === 'object' && o.teacherGrad === undefined && t.requiresGrad) o = { ...o, teacherGrad: true };
  if (o && typeof o === 'object' && o.grad !== undefined) throw new TypeError(`${fn}: options.grad is not an option here (autograd needs the gradient), got ${String(o.grad)}`);
  const r = withViews(fn, [s, t, o], (a, b, c) => coreVocabDivergence(a as Tensor, b as Tensor, c as VocabDivergenceOptions & { grad?: true }));
  const gradStudent = toTorch(r.gradStudent);
  const gradTeacher = r.gradTeacher ? toTorch(r.gradTeacher) : undefined;
  const values = attach(GradKind.PerRow, r.values, s, gradStudent, gradTeacher ? t : undefined, gradTeacher);
  const out: { values: TorchTensor; gradStudent: TorchTensor; gradTeacher?: TorchTensor } = { values, gradStudent };
  if (gradTeacher) out.gradTeacher = gradTeacher;
  return out;
}

/**
 * Group advantages of `rlk.groupAdvantages` (DESIGN 3.6; no gradient) on TorchTensors.
 * @throws as `rlk.groupAdvantages`.
 */
export function groupAdvantages(rewards: TorchTensor, options: GroupAdvantagesOptions | Record<string, unknown>): { advantages: TorchTensor; informative: TorchTensor } {
  const fn = 'groupAdvantages';
  checkTorchTensor(fn, 'rewards', rewards);
  const r = withViews(fn, [rewards, options], (a, o) => coreGroupAdvantages(a as Tensor, o as GroupAdvantagesOptions));
  return { advantages: toTorch(r.advantages), informative: toTorch(r.informative) };
}
