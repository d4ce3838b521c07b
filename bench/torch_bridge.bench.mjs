// The libtorch bridge: what the autograd functions of rlkernels/torch add per
// call over the core call on the same tensors (goal: under 10 us), and the
// grpo-keychain example's tokens/s. Small tensors, so the kernel itself is
// negligible and the difference is the bridge (handles, DLPack views, the
// autograd node). Prints a markdown table. Skips (exit 0) without the bridge.
//   node bench/torch_bridge.bench.mjs [--quick] [--no-example]
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as rlk from '../dist/index.js';
import * as torch from '../dist/torch.js';
import { BENCH_DIR, normal, rng } from './common.mjs';

const quick = process.argv.includes('--quick');
const example = !process.argv.includes('--no-example');
const status = torch.bridgeStatus();
if (!status.loadable) {
  console.log(`libtorch bridge not available: ${status.problem}`);
  process.exit(0);
}
const info = torch.load();
rlk.setNumThreads(1);
torch.setNumThreads(1);

/**
 * Microseconds per call: the fastest of `reps` batches of `n` calls (as Python's timeit advises: on a
 * shared machine the slower batches measure the other processes, not the call).
 */
function time(fn, n = quick ? 200 : 1000, reps = quick ? 15 : 30) {
  for (let i = 0; i < Math.min(n, 100); i++) fn();
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn();
    best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e3 / n);
  }
  return best;
}

const r = rng(1);
const R = 8, V = 64, B = 4, T = 8;
const logits = Float32Array.from({ length: R * V }, () => normal(r));
const tg = Int32Array.from({ length: R }, () => Math.floor(r() * V));
const lp0 = Float32Array.from({ length: B * T }, () => -Math.abs(normal(r)));
const adv0 = Float32Array.from({ length: B }, () => normal(r));

const cl = rlk.tensor(logits, { shape: [R, V] });
const ct = rlk.tensor(tg);
const tl = torch.tensor(logits, { shape: [R, V] });
const tt = torch.tensor(tg);
const tlg = torch.tensor(logits, { shape: [R, V], requiresGrad: true });
const clp = rlk.tensor(lp0, { shape: [B, T] });
const cadv = rlk.tensor(adv0);
const tlp = torch.tensor(lp0, { shape: [B, T], requiresGrad: true });
const told = torch.tensor(lp0, { shape: [B, T] });
const tadv = torch.tensor(adv0);
const ones = rlk.tensor(new Float32Array(R).fill(1));
const tones = torch.tensor(new Float32Array(R).fill(1));

const rows = [];
const row = (what, core, bridge) => rows.push({ what, core, bridge, over: bridge - core });

row('tokenLogprobs forward [8, 64]',
  time(() => rlk.scope(() => rlk.tokenLogprobs(cl, ct))),
  time(() => torch.scope(() => torch.noGrad(() => torch.tokenLogprobs(tl, tt)))));
row('tokenLogprobs forward, logits require grad (autograd node)',
  time(() => rlk.scope(() => rlk.tokenLogprobs(cl, ct, { saveForBackward: true }))),
  time(() => torch.scope(() => torch.tokenLogprobs(tlg, tt))));
row('tokenLogprobs forward + backward',
  time(() => rlk.scope(() => {
    const f = rlk.tokenLogprobs(cl, ct, { saveForBackward: true });
    return void rlk.tokenLogprobsBackward(cl, ct, ones, { stats: f.stats });
  }), quick ? 100 : 1000),
  time(() => torch.scope(() => {
    torch.tokenLogprobs(tlg, tt).logprobs.backward(tones);
    tlg.zeroGrad();
  }), quick ? 100 : 1000));
row('policyLoss [4, 8] forward (grad attached)',
  time(() => rlk.scope(() => void rlk.policyLoss({ logprobs: clp, oldLogprobs: clp, advantages: cadv }))),
  time(() => torch.scope(() => void torch.policyLoss({ logprobs: tlp, oldLogprobs: told, advantages: tadv }))));
row('klPenalty [4, 8] forward (grad attached)',
  time(() => rlk.scope(() => void rlk.klPenalty(clp, clp, { estimator: 'k3' }))),
  time(() => torch.scope(() => void torch.klPenalty(tlp, told, { estimator: 'k3' }))));
const sl = rlk.tensor(logits, { shape: [R, V] });
const tsl = torch.tensor(logits, { shape: [R, V], requiresGrad: true });
const ttl = torch.tensor(logits, { shape: [R, V] });
row('vocabDivergence [8, 64] forward (grad attached)',
  time(() => rlk.scope(() => void rlk.vocabDivergence(sl, cl, { kind: 'forward-kl' }))),
  time(() => torch.scope(() => void torch.vocabDivergence(tsl, ttl, { kind: 'forward-kl' }))));
// linearLogprobs: absent from bridges built before it (the row is then left out).
const H = 16;
const hid = Float32Array.from({ length: R * H }, () => normal(r));
const wgt = Float32Array.from({ length: V * H }, () => normal(r) / 4);
const ch = rlk.tensor(hid, { shape: [R, H] });
const cw = rlk.tensor(wgt, { shape: [V, H] });
const th = torch.tensor(hid, { shape: [R, H], requiresGrad: true });
const tw = torch.tensor(wgt, { shape: [V, H], requiresGrad: true });
let linearOk = true;
try {
  torch.scope(() => torch.linearLogprobs(th, tw, tt));
} catch {
  linearOk = false;
}
if (linearOk) {
  row(`linearLogprobs forward [${R}, ${H}] x [${V}, ${H}] (autograd node)`,
    time(() => rlk.scope(() => void rlk.linearLogprobs(ch, cw, ct, { saveForBackward: true }))),
    time(() => torch.scope(() => void torch.linearLogprobs(th, tw, tt))));
}
row('DLPack: torch.fromCore + toCore (one tensor each way)',
  0,
  time(() => {
    const a = torch.fromCore(cl);
    const b = torch.toCore(tl);
    a.dispose();
    b.dispose();
  }));

console.log(`libtorch bridge overhead, torch ${info.torchVersion}, CPU (rlkernels ISA path: ${rlk.buildInfo().cpu.simd}), 1 thread each side, us per call (fastest batch)`);
console.log('');
console.log('| call | core (us) | bridge (us) | bridge overhead (us) |');
console.log('|---|---:|---:|---:|');
for (const x of rows) console.log(`| ${x.what} | ${x.core.toFixed(2)} | ${x.bridge.toFixed(2)} | ${x.over.toFixed(2)} |`);

// The example's throughput (a short run: tokens through the policy per second of step time).
if (!example) process.exit(0);
const out = mkdtempSync(join(tmpdir(), 'rlk-grpo-bench-'));
const steps = quick ? 5 : 30;
const ex = spawnSync(process.execPath, [join(BENCH_DIR, '..', 'examples', 'grpo-keychain', 'train.mjs'), '--steps', String(steps), '--quiet', '--out', out], { encoding: 'utf8' });
if (ex.status === 0) {
  const s = JSON.parse(ex.stdout.trim().split('\n').pop());
  console.log('');
  console.log(`grpo-keychain (${steps} steps, defaults: 16 prompts x 8 samples, 2 epochs, 1 torch thread): ${s.tokensPerSecond} tokens/s, ${s.seconds} s`);
} else {
  console.log(`grpo-keychain run failed: ${ex.stderr}`);
}
