// CPU time per call (process.cpuUsage, user + system, all threads) of
// vocabDivergence, the measure a shared machine disturbs least: each kind,
// values alone (`grad: false`) and values + student gradient, outputs created
// and disposed each call. bench/torch_vocab_divergence_cpu_time.py is the
// PyTorch side (same shapes and inputs' distribution).
// Prints the median and the minimum of --reps measurements of --calls calls.
// Usage: [RLK_SIMD=avx2] node bench/vocab_divergence_cpu_time.mjs [--threads=1] [--only=substring] [--calls=5] [--reps=5]
import * as rlk from '../dist/index.js';
import { randomFloats } from './common.mjs';

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
rlk.setNumThreads(Number(arg('threads', '1')));
const ONLY = arg('only', '');
const CALLS = Number(arg('calls', '5'));
const REPS = Number(arg('reps', '5'));

function cpuPerCall(fn, calls, reps) {
  for (let i = 0; i < 2; i++) fn();
  const per = [];
  for (let r = 0; r < reps; r++) {
    const c0 = process.cpuUsage();
    for (let i = 0; i < calls; i++) fn();
    const c = process.cpuUsage(c0);
    per.push((c.user + c.system) / calls);
  }
  per.sort((a, b) => a - b);
  return { median: per[reps >> 1], min: per[0] };
}

const SHAPES = [[256, 32000], [64, 151936]];
const KINDS = [{ kind: 'forward-kl' }, { kind: 'reverse-kl' }, { kind: 'jsd', beta: 0.5 }];
console.log(`CPU time per call, ${rlk.getNumThreads()} thread(s), ${rlk.buildInfo().cpu.simd}`);
for (const [N, V] of SHAPES) {
  const s = rlk.tensor(randomFloats(N * V, 1), { shape: [N, V] });
  const t = rlk.tensor(randomFloats(N * V, 2), { shape: [N, V] });
  for (const k of KINDS) {
    for (const grad of [false, true]) {
      const name = `${k.kind === 'jsd' ? `jsd beta=${k.beta}` : k.kind} ${grad ? 'forward+backward' : 'forward'} [${N}, ${V}]`;
      if (ONLY && !name.includes(ONLY)) continue;
      const t0 = cpuPerCall(() => {
        const r = rlk.vocabDivergence(s, t, { kind: k.kind, beta: k.beta, grad });
        r.values.dispose();
        if (r.gradStudent) r.gradStudent.dispose();
      }, CALLS, REPS);
      console.log(`${name}: ${(t0.median / 1000).toFixed(2)} ms (min ${(t0.min / 1000).toFixed(2)})`);
    }
  }
  s.dispose();
  t.dispose();
}
