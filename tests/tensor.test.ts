import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { cudaShape, describeCuda, freshSeed, rng, HAS_CUDA } from './helpers.js';
import { decodeBits, roundArray, roundBits, roundTo } from './reference/dtype.js';

type Half = 'bfloat16' | 'float16';
const HALVES: Half[] = ['bfloat16', 'float16'];

/** Edge values of a 16-bit format, from the reference decoder: ties, subnormals, max, overflow. */
function edgeValues(dtype: Half): number[] {
  const manBits = dtype === 'bfloat16' ? 7 : 10;
  const maxBits = dtype === 'bfloat16' ? 0x7f7f : 0x7bff;
  const out: number[] = [0, -0, Infinity, -Infinity, NaN, 1, -1, 2 ** -30, 1e-45, -1e-45];
  const patterns = [1, 2, 3, (1 << manBits) - 1, 1 << manBits, (1 << manBits) + 1, 0x3c00, 0x3f80, 0x3f81, 0x4049, maxBits - 1, maxBits];
  for (const b of patterns) {
    const v = decodeBits(b, dtype);
    const next = decodeBits(b + 1, dtype);
    const mid = (v + next) / 2; // an exact tie (doubles hold it)
    out.push(v, -v, mid, -mid, mid + (next - v) * 1e-6, mid - (next - v) * 1e-6, Math.fround(mid), next);
  }
  const max = decodeBits(maxBits, dtype);
  const spacing = max - decodeBits(maxBits - 1, dtype);
  out.push(max + spacing / 2, max + spacing / 2 - spacing * 1e-3, -(max + spacing / 2), max * 4, 3.4e38, 1e300, -1e300, 5e-324);
  return out;
}

function sameValue(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}

function expectValues(what: string, got: ArrayLike<number>, want: ArrayLike<number>, inputs: ArrayLike<number>): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!sameValue(got[i], want[i])) throw new Error(`${what}: input ${inputs[i]} at ${i} gave ${got[i]}, want ${want[i]}`);
  }
}

describe('dtype round trips against the reference rounding', () => {
  const seed = freshSeed();
  const r = rng(seed);
  // Random doubles spread over the whole exponent range of both formats.
  const randomValues = Array.from({ length: 4000 }, () => (r() < 0.5 ? -1 : 1) * 2 ** (r() * 300 - 150) * (1 + r()));

  for (const dtype of HALVES) {
    it(`${dtype}: edge values from float64 (ties to even, subnormals, inf, NaN, max)`, async () => {
      const xs = edgeValues(dtype);
      const t = rlk.tensor(new Float64Array(xs), { dtype });
      expectValues(dtype, await t.toArray(), xs.map((x) => roundTo(x, dtype)), xs);
      t.dispose();
    });

    it(`${dtype}: edge values from number arrays and Float32Array (seed ${seed})`, () => {
      const xs = [...edgeValues(dtype), ...randomValues];
      const fromNumbers = rlk.tensor(xs, { dtype });
      expectValues(`${dtype} number[]`, fromNumbers.toArraySync(), xs.map((x) => roundTo(x, dtype)), xs);
      // A Float32Array is rounded once from its float32 values.
      const f32 = new Float32Array(xs);
      const fromF32 = rlk.tensor(f32, { dtype });
      expectValues(`${dtype} Float32Array`, fromF32.toArraySync(), Array.from(f32, (x) => roundTo(x, dtype)), f32);
      fromNumbers.dispose();
      fromF32.dispose();
    });

    it(`${dtype}: the reference itself is sane`, () => {
      expect(roundBits(1, dtype)).toBe(dtype === 'bfloat16' ? 0x3f80 : 0x3c00);
      expect(roundTo(65519.99, 'float16')).toBe(65504);
      expect(roundTo(65520, 'float16')).toBe(Infinity);
      expect(roundTo(2 ** -25, 'float16')).toBe(0); // tie between 0 and the smallest subnormal goes to 0 (even)
      expect(roundTo(2 ** -25 * 1.0001, 'float16')).toBe(2 ** -24);
      expect(roundTo(1 + 2 ** -8, 'bfloat16')).toBe(1); // tie, to even
      expect(roundTo(1 + 3 * 2 ** -8, 'bfloat16')).toBe(1 + 2 ** -6); // tie, to even (up)
    });
  }

  it('float32 from float64 rounds like Math.fround', () => {
    const xs = [...randomValues, 1e39, -1e39, 1e-46, NaN, Infinity, -0];
    const t = rlk.tensor(new Float64Array(xs), { dtype: 'float32' });
    expectValues('float32', t.toArraySync(), roundArray(xs, 'float32'), xs);
  });

  it('integer dtypes hold their full ranges exactly', () => {
    const i32 = [0, 1, -1, 2147483647, -2147483648, 12345];
    expect(Array.from(rlk.tensor(i32, { dtype: 'int32' }).toArraySync() as ArrayLike<number>)).toEqual(i32);
    const i64 = [0n, -1n, 9223372036854775807n, -9223372036854775808n, 2n ** 53n + 1n];
    expect(Array.from(rlk.tensor(i64).toArraySync() as BigInt64Array)).toEqual(i64);
    expect(Array.from(rlk.tensor([2 ** 53 - 1, -(2 ** 53 - 1)], { dtype: 'int64' }).toArraySync() as BigInt64Array)).toEqual([
      2n ** 53n - 1n,
      -(2n ** 53n - 1n),
    ]);
    expect(Array.from(rlk.tensor([0, 1, 255], { dtype: 'uint8' }).toArraySync() as ArrayLike<number>)).toEqual([0, 1, 255]);
  });

  it('integer dtypes refuse values they cannot hold', () => {
    expect(() => rlk.tensor([1.5], { dtype: 'int32' })).toThrow(RangeError);
    expect(() => rlk.tensor([2 ** 31], { dtype: 'int32' })).toThrow(/data\[0\]/);
    expect(() => rlk.tensor([256], { dtype: 'uint8' })).toThrow(RangeError);
    expect(() => rlk.tensor([-1], { dtype: 'uint8' })).toThrow(RangeError);
    expect(() => rlk.tensor([NaN], { dtype: 'int64' })).toThrow(RangeError);
    expect(() => rlk.tensor([2 ** 60], { dtype: 'int64' })).toThrow(RangeError);
  });

  it('default dtypes follow the data', () => {
    expect(rlk.tensor([1, 2]).dtype).toBe('float32');
    expect(rlk.tensor(new Float64Array(2)).dtype).toBe('float32');
    expect(rlk.tensor(new Int32Array(2)).dtype).toBe('int32');
    expect(rlk.tensor(new BigInt64Array(2)).dtype).toBe('int64');
    expect(rlk.tensor([1n]).dtype).toBe('int64');
    expect(rlk.tensor(new Uint8Array(2)).dtype).toBe('uint8');
  });
});

describe('shapes', () => {
  it('infers shapes from nested arrays and checks they are rectangular', () => {
    const t = rlk.tensor([[[1], [2]], [[3], [4]], [[5], [6]]]);
    expect(t.shape).toEqual([3, 2, 1]);
    expect(Array.from(t.toArraySync() as ArrayLike<number>)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => rlk.tensor([[1, 2], [3]])).toThrow(RangeError);
    expect(() => rlk.tensor([[1, 2], 3] as never)).toThrow(/rectangular/);
    expect(() => rlk.tensor([1, 'a'] as never)).toThrow(TypeError);
  });

  it('handles zero-size and 0-d tensors', async () => {
    for (const shape of [[0], [3, 0, 2], [0, 0]]) {
      const t = rlk.empty(shape);
      expect(t.shape).toEqual(shape);
      expect(t.numel).toBe(0);
      expect((await t.toArray()).length).toBe(0);
      expect(t.to({ dtype: 'bfloat16' }).numel).toBe(0);
      t.dispose();
    }
    const s = rlk.tensor(3.5);
    expect(s.shape).toEqual([]);
    expect(s.numel).toBe(1);
    expect(await s.item()).toBe(3.5);
    expect(s.itemSync()).toBe(3.5);
    expect(rlk.tensor([], { shape: [0, 4] }).shape).toEqual([0, 4]);
    expect(() => rlk.tensor([1, 2, 3], { shape: [2, 2] })).toThrow(RangeError);
    expect(() => rlk.tensor([1, 2]).itemSync()).toThrow(RangeError);
  });

  it('full, zeros and empty give the right contents and shapes', () => {
    expect(Array.from(rlk.zeros([2, 3]).toArraySync() as ArrayLike<number>)).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Array.from(rlk.full([3], 1 + 2 ** -8, { dtype: 'bfloat16' }).toArraySync() as ArrayLike<number>)).toEqual([1, 1, 1]);
    expect(Array.from(rlk.full([2], -7, { dtype: 'int64' }).toArraySync() as BigInt64Array)).toEqual([-7n, -7n]);
    expect(Array.from(rlk.full([2], 70000, { dtype: 'float16' }).toArraySync() as ArrayLike<number>)).toEqual([Infinity, Infinity]);
    expect(rlk.empty([5, 7], { dtype: 'int32' }).shape).toEqual([5, 7]);
    expect(() => rlk.full([2], 1.5, { dtype: 'int32' })).toThrow(RangeError);
  });

  it('full fills every element of every dtype, over several threads and odd sizes', () => {
    // Sizes past the fill's per-thread grain (65536), odd, with the element
    // sizes 1, 2, 4 and 8: a fill that wrote the wrong width or skipped a
    // slice's tail shows as a wrong element.
    const cases: [rlk.DType, number, number | bigint][] = [
      ['uint8', 200, 200], ['bfloat16', -3.5, -3.5], ['float16', 0.25, 0.25], ['float32', 1e-3, Math.fround(1e-3)],
      ['int32', -123456789, -123456789], ['int64', 2 ** 40 + 3, BigInt(2 ** 40 + 3)],
    ];
    for (const n of [1, 65537, 300001]) {
      for (const [dtype, value, want] of cases) {
        const t = rlk.full([n], value, { dtype });
        const got = t.toArraySync() as ArrayLike<number | bigint>;
        expect(got.length).toBe(n);
        let bad = -1;
        for (let i = 0; i < n && bad < 0; i++) if (got[i] !== want) bad = i;
        expect(bad, `${dtype} n=${n}`).toBe(-1);
        t.dispose();
      }
    }
  });

  it('reshape gives a view that keeps the memory alive', async () => {
    const t = rlk.tensor([1, 2, 3, 4, 5, 6]);
    const v = t.reshape([2, 3]);
    t.dispose();
    expect(v.shape).toEqual([2, 3]);
    expect(Array.from(await v.toArray() as ArrayLike<number>)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => v.reshape([4])).toThrow(RangeError);
    v.dispose();
  });
});

describe('conversions with to()', () => {
  it('casts between every pair of dtypes on the cpu', () => {
    const xs = [0, 1, -2, 3.75, 100, -100.5, 250];
    const want: Record<rlk.DType, (x: number) => number> = {
      float32: (x) => Math.fround(x),
      bfloat16: (x) => roundTo(x, 'bfloat16'),
      float16: (x) => roundTo(x, 'float16'),
      int32: (x) => Math.trunc(x),
      int64: (x) => Math.trunc(x),
      uint8: (x) => Math.min(255, Math.max(0, Math.trunc(x))),
    };
    const src = rlk.tensor(xs, { dtype: 'float32' });
    for (const dtype of Object.keys(want) as rlk.DType[]) {
      const t = src.to({ dtype });
      expect(t.dtype).toBe(dtype);
      expect(Array.from(t.toArraySync() as ArrayLike<number>, Number)).toEqual(xs.map(want[dtype]));
      // ...and back to float32.
      expect(Array.from(t.to({ dtype: 'float32' }).toArraySync() as ArrayLike<number>)).toEqual(xs.map(want[dtype]));
    }
    expect(Array.from(rlk.tensor([2n ** 40n + 1n]).to({ dtype: 'int32' }).toArraySync())).toEqual([2147483647]);
    expect(Array.from(rlk.tensor([NaN, Infinity, -Infinity]).to({ dtype: 'int32' }).toArraySync())).toEqual([0, 2147483647, -2147483648]);
    // Beyond int64: saturate at the int64 bounds themselves (2^63 - 1, not the largest double below 2^63).
    expect(Array.from(rlk.tensor([1e19, -1e19, NaN, 2 ** 62]).to({ dtype: 'int64' }).toArraySync() as BigInt64Array)).toEqual([
      9223372036854775807n, -9223372036854775808n, 0n, 2n ** 62n,
    ]);
  });

  it('to() with nothing to change is a view; a dtype change is a copy', () => {
    const t = rlk.tensor([1, 2]);
    const same = t.to('cpu');
    expect(same).not.toBe(t);
    t.dispose();
    expect(Array.from(same.toArraySync() as ArrayLike<number>)).toEqual([1, 2]);
    expect(same.to({ dtype: 'float16' }).dtype).toBe('float16');
  });

  it('asking for cuda without a usable GPU says what was found and what is needed', () => {
    if (HAS_CUDA) return;
    const t = rlk.tensor([1]);
    for (const call of [() => t.to('cuda'), () => rlk.tensor([1], { device: 'cuda:0' }), () => rlk.zeros([2], { device: 'cuda' })]) {
      try {
        call();
        throw new Error('did not throw');
      } catch (err) {
        expect(err).toBeInstanceOf(rlk.CudaUnavailableError);
        expect((err as Error).message).toMatch(/found .+/);
        expect((err as Error).message).toMatch(/needs|rebuild/i);
      }
    }
    expect(rlk.cuda.isAvailable()).toBe(false);
    expect(rlk.cuda.deviceCount()).toBe(0);
    expect(rlk.buildInfo().cuda.reason).toBeTruthy();
  });
});

async function settleGc(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    globalThis.gc?.();
    await new Promise((r) => setImmediate(r)); // native finalizers run after the GC, from the event loop
  }
}

describe('lifetime', () => {
  it('dispose is idempotent and any later use throws DisposedError', async () => {
    const t = rlk.tensor([1, 2, 3]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toBeInstanceOf(rlk.DisposedError);
    expect(() => t.toArraySync()).toThrow(rlk.DisposedError);
    expect(() => t.to({ dtype: 'float16' })).toThrow(rlk.DisposedError);
    expect(() => t.reshape([3])).toThrow(rlk.DisposedError);
    expect(String(t)).toMatch(/disposed/);
  });

  it('a read in flight keeps its memory alive through dispose', async () => {
    const t = rlk.tensor(new Float32Array(1 << 16).fill(2));
    const p = t.toArray();
    t.dispose();
    const a = await p;
    expect(a.length).toBe(1 << 16);
    expect(a.every((x) => x === 2)).toBe(true);
  });

  it('`using` disposes at the end of the block', () => {
    let outer: rlk.Tensor;
    {
      using t = rlk.zeros([4]);
      outer = t;
      expect(t.disposed).toBe(false);
    }
    expect(outer.disposed).toBe(true);
  });

  it('scope disposes what it created except what it returns or keeps', async () => {
    let inner: rlk.Tensor | undefined;
    let kept: rlk.Tensor | undefined;
    const result = rlk.scope(() => {
      inner = rlk.zeros([8]);
      kept = rlk.keep(rlk.zeros([2]));
      return { a: rlk.full([3], 1), list: [rlk.full([1], 2)] };
    });
    expect(inner!.disposed).toBe(true);
    expect(kept!.disposed).toBe(false);
    expect(result.a.disposed).toBe(false);
    expect(result.list[0].disposed).toBe(false);
    // Async scopes track per async context.
    let asyncInner: rlk.Tensor | undefined;
    const out = await rlk.scope(async () => {
      await new Promise((r) => setTimeout(r, 1));
      asyncInner = rlk.zeros([3]);
      return rlk.zeros([1]);
    });
    expect(asyncInner!.disposed).toBe(true);
    expect(out.disposed).toBe(false);
    // A throwing scope still cleans up.
    let thrown: rlk.Tensor | undefined;
    expect(() =>
      rlk.scope(() => {
        thrown = rlk.zeros([1]);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(thrown!.disposed).toBe(true);
    for (const t of [kept!, result.a, result.list[0], out]) t.dispose();
  });

  it('memory() counts live tensors and bytes', async () => {
    await settleGc(); // so no finalizer of an earlier test's tensor runs in between
    const m0 = rlk.memory().cpu;
    const a = rlk.empty([1000], { dtype: 'float32' });
    const b = rlk.empty([10], { dtype: 'int64' });
    const m1 = rlk.memory().cpu;
    expect(m1.tensors - m0.tensors).toBe(2);
    expect(m1.bytes - m0.bytes).toBe(4080);
    const view = a.reshape([10, 100]); // shares storage: one more tensor, no more bytes
    expect(rlk.memory().cpu.tensors - m0.tensors).toBe(3);
    expect(rlk.memory().cpu.bytes - m0.bytes).toBe(4080);
    a.dispose();
    expect(rlk.memory().cpu.bytes - m0.bytes).toBe(4080);
    view.dispose();
    b.dispose();
    expect(rlk.memory().cpu).toEqual(m0);
  });

  it('100k create/dispose cycles leave memory() and RSS flat', async () => {
    const cycle = (k: number) => {
      const t = rlk.empty([256 + (k % 7)]);
      const u = rlk.tensor([k, k + 1], { dtype: 'bfloat16' });
      t.dispose();
      u.dispose();
    };
    await settleGc(); // earlier tests' undisposed tensors go first
    const m0 = rlk.memory().cpu;
    // The first round grows the JS heap and malloc arenas to their working size.
    for (let k = 0; k < 100_000; k++) cycle(k);
    await settleGc();
    // A leak grows RSS in every round; allocator and GC noise does not. The
    // quietest of three rounds must stay under 8 MB (80 bytes a cycle).
    const growth: number[] = [];
    for (let round = 0; round < 3; round++) {
      const rss0 = process.memoryUsage().rss;
      for (let k = 0; k < 100_000; k++) cycle(k);
      await settleGc();
      growth.push(process.memoryUsage().rss - rss0);
      expect(rlk.memory().cpu).toEqual(m0);
    }
    expect(Math.min(...growth)).toBeLessThan(8 * 1024 * 1024);
  });

  it('garbage collection frees tensors that were never disposed (the backstop)', async () => {
    if (!globalThis.gc) return; // needs --expose-gc (set in vitest.config.ts)
    const m0 = rlk.memory().cpu;
    (() => {
      for (let k = 0; k < 50; k++) rlk.empty([1 << 16]);
    })();
    expect(rlk.memory().cpu.bytes - m0.bytes).toBe(50 * 4 * (1 << 16));
    for (let i = 0; i < 10 && rlk.memory().cpu.bytes > m0.bytes; i++) {
      await new Promise((r) => setImmediate(r));
      globalThis.gc();
    }
    // Earlier tests' undisposed tensors may be collected too, hence <=.
    expect(rlk.memory().cpu.bytes).toBeLessThanOrEqual(m0.bytes);
    expect(rlk.memory().cpu.tensors).toBeLessThanOrEqual(m0.tensors);
  });
});

describe('runtime', () => {
  it('the suite runs with poisoned allocations, so unwritten outputs are caught', () => {
    // vitest.config.ts sets RLK_POISON_ALLOC=1: a new tensor is all 0xFF bytes.
    expect(Array.from(rlk.empty([3]).toArraySync() as Float32Array).every(Number.isNaN)).toBe(true);
    expect(Array.from(rlk.empty([2], { dtype: 'int32' }).toArraySync())).toEqual([-1, -1]);
    expect(Array.from(rlk.empty([2], { dtype: 'bfloat16' }).toArraySync() as Float32Array).every(Number.isNaN)).toBe(true);
  });

  it('buildInfo describes the binary', () => {
    const info = rlk.buildInfo();
    expect(info.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(info.napiVersion).toBe(8);
    expect(['avx512', 'avx2', 'baseline']).toContain(info.cpu.simd);
    expect(typeof info.cuda.compiled).toBe('boolean');
    expect(info.cuda.available).toBe(HAS_CUDA);
    if (info.cuda.compiled) expect(info.cuda.archs).toMatch(/90/);
  });

  it('sets the CPU thread count', () => {
    const n = rlk.getNumThreads();
    rlk.setNumThreads(1);
    expect(rlk.getNumThreads()).toBe(1);
    rlk.setNumThreads(n);
    expect(rlk.getNumThreads()).toBe(n);
  });
});

describeCuda('cuda tensors', () => {
  it('round-trips every dtype through the GPU, sync and async', async () => {
    const xs = [0, 1, -2.5, 3e4, -7, 1e-3, 65519, 1 + 2 ** -8];
    for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
      const c = rlk.tensor(xs, { dtype, device: 'cuda' });
      expect(c.device).toBe('cuda:0');
      const want = roundArray(xs, dtype);
      expect(Array.from(await c.toArray() as ArrayLike<number>)).toEqual(Array.from(want));
      expect(Array.from(c.toArraySync() as ArrayLike<number>)).toEqual(Array.from(want));
      expect(Array.from(c.to('cpu').toArraySync() as ArrayLike<number>)).toEqual(Array.from(want));
      c.dispose();
    }
    const i = rlk.tensor([1n, -2n, 2n ** 62n], { device: 'cuda' });
    expect(Array.from((await i.toArray()) as BigInt64Array)).toEqual([1n, -2n, 2n ** 62n]);
    const u = rlk.tensor([0, 255, 7], { dtype: 'uint8', device: 'cuda' });
    expect(Array.from(await u.toArray() as ArrayLike<number>)).toEqual([0, 255, 7]);
  });

  it('casts on the device like on the host', () => {
    const xs = [0, 1, -2, 3.75, 100, -100.5, 250, 1 + 3 * 2 ** -8];
    const host = rlk.tensor(xs);
    const dev = rlk.tensor(xs, { device: 'cuda' });
    for (const dtype of ['float32', 'bfloat16', 'float16', 'int32', 'int64', 'uint8'] as const) {
      expect(Array.from(dev.to({ dtype }).toArraySync() as ArrayLike<number>, Number)).toEqual(Array.from(host.to({ dtype }).toArraySync() as ArrayLike<number>, Number));
    }
    expect(Array.from(rlk.full([5], 2.5, { device: 'cuda', dtype: 'float16' }).toArraySync() as ArrayLike<number>)).toEqual([2.5, 2.5, 2.5, 2.5, 2.5]);
    // Saturation and NaN: the device and the host share one element cast (common.h CastElement).
    const edge = [1e19, -1e19, NaN, Infinity, -Infinity, 3e9, -3e9, 2 ** 62, 300, -1];
    const hostEdge = rlk.tensor(edge);
    const devEdge = rlk.tensor(edge, { device: 'cuda' });
    for (const dtype of ['int32', 'int64', 'uint8', 'float16', 'bfloat16'] as const) {
      expect(Array.from(devEdge.to({ dtype }).toArraySync() as ArrayLike<number | bigint>), dtype).toEqual(
        Array.from(hostEdge.to({ dtype }).toArraySync() as ArrayLike<number | bigint>),
      );
    }
    expect(Array.from(devEdge.to({ dtype: 'int64' }).toArraySync() as BigInt64Array).slice(0, 2)).toEqual([9223372036854775807n, -9223372036854775808n]);
    const big = rlk.tensor([2n ** 40n + 1n, -(2n ** 40n)], { device: 'cuda' });
    expect(Array.from(big.to({ dtype: 'int32' }).toArraySync())).toEqual([2147483647, -2147483648]);
  });

  it('the caching allocator reuses freed blocks instead of calling cudaMalloc', () => {
    rlk.cuda.synchronize();
    const n = cudaShape(1 << 20, 1 << 14);
    const warm = rlk.empty([n], { device: 'cuda' });
    warm.dispose();
    const before = rlk.memory()['cuda:0'];
    for (let k = 0; k < 200; k++) rlk.empty([n], { device: 'cuda' }).dispose();
    const after = rlk.memory()['cuda:0'];
    expect(after.mallocs).toBe(before.mallocs);
    expect(after.reuses! - before.reuses!).toBe(200);
    expect(after.reservedBytes).toBe(before.reservedBytes);
    rlk.cuda.emptyCache();
    expect(rlk.memory()['cuda:0'].reservedBytes).toBeLessThanOrEqual(before.reservedBytes!);
  });

  it('a large async read does not block the event loop', async () => {
    const len = cudaShape(64 << 20, 8 << 20);
    const big = rlk.zeros([len], { device: 'cuda' });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const a = await big.toArray();
    clearInterval(timer);
    expect(a.length).toBe(len);
    expect(ticks).toBeGreaterThanOrEqual(0);
    big.dispose();
  });
});

describe('worker threads', () => {
  it('the addon runs in the main thread and a worker thread at once (per-environment classes and pools)', async () => {
    const { spawnSync } = await import('node:child_process');
    const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { fileURLToPath, pathToFileURL } = await import('node:url');
    const dist = pathToFileURL(join(fileURLToPath(new URL('.', import.meta.url)), '..', 'dist', 'index.js')).href;
    const dir = mkdtempSync(join(tmpdir(), 'rlk-worker-'));
    try {
      const script = join(dir, 'w.mjs');
      // Tensors made, disposed (into the reuse pool) and recycled in both environments at once,
      // then again in the main thread after the worker's environment is gone.
      writeFileSync(
        script,
        `import { Worker, isMainThread } from 'node:worker_threads';
const rlk = await import(${JSON.stringify(dist)});
const f = () => { let s = 0; for (let i = 0; i < 3000; i++) { const a = rlk.tensor([1, 2, 3, 4]);
  const k = rlk.klPenalty(a, a, { estimator: 'k3' }); s += k.values.numel; a.dispose(); k.values.dispose(); k.grad.dispose(); } return s; };
if (isMainThread) {
  const w = new Worker(new URL(import.meta.url));
  const done = new Promise((res, rej) => { w.on('exit', res); w.on('error', rej); });
  const a = f();
  const code = await done;
  console.log(JSON.stringify({ a, b: f(), code }));
} else {
  f();
}
`,
      );
      const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 120_000 });
      expect(r.status, `signal ${r.signal}: ${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ a: 12000, b: 12000, code: 0 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
