// policyLoss on the CPU: each mode's whole GRPO objective (the mode's surrogate with its default
// aggregation, a k3 KL term with a coefficient, gradient and stats) beside PyTorch eager + autograd
// and torch.compile of the same formulas (bench/torch_policy_loss.py), same thread count, one run.
// Usage: node bench/policy_loss.bench.mjs [--threads=N] [--quick] [--modes=a,b] [--json] [--no-compile]
//   (after npm run build; python: RLK_BENCH_PYTHON, else .venv/bin/python, else /usr/bin/python3)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import * as rlk from '../dist/index.js';
import { BENCH_DIR, policyLossData } from './common.mjs';

const arg = (name) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const flag = (name) => process.argv.includes(`--${name}`);
const THREADS = Number(arg('threads') ?? 2);
const QUICK = flag('quick');
const ALL_MODES = ['vanilla', 'gspo', 'sapo', 'gpg', 'cispo', 'geo-mean', 'dppo-tv', 'dppo-kl', 'dro', 'clip-cov', 'kl-cov', 'reinforce', 'luspo', 'vespo'];
// Quick runs: five modes (a token-level clip, a sequence-level one, cispo's detached weights, a
// divergence-based trust region, a covariance selection) at 64 x 8192, since compiling all
// fourteen took a minute; at 16 x 4096 the call's fixed cost (~0.1 ms) was most of it.
const QUICK_MODES = ['vanilla', 'gspo', 'cispo', 'dppo-kl', 'kl-cov'];
const MODES = arg('modes') ? arg('modes').split(',') : QUICK ? QUICK_MODES : ALL_MODES;
const SHAPES = QUICK ? [[64, 8192]] : [[64, 32768], [512, 8192]];
const ITERS = QUICK ? 20 : 10;  // quick calls take ~0.5 ms: more of them steady the median at no real cost
const PYTHON = process.env.RLK_BENCH_PYTHON || [join(BENCH_DIR, '..', '.venv', 'bin', 'python'), '/usr/bin/python3'].find((p) => existsSync(p));
rlk.setNumThreads(THREADS);

function inputs(B, T) {
  const { logp, old, ref, adv, mask, shape } = policyLossData(B, T);
  return {
    logprobs: rlk.tensor(logp, { shape }),
    oldLogprobs: rlk.tensor(old, { shape }),
    advantages: rlk.tensor(adv, { shape }),
    mask: rlk.tensor(mask, { shape, dtype: 'uint8' }),
    refLogprobs: rlk.tensor(ref, { shape }),
  };
}

// The Python side's constants (torch_policy_loss.py): clip 0.2 / 0.28, dual clip 3, dro beta 0.1.
const modeOptions = (mode) => ({ mode, clipLow: 0.2, clipHigh: 0.28, beta: 0.1, ...(mode === 'vanilla' ? { dualClip: 3 } : {}) });

const bench = new Bench({ iterations: ITERS, time: 0, warmupIterations: 2, warmupTime: 0 });
const data = SHAPES.map(([B, T]) => [B, T, inputs(B, T)]);
for (const mode of MODES) {
  for (const [B, T, x] of data) {
    bench.add(`${mode}|${B} x ${T}`, async () => {
      const out = rlk.policyLoss(
        { logprobs: x.logprobs, oldLogprobs: x.oldLogprobs, advantages: x.advantages, mask: x.mask },
        { ...modeOptions(mode), kl: { refLogprobs: x.refLogprobs, estimator: 'k3', coef: 0.001 } },
      );
      await out.loss.item();
      await out.readStats();
      out.loss.dispose();
      out.grad.dispose();
    });
  }
}
await bench.run();

let torch = {};
let torchNote = '';
if (!PYTHON) {
  torchNote = 'no python with torch found (set RLK_BENCH_PYTHON)';
} else {
  const pyArgs = [join(BENCH_DIR, 'torch_policy_loss.py'), String(THREADS), String(ITERS), JSON.stringify(SHAPES), MODES.join(',')];
  if (flag('no-compile')) pyArgs.push('--no-compile');
  const r = spawnSync(PYTHON, pyArgs, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status === 0) torch = JSON.parse(r.stdout.trim().split('\n').pop());
  else torchNote = `PyTorch comparison failed: ${(r.stderr || '').trim().split('\n').pop()}`;
}
const version = PYTHON ? spawnSync(PYTHON, ['-c', 'import torch;print(torch.__version__)'], { encoding: 'utf8' }).stdout.trim() : '';

// Bytes moved per token: logp, old, adv, ref read (4 B each), mask (1 B), grad written (4 B).
const gb = (B, T) => (B * T * (4 * 4 + 1 + 4)) / 1e9;
const rows = [];
for (const task of bench.tasks) {
  const [mode, shape] = task.name.split('|');
  const [B, T] = shape.split(' x ').map(Number);
  const ms = task.result.latency.p50;
  const t = torch[mode]?.[shape] ?? {};
  rows.push({ mode, shape, ms, gbps: gb(B, T) / (ms / 1000), eager: t.eager, compile: t.compile, compileError: t.compile_error });
}
if (flag('json')) {
  console.log(JSON.stringify({ threads: THREADS, isa: rlk.buildInfo().cpu.simd, python: PYTHON, torch: version, note: torchNote, rows }));
} else {
  const isa = rlk.buildInfo().cpu.simd;
  const lanesNote = isa === 'baseline' ? 'scalar token pass' : isa === 'avx512' ? 'token pass on 16 float lanes (AVX-512)' : 'token pass on 8 float lanes (AVX2)';
  console.log(`\npolicyLoss whole objective, CPU fp32, ${THREADS} threads (ISA path ${isa}: ${lanesNote}); median of ${ITERS} runs; forward + gradient + stats`);
  console.log(`PyTorch ${version || 'n/a'} (${PYTHON ?? 'none'}), same thread count${torchNote ? '; ' + torchNote : ''}\n`);
  console.log('| mode | B x T | rlkernels (ms) | GB/s | eager (ms) | compile (ms) | vs eager | vs compile |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|');
  const f = (v, d = 2) => (v === undefined ? 'n/a' : v.toFixed(d));
  for (const r of rows) {
    const ve = r.eager ? `${(r.eager / r.ms).toFixed(1)}x` : 'n/a';
    const vc = r.compile ? `${(r.compile / r.ms).toFixed(2)}x` : r.compileError ? 'error' : 'n/a';
    console.log(`| ${r.mode} | ${r.shape} | ${f(r.ms)} | ${f(r.gbps, 1)} | ${f(r.eager, 1)} | ${f(r.compile, 1)} | ${ve} | ${vc} |`);
  }
  const errors = rows.filter((r) => r.compileError);
  if (errors.length) console.log(`\ntorch.compile errors (no time counted): ${errors.map((r) => `${r.mode} ${r.shape}: ${r.compileError}`).join('; ')}`);
}
