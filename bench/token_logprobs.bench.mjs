// Token log-probs (and entropy) on the CPU beside PyTorch eager and
// torch.compile of the same formulas (bench/torch_token_logprobs.py), same
// thread count, T = 0.7. Speaks the harness protocol (bench/common.mjs);
// run alone it prints its table.
//   node bench/token_logprobs.bench.mjs [--quick | --tiny] [--threads N] [--no-compile] [--json]
import * as rlk from '../dist/index.js';
import { benchConfig, emitResults, progress, progressTotal, randomFloats, timeMedian, torchCompare } from './common.mjs';

const cfg = benchConfig();
const T = 0.7;
const SHAPES = cfg.tiny ? [[64, 512, 'float32']] : cfg.quick ? [[1024, 32000, 'float32']] : [[4096, 32000, 'float32'], [512, 151936, 'float32'], [4096, 32000, 'bfloat16']];
const OPS = ['forward', 'forward+entropy', 'forward+backward'];
rlk.setNumThreads(cfg.threads);

const cases = [];
for (const [N, V, dtype] of SHAPES) for (const op of OPS) cases.push({ name: `${op}|${N}x${V}|${dtype}`, rows: N, vocab: V, dtype, op, temperature: T });
progressTotal(cases.length * (1 + cfg.modes.length));

const rows = [];
for (const [N, V, dtype] of SHAPES) {
  const logits = rlk.tensor(randomFloats(N * V), { shape: [N, V], dtype });
  const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
  const grad = rlk.full([N], 1);
  const run = {
    forward: () => rlk.tokenLogprobs(logits, targets, { temperature: T }).logprobs.dispose(),
    'forward+entropy': () => {
      const r = rlk.tokenLogprobs(logits, targets, { temperature: T, entropy: true });
      r.logprobs.dispose();
      r.entropy.dispose();
    },
    // What a trainer runs: the forward saving its statistics, then the gradient of the logits.
    'forward+backward': () => {
      const r = rlk.tokenLogprobs(logits, targets, { temperature: T, saveForBackward: true });
      rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: T, stats: r.stats }).dispose();
      r.logprobs.dispose();
      r.stats.dispose();
    },
  };
  for (const op of OPS) {
    const ms = await timeMedian(run[op], { iters: cfg.iters, warmup: 1 });
    rows.push({ op, shape: `[${N}, ${V}]`, dtype, ms, key: `${op}|${N}x${V}|${dtype}` });
    progress(`token_logprobs ${op} [${N}, ${V}] ${dtype}`);
  }
  logits.dispose();
  targets.dispose();
  grad.dispose();
}

const torch = torchCompare('torch_token_logprobs.py', cases, cfg);
for (const r of rows) {
  const t = torch.results[r.key] ?? {};
  if (torch.errors?.[`${r.key}:compile`]) r.compileError = torch.errors[`${r.key}:compile`];
  r.eager = t.eager;
  r.compile = t.compile;
  delete r.key;
}
emitResults('token_logprobs', rows, { isa: rlk.buildInfo().cpu.simd, threads: cfg.threads, temperature: T, torch: torch.torch, note: `T = ${T}; PyTorch: ${torch.note}` });
