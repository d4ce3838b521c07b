// Numerics edges of the token log-prob kernels found wrong (issue 9), kept
// fixed: logits masked with the dtype's lowest finite value at T != 1 (NaN
// entropy on the vector paths), confident tokens (s rounds to 1 in float32:
// log-prob, entropy and 1 - p_t lost their digits), 16-bit gradients at
// V = 151936 within one unit in the last place, and the gradient of a -inf
// target as PyTorch gives it. Each check runs on every CPU ISA path (child
// processes with RLK_SIMD) and compares the paths with each other.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { describeCuda, expectClose, freshSeed, randn, rng } from './helpers.js';
import { roundTo } from './reference/dtype.js';
import { refBackward, refForward, type RefInput } from './reference/token_logprobs.js';

type FloatDType = 'float32' | 'bfloat16' | 'float16';
/** The lowest finite value of each dtype: what Hugging Face fills masked logits with (torch.finfo(dtype).min). */
const LOWEST: Record<FloatDType, number> = { float32: -3.4028234663852886e38, bfloat16: -3.3895313892515355e38, float16: -65504 };
const ISAS = ['avx2', 'baseline'] as const;

interface Probe {
  seed: number;
  shape: [number, number];
  dtype: FloatDType;
  x: number[];
  targets: number[];
  temperature: number;
  g: number[];
  gE: number[] | null;
  inPlace: boolean;
}

interface ProbeResult {
  isa: string;
  logprobs: number[];
  entropy: number[];
  grad: number[];
}

/** Runs the forward (with entropy) and the backward on `p` in this process. */
function runProbe(p: Probe, device: rlk.Device = 'cpu'): ProbeResult {
  const logits = rlk.tensor(Float64Array.from(p.x), { shape: p.shape, dtype: p.dtype, device });
  const targets = rlk.tensor(Int32Array.from(p.targets), { device });
  const res = rlk.tokenLogprobs(logits, targets, { temperature: p.temperature, entropy: true, saveForBackward: !p.inPlace });
  const g = rlk.tensor(Float64Array.from(p.g), { device });
  const gE = p.gE ? rlk.tensor(Float64Array.from(p.gE), { device }) : undefined;
  const grad = rlk.tokenLogprobsBackward(logits, targets, g, {
    temperature: p.temperature,
    gradEntropy: gE,
    inPlace: p.inPlace,
    stats: p.inPlace ? undefined : res.stats,
  });
  return {
    isa: rlk.buildInfo().cpu.simd,
    logprobs: Array.from(res.logprobs.toArraySync() as Float32Array),
    entropy: Array.from(res.entropy!.toArraySync() as Float32Array),
    grad: Array.from(grad.toArraySync() as Float32Array),
  };
}

/** The same probe in a child process on another ISA path. */
function runProbeOn(isa: string, p: Probe): ProbeResult {
  const code = `
    import * as rlk from './dist/index.js';
    import { readFileSync } from 'node:fs';
    const p = JSON.parse(readFileSync(0, 'utf8'));
    p.x = p.x.map(Number);
    const enc = (k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v);
    const logits = rlk.tensor(Float64Array.from(p.x), { shape: p.shape, dtype: p.dtype });
    const targets = rlk.tensor(Int32Array.from(p.targets));
    const res = rlk.tokenLogprobs(logits, targets, { temperature: p.temperature, entropy: true, saveForBackward: !p.inPlace });
    const g = rlk.tensor(Float64Array.from(p.g));
    const gE = p.gE ? rlk.tensor(Float64Array.from(p.gE)) : undefined;
    const grad = rlk.tokenLogprobsBackward(logits, targets, g, { temperature: p.temperature, gradEntropy: gE, inPlace: p.inPlace, stats: p.inPlace ? undefined : res.stats });
    process.stdout.write(JSON.stringify({ isa: rlk.buildInfo().cpu.simd, logprobs: Array.from(res.logprobs.toArraySync()),
      entropy: Array.from(res.entropy.toArraySync()), grad: Array.from(grad.toArraySync()) }, enc));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    // JSON has no infinities or NaN: they travel as strings.
    input: JSON.stringify(p, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)),
    env: { ...process.env, RLK_SIMD: isa },
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`RLK_SIMD=${isa} child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as ProbeResult;
  return { isa: out.isa, logprobs: out.logprobs.map(Number), entropy: out.entropy.map(Number), grad: out.grad.map(Number) };
}

/** Every path this machine has: the default (widest) in-process, the narrower ones in children. */
function allPaths(p: Probe): ProbeResult[] {
  const out = [runProbe(p)];
  for (const isa of ISAS) if (isa !== out[0].isa) out.push(runProbeOn(isa, p));
  return out;
}

function storedValues(x: number[], dtype: FloatDType): Float64Array {
  return Float64Array.from(x, (v) => (dtype === 'float32' ? Math.fround(v) : roundTo(v, dtype)));
}

function refOf(p: Probe): { fwd: { logprobs: Float64Array; entropy: Float64Array }; grad: Float64Array } {
  const inp: RefInput = { x: storedValues(p.x, p.dtype), rows: p.shape[0], vocab: p.shape[1], targets: p.targets, temperature: p.temperature, ignoreIndex: -100 };
  const g = p.g.map((v) => Math.fround(v));
  const gE = p.gE ? p.gE.map((v) => Math.fround(v)) : undefined;
  return { fwd: refForward(inp), grad: refBackward(inp, g, gE) };
}

/**
 * Each element within one unit in the last place of the float64 value (16-bit
 * gradients are rounded once, at the store), plus `slack` of the array's largest value.
 */
function expectWithinUlp(what: string, out: ArrayLike<number>, ref: ArrayLike<number>, dtype: 'bfloat16' | 'float16', seed: number, slack = 0): void {
  const mant = dtype === 'bfloat16' ? 7 : 10;
  const minExp = dtype === 'bfloat16' ? -126 : -14;
  let maxAbs = 0;
  for (let i = 0; i < ref.length; i++) maxAbs = Math.max(maxAbs, Math.abs(ref[i]));
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i];
    const e = r === 0 ? minExp : Math.max(Math.floor(Math.log2(Math.abs(r))), minExp);
    const ulp = 2 ** (e - mant);
    if (!(Math.abs(out[i] - r) <= ulp + slack * maxAbs)) {
      throw new Error(`${what}: element ${i} got ${out[i]}, want ${r}: more than one ${dtype} ulp (seed ${seed})`);
    }
  }
}

describe('token log-prob numerics (issue 9)', () => {
  it.each(['float32', 'bfloat16', 'float16'] as FloatDType[])(
    'logits masked with the lowest finite %s give finite entropy at T != 1, equal on every ISA path',
    (dtype) => {
      const seed = freshSeed();
      const r = rng(seed);
      const rows = 4;
      const V = 77;
      const x = Array.from(randn(r, rows * V, 2));
      // Row 0: a masked prefix (the lanes see only masked values before the real maximum);
      // row 1: every third masked; row 2: all but two masked; row 3: masked suffix.
      for (let j = 0; j < 40; j++) x[j] = LOWEST[dtype];
      for (let j = 0; j < V; j += 3) x[V + j] = LOWEST[dtype];
      for (let j = 0; j < V; j++) if (j !== 10 && j !== 60) x[2 * V + j] = LOWEST[dtype];
      for (let j = 30; j < V; j++) x[3 * V + j] = LOWEST[dtype];
      for (const temperature of [0.7, 1.6]) {
        const p: Probe = {
          seed, shape: [rows, V], dtype, x, targets: [50, 1, 10, 3], temperature,
          g: Array.from(randn(r, rows)), gE: Array.from(randn(r, rows)), inPlace: false,
        };
        const ref = refOf(p);
        const tol = dtype === 'float32' ? 1e-6 : 1e-5;
        for (const res of allPaths(p)) {
          const what = `${dtype} T=${temperature} on ${res.isa}`;
          for (const h of res.entropy) expect(Number.isFinite(h), `${what}: entropy ${res.entropy} (seed ${seed})`).toBe(true);
          expectClose(`${what} logprobs`, res.logprobs, ref.fwd.logprobs, tol, seed);
          expectClose(`${what} entropy`, res.entropy, ref.fwd.entropy, tol, seed);
          for (const v of res.grad) expect(Number.isFinite(v), `${what}: gradient not finite (seed ${seed})`).toBe(true);
          expectClose(`${what} gradient`, res.grad, ref.grad, dtype === 'float32' ? 1e-6 : 1e-2, seed);
        }
      }
    },
  );

  it('a temperature whose log2(e) / T overflows float32 (T = 3e-39; 1 / T is finite) matches float64 on every ISA path', () => {
    // The vector exps work in base 2 with the scale log2(e) / T; unclamped it
    // is inf here, and 0 * inf made a row of equal logits NaN.
    const seed = freshSeed();
    const r = rng(seed);
    const V = 77;
    const x = new Array<number>(3 * V).fill(0); // row 0: all equal (the uniform distribution)
    for (let j = 0; j < V; j += 5) x[V + j] = 1; // row 1: uniform over the 1s
    const noise = randn(r, V, 2);
    for (let j = 0; j < V; j++) x[2 * V + j] = noise[j]; // row 2: one-hot at its maximum
    let top = 0;
    for (let j = 1; j < V; j++) if (x[2 * V + j] > x[2 * V + top]) top = j;
    // |g|, |gE| <= 0.5: g / T stays a finite float32.
    const p: Probe = { seed, shape: [3, V], dtype: 'float32', x, targets: [4, 10, top], temperature: 3e-39,
      g: [0.5, -0.25, 0.3], gE: [0.25, 0.5, -0.4], inPlace: false };
    const ref = refOf(p);
    for (const res of allPaths(p)) {
      const what = `T=3e-39 on ${res.isa}`;
      expectClose(`${what} logprobs`, res.logprobs, ref.fwd.logprobs, 1e-6, seed);
      expectClose(`${what} entropy`, res.entropy, ref.fwd.entropy, 1e-6, seed);
      expectClose(`${what} gradient`, res.grad, ref.grad, 1e-6, seed);
    }
  });

  it('confident tokens (sum of exps rounds to 1 in float32) keep log-prob, entropy and 1 - p_t to 1e-6 on every ISA path', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (const V of [7, 64, 1000, 4099]) {
      const rows = 6;
      const x = Array.from(randn(r, rows * V, 1));
      const targets: number[] = [];
      for (let i = 0; i < rows; i++) {
        const t = Math.floor(r() * V);
        targets.push(t);
        x[i * V + t] = 18 + 4 * i; // s - 1 from ~1e-8 V down to ~1e-17 V
      }
      for (const temperature of [1, 0.7]) {
        const p: Probe = { seed, shape: [rows, V], dtype: 'float32', x, targets, temperature, g: Array.from(randn(r, rows)), gE: null, inPlace: false };
        const ref = refOf(p);
        // The gradient at each target: g (1 - p_t) / T, which 1 - e^d / s loses.
        const at = (a: ArrayLike<number>) => targets.map((t, i) => a[i * V + t]);
        // What float32 cannot avoid: each d_j = (x_j - max) / T is formed in float32 (x - max, the
        // float32 1/T, the product: |error| <= 3 * 2^-24 |d_j|) and e^{d_j} in float32 (2 units), and
        // s - 1 is the sum of those e^{d_j}. Per row, the error that alone allows in s - 1 (relative:
        // log-prob, entropy and 1 - p_t of a confident row are all proportional to it).
        const xs = storedValues(x, 'float32');
        const slack = targets.map((t, i) => {
          let sm1 = 0;
          let err = 0;
          for (let j = 0; j < V; j++) {
            if (j === t) continue;
            const d = (xs[i * V + j] - xs[i * V + t]) / temperature;
            sm1 += Math.exp(d);
            err += Math.exp(d) * (3 * Math.abs(d) + 2);
          }
          return (err * 2 ** -24) / sm1; // relative
        });
        const shrunk = (got: ArrayLike<number>, want: ArrayLike<number>) =>
          Array.from(got, (g, i) => {
            const allowed = slack[i] * Math.abs(want[i]);
            const d = g - want[i];
            return want[i] + Math.sign(d) * Math.max(0, Math.abs(d) - allowed);
          });
        for (const res of allPaths(p)) {
          const what = `V=${V} T=${temperature} on ${res.isa}`;
          expectClose(`${what} logprobs`, shrunk(res.logprobs, ref.fwd.logprobs), ref.fwd.logprobs, 1e-6, seed);
          expectClose(`${what} entropy`, shrunk(res.entropy, ref.fwd.entropy), ref.fwd.entropy, 1e-6, seed);
          expectClose(`${what} target gradient`, shrunk(at(res.grad), at(ref.grad)), at(ref.grad), 1e-6, seed);
        }
        // The in-place backward recomputes the statistics; the same digits.
        const inPlace = runProbe({ ...p, inPlace: true });
        expectClose(`V=${V} T=${temperature} in-place target gradient`, shrunk(at(inPlace.grad), at(ref.grad)), at(ref.grad), 1e-6, seed);
      }
    }
  });

  it('bfloat16 and float16 gradients at V = 151936 (in place, and from saved stats) are within one ulp of float64', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 151936;
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const rows = 3;
      // float16 on the default path only: the child paths' inputs travel as JSON, slow at this size.
      const paths = (p: Probe) => (dtype === 'bfloat16' ? allPaths(p) : [runProbe(p)]);
      const x = Array.from(randn(r, rows * V, 2));
      const targets = [Math.floor(r() * V), Math.floor(r() * V), Math.floor(r() * V)];
      x[targets[1]  + V] = 40; // a confident row: 1 - p_t ~ 1e-5
      x[targets[2] + 2 * V] = 30;
      for (const inPlace of [true, false]) {
        const p: Probe = { seed, shape: [rows, V], dtype, x, targets, temperature: 0.9, g: Array.from(randn(r, rows)), gE: null, inPlace };
        const ref = refOf(p);
        for (const res of paths(p)) expectWithinUlp(`${dtype} inPlace=${inPlace} on ${res.isa}`, res.grad, ref.grad, dtype, seed);
      }
    }
  });

  it('a -inf target logit gives the gradient PyTorch gives: g / T at the target, -g p_j / T elsewhere', () => {
    // torch 2.13: x = [[1, -inf, 2, 0.5]], requires_grad; log_softmax(x / 0.7, -1).gather(-1, [[1]])
    // .backward([[0.3]]) gives x.grad = [[-0.0757, 0.4286, -0.3158, -0.0371]] (log-prob -inf).
    const torchGrad = [-0.0757, 0.4286, -0.3158, -0.0371];
    const x = rlk.tensor(Float32Array.from([1, -Infinity, 2, 0.5]), { shape: [1, 4] });
    const t = rlk.tensor(Int32Array.from([1]));
    const lp = rlk.tokenLogprobs(x, t, { temperature: 0.7 }).logprobs.toArraySync() as Float32Array;
    expect(lp[0]).toBe(-Infinity);
    for (const isa of ['native', ...ISAS]) {
      const p: Probe = { seed: 0, shape: [1, 4], dtype: 'float32', x: [1, -Infinity, 2, 0.5], targets: [1], temperature: 0.7, g: [0.3], gE: null, inPlace: false };
      const res = isa === 'native' ? runProbe(p) : runProbeOn(isa, p);
      for (let j = 0; j < 4; j++) expect(res.grad[j], `${res.isa} element ${j}`).toBeCloseTo(torchGrad[j], 4);
    }
  });
});

describeCuda('token log-prob numerics on CUDA (issue 9)', () => {
  it('lowest-finite masks, confident tokens and a -inf target match the CPU', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const V = 300;
    const x = Array.from(randn(r, 4 * V, 2));
    for (let j = 0; j < 200; j++) x[j] = LOWEST.float32;
    x[V + 7] = 30;
    x[2 * V + 9] = -Infinity;
    const p: Probe = { seed, shape: [4, V], dtype: 'float32', x, targets: [250, 7, 9, 4], temperature: 0.7, g: Array.from(randn(r, 4)), gE: Array.from(randn(r, 4)), inPlace: false };
    const ref = refOf(p);
    const res = runProbe(p, 'cuda');
    expectClose('cuda logprobs', res.logprobs, ref.fwd.logprobs, 1e-6, seed);
    expectClose('cuda entropy', res.entropy, ref.fwd.entropy, 1e-6, seed);
    expectClose('cuda gradient', res.grad, ref.grad, 1e-6, seed);
  });
});
