// One GRPO step of a linear LM head, the same code on one process (the whole
// batch) and on each data-parallel rank (its samples): tests and bench use it.
import { GRPO } from './data.mjs';

function pick(src, samples, width) {
  const out = new src.constructor(samples.length * width);
  samples.forEach((s, k) => out.set(src.subarray(s * width, (s + 1) * width), k * width));
  return out;
}

/**
 * torch: the rlkernels/torch module; batch: grpoBatch(); samples: this process's sample indices;
 * dist: use torch.distributed (cross-rank advantages, global counts, gradient all-reduce).
 * Returns plain arrays: { advantages, loss, grad (of the weight), logprobs }.
 */
export async function grpoStep(torch, batch, samples, { dist = false, aggregation = 'token-mean', broadcastWeight = false } = {}) {
  const { T, H, V } = GRPO;
  const n = samples.length;
  const D = torch.distributed;
  const init = broadcastWeight && D.rank() !== 0 ? new Float32Array(V * H) : batch.weight;
  const weight = torch.tensor(init, { shape: [V, H], requiresGrad: true });
  if (broadcastWeight) await D.broadcast(weight, { src: 0 });
  const hidden = torch.tensor(pick(batch.hidden, samples, T * H), { shape: [n * T, H] });
  const targets = torch.tensor(pick(batch.targets, samples, T), { shape: [n * T], dtype: 'int64' });
  const mask = torch.tensor(pick(batch.mask, samples, T), { shape: [n, T], dtype: 'uint8' });
  const rewards = torch.tensor(pick(batch.rewards, samples, 1), { shape: [n] });
  const groupIds = torch.tensor(pick(batch.groupIds, samples, 1), { shape: [n], dtype: 'int32' });
  const wt = torch.aten('t', weight);
  const logits = torch.aten('mm', hidden, wt);
  const { logprobs: flat } = torch.tokenLogprobs(logits, targets);
  const logprobs = flat.reshape([n, T]);
  const shift = torch.tensor(pick(batch.shift, samples, T), { shape: [n, T] });
  const old = torch.noGrad(() => torch.aten('add.Tensor', logprobs.detach(), shift));
  const advOpts = { groupIds, numGroups: batch.numGroups, method: 'grpo' };
  const { advantages } = dist ? await D.groupAdvantages(rewards, advOpts) : torch.groupAdvantages(rewards, advOpts);
  const inputs = { logprobs, oldLogprobs: old, advantages, mask };
  const opts = { clipLow: 0.2, clipHigh: 0.28, aggregation };
  const pl = dist ? await D.policyLoss(inputs, opts) : torch.policyLoss(inputs, opts);
  pl.loss.backward();
  if (dist) await D.allReduceGradients([weight]);
  const out = {
    advantages: Array.from(advantages.toArraySync()),
    loss: pl.loss.itemSync(),
    grad: Array.from(weight.grad.toArraySync()),
    logprobs: Array.from(logprobs.toArraySync()),
  };
  for (const t of [weight, hidden, targets, mask, rewards, groupIds, wt, logits, flat, logprobs, shift, old, advantages, pl.loss, pl.grad]) t.dispose();
  return out;
}
