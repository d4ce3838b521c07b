// One GRPO step's loss side, end to end, on the GPU when one is usable and
// on the CPU otherwise: group advantages from rewards, token log-probs and
// entropy from bf16 logits, the clipped objective with a k3 KL term and an
// entropy bonus, and the logits' gradient. Run: `npm run demo`.
import * as rlk from '../dist/index.js';

const info = rlk.buildInfo();
const device = info.cuda.available ? 'cuda' : 'cpu';
console.log(`rlkernels ${info.version}: ${info.binary}`);
console.log(`  CPU: ${info.cpu.simd}, ${info.cpu.threads} threads`);
console.log(`  CUDA: ${info.cuda.compiled ? `compiled (${info.cuda.archs}, runtime ${info.cuda.runtimeVersion})` : 'not compiled'}; ` +
  (info.cuda.available ? `devices: ${info.cuda.devices.join(', ')}` : `unavailable: ${info.cuda.reason}`));
console.log(`  running on ${device}\n`);

// A toy batch: 4 prompts x 4 samples, 64 response tokens each, vocabulary 32003.
const groups = 4, groupSize = 4, B = groups * groupSize, T = 64, V = 32003;
let seed = 1;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const randn = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());

await rlk.scope(async () => {
  const rewards = rlk.tensor(Array.from({ length: B }, () => (rand() < 0.5 ? 1 : 0)), { dtype: 'float32', device });
  const { advantages, informative } = rlk.groupAdvantages(rewards, { groupSize, method: 'grpo' });
  console.log('advantages   ', Array.from(await advantages.toArray(), (x) => +x.toFixed(3)).join(' '));
  console.log('informative  ', Array.from(await informative.toArray()).join(' '), '(groups whose rewards differ)');

  const logitsData = new Float32Array(B * T * V);
  for (let i = 0; i < logitsData.length; i++) logitsData[i] = 2 * randn();
  const logits = rlk.tensor(logitsData, { shape: [B, T, V], dtype: 'bfloat16', device });
  const targets = rlk.tensor(Int32Array.from({ length: B * T }, () => Math.floor(rand() * V)), { shape: [B, T], device });
  const mask = rlk.tensor(Uint8Array.from({ length: B * T }, (_, i) => (i % T < T - (i % 7) ? 1 : 0)), { shape: [B, T], device });

  const t0 = performance.now();
  const { logprobs, entropy, stats } = rlk.tokenLogprobs(logits, targets, { temperature: 0.7, entropy: true, saveForBackward: true });
  // Stand-ins for the rollout's and the reference model's log-probs.
  const lp = await logprobs.toArray();
  const old = rlk.tensor(lp.map((x) => x + 0.05 * randn()), { shape: [B, T], device });
  const ref = rlk.tensor(lp.map((x) => x + 0.1 * randn()), { shape: [B, T], device });

  const pl = rlk.policyLoss(
    { logprobs, oldLogprobs: old, advantages, mask },
    { clipLow: 0.2, clipHigh: 0.28, dualClip: 3, kl: { refLogprobs: ref, estimator: 'k3', coef: 0.001 }, entropy: { values: entropy, coef: 0.001 } },
  );
  const dLogits = rlk.tokenLogprobsBackward(logits, targets, pl.grad, { temperature: 0.7, gradEntropy: pl.gradEntropy, stats, inPlace: true });
  const loss = await pl.loss.item();
  const ms = performance.now() - t0;
  console.log(`\nloss          ${loss.toFixed(6)}`);
  console.log('stats        ', await pl.readStats());
  console.log(`dLogits       ${dLogits.dtype} [${dLogits.shape.join(', ')}] (written over the logits: ${dLogits === logits || 'a view of them'})`);
  console.log(`time          ${ms.toFixed(1)} ms for ${B * T} tokens x ${V} vocabulary (log-probs, entropy, loss, gradient)`);
  console.log('memory       ', rlk.memory());
});
console.log('after scope  ', rlk.memory());
