// Vocabulary-parallel log-probs on W processes (Gloo on the loopback) against
// one process on the whole vocabulary: forward (with entropy) + backward of one
// step, medians over the iterations, and what each rank sends per token.
//   token:  distributed.tokenLogprobs on float32 logits [N, V / W] against
//           torch.tokenLogprobs on [N, V] (sends the all-gathered partials:
//           4 float32, never a row);
//   linear: distributed.linearLogprobs on a sharded LM head [V / W, H] against
//           torch.linearLogprobs on [V, H] (the partials, then the backward's
//           all-reduce of the hidden states' gradient: H float32 a token).
//
//   node bench/torch_distributed.bench.mjs [--kind token|linear|both] [--rows N] [--vocab V] [--hidden H]
//                                          [--world W] [--iters K] [--threads T]
// Each process uses T intra-op threads (default 1, so that W processes on W
// cores compare with one process on one core; pass --threads 2 on 2 cores for
// the single process's best).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = join(HERE, '..', 'dist', 'torch.js');

function args() {
  const o = { kind: 'both', rows: 512, vocab: 32000, hidden: 256, world: 2, iters: 10, threads: 1, rank: -1, port: 0 };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const m = /^--([a-z]+)$/.exec(a[i]);
    if (m && m[1] in o) o[m[1]] = m[1] === 'kind' ? a[++i] : Number(a[++i]);
  }
  if (!['token', 'linear', 'both'].includes(o.kind)) throw new Error(`--kind must be token, linear or both, got ${o.kind}`);
  return o;
}

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function step(torch, inputs, targets, run) {
  const t0 = performance.now();
  const { logprobs, entropy } = await run(targets);
  const obj = torch.aten('add.Tensor', torch.aten('sum', logprobs), torch.aten('sum', entropy));
  obj.backward();
  const ms = performance.now() - t0;
  for (const t of [logprobs, entropy, obj]) t.dispose();
  for (const t of inputs) t.zeroGrad();
  return ms;
}

/** One rank (or, with world 1, the single process): prints a JSON line of timings. */
async function rankMain(o) {
  const torch = await import(DIST);
  torch.setNumThreads(o.threads);
  const D = torch.distributed;
  const r = rng(7);
  const V = o.vocab;
  const targets = torch.tensor(Int32Array.from({ length: o.rows }, () => Math.floor(r() * V)), { dtype: 'int64' });
  const W = o.world;
  let start = 0;
  let end = V;
  if (W > 1) {
    await D.init({ rank: o.rank, worldSize: W, store: { host: '127.0.0.1', port: o.port }, timeoutMs: 120_000 });
    ({ start, end } = D.vocabShard(V, o.rank, W));
  }
  // The whole inputs are drawn in the same order on every process; each keeps its rows or columns [start, end).
  const w = end - start;
  let run, inputs, reduceShape;
  if (o.kind === 'token') {
    const shard = new Float32Array(o.rows * w);
    for (let i = 0; i < o.rows; i++) for (let j = 0; j < V; j++) {
      const x = r() * 8 - 4;
      if (j >= start && j < end) shard[i * w + j - start] = x;
    }
    const logits = torch.tensor(shard, { shape: [o.rows, w], requiresGrad: true });
    inputs = [logits];
    run = W === 1 ? async (t) => torch.tokenLogprobs(logits, t, { entropy: true })
      : (t) => D.tokenLogprobs(logits, t, { vocabStart: start, vocabSize: V, entropy: true });
  } else {
    const H = o.hidden;
    const hidden = torch.tensor(Float32Array.from({ length: o.rows * H }, () => r() * 2 - 1), { shape: [o.rows, H], requiresGrad: true });
    const rowsW = new Float32Array(w * H);
    for (let j = 0; j < V; j++) for (let k = 0; k < H; k++) {
      const x = (r() * 2 - 1) * 0.2;
      if (j >= start && j < end) rowsW[(j - start) * H + k] = x;
    }
    const weight = torch.tensor(rowsW, { shape: [w, H], requiresGrad: true });
    inputs = [hidden, weight];
    reduceShape = [o.rows, H];
    run = W === 1 ? async (t) => torch.linearLogprobs(hidden, weight, t, { entropy: true })
      : (t) => D.linearLogprobs(hidden, weight, t, { vocabStart: start, vocabSize: V, entropy: true });
  }
  if (W > 1) await D.barrier();
  const times = [];
  const gather = [];
  const reduce = [];
  for (let k = 0; k < o.iters + 2; k++) {
    if (o.world > 1) await D.barrier();
    const ms = await step(torch, inputs, targets, run);
    if (k >= 2) times.push(ms);
    if (o.world > 1) {
      // The communication alone: the all-gather of the partials (and the linear backward's all-reduce).
      const p = torch.zeros([o.rows, 4]);
      const t0 = performance.now();
      (await D.allGather(p)).dispose();
      if (k >= 2) gather.push(performance.now() - t0);
      p.dispose();
      if (reduceShape) {
        const g = torch.zeros(reduceShape);
        const t1 = performance.now();
        await D.allReduce(g);
        if (k >= 2) reduce.push(performance.now() - t1);
        g.dispose();
      }
    }
  }
  const out = { rank: o.rank, stepMs: median(times) };
  if (o.world > 1) {
    out.allGatherMs = median(gather);
    if (reduce.length) out.allReduceMs = median(reduce);
    await D.destroy();
  }
  console.log(JSON.stringify(out));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function child(o, rank, world, port) {
  return new Promise((resolve, reject) => {
    const a = ['--kind', o.kind, '--rows', o.rows, '--vocab', o.vocab, '--hidden', o.hidden, '--world', world, '--iters', o.iters, '--threads', o.threads,
      '--rank', rank, '--port', port].map(String);
    const c = spawn(process.execPath, [fileURLToPath(import.meta.url), ...a], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), 600_000);
    c.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`rank ${rank} exited with ${code}`));
      else resolve(JSON.parse(out.trim().split('\n').pop()));
    });
  });
}

async function main() {
  const o = args();
  if (o.rank >= 0) return rankMain(o);
  if (!existsSync(DIST)) {
    console.log('torch_distributed bench: dist/ is not built (npm run build:ts); skipped');
    return;
  }
  const torch = await import(DIST);
  if (!torch.isAvailable() || !torch.distributed.availableBackends().includes('gloo')) {
    console.log('torch_distributed bench: the libtorch bridge with Gloo is not built (npx rlkernels build-torch); skipped');
    return;
  }
  for (const kind of o.kind === 'both' ? ['token', 'linear'] : [o.kind]) {
    const k = { ...o, kind };
    const single = await child(k, 0, 1, 0);
    const port = await freePort();
    const ranks = await Promise.all(Array.from({ length: o.world }, (_, r) => child(k, r, o.world, port)));
    const worst = Math.max(...ranks.map((r) => r.stepMs));
    const gatherMs = Math.max(...ranks.map((r) => r.allGatherMs));
    const perToken = 4 * 4;
    const ring = o.world - 1;
    if (kind === 'token') {
      console.log(`vocabulary-parallel token log-probs + entropy, forward + backward, float32 [${o.rows}, ${o.vocab}], ${o.threads} thread(s) a process, median of ${o.iters}\n`);
      console.log('| processes | step ms (slowest rank) | all-gather of partials ms | vs 1 process | bytes sent per token a rank |');
      console.log('|---|---|---|---|---|');
      console.log(`| 1 (whole vocabulary) | ${single.stepMs.toFixed(2)} | - | 1.00x | 0 |`);
      console.log(`| ${o.world} (V/${o.world} each) | ${worst.toFixed(2)} | ${gatherMs.toFixed(2)} | ${(single.stepMs / worst).toFixed(2)}x faster | ${perToken} payload (4 float32); ring all-gather forwards ${perToken * ring} |`);
      console.log(`\nA vocabulary row would be ${o.vocab * 4} bytes (float32); the partials are ${(perToken / (o.vocab * 4) * 100).toExponential(1)}% of it.\n`);
    } else {
      const reduceMs = Math.max(...ranks.map((r) => r.allReduceMs));
      const gradBytes = 4 * o.hidden;
      console.log(`vocabulary-parallel fused linear log-probs + entropy (sharded LM head), forward + backward, float32 hidden [${o.rows}, ${o.hidden}], weight [${o.vocab}, ${o.hidden}], ${o.threads} thread(s) a process, median of ${o.iters}\n`);
      console.log('| processes | step ms (slowest rank) | all-gather of partials ms | all-reduce of gradHidden ms | vs 1 process | bytes sent per token a rank |');
      console.log('|---|---|---|---|---|---|');
      console.log(`| 1 (whole weight) | ${single.stepMs.toFixed(2)} | - | - | 1.00x | 0 |`);
      console.log(`| ${o.world} (V/${o.world} rows each) | ${worst.toFixed(2)} | ${gatherMs.toFixed(2)} | ${reduceMs.toFixed(2)} | ${(single.stepMs / worst).toFixed(2)}x faster | forward ${perToken} (4 float32); backward all-reduce of ${gradBytes} (H float32; a ring sends ${(2 * ring / o.world * gradBytes).toFixed(0)}) |`);
      console.log(`\nA vocabulary row of logits would be ${o.vocab * 4} bytes (float32); the all-reduce is the hidden states' gradient, as in Megatron's tensor parallelism.\n`);
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
