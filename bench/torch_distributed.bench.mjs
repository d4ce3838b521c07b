// Vocabulary-parallel token log-probs (rlkernels/torch distributed.tokenLogprobs)
// on W processes (Gloo on the loopback) against one process on the whole
// vocabulary (torch.tokenLogprobs): forward (with entropy) + backward of one
// step on float32 logits [N, V], medians over the iterations, and what each
// rank sends per token (the all-gathered partials: 4 float32, never a row).
//
//   node bench/torch_distributed.bench.mjs [--rows N] [--vocab V] [--world W] [--iters K] [--threads T]
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
  const o = { rows: 512, vocab: 32000, world: 2, iters: 10, threads: 1, rank: -1, port: 0 };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const m = /^--([a-z]+)$/.exec(a[i]);
    if (m && m[1] in o) o[m[1]] = Number(a[++i]);
  }
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

async function step(torch, logits, targets, run) {
  const t0 = performance.now();
  const { logprobs, entropy } = await run(logits, targets);
  const obj = torch.aten('add.Tensor', torch.aten('sum', logprobs), torch.aten('sum', entropy));
  obj.backward();
  const ms = performance.now() - t0;
  for (const t of [logprobs, entropy, obj]) t.dispose();
  logits.zeroGrad();
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
  let run, logits;
  if (o.world === 1) {
    logits = torch.tensor(Float32Array.from({ length: o.rows * V }, () => r() * 8 - 4), { shape: [o.rows, V], requiresGrad: true });
    run = async (l, t) => torch.tokenLogprobs(l, t, { entropy: true });
  } else {
    await D.init({ rank: o.rank, worldSize: o.world, store: { host: '127.0.0.1', port: o.port }, timeoutMs: 120_000 });
    const { start, end } = D.vocabShard(V, o.rank, o.world);
    const w = end - start;
    const shard = new Float32Array(o.rows * w);
    for (let i = 0; i < o.rows; i++) for (let j = 0; j < V; j++) {
      const x = r() * 8 - 4;
      if (j >= start && j < end) shard[i * w + j - start] = x;
    }
    logits = torch.tensor(shard, { shape: [o.rows, w], requiresGrad: true });
    run = (l, t) => D.tokenLogprobs(l, t, { vocabStart: start, vocabSize: V, entropy: true });
    await D.barrier();
  }
  const times = [];
  const gather = [];
  for (let k = 0; k < o.iters + 2; k++) {
    if (o.world > 1) await D.barrier();
    const ms = await step(torch, logits, targets, run);
    if (k >= 2) times.push(ms);
    if (o.world > 1) {
      const p = torch.zeros([o.rows, 4]);
      const t0 = performance.now();
      (await D.allGather(p)).dispose();
      if (k >= 2) gather.push(performance.now() - t0);
      p.dispose();
    }
  }
  const out = { rank: o.rank, stepMs: median(times) };
  if (o.world > 1) {
    out.allGatherMs = median(gather);
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
    const a = ['--rows', o.rows, '--vocab', o.vocab, '--world', world, '--iters', o.iters, '--threads', o.threads, '--rank', rank, '--port', port].map(String);
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
  const single = await child(o, 0, 1, 0);
  const port = await freePort();
  const ranks = await Promise.all(Array.from({ length: o.world }, (_, r) => child(o, r, o.world, port)));
  const worst = Math.max(...ranks.map((r) => r.stepMs));
  const gatherMs = Math.max(...ranks.map((r) => r.allGatherMs));
  const perToken = 4 * 4;
  console.log(`vocabulary-parallel token log-probs + entropy, forward + backward, float32 [${o.rows}, ${o.vocab}], ${o.threads} thread(s) a process, median of ${o.iters}\n`);
  console.log('| processes | step ms (slowest rank) | all-gather of partials ms | vs 1 process | bytes sent per token a rank |');
  console.log('|---|---|---|---|---|');
  console.log(`| 1 (whole vocabulary) | ${single.stepMs.toFixed(2)} | - | 1.00x | 0 |`);
  console.log(`| ${o.world} (V/${o.world} each) | ${worst.toFixed(2)} | ${gatherMs.toFixed(2)} | ${(single.stepMs / worst).toFixed(2)}x faster | ${perToken} payload (4 float32); ring all-gather forwards ${perToken * (o.world - 1)} |`);
  console.log(`\nA vocabulary row would be ${o.vocab * 4} bytes (float32); the partials are ${(perToken / (o.vocab * 4) * 100).toExponential(1)}% of it.`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
