// vocabDivergence on the CPU beside PyTorch eager and torch.compile of the
// same formulas (bench/torch_vocab_divergence.py), same thread count.
// "forward": the values alone on both sides (rlkernels `grad: false`, PyTorch
// under no_grad); "forward+backward": values + the student gradient (one
// rlkernels call; PyTorch autograd). Speaks the harness protocol
// (bench/common.mjs).
//   node bench/vocab_divergence.bench.mjs [--quick | --tiny] [--threads N] [--no-compile] [--json]
import * as rlk from '../dist/index.js';
import { benchConfig, emitResults, progress, progressTotal, randomFloats, timeMedian, torchCompare } from './common.mjs';

const cfg = benchConfig();
rlk.setNumThreads(cfg.threads);
const SHAPES = cfg.tiny ? [[32, 512]] : cfg.quick ? [[256, 32000]] : [[1024, 32000], [128, 151936]];
const KINDS = cfg.quick ? [{ kind: 'forward-kl' }, { kind: 'jsd', beta: 0.5 }] : [{ kind: 'forward-kl' }, { kind: 'reverse-kl' }, { kind: 'jsd', beta: 0.5 }];
const OPS = ['forward', 'forward+backward'];

const cases = [];
for (const [N, V] of SHAPES) for (const k of KINDS) for (const op of OPS) cases.push({ name: `${k.kind}|${op}|${N}x${V}`, rows: N, vocab: V, ...k, temperature: 1, op });
progressTotal(SHAPES.length * KINDS.length + (cases.length * cfg.modes.length));

const rows = [];
for (const [N, V] of SHAPES) {
  const shape = [N, V];
  const s = rlk.tensor(randomFloats(N * V, 1), { shape });
  const t = rlk.tensor(randomFloats(N * V, 2), { shape });
  for (const k of KINDS) {
    const label = k.kind === 'jsd' ? `jsd beta=${k.beta}` : k.kind;
    for (const op of OPS) {
      const grad = op !== 'forward';
      const ms = await timeMedian(() => {
        const r = rlk.vocabDivergence(s, t, { kind: k.kind, beta: k.beta, grad });
        r.values.dispose();
        if ('gradStudent' in r) r.gradStudent.dispose();
      }, { iters: cfg.iters, warmup: 1 });
      const note = grad ? 'values + student gradient in one call' : 'values alone (grad: false)';
      rows.push({ op: `${label} ${op}`, shape: `[${N}, ${V}]`, dtype: 'float32', ms, key: `${k.kind}|${op}|${N}x${V}`, note });
    }
    progress(`vocab_divergence ${label} [${N}, ${V}]`);
  }
  s.dispose();
  t.dispose();
}
const torch = torchCompare('torch_vocab_divergence.py', cases, cfg);
for (const r of rows) {
  const x = torch.results[r.key] ?? {};
  if (torch.errors?.[`${r.key}:compile`]) r.compileError = torch.errors[`${r.key}:compile`];
  r.eager = x.eager;
  r.compile = x.compile;
  delete r.key;
}
emitResults('vocab_divergence', rows, { isa: rlk.buildInfo().cpu.simd, threads: cfg.threads, torch: torch.torch, note: `T = 1; PyTorch: ${torch.note}` });
