// The benchmark harness: runs every bench/<family>.bench.mjs in turn, each
// beside PyTorch eager and torch.compile of the same formulas on the same
// thread count (the Python is found by common.mjs findPython()), collects
// their rows, prints one ratio table and writes bench/RESULTS.md (machine,
// ISA path, threads, date, command). `npx rlkernels bench` is this plus a
// progress bar and a chart.
//
//   node bench/run.mjs [--quick] [--tiny] [--threads N] [--device cpu|cuda]
//                      [--no-compile] [--no-torch] [--only a,b] [--no-write] [--json]
//
// A family script speaks the protocol of common.mjs (rows to RLK_BENCH_JSON,
// progress on stderr), or prints one JSON line with `rows` under --json
// (policy_loss, group_advantages), or only a markdown table: the table is then kept as it
// printed it. Scripts that do not know --quick are skipped in quick runs
// (named in the output) so that the quick run stays short.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BENCH_DIR, PACKAGE_ROOT, benchConfig, cpuFlags, cpuModel, findPython, rowsTable, writeResultsSection } from './common.mjs';

/** The family scripts, by name (token_logprobs, ...), in a fixed order. */
export function listFamilies(only) {
  return readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.bench.mjs'))
    .map((f) => f.slice(0, -'.bench.mjs'.length))
    .filter((f) => !only || only.length === 0 || only.some((o) => f.includes(o)))
    .sort();
}

function scriptKnows(family, what) {
  return readFileSync(join(BENCH_DIR, `${family}.bench.mjs`), 'utf8').includes(what);
}

/** Maps a script's own row shape onto the harness's ({ op, shape, dtype, ms, eager, compile }). */
function normaliseRow(family, r) {
  return {
    family,
    op: r.op ?? r.mode ?? r.name ?? '?',
    shape: typeof r.shape === 'string' ? r.shape : Array.isArray(r.shape) ? `[${r.shape.join(', ')}]` : '',
    dtype: r.dtype ?? 'float32',
    ms: r.ms,
    eager: r.eager ?? undefined,
    compile: r.compile ?? undefined,
    note: r.note ?? (r.compileError ? `compile: ${r.compileError}` : undefined),
  };
}

function runFamily(family, cfg, onProgress) {
  return new Promise((resolve) => {
    const dir = mkdtempSync(join(tmpdir(), 'rlk-bench-'));
    const jsonPath = join(dir, 'rows.json');
    const args = [join(BENCH_DIR, `${family}.bench.mjs`), `--threads=${cfg.threads}`, '--json'];
    if (cfg.quick) args.push('--quick');
    if (cfg.tiny) args.push('--tiny');
    if (!cfg.modes.includes('compile')) args.push('--no-compile');
    if (cfg.modes.length === 0) args.push('--no-torch');
    if (cfg.device !== 'cpu') args.push(`--device=${cfg.device}`);
    const py = findPython();
    const env = {
      ...process.env,
      RLK_BENCH_JSON: jsonPath,
      RLK_BENCH_QUICK: cfg.quick ? '1' : '0',
      RLK_BENCH_TINY: cfg.tiny ? '1' : '0',
      RLK_BENCH_THREADS: String(cfg.threads),
      RLK_BENCH_DEVICE: cfg.device,
      RLK_BENCH_MODES: cfg.modes.join(','),
      RLK_BENCH_NO_WRITE: '1',
      ...(py.python ? { RLK_BENCH_PYTHON: py.python } : {}),
    };
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let total = 0;
    let done = 0;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      for (const line of String(d).split('\n')) {
        const t = /^RLK_PROGRESS_TOTAL (\d+)/.exec(line);
        if (t) total += Number(t[1]);
        else if (line.startsWith('RLK_PROGRESS ')) {
          done++;
          onProgress?.(total > 0 ? Math.min(1, done / total) : 0, line.slice('RLK_PROGRESS '.length));
        }
      }
    });
    child.on('close', (code) => {
      let parsed = null;
      if (existsSync(jsonPath)) parsed = JSON.parse(readFileSync(jsonPath, 'utf8'));
      else {
        const last = stdout.trim().split('\n').pop() ?? '';
        try {
          const j = JSON.parse(last);
          if (Array.isArray(j.rows)) parsed = { family, rows: j.rows, meta: { note: j.note, torch: j.torch } };
        } catch {
          // a markdown-only script
        }
      }
      rmSync(dir, { recursive: true, force: true });
      const errTail = stderr.split('\n').filter((l) => l && !l.startsWith('RLK_PROGRESS')).slice(-3).join(' ');
      resolve({
        family,
        code,
        rows: parsed ? parsed.rows.map((r) => normaliseRow(family, r)) : [],
        meta: parsed?.meta ?? {},
        markdown: parsed ? null : stdout.trim(),
        error: code === 0 ? null : `exit ${code}: ${errTail}`,
      });
    });
  });
}

/** What the run ran on, for RESULTS.md and the CLI. */
export async function machineInfo(cfg) {
  const rlk = await import(pathToFileURL(join(PACKAGE_ROOT, 'dist', 'index.js')).href);
  const info = rlk.buildInfo();
  const py = findPython();
  return {
    cpu: cpuModel(),
    flags: cpuFlags(),
    isa: info.cpu.simd,
    simdOverride: process.env.RLK_SIMD ?? null,
    torchIsa: process.env.ATEN_CPU_CAPABILITY ?? null,
    threads: cfg.threads,
    node: process.version,
    binary: info.binary,
    gpu: info.cuda.available ? info.cuda.devices.join(', ') : `none (${info.cuda.reason})`,
    python: py.python,
    torch: py.torch,
    torchCompile: py.compile,
    pythonNote: py.note,
    date: new Date().toISOString(),
    loadavg: loadavg().map((x) => Number(x.toFixed(2))),
  };
}

/**
 * Runs the families; onProgress(fraction, label) is called as steps finish.
 * Returns { machine, config, families: [{ family, rows, markdown, error, skipped }], rows }.
 */
export async function runBenchmarks(opts = {}) {
  const cfg = { ...benchConfig([]), ...opts };
  const families = listFamilies(opts.only);
  const machine = await machineInfo(cfg);
  const results = [];
  for (let i = 0; i < families.length; i++) {
    const family = families[i];
    if (cfg.quick && !scriptKnows(family, '--quick')) {
      results.push({ family, rows: [], skipped: 'no quick mode in its script: run the full bench for it' });
      opts.onProgress?.((i + 1) / families.length, `${family} skipped`);
      continue;
    }
    opts.onProgress?.(i / families.length, family);
    const r = await runFamily(family, cfg, (f, label) => opts.onProgress?.((i + f) / families.length, `${family}: ${label}`));
    results.push(r);
    opts.onProgress?.((i + 1) / families.length, `${family} done`);
  }
  return { machine, config: cfg, families: results, rows: results.flatMap((r) => r.rows) };
}

export function machineLine(m, cfg) {
  const isa = `${m.isa}${m.simdOverride ? ` (RLK_SIMD=${m.simdOverride})` : ''}${m.torchIsa ? `, PyTorch's ATEN_CPU_CAPABILITY=${m.torchIsa}` : ''}`;
  return (
    `Machine: ${m.cpu} (${m.flags.filter((f) => f.startsWith('avx')).join(' ') || 'no AVX'}); rlkernels ISA path ${isa}; ` +
    `${cfg.threads} threads on both sides; Node ${m.node}; PyTorch: ${m.pythonNote}. ` +
    `Date: ${m.date.slice(0, 16).replace('T', ' ')} UTC. Load average ${m.loadavg.join(' / ')} at the start (a shared machine: figures vary run to run).`
  );
}

/** The whole report as markdown (the ratio table, then families that printed only their own tables). */
export function reportMarkdown(res, command) {
  const parts = [`${machineLine(res.machine, res.config)}\nCommand: \`${command}\`. Medians; "vs" columns are PyTorch time / rlkernels time (above 1: rlkernels is faster).`];
  parts.push(rowsTable(res.rows, { family: true }));
  for (const f of res.families) {
    if (f.skipped) parts.push(`${f.family}: skipped (${f.skipped}).`);
    else if (f.error) parts.push(`${f.family}: failed (${f.error}).`);
    else if (f.meta?.note) parts.push(`${f.family}: ${f.meta.note}.`);
    // A family's own `## ` headings would end this section early when RESULTS.md is rewritten.
    if (f.markdown) parts.push(`### ${f.family} (its own table)\n\n${f.markdown.replace(/^#{1,3} /gm, '#### ')}`);
  }
  return parts.join('\n\n');
}

async function main() {
  const argv = process.argv.slice(2);
  const cfg = benchConfig(argv);
  const onlyArg = argv.find((a) => a.startsWith('--only'));
  const only = onlyArg ? (onlyArg.includes('=') ? onlyArg.split('=')[1] : argv[argv.indexOf(onlyArg) + 1]).split(',') : argv.filter((a) => !a.startsWith('--') && !/^\d+$/.test(a));
  const res = await runBenchmarks({ ...cfg, only, onProgress: (f, label) => process.stderr.write(`[${(f * 100).toFixed(0).padStart(3)}%] ${label}\n`) });
  const command = `node bench/run.mjs ${argv.join(' ')}`.trim();
  if (argv.includes('--json')) {
    console.log(JSON.stringify(res));
  } else {
    console.log(`\n${reportMarkdown(res, command)}\n`);
  }
  if (!argv.includes('--no-write') && !cfg.tiny) writeResultsSection(cfg.quick ? 'All families, quick run (bench/run.mjs --quick)' : 'All families (bench/run.mjs)', reportMarkdown(res, command));
  return res.families.some((f) => f.error) ? 1 : 0;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = await main();
