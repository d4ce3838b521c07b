// The libtorch bridge (rlkernels/torch): TorchTensor, DLPack sharing with core
// tensors both ways, the kernels as autograd functions (values and gradients
// equal to the core kernels' and to PyTorch autograd over the same formulas,
// run through the bridge in this process, in float32 and float64), TorchScript
// and AdamW, and the loader's refusals.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import * as torch from '../src/torch.js';
import { expectClose, freshSeed, randn, rng } from './helpers.js';
import { BRIDGE, ROOT, TORCH_PYTHON, describeBridge, python } from './torch_helpers.js';

const A = torch.aten;
type TT = torch.TorchTensor;
const f64 = (t: TT): number[] => Array.from(t.toArraySync() as Float32Array, Number);

describe('the bridge is built where torch is found', () => {
  it('loads when a python with torch is present (never a silent skip)', () => {
    if (!TORCH_PYTHON) {
      console.log('[rlkernels] no python with torch here: the bridge is not required');
      return;
    }
    expect(BRIDGE.problem).toBeNull();
    expect(BRIDGE.loadable).toBe(true);
    const info = torch.load();
    expect(info.torchVersion.split('+')[0]).toBe(BRIDGE.record!.torchVersion.split('+')[0]);
  });

  it('bridgeStatus reads the build record without loading libtorch', () => {
    const s = torch.bridgeStatus();
    expect(s.path).toMatch(/rlkernels_torch\.node$/);
    if (s.record) {
      for (const k of ['torchVersion', 'torchLibDir', 'cuda', 'builtAt']) expect(s.record).toHaveProperty(k);
    }
  });
});

describeBridge('loader refusals', () => {
  function childImport(env: Record<string, string>): { status: number | null; out: string } {
    const code = `import('${join(ROOT, 'dist', 'torch.js')}').then((t) => { try { t.load(); console.log('LOADED'); } catch (e) { console.log(e.name + ': ' + e.message); } })`;
    const r = spawnSync(process.execPath, ['-e', code], { env: { ...process.env, ...env }, encoding: 'utf8' });
    return { status: r.status, out: r.stdout + r.stderr };
  }

  it('a bridge built for another torch is refused with a clear message', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rlk-bridge-'));
    mkdirSync(join(dir, 'Release'));
    copyFileSync(BRIDGE.path, join(dir, 'Release', 'rlkernels_torch.node'));
    const rec = JSON.parse(readFileSync(BRIDGE.recordPath, 'utf8'));
    writeFileSync(join(dir, 'torch-build.json'), JSON.stringify({ ...rec, torchVersion: '2.99.0' }));
    process.env.RLK_TORCH_BRIDGE_DIR = dir;
    try {
      const s = torch.bridgeStatus();
      expect(s.loadable).toBe(false);
      expect(s.problem).toMatch(/built against torch 2\.99\.0.*now holds torch 2\.13/);
    } finally {
      delete process.env.RLK_TORCH_BRIDGE_DIR;
    }
    const r = childImport({ RLK_TORCH_BRIDGE_DIR: dir });
    expect(r.status).toBe(0);
    expect(r.out).toMatch(/NativeLoadError: rlkernels\/torch: the bridge was built against torch 2\.99\.0/);
    expect(r.out).toMatch(/npx rlkernels build-torch/);
  });

  it('a missing bridge says how to build it; importing alone does not throw', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rlk-nobridge-'));
    const r = childImport({ RLK_TORCH_BRIDGE_DIR: dir });
    expect(r.status).toBe(0);
    expect(r.out).toMatch(/NativeLoadError: rlkernels\/torch: the libtorch bridge is not built.*npx rlkernels build-torch/s);
  });
});

describeBridge('TorchTensor', () => {
  it('creation, reads, dtypes, to(), detach, dispose', async () => {
    const t = torch.tensor([[1, 2, 3], [4, 5, 6]]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe('cpu');
    expect(Array.from((await t.toArray()) as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const b = t.to({ dtype: 'bfloat16' });
    expect(b.dtype).toBe('bfloat16');
    expect(Array.from(torch.tensor([1.00390625, 3.015625], { dtype: 'bfloat16' }).toArraySync() as ArrayLike<number>)).toEqual([1, 3.015625]);
    expect(torch.tensor([7n, -8n]).toArraySync()).toEqual(new BigInt64Array([7n, -8n]));
    expect(torch.tensor(Int32Array.from([1, -2])).dtype).toBe('int32');
    expect(Array.from(torch.tensor([1, 0, 2], { dtype: 'bool' }).toArraySync() as ArrayLike<number>)).toEqual([1, 0, 1]);
    expect(torch.tensor(2.5).itemSync()).toBe(2.5);
    expect(t.reshape([3, 2]).shape).toEqual([3, 2]);
    const d = t.detach();
    expect(d.requiresGrad).toBe(false);
    t.dispose();
    t.dispose();
    expect(() => t.toArraySync()).toThrow(rlk.DisposedError);
    expect(d.toArraySync()[5]).toBe(6);
    expect(() => torch.tensor([1, 2], { shape: [3] })).toThrow(RangeError);
  });

  it('backward, grad, requiresGrad, noGrad', () => {
    const x = torch.tensor([1, 2, 3], { requiresGrad: true });
    const y = A('sum', A('mul.Tensor', x, x)) as TT;
    y.backward();
    expect(Array.from(x.grad!.toArraySync() as ArrayLike<number>)).toEqual([2, 4, 6]);
    x.zeroGrad();
    expect(x.grad).toBeNull();
    const z = torch.noGrad(() => A('mul.Tensor', x, x) as TT);
    expect(z.requiresGrad).toBe(false);
    expect(() => z.backward()).toThrow(TypeError);
    expect(() => (A('mul.Tensor', x, x) as TT).backward()).toThrow(/gradient must be given/);
  });

  it('scope disposes what it created except what it returns', () => {
    let inner: TT | undefined;
    const kept = torch.scope(() => {
      inner = torch.tensor([1]);
      return torch.tensor([2]);
    });
    expect(inner!.disposed).toBe(true);
    expect(kept.disposed).toBe(false);
  });

  it('the trainer ops: cat, indexRows, slice, softmax, multinomial (seeded), argmax', () => {
    const a = torch.tensor([[1, 2], [3, 4]]);
    expect(torch.cat([a, a], 0).shape).toEqual([4, 2]);
    expect(Array.from(torch.indexRows(a, torch.tensor([1n])).toArraySync() as ArrayLike<number>)).toEqual([3, 4]);
    expect(torch.slice(a, 1, 1, 2).shape).toEqual([2, 1]);
    const p = torch.softmax(torch.tensor([[0, 0, 10], [10, 0, 0]]));
    expect(Array.from(torch.argmax(p).toArraySync(), Number)).toEqual([2, 0]);
    torch.manualSeed(7);
    const s1 = torch.multinomial(torch.softmax(torch.tensor([[0, 0, 0, 0]])), 3).toArraySync();
    torch.manualSeed(7);
    const s2 = torch.multinomial(torch.softmax(torch.tensor([[0, 0, 0, 0]])), 3).toArraySync();
    expect(s1).toEqual(s2);
  });
});

describeBridge('DLPack sharing with core tensors', () => {
  it('core -> torch: a write through torch is read through the core, and disposal on either side is safe', () => {
    const c = rlk.tensor([1, 2, 3, 4], { shape: [2, 2] });
    const t = torch.fromCore(c);
    expect(t.shape).toEqual([2, 2]);
    A('mul_.Scalar', t, 3);
    expect(Array.from(c.toArraySync() as ArrayLike<number>)).toEqual([3, 6, 9, 12]);
    c.dispose();
    expect(Array.from(t.toArraySync() as ArrayLike<number>)).toEqual([3, 6, 9, 12]);
    const t2 = torch.fromCore(rlk.tensor([5, 6]));
    const c2 = torch.toCore(t2);
    t2.dispose();
    expect(Array.from(c2.toArraySync() as ArrayLike<number>)).toEqual([5, 6]);
  });

  it('torch -> core: a kernel writing into the core view is read through torch', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 11, N = 5;
    const logits = rlk.tensor(randn(r, N * V), { shape: [N, V] });
    const targets = rlk.tensor(Int32Array.from({ length: N }, () => Math.floor(r() * V)));
    const outT = torch.zeros([N]);
    const outC = torch.toCore(outT);
    rlk.tokenLogprobs(logits, targets, { out: { logprobs: outC } });
    const ref = rlk.tokenLogprobs(logits, targets).logprobs.toArraySync();
    expect(outT.toArraySync()).toEqual(ref);
    outT.dispose();
    expect(outC.toArraySync()).toEqual(ref);
  });

  it('every core dtype round-trips without a copy', () => {
    for (const dtype of ['float32', 'bfloat16', 'float16', 'int32', 'int64', 'uint8'] as const) {
      const c = rlk.tensor(dtype === 'int64' ? [1n, -2n, 3n] : [1, 2, 3], { dtype: dtype as rlk.DType });
      const t = torch.fromCore(c);
      expect(t.dtype).toBe(dtype);
      const back = torch.toCore(t);
      expect(back.dtype).toBe(dtype);
      expect(back.toArraySync()).toEqual(c.toArraySync());
      expect(torch.fromCore(back).dataPtr()).toBe(t.dataPtr());
    }
  });

  it('a capsule is taken once, and nothing else passes for one', async () => {
    const { native } = await import('../src/native.js');
    const n = native as unknown as { toDLPack(h: unknown): unknown; fromDLPack(c: unknown): unknown };
    const c = rlk.tensor([1, 2]);
    const cap = n.toDLPack(c.handle('test'));
    for (const junk of [5, {}, null, undefined, 'x', c.handle('test')]) expect(() => n.fromDLPack(junk)).toThrow(TypeError);
    const once = new rlk.Tensor(n.fromDLPack(cap) as never);
    expect(() => n.fromDLPack(cap)).toThrow(/already consumed/);
    expect(Array.from(once.toArraySync() as Float32Array)).toEqual([1, 2]);
    const t = torch.tensor([3, 4]);
    const tcap = t.handle('test').toDLPack();
    expect(torch.toCore(torch.fromCore(new rlk.Tensor(n.fromDLPack(tcap) as never))).toArraySync()).toEqual(new Float32Array([3, 4]));
    expect(() => n.fromDLPack(tcap)).toThrow(/already consumed/);
  });

  it('refuses what the core cannot hold: non-contiguous, bool, disposed', () => {
    const t = torch.tensor([[1, 2, 3], [4, 5, 6]]);
    const tr = A('t', t) as TT;
    expect(tr.isContiguous).toBe(false);
    expect(() => torch.toCore(tr)).toThrow(/toCore: t must be contiguous/);
    expect(() => torch.toCore(torch.tensor([1, 0], { dtype: 'bool' }))).toThrow(/convert masks to uint8/);
    const d = torch.tensor([1]);
    d.dispose();
    expect(() => torch.toCore(d)).toThrow(rlk.DisposedError);
    const c = rlk.tensor([1]);
    c.dispose();
    expect(() => torch.fromCore(c)).toThrow(rlk.DisposedError);
    expect(() => torch.fromCore(t as never)).toThrow(TypeError);
  });
});

// ---- autograd: against the core kernels and against torch autograd of the formulas ----

function leaf(data: Float64Array | Float32Array, shape: number[], dtype: 'float32' | 'float64' = 'float32'): TT {
  return torch.tensor(Float32Array.from(data), { shape, dtype, requiresGrad: true });
}

/** Torch autograd of DESIGN 3.1: log-probs and entropy of softmax(x / T). */
function refTokenLogprobs(x: TT, targets: TT, temp: number | TT, ignore: number): { lp: TT; ent: TT } {
  const z = typeof temp === 'number' ? (A('div.Scalar', x, temp) as TT) : (A('div.Tensor', x, A('unsqueeze', temp.to({ dtype: x.dtype }), -1)) as TT);
  const lsm = A('log_softmax.int', z, -1) as TT;
  const keepRow = A('ne.Scalar', targets, ignore) as TT;
  const safe = A('where.ScalarOther', keepRow, targets.to({ dtype: 'int64' }), 0) as TT;
  const lp0 = A('squeeze.dim', A('gather', lsm, -1, A('unsqueeze', safe, -1)), -1) as TT;
  const ent0 = A('neg', A('sum.dim_IntList', A('mul.Tensor', A('exp', lsm), lsm), [-1])) as TT;
  const m = keepRow.to({ dtype: x.dtype });
  return { lp: A('mul.Tensor', lp0, m) as TT, ent: A('mul.Tensor', ent0, m) as TT };
}

describeBridge('tokenLogprobs as an autograd function', () => {
  const cases: Array<{ shape: number[]; temp: number | 'rows'; entropy: boolean; ignore: boolean }> = [
    { shape: [1, 7], temp: 1, entropy: false, ignore: false },
    { shape: [5, 33], temp: 0.7, entropy: true, ignore: true },
    { shape: [3, 4, 129], temp: 'rows', entropy: true, ignore: false },
    { shape: [64, 1000], temp: 1.3, entropy: true, ignore: true },
  ];
  for (const c of cases) {
    it(`logits [${c.shape}] T=${c.temp} entropy=${c.entropy} ignore=${c.ignore}`, () => {
      const seed = freshSeed();
      const r = rng(seed);
      const V = c.shape[c.shape.length - 1];
      const rows = c.shape.slice(0, -1).reduce((a, b) => a * b, 1);
      const lead = c.shape.slice(0, -1);
      const data = Float32Array.from(randn(r, rows * V, 3));
      const tg = Int32Array.from({ length: rows }, () => (c.ignore && r() < 0.2 ? -100 : Math.floor(r() * V)));
      const w1 = Float32Array.from(randn(r, rows));
      const w2 = Float32Array.from(randn(r, rows));
      const tempRows = Float32Array.from({ length: rows }, () => 0.5 + r());
      const targets = torch.tensor(tg, { shape: lead });
      const tempT = c.temp === 'rows' ? torch.tensor(tempRows, { shape: lead }) : c.temp;

      // The bridge.
      const x = leaf(data, c.shape);
      const out = torch.tokenLogprobs(x, targets, { temperature: tempT, entropy: c.entropy });
      let loss = A('sum', A('mul.Tensor', out.logprobs, torch.tensor(w1, { shape: lead }))) as TT;
      if (c.entropy) loss = A('add.Tensor', loss, A('sum', A('mul.Tensor', out.entropy!, torch.tensor(w2, { shape: lead })))) as TT;
      loss.backward();
      const grad = f64(x.grad!);

      // The core kernels on the same values: bitwise the same forward, the same gradient.
      const cl = rlk.tensor(data, { shape: c.shape });
      const ct = rlk.tensor(tg, { shape: lead });
      const ctemp = c.temp === 'rows' ? rlk.tensor(tempRows, { shape: lead }) : c.temp;
      const core = rlk.tokenLogprobs(cl, ct, { temperature: ctemp, entropy: c.entropy });
      expect(out.logprobs.toArraySync()).toEqual(core.logprobs.toArraySync());
      if (c.entropy) expect(out.entropy!.toArraySync()).toEqual(core.entropy!.toArraySync());
      const cg = rlk.tokenLogprobsBackward(cl, ct, rlk.tensor(w1, { shape: lead }), {
        temperature: ctemp,
        gradEntropy: c.entropy ? rlk.tensor(w2, { shape: lead }) : undefined,
      });
      expectClose('grad vs core backward', grad, Array.from(cg.toArraySync() as ArrayLike<number>), 1e-6, seed);

      // Torch autograd over the formula, float32 and float64, in this process.
      for (const dtype of ['float32', 'float64'] as const) {
        const y = leaf(data, c.shape, dtype);
        const ref = refTokenLogprobs(y, targets, typeof tempT === 'number' ? tempT : tempT, -100);
        let rl = A('sum', A('mul.Tensor', ref.lp, torch.tensor(w1, { shape: lead, dtype }))) as TT;
        if (c.entropy) rl = A('add.Tensor', rl, A('sum', A('mul.Tensor', ref.ent, torch.tensor(w2, { shape: lead, dtype })))) as TT;
        rl.backward();
        const tol = dtype === 'float64' ? 5e-6 : 2e-5;
        expectClose(`logprobs vs torch ${dtype}`, f64(out.logprobs), f64(ref.lp.to({ dtype: 'float32' })), tol, seed);
        if (c.entropy) expectClose(`entropy vs torch ${dtype}`, f64(out.entropy!), f64(ref.ent.to({ dtype: 'float32' })), tol, seed);
        expectClose(`grad vs torch autograd ${dtype}`, grad, f64(y.grad!.to({ dtype: 'float32' })), tol, seed);
      }
    });
  }

  it('an unused entropy output costs no gradient, and bf16 logits get a bf16 gradient', () => {
    const x = torch.tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), { shape: [2, 3], dtype: 'bfloat16', requiresGrad: true });
    const out = torch.tokenLogprobs(x, torch.tensor(Int32Array.from([0, 2])), { entropy: true });
    (A('sum', out.logprobs) as TT).backward();
    expect(x.grad!.dtype).toBe('bfloat16');
    const g = f64(x.grad!);
    expect(Math.abs(g[0] + g[1] + g[2])).toBeLessThan(1e-2);
  });

  it('bfloat16 and float16 logits: forward equal to the core on the same values, gradient in the logits dtype within one ulp of float64 torch autograd', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const rows = 7, V = 301;
      const tg = Int32Array.from({ length: rows }, () => Math.floor(r() * V));
      const w1 = Float32Array.from(randn(r, rows));
      const w2 = Float32Array.from(randn(r, rows));
      const x = torch.tensor(Float32Array.from(randn(r, rows * V, 3)), { shape: [rows, V], dtype, requiresGrad: true });
      const targets = torch.tensor(tg);
      const out = torch.tokenLogprobs(x, targets, { temperature: 0.7, entropy: true });
      const loss = A('add.Tensor', A('sum', A('mul.Tensor', out.logprobs, torch.tensor(w1))), A('sum', A('mul.Tensor', out.entropy!, torch.tensor(w2)))) as TT;
      loss.backward();
      expect(x.grad!.dtype).toBe(dtype);
      const grad = f64(x.grad!.to({ dtype: 'float32' }));

      // The core on the same half-precision values.
      const cx = torch.toCore(x.detach());
      const ct = rlk.tensor(tg);
      const core = rlk.tokenLogprobs(cx, ct, { temperature: 0.7, entropy: true });
      expect(out.logprobs.toArraySync()).toEqual(core.logprobs.toArraySync());
      expect(out.entropy!.toArraySync()).toEqual(core.entropy!.toArraySync());

      // float64 torch autograd of the same values: the gradient rounded once to the logits dtype.
      const y = torch.tensor(Float32Array.from(f64(x.detach().to({ dtype: 'float32' }))), { shape: [rows, V], dtype: 'float64', requiresGrad: true });
      const ref = refTokenLogprobs(y, targets, 0.7, -100);
      const rl = A('add.Tensor', A('sum', A('mul.Tensor', ref.lp, torch.tensor(w1, { dtype: 'float64' }))), A('sum', A('mul.Tensor', ref.ent, torch.tensor(w2, { dtype: 'float64' })))) as TT;
      rl.backward();
      expectClose(`${dtype} logprobs vs float64 torch`, f64(out.logprobs), f64(ref.lp.to({ dtype: 'float32' })), 1e-6, seed);
      const want = Array.from(y.grad!.toArraySync() as Float64Array);
      const mant = dtype === 'bfloat16' ? 7 : 10;
      const minUlp = dtype === 'bfloat16' ? 2 ** -133 : 2 ** -24;
      for (let i = 0; i < want.length; i++) {
        const ulp = want[i] === 0 ? minUlp : Math.max(minUlp, 2 ** (Math.floor(Math.log2(Math.abs(want[i]))) - mant));
        if (!(Math.abs(grad[i] - want[i]) <= ulp)) throw new Error(`${dtype} grad[${i}]: got ${grad[i]}, want ${want[i]} (one ulp ${ulp}; seed ${seed})`);
      }
    }
  });

  it('refuses bad input with clear errors', () => {
    const x = torch.tensor([[1, 2, 3], [4, 5, 6]]);
    const tg = torch.tensor(Int32Array.from([0, 1]));
    expect(() => torch.tokenLogprobs(A('t', x) as TT, torch.tensor(Int32Array.from([0, 1, 1])))).toThrow(/logits must be contiguous/);
    expect(() => torch.tokenLogprobs(x, torch.tensor(Int32Array.from([0, 3])))).toThrow(RangeError);
    expect(() => torch.tokenLogprobs(x, torch.tensor([0, 1]))).toThrow(/targets must be int32 or int64/);
    expect(() => torch.tokenLogprobs(x, tg, { temperature: 0 })).toThrow(RangeError);
    expect(() => torch.tokenLogprobs(x, tg, { temprature: 1 } as never)).toThrow(/unknown option 'temprature'/);
    expect(() => torch.tokenLogprobs(x, tg, { temperature: torch.tensor([1, -1]) })).toThrow(/temperature\[1\]/);
    expect(() => torch.tokenLogprobs(rlk.tensor([[1, 2]]) as never, tg)).toThrow(/logits must be a TorchTensor/);
    const d = torch.tensor([[1, 2, 3]]);
    d.dispose();
    expect(() => torch.tokenLogprobs(d, tg)).toThrow(rlk.DisposedError);
  });
});

describeBridge('policyLoss, klPenalty, vocabDivergence as autograd functions', () => {
  it('policyLoss: loss and d/dlogprobs, d/dentropy equal the core and torch autograd of verl formulas', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const B = 6, T = 9, N = B * T;
    const lp0 = Float32Array.from(randn(r, N, 0.5), (v) => -Math.abs(v) - 0.1);
    const old0 = Float32Array.from(lp0, (v) => v + 0.3 * (r() - 0.5) * 2);
    const ref0 = Float32Array.from(lp0, (v) => v + 0.2 * (r() - 0.5) * 2);
    const ent0 = Float32Array.from({ length: N }, () => r() * 3);
    const adv0 = Float32Array.from(randn(r, B));
    const mask0 = Uint8Array.from({ length: N }, () => (r() < 0.8 ? 1 : 0));
    const cl = 0.2, ch = 0.28, dual = 3, klc = 0.1, ec = 0.01;
    const opts = (ref: unknown, ent: unknown) => ({ clipLow: cl, clipHigh: ch, dualClip: dual, kl: { refLogprobs: ref, estimator: 'k3', coef: klc }, entropy: { values: ent, coef: ec } });

    const lp = leaf(lp0, [B, T]);
    const ent = leaf(ent0, [B, T]);
    const old = torch.tensor(old0, { shape: [B, T] });
    const adv = torch.tensor(adv0);
    const mask = torch.tensor(mask0, { shape: [B, T] });
    const refT = torch.tensor(ref0, { shape: [B, T] });
    const up = 1.7; // a non-unit upstream gradient
    const pl = torch.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv, mask }, opts(refT, ent) as never);
    (A('mul.Scalar', pl.loss, up) as TT).backward();
    expect((await pl.readStats()).klMean).toBeGreaterThan(0);

    const core = rlk.policyLoss(
      { logprobs: rlk.tensor(lp0, { shape: [B, T] }), oldLogprobs: rlk.tensor(old0, { shape: [B, T] }), advantages: rlk.tensor(adv0), mask: rlk.tensor(mask0, { shape: [B, T] }) },
      opts(rlk.tensor(ref0, { shape: [B, T] }), rlk.tensor(ent0, { shape: [B, T] })) as never,
    );
    expect(pl.loss.itemSync()).toBe(core.loss.itemSync());
    expectClose('dlogprobs vs core', f64(lp.grad!), Array.from(core.grad.toArraySync(), (v) => v * up), 1e-6, seed);
    expectClose('dentropy vs core', f64(ent.grad!), Array.from(core.gradEntropy!.toArraySync(), (v) => v * up), 1e-6, seed);

    // verl's compute_policy_loss_vanilla + agg_loss(token-mean) + k3 + entropy, in torch float64.
    const x = leaf(lp0, [B, T], 'float64');
    const e = leaf(ent0, [B, T], 'float64');
    const d64 = (a: Float32Array | Uint8Array, shape: number[]) => torch.tensor(Float64Array.from(a), { shape, dtype: 'float64' });
    const Ad = A('unsqueeze', d64(adv0, [B]), 1) as TT;
    const m = d64(mask0, [B, T]);
    const ratio = A('exp', A('clamp', A('sub.Tensor', x, d64(old0, [B, T])), -20, 20)) as TT;
    const negA = A('neg', Ad) as TT;
    const L1 = A('mul.Tensor', negA, ratio);
    const L2 = A('mul.Tensor', negA, A('clamp', ratio, 1 - cl, 1 + ch));
    const Lc = A('maximum', L1, L2) as TT;
    const L3 = A('minimum', Lc, A('mul.Scalar', negA, dual));
    const L = A('where.self', A('lt.Scalar', Ad, 0), L3, Lc) as TT;
    const msum = A('sum', m) as TT;
    const agg = (v: unknown) => A('div.Tensor', A('sum', A('mul.Tensor', v, m)), msum) as TT;
    const kx = A('clamp', A('sub.Tensor', d64(ref0, [B, T]), x), -20, 20) as TT;
    const k3 = A('clamp', A('sub.Scalar', A('sub.Tensor', A('exp', kx), kx), 1), -10, 10);
    const total = A('sub.Tensor', A('add.Tensor', agg(L), A('mul.Scalar', agg(k3), klc)), A('mul.Scalar', agg(e), ec)) as TT;
    (A('mul.Scalar', total, up) as TT).backward();
    expectClose('loss vs torch float64', [pl.loss.itemSync()], [total.itemSync()], 1e-6, seed);
    expectClose('dlogprobs vs torch autograd', f64(lp.grad!), f64(x.grad!.to({ dtype: 'float32' })), 1e-5, seed);
    expectClose('dentropy vs torch autograd', f64(ent.grad!), f64(e.grad!.to({ dtype: 'float32' })), 1e-5, seed);
  });

  it('policyLoss takes every core option (gspo, aggregation) and refuses bad ones as the core does', () => {
    const lp = torch.tensor([[-1, -2], [-0.5, -0.1]], { requiresGrad: true });
    const old = torch.tensor([[-1.1, -2], [-0.4, -0.3]]);
    const adv = torch.tensor([1, -1]);
    const g = torch.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv }, { mode: 'gspo', aggregation: 'seq-mean-token-sum' });
    g.loss.backward();
    expect(lp.grad!.shape).toEqual([2, 2]);
    expect(() => torch.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv }, { clipLow: -1 })).toThrow(/^policyLoss: clipLow/);
    expect(() => torch.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv }, { mode: 'nope' as never })).toThrow(RangeError);
    expect(() => torch.policyLoss({ logprobs: A('t', lp) as TT, oldLogprobs: old, advantages: adv })).toThrow(/contiguous/);
    expect(() => torch.policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv, mask: torch.tensor([[1, 0], [1, 1]], { dtype: 'bool' }) })).toThrow(/uint8/);
    expect(() => torch.policyLoss({ logprobs: lp.to({ dtype: 'float64' }), oldLogprobs: old, advantages: adv })).toThrow(/^policyLoss: tensors must be float32/);
  });

  it('klPenalty: values and elementwise gradient under a weighted upstream', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const N = 37;
    const lp0 = Float32Array.from(randn(r, N, 0.5), (v) => -Math.abs(v));
    const ref0 = Float32Array.from(lp0, (v) => v + (r() - 0.5));
    const w = Float32Array.from(randn(r, N));
    for (const estimator of ['k1', 'k2', 'k3'] as const) {
      const x = leaf(lp0, [N]);
      const out = torch.klPenalty(x, torch.tensor(ref0), { estimator });
      (A('sum', A('mul.Tensor', out.values, torch.tensor(w))) as TT).backward();
      const core = rlk.klPenalty(rlk.tensor(lp0), rlk.tensor(ref0), { estimator });
      expect(out.values.toArraySync()).toEqual(core.values.toArraySync());
      const y = leaf(lp0, [N], 'float64');
      const d = A('sub.Tensor', y, torch.tensor(Float64Array.from(ref0), { dtype: 'float64' })) as TT;
      let v: TT;
      if (estimator === 'k1') v = d;
      else if (estimator === 'k2') v = A('mul.Scalar', A('mul.Tensor', d, d), 0.5) as TT;
      else {
        const kx = A('clamp', A('neg', d), -20, 20) as TT;
        v = A('clamp', A('sub.Scalar', A('sub.Tensor', A('exp', kx), kx), 1), -10, 10) as TT;
      }
      (A('sum', A('mul.Tensor', v, torch.tensor(Float64Array.from(w), { dtype: 'float64' }))) as TT).backward();
      expectClose(`${estimator} grad vs core`, f64(x.grad!), Array.from(core.grad.toArraySync(), (g, i) => g * w[i]), 1e-6, seed);
      expectClose(`${estimator} grad vs torch`, f64(x.grad!), f64(y.grad!.to({ dtype: 'float32' })), 1e-6, seed);
    }
  });

  it('the core views of inputs are kept while their memory stays, follow writes, are remade when it moves, go with the tensor', () => {
    const lp0 = Float32Array.from([-0.5, -1, -0.25, -2]);
    const ref0 = Float32Array.from([-0.4, -1.5, -0.3, -1]);
    const other = Float32Array.from([-2, -0.1, -0.7, -0.2]);
    const x = leaf(lp0, [4]);
    const ref = torch.tensor(ref0);
    const kl = (a: Float32Array, b: Float32Array): Float32Array =>
      rlk.klPenalty(rlk.tensor(a), rlk.tensor(b), { estimator: 'k3' }).values.toArraySync() as Float32Array;
    expect(torch.klPenalty(x, ref, { estimator: 'k3' }).values.toArraySync()).toEqual(kl(lp0, ref0));
    const view = (ref.companion() as unknown as { view: rlk.Tensor }).view;
    expect(torch.klPenalty(x, ref, { estimator: 'k3' }).values.toArraySync()).toEqual(kl(lp0, ref0));
    expect((ref.companion() as unknown as { view: rlk.Tensor }).view).toBe(view);
    // An in-place write is seen through the kept view (it shares the memory).
    torch.noGrad(() => A('mul_.Scalar', ref, 2));
    expect(torch.klPenalty(x, ref, { estimator: 'k3' }).values.toArraySync()).toEqual(kl(lp0, Float32Array.from(ref0, (v) => v * 2)));
    // Memory that moves (set_, as module.to() does to parameters) gets a new view.
    torch.noGrad(() => A('set_.source_Tensor', ref, torch.tensor(other)));
    expect(torch.klPenalty(x, ref, { estimator: 'k3' }).values.toArraySync()).toEqual(kl(lp0, other));
    expect((ref.companion() as unknown as { view: rlk.Tensor }).view).not.toBe(view);
    expect(view.disposed).toBe(true);
    // An rlk.scope around the call does not dispose the kept views; disposing the TorchTensor does.
    rlk.scope(() => torch.klPenalty(x, ref, { estimator: 'k3' }));
    const kept = (ref.companion() as unknown as { view: rlk.Tensor }).view;
    expect(kept.disposed).toBe(false);
    ref.dispose();
    expect(kept.disposed).toBe(true);
    expect(ref.companion()).toBeNull();
  });

  it('vocabDivergence: per-row values, student and teacher gradients vs torch autograd', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const R = 7, V = 50, T = 0.8;
    const s0 = Float32Array.from(randn(r, R * V, 2));
    const t0 = Float32Array.from(randn(r, R * V, 2));
    const w = Float32Array.from(randn(r, R));
    for (const kind of ['forward-kl', 'reverse-kl'] as const) {
      const s = leaf(s0, [R, V]);
      const t = leaf(t0, [R, V]);
      const out = torch.vocabDivergence(s, t, { kind, temperature: T });
      expect(out.gradTeacher).toBeDefined();
      (A('sum', A('mul.Tensor', out.values, torch.tensor(w))) as TT).backward();
      const ss = leaf(s0, [R, V], 'float64');
      const tt = leaf(t0, [R, V], 'float64');
      const ls = A('log_softmax.int', A('div.Scalar', ss, T), -1) as TT;
      const lt = A('log_softmax.int', A('div.Scalar', tt, T), -1) as TT;
      const [p, lp, lq] = kind === 'forward-kl' ? [A('exp', lt), lt, ls] : [A('exp', ls), ls, lt];
      const v = A('sum.dim_IntList', A('mul.Tensor', p, A('sub.Tensor', lp, lq)), [-1]) as TT;
      (A('sum', A('mul.Tensor', v, torch.tensor(Float64Array.from(w), { dtype: 'float64' }))) as TT).backward();
      expectClose(`${kind} values`, f64(out.values), f64(v.to({ dtype: 'float32' })), 5e-6, seed);
      expectClose(`${kind} student grad`, f64(s.grad!), f64(ss.grad!.to({ dtype: 'float32' })), 3e-5, seed);
      expectClose(`${kind} teacher grad`, f64(t.grad!), f64(tt.grad!.to({ dtype: 'float32' })), 3e-5, seed);
    }
    // The core's values-only option has no meaning under autograd.
    expect(() => torch.vocabDivergence(leaf(s0, [R, V]), leaf(t0, [R, V]), { kind: 'jsd', grad: false })).toThrow(/options.grad is not an option here/);
  });

  it('groupAdvantages on TorchTensors equals the core', () => {
    const rw = [1, 0, 0, 1, 1, 1, 0, 0];
    const out = torch.groupAdvantages(torch.tensor(rw), { groupSize: 4, method: 'grpo' });
    const core = rlk.groupAdvantages(rlk.tensor(rw), { groupSize: 4, method: 'grpo' });
    expect(out.advantages.toArraySync()).toEqual(core.advantages.toArraySync());
    expect(out.informative.toArraySync()).toEqual(core.informative.toArraySync());
  });

});

describeBridge('linearLogprobs as an autograd function', () => {
  const cases: Array<{ lead: number[]; H: number; V: number; temp: number | 'rows'; entropy: boolean; ignore: boolean; bias: boolean; chunk?: number }> = [
    { lead: [1], H: 5, V: 7, temp: 1, entropy: false, ignore: false, bias: false },
    { lead: [9], H: 16, V: 33, temp: 0.7, entropy: true, ignore: true, bias: true },
    { lead: [3, 5], H: 24, V: 300, temp: 'rows', entropy: true, ignore: false, bias: true, chunk: 4 },
    { lead: [37], H: 32, V: 517, temp: 1.3, entropy: true, ignore: true, bias: false },
  ];
  for (const c of cases) {
    it(`hidden [${c.lead},${c.H}] weight [${c.V},${c.H}] T=${c.temp} entropy=${c.entropy} ignore=${c.ignore} bias=${c.bias}`, () => {
      const seed = freshSeed();
      const r = rng(seed);
      const rows = c.lead.reduce((a, b) => a * b, 1);
      const hd = Float32Array.from(randn(r, rows * c.H, 1));
      const wd = Float32Array.from(randn(r, c.V * c.H, 1 / Math.sqrt(c.H)));
      const bd = Float32Array.from(randn(r, c.V, 0.5));
      const tg = Int32Array.from({ length: rows }, () => (c.ignore && r() < 0.2 ? -100 : Math.floor(r() * c.V)));
      const w1 = Float32Array.from(randn(r, rows));
      const w2 = Float32Array.from(randn(r, rows));
      const tempRows = Float32Array.from({ length: rows }, () => 0.5 + r());
      const targets = torch.tensor(tg, { shape: c.lead });
      const tempT = c.temp === 'rows' ? torch.tensor(tempRows, { shape: c.lead }) : c.temp;

      // The bridge.
      const h = leaf(hd, [...c.lead, c.H]);
      const w = leaf(wd, [c.V, c.H]);
      const b = c.bias ? leaf(bd, [c.V]) : undefined;
      const out = torch.linearLogprobs(h, w, targets, { temperature: tempT, entropy: c.entropy, bias: b, chunkSize: c.chunk });
      let loss = A('sum', A('mul.Tensor', out.logprobs, torch.tensor(w1, { shape: c.lead }))) as TT;
      if (c.entropy) loss = A('add.Tensor', loss, A('sum', A('mul.Tensor', out.entropy!, torch.tensor(w2, { shape: c.lead })))) as TT;
      loss.backward();
      const gh = f64(h.grad!), gw = f64(w.grad!);
      const gb = b ? f64(b.grad!) : [];
      expect(h.grad!.shape).toEqual([...c.lead, c.H]);

      // The core kernels on the same values: the same forward, the same gradients.
      const ch = rlk.tensor(hd, { shape: [rows, c.H] });
      const cw = rlk.tensor(wd, { shape: [c.V, c.H] });
      const cb = c.bias ? rlk.tensor(bd) : undefined;
      const ct = rlk.tensor(tg);
      const ctemp = c.temp === 'rows' ? rlk.tensor(tempRows) : c.temp;
      const core = rlk.linearLogprobs(ch, cw, ct, { temperature: ctemp, entropy: c.entropy, bias: cb, saveForBackward: true, chunkSize: c.chunk });
      expect(out.logprobs.toArraySync()).toEqual(core.logprobs.toArraySync());
      if (c.entropy) expect(out.entropy!.toArraySync()).toEqual(core.entropy!.toArraySync());
      const cg = rlk.linearLogprobsBackward(ch, cw, ct, rlk.tensor(w1), {
        temperature: ctemp, gradEntropy: c.entropy ? rlk.tensor(w2) : undefined, bias: cb, stats: core.stats, chunkSize: c.chunk,
      });
      expectClose('gradHidden vs core', gh, Array.from(cg.gradHidden.toArraySync() as ArrayLike<number>), 1e-6, seed);
      expectClose('gradWeight vs core', gw, Array.from(cg.gradWeight.toArraySync() as ArrayLike<number>), 1e-6, seed);
      if (b) expectClose('gradBias vs core', gb, Array.from(cg.gradBias!.toArraySync() as ArrayLike<number>), 1e-6, seed);

      // Torch autograd of log_softmax((h @ W^T + b) / T).gather, float32 and float64, in this process.
      for (const dtype of ['float32', 'float64'] as const) {
        const y = leaf(hd, [...c.lead, c.H], dtype);
        const wy = leaf(wd, [c.V, c.H], dtype);
        const by = c.bias ? leaf(bd, [c.V], dtype) : undefined;
        let logits = A('matmul', y, A('t', wy)) as TT;
        if (by) logits = A('add.Tensor', logits, by) as TT;
        const ref = refTokenLogprobs(logits, targets, tempT, -100);
        let rl = A('sum', A('mul.Tensor', ref.lp, torch.tensor(w1, { shape: c.lead, dtype }))) as TT;
        if (c.entropy) rl = A('add.Tensor', rl, A('sum', A('mul.Tensor', ref.ent, torch.tensor(w2, { shape: c.lead, dtype })))) as TT;
        rl.backward();
        const tol = dtype === 'float64' ? 2e-5 : 5e-5;
        expectClose(`logprobs vs torch ${dtype}`, f64(out.logprobs), f64(ref.lp.to({ dtype: 'float32' })), tol, seed);
        if (c.entropy) expectClose(`entropy vs torch ${dtype}`, f64(out.entropy!), f64(ref.ent.to({ dtype: 'float32' })), tol, seed);
        expectClose(`gradHidden vs torch autograd ${dtype}`, gh, f64(y.grad!.to({ dtype: 'float32' })), tol, seed);
        expectClose(`gradWeight vs torch autograd ${dtype}`, gw, f64(wy.grad!.to({ dtype: 'float32' })), tol, seed);
        if (by) expectClose(`gradBias vs torch autograd ${dtype}`, gb, f64(by.grad!.to({ dtype: 'float32' })), tol, seed);
      }
    });
  }

  it('bfloat16 hidden and weight: forward equal to the core, gradients in bfloat16 close to float64 torch autograd', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const rows = 11, H = 24, V = 301;
    const tg = Int32Array.from({ length: rows }, () => (r() < 0.2 ? -100 : Math.floor(r() * V)));
    const w1 = Float32Array.from(randn(r, rows));
    const h = torch.tensor(Float32Array.from(randn(r, rows * H, 1)), { shape: [rows, H], dtype: 'bfloat16', requiresGrad: true });
    const w = torch.tensor(Float32Array.from(randn(r, V * H, 1 / Math.sqrt(H))), { shape: [V, H], dtype: 'bfloat16', requiresGrad: true });
    const targets = torch.tensor(tg);
    const out = torch.linearLogprobs(h, w, targets, { temperature: 0.8, entropy: true });
    (A('add.Tensor', A('sum', A('mul.Tensor', out.logprobs, torch.tensor(w1))), A('sum', out.entropy!)) as TT).backward();
    expect(h.grad!.dtype).toBe('bfloat16');
    expect(w.grad!.dtype).toBe('bfloat16');

    const core = rlk.linearLogprobs(torch.toCore(h.detach()), torch.toCore(w.detach()), rlk.tensor(tg), { temperature: 0.8, entropy: true });
    expect(out.logprobs.toArraySync()).toEqual(core.logprobs.toArraySync());
    expect(out.entropy!.toArraySync()).toEqual(core.entropy!.toArraySync());

    // float64 autograd of the same bfloat16 values; bfloat16 keeps 8 bits, so the gradients agree to its rounding.
    const up = (t: TT, shape: number[]) => torch.tensor(Float32Array.from(f64(t.detach().to({ dtype: 'float32' }))), { shape, dtype: 'float64', requiresGrad: true });
    const y = up(h, [rows, H]);
    const wy = up(w, [V, H]);
    const ref = refTokenLogprobs(A('matmul', y, A('t', wy)) as TT, targets, 0.8, -100);
    (A('add.Tensor', A('sum', A('mul.Tensor', ref.lp, torch.tensor(w1, { dtype: 'float64' }))), A('sum', ref.ent)) as TT).backward();
    expectClose('bf16 logprobs vs float64 torch', f64(out.logprobs), f64(ref.lp.to({ dtype: 'float32' })), 1e-5, seed);
    expectClose('bf16 entropy vs float64 torch', f64(out.entropy!), f64(ref.ent.to({ dtype: 'float32' })), 1e-5, seed);
    expectClose('bf16 gradHidden vs float64 torch', f64(h.grad!.to({ dtype: 'float32' })), f64(y.grad!.to({ dtype: 'float32' })), 4e-3, seed);
    expectClose('bf16 gradWeight vs float64 torch', f64(w.grad!.to({ dtype: 'float32' })), f64(wy.grad!.to({ dtype: 'float32' })), 4e-3, seed);
  });

  it('only the inputs that require grad get one; the entropy alone backpropagates; noGrad records nothing', () => {
    const h = torch.tensor(Float32Array.from([0.1, -0.2, 0.3, 0.4, 0.5, -0.6]), { shape: [2, 3], requiresGrad: true });
    const w = torch.tensor(Float32Array.from([1, 0, -1, 0.5, 0.5, 0.5, -1, 2, 0, 0, 0, 1]), { shape: [4, 3] });
    const tg = torch.tensor(Int32Array.from([3, 0]));
    const out = torch.linearLogprobs(h, w, tg, { entropy: true });
    (A('sum', out.entropy!) as TT).backward();
    expect(w.grad).toBeNull();
    expect(h.grad!.shape).toEqual([2, 3]);
    expect(f64(h.grad!).some((x) => x !== 0)).toBe(true);
    const ng = torch.noGrad(() => torch.linearLogprobs(h, w, tg));
    expect(ng.logprobs.requiresGrad).toBe(false);
  });

  it('refuses bad input with clear errors', () => {
    const h = torch.tensor([[1, 2, 3], [4, 5, 6]]);
    const w = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]);
    const tg = torch.tensor(Int32Array.from([0, 1]));
    expect(() => torch.linearLogprobs(A('t', w) as TT, torch.tensor([[1, 2, 3, 4]]), torch.tensor(Int32Array.from([0, 1, 1])))).toThrow(/hidden must be contiguous/);
    expect(() => torch.linearLogprobs(h, A('t', A('t', w)) as TT, tg, { bias: A('slice.Tensor', torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), 0, 0, 8, 2) as TT })).toThrow(/bias must be contiguous/);
    expect(() => torch.linearLogprobs(h, torch.tensor([[1, 2]]), tg)).toThrow(/weight must have shape \[V, 3\]/);
    expect(() => torch.linearLogprobs(h, w.to({ dtype: 'bfloat16' }), tg)).toThrow(/weight must be float32 like hidden/);
    expect(() => torch.linearLogprobs(h, w, tg, { bias: torch.tensor([1, 2]) })).toThrow(/bias must have shape \[4\]/);
    expect(() => torch.linearLogprobs(h, w, torch.tensor(Int32Array.from([0, 4])))).toThrow(/targets\[1\] = 4/);
    expect(() => torch.linearLogprobs(h, w, torch.tensor(Int32Array.from([0])))).toThrow(/targets must have shape \[2\]/);
    expect(() => torch.linearLogprobs(h, w, torch.tensor([0, 1]))).toThrow(/targets must be int32 or int64/);
    expect(() => torch.linearLogprobs(h, w, tg, { temperature: 0 })).toThrow(RangeError);
    expect(() => torch.linearLogprobs(h, w, tg, { chunkSize: -1 })).toThrow(RangeError);
    expect(() => torch.linearLogprobs(h, w, tg, { temperature: torch.tensor([1, -1]) })).toThrow(/temperature\[1\]/);
    expect(() => torch.linearLogprobs(h, w, tg, { bais: 1 } as never)).toThrow(/unknown option 'bais'/);
    expect(() => torch.linearLogprobs(rlk.tensor([[1, 2, 3]]) as never, w, tg)).toThrow(/hidden must be a TorchTensor/);
    const d = torch.tensor([[1, 2, 3]]);
    d.dispose();
    expect(() => torch.linearLogprobs(h, d, tg)).toThrow(rlk.DisposedError);
  });
});

describeBridge('TorchScript and AdamW', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rlk-jit-'));
  const path = join(dir, 'm.pt');
  const expected = () =>
    JSON.parse(
      python(
        `
import sys, json, torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.lin(x) * scale
torch.manual_seed(0)
m = M()
torch.jit.save(torch.jit.script(m), sys.argv[1])
x = torch.arange(6.).view(2, 3)
print(json.dumps({"out": m(x, 2.0).flatten().tolist(), "w": m.lin.weight.flatten().tolist()}))
`,
        [path],
      ),
    );

  it('load, forward, namedParameters, backward, AdamW step, train/eval, save and reload', () => {
    const exp = expected();
    const m = torch.jit.load(path);
    const x = torch.tensor(Float32Array.from([0, 1, 2, 3, 4, 5]), { shape: [2, 3] });
    const y = m.forward(x, 2) as TT;
    expectClose('forward', f64(y), exp.out, 1e-6, 0);
    const named = m.namedParameters();
    expect(named.map(([n]) => n)).toEqual(['lin.weight', 'lin.bias']);
    expect(named[0][1].requiresGrad).toBe(true);
    expectClose('weight', f64(named[0][1]), exp.w, 0, 0);
    (A('sum', y) as TT).backward();
    const gw = f64(named[0][1].grad!);
    expect(gw).toEqual([6, 10, 14, 6, 10, 14]);
    const opt = new torch.optim.AdamW(named, { lr: 0.1, weightDecay: 0 });
    opt.step();
    // Adam's first step moves each weight by lr * g / (|g| + eps) = lr * sign(g).
    expectClose('AdamW first step', f64(named[0][1]), exp.w.map((v: number) => v - 0.1), 1e-6, 0);
    opt.zeroGrad();
    expect(named[0][1].grad).toBeNull();
    expect(m.training).toBe(true);
    m.eval();
    expect(m.training).toBe(false);
    const p2 = join(dir, 'm2.pt');
    m.save(p2);
    const m2 = torch.jit.load(p2);
    expect((m2.forward(x) as TT).toArraySync()).toEqual((torch.noGrad(() => m.forward(x)) as TT).toArraySync());
  });

  it('refuses files that are not TorchScript, and bad optimizer input', () => {
    const notZip = join(dir, 'junk.pt');
    writeFileSync(notZip, 'not a model');
    expect(() => torch.jit.load(notZip)).toThrow(/is not a TorchScript file/);
    const fakeZip = join(dir, 'fake.pt');
    writeFileSync(fakeZip, Buffer.concat([Buffer.from([0x50, 0x4b, 3, 4]), Buffer.alloc(64, 7)]));
    expect(() => torch.jit.load(fakeZip)).toThrow(TypeError);
    expect(() => torch.jit.load(join(dir, 'missing.pt'))).toThrow(/does not exist/);
    expect(() => new torch.optim.AdamW([])).toThrow(TypeError);
    expect(() => new torch.optim.AdamW([torch.tensor([1n])])).toThrow(/floating-point leaf/);
    expect(() => new torch.optim.AdamW([torch.tensor([1], { requiresGrad: true })], { lr: -1 })).toThrow(RangeError);
  });
});
