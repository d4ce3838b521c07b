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

// The values-only KLs of close distributions (the teacher is the student plus
// N(0, 0.3^2) noise, KL ~ 0.05): on the CPU these rows take the two-pass
// cancellation-free form, the rows above (independent logits) the one-pass
// direct form (README, "Performance"). Full runs only.
const CLOSE = cfg.tiny || cfg.quick ? [] : [{ kind: 'forward-kl' }, { kind: 'reverse-kl' }].map((k) => ({ ...k, N: 1024, V: 32000 }));

const cases = [];
for (const [N, V] of SHAPES) for (const k of KINDS) for (const op of OPS) cases.push({ name: `${k.kind}|${op}|${N}x${V}`, rows: N, vocab: V, ...k, temperature: 1, op });
for (const c of CLOSE) cases.push({ name: `${c.kind}|forward|${c.N}x${c.V}|close`, rows: c.N, vocab: c.V, kind: c.kind, temperature: 1, op: 'forward', close: 0.3 });
progressTotal(SHAPES.length * KINDS.length + CLOSE.length + (cases.length * cfg.modes.length));

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
for (const c of CLOSE) {
  const shape = [c.N, c.V];
  const sv = randomFloats(c.N * c.V, 1);
  const s = rlk.tensor(sv, { shape });
  const t = rlk.tensor(randomFloats(c.N * c.V, 2, 0.3).map((x, i) => x + sv[i]), { shape });
  const ms = await timeMedian(() => rlk.vocabDivergence(s, t, { kind: c.kind, grad: false }).values.dispose(), { iters: cfg.iters, warmup: 1 });
  rows.push({ op: `${c.kind} forward, close rows`, shape: `[${c.N}, ${c.V}]`, dtype: 'float32', ms, key: `${c.kind}|forward|${c.N}x${c.V}|close`,
    note: 'values alone; teacher = student + N(0, 0.3^2): the two-pass form' });
  progress(`vocab_divergence ${c.kind} close [${c.N}, ${c.V}]`);
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
