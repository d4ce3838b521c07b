// Time per groupAdvantages call over back-to-back calls (outputs disposed
// each call, as in a training loop): the quick A/B check of a change, run
// alternately against another build with RLK_NATIVE_PATH. It prints the
// minimum, first quartile and median of WINDOWS stretches of 60 ms
// (timeWindows of common.mjs); op_loop.mjs does the same for other ops.
// Usage: node bench/group_advantages_loop.mjs [threads=2] [method=rloo] [B=65536] [windows=30]
import * as rlk from '../dist/index.js';
import { timeWindows } from './common.mjs';

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
console.log(`groupAdvantages ${method} B=${B} threads=${threads}${process.env.RLK_SIMD ? ` RLK_SIMD=${process.env.RLK_SIMD}` : ''}: ${timeWindows(() => {
  const out = rlk.groupAdvantages(rewards, opts);
  out.advantages.dispose();
  out.informative.dispose();
}, Number(windows))}`);
