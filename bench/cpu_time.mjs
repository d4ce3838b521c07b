// CPU time per call (process.cpuUsage, user + system, all threads), the
// measure that a loaded machine disturbs least: groupAdvantages at B = 65536
// (groups of 16) for the methods of its vectorised path, and klPenalty k3
// value + gradient on 2 M and 16 M tokens (outputs created and disposed each
// call, as in a training loop). bench/torch_cpu_time.py is the PyTorch side.
// Usage: node bench/cpu_time.mjs [--threads=1] [--only=substring]
import * as rlk from '../dist/index.js';

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
rlk.setNumThreads(Number(arg('threads', '1')));
const ONLY = arg('only', '');

function cpuPerCall(fn, calls) {
  for (let i = 0; i < Math.max(3, calls / 20); i++) fn();
  const c0 = process.cpuUsage();
  for (let i = 0; i < calls; i++) fn();
  const c = process.cpuUsage(c0);
  return { total: (c.user + c.system) / calls, sys: c.system / calls };
}

let s = 1;
const r = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
const B = 65536;
const rewards = rlk.tensor(Float32Array.from({ length: B }, () => (r() < 0.4 ? 1 : 0) + 0.1 * r()));
const tokenCounts = rlk.tensor(Int32Array.from({ length: B }, () => Math.floor(r() * 512)));
const baselineRewards = rlk.tensor(Float32Array.from({ length: B }, () => r()));
const taskIds = rlk.tensor(Int32Array.from({ length: B }, (_, i) => Math.floor(i / 16) % 8));
const ga = {
  grpo: { method: 'grpo' },
  'grpo batch': { method: 'grpo', scale: 'batch' },
  'grpo none': { method: 'grpo', scale: 'none' },
  rloo: { method: 'rloo' },
  'reinforce++': { method: 'reinforce++', tokenCounts },
  opo: { method: 'opo', tokenCounts },
  remax: { method: 'remax', baselineRewards },
  gpg: { method: 'gpg' },
  'tmn-reweight (8 tasks)': { method: 'tmn-reweight', taskIds },
};
console.log(`CPU time per call, ${rlk.getNumThreads()} thread(s), ${rlk.buildInfo().cpu.simd}`);
for (const [name, o] of Object.entries(ga)) {
  if (ONLY && !`groupAdvantages ${name}`.includes(ONLY)) continue;
  const t = cpuPerCall(() => {
    const out = rlk.groupAdvantages(rewards, { groupSize: 16, ...o });
    out.advantages.dispose();
    out.informative.dispose();
  }, 2000);
  console.log(`groupAdvantages ${name} B=${B}: ${t.total.toFixed(1)} us (sys ${t.sys.toFixed(1)})`);
}
for (const n of [1 << 21, 1 << 24]) {
  if (ONLY && !`klPenalty k3 [${n}]`.includes(ONLY)) continue;
  const lp = rlk.tensor(Float32Array.from({ length: n }, (_, i) => -Math.abs(Math.sin(i))));
  const ref = rlk.tensor(Float32Array.from({ length: n }, (_, i) => -Math.abs(Math.cos(i))));
  const t = cpuPerCall(() => {
    const out = rlk.klPenalty(lp, ref, { estimator: 'k3' });
    out.values.dispose();
    out.grad.dispose();
  }, n > 1 << 22 ? 10 : 100);
  console.log(`klPenalty k3 [${n}]: ${(t.total / 1000).toFixed(2)} ms (sys ${(t.sys / 1000).toFixed(2)})`);
  lp.dispose();
  ref.dispose();
}
