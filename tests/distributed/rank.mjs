// One rank of a test group (tests/torch_distributed.test.ts spawns these):
//   node tests/distributed/rank.mjs '<json: { scenario, rank, worldSize, port, seed, timeoutMs }>'
// Imports the built package (dist/), prints one JSON line of results on
// stdout, exits 0; on any failure prints the error and exits 1.
import * as torch from '../../dist/torch.js';
import { grpoBatch, grpoSamples, linearCases, vocabCases } from './data.mjs';
import { grpoStep } from './grpo_step.mjs';

const cfg = JSON.parse(process.argv[2]);
const D = torch.distributed;
const { rank, worldSize, port, seed } = cfg;
const timeoutMs = cfg.timeoutMs ?? 20_000;

async function collectives() {
  const out = {};
  const x = torch.tensor(new Float32Array([rank + 1, -(rank + 1), 0.5 * rank]));
  await D.allReduce(x);
  out.sum = Array.from(x.toArraySync());
  const y = torch.tensor(new Float64Array([rank, 10 - rank]), { dtype: 'float64' });
  await D.allReduce(y, { op: 'max' });
  out.max = Array.from(y.toArraySync());
  const z = torch.tensor(new Float32Array([rank, 2 * rank]));
  await D.allReduce(z, { op: 'avg' });
  out.avg = Array.from(z.toArraySync());
  const i = torch.tensor(new Int32Array([rank + 1]), { dtype: 'int64' });
  await D.allReduce(i, { op: 'product' });
  out.product = Array.from(i.toArraySync(), Number);
  const g = await D.allGather(torch.tensor(new Float32Array([rank, rank * rank, -rank, 7]), { shape: [2, 2] }));
  out.gatherShape = g.shape;
  out.gather = Array.from(g.toArraySync());
  const b = torch.tensor(new Float32Array([rank === worldSize - 1 ? 42 : -1, rank]));
  await D.broadcast(b, { src: worldSize - 1 });
  out.broadcast = Array.from(b.toArraySync());
  // Collectives issued back to back, awaited together: matched in program order.
  const many = Array.from({ length: 6 }, (_, k) => torch.tensor(new Float32Array([k * (rank + 1)])));
  await Promise.all(many.map((t) => D.allReduce(t)));
  out.many = many.map((t) => t.toArraySync()[0]);
  await D.barrier();
  return out;
}

async function vocab() {
  const res = [];
  for (const c of vocabCases(seed)) {
    const { start, end } = D.vocabShard(c.vocab, rank, worldSize);
    const w = end - start;
    const shardData = new Float32Array(c.rows * w);
    for (let r = 0; r < c.rows; r++) shardData.set(c.logits.subarray(r * c.vocab + start, r * c.vocab + end), r * w);
    const shard = torch.tensor(shardData, { shape: [c.rows, w], requiresGrad: true });
    const targets = torch.tensor(c.targets, { dtype: 'int64' });
    const { logprobs, entropy } = await D.tokenLogprobs(shard, targets, {
      vocabStart: start, vocabSize: c.vocab, temperature: c.temperature, entropy: true,
    });
    // A scalar objective whose gradient is (gradLogprobs, gradEntropy): backward reaches the shard.
    const gl = torch.tensor(c.gradLogprobs);
    const ge = torch.tensor(c.gradEntropy);
    const obj = torch.aten('add.Tensor', torch.aten('dot', logprobs, gl), torch.aten('dot', entropy, ge));
    obj.backward();
    res.push({ start, end, logprobs: Array.from(logprobs.toArraySync()), entropy: Array.from(entropy.toArraySync()), grad: Array.from(shard.grad.toArraySync()) });
  }
  return res;
}

/** The weight-sharded (fused linear) form: this rank's rows of the LM head, the same hidden states on every rank. */
function linearInputs(c) {
  const { start, end } = D.vocabShard(c.vocab, rank, worldSize);
  const hidden = torch.tensor(c.hidden, { shape: [...c.lead, c.dim], requiresGrad: true });
  const weightShard = torch.tensor(c.weight.slice(start * c.dim, end * c.dim), { shape: [end - start, c.dim], requiresGrad: true });
  const bias = c.bias ? torch.tensor(c.bias.slice(start, end), { requiresGrad: true }) : undefined;
  const targets = torch.tensor(c.targets, { shape: c.lead, dtype: 'int64' });
  const temperature = typeof c.temperature === 'number' ? c.temperature : torch.tensor(c.temperature, { shape: c.lead });
  const options = { vocabStart: start, vocabSize: c.vocab, temperature, entropy: c.entropy, ignoreIndex: c.ignoreIndex };
  if (bias) options.bias = bias;
  if (c.chunkSize) options.chunkSize = c.chunkSize;
  return { start, end, hidden, weightShard, bias, targets, options };
}

async function linear() {
  const res = [];
  for (const c of linearCases(seed)) {
    const { start, end, hidden, weightShard, bias, targets, options } = linearInputs(c);
    const { logprobs, entropy } = await D.linearLogprobs(hidden, weightShard, targets, options);
    const lp = logprobs.reshape([c.rows]);
    let obj = torch.aten('dot', lp, torch.tensor(c.gradLogprobs));
    if (c.entropy) obj = torch.aten('add.Tensor', obj, torch.aten('dot', entropy.reshape([c.rows]), torch.tensor(c.gradEntropy)));
    obj.backward();
    res.push({
      start, end,
      logprobs: Array.from(lp.toArraySync()),
      entropy: entropy ? Array.from(entropy.reshape([c.rows]).toArraySync()) : null,
      gradHidden: Array.from(hidden.grad.toArraySync()),
      gradWeight: Array.from(weightShard.grad.toArraySync()),
      gradBias: bias ? Array.from(bias.grad.toArraySync()) : null,
    });
  }
  return res;
}

async function grpo() {
  const batch = grpoBatch(seed);
  const samples = grpoSamples(rank, worldSize);
  const tokenMean = await grpoStep(torch, batch, samples, { dist: true, broadcastWeight: true });
  const seqMean = await grpoStep(torch, batch, samples, { dist: true, aggregation: 'seq-mean-token-mean' });
  return { samples, tokenMean, seqMean };
}

// Writes the result line, then exits without leaving the group.
function exitWith(out) {
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

async function main() {
  const t0 = Date.now();
  let ticks = 0;
  const tick = setInterval(() => ticks++, 20);
  const out = { rank };
  try {
    await D.init({ backend: 'gloo', rank, worldSize, store: { host: '127.0.0.1', port }, timeoutMs });
  } catch (e) {
    clearInterval(tick);
    out.initError = { name: e.name, message: e.message, ms: Date.now() - t0, ticks };
    console.log(JSON.stringify(out));
    return;
  }
  out.initMs = Date.now() - t0;
  out.initTicks = ticks;
  clearInterval(tick);
  if (cfg.scenario === 'all') {
    out.collectives = await collectives();
    out.vocab = await vocab();
    out.grpo = await grpo();
    out.linear = await linear();
  } else if (cfg.scenario === 'linear-silent') {
    // The last rank runs the forward but never its backward: the others' backward all-reduce times out.
    const c = linearCases(seed)[0];
    const { hidden, weightShard, targets, options } = linearInputs(c);
    const { logprobs } = await D.linearLogprobs(hidden, weightShard, targets, options);
    if (rank === worldSize - 1) {
      await new Promise((r) => setTimeout(r, timeoutMs + 1000));
      return exitWith(out);
    }
    const t1 = Date.now();
    try {
      torch.aten('sum', logprobs).backward();
      out.result = 'completed';
    } catch (e) {
      out.error = { name: e.name, message: e.message, ms: Date.now() - t1 };
    }
    return exitWith(out);
  } else if (cfg.scenario === 'peer-dies') {
    // The last rank leaves without destroy: its sockets close.
    if (rank === worldSize - 1) return exitWith(out);
    const t1 = Date.now();
    try {
      await D.allReduce(torch.tensor(new Float32Array([1])));
      out.result = 'completed';
    } catch (e) {
      out.error = { name: e.name, message: e.message, ms: Date.now() - t1 };
    }
  } else if (cfg.scenario === 'peer-silent') {
    // The last rank joins but never issues the collective: the others time out.
    if (rank === worldSize - 1) {
      await new Promise((r) => setTimeout(r, timeoutMs + 1000));
    } else {
      const t1 = Date.now();
      try {
        await D.allReduce(torch.tensor(new Float32Array([1])));
        out.result = 'completed';
      } catch (e) {
        out.error = { name: e.name, message: e.message, ms: Date.now() - t1 };
      }
      return exitWith(out);
    }
  }
  await D.destroy();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(`rank ${rank}: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
