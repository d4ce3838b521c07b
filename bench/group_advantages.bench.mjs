// groupAdvantages on the CPU: grpo over consecutive groups of 16, grpo over
// shuffled group ids, and tmn-reweight with 8 tasks, at B = 4096 and 65536,
// beside PyTorch 1.13 (vectorised, bench/torch_group_advantages.py) with the
// same thread count, run from here.
// Usage: node bench/group_advantages.bench.mjs [--threads=N]   (after npm run build)
import { Bench } from 'tinybench';
import * as rlk from '../dist/index.js';
import { normal, rng, runTorch } from './common.mjs';

const threadsArg = process.argv.find((a) => a.startsWith('--threads='));
const THREADS = threadsArg ? Number(threadsArg.split('=')[1]) : 2;
const SIZES = [4096, 65536];
const GS = 16;
const TASKS = 8;
const ITERS = 50;
rlk.setNumThreads(THREADS);


const bench = new Bench({ iterations: ITERS, time: 0, warmupIterations: 3, warmupTime: 0 });
for (const B of SIZES) {
  const r = rng(B);
  const G = B / GS;
  const rewards = rlk.tensor(Float32Array.from({ length: B }, () => (r() < 0.4 ? 1 : 0) + 0.1 * normal(r)));
  const perm = Int32Array.from({ length: B }, (_, i) => i % G);
  for (let i = B - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const groupIds = rlk.tensor(perm);
  const taskOfGroup = Array.from({ length: G }, () => Math.floor(r() * TASKS));
  const taskIds = rlk.tensor(Int32Array.from({ length: B }, (_, i) => taskOfGroup[Math.floor(i / GS)]));
  const run = (opts) => () => {
    const out = rlk.groupAdvantages(rewards, opts);
    out.advantages.dispose();
    out.informative.dispose();
  };
  bench.add(`grpo B=${B}`, run({ groupSize: GS, method: 'grpo' }));
  bench.add(`grpo ids B=${B}`, run({ groupIds, method: 'grpo' }));
  bench.add(`tmn-reweight B=${B}`, run({ groupSize: GS, method: 'tmn-reweight', taskIds }));
}
await bench.run();

const torch = runTorch('torch_group_advantages.py', [String(THREADS), String(ITERS)]);

console.log(`\ngroupAdvantages, CPU fp32 rewards, groups of ${GS}, ${THREADS} threads (${rlk.buildInfo().cpu.simd}); median of ${ITERS} runs\n`);
console.log('| case | rlkernels (ms) | PyTorch 1.13 vectorised (ms) | speedup |');
console.log('|---|---:|---:|---:|');
for (const task of bench.tasks) {
  const ms = task.result.latency.p50;
  const t = torch[task.name];
  console.log(`| ${task.name} | ${ms.toFixed(3)} | ${t ? t.toFixed(3) : 'n/a'} | ${t ? (t / ms).toFixed(1) + 'x' : 'n/a'} |`);
}
