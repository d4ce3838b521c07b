/** Element types of a tensor. */
export type DType = 'float32' | 'bfloat16' | 'float16' | 'int32' | 'int64' | 'uint8';

/** `cpu`, `cuda` (device 0) or `cuda:N`. */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`;

/** Numbering shared with native/include/rlk/common.h (`rlk::DType`). */
export const DTYPE_CODES: Readonly<Record<DType, number>> = Object.freeze({
  float32: 0,
  bfloat16: 1,
  float16: 2,
  int32: 3,
  int64: 4,
  uint8: 5,
});
export const DTYPES: readonly DType[] = Object.freeze(Object.keys(DTYPE_CODES) as DType[]);
export const FLOAT_DTYPES: readonly DType[] = Object.freeze(['float32', 'bfloat16', 'float16'] as DType[]);

/** What `toArray()` gives for each dtype: 16-bit floats widen (exactly) to float32. */
export type ArrayFor<D extends DType> = D extends 'int32'
  ? Int32Array
  : D extends 'int64'
    ? BigInt64Array
    : D extends 'uint8'
      ? Uint8Array
      : Float32Array;

/** Nested arrays of numbers (or bigints for int64), or a typed array. */
export type TensorData =
  | number
  | bigint
  | readonly TensorData[]
  | Float64Array
  | Float32Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigInt64Array;

export interface TensorOptions {
  /** Defaults to `[data.length]`, or the nesting of nested arrays. */
  shape?: readonly number[];
  /** Defaults to the typed array's type (Float64Array gives `float32`), `float32` for numbers, `int64` for bigints. */
  dtype?: DType;
  /** Defaults to `'cpu'`. */
  device?: Device;
}

export interface CreateOptions {
  /** Defaults to `float32`. */
  dtype?: DType;
  /** Defaults to `'cpu'`. */
  device?: Device;
}

export interface DeviceMemory {
  /** Live (not disposed, not collected) tensors on the device. */
  tensors: number;
  /** Bytes held by those tensors' storage. */
  bytes: number;
  /** CUDA only: bytes handed out by the caching allocator. */
  allocatedBytes?: number;
  /** CUDA only: bytes held from cudaMalloc (allocated plus cached). */
  reservedBytes?: number;
  /** CUDA only: cudaMalloc calls so far. */
  mallocs?: number;
  /** CUDA only: allocations served from the cache. */
  reuses?: number;
}

export interface BuildInfo {
  version: string;
  /** Path of the loaded native binary. */
  binary: string;
  napiVersion: number;
  cpu: { simd: 'avx512' | 'avx2' | 'baseline'; threads: number };
  cuda: {
    compiled: boolean;
    archs: string;
    /** The `cuda` device is the CPU emulation of the test build (native/sim, `RLK_CUDA_SIM=1`), not a GPU. */
    emulated: boolean;
    runtimeVersion: string | null;
    driverVersion: string | null;
    deviceCount: number;
    devices: string[];
    available: boolean;
    /** Why no GPU can be used, or `null` when one can. */
    reason: string | null;
    /** Why the CUDA linear log-probs cannot run (no cuBLAS headers at build time, no libcublas found), or `null` when they can. */
    linearLogprobs: string | null;
  };
}
