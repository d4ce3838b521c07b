// Single-call timing of policyLoss (vanilla + dual clip + clip-higher, token-mean, mask, k3 KL,
// grad, stats) on one thread: the quick check used while tuning the CPU token pass.
// Usage: node bench/policy_loss_time.mjs [--threads=N] [--B=64] [--T=32768] [--iters=15] [--no-kl]
import * as rlk from '../dist/index.js';
import { policyLossData } from './common.mjs';

const arg = (name, d) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? d);
const NOKL = process.argv.includes('--no-kl');
const B = arg('B', 64), T = arg('T', 32768), ITERS = arg('iters', 15);
rlk.setNumThreads(arg('threads', 1));
const { logp, old, ref, adv, mask, shape } = policyLossData(B, T);
const x = {
  logprobs: rlk.tensor(logp, { shape }), oldLogprobs: rlk.tensor(old, { shape }), advantages: rlk.tensor(adv, { shape }),
  mask: rlk.tensor(mask, { shape, dtype: 'uint8' }),
};
const refT = rlk.tensor(ref, { shape });
const times = [];
let loss = 0;
for (let i = 0; i < ITERS + 2; i++) {
  const t0 = process.hrtime.bigint();
  const out = rlk.policyLoss(x, { mode: 'vanilla', clipLow: 0.2, clipHigh: 0.28, dualClip: 3, ...(NOKL ? {} : { kl: { refLogprobs: refT, estimator: 'k3', coef: 0.001 } }) });
  loss = await out.loss.item();
  await out.readStats();
  const dt = Number(process.hrtime.bigint() - t0) / 1e6;
  if (i >= 2) times.push(dt);
  out.loss.dispose();
  out.grad.dispose();
}
times.sort((a, b) => a - b);
console.log(`policyLoss vanilla${NOKL ? '' : '+k3'} [${B}, ${T}] threads=${arg('threads', 1)} isa=${rlk.buildInfo().cpu.simd}: median ${times[times.length >> 1].toFixed(2)} ms, min ${times[0].toFixed(2)} ms (loss ${loss})`);
