// vocabDivergence on the CPU against PyTorch (log_softmax + kl_div with an
// autograd backward, and TRL's generalized_jsd_loss), same inputs, same
// thread count, values and the student gradient. Prints one markdown table.
//   npm run build && node bench/vocab_divergence.bench.mjs [--threads 2]
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';
import * as rlk from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const threadsArg = process.argv.indexOf('--threads');
const threads = threadsArg > 0 ? Number(process.argv[threadsArg + 1]) : 2;
rlk.setNumThreads(threads);

const cases = [
  { name: 'forward-kl [1024, 32000] fp32', rows: 1024, vocab: 32000, kind: 'forward-kl' },
  { name: 'reverse-kl [1024, 32000] fp32', rows: 1024, vocab: 32000, kind: 'reverse-kl' },
  { name: 'jsd beta=0.5 [1024, 32000] fp32', rows: 1024, vocab: 32000, kind: 'jsd', beta: 0.5 },
  { name: 'forward-kl [128, 151936] fp32', rows: 128, vocab: 151936, kind: 'forward-kl' },
  { name: 'jsd beta=0.5 [128, 151936] fp32', rows: 128, vocab: 151936, kind: 'jsd', beta: 0.5 },
];

function randn(n, seed) {
  // xorshift + Box-Muller; inputs only need to be reproducible, not identical to torch's.
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return (x + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next()));
    const th = 2 * Math.PI * next();
    out[i] = 2 * r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = 2 * r * Math.sin(th);
  }
  return out;
}

const ours = {};
for (const c of cases) {
  const shape = [c.rows, c.vocab];
  const s = rlk.tensor(randn(c.rows * c.vocab, 1), { shape });
  const t = rlk.tensor(randn(c.rows * c.vocab, 2), { shape });
  const bench = new Bench({ iterations: 5, time: 0, warmupIterations: 1, warmupTime: 0 });
  bench.add(c.name, () => {
    const r = rlk.vocabDivergence(s, t, { kind: c.kind, beta: c.beta });
    r.values.dispose();
    r.gradStudent.dispose();
  });
  await bench.run();
  ours[c.name] = bench.tasks[0].result.latency.p50;
  s.dispose();
  t.dispose();
}

let torch = null;
const python = '/usr/bin/python3';
if (existsSync(python)) {
  const r = spawnSync(python, [join(here, 'torch_vocab_divergence.py'), '--threads', String(threads), '--cases', JSON.stringify(cases)], {
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  if (r.status === 0) torch = JSON.parse(r.stdout.trim().split('\n').pop());
  else console.error(`PyTorch comparison skipped: ${r.stderr.trim().split('\n').pop()}`);
}

const info = rlk.buildInfo();
console.log(`vocabDivergence, CPU (${info.cpu.simd}), ${threads} threads; values + student gradient; median of 5 runs\n`);
console.log('| case | rlkernels ms | GB/s | PyTorch 1.13 ms (autograd fwd+bwd) | speedup |');
console.log('|---|---:|---:|---:|---:|');
for (const c of cases) {
  const ms = ours[c.name];
  // Bytes moved at least once: both logits read, the gradient written.
  const gbs = (c.rows * c.vocab * 12) / (ms * 1e6);
  const tm = torch?.[c.name];
  console.log(`| ${c.name} | ${ms.toFixed(1)} | ${gbs.toFixed(1)} | ${tm ? tm.toFixed(1) : 'n/a'} | ${tm ? (tm / ms).toFixed(1) + 'x' : 'n/a'} |`);
}
