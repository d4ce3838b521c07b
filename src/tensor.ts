// Core tensors: contiguous row-major storage on the host or a CUDA device.
// Lifetime is explicit (dispose, `using`, scope); garbage collection of the
// native object is only the backstop.
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  checkDType,
  checkNumber,
  checkOptions,
  checkShape,
  deviceName,
  describe,
  parseDevice,
  rangeError,
  registerTensorClass,
  typeError,
} from './checks.js';
import { DisposedError } from './errors.js';
import { native, type NativeTensor } from './native.js';
import {
  DTYPE_CODES,
  DTYPES,
  type ArrayFor,
  type CreateOptions,
  type DType,
  type Device,
  type DeviceMemory,
  type TensorData,
  type TensorOptions,
} from './types.js';

const DEFAULT_DTYPE: DType = 'float32';
const DEFAULT_DEVICE: Device = 'cpu';

const scopeStore = new AsyncLocalStorage<Set<Tensor>>();

// Disposed native objects handed back to the addon, which reuses them for new
// tensors rather than constructing and wrapping fresh ones (native/addon/
// tensor.cc, Wrap): a Tensor drops its handle on dispose, so nothing here can
// reach one again. Bounded: a burst of disposals keeps only this many.
const RECYCLE: NativeTensor[] = [];
const RECYCLE_MAX = 64;
(native as unknown as { setRecyclePool?(pool: NativeTensor[]): void }).setRecyclePool?.(RECYCLE);

export class Tensor<D extends DType = DType> implements Disposable {
  #native: NativeTensor | null;
  /** Sizes of each dimension; `[]` for a 0-d tensor. */
  readonly shape: readonly number[];
  readonly dtype: D;
  /** `'cpu'` or `'cuda:N'`. */
  readonly device: Device;
  /** Number of elements. */
  readonly numel: number;

  /**
   * @internal Wraps a native tensor; use `tensor`, `empty`, `zeros` or `full`. `like` (package
   * code only) is a tensor whose shape and device the native one is known to have, with `dtype`:
   * kernels' outputs take them from there instead of three calls into the addon and a fresh
   * shape array each (most of a small op's cost, issue 11). `like` need only carry a frozen `shape`, its `numel`
   * and `device`.
   */
  constructor(handle: NativeTensor, like?: Pick<Tensor, 'shape' | 'device' | 'numel'>, dtype?: D) {
    if (!handle || typeof handle !== 'object' || typeof (handle as NativeTensor).readAsync !== 'function') {
      throw new TypeError('Tensor: construct tensors with rlk.tensor, rlk.empty, rlk.zeros or rlk.full');
    }
    this.#native = handle;
    if (like !== undefined && dtype !== undefined) {
      this.shape = like.shape;
      this.dtype = dtype;
      this.device = like.device;
      this.numel = like.numel;
    } else {
      this.shape = Object.freeze(handle.shape.slice());
      this.dtype = DTYPES[handle.dtype] as D;
      this.device = deviceName(handle.device) as Device;
      this.numel = this.shape.reduce((a, b) => a * b, 1);
    }
    scopeStore.getStore()?.add(this);
  }

  /** True once `dispose()` ran. */
  get disposed(): boolean {
    return this.#native === null;
  }

  /** @internal The addon's handle; throws DisposedError after dispose. */
  handle(fn: string, name = 'tensor'): NativeTensor {
    if (this.#native === null) throw new DisposedError(`${fn}: ${name} was disposed`);
    return this.#native;
  }

  /** Copies the data to the host without blocking the event loop while the GPU works. */
  async toArray(): Promise<ArrayFor<D>> {
    const buf = await this.handle('toArray').readAsync();
    return wrapBuffer(this.dtype, buf) as ArrayFor<D>;
  }

  /** Copies the data to the host; for a CUDA tensor this blocks until the GPU is done. */
  toArraySync(): ArrayFor<D> {
    return wrapBuffer(this.dtype, this.handle('toArraySync').read()) as ArrayFor<D>;
  }

  /** The value of a one-element tensor. */
  async item(): Promise<number> {
    this.checkOneElement('item');
    return Number((await this.toArray())[0]);
  }

  itemSync(): number {
    this.checkOneElement('itemSync');
    return Number(this.toArraySync()[0]);
  }

  /**
   * A tensor on another device and/or of another dtype. Gives a view sharing
   * this tensor's memory when nothing changes, else a converted copy
   * (16-bit floats round to nearest even; floats to integers truncate).
   */
  to<T extends DType = D>(target: Device | { dtype?: T; device?: Device }): Tensor<T> {
    const fn = 'to';
    const h = this.handle(fn);
    let dtype: DType = this.dtype;
    let device: number;
    if (typeof target === 'string') {
      device = parseDevice(fn, 'device', target);
    } else {
      const o = checkOptions(fn, target, ['dtype', 'device'], 'target');
      if (o.dtype !== undefined) dtype = checkDType(fn, 'dtype', o.dtype);
      device = o.device === undefined ? h.device : parseDevice(fn, 'device', o.device);
    }
    return new Tensor<T>(h.to(DTYPE_CODES[dtype], device));
  }

  /** A view with another shape of the same number of elements. */
  reshape(shape: readonly number[]): Tensor<D> {
    const s = checkShape('reshape', 'shape', shape);
    const n = s.reduce((a, b) => a * b, 1);
    if (n !== this.numel) throw rangeError('reshape', `shape [${s.join(', ')}] must have ${this.numel} elements, got ${n}`);
    return new Tensor<D>(this.handle('reshape').reshape(s));
  }

  /** Releases the memory now (idempotent). Views made from it keep theirs alive. */
  dispose(): void {
    const h = this.#native;
    if (h === null) return;
    h.dispose();
    this.#native = null;
    if (RECYCLE.length < RECYCLE_MAX) RECYCLE.push(h);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}, device=${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  private checkOneElement(fn: string): void {
    this.handle(fn);
    if (this.numel !== 1) throw rangeError(fn, `tensor must have one element, got shape [${this.shape.join(', ')}]`);
  }
}

registerTensorClass((v: unknown): v is Tensor => v instanceof Tensor);

function wrapBuffer(dtype: DType, buf: ArrayBuffer): ArrayFor<DType> {
  switch (dtype) {
    case 'int32':
      return new Int32Array(buf);
    case 'int64':
      return new BigInt64Array(buf);
    case 'uint8':
      return new Uint8Array(buf);
    default:
      return new Float32Array(buf);
  }
}

function defaultDTypeFor(data: ArrayBufferView | 'number' | 'bigint'): DType {
  if (data === 'number') return 'float32';
  if (data === 'bigint') return 'int64';
  if (data instanceof Int32Array || data instanceof Int16Array || data instanceof Int8Array || data instanceof Uint16Array) return 'int32';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Uint32Array) return 'int64';
  return 'float32';
}

const ACCEPTED_VIEWS = [Float64Array, Float32Array, Int32Array, Int16Array, Int8Array, Uint8Array, Uint16Array, Uint32Array, BigInt64Array];

/** Flattens nested arrays (rectangular) into a typed array and their shape. */
function flatten(fn: string, data: unknown): { flat: Float64Array | BigInt64Array; shape: number[] } {
  const shape: number[] = [];
  let probe: unknown = data;
  while (Array.isArray(probe)) {
    shape.push(probe.length);
    if (probe.length === 0) break;
    probe = probe[0];
  }
  const numel = shape.reduce((a, b) => a * b, 1);
  if (numel > 2 ** 31) throw rangeError(fn, `data has too many elements for a JS array (${numel}); pass a typed array`);
  const bigints = typeof probe === 'bigint';
  const flat = bigints ? new BigInt64Array(numel) : new Float64Array(numel);
  let k = 0;
  const walk = (v: unknown, depth: number, path: string): void => {
    if (depth === shape.length) {
      if (bigints ? typeof v !== 'bigint' : typeof v !== 'number') {
        throw typeError(fn, `data${path} must be a ${bigints ? 'bigint' : 'number'}, got ${describe(v)}`);
      }
      if (bigints) (flat as BigInt64Array)[k++] = BigInt.asIntN(64, v as bigint) === v ? (v as bigint) : badBig(fn, path, v as bigint);
      else (flat as Float64Array)[k++] = v as number;
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[depth]) {
      throw rangeError(fn, `data must be a rectangular nested array: data${path} should be an array of length ${shape[depth]}, got ${describe(v)}`);
    }
    for (let i = 0; i < v.length; i++) walk(v[i], depth + 1, `${path}[${i}]`);
  };
  walk(data, 0, '');
  return { flat, shape };
}

function badBig(fn: string, path: string, v: bigint): never {
  throw rangeError(fn, `data${path} must fit in int64, got ${v}n`);
}

/**
 * A tensor from JS data: nested arrays of numbers (or bigints), a typed array, or a scalar.
 * @throws TypeError for data or options of the wrong kind; RangeError for a shape that does not match the data,
 *   or an integer dtype given values that are not whole numbers in range; CudaUnavailableError without a GPU.
 */
export function tensor<D extends DType>(data: TensorData, options: TensorOptions & { dtype: D }): Tensor<D>;
export function tensor(data: TensorData, options?: TensorOptions): Tensor;
export function tensor(data: TensorData, options?: TensorOptions): Tensor {
  const fn = 'tensor';
  const o = checkOptions(fn, options, ['shape', 'dtype', 'device']);
  let flat: ArrayBufferView;
  let inferred: number[];
  let kind: ArrayBufferView | 'number' | 'bigint';
  if (ArrayBuffer.isView(data)) {
    if (!ACCEPTED_VIEWS.some((C) => data instanceof C)) throw typeError(fn, `data must be an array, a number or a typed array, got ${describe(data)}`);
    flat = data;
    inferred = [(data as Float32Array).length];
    kind = data;
  } else if (typeof data === 'number' || typeof data === 'bigint') {
    const r = flatten(fn, [data]);
    flat = r.flat;
    inferred = [];
    kind = typeof data === 'number' ? 'number' : 'bigint';
  } else if (Array.isArray(data)) {
    const r = flatten(fn, data);
    flat = r.flat;
    inferred = r.shape;
    kind = r.flat instanceof BigInt64Array ? 'bigint' : 'number';
  } else {
    throw typeError(fn, `data must be an array, a number or a typed array, got ${describe(data)}`);
  }
  const dtype = o.dtype === undefined ? defaultDTypeFor(kind) : checkDType(fn, 'dtype', o.dtype);
  const device = parseDevice(fn, 'device', o.device ?? DEFAULT_DEVICE);
  let shape = inferred;
  if (o.shape !== undefined) {
    shape = checkShape(fn, 'shape', o.shape);
    const n = shape.reduce((a, b) => a * b, 1);
    const have = (flat as Float32Array).length;
    if (n !== have) throw rangeError(fn, `shape [${shape.join(', ')}] needs ${n} elements, data has ${have}`);
  }
  return new Tensor(native.fromData(shape, DTYPE_CODES[dtype], device, flat));
}

function createArgs(fn: string, shape: unknown, options: unknown): { shape: number[]; dtype: DType; device: number } {
  const s = checkShape(fn, 'shape', shape);
  const o = checkOptions(fn, options, ['dtype', 'device']);
  const dtype = o.dtype === undefined ? DEFAULT_DTYPE : checkDType(fn, 'dtype', o.dtype);
  const device = parseDevice(fn, 'device', o.device ?? DEFAULT_DEVICE);
  return { shape: s, dtype, device };
}

/** A tensor whose contents are unspecified. */
export function empty<D extends DType>(shape: readonly number[], options: CreateOptions & { dtype: D }): Tensor<D>;
export function empty(shape: readonly number[], options?: CreateOptions): Tensor;
export function empty(shape: readonly number[], options?: CreateOptions): Tensor {
  const a = createArgs('empty', shape, options);
  return new Tensor(native.empty(a.shape, DTYPE_CODES[a.dtype], a.device));
}

/** A tensor of `value` (rounded to the dtype as `tensor` rounds). */
export function full<D extends DType>(shape: readonly number[], value: number, options: CreateOptions & { dtype: D }): Tensor<D>;
export function full(shape: readonly number[], value: number, options?: CreateOptions): Tensor;
export function full(shape: readonly number[], value: number, options?: CreateOptions): Tensor {
  const a = createArgs('full', shape, options);
  if (typeof value !== 'number') throw typeError('full', `value must be a number, got ${describe(value)}`);
  if (a.dtype !== 'float32' && a.dtype !== 'bfloat16' && a.dtype !== 'float16') {
    checkNumber('full', 'value', value, { integer: true });
  }
  return new Tensor(native.full(a.shape, DTYPE_CODES[a.dtype], a.device, value));
}

/** A tensor of zeros. */
export function zeros<D extends DType>(shape: readonly number[], options: CreateOptions & { dtype: D }): Tensor<D>;
export function zeros(shape: readonly number[], options?: CreateOptions): Tensor;
export function zeros(shape: readonly number[], options?: CreateOptions): Tensor {
  return full(shape, 0, options);
}

function collectTensors(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 4 || value === null || typeof value !== 'object') return;
  if (value instanceof Tensor) {
    out.add(value);
    return;
  }
  if (ArrayBuffer.isView(value)) return;
  for (const v of Array.isArray(value) ? value : Object.values(value)) collectTensors(v, out, depth + 1);
}

function closeScope(created: Set<Tensor>, result: unknown): void {
  const kept = new Set<Tensor>();
  collectTensors(result, kept);
  const parent = scopeStore.getStore();
  for (const t of created) {
    if (kept.has(t)) parent?.add(t);
    else t.dispose();
  }
}

/**
 * Runs `fn` and disposes every tensor created inside it, except those it returns
 * (found in the returned value: a tensor, or arrays/objects of them) and those passed to `keep`.
 * `fn` may be async: tensors are tracked per async context, so concurrent scopes do not mix.
 */
export function scope<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw typeError('scope', `fn must be a function, got ${describe(fn)}`);
  const created = new Set<Tensor>();
  let result: T;
  try {
    result = scopeStore.run(created, fn);
  } catch (err) {
    closeScope(created, undefined);
    throw err;
  }
  if (result instanceof Promise) {
    return result.then(
      (v) => {
        closeScope(created, v);
        return v;
      },
      (err) => {
        closeScope(created, undefined);
        throw err;
      },
    ) as T;
  }
  closeScope(created, result);
  return result;
}

/** Exempts a tensor from the enclosing scope's disposal. */
export function keep<T extends Tensor>(t: T): T {
  if (!(t instanceof Tensor)) throw typeError('keep', `t must be a tensor, got ${describe(t)}`);
  scopeStore.getStore()?.delete(t);
  return t;
}

/** Live tensors and bytes per device (`cpu`, `cuda:N`), with the CUDA caching allocator's figures. */
export function memory(): Record<string, DeviceMemory> {
  const m = native.memory();
  const out: Record<string, DeviceMemory> = { cpu: { tensors: m.cpu.tensors, bytes: m.cpu.bytes } };
  for (const d of m.cuda) {
    const { device, ...rest } = d;
    out[device] = rest;
  }
  return out;
}
