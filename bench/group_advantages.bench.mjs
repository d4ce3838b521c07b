// groupAdvantages on the CPU, every method, at B = 4096 and 65536 (groups of
// 16; int64 hash ids for one grpo case), beside the same formulas in PyTorch
// eager and torch.compile (bench/torch_group_advantages.py) on the same
// thread count, run from here. Each call includes the output allocations and
// their disposal; both sides time blocks of back-to-back calls (>= 2 ms a
// block) and report the median over ITERS blocks of the per-call mean.
// Usage: node bench/group_advantages.bench.mjs [--threads=N] [--iters=N] [--rounds=N] [--sizes=4096,65536] [--only=a,b] [--quick] [--json] [--no-compile] [--no-torch]
//   --rounds: rounds of both sides, each side's best round reported (3; --quick: 1)
//   --only: cases whose name holds any of these substrings; --quick: B = 4096 and four methods
//   (what bench/run.mjs --quick and `rlkernels bench --quick` run); --json: the last line is
//   bench/run.mjs's { rows } form. PyTorch from RLK_BENCH_PYTHON, else .venv/bin/python, else
//   /usr/bin/python3. Prints a markdown table and, last, one JSON line of the medians.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as rlk from '../dist/index.js';
import { normal, rng } from './common.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const THREADS = Number(arg('threads', '2'));
const ITERS = Number(arg('iters', '50'));
const QUICK = process.argv.includes('--quick');
const SIZES = arg('sizes', QUICK ? '4096' : '4096,65536').split(',').map(Number);
const ROUNDS = Number(arg('rounds', QUICK ? '1' : '3'));
const ONLY = arg('only', QUICK ? 'grpo B,rloo,reinforce++,grpo-passk' : '');
const ONLY_ANY = ONLY.split(',').filter(Boolean);
const GS = 16;
const TASKS = 8;
const K = 3;
rlk.setNumThreads(THREADS);

function median(fn) {
  // Blocks of back-to-back calls, as torch.utils.benchmark's blocked_autorange does: one
  // performance.now() pair around a ~20 us call is itself ~1-2 % of it, and a single call
  // lands in or out of a timer tick, a page fault or the other core's interrupt
  // (torch.compile's single-call medians of one case read 58-140 us across runs, RESULTS.md).
  // The call count a block is doubled until a block takes >= 2 ms, after three calls that run
  // V8's first compile of the options parsing (a slow first call is not taken for a 2 ms
  // block); the result is the median over ITERS blocks of the per-call mean. The PyTorch side
  // (torch_group_advantages.py) times its calls the same way.
  for (let i = 0; i < 3; i++) fn();
  let n = 1;
  for (;;) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    if (performance.now() - t0 >= 2 || n >= 1 << 16) break;
    n *= 2;
  }
  const ts = [];
  for (let b = 0; b < ITERS; b++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    ts.push((performance.now() - t0) / n);
  }
  ts.sort((a, b) => a - b);
  return ts[ts.length >> 1];
}

const calls = {};  // case name -> one call (outputs disposed)
for (const B of SIZES) {
  const r = rng(B);
  const G = B / GS;
  const rewards = rlk.tensor(Float32Array.from({ length: B }, () => (r() < 0.8 ? (r() < 0.4 ? 1 : 0) + 0.1 * normal(r) : 0)));
  const labels = Array.from({ length: G }, () => BigInt.asIntN(64, (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32))));
  const hashIds = rlk.tensor(BigInt64Array.from({ length: B }, (_, i) => labels[(i * 7919) % G]));
  const taskOfGroup = Array.from({ length: G }, () => Math.floor(r() * TASKS));
  const taskIds = rlk.tensor(Int32Array.from({ length: B }, (_, i) => taskOfGroup[Math.floor(i / GS)]));
  const tokenCounts = rlk.tensor(Int32Array.from({ length: B }, () => Math.floor(r() * 512)));
  const columns = rlk.tensor(Float32Array.from({ length: B * K }, () => normal(r)), { shape: [B, K] });
  const baselineRewards = rlk.tensor(Float32Array.from({ length: B }, () => r()));
  const cases = {
    [`grpo B=${B}`]: [rewards, { groupSize: GS, method: 'grpo' }],
    [`grpo batch B=${B}`]: [rewards, { groupSize: GS, method: 'grpo', scale: 'batch' }],
    [`grpo none B=${B}`]: [rewards, { groupSize: GS, method: 'grpo', scale: 'none' }],
    [`grpo hash ids B=${B}`]: [rewards, { groupIds: hashIds, method: 'grpo' }],
    [`rloo B=${B}`]: [rewards, { groupSize: GS, method: 'rloo' }],
    [`reinforce++ B=${B}`]: [rewards, { groupSize: GS, method: 'reinforce++', tokenCounts }],
    [`tmn-reweight B=${B}`]: [rewards, { groupSize: GS, method: 'tmn-reweight', taskIds }],
    [`gdpo B=${B}`]: [columns, { groupSize: GS, method: 'gdpo', rewardWeights: [1, 0.5, 2], tokenCounts }],
    [`grpo-passk B=${B}`]: [rewards, { groupSize: GS, method: 'grpo-passk' }],
    [`opo B=${B}`]: [rewards, { groupSize: GS, method: 'opo', tokenCounts }],
    [`remax B=${B}`]: [rewards, { groupSize: GS, method: 'remax', baselineRewards }],
    [`gpg B=${B}`]: [rewards, { groupSize: GS, method: 'gpg' }],
  };
  for (const [name, [x, opts]] of Object.entries(cases)) {
    if (ONLY_ANY.length && !ONLY_ANY.some((o) => name.includes(o))) continue;
    calls[name] = () => {
      const out = rlk.groupAdvantages(x, opts);
      out.advantages.dispose();
      out.informative.dispose();
    };
  }
}

function runTorch() {
  if (process.argv.includes('--no-torch')) return {};
  const python = process.env.RLK_BENCH_PYTHON || [join(here, '..', '.venv', 'bin', 'python'), '/usr/bin/python3'].find((p) => existsSync(p));
  if (!python) {
    console.error('PyTorch comparison unavailable: no python (set RLK_BENCH_PYTHON)');
    return {};
  }
  const pyArgs = [join(here, 'torch_group_advantages.py'), String(THREADS), String(ITERS), SIZES.join(','), ONLY];
  if (process.argv.includes('--no-compile')) pyArgs.push('--no-compile');
  const r = spawnSync(python, pyArgs, { encoding: 'utf8' });
  if (r.status === 0) return JSON.parse(r.stdout.trim().split('\n').pop());
  console.error(`PyTorch comparison unavailable: ${(r.stderr || '').trim().split('\n').pop()}`);
  return {};
}
// ROUNDS rounds, each timing every case of ours and then every case of PyTorch's; each side's
// figure is its best round. This VM's speed moves by 30-40 % for seconds at a time (the same
// build read rloo at B = 65536 as 24 or 34 us on one thread from one run to the next), and a
// case of ours and the same case in PyTorch are timed a minute apart, so one round's ratio
// could be off by that much either way; the best of three rounds on both sides is each
// side's time outside such phases.
const ours = {};
const torch = {};
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, fn] of Object.entries(calls)) ours[name] = Math.min(ours[name] ?? Infinity, median(fn));
  for (const [name, t] of Object.entries(runTorch())) {
    const best = (torch[name] ??= { eager: null, compile: null });
    const min = (a, b) => (a == null ? b : b == null ? a : Math.min(a, b));
    best.eager = min(best.eager, t.eager);
    if (t.compile_error) best.compile_error = t.compile_error;  // a wrong compiled result in any round: no time
    best.compile = best.compile_error ? null : min(best.compile, t.compile);
  }
}

if (process.argv.includes('--json')) {
  // bench/run.mjs's rows: op = the case without its batch size, shape = B.
  const rows = Object.entries(ours).map(([name, ms]) => {
    const t = torch[name] ?? {};
    const [, op, b] = /^(.*) (B=\d+)$/.exec(name);
    return { op, shape: b, ms, eager: t.eager ?? undefined, compile: t.compile ?? undefined, compileError: t.compile_error ?? undefined };
  });
  const note = `each side's time is the median of ${ITERS} blocks of >= 2 ms of back-to-back calls (per-call mean), best of ${ROUNDS} round${ROUNDS > 1 ? 's' : ''}`;
  console.log(JSON.stringify({ threads: THREADS, isa: rlk.buildInfo().cpu.simd, note, rows }));
  process.exit(0);
}
const load = existsSync('/proc/loadavg') ? readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') : 'n/a';
console.log(`\ngroupAdvantages, CPU, fp32 rewards, groups of ${GS}, ${THREADS} threads (${rlk.buildInfo().cpu.simd}); median of ${ITERS} blocks of >= 2 ms, per-call mean, best of ${ROUNDS} rounds; load average ${load}\n`);
console.log('| case | rlkernels (ms) | PyTorch eager (ms) | torch.compile (ms) | vs eager | vs compile |');
console.log('|---|---:|---:|---:|---:|---:|');
const fmt = (x) => (x == null ? 'n/a' : x.toFixed(4));
const ratio = (t, ms) => (t == null ? 'n/a' : `${(t / ms).toFixed(1)}x`);
const rows = {};
for (const [name, ms] of Object.entries(ours)) {
  const t = torch[name] ?? {};
  rows[name] = { rlkernels: ms, eager: t.eager ?? null, compile: t.compile ?? null };
  console.log(`| ${name} | ${fmt(ms)} | ${fmt(t.eager)} | ${fmt(t.compile)} | ${ratio(t.eager, ms)} | ${ratio(t.compile, ms)} |`);
}
const refused = Object.entries(torch).filter(([name, t]) => ours[name] !== undefined && t.compile_error);
if (refused.length) console.log(`\ntorch.compile, no time counted: ${refused.map(([name, t]) => `${name}: ${t.compile_error}`).join('; ')}`);
console.log(JSON.stringify({ bench: 'group_advantages', threads: THREADS, simd: rlk.buildInfo().cpu.simd, medians_ms: rows }));
