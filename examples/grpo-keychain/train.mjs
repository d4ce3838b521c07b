#!/usr/bin/env node
// GRPO in Node on a KeyChain-style retrieval task (LoongRL's KeyChain, shrunk
// to fit 2 CPU cores): the context hides chains of keys among filler tokens
// ("k3 > k7 ;" ... "k7 > V5 ;"), the prompt asks "? k3 =", and the answer is
// the value at the end of the chain that starts at k3; a second chain leads
// to a distractor value. Reward: exact match (LoongRL's two-way substring
// match with --reward substring). Chain length is the curriculum and the
// task id of tmn-reweight advantages.
//
// The policy is a tiny causal transformer defined in model.py and saved as
// TorchScript (made on first run with the repository's .venv python); a
// frozen copy is the KL reference. Sampling runs in Node through
// rlkernels/torch; this package computes the log-probs with temperature, the
// group advantages, and the whole objective (clip-higher, k3 KL, token-mean)
// with its backward.
//
//   npm run example:grpo -- [--steps N] [--seed S] [--device cpu|cuda] [--out DIR] [--world-size N]
// --world-size N trains data-parallel on N local processes (distributed.mjs).
// The last line printed is one JSON object: steps, rewardStart, rewardEnd, ...
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as torch from 'rlkernels/torch';
import { setupDataParallel } from './distributed.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');

// ---- options ---------------------------------------------------------------------
const DEFAULTS = {
  steps: 150, seed: 0, device: 'cpu', out: join(HERE, 'out'), prompts: 16, group: 8, lr: 2e-3, temperature: 1,
  clipLow: 0.2, clipHigh: 0.28, klCoef: 0.001, epochs: 1, minibatches: 1, maxChain: 3, advantages: 'tmn-reweight', reward: 'exact', threads: 1, quiet: false, worldSize: 1,
};
function parseArgs(argv) {
  const o = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quiet') { o.quiet = true; continue; }
    if (a === '--help' || a === '-h') {
      console.log(`usage: train.mjs ${Object.keys(DEFAULTS).map((k) => `[--${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} ${DEFAULTS[k]}]`).join(' ')}`);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`unknown argument ${a}`);
    const key = m[1].replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in DEFAULTS)) throw new Error(`unknown option --${m[1]}`);
    const v = m[2] ?? argv[++i];
    o[key] = typeof DEFAULTS[key] === 'number' ? Number(v) : v;
    if (typeof DEFAULTS[key] === 'number' && !Number.isFinite(o[key])) throw new Error(`--${m[1]} must be a number, got ${v}`);
  }
  if (!['cpu', 'cuda'].includes(o.device) && !/^cuda:\d+$/.test(o.device)) throw new Error(`--device must be cpu or cuda, got ${o.device}`);
  if (!(Number.isInteger(o.minibatches) && o.minibatches >= 1 && o.prompts % o.minibatches === 0)) throw new Error('--minibatches must divide --prompts');
  if (!(o.maxChain >= 1 && o.maxChain <= 3)) throw new Error('--max-chain must be 1, 2 or 3');
  if (!['exact', 'substring'].includes(o.reward)) throw new Error(`--reward must be exact or substring`);
  if (!['grpo', 'tmn-reweight'].includes(o.advantages)) throw new Error(`--advantages must be grpo or tmn-reweight`);
  return o;
}

// ---- the task ----------------------------------------------------------------------
const PAD = 0, BOS = 1, ARROW = 2, SEP = 3, QUERY = 4, EQ = 5;
const FILLERS = 4, F0 = 6, KEYS = 16, K0 = F0 + FILLERS, VALUES = 8, V0 = K0 + KEYS;
const VOCAB = V0 + VALUES;
const MAX_CHAIN = 3; // the model's context fits chains of up to this many links
const CTX = 1 + 2 * MAX_CHAIN * 5 + 3; // BOS, two chains of pairs with a filler each at most, "? k =".

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pick = (rng, n) => Math.floor(rng() * n);
function sample(rng, n, k) {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + pick(rng, n - i);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a.slice(0, k);
}

/** One prompt (left-padded to CTX) and its answer, for a chain of `len` links. */
function makeTask(rng, len) {
  const keys = sample(rng, KEYS, 2 * len), vals = sample(rng, VALUES, 2);
  const pairs = [];
  const starts = [];
  let answer = 0;
  for (let c = 0; c < 2; c++) {
    const chain = keys.slice(c * len, (c + 1) * len).map((k) => K0 + k).concat([V0 + vals[c]]);
    for (let i = 0; i < len; i++) pairs.push([chain[i], chain[i + 1]]);
    starts.push(chain[0]);
    if (c === 0) answer = chain[len];
  }
  for (let i = pairs.length - 1; i > 0; i--) {
    const j = pick(rng, i + 1);
    [pairs[i], pairs[j]] = [pairs[j], pairs[i]];
  }
  const toks = [BOS];
  for (const [a, b] of pairs) {
    if (rng() < 0.5) toks.push(F0 + pick(rng, FILLERS));
    toks.push(a, ARROW, b, SEP);
  }
  toks.push(QUERY, starts[0], EQ);
  return { tokens: new Array(CTX - toks.length).fill(PAD).concat(toks), answer: [answer] };
}

/** Exact match, or LoongRL's two-way substring match (either sequence inside the other). */
function reward(kind, response, answer) {
  const r = response.join(','), a = answer.join(',');
  if (kind === 'exact') return r === a ? 1 : 0;
  return r.length > 0 && (r.includes(a) || a.includes(r)) ? 1 : 0;
}

// ---- the model -----------------------------------------------------------------------
function python() {
  if (process.env.RLK_PYTHON) return process.env.RLK_PYTHON;
  const venv = join(ROOT, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}
function ensureModel(out, seed) {
  const path = join(out, `model-s${seed}.pt`);
  if (existsSync(path)) return path;
  const r = spawnSync(python(), [join(HERE, 'model.py'), path, '--vocab', String(VOCAB), '--max-len', String(CTX), '--seed', String(seed)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`model.py failed (python ${python()}): ${r.stderr || r.error}`);
  return path;
}

// ---- the chart ------------------------------------------------------------------------
function svgChart(rewards, kls) {
  const W = 720, H = 360, P = 48;
  const smooth = (xs, k = 5) => xs.map((_, i) => {
    const s = xs.slice(Math.max(0, i - k + 1), i + 1);
    return s.reduce((a, b) => a + b, 0) / s.length;
  });
  const n = rewards.length;
  const x = (i) => P + (W - 2 * P) * (n > 1 ? i / (n - 1) : 0);
  const kmax = Math.max(1e-9, ...kls);
  const line = (ys, scale, color) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${ys.map((y, i) => `${x(i).toFixed(1)},${(H - P - (H - 2 * P) * (y / scale)).toFixed(1)}`).join(' ')}"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">grpo-keychain: mean reward (blue, left axis 0..1) and KL to the reference (orange, right axis 0..${kmax.toExponential(1)})</text>
<line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="black"/><line x1="${P}" y1="${P}" x2="${P}" y2="${H - P}" stroke="black"/>
<line x1="${W - P}" y1="${P}" x2="${W - P}" y2="${H - P}" stroke="black"/>
<text x="${P - 6}" y="${H - P}" text-anchor="end">0</text><text x="${P - 6}" y="${P + 4}" text-anchor="end">1</text>
<text x="${W / 2}" y="${H - 12}" text-anchor="middle">step (1..${n})</text>
${line(rewards, 1, '#c6dbef')}${line(smooth(rewards), 1, '#2171b5')}${line(smooth(kls), kmax, '#e6550d')}
</svg>
`;
}

// ---- training ---------------------------------------------------------------------------
async function main() {
  const o = parseArgs(process.argv.slice(2));
  const dp = await setupDataParallel(o.worldSize, fileURLToPath(import.meta.url), process.argv.slice(2));
  if (dp.launcher !== undefined) process.exit(dp.launcher);
  const log = o.quiet || dp.rank !== 0 ? () => {} : (s) => console.log(s);
  mkdirSync(o.out, { recursive: true });
  if (o.threads > 0) torch.setNumThreads(o.threads);
  torch.manualSeed(o.seed);
  const rng = mulberry32(o.seed * 7919 + 1);
  const modelPath = dp.rank === 0 ? ensureModel(o.out, o.seed) : join(o.out, `model-s${o.seed}.pt`);
  if (dp.world > 1) await torch.distributed.barrier();  // rank 0 has written the model
  const policy = torch.jit.load(modelPath, { device: o.device }).train();
  const ref = torch.jit.load(modelPath, { device: o.device }).eval();
  const params = policy.parameters();
  const opt = new torch.optim.AdamW(params, { lr: o.lr, weightDecay: 0 });
  const B = o.prompts * o.group;
  const T = o.temperature;
  const rewards = [], kls = [];
  let tokens = 0, seconds = 0;
  // Data parallel (--world-size): this rank's rows [lo, hi) of each mini-batch (all of them on one process).
  const mb = B / o.minibatches;
  const [lo, hi] = dp.rows(mb);
  const n = hi - lo;
  log(`grpo-keychain: vocab ${VOCAB}, context ${CTX}, ${o.prompts} prompts x ${o.group} samples, ${o.steps} steps, device ${o.device}, chance ${(1 / VOCAB).toFixed(3)}` +
    (dp.world > 1 ? `, data-parallel on ${dp.world} processes (${n} rows of each mini-batch each)` : ''));
  const t0 = performance.now();
  for (let step = 0; step < o.steps; step++) {
    const ts = performance.now();
    // Curriculum: chains of one link first, up to --max-chain links by the last part.
    const maxChain = Math.min(o.maxChain, 1 + Math.floor((o.maxChain * step) / Math.max(1, o.steps)));
    const prompts = [], answers = [], lens = [];
    for (let p = 0; p < o.prompts; p++) {
      const len = 1 + pick(rng, maxChain);
      const t = makeTask(rng, len);
      for (let g = 0; g < o.group; g++) {
        prompts.push(...t.tokens);
        answers.push(t.answer);
        lens.push(len - 1);
      }
    }
    const stats = await torch.scope(async () => {
      const input = torch.tensor(BigInt64Array.from(prompts.map(BigInt)), { shape: [B, CTX], device: o.device });
      const lastLogits = (model, x) => {
        const rows = x.shape[0];
        return torch.slice(model.forward(x), 1, CTX - 1, CTX).reshape([rows, VOCAB]).contiguous();
      };
      // Sample one answer token per row from softmax(logits / T); the sampling policy's log-probs
      // of them are the "old" log-probs of the ratio.
      const { actions, old } = torch.noGrad(() => {
        const logits = lastLogits(policy, input);
        const acts = torch.multinomial(torch.softmax(torch.aten('div.Scalar', logits, T)), 1).reshape([B]);
        return { actions: acts, old: torch.tokenLogprobs(logits, acts, { temperature: T }).logprobs.reshape([B, 1]) };
      });
      const acts = Array.from(actions.toArraySync(), Number);
      const r = acts.map((a, i) => reward(o.reward, [a], answers[i]));
      const rewardT = torch.tensor(Float32Array.from(r), { device: o.device });
      const taskIds = torch.tensor(Int32Array.from(lens), { device: o.device });
      // This rank's advantages, mini-batch after mini-batch (groups may straddle ranks).
      const adv = (await dp.groupAdvantages(rewardT, o.advantages === 'tmn-reweight'
        ? { groupSize: o.group, method: 'tmn-reweight', taskIds }
        : { groupSize: o.group, method: 'grpo' }, { mb, lo, hi })).advantages;
      const refLp = torch.noGrad(() => torch.tokenLogprobs(lastLogits(ref, input), actions, { temperature: T }).logprobs.reshape([B, 1]));
      // As verl's ppo_mini_batch_size and ppo_epochs: --minibatches (whole groups each) and --epochs
      // give one optimizer step per mini-batch; from the second step on the ratio leaves 1 and the
      // clip (clip-higher) can act. The default, one step per batch, keeps the ratio at 1.
      const part = (t, k) => torch.slice(t, 0, k * mb + lo, k * mb + hi).contiguous();
      const advPart = (k) => torch.slice(adv, 0, k * n, (k + 1) * n).contiguous();
      let last = null;
      for (let e = 0; e < o.epochs; e++) {
        for (let k = 0; k < o.minibatches; k++) {
          const lp = torch.tokenLogprobs(lastLogits(policy, part(input, k)), part(actions, k), { temperature: T }).logprobs.reshape([n, 1]);
          const pl = await dp.policyLoss(
            { logprobs: lp, oldLogprobs: part(old, k), advantages: advPart(k) },
            { clipLow: o.clipLow, clipHigh: o.clipHigh, aggregation: 'token-mean', kl: { refLogprobs: part(refLp, k), estimator: 'k3', coef: o.klCoef } },
          );
          opt.zeroGrad();
          pl.loss.backward();
          await dp.reduceGradients(params);
          opt.step();
          const stats = await pl.readStats();
          last = { loss: pl.loss.itemSync(), stats };
        }
      }
      return { reward: r.reduce((a, b) => a + b, 0) / B, ...last };
    });
    const dt = (performance.now() - ts) / 1000;
    seconds += dt;
    tokens += B * (CTX + 1);
    rewards.push(stats.reward);
    kls.push(stats.stats.klMean ?? 0);
    if (step % 10 === 0 || step === o.steps - 1) {
      log(`step ${String(step + 1).padStart(4)}/${o.steps}  reward ${stats.reward.toFixed(3)}  loss ${stats.loss.toFixed(4)}  ` +
        `kl ${(stats.stats.klMean ?? 0).toExponential(2)}  clip ${stats.stats.clipFraction.toFixed(3)}  ` +
        `tok/s ${Math.round((B * (CTX + 1)) / dt)}  chains<=${maxChain}`);
    }
  }
  const k = Math.max(5, Math.floor(o.steps / 10));
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const chart = join(o.out, `curves-s${o.seed}.svg`);
  if (dp.rank === 0) writeFileSync(chart, svgChart(rewards, kls));
  const summary = {
    steps: o.steps, seed: o.seed, device: o.device, chance: 1 / VOCAB,
    rewardStart: mean(rewards.slice(0, k)), rewardEnd: mean(rewards.slice(-k)),
    klEnd: mean(kls.slice(-k)), tokensPerSecond: Math.round(tokens / seconds), seconds: Math.round((performance.now() - t0) / 100) / 10, chart,
  };
  if (dp.world > 1) summary.worldSize = dp.world;
  if (process.env.GRPO_REWARDS === '1') summary.rewards = rewards;  // the whole curve, to compare runs
  if (dp.rank === 0) console.log(JSON.stringify(summary));
  await dp.finish();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
