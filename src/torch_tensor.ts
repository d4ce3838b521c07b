// TorchTensor: the JS handle of an at::Tensor from the libtorch bridge, and
// the bridge loader (lazy: nothing loads libtorch until a function needs it).
import { AsyncLocalStorage } from 'node:async_hooks';
import { createRequire } from 'node:module';
import { checkOptions, checkShape, describe, rangeError, typeError } from './checks.js';
import { DisposedError, NativeLoadError } from './errors.js';
import { bridgeStatus } from './torch_status.js';
import type { ArrayFor } from './types.js';

const require = createRequire(import.meta.url);

/** dtypes a TorchTensor can have (torch's names, as the core spells them). */
export type TorchDType = 'float32' | 'float64' | 'bfloat16' | 'float16' | 'int32' | 'int64' | 'int16' | 'int8' | 'uint8' | 'bool';
/** `cpu`, `cuda` or `cuda:N`. */
export type TorchDevice = 'cpu' | 'cuda' | `cuda:${number}`;
export const TORCH_DTYPES: readonly TorchDType[] = ['float32', 'float64', 'bfloat16', 'float16', 'int32', 'int64', 'int16', 'int8', 'uint8', 'bool'];

/** What `toArray()` gives: 16-bit floats widen to float32, bool reads as uint8. */
export type TorchArrayFor<D extends TorchDType> = D extends 'float64'
  ? Float64Array
  : D extends 'int16'
    ? Int16Array
    : D extends 'int8'
      ? Int8Array
      : D extends 'bool'
        ? Uint8Array
        : ArrayFor<Exclude<D, 'float64' | 'int16' | 'int8' | 'bool'>>;

/** @internal The bridge's tensor handle. */
export interface NativeTorchTensor {
  readonly shape: number[];
  readonly dtype: TorchDType;
  readonly device: string;
  readonly disposed: boolean;
  requiresGrad: boolean;
  readonly grad: NativeTorchTensor | null;
  readonly isContiguous: boolean;
  readonly isLeaf: boolean;
  dispose(): void;
  read(): ArrayBuffer;
  readAsync(): Promise<ArrayBuffer>;
  backward(gradient: NativeTorchTensor | null, retainGraph: boolean): void;
  detach(): NativeTorchTensor;
  to(dtype: string | null, device: string | null, copy: boolean): NativeTorchTensor;
  zeroGrad(): void;
  dataPtr(): number;
  /** The first element's address while contiguous, else -1: what a core view of the tensor depends on. */
  viewKey(): number;
  toDLPack(): unknown;
}

/** @internal The bridge addon's functions. */
export interface BridgeNative {
  TorchTensor: new (...args: unknown[]) => NativeTorchTensor;
  fromData(shape: number[], dtype: string, device: string, data: ArrayBufferView, requiresGrad: boolean): NativeTorchTensor;
  fromDLPack(capsule: unknown): NativeTorchTensor;
  aten(name: string, args: unknown[], kwargs?: Record<string, unknown>): unknown;
  setGradEnabled(on: boolean): boolean;
  isGradEnabled(): boolean;
  manualSeed(seed: number | bigint): void;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setDisposedErrorClass(ctor: new (message: string) => Error): void;
  setRecyclePool?(pool: NativeTorchTensor[]): void;
  buildInfo(): { torchVersion: string; cudaKernels: boolean; torchHasCuda: boolean; liveTensors: number; threads: number };
  tokenLogprobs(
    logits: NativeTorchTensor, targets: NativeTorchTensor, temperature: number, temperatureTensor: NativeTorchTensor | null,
    ignoreIndex: number, entropy: boolean,
  ): [NativeTorchTensor, NativeTorchTensor | null];
  linearLogprobs(
    hidden: NativeTorchTensor, weight: NativeTorchTensor, bias: NativeTorchTensor | null, targets: NativeTorchTensor, temperature: number,
    temperatureTensor: NativeTorchTensor | null, ignoreIndex: number, entropy: boolean, chunkSize: number,
  ): [NativeTorchTensor, NativeTorchTensor | null];
  attachGrad(
    kind: number, value: NativeTorchTensor | unknown, input0: NativeTorchTensor, grad0: NativeTorchTensor,
    input1: NativeTorchTensor | null, grad1: NativeTorchTensor | null,
  ): NativeTorchTensor;
  JitModule: new (path: string, device: string | null) => NativeJitModule;
  AdamW: new (params: NativeTorchTensor[], lr: number, beta1: number, beta2: number, eps: number, weightDecay: number) => NativeAdamW;
}

/** @internal */
export interface NativeJitModule {
  forward(args: unknown[]): unknown;
  namedParameters(): Array<[string, NativeTorchTensor]>;
  train(mode: boolean): void;
  readonly training: boolean;
  to(device: string | null, dtype: string | null): void;
  save(path: string): void;
}

/** @internal */
export interface NativeAdamW {
  step(): void;
  zeroGrad(setToNone: boolean): void;
  lr: number;
}

let loaded: BridgeNative | undefined;

// Disposed handles the bridge reuses for new tensors (spares napi_wrap's reference and finaliser); bounded.
const RECYCLE: NativeTorchTensor[] = [];
const RECYCLE_MAX = 64;

/**
 * @internal The bridge, loaded on first use.
 * @throws NativeLoadError when it is not built, was built for another torch, or fails to load: says what to do.
 */
export function bridge(): BridgeNative {
  if (loaded) return loaded;
  const st = bridgeStatus();
  if (!st.loadable) throw new NativeLoadError(st.problem ?? 'rlkernels/torch: the bridge cannot be loaded');
  let b: BridgeNative;
  try {
    b = require(st.path) as BridgeNative;
  } catch (err) {
    throw new NativeLoadError(
      `rlkernels/torch: the bridge at ${st.path} (built against torch ${st.record?.torchVersion} in ${st.record?.torchLibDir}) failed to load: ` +
        `${err instanceof Error ? err.message.split('\n')[0] : String(err)}. Rebuild it with \`npx rlkernels build-torch\`.`,
      { cause: err },
    );
  }
  const compiled = b.buildInfo().torchVersion;
  const recorded = st.record?.torchVersion ?? '';
  if (recorded.split('+')[0] !== compiled.split('+')[0]) {
    throw new NativeLoadError(
      `rlkernels/torch: the bridge at ${st.path} was compiled against torch ${compiled} but its build record says ${recorded}: ` +
        'rebuild it with `npx rlkernels build-torch`.',
    );
  }
  b.setDisposedErrorClass(DisposedError);
  b.setRecyclePool?.(RECYCLE);
  loaded = b;
  return b;
}

const scopeStore = new AsyncLocalStorage<Set<TorchTensor>>();

function isNativeTorchTensor(v: unknown): v is NativeTorchTensor {
  return loaded !== undefined && v instanceof loaded.TorchTensor;
}

/** @internal What the bridge already knows of a new handle (spares reading it back through accessors). */
export interface TorchTensorMeta {
  readonly shape: readonly number[];
  readonly dtype: TorchDType;
  readonly device: TorchDevice;
}

/** @internal A resource that lives exactly as long as a TorchTensor's handle (torch.ts's cached core view). */
export interface TorchCompanion {
  readonly key: number;
  dispose(): void;
}

/** A torch tensor (an `at::Tensor` held by the bridge). */
export class TorchTensor<D extends TorchDType = TorchDType> implements Disposable {
  #h: NativeTorchTensor | null;
  #companion: TorchCompanion | null = null;
  /** Sizes of each dimension; `[]` for a 0-d tensor. */
  readonly shape: readonly number[];
  readonly dtype: D;
  /** `'cpu'` or `'cuda:N'`. */
  readonly device: TorchDevice;
  readonly numel: number;

  /**
   * @internal Wraps a bridge handle; use the factories of `rlkernels/torch`. `meta`, when the caller knows
   * the handle's shape, dtype and device (a DLPack view of a core tensor), spares three native reads.
   */
  constructor(handle: NativeTorchTensor, meta?: TorchTensorMeta) {
    if (!isNativeTorchTensor(handle)) throw new TypeError('TorchTensor: construct tensors with the rlkernels/torch factories');
    this.#h = handle;
    this.shape = Object.freeze((meta ?? handle).shape.slice());
    this.dtype = (meta ?? handle).dtype as D;
    this.device = (meta ?? handle).device as TorchDevice;
    this.numel = this.shape.reduce((a, b) => a * b, 1);
    scopeStore.getStore()?.add(this);
  }

  /** @internal The companion kept with this handle (or null). */
  companion(): TorchCompanion | null {
    return this.#companion;
  }

  /** @internal Replaces the companion (disposing the previous one); disposed with the handle. */
  setCompanion(c: TorchCompanion | null): void {
    if (this.#companion !== null && this.#companion !== c) this.#companion.dispose();
    this.#companion = c;
  }

  get disposed(): boolean {
    return this.#h === null;
  }

  /** @internal The bridge handle; throws DisposedError after dispose. */
  handle(fn: string, name = 'tensor'): NativeTorchTensor {
    if (this.#h === null) throw new DisposedError(`${fn}: ${name} was disposed`);
    return this.#h;
  }

  /** Whether autograd records operations on this tensor (settable on leaves). */
  get requiresGrad(): boolean {
    return this.handle('requiresGrad').requiresGrad;
  }
  set requiresGrad(v: boolean) {
    if (typeof v !== 'boolean') throw typeError('requiresGrad', `value must be a boolean, got ${describe(v)}`);
    this.handle('requiresGrad').requiresGrad = v;
  }

  /** The gradient accumulated by `backward()` (a leaf's), or null. A new handle on each read. */
  get grad(): TorchTensor | null {
    const g = this.handle('grad').grad;
    return g ? new TorchTensor(g) : null;
  }

  get isContiguous(): boolean {
    return this.handle('isContiguous').isContiguous;
  }

  get isLeaf(): boolean {
    return this.handle('isLeaf').isLeaf;
  }

  /**
   * Backpropagates from this tensor, accumulating into the leaves' `grad`.
   * @param gradient The upstream gradient; needed unless the tensor has one element.
   */
  backward(gradient?: TorchTensor, options?: { retainGraph?: boolean }): void {
    const fn = 'backward';
    const o = checkOptions(fn, options, ['retainGraph']);
    if (o.retainGraph !== undefined && typeof o.retainGraph !== 'boolean') throw typeError(fn, `retainGraph must be a boolean, got ${describe(o.retainGraph)}`);
    const g = gradient === undefined ? null : checkTorchTensor(fn, 'gradient', gradient).handle(fn, 'gradient');
    this.handle(fn).backward(g, o.retainGraph === true);
  }

  /** A tensor sharing this one's memory, outside the autograd graph. */
  detach(): TorchTensor<D> {
    return new TorchTensor<D>(this.handle('detach').detach());
  }

  /** Resets the accumulated gradient (to none). */
  zeroGrad(): void {
    this.handle('zeroGrad').zeroGrad();
  }

  /** The tensor on another device and/or of another dtype (itself, as a new handle, when nothing changes). */
  to<T extends TorchDType = D>(target: TorchDevice | { dtype?: T; device?: TorchDevice; copy?: boolean }): TorchTensor<T> {
    const fn = 'to';
    const h = this.handle(fn);
    if (typeof target === 'string') return new TorchTensor<T>(h.to(null, target, false));
    const o = checkOptions(fn, target, ['dtype', 'device', 'copy'], 'target');
    if (o.dtype !== undefined && !TORCH_DTYPES.includes(o.dtype as TorchDType)) {
      throw rangeError(fn, `dtype must be one of ${TORCH_DTYPES.map((d) => `'${d}'`).join(', ')}, got ${describe(o.dtype)}`);
    }
    if (o.copy !== undefined && typeof o.copy !== 'boolean') throw typeError(fn, `copy must be a boolean, got ${describe(o.copy)}`);
    return new TorchTensor<T>(h.to((o.dtype as string) ?? null, (o.device as string) ?? null, o.copy === true));
  }

  /** A contiguous tensor with the same values (this one, as a new handle, when it already is). */
  contiguous(): TorchTensor<D> {
    return aten('contiguous', this) as TorchTensor<D>;
  }

  /** A tensor of another shape with the same elements (a view when the strides allow). */
  reshape(shape: readonly number[]): TorchTensor<D> {
    const s = checkShape('reshape', 'shape', shape as unknown);
    return aten('reshape', this, s) as TorchTensor<D>;
  }

  /** Copies the data to the host without blocking the event loop. */
  async toArray(): Promise<TorchArrayFor<D>> {
    return wrapBuffer(this.dtype, await this.handle('toArray').readAsync()) as TorchArrayFor<D>;
  }

  toArraySync(): TorchArrayFor<D> {
    return wrapBuffer(this.dtype, this.handle('toArraySync').read()) as TorchArrayFor<D>;
  }

  async item(): Promise<number> {
    this.checkOne('item');
    return Number((await this.toArray())[0]);
  }

  itemSync(): number {
    this.checkOne('itemSync');
    return Number(this.toArraySync()[0]);
  }

  /** @internal Address of the first element, for tests that check memory is shared. */
  dataPtr(): number {
    return this.handle('dataPtr').dataPtr();
  }

  /** Releases this handle now (idempotent); the memory goes when no other handle, view or core tensor holds it. */
  dispose(): void {
    if (this.#h === null) return;
    this.setCompanion(null);
    const h = this.#h;
    h.dispose();
    this.#h = null;
    if (RECYCLE.length < RECYCLE_MAX) RECYCLE.push(h);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `TorchTensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}, device=${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  private checkOne(fn: string): void {
    this.handle(fn);
    if (this.numel !== 1) throw rangeError(fn, `tensor must have one element, got shape [${this.shape.join(', ')}]`);
  }
}

function wrapBuffer(dtype: TorchDType, buf: ArrayBuffer): ArrayBufferView {
  switch (dtype) {
    case 'float64':
      return new Float64Array(buf);
    case 'int64':
      return new BigInt64Array(buf);
    case 'int32':
      return new Int32Array(buf);
    case 'int16':
      return new Int16Array(buf);
    case 'int8':
      return new Int8Array(buf);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buf);
    default:
      return new Float32Array(buf);
  }
}

export function checkTorchTensor(fn: string, name: string, v: unknown): TorchTensor {
  if (!(v instanceof TorchTensor)) throw typeError(fn, `${name} must be a TorchTensor, got ${describe(v)}`);
  if (v.disposed) throw new DisposedError(`${fn}: ${name} was disposed`);
  return v;
}

/** JS arguments to bridge arguments: TorchTensors to handles, recursively in arrays. */
function toNative(fn: string, v: unknown, depth = 0): unknown {
  if (v instanceof TorchTensor) return v.handle(fn, 'an argument');
  if (Array.isArray(v) && depth < 2) return v.map((x) => toNative(fn, x, depth + 1));
  return v;
}

/** Bridge results to JS: handles to TorchTensors, recursively in arrays. */
export function fromNative(v: unknown): unknown {
  if (isNativeTorchTensor(v)) return new TorchTensor(v);
  if (Array.isArray(v)) return v.map(fromNative);
  return v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof TorchTensor) && !ArrayBuffer.isView(v) &&
    (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);
}

/**
 * Calls an aten operator by its schema name (`'softmax.int'`, `'index_select'`, `'aten::mul.Tensor'`) with
 * positional arguments and, as a last plain-object argument, keyword arguments: the escape hatch beneath the
 * few tensor ops this module names. Runs under autograd like any torch op.
 * @throws RangeError for an unknown operator or a value torch refuses; TypeError for an argument of the wrong kind.
 */
export function aten(name: string, ...args: unknown[]): unknown {
  if (typeof name !== 'string') throw typeError('aten', `name must be an operator name such as 'softmax.int', got ${describe(name)}`);
  const fn = `aten.${name}`;
  let kwargs: Record<string, unknown> | undefined;
  if (args.length && isPlainObject(args[args.length - 1])) {
    kwargs = {};
    for (const [k, v] of Object.entries(args.pop() as Record<string, unknown>)) kwargs[k] = toNative(fn, v);
  }
  return fromNative(bridge().aten(name, args.map((a) => toNative(fn, a)), kwargs));
}

/** Runs `fn`, then disposes every TorchTensor created inside it except those it returns or `keep`s (as `rlk.scope`). */
export function scope<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw typeError('scope', `fn must be a function, got ${describe(fn)}`);
  const created = new Set<TorchTensor>();
  const close = (result: unknown): void => {
    const kept = new Set<TorchTensor>();
    collect(result, kept);
    const parent = scopeStore.getStore();
    for (const t of created) {
      if (kept.has(t)) parent?.add(t);
      else t.dispose();
    }
  };
  let result: T;
  try {
    result = scopeStore.run(created, fn);
  } catch (err) {
    close(undefined);
    throw err;
  }
  if (result instanceof Promise) {
    return result.then(
      (v) => {
        close(v);
        return v;
      },
      (err) => {
        close(undefined);
        throw err;
      },
    ) as T;
  }
  close(result);
  return result;
}

function collect(v: unknown, out: Set<TorchTensor>, depth = 0): void {
  if (depth > 4 || v === null || typeof v !== 'object') return;
  if (v instanceof TorchTensor) {
    out.add(v);
    return;
  }
  if (ArrayBuffer.isView(v)) return;
  for (const x of Array.isArray(v) ? v : Object.values(v)) collect(x, out, depth + 1);
}

/** Exempts a TorchTensor from the enclosing scope's disposal. */
export function keep<T extends TorchTensor>(t: T): T {
  if (!(t instanceof TorchTensor)) throw typeError('keep', `t must be a TorchTensor, got ${describe(t)}`);
  scopeStore.getStore()?.delete(t);
  return t;
}
