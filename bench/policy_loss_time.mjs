// Single-call timing of policyLoss (a mode, default vanilla + dual clip; clip-higher, its default
// aggregation, mask, k3 KL, grad, stats) on one thread: the quick check used while tuning the CPU
// token pass. The options are policy_loss.bench.mjs's.
// Wall and CPU time (process.cpuUsage: all threads; less moved by other jobs) per call.
// Usage: node bench/policy_loss_time.mjs [--threads=N] [--B=64] [--T=32768] [--iters=15] [--no-kl] [--mode=vanilla]
import * as rlk from '../dist/index.js';
import { policyLossData } from './common.mjs';

const arg = (name, d) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? d);
const NOKL = process.argv.includes('--no-kl');
const MODE = process.argv.find((a) => a.startsWith('--mode='))?.split('=')[1] ?? 'vanilla';
const B = arg('B', 64), T = arg('T', 32768), ITERS = arg('iters', 15);
rlk.setNumThreads(arg('threads', 1));
const { logp, old, ref, adv, mask, shape } = policyLossData(B, T);
const x = {
  logprobs: rlk.tensor(logp, { shape }), oldLogprobs: rlk.tensor(old, { shape }), advantages: rlk.tensor(adv, { shape }),
  mask: rlk.tensor(mask, { shape, dtype: 'uint8' }),
};
const refT = rlk.tensor(ref, { shape });
const times = [];
const cpu = [];
let loss = 0;
for (let i = 0; i < ITERS + 2; i++) {
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  const out = rlk.policyLoss(x, { mode: MODE, clipLow: 0.2, clipHigh: 0.28, beta: 0.1, ...(MODE === 'vanilla' ? { dualClip: 3 } : {}), ...(NOKL ? {} : { kl: { refLogprobs: refT, estimator: 'k3', coef: 0.001 } }) });
  loss = await out.loss.item();
  await out.readStats();
  const dt = Number(process.hrtime.bigint() - t0) / 1e6;
  const dc = process.cpuUsage(c0);
  if (i >= 2) {
    times.push(dt);
    cpu.push((dc.user + dc.system) / 1e3);
  }
  out.loss.dispose();
  out.grad.dispose();
}
times.sort((a, b) => a - b);
cpu.sort((a, b) => a - b);
console.log(`policyLoss ${MODE}${NOKL ? '' : '+k3'} [${B}, ${T}] threads=${arg('threads', 1)} isa=${rlk.buildInfo().cpu.simd}: median ${times[times.length >> 1].toFixed(2)} ms, min ${times[0].toFixed(2)} ms, CPU median ${cpu[cpu.length >> 1].toFixed(2)} ms (loss ${loss})`);
