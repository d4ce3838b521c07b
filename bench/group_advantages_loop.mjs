// Time per groupAdvantages call over back-to-back calls (outputs disposed
// each call, as in a training loop): the quick A/B check of a change, run
// alternately against another build with RLK_NATIVE_PATH. It times WINDOWS
// stretches of 60 ms and prints their minimum, first quartile and median:
// on a shared VM the minimum and quartile move far less than one long mean.
// Usage: node bench/group_advantages_loop.mjs [threads=2] [method=rloo] [B=65536] [windows=30]
import * as rlk from '../dist/index.js';

const [threads = '2', method = 'rloo', b = '65536', windows = '30'] = process.argv.slice(2);
const B = Number(b);
rlk.setNumThreads(Number(threads));
const rewards = rlk.tensor(Float32Array.from({ length: B }, (_, i) => (i % 3 === 0 ? 1 : 0) + 0.01 * (i % 7)));
const tokenCounts = rlk.tensor(Int32Array.from({ length: B }, (_, i) => i % 512));
const baselineRewards = rlk.tensor(Float32Array.from({ length: B }, (_, i) => 0.5 + 0.01 * (i % 5)));
const opts = {
  groupSize: 16,
  method,
  ...(method === 'opo' || method === 'reinforce++' ? { tokenCounts } : {}),
  ...(method === 'remax' ? { baselineRewards } : {}),
};
const per = [];
for (let w = 0; w < Number(windows); w++) {
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < 60) {
    const out = rlk.groupAdvantages(rewards, opts);
    out.advantages.dispose();
    out.informative.dispose();
    n++;
  }
  per.push(((performance.now() - t0) / n) * 1000);
}
per.sort((x, y) => x - y);
const q = (f) => per[Math.floor(f * (per.length - 1))].toFixed(1);
console.log(`groupAdvantages ${method} B=${B} threads=${threads}${process.env.RLK_SIMD ? ` RLK_SIMD=${process.env.RLK_SIMD}` : ''}: min ${q(0)} p25 ${q(0.25)} median ${q(0.5)} us/call (${windows} windows of 60 ms)`);
