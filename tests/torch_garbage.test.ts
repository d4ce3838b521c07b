// Garbage at every export of rlkernels/torch and at TorchTensor's methods:
// each call returns or throws TypeError, RangeError or DisposedError; nothing
// crashes the process. The
// sweep enumerates the module's exports, so a function added later is covered.
import { expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import * as torch from '../src/torch.js';
import { bridge } from '../src/torch_tensor.js';
import { describeBridge } from './torch_helpers.js';

const ALLOWED = [TypeError, RangeError, rlk.DisposedError];

function garbage(): unknown[] {
  const disposed = torch.tensor([1, 2]);
  disposed.dispose();
  const disposedCore = rlk.tensor([1]);
  disposedCore.dispose();
  const m = torch.tensor([[1, 2, 3], [4, 5, 6]]);
  return [
    undefined, null, 0, -1, 0.5, NaN, Infinity, 2 ** 53, 1e300, '', 'x', 'cuda:99', 'float32', 'softmax.int', true, 10n,
    Symbol('s'), () => 1, {}, [], [NaN], [-1], [2 ** 40, 2 ** 40], [0.5], ['a'], new Array(17).fill(1), new Float32Array(3),
    new Float64Array(0), { dtype: 'nope' }, { device: 'tpu' }, { device: 'cuda' }, { temperature: -1 }, { estimator: 'k9' },
    { kind: 'nope' }, { clipLow: -0.1 }, { groupSize: 3 }, { lr: -1 }, { unknownOption: 1 },
    disposed, disposedCore, rlk.tensor([1.5, -2]),
    m, torch.aten('t', m), torch.tensor([1, 0], { dtype: 'bool' }), torch.tensor([7n, 8n]), torch.tensor(2.5),
    torch.tensor(new Float32Array(0)), torch.tensor([[1, 2]], { dtype: 'float64' }), torch.tensor([1, 2], { requiresGrad: true }),
    torch.tensor(Int32Array.from([0, 5])),
  ];
}

function label(a: unknown): string {
  if (a instanceof torch.TorchTensor) return String(a);
  if (typeof a === 'object' && a !== null) return (a as object).constructor?.name ?? 'object';
  if (typeof a === 'symbol') return 'symbol';
  return String(a);
}

async function expectAllowed(what: string, call: () => unknown, allowed: unknown[] = ALLOWED): Promise<void> {
  let result: unknown;
  try {
    result = call();
  } catch (err) {
    if (!allowed.some((C) => err instanceof (C as ErrorConstructor))) throw new Error(`${what} threw ${String(err)} (${(err as Error)?.constructor?.name})`);
    return;
  }
  if (result instanceof Promise) {
    try {
      await result;
    } catch (err) {
      if (!allowed.some((C) => err instanceof (C as ErrorConstructor))) throw new Error(`${what} rejected with ${String(err)}`);
    }
  }
}

describeBridge('garbage at rlkernels/torch', () => {
  it('every exported function rejects garbage cleanly', async () => {
    const junk = garbage();
    const live = torch.tensor([[0.5, -1, 2], [3, 4, -5]]);
    const ids = torch.tensor(Int32Array.from([0, 2]));
    const weight = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]);
    const fns: Array<[string, (...a: unknown[]) => unknown]> = [];
    for (const [name, v] of Object.entries(torch)) {
      if (typeof v === 'function' && v !== torch.TorchTensor) fns.push([name, v as (...a: unknown[]) => unknown]);
    }
    fns.push(['jit.load', torch.jit.load as never]);
    fns.push(['new optim.AdamW', (...a: unknown[]) => new (torch.optim.AdamW as unknown as new (...x: unknown[]) => unknown)(...a)]);
    fns.push(['new TorchTensor', (...a: unknown[]) => new (torch.TorchTensor as unknown as new (...x: unknown[]) => unknown)(...a)]);
    expect(fns.length).toBeGreaterThan(20);
    for (const [name, fn] of fns) {
      if (name === 'noGrad' || name === 'scope') continue; // they call their argument: checked below
      const allowed = ALLOWED;
      for (const g of junk) {
        const arglists: unknown[][] = [[g], [g, g], [live, g], [live, ids, g], [live, g, {}], [g, ids], [live, live, g], [{ logprobs: g }],
          [{ logprobs: live, oldLogprobs: g, advantages: g }], [live, 1, g, 2],
          // linearLogprobs(hidden [2, 3], weight [V, 3], targets [2], options): garbage in each place.
          [live, weight, ids, g], [live, weight, g], [g, weight, ids], [live, weight, ids, { bias: g }], [live, weight, ids, { temperature: g }],
          [live, weight, ids, { chunkSize: g }], [live, weight, ids, { ignoreIndex: g, entropy: true }]];
        for (const args of arglists) await expectAllowed(`${name}(${args.map(label).join(', ')})`, () => fn(...args), allowed);
      }
    }
    torch.setNumThreads(1);
    expect(() => torch.noGrad(5 as never)).toThrow(TypeError);
    expect(() => torch.scope(5 as never)).toThrow(TypeError);
  });

  it('TorchTensor methods and accessors reject garbage', async () => {
    const t = torch.tensor([1, 2, 3, 4], { requiresGrad: true });
    for (const g of garbage()) {
      await expectAllowed(`to(${label(g)})`, () => t.to(g as never));
      await expectAllowed(`reshape(${label(g)})`, () => t.reshape(g as never));
      await expectAllowed(`backward(${label(g)})`, () => t.backward(g as never));
      await expectAllowed(`backward(undefined, ${label(g)})`, () => t.backward(undefined, g as never));
      await expectAllowed(`requiresGrad = ${label(g)}`, () => { t.requiresGrad = g as never; });
    }
    const d = torch.tensor([1]);
    d.dispose();
    for (const call of [() => d.toArraySync(), () => d.requiresGrad, () => d.grad, () => d.detach(), () => d.backward(), () => d.contiguous(), () => torch.softmax(d)]) {
      expect(call).toThrow(rlk.DisposedError);
    }
    await expect(d.toArray()).rejects.toBeInstanceOf(rlk.DisposedError);
  });

  it('the bridge itself rejects garbage that bypasses the TypeScript layer', () => {
    const t = torch.tensor([1, 2]);
    const h = t.handle('test') as unknown as Record<string, (...a: unknown[]) => unknown>;
    const Ctor = (h as object).constructor as new (...a: unknown[]) => unknown;
    expect(() => new Ctor()).toThrow(/cannot be constructed directly/);
    expect(() => torch.aten('softmax.int', t)).toThrow(/argument 'dim'/);
    expect(() => torch.aten('nope_op')).toThrow(RangeError);
    expect(() => torch.aten('add.Tensor', t, 'x')).toThrow(TypeError);
    expect(() => torch.aten('add.Tensor', t, t, { alpha: 1, bogus: 2 })).toThrow(/unknown keyword/);
    expect(() => torch.aten('index_select', t, 0, torch.tensor([5n]))).toThrow(RangeError);
    expect(() => h.to('x', null, false)).toThrow(RangeError);
    expect(() => h.backward(5, false)).toThrow(TypeError);
    expect(() => torch.tensor([1], { device: 'cuda' })).toThrow(/no CUDA|CUDA/);
    // linearLogprobs(hidden, weight, bias | null, targets, temperature, temperatureTensor | null, ignoreIndex, entropy, chunkSize)
    const B = bridge() as unknown as { linearLogprobs(...a: unknown[]): unknown };
    const hid = torch.tensor([[1, 2], [3, 4]]).handle('test');
    const w = torch.tensor([[1, 0], [0, 1], [1, 1]]).handle('test');
    const ids = torch.tensor(Int32Array.from([0, 2])).handle('test');
    expect(() => B.linearLogprobs(hid, w, null, ids, 1, null, -100, false, 0)).not.toThrow();
    expect(() => B.linearLogprobs(hid, w, null, ids, 1, null, -100, false)).toThrow(/chunkSize/);
    expect(() => B.linearLogprobs(hid, w, null, ids, 1, null, -100, false, -1)).toThrow(RangeError);
    expect(() => B.linearLogprobs(hid, w, null, ids, 1, null, 0.5, false, 0)).toThrow(/ignoreIndex/);
    expect(() => B.linearLogprobs(hid, w, null, ids, -1, null, -100, false, 0)).toThrow(/temperature/);
    expect(() => B.linearLogprobs(hid, w, w, ids, 1, null, -100, false, 0)).toThrow(/bias must have shape/);
    expect(() => B.linearLogprobs(hid, ids, null, ids, 1, null, -100, false, 0)).toThrow(/weight must be float32/);
    expect(() => B.linearLogprobs(w, w, null, ids, 1, null, -100, false, 0)).toThrow(/targets must have shape/);
    expect(() => B.linearLogprobs(hid, w, null, hid, 1, null, -100, false, 0)).toThrow(/targets must be int32 or int64/);
    expect(() => B.linearLogprobs(5, w, null, ids, 1, null, -100, false, 0)).toThrow(TypeError);
    t.dispose();
    expect(() => h.read()).toThrow(rlk.DisposedError);
  });
});
