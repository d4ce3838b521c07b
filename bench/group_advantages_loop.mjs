// Mean time per groupAdvantages call over a stretch of back-to-back calls
// (outputs disposed each call, as in a training loop): the quick A/B check
// of fixed costs such as the pool's hand-off, run alternately against
// another build with RLK_NATIVE_PATH.
// Usage: node bench/group_advantages_loop.mjs [threads=2] [method=rloo] [B=65536] [seconds=1.5]
import * as rlk from '../dist/index.js';

const [threads = '2', method = 'rloo', b = '65536', seconds = '1.5'] = process.argv.slice(2);
const B = Number(b), ms = Number(seconds) * 1000;
rlk.setNumThreads(Number(threads));
const rewards = rlk.tensor(Float32Array.from({ length: B }, (_, i) => (i % 3 === 0 ? 1 : 0) + 0.01 * (i % 7)));
const tokenCounts = rlk.tensor(Int32Array.from({ length: B }, (_, i) => i % 512));
const opts = { groupSize: 16, method, ...(method === 'opo' || method === 'reinforce++' ? { tokenCounts } : {}) };
const t0 = performance.now();
let n = 0;
while (performance.now() - t0 < ms) {
  const out = rlk.groupAdvantages(rewards, opts);
  out.advantages.dispose();
  out.informative.dispose();
  n++;
}
console.log(`groupAdvantages ${method} B=${B} threads=${threads}: ${((performance.now() - t0) / n * 1000).toFixed(1)} us/call (${n} calls)`);
