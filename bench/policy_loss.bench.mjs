// policyLoss on the CPU: the whole GRPO objective (dual clip, clip-higher,
// token-mean, k3 KL with a coefficient, gradient and stats) at 64 x 32768
// and 512 x 8192 fp32, beside PyTorch 1.13 eager + autograd on the same
// formulas (bench/torch_policy_loss.py) with the same thread count.
// Usage: node bench/policy_loss.bench.mjs [--threads=N]   (after npm run build)
import { Bench } from 'tinybench';
import * as rlk from '../dist/index.js';
import { normal, rng, runTorch } from './common.mjs';

const threadsArg = process.argv.find((a) => a.startsWith('--threads='));
const THREADS = threadsArg ? Number(threadsArg.split('=')[1]) : 2;
const SHAPES = [[64, 32768], [512, 8192]];
const ITERS = 10;
rlk.setNumThreads(THREADS);


function inputs(B, T) {
  const r = rng(1);
  const n = B * T;
  const logp = new Float32Array(n), old = new Float32Array(n), ref = new Float32Array(n), adv = new Float32Array(n);
  const mask = new Uint8Array(n);
  for (let b = 0; b < B; b++) {
    const len = Math.floor((0.3 + 0.7 * r()) * T);
    for (let t = 0; t < T; t++) {
      const i = b * T + t;
      logp[i] = -r() * 4 - 0.01;
      old[i] = logp[i] + normal(r) * 0.3;
      ref[i] = logp[i] + normal(r) * 0.3;
      adv[i] = normal(r);
      mask[i] = t < len ? 1 : 0;
    }
  }
  const shape = [B, T];
  return {
    logprobs: rlk.tensor(logp, { shape }),
    oldLogprobs: rlk.tensor(old, { shape }),
    advantages: rlk.tensor(adv, { shape }),
    mask: rlk.tensor(mask, { shape, dtype: 'uint8' }),
    refLogprobs: rlk.tensor(ref, { shape }),
  };
}

const bench = new Bench({ iterations: ITERS, time: 0, warmupIterations: 2, warmupTime: 0 });
for (const [B, T] of SHAPES) {
  const x = inputs(B, T);
  bench.add(`${B} x ${T}`, async () => {
    const out = rlk.policyLoss(
      { logprobs: x.logprobs, oldLogprobs: x.oldLogprobs, advantages: x.advantages, mask: x.mask },
      { clipLow: 0.2, clipHigh: 0.28, dualClip: 3, aggregation: 'token-mean', kl: { refLogprobs: x.refLogprobs, estimator: 'k3', coef: 0.001 } },
    );
    await out.loss.item();
    await out.readStats();
    out.loss.dispose();
    out.grad.dispose();
  });
}
await bench.run();

const torch = runTorch('torch_policy_loss.py', [String(THREADS), String(ITERS)]);

const gb = (B, T) => (B * T * (4 * 4 + 1 + 4)) / 1e9; // logp, old, adv, ref, mask read; grad written
console.log(`\npolicyLoss, CPU fp32, ${THREADS} threads (${rlk.buildInfo().cpu.simd}); median of ${ITERS} runs; forward + gradient + stats\n`);
console.log('| B x T | rlkernels (ms) | GB/s | PyTorch 1.13 eager + autograd (ms) | speedup |');
console.log('|---|---:|---:|---:|---:|');
for (const task of bench.tasks) {
  const ms = task.result.latency.p50;
  const [B, T] = task.name.split(' x ').map(Number);
  const t = torch[task.name];
  console.log(`| ${task.name} | ${ms.toFixed(2)} | ${(gb(B, T) / (ms / 1000)).toFixed(1)} | ${t ? t.toFixed(1) : 'n/a'} | ${t ? (t / ms).toFixed(1) + 'x' : 'n/a'} |`);
}
