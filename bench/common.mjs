// Shared by the benches and the harness (bench/run.mjs, `npx rlkernels bench`):
// seeded inputs, the Python that runs the PyTorch side, timing, and the
// protocol a family's bench speaks with the harness.
//
// Protocol. bench/<family>.bench.mjs times rlkernels and runs
// bench/torch_<family>.py (bench/torch_common.py: eager and torch.compile of
// the same formulas, same thread count, medians as one JSON line). Run by the
// harness it gets its settings from the environment (benchConfig()), prints
// `RLK_PROGRESS_TOTAL n` and then one `RLK_PROGRESS <label>` per step on
// stderr (the harness draws the progress bar from them), and hands its rows to
// emitResults(): with RLK_BENCH_JSON set they go to that file as JSON, and a
// markdown table is printed either way. A row is
//   { op, shape, dtype, ms, eager?, compile?, note? }   (medians in ms)
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// RLK_SIMD=avx2 (or baseline) times rlkernels' AVX2 (scalar) path; the PyTorch
// side then runs the same ISA (ATEN_CPU_CAPABILITY, which eager and inductor
// both follow), so an AVX-512 machine stands in for an AVX2-only one on both
// sides. An ATEN_CPU_CAPABILITY set by the user wins.
const TORCH_ISA = { avx2: 'avx2', baseline: 'default' };
if (Object.hasOwn(TORCH_ISA, process.env.RLK_SIMD ?? '') && !process.env.ATEN_CPU_CAPABILITY) process.env.ATEN_CPU_CAPABILITY = TORCH_ISA[process.env.RLK_SIMD];

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_ROOT = join(BENCH_DIR, '..');

/** Mulberry32, as in tests/helpers.ts. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function normal(r) {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** N(0, scale^2) float32 values from a fast LCG (benches need realistic logits, not a good generator). */
/**
 * The policy-loss benches' batch (both the side-by-side bench and the single-call timer):
 * B rows of T tokens, each row's first 30-100 % unmasked, log-probs in (-4, 0), old and
 * reference log-probs within ~0.3 of them, token advantages N(0, 1). Typed arrays; seeded.
 */
export function policyLossData(B, T) {
  const r = rng(1);
  const n = B * T;
  const logp = new Float32Array(n), old = new Float32Array(n), ref = new Float32Array(n), adv = new Float32Array(n);
  const mask = new Uint8Array(n);
  for (let b = 0; b < B; b++) {
    const len = Math.floor((0.3 + 0.7 * r()) * T);
    for (let t = 0; t < T; t++) {
      const i = b * T + t;
      logp[i] = -r() * 4 - 0.01;
      old[i] = logp[i] + normal(r) * 0.3;
      ref[i] = logp[i] + normal(r) * 0.3;
      adv[i] = normal(r);
      mask[i] = t < len ? 1 : 0;
    }
  }
  return { logp, old, ref, adv, mask, shape: [B, T] };
}

export function randomFloats(n, seed = 12345, scale = 2) {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 1) / 4294967297;
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u())) * scale;
    const a = 2 * Math.PI * u();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

// ---- the Python side -----------------------------------------------------------

function probePython(python) {
  if (!python) return null;
  if (python.includes('/') && !existsSync(python)) return null;
  const r = spawnSync(python, ['-c', 'import torch, shutil; print(torch.__version__); print(1 if shutil.which("g++") or shutil.which("c++") else 0)'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.status !== 0) return { python, torch: null };
  const [version, cxx] = r.stdout.trim().split('\n');
  const major = Number(version.split('.')[0]);
  return { python, torch: version, compile: major >= 2 && cxx === '1' };
}

let pythonCache;
/**
 * The Python that runs the PyTorch side: RLK_BENCH_PYTHON, then the package's
 * .venv/bin/python, then /usr/bin/python3, then python3 on PATH. The first
 * with torch >= 2 wins; else the first with any torch (no compile column);
 * else none. `note` says which was taken and why.
 */
export function findPython() {
  if (pythonCache) return pythonCache;
  const candidates = [process.env.RLK_BENCH_PYTHON, join(PACKAGE_ROOT, '.venv', 'bin', 'python'), '/usr/bin/python3', 'python3'].filter(Boolean);
  const seen = [];
  let fallback = null;
  for (const c of candidates) {
    const p = probePython(c);
    if (!p) {
      seen.push(`${c}: not found`);
      continue;
    }
    if (!p.torch) {
      seen.push(`${c}: no torch`);
      continue;
    }
    if (Number(p.torch.split('.')[0]) >= 2) {
      pythonCache = { ...p, note: `${c} (torch ${p.torch}${p.compile ? '' : ', torch.compile unavailable: no C++ compiler'})` };
      return pythonCache;
    }
    seen.push(`${c}: torch ${p.torch} (< 2: no torch.compile)`);
    fallback ??= p;
  }
  pythonCache = fallback
    ? { ...fallback, compile: false, note: `${fallback.python} (torch ${fallback.torch}: eager only; no Python with torch >= 2 found: ${seen.join('; ')})` }
    : { python: null, torch: null, compile: false, note: `no PyTorch found (${seen.join('; ')}); install it with scripts/setup-venv.sh or set RLK_BENCH_PYTHON` };
  return pythonCache;
}

/**
 * Runs bench/<script> with the resolved Python and parses the last line of its stdout as
 * JSON; `{}` (and a note on stderr) when PyTorch is not there, so the table shows n/a.
 */
export function runTorch(script, args) {
  const py = findPython();
  if (!py.python) {
    console.error(`PyTorch comparison unavailable: ${py.note}`);
    return {};
  }
  const r = spawnSync(py.python, [join(BENCH_DIR, script), ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status === 0) return JSON.parse(r.stdout.trim().split('\n').pop());
  console.error(`PyTorch comparison unavailable: ${(r.stderr || '').trim().split('\n').pop()}`);
  return {};
}

/**
 * Runs a protocol script (bench/torch_common.py) over `cases` in the modes asked for.
 * Returns { torch, compile, results: { name: { eager?, compile? } }, errors, note }.
 */
export function torchCompare(script, cases, cfg = benchConfig()) {
  const py = findPython();
  const empty = { torch: null, compile: false, results: {}, errors: {}, note: py.note };
  if (!py.python || cfg.modes.length === 0 || cases.length === 0) return empty;
  const modes = cfg.modes.filter((m) => m !== 'compile' || py.compile);
  const args = [join(BENCH_DIR, script), '--threads', String(cfg.threads), '--iters', String(cfg.iters), '--modes', modes.join(','), '--cases', JSON.stringify(cases)];
  const r = spawnSync(py.python, args, {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
    timeout: cfg.torchTimeoutMs,
    cwd: BENCH_DIR,
    env: { ...process.env, OMP_NUM_THREADS: String(cfg.threads), PYTHONPATH: BENCH_DIR },
    // Progress lines go straight to our stderr, where the harness reads them.
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) return { ...empty, note: `${py.note}; ${script} failed (${r.error?.message ?? `exit ${r.status}`})` };
  try {
    const out = JSON.parse(r.stdout.trim().split('\n').pop());
    return { ...out, note: py.note };
  } catch {
    return { ...empty, note: `${py.note}; ${script} printed no JSON` };
  }
}

// ---- settings, timing, output ---------------------------------------------------

/**
 * The run's settings, from the harness's environment (or a family script's own argv):
 * RLK_BENCH_QUICK / --quick (small shapes, fewer runs: the README's first command),
 * RLK_BENCH_TINY / --tiny (the test suite's shapes), RLK_BENCH_THREADS / --threads N (2),
 * RLK_BENCH_DEVICE / --device (cpu), RLK_BENCH_MODES / --torch-modes (eager,compile; --no-compile,
 * --no-torch), RLK_BENCH_ITERS.
 */
export function benchConfig(argv = process.argv.slice(2)) {
  const arg = (name) => {
    const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
    if (i < 0) return undefined;
    return argv[i].includes('=') ? argv[i].split('=').slice(1).join('=') : argv[i + 1];
  };
  const flag = (name, env) => argv.includes(`--${name}`) || process.env[env] === '1';
  const tiny = flag('tiny', 'RLK_BENCH_TINY');
  const quick = tiny || flag('quick', 'RLK_BENCH_QUICK');
  const threads = Number(arg('threads') ?? process.env.RLK_BENCH_THREADS ?? 2);
  let modes = (arg('torch-modes') ?? process.env.RLK_BENCH_MODES ?? 'eager,compile').split(',').filter((m) => m === 'eager' || m === 'compile');
  if (argv.includes('--no-compile')) modes = modes.filter((m) => m !== 'compile');
  if (argv.includes('--no-torch')) modes = [];
  const iters = Number(process.env.RLK_BENCH_ITERS ?? (tiny ? 3 : quick ? 5 : 9));
  return {
    quick,
    tiny,
    threads,
    modes,
    iters,
    device: arg('device') ?? process.env.RLK_BENCH_DEVICE ?? 'cpu',
    torchTimeoutMs: Number(process.env.RLK_BENCH_TORCH_TIMEOUT_MS ?? 1_800_000),
  };
}

/** Median wall time of fn in ms, after `warmup` calls (fn may return a promise). */
export async function timeMedian(fn, { iters = 7, warmup = 1 } = {}) {
  for (let i = 0; i < warmup; i++) await fn();
  const ts = [];
  for (let i = 0; i < iters; i++) {
    const a = performance.now();
    await fn();
    ts.push(performance.now() - a);
  }
  ts.sort((x, y) => x - y);
  return ts[Math.floor(ts.length / 2)];
}

/**
 * Time per call of fn over `windows` stretches of 60 ms of back-to-back calls: the minimum, first
 * quartile and median in microseconds. On a shared VM the minimum and quartile move far less than
 * one long mean; the A/B loop scripts (bench/*_loop.mjs) print these.
 */
export function timeWindows(fn, windows = 30) {
  const per = [];
  for (let w = 0; w < windows; w++) {
    const t0 = performance.now();
    let calls = 0;
    while (performance.now() - t0 < 60) {
      fn();
      calls++;
    }
    per.push(((performance.now() - t0) / calls) * 1000);
  }
  per.sort((x, y) => x - y);
  const q = (f) => per[Math.floor(f * (per.length - 1))].toFixed(1);
  return `min ${q(0)} p25 ${q(0.25)} median ${q(0.5)} us/call (${windows} windows of 60 ms)`;
}

let progressDone = 0;
/** Announces the number of steps of this script (for the harness's progress bar). */
export function progressTotal(n) {
  console.error(`RLK_PROGRESS_TOTAL ${n}`);
}
/** One step done. */
export function progress(label) {
  progressDone++;
  console.error(`RLK_PROGRESS ${label}`);
}

export function cpuModel() {
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1].trim();
  } catch {
    // not Linux
  }
  return cpus()[0]?.model ?? 'unknown CPU';
}

/** ISA extensions the CPU reports (AVX-512 subsets, AVX2, FMA). */
export function cpuFlags() {
  try {
    const flags = /flags\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].split(/\s+/) ?? [];
    return flags.filter((f) => /^avx512|^avx2$|^fma$|^amx/.test(f)).sort();
  } catch {
    return [];
  }
}

export const fmtMs = (v) => (typeof v === 'number' && Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 0.1 ? v.toFixed(2) : v.toFixed(4)) : 'n/a');
export const fmtRatio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? `${(a / b).toFixed(1)}x` : 'n/a');

/** The markdown table of rows (family optional). */
export function rowsTable(rows, { family = false } = {}) {
  const head = `${family ? '| family ' : ''}| op | shape | dtype | rlkernels (ms) | PyTorch eager (ms) | torch.compile (ms) | vs eager | vs compile |`;
  const sep = `${family ? '|---' : ''}|---|---|---|---:|---:|---:|---:|---:|`;
  const lines = [head, sep];
  for (const r of rows) {
    lines.push(
      `${family ? `| ${r.family} ` : ''}| ${r.op} | ${r.shape} | ${r.dtype} | ${fmtMs(r.ms)} | ${fmtMs(r.eager)} | ${fmtMs(r.compile)} | ${fmtRatio(r.eager, r.ms)} | ${fmtRatio(r.compile, r.ms)} |`,
    );
  }
  // Compile cases the PyTorch side refused (an error, or a result that disagreed with eager's).
  const refused = rows.filter((r) => r.compileError ?? r.note?.startsWith('compile: '));
  if (refused.length) {
    lines.push('', `torch.compile, no time counted: ${refused.map((r) => `${r.op} ${r.shape} ${r.dtype}: ${r.compileError ?? r.note.slice(9)}`).join('; ')}`);
  }
  return lines.join('\n');
}

/**
 * Hands a family's rows to the harness (the file RLK_BENCH_JSON names) and prints them: a
 * markdown table, or with --json one JSON line (the last line of stdout).
 */
export function emitResults(family, rows, meta = {}) {
  const out = { family, rows, meta };
  if (process.env.RLK_BENCH_JSON) writeFileSync(process.env.RLK_BENCH_JSON, JSON.stringify(out));
  if (process.argv.includes('--json')) console.log(JSON.stringify(out));
  else console.log(`\n${family}${meta.note ? ` (${meta.note})` : ''}\n\n${rowsTable(rows)}\n`);
}

/** Replaces (or appends) the section `## <section>` of bench/RESULTS.md (or `path`). */
export function writeResultsSection(section, body, path = join(BENCH_DIR, 'RESULTS.md')) {
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmark results\n';
  const heading = `## ${section}`;
  const start = text.indexOf(`${heading}\n`);
  const block = `${heading}\n\n${body.trim()}\n`;
  let next;
  if (start < 0) next = `${text.trimEnd()}\n\n${block}`;
  else {
    const after = text.indexOf('\n## ', start + heading.length);
    next = text.slice(0, start) + block + (after < 0 ? '' : `\n${text.slice(after + 1)}`);
  }
  writeFileSync(path, next.endsWith('\n') ? next : `${next}\n`);
}
