// Time per call of one op over back-to-back calls (outputs disposed each
// call, as in a training loop): the quick A/B check of a kernel change, run
// alternately against another build with RLK_NATIVE_PATH (or another ISA
// path with RLK_SIMD). Inputs as the op's bench script makes them.
// Usage: node bench/op_loop.mjs OP [threads=1] [size] [windows=30]
//   OP: k3 (size: tokens, 2097152), token-forward (size: rows x vocab, 512x151936),
//       forward-kl, reverse-kl (values only; size 256x32000)
import * as rlk from '../dist/index.js';
import { randomFloats, timeWindows } from './common.mjs';

const [op, threads = '1', size, windows = '30'] = process.argv.slice(2);
rlk.setNumThreads(Number(threads));
const dims = (dflt) => (size ?? dflt).split('x').map(Number);
let fn;
if (op === 'k3') {
  const [n] = dims('2097152');
  const lp = rlk.tensor(randomFloats(n, 3, 1).map((v) => -Math.abs(v)));
  const ref = rlk.tensor(randomFloats(n, 4, 1).map((v) => -Math.abs(v)));
  fn = () => {
    const r = rlk.klPenalty(lp, ref, { estimator: 'k3' });
    r.values.dispose();
    r.grad.dispose();
  };
} else if (op === 'token-forward') {
  const [N, V] = dims('512x151936');
  const logits = rlk.tensor(randomFloats(N * V), { shape: [N, V] });
  const targets = rlk.tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
  fn = () => rlk.tokenLogprobs(logits, targets, { temperature: 0.7 }).logprobs.dispose();  // the bench's T
} else if (op === 'forward-kl' || op === 'reverse-kl') {
  const [N, V] = dims('256x32000');
  const s = rlk.tensor(randomFloats(N * V, 1), { shape: [N, V] });
  const t = rlk.tensor(randomFloats(N * V, 2), { shape: [N, V] });
  fn = () => rlk.vocabDivergence(s, t, { kind: op, grad: false }).values.dispose();
} else {
  throw new Error(`op_loop: unknown op ${op} (k3, token-forward, forward-kl, reverse-kl)`);
}
console.log(`${op}${size ? ` ${size}` : ''} threads=${threads}${process.env.RLK_SIMD ? ` RLK_SIMD=${process.env.RLK_SIMD}` : ''}: ${timeWindows(fn, Number(windows))}`);
