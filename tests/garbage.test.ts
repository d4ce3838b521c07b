// Garbage at every public function: each call either returns or throws a
// TypeError, RangeError, DisposedError or CudaUnavailableError; nothing
// crashes the process. The sweep enumerates the package's exports, so a
// family added later is covered without editing this file; the targeted
// tests below check that messages name the argument.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';

const ALLOWED = [TypeError, RangeError, rlk.DisposedError, rlk.CudaUnavailableError];

function disposedTensor(): rlk.Tensor {
  const t = rlk.tensor([1, 2, 3]);
  t.dispose();
  return t;
}

function garbage(): unknown[] {
  const throwingGetter = {};
  Object.defineProperty(throwingGetter, 'dtype', { enumerable: true, get: () => { throw new TypeError('getter'); } });
  return [
    undefined, null, 0, -1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, 1e300, -0,
    '', 'x', 'cuda:99', 'float32', true, false, 10n, -1n, Symbol('s'), () => 1,
    {}, [], [NaN], [-1], [1e20], [2 ** 40, 2 ** 40], [0.5], ['a'], [[1], 2], new Array(17).fill(1),
    Object.create(null), new Float32Array(3), new Float64Array(0), new Int32Array([-5, 1e9]), new ArrayBuffer(4),
    { dtype: 'nope' }, { device: 'tpu' }, { device: 'cuda' }, { shape: [-1] }, { shape: 'x' }, { unknownOption: 1 },
    { temperature: -1 }, { temperature: NaN }, { method: 'nope' }, { estimator: 'k9' }, { kind: 'nope' },
    { clipLow: -0.1 }, { dualClip: 0.5 }, { groupSize: 0 }, { groupSize: 3 }, { ignoreIndex: 1.5 }, { out: 5 },
    throwingGetter,
    disposedTensor(),
    rlk.tensor([1.5, -2]),
    rlk.tensor([[1, 2], [3, 4]]),
    rlk.tensor([1, 2], { dtype: 'int32' }),
    rlk.tensor([1, 0], { dtype: 'uint8' }),
    rlk.tensor([7n, 8n]),
    rlk.tensor([[1, 2, 3]], { dtype: 'bfloat16' }),
    rlk.empty([0]),
    rlk.empty([1, 0]),
    rlk.tensor(2.5),
  ];
}

function label(a: unknown): string {
  if (typeof a === 'object' && a !== null) return (a as object).constructor?.name ?? 'object';
  if (typeof a === 'symbol') return 'symbol';
  return String(a);
}

function expectAllowed(what: string, call: () => unknown): Promise<void> | void {
  let result: unknown;
  try {
    result = call();
  } catch (err) {
    if (!ALLOWED.some((C) => err instanceof C)) throw new Error(`${what} threw ${String(err)} (${(err as Error)?.constructor?.name})`);
    return;
  }
  if (result instanceof Promise) {
    return result.then(
      () => undefined,
      (err) => {
        if (!ALLOWED.some((C) => err instanceof C)) throw new Error(`${what} rejected with ${String(err)}`);
      },
    );
  }
}

/** The public functions: top-level exports and the cuda namespace, minus constructors of errors. */
function publicFunctions(): Array<[string, (...args: unknown[]) => unknown]> {
  const out: Array<[string, (...args: unknown[]) => unknown]> = [];
  for (const [name, v] of Object.entries(rlk)) {
    if (typeof v !== 'function') continue;
    if (v === rlk.DisposedError || v === rlk.CudaUnavailableError || v === rlk.NativeLoadError) continue;
    if (v === rlk.Tensor) {
      out.push(['new Tensor', (...a: unknown[]) => new (rlk.Tensor as unknown as new (...x: unknown[]) => unknown)(...a)]);
      continue;
    }
    out.push([name, v as (...args: unknown[]) => unknown]);
  }
  for (const [name, v] of Object.entries(rlk.cuda)) out.push([`cuda.${name}`, v as (...args: unknown[]) => unknown]);
  return out;
}

describe('garbage at every public function', () => {
  it('every exported function rejects garbage with TypeError/RangeError/DisposedError, never a crash', async () => {
    const junk = garbage();
    const live = rlk.tensor([[0.5, -1, 2], [3, 4, -5]]);
    const ids = rlk.tensor([0, 2], { dtype: 'int32' });
    const fns = publicFunctions();
    expect(fns.length).toBeGreaterThan(10);
    const pending: Promise<void>[] = [];
    for (const [name, fn] of fns) {
      if (name === 'setNumThreads') continue; // checked apart: a valid garbage value would change the pool
      for (const g of junk) {
        // The garbage in each position, with plausible values in the others.
        const arglists: unknown[][] = [[g], [g, g], [live, g], [live, ids, g], [live, g, {}], [g, ids], [live, live, g], [{ logprobs: g }], [live, ids, live, g]];
        for (const args of arglists) {
          const p = expectAllowed(`${name}(${args.map(label).join(', ')})`, () => fn(...args));
          if (p) pending.push(p);
        }
      }
    }
    await Promise.all(pending);
  });

  it('the linear log-prob functions reject garbage in every position, with valid arguments elsewhere', () => {
    const h = rlk.tensor(new Float32Array(6).fill(0.5), { shape: [2, 3] });
    const w = rlk.tensor(new Float32Array(12).fill(0.25), { shape: [4, 3] });
    const ids = rlk.tensor([0, 3], { dtype: 'int32' });
    const g = rlk.tensor([1, -1]);
    const valid: Record<string, unknown[]> = {
      linearLogprobs: [h, w, ids, {}],
      linearLogprobsBackward: [h, w, ids, g, {}],
      linearLogprobsPartials: [h, w, ids, { vocabStart: 0, vocabSize: 4 }],
      linearLogprobsShardBackward: [h, w, ids, g, { vocabStart: 0, vocabSize: 4, stats: rlk.zeros([2, 3]) }],
    };
    for (const [name, args] of Object.entries(valid)) {
      const fn = (rlk as unknown as Record<string, (...a: unknown[]) => unknown>)[name];
      expect(() => fn(...args), `${name} with valid arguments`).not.toThrow();
      for (const junk of garbage()) {
        for (let i = 0; i < args.length; i++) {
          const a = args.slice();
          a[i] = junk;
          expectAllowed(`${name}(arg ${i} = ${label(junk)})`, () => fn(...a));
        }
        for (const key of ['temperature', 'bias', 'chunkSize', 'ignoreIndex', 'stats', 'gradEntropy', 'entropy']) {
          const a = args.slice();
          a[a.length - 1] = { ...(args[args.length - 1] as object), [key]: junk };
          expectAllowed(`${name}({ ${key}: ${label(junk)} })`, () => fn(...a));
        }
      }
    }
  });

  it('tensor methods reject garbage', async () => {
    const t = rlk.tensor([1, 2, 3, 4]);
    for (const g of garbage()) {
      expectAllowed(`to(${label(g)})`, () => t.to(g as never));
      expectAllowed(`reshape(${label(g)})`, () => t.reshape(g as never));
    }
    await expect(disposedTensor().toArray()).rejects.toBeInstanceOf(rlk.DisposedError);
    await expect(disposedTensor().item()).rejects.toBeInstanceOf(rlk.DisposedError);
    expect(() => disposedTensor().itemSync()).toThrow(rlk.DisposedError);
  });
});

describe('messages name the function and the argument', () => {
  const cases: Array<[string, () => unknown, ErrorConstructor | typeof rlk.DisposedError, RegExp]> = [
    ['tensor data', () => rlk.tensor('x' as never), TypeError, /^tensor: data must be/],
    ['tensor option', () => rlk.tensor([1], { dtpye: 'float32' } as never), TypeError, /^tensor: unknown option 'dtpye'/],
    ['tensor dtype', () => rlk.tensor([1], { dtype: 'float64' as never }), RangeError, /^tensor: dtype must be one of .*got "float64"/],
    ['tensor device', () => rlk.tensor([1], { device: 'gpu' as never }), RangeError, /^tensor: device must be 'cpu', 'cuda' or 'cuda:N', got "gpu"/],
    ['tensor shape', () => rlk.tensor([1, 2], { shape: [3] }), RangeError, /^tensor: shape \[3\] needs 3 elements, data has 2/],
    ['empty shape kind', () => rlk.empty('3' as never), TypeError, /^empty: shape must be an array/],
    ['empty negative', () => rlk.empty([2, -1]), RangeError, /^empty: shape\[1\] must be a non-negative integer, got -1/],
    ['empty NaN', () => rlk.empty([NaN]), RangeError, /^empty: shape\[0\] must be a non-negative integer, got NaN/],
    ['empty fractional', () => rlk.empty([1.5]), RangeError, /shape\[0\]/],
    ['empty huge', () => rlk.empty([2 ** 40, 2 ** 20]), RangeError, /^empty: shape .* too many elements|cannot allocate/],
    ['empty too big for RAM', () => rlk.empty([2 ** 44]), RangeError, /^empty: .*(cannot allocate|too large)/],
    ['zeros too big for RAM', () => rlk.zeros([2 ** 43], { dtype: 'uint8' }), RangeError, /^full: cannot allocate/],
    ['full value', () => rlk.full([2], 'a' as never), TypeError, /^full: value must be a number/],
    ['reshape', () => rlk.tensor([1, 2, 3]).reshape([2]), RangeError, /^reshape: shape \[2\] must have 3 elements/],
    ['to target', () => rlk.tensor([1]).to({ device: 'cpu', layout: 1 } as never), TypeError, /^to: unknown option 'layout' in target/],
    ['scope fn', () => rlk.scope(5 as never), TypeError, /^scope: fn must be a function/],
    ['keep', () => rlk.keep({} as never), TypeError, /^keep: t must be a tensor/],
    ['setNumThreads', () => rlk.setNumThreads(0), RangeError, /^setNumThreads: threads must be an integer >= 1/],
    ['setNumThreads kind', () => rlk.setNumThreads('2' as never), TypeError, /^setNumThreads: threads must be a number/],
    ['synchronize', () => rlk.cuda.synchronize('cpu:1' as never), RangeError, /^cuda.synchronize: device/],
    ['disposed', () => disposedTensor().toArraySync(), rlk.DisposedError, /^toArraySync: tensor was disposed/],
  ];
  for (const [what, call, cls, re] of cases) {
    it(what, () => {
      let caught: unknown;
      try {
        call();
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(cls);
      expect((caught as Error).message).toMatch(re);
    });
  }

  it('the addon itself rejects garbage that bypasses the TypeScript layer', async () => {
    const { native } = await import('../src/native.js');
    const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    expect(() => n.empty([1], 99, -1)).toThrow(RangeError);
    expect(() => n.empty([1], 0, 7)).toThrow(RangeError);
    expect(() => n.empty('x', 0, -1)).toThrow(TypeError);
    expect(() => n.fromData([2], 0, -1, new Float32Array(3))).toThrow(/data has 3 elements/);
    expect(() => n.fromData([2], 0, -1, [1, 2])).toThrow(TypeError);
    const t = rlk.tensor([1, 2]);
    const h = t.handle('test');
    const Ctor = (h as object).constructor as new (...a: unknown[]) => unknown;
    expect(() => new Ctor()).toThrow(/cannot be constructed directly/);
    const fake = Object.create(Object.getPrototypeOf(h));
    expect(() => n.fromData([1], 0, -1, new Float32Array(1)) && (fake as { read(): unknown }).read()).toThrow();
    expect(() => (h as unknown as { to(a: unknown, b: unknown): unknown }).to('x', -1)).toThrow(TypeError);
    t.dispose();
    expect(() => (h as unknown as { read(): unknown }).read()).toThrow(rlk.DisposedError);
  });

  it('setNumThreads accepts only whole counts in range', () => {
    const n = rlk.getNumThreads();
    for (const g of [0, -1, 1.5, NaN, 1e9, '2', null]) expect(() => rlk.setNumThreads(g as never)).toThrow();
    expect(rlk.getNumThreads()).toBe(n);
  });
});
