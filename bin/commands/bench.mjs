// `rlkernels bench`: the side-by-side benchmarks (bench/run.mjs) against
// PyTorch eager and torch.compile of the same formulas, same thread count,
// with a progress bar, the ratio table, and a chart (SVG) of time per op.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const summary = 'benchmark against PyTorch eager and torch.compile: bench [--device cpu|cuda] [--quick] [--json] [--out DIR]';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const USAGE = `usage: rlkernels bench [--device cpu|cuda] [--quick] [--json] [--out DIR] [--threads N] [--only family,...] [--no-compile] [--no-torch]

  --quick       small shapes and fewer runs (about two minutes with torch.compile)
  --json        print the results as one JSON object instead of the table
  --out DIR     where results.json, RESULTS.md and chart.svg go (default ./rlkernels-bench)
  --threads N   threads on both sides (default 2)
  --no-compile  skip the torch.compile column (its warm-up compiles each shape)
  --no-torch    rlkernels alone
PyTorch comes from RLK_BENCH_PYTHON, else the package's .venv/bin/python, else /usr/bin/python3.`;

function parse(args) {
  const o = { device: 'cpu', quick: false, tiny: false, json: false, out: 'rlkernels-bench', threads: 2, only: [], modes: ['eager', 'compile'] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const [k, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? args[++i];
    if (k === '--device') o.device = value();
    else if (k === '--quick') o.quick = true;
    else if (k === '--tiny') o.tiny = o.quick = true;
    else if (k === '--json') o.json = true;
    else if (k === '--out') o.out = value();
    else if (k === '--threads') o.threads = Number(value());
    else if (k === '--only') o.only = value().split(',');
    else if (k === '--no-compile') o.modes = o.modes.filter((m) => m !== 'compile');
    else if (k === '--no-torch') o.modes = [];
    else if (k === '--help' || k === '-h') o.help = true;
    else throw new Error(`unknown option '${a}'`);
  }
  if (!['cpu', 'cuda'].includes(o.device)) throw new Error(`--device must be cpu or cuda, got '${o.device}'`);
  if (!Number.isInteger(o.threads) || o.threads < 1) throw new Error(`--threads must be a positive integer, got '${o.threads}'`);
  if (o.out === undefined || o.out === '') throw new Error('--out needs a directory');
  return o;
}

/** A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise. */
function progressBar() {
  const tty = process.stderr.isTTY;
  let lastTenth = -1;
  const start = Date.now();
  return {
    update(f, label) {
      const pct = Math.round(f * 100);
      const secs = ((Date.now() - start) / 1000).toFixed(0);
      if (tty) {
        const w = 30;
        const filled = Math.round(f * w);
        const line = `[${'#'.repeat(filled)}${'.'.repeat(w - filled)}] ${String(pct).padStart(3)}% ${secs}s ${label}`;
        process.stderr.write(`\r${line.slice(0, (process.stderr.columns || 100) - 1).padEnd((process.stderr.columns || 100) - 1)}`);
      } else if (Math.floor(f * 10) > lastTenth) {
        lastTenth = Math.floor(f * 10);
        process.stderr.write(`[${String(pct).padStart(3)}%] ${secs}s ${label}\n`);
      }
    },
    done() {
      if (tty) process.stderr.write('\n');
    },
  };
}

export async function run(args) {
  let o;
  try {
    o = parse(args);
  } catch (e) {
    console.error(`rlkernels bench: ${e.message}\n${USAGE}`);
    return 2;
  }
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  let rlk;
  try {
    rlk = await import(pathToFileURL(join(ROOT, 'dist', 'index.js')).href);
  } catch (e) {
    console.error(`rlkernels bench: the package could not be loaded (${e.message.split('\n')[0]}). Run \`npx rlkernels doctor\`.`);
    return 1;
  }
  if (o.device === 'cuda' && !rlk.cuda.isAvailable()) {
    console.error(`rlkernels bench: --device cuda, but no usable GPU: ${rlk.buildInfo().cuda.reason}. Run \`npx rlkernels doctor\` for what to do.`);
    return 2;
  }
  const { runBenchmarks, reportMarkdown, machineLine } = await import(pathToFileURL(join(ROOT, 'bench', 'run.mjs')).href);
  const { chartSvg } = await import(pathToFileURL(join(ROOT, 'bench', 'chart.mjs')).href);
  const bar = progressBar();
  const res = await runBenchmarks({ ...o, onProgress: (f, label) => bar.update(f, label) });
  bar.done();
  const command = `npx rlkernels bench ${args.join(' ')}`.trim();
  const outDir = resolve(o.out);
  mkdirSync(outDir, { recursive: true });
  const title = `rlkernels vs PyTorch, ${res.machine.cpu}, ${res.machine.isa} path, ${o.threads} threads (${res.machine.date.slice(0, 10)})`;
  const files = { json: join(outDir, 'results.json'), markdown: join(outDir, 'RESULTS.md'), chart: join(outDir, 'chart.svg') };
  writeFileSync(files.json, JSON.stringify(res, null, 2));
  writeFileSync(files.markdown, `# rlkernels benchmark\n\n${reportMarkdown(res, command)}\n`);
  writeFileSync(files.chart, chartSvg(res.rows, title));
  if (o.json) {
    console.log(JSON.stringify({ ...res, files }));
  } else {
    console.log(`\n${reportMarkdown(res, command)}\n`);
    console.log(`Wrote ${files.chart} (chart), ${files.markdown} and ${files.json}.`);
    if (!res.machine.torch) console.log(`No PyTorch comparison: ${machineLine(res.machine, res.config)}`);
  }
  return res.families.some((f) => f.error) ? 1 : 0;
}
