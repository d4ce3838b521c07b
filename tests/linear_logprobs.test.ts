// Fused linear log-probs (DESIGN 3.2): forward and backward against float64
// references on fresh random inputs, against tokenLogprobs on the
// materialised logits, finite differences, chunk and tile boundaries, the
// vocabulary-parallel form, numerics edges, every ISA path, determinism
// across runs and thread counts, and bad input. CUDA variants run under
// describeCuda.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { TOLERANCE, cudaShape, describeCuda, expectClose, freshSeed, randn, rng, runOnIsaPath } from './helpers.js';
import { roundArray } from './reference/dtype.js';
import { refLinearBackward, refLinearForward, refLinearObjective, refLogitsRow, type LinearRefInput } from './reference/linear_logprobs.js';

type FloatDType = 'float32' | 'bfloat16' | 'float16';
const FLOAT_DTYPES: FloatDType[] = ['float32', 'bfloat16', 'float16'];
const IS_CHILD = process.env.RLK_LIN_CHILD === '1';

interface Case {
  hidden: rlk.Tensor;
  weight: rlk.Tensor;
  bias?: rlk.Tensor;
  targets: rlk.Tensor;
  temperature: number | rlk.Tensor;
  ref: LinearRefInput;
  seed: number;
}

interface CaseOpts {
  bias?: boolean;
  ignoreFrac?: number;
  perRowTemp?: boolean;
  temperature?: number;
  device?: rlk.Device;
  hScale?: number;
}

/** Random hidden states, weight (and bias), rounded to the dtype, targets with ignored rows. */
function makeCase(seed: number, rows: number, dim: number, vocab: number, dtype: FloatDType, o: CaseOpts = {}): Case {
  const r = rng(seed);
  const device = o.device ?? 'cpu';
  const h = roundArray(randn(r, rows * dim, o.hScale ?? 1), dtype);
  const w = roundArray(randn(r, vocab * dim, 1.5 / Math.sqrt(dim)), dtype);
  const b = o.bias ? roundArray(randn(r, vocab, 0.5), dtype) : undefined;
  const tgt: number[] = [];
  for (let i = 0; i < rows; i++) tgt.push(r() < (o.ignoreFrac ?? 0.2) ? -100 : Math.floor(r() * vocab));
  const temps = o.perRowTemp ? Float64Array.from({ length: rows }, () => Math.fround(0.4 + 1.4 * r())) : undefined;
  const T = o.temperature ?? 1;
  return {
    hidden: rlk.tensor(h, { shape: [rows, dim], dtype, device }),
    weight: rlk.tensor(w, { shape: [vocab, dim], dtype, device }),
    bias: b ? rlk.tensor(b, { shape: [vocab], dtype, device }) : undefined,
    targets: seed % 2 ? rlk.tensor(Int32Array.from(tgt), { dtype: 'int32', device }) : rlk.tensor(BigInt64Array.from(tgt.map(BigInt)), { dtype: 'int64', device }),
    temperature: temps ? rlk.tensor(Float32Array.from(temps), { device }) : T,
    ref: { h, w, b, rows, dim, vocab, targets: tgt, temperature: temps ?? T, ignoreIndex: -100 },
    seed,
  };
}

const upstream = (seed: number, rows: number): Float64Array => Float64Array.from(randn(rng(seed ^ 0x1234567), rows), (v) => Math.fround(v));
const arr = (t: rlk.Tensor): Float64Array => Float64Array.from(t.toArraySync() as Float32Array);

/** Gradient tolerance by output dtype: fp32 sums, or the output's own rounding. */
const GRAD_TOL: Record<FloatDType, number> = { float32: 1e-5, bfloat16: 4e-3, float16: 5e-4 };

function forwardSuite(device: rlk.Device): void {
  // The emulated device runs every CUDA thread as a fiber: smaller shapes there.
  const shapes: Array<[number, number, number]> = cudaShape(
    [
      [1, 7, 5],
      [37, 19, 300],
      [70, 40, 513],
    ],
    [
      [1, 7, 5],
      [11, 9, 261],
    ],
    device,
  );
  for (const dtype of FLOAT_DTYPES) {
    for (const [N, H, V] of shapes) {
      it(`core forward ${dtype} [${N}, ${H}] x [${V}, ${H}] matches float64 (entropy, bias, per-row T)`, () => {
        const seed = freshSeed();
        for (const variant of [{ bias: true, perRowTemp: true }, { temperature: 0.7 }]) {
          const c = makeCase(seed, N, H, V, dtype, { ...variant, device });
          const res = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: c.temperature, entropy: true, bias: c.bias, chunkSize: 32 });
          const ref = refLinearForward(c.ref);
          expectClose(`logprobs ${dtype}`, arr(res.logprobs), ref.logprobs, TOLERANCE[dtype], seed);
          expectClose(`entropy ${dtype}`, arr(res.entropy!), ref.entropy, 2 * TOLERANCE[dtype], seed);
          for (const v of arr(res.logprobs)) expect(v).toBeLessThanOrEqual(0);
        }
      });
      it(`core backward ${dtype} [${N}, ${H}] x [${V}, ${H}] matches float64 (gradEntropy, bias)`, () => {
        const seed = freshSeed();
        const c = makeCase(seed, N, H, V, dtype, { bias: true, perRowTemp: seed % 3 === 0, temperature: 0.8, device });
        const g = upstream(seed, N);
        const gE = upstream(seed + 1, N);
        const gT = rlk.tensor(Float32Array.from(g), { device });
        const gET = rlk.tensor(Float32Array.from(gE), { device });
        const res = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { temperature: c.temperature, gradEntropy: gET, bias: c.bias, chunkSize: 32 });
        const ref = refLinearBackward(c.ref, g, gE);
        // CUDA rounds dlogits to the 16-bit dtype for the tensor-core products (the CPU keeps
        // them in fp32). That rounding is relative to each term of the sum over V, not to the sum,
        // and the terms of a gradient row cancel (sum_v dlogit_v = 0): seed 405422224 ([1, 7] x
        // [5, 7], float16) is 1.04e-3 of the largest entry, 2.8 of its ulps. So three roundings'
        // worth, not two (a real fault is off by O(1)).
        const tol = device === 'cuda' && dtype !== 'float32' ? 3 * GRAD_TOL[dtype] : GRAD_TOL[dtype];
        expectClose(`gradHidden ${dtype}`, arr(res.gradHidden), ref.gradHidden, tol, seed);
        expectClose(`gradWeight ${dtype}`, arr(res.gradWeight), ref.gradWeight, tol, seed);
        expectClose(`gradBias ${dtype}`, arr(res.gradBias!), ref.gradBias, tol, seed);
        expect(res.gradHidden.dtype).toBe(dtype);
        expect(res.gradWeight.dtype).toBe(dtype);
        // With the forward's saved stats: the same gradients.
        const fwd = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: c.temperature, bias: c.bias, saveForBackward: true, chunkSize: 32 });
        const res2 = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { temperature: c.temperature, gradEntropy: gET, bias: c.bias, stats: fwd.stats, chunkSize: 32 });
        expectClose(`gradHidden (stats) ${dtype}`, arr(res2.gradHidden), ref.gradHidden, tol, seed);
        expectClose(`gradWeight (stats) ${dtype}`, arr(res2.gradWeight), ref.gradWeight, tol, seed);
      });
    }
  }
  it('a confident row keeps its tiny entropy and log-probs to 1e-6 (the max term is not rounded into s - 1)', () => {
    // Logits (h W^T) [12.25, 0.5, 0, -0.25, 0.125] (exact in float32): p of the first is 1 - 3e-5,
    // H ~ 3.6e-4; a float32 sum of exps with its 1 in it would be off by ~6e-8 of H.
    const w = Float32Array.from([12.25, 0.5, 0, -0.25, 0.125]);
    const logits = Array.from(w);
    for (const target of [0, 1]) {
      const res = rlk.linearLogprobs(rlk.tensor(Float32Array.from([1]), { shape: [1, 1], device }), rlk.tensor(w, { shape: [5, 1], device }),
        rlk.tensor(Int32Array.from([target]), { device }), { entropy: true });
      const mx = Math.max(...logits);
      const z = logits.reduce((a, v) => a + Math.exp(v - mx), 0);
      const lp = logits.map((v) => v - mx - Math.log(z));
      const h = -lp.reduce((a, l) => a + Math.exp(l) * l, 0);
      expectClose(`confident entropy (target ${target})`, arr(res.entropy!), [h], 1e-6, 0);
      expectClose(`confident log-prob (target ${target})`, arr(res.logprobs), [lp[target]], 1e-6, 0);
    }
  });
}

describe('linearLogprobs (CPU)', () => {
  it('runs on the ISA path RLK_SIMD asks for', () => {
    const want = process.env.RLK_SIMD;
    if (want === 'avx2' || want === 'baseline') expect(rlk.buildInfo().cpu.simd).toBe(want);
  });
  forwardSuite('cpu');

  it('equals tokenLogprobs on the materialised float32 logits (forward, both gradients, bias)', () => {
    const seed = freshSeed();
    const [N, H, V] = [29, 24, 301];
    const c = makeCase(seed, N, H, V, 'float32', { bias: true, temperature: 0.9 });
    // Materialise the logits in float64 from the stored values, round once to float32.
    const logits = new Float32Array(N * V);
    for (let r = 0; r < N; r++) logits.set(refLogitsRow(c.ref, r), r * V);
    const L = rlk.tensor(logits, { shape: [N, V] });
    const tl = rlk.tokenLogprobs(L, c.targets, { temperature: 0.9, entropy: true });
    const ll = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: 0.9, entropy: true, bias: c.bias });
    expectClose('logprobs vs tokenLogprobs', arr(ll.logprobs), arr(tl.logprobs), 1e-6, seed);
    expectClose('entropy vs tokenLogprobs', arr(ll.entropy!), arr(tl.entropy!), 2e-6, seed);
    const g = upstream(seed, N);
    const gT = rlk.tensor(Float32Array.from(g));
    const dL = arr(rlk.tokenLogprobsBackward(L, c.targets, gT, { temperature: 0.9 }));
    const gh = new Float64Array(N * H);
    const gw = new Float64Array(V * H);
    const gb = new Float64Array(V);
    for (let r = 0; r < N; r++) {
      for (let j = 0; j < V; j++) {
        const d = dL[r * V + j];
        gb[j] += d;
        for (let k = 0; k < H; k++) {
          gh[r * H + k] += d * c.ref.w[j * H + k];
          gw[j * H + k] += d * c.ref.h[r * H + k];
        }
      }
    }
    const lb = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { temperature: 0.9, bias: c.bias });
    expectClose('gradHidden vs tokenLogprobsBackward', arr(lb.gradHidden), gh, 1e-5, seed);
    expectClose('gradWeight vs tokenLogprobsBackward', arr(lb.gradWeight), gw, 1e-5, seed);
    expectClose('gradBias vs tokenLogprobsBackward', arr(lb.gradBias!), gb, 1e-5, seed);
  });

  it('the float64 reference gradient matches central finite differences, and the kernel matches both', () => {
    const seed = freshSeed();
    const [N, H, V] = [3, 5, 11];
    const c = makeCase(seed, N, H, V, 'float32', { bias: true, temperature: 0.8, ignoreFrac: 0 });
    const g = upstream(seed, N);
    const gE = upstream(seed + 7, N);
    const ref = refLinearBackward(c.ref, g, gE);
    const eps = 1e-6;
    const fd = (arrIn: Float64Array, i: number): number => {
      const keep = arrIn[i];
      arrIn[i] = keep + eps;
      const up = refLinearObjective(c.ref, g, gE);
      arrIn[i] = keep - eps;
      const dn = refLinearObjective(c.ref, g, gE);
      arrIn[i] = keep;
      return (up - dn) / (2 * eps);
    };
    const h = c.ref.h as Float64Array;
    const w = c.ref.w as Float64Array;
    const b = c.ref.b as Float64Array;
    expectClose('FD gradHidden', Float64Array.from(h, (_, i) => fd(h, i)), ref.gradHidden, 1e-6, seed);
    expectClose('FD gradWeight', Float64Array.from(w, (_, i) => fd(w, i)), ref.gradWeight, 1e-6, seed);
    expectClose('FD gradBias', Float64Array.from(b, (_, i) => fd(b, i)), ref.gradBias, 1e-6, seed);
    // The kernel against finite differences of the kernel's own float32 forward (coarse step).
    const res = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, rlk.tensor(Float32Array.from(g)), {
      temperature: 0.8, bias: c.bias, gradEntropy: rlk.tensor(Float32Array.from(gE)),
    });
    const kObjective = (hh: Float64Array): number => {
      const f = rlk.linearLogprobs(rlk.tensor(hh, { shape: [N, H] }), c.weight, c.targets, { temperature: 0.8, bias: c.bias, entropy: true });
      const lp = arr(f.logprobs);
      const en = arr(f.entropy!);
      let s = 0;
      for (let r = 0; r < N; r++) s += g[r] * lp[r] + gE[r] * en[r];
      return s;
    };
    const step = 1e-2;
    const kfd = Float64Array.from(h, (_, i) => {
      const hp = Float64Array.from(h);
      const hm = Float64Array.from(h);
      hp[i] += step;
      hm[i] -= step;
      return (kObjective(hp) - kObjective(hm)) / (2 * step);
    });
    expectClose('kernel FD gradHidden', arr(res.gradHidden), kfd, 5e-3, seed);
  });

  it('chunk and tile boundaries: any chunkSize gives the same results', () => {
    const seed = freshSeed();
    const [N, H, V] = [70, 33, 517];
    const c = makeCase(seed, N, H, V, 'float32', { bias: true });
    const ref = refLinearForward(c.ref);
    const g = upstream(seed, N);
    const gT = rlk.tensor(Float32Array.from(g));
    const rb = refLinearBackward(c.ref, g);
    for (const chunkSize of [1, 5, 32, 64, 1000]) {
      const f = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { bias: c.bias, chunkSize, entropy: true });
      expectClose(`logprobs chunk ${chunkSize}`, arr(f.logprobs), ref.logprobs, 1e-6, seed);
      const b = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { bias: c.bias, chunkSize });
      expectClose(`gradHidden chunk ${chunkSize}`, arr(b.gradHidden), rb.gradHidden, 1e-5, seed);
      expectClose(`gradWeight chunk ${chunkSize}`, arr(b.gradWeight), rb.gradWeight, 1e-5, seed);
    }
  });

  it('is bitwise deterministic across runs and thread counts (1, 2, 3)', () => {
    const seed = freshSeed();
    const [N, H, V] = [150, 48, 700];
    const c = makeCase(seed, N, H, V, 'bfloat16', { bias: true, perRowTemp: true });
    const gT = rlk.tensor(Float32Array.from(upstream(seed, N)));
    const gET = rlk.tensor(Float32Array.from(upstream(seed + 3, N)));
    const before = rlk.getNumThreads();
    const runs: Array<Array<Float32Array>> = [];
    try {
      for (const threads of [1, 2, 3, 2]) {
        rlk.setNumThreads(threads);
        const f = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: c.temperature, bias: c.bias, entropy: true, chunkSize: 64 });
        const b = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { temperature: c.temperature, bias: c.bias, gradEntropy: gET, chunkSize: 64 });
        const f32 = (t: rlk.Tensor): Float32Array => Float32Array.from(t.toArraySync() as Float32Array);
        runs.push([f32(f.logprobs), f32(f.entropy!), f32(b.gradHidden), f32(b.gradWeight), f32(b.gradBias!)]);
      }
    } finally {
      rlk.setNumThreads(before);
    }
    const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let k = 1; k < runs.length; k++) {
      for (let i = 0; i < runs[0].length; i++) expect(bits(runs[k][i]), `output ${i}, run ${k} (seed ${seed})`).toEqual(bits(runs[0][i]));
    }
  });

  it('vocabulary-parallel: weight shards, combineTokenLogprobs and the shard backward equal the unsharded results', () => {
    const seed = freshSeed();
    const [N, H, V] = [41, 20, 530];
    const c = makeCase(seed, N, H, V, 'float32', { bias: true, temperature: 0.75 });
    const cuts = [0, 177, 300, V];
    const w = c.ref.w as Float64Array;
    const b = c.ref.b as Float64Array;
    const shards = cuts.slice(0, -1).map((s, k) => ({
      start: s,
      weight: rlk.tensor(w.subarray(s * H, cuts[k + 1] * H), { shape: [cuts[k + 1] - s, H] }),
      bias: rlk.tensor(b.subarray(s, cuts[k + 1])),
    }));
    const partials = shards.map((s) => rlk.linearLogprobsPartials(c.hidden, s.weight, c.targets, { vocabStart: s.start, vocabSize: V, temperature: 0.75, entropy: true, bias: s.bias }));
    const comb = rlk.combineTokenLogprobs(partials, c.targets, { temperature: 0.75, entropy: true, saveForBackward: true });
    const whole = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: 0.75, entropy: true, bias: c.bias });
    expectClose('sharded logprobs', arr(comb.logprobs), arr(whole.logprobs), 1e-6, seed);
    expectClose('sharded entropy', arr(comb.entropy!), arr(whole.entropy!), 1e-6, seed);
    const g = upstream(seed, N);
    const gE = upstream(seed + 5, N);
    const gT = rlk.tensor(Float32Array.from(g));
    const gET = rlk.tensor(Float32Array.from(gE));
    const ref = refLinearBackward(c.ref, g, gE);
    const gh = new Float64Array(N * H);
    const gw = new Float64Array(V * H);
    const gb = new Float64Array(V);
    for (const s of shards) {
      const r = rlk.linearLogprobsShardBackward(c.hidden, s.weight, c.targets, gT, {
        vocabStart: s.start, vocabSize: V, stats: comb.stats!, temperature: 0.75, gradEntropy: gET, bias: s.bias,
      });
      arr(r.gradHidden).forEach((v, i) => (gh[i] += v));
      gw.set(arr(r.gradWeight), s.start * H);
      gb.set(arr(r.gradBias!), s.start);
    }
    expectClose('sharded gradHidden', gh, ref.gradHidden, 1e-5, seed);
    expectClose('sharded gradWeight', gw, ref.gradWeight, 1e-5, seed);
    expectClose('sharded gradBias', gb, ref.gradBias, 1e-5, seed);
  });

  it('numerics edges as tokenLogprobs: -inf logits (masked vocabulary), a -inf target, NaN stays in its row, ignored rows exactly 0', () => {
    const seed = freshSeed();
    const [N, H, V] = [6, 8, 40];
    const c = makeCase(seed, N, H, V, 'float32', { ignoreFrac: 0 });
    const b = new Float64Array(V);
    for (let j = 0; j < V; j += 3) b[j] = -Infinity; // masked entries
    const h = Float64Array.from(c.ref.h);
    h[2 * H + 1] = NaN; // row 2 is NaN
    const tgt = [1, 3, 4, 0, 5, 7]; // row 3's target (0) is masked: logprob -inf
    const targets = rlk.tensor(Int32Array.from([1, 3, 4, 0, -100, 7]), { dtype: 'int32' });
    const ref: LinearRefInput = { ...c.ref, h, b, targets: [1, 3, 4, 0, -100, 7] };
    void tgt;
    const hidden = rlk.tensor(h, { shape: [N, H] });
    const bias = rlk.tensor(b);
    const f = rlk.linearLogprobs(hidden, c.weight, targets, { bias, entropy: true });
    const lp = arr(f.logprobs);
    const rf = refLinearForward(ref);
    expect(Number.isNaN(lp[2])).toBe(true);
    expect(lp[3]).toBe(-Infinity);
    expect(Object.is(lp[4], 0)).toBe(true);
    expect(arr(f.entropy!)[4]).toBe(0);
    expectClose('edge logprobs', lp, rf.logprobs, 1e-6, seed);
    const g = upstream(seed, N);
    const bw = rlk.linearLogprobsBackward(hidden, c.weight, targets, rlk.tensor(Float32Array.from(g)), { bias });
    const gh = arr(bw.gradHidden);
    for (let k = 0; k < H; k++) {
      expect(Number.isFinite(gh[3 * H + k])).toBe(true); // -inf target: finite gradient
      expect(gh[4 * H + k]).toBe(0); // ignored row
    }
    const gb = arr(bw.gradBias!);
    // Masked entries get p = 0 from every finite row; NaN row 2 poisons every entry (as on materialised logits).
    expect(Number.isNaN(gb[1])).toBe(true);
  });

  it('large vocabularies (151936, 262144) on a few rows', () => {
    const seed = freshSeed();
    for (const V of [151936, 262144]) {
      const c = makeCase(seed, 3, 8, V, 'bfloat16', { bias: V === 151936, ignoreFrac: 0 });
      const f = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { entropy: true, bias: c.bias });
      const ref = refLinearForward(c.ref);
      expectClose(`logprobs V=${V}`, arr(f.logprobs), ref.logprobs, 1e-5, seed);
      expectClose(`entropy V=${V}`, arr(f.entropy!), ref.entropy, 1e-5, seed);
      if (V === 151936) {
        const g = upstream(seed, 3);
        const b = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, rlk.tensor(Float32Array.from(g)), { bias: c.bias });
        const rb = refLinearBackward(c.ref, g);
        expectClose('gradHidden V=151936', arr(b.gradHidden), rb.gradHidden, GRAD_TOL.bfloat16, seed);
        expectClose('gradWeight V=151936', arr(b.gradWeight), rb.gradWeight, GRAD_TOL.bfloat16, seed);
      }
    }
  });

  it('one sequence of 2^20 rows (small H and V)', () => {
    const seed = freshSeed();
    const [N, H, V] = [1 << 20, 4, 6];
    const c = makeCase(seed, N, H, V, 'float32', { ignoreFrac: 0.1 });
    const f = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { entropy: true });
    const ref = refLinearForward(c.ref);
    expectClose('logprobs 1M rows', arr(f.logprobs), ref.logprobs, 1e-6, seed);
    const g = upstream(seed, N);
    const b = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, rlk.tensor(Float32Array.from(g)));
    const rb = refLinearBackward(c.ref, g);
    expectClose('gradWeight 1M rows', arr(b.gradWeight), rb.gradWeight, 1e-5, seed);
    expectClose('gradHidden 1M rows', arr(b.gradHidden), rb.gradHidden, 1e-5, seed);
  });

  it('buildInfo says whether the CUDA path can run, and why not', () => {
    const why = rlk.buildInfo().cuda.linearLogprobs;
    if (!rlk.buildInfo().cuda.compiled) expect(why).toMatch(/without CUDA/);
    else if (why !== null) expect(why).toMatch(/cuBLAS|cublas/);
  });

  it('zero rows: empty log-probs, zero gradWeight and gradBias', () => {
    const h = rlk.empty([0, 5]);
    const w = rlk.tensor(randn(rng(1), 15), { shape: [3, 5] });
    const b = rlk.tensor([1, 2, 3]);
    const t = rlk.empty([0], { dtype: 'int32' });
    expect(rlk.linearLogprobs(h, w, t, { bias: b }).logprobs.shape).toEqual([0]);
    const g = rlk.linearLogprobsBackward(h, w, t, rlk.empty([0]), { bias: b });
    expect(Array.from(arr(g.gradWeight))).toEqual(new Array(15).fill(0));
    expect(Array.from(arr(g.gradBias!))).toEqual([0, 0, 0]);
    expect(g.gradHidden.shape).toEqual([0, 5]);
  });

  it.skipIf(IS_CHILD)('every ISA path (avx2, baseline) agrees with the reference', () => {
    for (const isa of ['avx2', 'baseline'] as const) {
      const out = runOnIsaPath('tests/linear_logprobs.test.ts', 'core', isa, { RLK_LIN_CHILD: '1' });
      expect(out).toMatch(/passed/);
      expect(out).not.toMatch(/failed/);
    }
  });
});

describe('linearLogprobs bad input', () => {
  const h = rlk.tensor(new Float32Array(12), { shape: [3, 4] });
  const w = rlk.tensor(new Float32Array(20), { shape: [5, 4] });
  const t = rlk.tensor(Int32Array.from([0, 1, 4]), { dtype: 'int32' });
  const g = rlk.tensor(new Float32Array(3));
  const cases: Array<[string, () => unknown, ErrorConstructor, RegExp]> = [
    ['mismatched H', () => rlk.linearLogprobs(h, rlk.tensor(new Float32Array(15), { shape: [5, 3] }), t), RangeError, /^linearLogprobs: weight must have shape \[V, 4\] \(H of hidden\), got \[5, 3\]/],
    ['weight dtype', () => rlk.linearLogprobs(h, w.to({ dtype: 'bfloat16' }), t), TypeError, /^linearLogprobs: weight must be float32, got bfloat16/],
    ['hidden dtype', () => rlk.linearLogprobs(rlk.tensor(new Int32Array(12), { shape: [3, 4], dtype: 'int32' }), w, t), TypeError, /^linearLogprobs: hidden must be float32, bfloat16 or float16, got int32/],
    ['targets dtype', () => rlk.linearLogprobs(h, w, rlk.tensor([0, 1, 2])), TypeError, /^linearLogprobs: targets must be int32 or int64, got float32/],
    ['targets shape', () => rlk.linearLogprobs(h, w, rlk.tensor(Int32Array.from([0, 1]), { dtype: 'int32' })), RangeError, /^linearLogprobs: targets must have shape \[3\], got \[2\]/],
    ['hidden rank', () => rlk.linearLogprobs(rlk.tensor(new Float32Array(12), { shape: [3, 2, 2] }), w, t), RangeError, /^linearLogprobs: hidden must have shape \[N, H\]/],
    ['target range', () => rlk.linearLogprobs(h, w, rlk.tensor(Int32Array.from([0, 5, 1]), { dtype: 'int32' })), RangeError, /^linearLogprobs: targets\[1\] = 5 is outside \[0, 5\)/],
    ['bias shape', () => rlk.linearLogprobs(h, w, t, { bias: rlk.tensor([1, 2]) }), RangeError, /^linearLogprobs: bias must have shape \[5\], got \[2\]/],
    ['bias dtype', () => rlk.linearLogprobs(h, w, t, { bias: rlk.tensor([1, 2, 3, 4, 5], { dtype: 'float16' }) }), TypeError, /^linearLogprobs: bias must be float32, got float16/],
    ['temperature', () => rlk.linearLogprobs(h, w, t, { temperature: 0 }), RangeError, /^linearLogprobs: temperature must be a finite number > 0, got 0/],
    ['temperature tensor', () => rlk.linearLogprobs(h, w, t, { temperature: rlk.tensor([1, 1]) }), RangeError, /^linearLogprobs: temperature must have shape \[3\]/],
    ['per-row temperature value', () => rlk.linearLogprobs(h, w, t, { temperature: rlk.tensor([1, -1, 1]) }), RangeError, /^linearLogprobs: temperature\[1\] must be a positive finite number/],
    ['chunkSize', () => rlk.linearLogprobs(h, w, t, { chunkSize: 0 }), RangeError, /^linearLogprobs: chunkSize must be an integer >= 1/],
    ['chunkSize kind', () => rlk.linearLogprobs(h, w, t, { chunkSize: '8' as never }), TypeError, /^linearLogprobs: chunkSize must be a number/],
    ['unknown option', () => rlk.linearLogprobs(h, w, t, { chunk: 8 } as never), TypeError, /^linearLogprobs: unknown option 'chunk'/],
    ['gradLogprobs shape', () => rlk.linearLogprobsBackward(h, w, t, rlk.tensor([1])), RangeError, /^linearLogprobsBackward: gradLogprobs must have shape \[3\]/],
    ['stats shape', () => rlk.linearLogprobsBackward(h, w, t, g, { stats: rlk.tensor([1, 2, 3]) }), RangeError, /^linearLogprobsBackward: stats must have shape \[3, 3\]/],
    ['shard without stats', () => rlk.linearLogprobsShardBackward(h, w, t, g, { vocabStart: 0, vocabSize: 10 } as never), TypeError, /^linearLogprobsShardBackward: options.stats is required/],
    ['shard range', () => rlk.linearLogprobsPartials(h, w, t, { vocabStart: 8, vocabSize: 10 }), RangeError, /^linearLogprobsPartials: vocabStart \+ the shard's vocabulary \(8 \+ 5\) must be <= vocabSize/],
    ['partials options', () => rlk.linearLogprobsPartials(h, w, t, undefined as never), TypeError, /^linearLogprobsPartials: options must be an object/],
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

  it('disposed tensors give DisposedError', () => {
    const d = rlk.tensor(new Float32Array(12), { shape: [3, 4] });
    d.dispose();
    expect(() => rlk.linearLogprobs(d, w, t)).toThrow(rlk.DisposedError);
    expect(() => rlk.linearLogprobsBackward(h, w, t, g, { bias: d } as never)).toThrow(rlk.DisposedError);
  });

  it('the addon itself rejects what bypasses the TypeScript layer, before writing anything', async () => {
    const { native } = await import('../src/native.js');
    const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    const H = (x: rlk.Tensor) => x.handle('test');
    expect(() => n.linearLogprobsForward(H(h), H(rlk.tensor(new Float32Array(15), { shape: [5, 3] })), H(t), 1, null, -100, false, false, null, 0)).toThrow(/weight must have shape \[V, 4\]/);
    expect(() => n.linearLogprobsForward(H(h), H(w), H(t), -1, null, -100, false, false, null, 0)).toThrow(RangeError);
    expect(() => n.linearLogprobsForward(H(h), H(w), H(t), 1, null, -100, false, false, null, -1)).toThrow(/chunkSize/);
    expect(() => n.linearLogprobsForward(H(h), H(w), H(rlk.tensor(Int32Array.from([0, 9, 1]), { dtype: 'int32' })), 1, null, -100, false, false, null, 0)).toThrow(RangeError);
    expect(() => n.linearLogprobsBackward(H(h), H(w), H(t), H(g), 1, null, -100, null, null, 2, 10, null, 0)).toThrow(/stats is required/);
  });
});

describeCuda('linearLogprobs (CUDA)', () => {
  forwardSuite('cuda');

  it('a weight on another device is refused', () => {
    const h = rlk.tensor(new Float32Array(12), { shape: [3, 4], device: 'cuda' });
    const w = rlk.tensor(new Float32Array(20), { shape: [5, 4] });
    const t = rlk.tensor(Int32Array.from([0, 1, 4]), { dtype: 'int32', device: 'cuda' });
    expect(() => rlk.linearLogprobs(h, w, t)).toThrow(/^linearLogprobs: weight must be on cuda/);
  });

  it('matches float64 across chunks (fp32 and bf16, bias, entropy, gradients)', () => {
    const seed = freshSeed();
    const [N, H, V] = cudaShape([67, 64, 1031], [13, 8, 97]);
    for (const dtype of ['float32', 'bfloat16'] as const) {
      const c = makeCase(seed, N, H, V, dtype, { bias: true });
      const dev = (x: rlk.Tensor | undefined) => x?.to('cuda');
      const f = rlk.linearLogprobs(dev(c.hidden)!, dev(c.weight)!, dev(c.targets)!, { bias: dev(c.bias), entropy: true, chunkSize: 5 });
      const ref = refLinearForward(c.ref);
      expectClose(`cuda logprobs ${dtype}`, arr(f.logprobs), ref.logprobs, TOLERANCE[dtype] * 2, seed);
      const g = upstream(seed, N);
      const b = rlk.linearLogprobsBackward(dev(c.hidden)!, dev(c.weight)!, dev(c.targets)!, rlk.tensor(Float32Array.from(g), { device: 'cuda' }), { bias: dev(c.bias), chunkSize: 5 });
      const rb = refLinearBackward(c.ref, g);
      expectClose(`cuda gradHidden ${dtype}`, arr(b.gradHidden), rb.gradHidden, GRAD_TOL[dtype] * 2, seed);
      expectClose(`cuda gradWeight ${dtype}`, arr(b.gradWeight), rb.gradWeight, GRAD_TOL[dtype] * 2, seed);
      expectClose(`cuda gradBias ${dtype}`, arr(b.gradBias!), rb.gradBias, GRAD_TOL[dtype] * 2, seed);
    }
  });

  it('vocabulary-parallel on CUDA equals the float64 reference, and runs are bitwise equal', () => {
    const seed = freshSeed();
    const [N, H, V] = cudaShape([33, 32, 700], [7, 6, 90]);
    const c = makeCase(seed, N, H, V, 'float32', { bias: true, temperature: 0.8, device: 'cuda' });
    const cut = Math.floor(V / 3);
    const w = c.ref.w as Float64Array;
    const b = c.ref.b as Float64Array;
    const shards = [[0, cut], [cut, V]].map(([s0, s1]) => ({
      start: s0,
      weight: rlk.tensor(w.subarray(s0 * H, s1 * H), { shape: [s1 - s0, H], device: 'cuda' }),
      bias: rlk.tensor(b.subarray(s0, s1), { device: 'cuda' }),
    }));
    const parts = shards.map((s) => rlk.linearLogprobsPartials(c.hidden, s.weight, c.targets, { vocabStart: s.start, vocabSize: V, temperature: 0.8, entropy: true, bias: s.bias }));
    const comb = rlk.combineTokenLogprobs(parts, c.targets, { temperature: 0.8, entropy: true, saveForBackward: true });
    const ref = refLinearForward(c.ref);
    expectClose('cuda sharded logprobs', arr(comb.logprobs), ref.logprobs, 2e-6, seed);
    expectClose('cuda sharded entropy', arr(comb.entropy!), ref.entropy, 4e-6, seed);
    const g = upstream(seed, N);
    const gT = rlk.tensor(Float32Array.from(g), { device: 'cuda' });
    const rb = refLinearBackward(c.ref, g);
    const gh = new Float64Array(N * H);
    const gw = new Float64Array(V * H);
    for (const s of shards) {
      const r = rlk.linearLogprobsShardBackward(c.hidden, s.weight, c.targets, gT, { vocabStart: s.start, vocabSize: V, stats: comb.stats!, temperature: 0.8, bias: s.bias });
      arr(r.gradHidden).forEach((v, i) => (gh[i] += v));
      gw.set(arr(r.gradWeight), s.start * H);
    }
    expectClose('cuda sharded gradHidden', gh, rb.gradHidden, 2e-5, seed);
    expectClose('cuda sharded gradWeight', gw, rb.gradWeight, 2e-5, seed);
    const once = () => {
      const f = rlk.linearLogprobs(c.hidden, c.weight, c.targets, { temperature: 0.8, bias: c.bias, entropy: true, chunkSize: 3 });
      const bw = rlk.linearLogprobsBackward(c.hidden, c.weight, c.targets, gT, { temperature: 0.8, bias: c.bias, chunkSize: 3 });
      return [f.logprobs, f.entropy!, bw.gradHidden, bw.gradWeight, bw.gradBias!].map((t) => Float32Array.from(t.toArraySync() as Float32Array));
    };
    const a = once();
    const z = once();
    for (let i = 0; i < a.length; i++) expect(new Uint32Array(z[i].buffer), `output ${i} (seed ${seed})`).toEqual(new Uint32Array(a[i].buffer));
  });

  it('a target out of range is reported at the next read, not a crash', () => {
    const h = rlk.tensor(new Float32Array(8).fill(0.1), { shape: [2, 4], device: 'cuda' });
    const w = rlk.tensor(new Float32Array(12).fill(0.2), { shape: [3, 4], device: 'cuda' });
    const t = rlk.tensor(Int32Array.from([0, 7]), { dtype: 'int32', device: 'cuda' });
    const f = rlk.linearLogprobs(h, w, t);
    expect(() => f.logprobs.toArraySync()).toThrow(RangeError);
  });
});
