// Time per call of one op over back-to-back calls (outputs disposed each
// call, as in a training loop): the quick check of a kernel change. Inputs
// as the op's bench script makes them.
// Usage: node bench/op_loop.mjs OP [threads=1] [size] [windows=30]
//        node bench/op_loop.mjs --ab A.node B.node OP [threads=1] [size] [pairs=20]
//   OP: k3 (size: tokens, 2097152), token-forward, token-backward (size: rows x vocab, 512x151936),
//       forward-kl, reverse-kl, jsd (values only; size 256x32000), and
//       forward-kl+grad, reverse-kl+grad, jsd+grad (value and student gradient),
//       any of these with ~close (teacher = student + N(0, 0.3^2): close distributions),
//       ga-METHOD (groupAdvantages with that method, groups of 16; size: B, 65536),
//       ga-hash (grpo over int64 hash ids, groups of 16 scattered; size: B, 65536)
// --ab loads two builds into one process and alternates 100 ms windows of
// each, A then B, reporting the median of the per-pair ratios B / A: this
// VM's slow phases (another tenant on the core; times move 20-50 % from
// minute to minute) then fall on both builds alike, where two processes run
// one after the other could differ by more than the change measured.
// RLK_SIMD picks the ISA path of both.
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomFloats, timeWindows } from './common.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function makeOp(rlk, op, size) {
  const dims = (dflt) => (size ?? dflt).split('x').map(Number);
  if (op === 'k3') {
    const [n] = dims('2097152');
    const lp = rlk.tensor(randomFloats(n, 3, 1).map((v) => -Math.abs(v)));
    const ref = rlk.tensor(randomFloats(n, 4, 1).map((v) => -Math.abs(v)));
    return () => {
      const r = rlk.klPenalty(lp, ref, { estimator: 'k3' });
      r.values.dispose();
      r.grad.dispose();
    };
  }
  if (op === 'token-forward') {
    const [N, V] = dims('512x151936');
    const logits = rlk.tensor(randomFloats(N * V), { shape: [N, V] });
    const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
    return () => rlk.tokenLogprobs(logits, targets, { temperature: 0.7 }).logprobs.dispose();  // the bench's T
  }
  if (op === 'token-backward') {
    // The gradient of the logits alone, from statistics saved once (the
    // bench's forward+backward minus its forward).
    const [N, V] = dims('512x151936');
    const logits = rlk.tensor(randomFloats(N * V), { shape: [N, V] });
    const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
    const grad = rlk.full([N], 1);
    const { logprobs, stats } = rlk.tokenLogprobs(logits, targets, { temperature: 0.7, saveForBackward: true });
    logprobs.dispose();
    return () => rlk.tokenLogprobsBackward(logits, targets, grad, { temperature: 0.7, stats }).dispose();
  }
  if (/^(forward-kl|reverse-kl|jsd)(\+grad)?(~close)?$/.test(op)) {
    // ~close: the teacher is the student plus N(0, 0.3^2) noise (KL ~ 0.05:
    // the values-only KLs' two-pass form) instead of independent logits.
    const [N, V] = dims('256x32000');
    const sv = randomFloats(N * V, 1);
    const tv = op.endsWith('~close') ? randomFloats(N * V, 2, 0.3).map((x, i) => x + sv[i]) : randomFloats(N * V, 2);
    const s = rlk.tensor(sv, { shape: [N, V] });
    const t = rlk.tensor(tv, { shape: [N, V] });
    const base = op.replace('~close', '');
    const [kind, grad] = [base.replace('+grad', ''), base.endsWith('+grad')];
    return () => {
      const r = rlk.vocabDivergence(s, t, { kind, grad });
      r.values.dispose();
      r.gradStudent?.dispose();
    };
  }
  if (op === 'ga-hash') {
    // grpo over int64 hash ids, groups of 16 scattered over the batch, rewards at random about
    // their group's mean (the bench's "grpo hash ids" case).
    const [B] = dims('65536');
    const G = B / 16;
    let seed = 1;
    const next = () => (seed = (seed * 48271) % 2147483647) / 2147483647;
    const rewards = rlk.tensor(Float32Array.from({ length: B }, next));
    const labels = Array.from({ length: G }, () => BigInt(Math.floor(next() * 2 ** 31)) * 0x100000001n);
    const groupIds = rlk.tensor(BigInt64Array.from({ length: B }, (_, i) => labels[(i * 7919) % G]));
    return () => {
      const r = rlk.groupAdvantages(rewards, { groupIds, method: 'grpo' });
      r.advantages.dispose();
      r.informative.dispose();
    };
  }
  if (op.startsWith('ga-')) {
    // groupAdvantages, groups of 16 (the inputs of RESULTS.md's group advantage loops).
    const [B] = dims('65536');
    const method = op.slice(3);
    const rewards = rlk.tensor(Float32Array.from({ length: B }, (_, i) => (i % 3 === 0 ? 1 : 0) + 0.01 * (i % 7)));
    const tokenCounts = rlk.tensor(Int32Array.from({ length: B }, (_, i) => i % 512));
    const baselineRewards = rlk.tensor(Float32Array.from({ length: B }, (_, i) => 0.5 + 0.01 * (i % 5)));
    const opts = {
      groupSize: 16,
      method,
      ...(method === 'opo' || method === 'reinforce++' ? { tokenCounts } : {}),
      ...(method === 'remax' ? { baselineRewards } : {}),
    };
    return () => {
      const r = rlk.groupAdvantages(rewards, opts);
      r.advantages.dispose();
      r.informative.dispose();
    };
  }
  throw new Error(`op_loop: unknown op ${op} (k3, token-forward, forward-kl, reverse-kl, jsd, each divergence with +grad, ga-METHOD)`);
}

// A private copy of the package's dist per build: the loader reads
// RLK_NATIVE_PATH when its module is first evaluated.
async function loadBuild(path) {
  const dir = mkdtempSync(join(tmpdir(), 'rlk-ab-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'dist'));
  cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  process.env.RLK_NATIVE_PATH = resolve(path);
  return import(join(dir, 'dist', 'index.js'));
}

const args = process.argv.slice(2);
const simd = process.env.RLK_SIMD ? ` RLK_SIMD=${process.env.RLK_SIMD}` : '';
if (args[0] === '--ab') {
  const [, a, b, op, threads = '1', size, pairs = '20'] = args;
  const fns = [];
  for (const path of [a, b]) {
    const rlk = await loadBuild(path);
    rlk.setNumThreads(Number(threads));
    fns.push(makeOp(rlk, op, size));
  }
  const window = (fn) => {
    const t0 = performance.now();
    let calls = 0;
    while (performance.now() - t0 < 100) {
      fn();
      calls++;
    }
    return ((performance.now() - t0) / calls) * 1000;
  };
  fns.forEach(window);  // warm both (scratch buffers, pages)
  const ta = [], tb = [], ratio = [];
  for (let p = 0; p < Number(pairs); p++) {
    ta.push(window(fns[0]));
    tb.push(window(fns[1]));
    ratio.push(tb[p] / ta[p]);
  }
  const med = (v) => [...v].sort((x, y) => x - y)[Math.floor((v.length - 1) / 2)];
  console.log(
    `${op}${size ? ` ${size}` : ''} threads=${threads}${simd}: A min ${Math.min(...ta).toFixed(0)} median ${med(ta).toFixed(0)} us, ` +
      `B min ${Math.min(...tb).toFixed(0)} median ${med(tb).toFixed(0)} us; B / A median of ${pairs} pairs ${med(ratio).toFixed(3)}`,
  );
} else {
  const [op, threads = '1', size, windows = '30'] = args;
  const rlk = await import('../dist/index.js');
  rlk.setNumThreads(Number(threads));
  console.log(`${op}${size ? ` ${size}` : ''} threads=${threads}${simd}: ${timeWindows(makeOp(rlk, op, size), Number(windows))}`);
}
