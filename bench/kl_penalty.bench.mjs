// klPenalty (k3, value and gradient) on the CPU beside PyTorch eager and
// torch.compile of verl's formula (bench/torch_kl_penalty.py), same thread
// count; and the per-call overhead of a small op: 16 elements, two outputs
// created and disposed, timed over many calls (microseconds per call).
// Speaks the harness protocol (bench/common.mjs).
//   node bench/kl_penalty.bench.mjs [--quick | --tiny] [--threads N] [--no-compile] [--json]
import * as rlk from '../dist/index.js';
import { benchConfig, emitResults, progress, progressTotal, randomFloats, timeMedian, torchCompare } from './common.mjs';

const cfg = benchConfig();
rlk.setNumThreads(cfg.threads);
const SIZES = cfg.tiny ? [4096] : cfg.quick ? [1 << 21] : [1 << 21, 1 << 24];
const SMALL = 16;
// Calls per timed sample of the overhead row: 2000 in quick runs (PyTorch eager and compile
// take 1.5-2.6 s per 20000, which was half a quick run's time).
const REPS = cfg.quick ? 2000 : 20000;

const cases = SIZES.map((n) => ({ name: `k3|${n}`, n, op: 'forward+backward' }));
cases.push({ name: `k3|${SMALL}`, n: SMALL, op: 'forward+backward', reps: REPS });
progressTotal(cases.length * (1 + cfg.modes.length));

const rows = [];
for (const n of SIZES) {
  const lp = rlk.tensor(randomFloats(n, 3, 1).map((v) => -Math.abs(v)));
  const ref = rlk.tensor(randomFloats(n, 4, 1).map((v) => -Math.abs(v)));
  const ms = await timeMedian(() => {
    const r = rlk.klPenalty(lp, ref, { estimator: 'k3' });
    r.values.dispose();
    r.grad.dispose();
  }, { iters: cfg.iters, warmup: 1 });
  rows.push({ op: 'k3 value + gradient', shape: `[${n}]`, dtype: 'float32', ms, key: `k3|${n}` });
  progress(`kl_penalty k3 [${n}]`);
  lp.dispose();
  ref.dispose();
}
{
  const lp = rlk.tensor(new Float32Array(SMALL).fill(-1));
  const ref = rlk.tensor(new Float32Array(SMALL).fill(-1.2));
  const opts = { estimator: 'k3' };
  const ms = await timeMedian(() => {
    for (let i = 0; i < REPS; i++) {
      const r = rlk.klPenalty(lp, ref, opts);
      r.values.dispose();
      r.grad.dispose();
    }
  }, { iters: cfg.iters, warmup: 2 });
  rows.push({ op: `per-call overhead (${REPS} calls)`, shape: `[${SMALL}]`, dtype: 'float32', ms, key: `k3|${SMALL}`, note: `${((ms * 1000) / REPS).toFixed(2)} us per call` });
  progress('kl_penalty overhead');
}
const torch = torchCompare('torch_kl_penalty.py', cases, cfg);
for (const r of rows) {
  const x = torch.results[r.key] ?? {};
  if (torch.errors?.[`${r.key}:compile`]) r.compileError = torch.errors[`${r.key}:compile`];
  r.eager = x.eager;
  r.compile = x.compile;
  delete r.key;
}
emitResults('kl_penalty', rows, { isa: rlk.buildInfo().cpu.simd, threads: cfg.threads, torch: torch.torch, note: `PyTorch: ${torch.note}` });
