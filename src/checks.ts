// The one argument-checking layer of the TypeScript API. Every public function
// checks all of its arguments here before it calls the addon (which checks
// again what memory safety depends on). Messages read
// "fn: name must be <expected>, got <received>"; TypeError for the wrong kind,
// RangeError for a wrong value, DisposedError for a released tensor.
import { CudaUnavailableError, DisposedError } from './errors.js';
import { native } from './native.js';
import type { Tensor } from './tensor.js';
import { DTYPES, type DType } from './types.js';

/** Is-a-tensor test, set by tensor.ts (avoids an import cycle at load time). */
let isTensor: (v: unknown) => v is Tensor = (_v: unknown): _v is Tensor => false;
export function registerTensorClass(test: (v: unknown) => v is Tensor): void {
  isTensor = test;
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v);
  if (typeof v === 'symbol') return 'a symbol';
  if (typeof v === 'function') return 'a function';
  if (isTensor(v)) return v.disposed ? 'a disposed tensor' : `a ${v.dtype} tensor of shape [${v.shape.join(', ')}] on ${v.device}`;
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  return 'an object';
}

export function typeError(fn: string, msg: string): TypeError {
  return new TypeError(`${fn}: ${msg}`);
}
export function rangeError(fn: string, msg: string): RangeError {
  return new RangeError(`${fn}: ${msg}`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || ArrayBuffer.isView(v) || isTensor(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** An options object (or undefined) whose keys are all known. */
export function checkOptions(fn: string, opts: unknown, allowed: readonly string[], name = 'options'): Record<string, unknown> {
  if (opts === undefined) return {};
  if (!isPlainObject(opts)) throw typeError(fn, `${name} must be an object, got ${describe(opts)}`);
  for (const key of Object.keys(opts)) {
    if (!allowed.includes(key)) {
      throw typeError(fn, `unknown option '${key}' in ${name} (expected ${allowed.length ? allowed.map((k) => `'${k}'`).join(', ') : 'none'})`);
    }
  }
  return opts;
}

export function checkTensor(fn: string, name: string, v: unknown): Tensor {
  if (!isTensor(v)) throw typeError(fn, `${name} must be a tensor, got ${describe(v)}`);
  if (v.disposed) throw new DisposedError(`${fn}: ${name} was disposed`);
  return v;
}

export function checkOptionalTensor(fn: string, name: string, v: unknown): Tensor | undefined {
  return v === undefined || v === null ? undefined : checkTensor(fn, name, v);
}

export function checkDTypeOf(fn: string, name: string, t: Tensor, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) {
    const list = allowed.length === 1 ? allowed[0] : `${allowed.slice(0, -1).join(', ')} or ${allowed[allowed.length - 1]}`;
    throw typeError(fn, `${name} must be ${list}, got ${t.dtype}`);
  }
}

export function checkSameDevice(fn: string, ref: [string, Tensor], ...others: Array<[string, Tensor | undefined]>): void {
  for (const [name, t] of others) {
    if (t && t.device !== ref[1].device) throw typeError(fn, `${name} must be on ${ref[1].device} like ${ref[0]}, got ${t.device}`);
  }
}

export function checkShapeEquals(fn: string, name: string, t: Tensor, shape: readonly number[]): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw rangeError(fn, `${name} must have shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
  }
}

export interface NumberRule {
  min?: number;
  max?: number;
  /** Excludes `min` itself. */
  greaterThan?: number;
  integer?: boolean;
}

export function checkNumber(fn: string, name: string, v: unknown, rule: NumberRule = {}): number {
  if (typeof v !== 'number') throw typeError(fn, `${name} must be a number, got ${describe(v)}`);
  const { min, max, greaterThan, integer } = rule;
  const bounds = [
    greaterThan !== undefined ? `> ${greaterThan}` : min !== undefined ? `>= ${min}` : '',
    max !== undefined ? `<= ${max}` : '',
  ].filter(Boolean);
  const what = `${integer ? 'an integer' : 'a finite number'}${bounds.length ? ' ' + bounds.join(' and ') : ''}`;
  if (
    !Number.isFinite(v) ||
    (integer && !Number.isInteger(v)) ||
    (min !== undefined && v < min) ||
    (greaterThan !== undefined && !(v > greaterThan)) ||
    (max !== undefined && v > max)
  ) {
    throw rangeError(fn, `${name} must be ${what}, got ${describe(v)}`);
  }
  return v;
}

export function checkBoolean(fn: string, name: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw typeError(fn, `${name} must be a boolean, got ${describe(v)}`);
  return v;
}

export function checkEnum<T extends string>(fn: string, name: string, v: unknown, values: readonly T[]): T {
  if (typeof v !== 'string') throw typeError(fn, `${name} must be a string, got ${describe(v)}`);
  if (!values.includes(v as T)) throw rangeError(fn, `${name} must be one of ${values.map((x) => `'${x}'`).join(', ')}, got ${describe(v)}`);
  return v as T;
}

export function checkDType(fn: string, name: string, v: unknown): DType {
  return checkEnum(fn, name, v, DTYPES);
}

export function checkShape(fn: string, name: string, v: unknown): number[] {
  if (!Array.isArray(v)) throw typeError(fn, `${name} must be an array of sizes, got ${describe(v)}`);
  if (v.length > 16) throw rangeError(fn, `${name} must have at most 16 dimensions, got ${v.length}`);
  let numel = 1;
  v.forEach((d, i) => {
    if (typeof d !== 'number') throw typeError(fn, `${name}[${i}] must be a number, got ${describe(d)}`);
    if (!Number.isSafeInteger(d) || d < 0) throw rangeError(fn, `${name}[${i}] must be a non-negative integer, got ${describe(d)}`);
    numel *= d;
  });
  if (numel > Number.MAX_SAFE_INTEGER) throw rangeError(fn, `${name} [${v.join(', ')}] has too many elements`);
  return v.slice();
}

let cudaProbe: { count: number; error: string; compiled: boolean } | undefined;
function cudaState(): { count: number; error: string; compiled: boolean } {
  if (!cudaProbe) {
    const info = native.buildInfo();
    cudaProbe = { count: info.cudaDeviceCount, error: info.cudaError, compiled: info.cudaCompiled };
  }
  return cudaProbe;
}

export function cudaUnavailableReason(): string | null {
  const s = cudaState();
  return s.error || (s.count === 0 ? 'no CUDA device found' : null);
}

/** 'cpu' gives -1, 'cuda' and 'cuda:N' the ordinal; a missing GPU throws CudaUnavailableError. */
export function parseDevice(fn: string, name: string, v: unknown): number {
  if (typeof v !== 'string') throw typeError(fn, `${name} must be 'cpu', 'cuda' or 'cuda:N', got ${describe(v)}`);
  if (v === 'cpu') return -1;
  const m = /^cuda(?::(\d{1,2}))?$/.exec(v);
  if (!m) throw rangeError(fn, `${name} must be 'cpu', 'cuda' or 'cuda:N', got ${describe(v)}`);
  const ordinal = m[1] === undefined ? 0 : Number(m[1]);
  const reason = cudaUnavailableReason();
  if (reason !== null) {
    const s = cudaState();
    const need = s.compiled
      ? 'It needs an NVIDIA GPU of compute capability 8.0 or newer and a driver that supports the CUDA runtime this binary was built with (see rlk.buildInfo()).'
      : 'This binary has no CUDA code: rebuild with nvcc on PATH (`npm run build`).';
    throw new CudaUnavailableError(`${fn}: ${name} '${v}' was asked for but CUDA is unavailable: found ${reason}. ${need}`);
  }
  if (ordinal >= cudaState().count) throw rangeError(fn, `${name} '${v}' does not exist: found ${cudaState().count} CUDA device(s)`);
  return ordinal;
}

export function deviceName(code: number): string {
  return code < 0 ? 'cpu' : `cuda:${code}`;
}
