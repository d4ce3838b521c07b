// Fused linear log-probs (CPU): time against PyTorch's materialising
// log_softmax((h @ W.T).float() / T).gather with autograd (eager and
// torch.compile) and against the matrix products alone, same thread count;
// and peak extra memory against the materialising paths.
// Run: npx tsc -p tsconfig.json && node bench/linear_logprobs.bench.mjs
//   RLK_BENCH_QUICK=1   smaller shapes (proves the script works in a minute; bench/run.mjs's
//                       quick mode skips this script: half a minute of matmuls)
//   RLK_BENCH_ITERS=n   samples per timing (default 3)
//   --memory-full       the memory shape, N = 32768, H = 4096, V = 151936
//                       (the materialising side needs ~40 GB: run where that fits)
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as rlk from '../dist/index.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.RLK_BENCH_PYTHON || join(HERE, '..', '.venv', 'bin', 'python');
const THREADS = 2;
const QUICK = process.env.RLK_BENCH_QUICK === '1';
const ITERS = Number(process.env.RLK_BENCH_ITERS ?? 3);
const T = 0.7;
const TIME_SHAPE = QUICK ? [512, 1024, 32000] : [4096, 1024, 32000];
const MEM_SHAPE = process.argv.includes('--memory-full') ? [32768, 4096, 151936] : QUICK ? [1024, 64, 151936] : [2048, 256, 151936];

function vmKb(field) {
  const m = readFileSync('/proc/self/status', 'utf8').match(new RegExp(`^${field}:\\s+(\\d+)`, 'm'));
  return m ? Number(m[1]) : 0;
}

/** Child mode: run one path once and print the peak resident memory it added beyond inputs and outputs (MB). */
function memoryChild(path, N, H, V) {
  rlk.setNumThreads(THREADS);
  const hidden = rlk.full([N, H], 0.01);
  const weight = rlk.full([V, H], 0.02);
  const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
  const grad = rlk.full([N], 1);
  const outBytes = (N * H + V * H) * 4 + N * 4 + N * 12;
  const base = vmKb('VmRSS');
  if (path === 'fused') {
    const f = rlk.linearLogprobs(hidden, weight, targets, { temperature: T, saveForBackward: true });
    rlk.linearLogprobsBackward(hidden, weight, targets, grad, { temperature: T, stats: f.stats });
  } else {
    // tokenLogprobs on the materialised hidden @ weight^T: the logits and their
    // gradient are the extra memory (the products' values do not change it).
    // The products' outputs, touched so that they count as the fused path's do.
    const gh = rlk.zeros([N, H]);
    const gw = rlk.zeros([V, H]);
    const logits = rlk.full([N, V], 0.5);
    const r = rlk.tokenLogprobs(logits, targets, { temperature: T, saveForBackward: true });
    rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: T, stats: r.stats });
    void gh, gw;
  }
  console.log(JSON.stringify({ extraMB: (vmKb('VmHWM') - base) / 1024 - outBytes / 2 ** 20 }));
}

function runChild(path, shape) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', path, ...shape.map(String)], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

function runTorch(args) {
  const r = spawnSync(PYTHON, [join(HERE, 'torch_linear_logprobs.py'), ...args], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { error: `unparsable output: ${r.stdout.slice(0, 200)}` };
  }
}

function median(fn) {
  fn();
  const ts = [];
  for (let k = 0; k < ITERS; k++) {
    const a = performance.now();
    fn();
    ts.push(performance.now() - a);
  }
  ts.sort((x, y) => x - y);
  return ts[Math.floor(ts.length / 2)];
}

function timeRows() {
  const [N, H, V] = TIME_SHAPE;
  rlk.setNumThreads(THREADS);
  let s = 1;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296) - 0.5;
  const hidden = rlk.tensor(Float32Array.from({ length: N * H }, () => 2 * u()), { shape: [N, H] });
  const weight = rlk.tensor(Float32Array.from({ length: V * H }, () => (2 * u()) / Math.sqrt(H)), { shape: [V, H] });
  const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
  const grad = rlk.full([N], 1);
  const fwd = median(() => rlk.linearLogprobs(hidden, weight, targets, { temperature: T }).logprobs.dispose());
  const fwdBwd = median(() => {
    const f = rlk.linearLogprobs(hidden, weight, targets, { temperature: T, saveForBackward: true });
    const b = rlk.linearLogprobsBackward(hidden, weight, targets, grad, { temperature: T, stats: f.stats });
    for (const t of [f.logprobs, f.stats, b.gradHidden, b.gradWeight]) t.dispose();
  });
  const torch = runTorch(['--threads', String(THREADS), '--n', String(N), '--h', String(H), '--v', String(V), '--iters', String(ITERS), '--temperature', String(T)]);
  const cell = (x) => (typeof x === 'number' ? x.toFixed(0) : 'n/a');
  const ratio = (x, ours) => (typeof x === 'number' ? `${(x / ours).toFixed(2)}x` : 'n/a');
  const lines = [
    `Shape N = ${N}, H = ${H}, V = ${V}, float32, T = ${T}; medians of ${ITERS} (ms).`,
    '',
    '| op | rlkernels | PyTorch matmul(s) alone | PyTorch eager | torch.compile | vs matmul | vs eager | vs compile |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    `| forward | ${cell(fwd)} | ${cell(torch.matmul_fwd)} | ${cell(torch.eager_fwd)} | ${cell(torch.compile_fwd)} | ${ratio(torch.matmul_fwd, fwd)} | ${ratio(torch.eager_fwd, fwd)} | ${ratio(torch.compile_fwd, fwd)} |`,
    `| forward+backward | ${cell(fwdBwd)} | ${cell(torch.matmul_3)} | ${cell(torch.eager_fwd_bwd)} | ${cell(torch.compile_fwd_bwd)} | ${ratio(torch.matmul_3, fwdBwd)} | ${ratio(torch.eager_fwd_bwd, fwdBwd)} | ${ratio(torch.compile_fwd_bwd, fwdBwd)} |`,
  ];
  if (torch.error) lines.push('', `PyTorch side unavailable: ${torch.error}`);
  return lines.join('\n');
}

function memoryRows() {
  const [N, H, V] = MEM_SHAPE;
  const fused = runChild('fused', MEM_SHAPE);
  const mat = runChild('materialise', MEM_SHAPE);
  const torch = runTorch(['--mode', 'memory', '--threads', String(THREADS), '--n', String(N), '--h', String(H), '--v', String(V)]);
  const mb = (x) => (typeof x === 'number' ? x.toFixed(0) : 'n/a');
  const ratio = (x) => (typeof x === 'number' && typeof fused.extraMB === 'number' ? `${(x / Math.max(fused.extraMB, 1)).toFixed(0)}x` : 'n/a');
  const logitsMB = (N * V * 4) / 2 ** 20;
  return [
    `Peak extra resident memory (VmHWM beyond the inputs, outputs subtracted for rlkernels), forward + backward once, N = ${N}, H = ${H}, V = ${V}, float32. ` +
      `The fused path's extra memory is one chunk (${V} x chunk fp32 logits plus small per-row arrays) whatever N; the materialising paths hold ` +
      `the [N, V] logits (${logitsMB.toFixed(0)} MB here) and their gradient, growing linearly with N (at N = 32768, H = 4096: ~${((32768 * 151936 * 8) / 2 ** 30).toFixed(0)} GB).`,
    '',
    '| path | peak extra (MB) | fused uses less by |',
    '|---|---:|---:|',
    `| rlkernels linearLogprobs + backward (fused) | ${mb(fused.extraMB)} | |`,
    `| rlkernels tokenLogprobs + backward on materialised logits | ${mb(mat.extraMB)} | ${ratio(mat.extraMB)} |`,
    `| PyTorch eager autograd (log_softmax of h @ W.T) | ${mb(torch.peakExtraMB)} | ${ratio(torch.peakExtraMB)} |`,
    ...[fused, mat, torch].filter((x) => x.error).map((x) => `\nunavailable: ${x.error}`),
  ].join('\n');
}

if (process.argv[2] === '--child') {
  memoryChild(process.argv[3], ...process.argv.slice(4).map(Number));
} else {
  console.log(`## Fused linear log-probs (CPU)\n`);
  console.log(`Machine: ${cpus()[0]?.model ?? 'unknown'} (${rlk.buildInfo().cpu.simd} path), ${THREADS} threads on both sides; ${new Date().toISOString().slice(0, 10)}; ` +
    `command: node bench/linear_logprobs.bench.mjs${QUICK ? ' (RLK_BENCH_QUICK=1)' : ''}.\n`);
  console.log(timeRows());
  console.log('');
  console.log(memoryRows());
  console.log(`\nLoad average at the end: ${loadavg().map((x) => x.toFixed(1)).join(' / ')} (a shared 2-core machine: both sides' times vary run to run).`);
}
