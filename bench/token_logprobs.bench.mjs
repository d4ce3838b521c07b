// Token log-probs: rlkernels against PyTorch (CPU, same thread count), one
// markdown table of medians, written into bench/RESULTS.md under
// "## Token log-probs (CPU)". With a GPU, also [32768, 151936] bf16 on CUDA:
// time, GB/s from the bytes moved, and the peak extra device memory.
// Run: npx tsc -p tsconfig.json && node bench/token_logprobs.bench.mjs
// (RLK_BENCH_ITERS=n to change the sample count; RLK_BENCH_NO_WRITE=1 to leave RESULTS.md alone).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';
import * as rlk from '../dist/index.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const THREADS = 2;
const ITERS = Number(process.env.RLK_BENCH_ITERS ?? 7);
const TEMPERATURE = 0.7;
const SHAPES = [
  [4096, 32000, 'float32'],
  [512, 151936, 'float32'],
  [4096, 32000, 'bfloat16'],
];
const COMMAND = 'npx tsc -p tsconfig.json && node bench/token_logprobs.bench.mjs';

rlk.setNumThreads(THREADS);

/** Seeded normal-ish values (fast LCG + Box-Muller): the bench needs realistic logits, not a CSPRNG. */
function randomLogits(n) {
  const out = new Float32Array(n);
  let s = 12345;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 1) / 4294967297;
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u())) * 2;
    const a = 2 * Math.PI * u();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

function median(task) {
  return task.result.latency.p50;
}

async function benchCpu() {
  const rows = [];
  for (const [N, V, dtype] of SHAPES) {
    const logits = rlk.tensor(randomLogits(N * V), { shape: [N, V], dtype });
    const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
    const grad = rlk.full([N], 1);
    const opts = { temperature: TEMPERATURE };
    const bench = new Bench({ time: 0, iterations: ITERS, warmupIterations: 1, warmupTime: 0 });
    bench.add('forward', () => {
      rlk.tokenLogprobs(logits, targets, opts).logprobs.dispose();
    });
    bench.add('forward+entropy', () => {
      const r = rlk.tokenLogprobs(logits, targets, { ...opts, entropy: true });
      r.logprobs.dispose();
      r.entropy.dispose();
    });
    bench.add('forward+backward', () => {
      const r = rlk.tokenLogprobs(logits, targets, { ...opts, saveForBackward: true });
      rlk.tokenLogprobsBackward(logits, targets, grad, { ...opts, stats: r.stats }).dispose();
      r.logprobs.dispose();
      r.stats.dispose();
    });
    // In place needs fresh logits each time: time forward + backward on a copy made outside the timing.
    const scratch = rlk.empty([N, V], { dtype });
    bench.add('forward+backward (out, no allocation)', () => {
      const r = rlk.tokenLogprobs(logits, targets, { ...opts, saveForBackward: true });
      rlk.tokenLogprobsBackward(logits, targets, grad, { ...opts, stats: r.stats, out: scratch });
      r.logprobs.dispose();
      r.stats.dispose();
    });
    await bench.run();
    for (const task of bench.tasks) rows.push({ shape: `[${N}, ${V}]`, dtype, op: task.name, key: `${N}x${V}:${dtype}`, ms: median(task) });
    logits.dispose();
    scratch.dispose();
  }
  return rows;
}

function torchBaseline() {
  const py = '/usr/bin/python3';
  if (!existsSync(py)) return { error: `${py} not found` };
  const shapes = SHAPES.map(([N, V, d]) => `${N}x${V}:${d}`).join(',');
  const r = spawnSync(py, [join(HERE, 'torch_token_logprobs.py'), '--threads', String(THREADS), '--shapes', shapes, '--iters', String(ITERS), '--temperature', String(TEMPERATURE)], {
    encoding: 'utf8',
    timeout: 1_800_000,
  });
  if (r.status !== 0) return { error: (r.stderr || r.stdout || 'no output').split('\n').slice(-3).join(' ') };
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { error: `unparsable output: ${r.stdout.slice(0, 200)}` };
  }
}

function table(rows, torch) {
  const lines = ['| shape | dtype | op | rlkernels median (ms) | PyTorch median (ms) | speedup |', '|---|---|---|---:|---:|---:|'];
  for (const r of rows) {
    // PyTorch has one forward+backward: compare both of ours with it.
    const torchOp = r.op.startsWith('forward+backward') ? 'forward+backward' : r.op;
    const t = torch[`${r.key}:${torchOp}`];
    const speed = typeof t === 'number' ? `${(t / r.ms).toFixed(1)}x` : 'n/a';
    lines.push(`| ${r.shape} | ${r.dtype} | ${r.op} | ${r.ms.toFixed(1)} | ${typeof t === 'number' ? t.toFixed(1) : 'n/a'} | ${speed} |`);
  }
  return lines.join('\n');
}

async function benchGpu() {
  const N = 32768;
  const V = 151936;
  const dtype = 'bfloat16';
  const bytes = N * V * 2;
  const sync = () => rlk.cuda.synchronize();
  const dev = () => rlk.memory().cuda[0]?.allocatedBytes ?? 0;
  // Filled on the device (10 GB through host staging would dominate the run); the
  // kernels' cost does not depend on the values.
  const logits = rlk.full([N, V], 0.5, { dtype, device: 'cuda' });
  const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V), { device: 'cuda' });
  const grad = rlk.full([N], 1, { device: 'cuda' });
  const time = (fn, iters = 5) => {
    fn();
    sync();
    const ts = [];
    for (let k = 0; k < iters; k++) {
      const a = performance.now();
      fn();
      sync();
      ts.push(performance.now() - a);
    }
    ts.sort((x, y) => x - y);
    return ts[Math.floor(ts.length / 2)];
  };
  const peak = (fn) => {
    sync();
    const before = dev();
    const keep = fn();
    sync();
    const extra = dev() - before;
    for (const t of keep) t.dispose();
    return extra;
  };
  const rows = [];
  const fwd = () => rlk.tokenLogprobs(logits, targets, { temperature: TEMPERATURE, saveForBackward: true });
  const fwdMs = time(() => {
    const r = fwd();
    r.logprobs.dispose();
    r.stats.dispose();
  });
  rows.push(['forward (+stats)', fwdMs, bytes, peak(() => Object.values(fwd()))]);
  const st = fwd();
  const bwdMs = time(() => rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: TEMPERATURE, stats: st.stats, inPlace: true }));
  rows.push(['backward in place (stats)', bwdMs, 2 * bytes, peak(() => [])]);
  const bwdAllocMs = time(() => rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: TEMPERATURE, stats: st.stats }).dispose());
  rows.push(['backward, new gradient (stats)', bwdAllocMs, 2 * bytes, peak(() => [rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: TEMPERATURE, stats: st.stats })])]);
  const lines = ['| op | median (ms) | bytes moved (GB) | GB/s | extra device memory (MB) |', '|---|---:|---:|---:|---:|'];
  for (const [op, ms, b, extra] of rows) lines.push(`| ${op} | ${ms.toFixed(2)} | ${(b / 1e9).toFixed(2)} | ${(b / 1e9 / (ms / 1e3)).toFixed(0)} | ${(extra / 2 ** 20).toFixed(1)} |`);
  return `[${N}, ${V}] ${dtype}, T = ${TEMPERATURE}, ${rlk.buildInfo().cuda.devices[0] ?? 'GPU'}\n\n${lines.join('\n')}`;
}

function writeResults(section, body) {
  const path = join(HERE, 'RESULTS.md');
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmark results\n';
  const heading = `## ${section}`;
  const start = text.indexOf(heading);
  const block = `${heading}\n\n${body}\n`;
  let next;
  if (start < 0) next = `${text.trimEnd()}\n\n${block}`;
  else {
    const after = text.indexOf('\n## ', start + heading.length);
    next = text.slice(0, start) + block + (after < 0 ? '' : `\n${text.slice(after + 1)}`);
  }
  writeFileSync(path, next.endsWith('\n') ? next : next + '\n');
}

const cpuModel = (() => {
  const r = spawnSync('lscpu', [], { encoding: 'utf8' });
  const m = /Model name:\s*(.+)/.exec(r.stdout ?? '');
  return m ? m[1].trim() : 'unknown CPU';
})();

const rows = await benchCpu();
const torch = torchBaseline();
const md = table(rows, torch);
const meta =
  `Machine: ${cpuModel} (${rlk.buildInfo().cpu.simd} path), ${THREADS} threads on both sides; ` +
  `PyTorch ${torch.torch ?? `unavailable (${torch.error})`} \`log_softmax(logits.float() / T, -1).gather(...)\` ` +
  `(forward under no_grad; forward+backward through autograd). T = ${TEMPERATURE}, median of ${ITERS} runs after one warm-up. ` +
  `rlkernels "forward+backward" is the forward with \`saveForBackward\` then the backward with \`stats\`, allocating the gradient; ` +
  `"(out, no allocation)" writes the gradient into a preallocated tensor.\n` +
  `Date: ${new Date().toISOString().slice(0, 10)}. Command: \`${COMMAND}\`. ` +
  `Load average at the end: ${loadavg().map((x) => x.toFixed(1)).join(' / ')} (on a shared 2-core machine both sides' times vary run to run; ` +
  `a fresh 0.5 GB output costs ~10^5 page faults, which dominates the allocating forward+backward).`;
console.log(`\n${meta}\n\n${md}\n`);
if (!process.env.RLK_BENCH_NO_WRITE) writeResults('Token log-probs (CPU)', `${meta}\n\n${md}`);

if (rlk.cuda.isAvailable()) {
  const gpu = await benchGpu();
  console.log(gpu);
  if (!process.env.RLK_BENCH_NO_WRITE) writeResults('Token log-probs (GPU)', `Date: ${new Date().toISOString().slice(0, 10)}. Command: \`${COMMAND}\`.\n\n${gpu}`);
} else {
  const reason = rlk.buildInfo().cuda.reason;
  console.log(`GPU section skipped: ${reason}`);
  if (!process.env.RLK_BENCH_NO_WRITE && !readFileSync(join(HERE, 'RESULTS.md'), 'utf8').includes('## Token log-probs (GPU)')) {
    writeResults(
      'Token log-probs (GPU)',
      `Not measured yet: the machine that ran the CPU bench has no usable GPU (${reason}). ` +
        `On a CUDA machine the same command times [32768, 151936] bfloat16 (forward with stats, backward in place and allocating), ` +
        `reports GB/s from the bytes moved and the extra device memory, and replaces this section. No numbers are given here until then.`,
    );
  }
}
