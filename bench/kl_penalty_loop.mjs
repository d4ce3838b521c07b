// Time per klPenalty call over back-to-back calls (outputs disposed each
// call, as in a training loop): the quick A/B check of a change, run
// alternately against another build with RLK_NATIVE_PATH, as
// group_advantages_loop.mjs. Inputs as kl_penalty.bench.mjs's.
// Usage: node bench/kl_penalty_loop.mjs [threads=1] [estimator=k3] [n=2097152] [windows=30]
import * as rlk from '../dist/index.js';
import { randomFloats } from './common.mjs';

const [threads = '1', estimator = 'k3', nArg = '2097152', windows = '30'] = process.argv.slice(2);
const n = Number(nArg);
rlk.setNumThreads(Number(threads));
const lp = rlk.tensor(randomFloats(n, 3, 1).map((v) => -Math.abs(v)));
const ref = rlk.tensor(randomFloats(n, 4, 1).map((v) => -Math.abs(v)));
const per = [];
for (let w = 0; w < Number(windows); w++) {
  const t0 = performance.now();
  let calls = 0;
  while (performance.now() - t0 < 60) {
    const r = rlk.klPenalty(lp, ref, { estimator });
    r.values.dispose();
    r.grad.dispose();
    calls++;
  }
  per.push(((performance.now() - t0) / calls) * 1000);
}
per.sort((x, y) => x - y);
const q = (f) => per[Math.floor(f * (per.length - 1))].toFixed(1);
console.log(`klPenalty ${estimator} n=${n} threads=${threads}${process.env.RLK_SIMD ? ` RLK_SIMD=${process.env.RLK_SIMD}` : ''}: min ${q(0)} p25 ${q(0.25)} median ${q(0.5)} us/call (${windows} windows of 60 ms)`);
