// `rlkernels doctor`: what loaded and from where, the CPU path, CUDA and the
// driver, the libtorch bridge, the Python the benchmarks use; for each gap,
// what to do. `--json` prints the same as one object.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const summary = 'what loaded, CPU path, CUDA, the libtorch bridge, and what to do about each gap [--json]';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function cpuInfo() {
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const model = /model name\s*:\s*(.+)/.exec(text)?.[1].trim() ?? 'unknown';
    const flags = (/flags\s*:\s*(.+)/.exec(text)?.[1] ?? '').split(/\s+/);
    return { model, flags };
  } catch {
    return { model: 'unknown', flags: [] };
  }
}

/** The widest path this CPU allows, by the rule of native/include/rlk/cpu_simd.h. */
function bestIsa(flags) {
  const has = (f) => flags.includes(f);
  if (has('avx512f') && has('avx512bw') && has('avx512dq')) return 'avx512';
  if (has('avx2') && has('fma') && has('f16c')) return 'avx2';
  return 'baseline';
}

/** The libtorch bridge's build record (written by `rlkernels build-torch`). */
export function torchBridgeStatus(root = ROOT) {
  const file = join(root, 'build-torch', 'torch-build.json');
  if (!existsSync(file)) {
    return { status: 'not built', file, fix: 'not built: run npx rlkernels build-torch (needs PyTorch >= 2.4 or a LibTorch folder named by LIBTORCH)' };
  }
  try {
    const j = JSON.parse(readFileSync(file, 'utf8'));
    const out = { status: 'built', file, torchVersion: j.torchVersion ?? null, torchLibDir: j.torchLibDir ?? null, cuda: j.cuda ?? null, builtAt: j.builtAt ?? null };
    if (out.torchLibDir && !existsSync(out.torchLibDir)) {
      return { ...out, status: 'stale', fix: `the libtorch it was built against (${out.torchLibDir}) is gone: run npx rlkernels build-torch again` };
    }
    return out;
  } catch (e) {
    return { status: 'unreadable', file, fix: `${file} is not valid JSON (${e.message}): run npx rlkernels build-torch again` };
  }
}

/** Everything doctor reports, as data. */
export async function diagnose() {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const { model, flags } = cpuInfo();
  const report = {
    package: { name: pkg.name, version: pkg.version, root: ROOT },
    node: { version: process.version, napi: Number(process.versions.napi) },
    binary: { loaded: false, path: null, kind: null },
    cpu: { model, flags: flags.filter((f) => /^avx512|^avx2$|^fma$|^f16c$|^amx/.test(f)).sort(), best: bestIsa(flags), isa: null, override: process.env.RLK_SIMD ?? null, threads: null, threadsFrom: null },
    cuda: null,
    torchBridge: torchBridgeStatus(),
    python: null,
  };
  if (!existsSync(join(ROOT, 'dist', 'index.js'))) {
    report.binary.error = 'dist/index.js is missing';
    report.binary.fix = 'the TypeScript is not built: run npm run build (or npm run build:ts) in the package folder';
  } else {
    try {
      const rlk = await import(pathToFileURL(join(ROOT, 'dist', 'index.js')).href);
      const info = rlk.buildInfo();
      report.binary = {
        loaded: true,
        path: info.binary,
        kind: process.env.RLK_NATIVE_PATH ? 'RLK_NATIVE_PATH' : info.binary.includes(`${join('prebuilds', '')}`) ? 'prebuilt (prebuilds/)' : 'local build (build/Release)',
        napi: info.napiVersion,
      };
      report.cpu.isa = info.cpu.simd;
      report.cpu.threads = info.cpu.threads;
      report.cpu.threadsFrom = process.env.RLK_NUM_THREADS ? 'RLK_NUM_THREADS' : 'core count';
      if (report.cpu.isa !== report.cpu.best) {
        report.cpu.fix = report.cpu.override
          ? `RLK_SIMD=${report.cpu.override} lowers the path from ${report.cpu.best}: unset it for full speed`
          : `the CPU allows ${report.cpu.best} but ${report.cpu.isa} was chosen: report this`;
      } else if (report.cpu.isa === 'baseline') {
        report.cpu.fix = 'no AVX2/FMA: the scalar path runs (correct, several times slower)';
      }
      const c = info.cuda;
      report.cuda = { compiled: c.compiled, archs: c.archs || null, runtime: c.runtimeVersion, driver: c.driverVersion, devices: c.devices, deviceCount: c.deviceCount, available: c.available, reason: c.reason };
      if (!c.compiled) report.cuda.fix = 'this binary has no CUDA code: build on a machine with nvcc (CUDA >= 12) with npm run build; the CPU kernels work as they are';
      else if (!c.available) {
        report.cuda.fix = /driver/i.test(c.reason ?? '')
          ? 'install an NVIDIA driver new enough for the CUDA runtime above (nvidia-smi should list the GPU)'
          : 'no usable GPU found: check nvidia-smi and CUDA_VISIBLE_DEVICES; the CPU kernels work without one';
      }
    } catch (e) {
      report.binary.error = e.message.split('\n')[0];
      report.binary.detail = e.message;
      report.binary.fix = 'no native binary loaded: npm run build in the package folder (cmake-js, CMake >= 3.18, g++), or npm run build:gyp for a CPU-only build';
    }
  }
  try {
    const { findPython } = await import(pathToFileURL(join(ROOT, 'bench', 'common.mjs')).href);
    const py = findPython();
    report.python = { python: py.python, torch: py.torch, compile: py.compile, note: py.note };
    if (!py.torch || Number(py.torch.split('.')[0]) < 2) report.python.fix = 'benchmarks compare against PyTorch >= 2 (eager and torch.compile): bash scripts/setup-venv.sh, or set RLK_BENCH_PYTHON';
    else if (!py.compile) report.python.fix = 'torch.compile needs a C++ compiler (g++) on PATH';
  } catch (e) {
    report.python = { python: null, torch: null, compile: false, note: `bench/ not found (${e.message.split('\n')[0]})` };
  }
  return report;
}

function text(r) {
  const lines = [];
  const line = (ok, what, detail, fix) => {
    lines.push(`${ok ? 'ok ' : '-- '} ${what.padEnd(16)} ${detail}`);
    if (fix) lines.push(`    ${''.padEnd(16)} fix: ${fix}`);
  };
  line(true, 'package', `${r.package.name} ${r.package.version} at ${r.package.root}; Node ${r.node.version}, N-API ${r.node.napi}`);
  line(r.binary.loaded, 'binary', r.binary.loaded ? `${r.binary.path} (${r.binary.kind})` : `not loaded: ${r.binary.error}`, r.binary.fix);
  if (r.binary.loaded) {
    line(!r.cpu.fix || r.cpu.isa === r.cpu.best, 'cpu', `${r.cpu.model}; ISA path ${r.cpu.isa}${r.cpu.override ? ` (RLK_SIMD=${r.cpu.override})` : ''}, CPU allows ${r.cpu.best} [${r.cpu.flags.join(' ')}]; ${r.cpu.threads} threads (${r.cpu.threadsFrom}; rlk.setNumThreads or RLK_NUM_THREADS)`, r.cpu.fix);
    const c = r.cuda;
    line(c.compiled, 'cuda compiled', c.compiled ? `yes: archs ${c.archs}, runtime ${c.runtime}` : 'no', c.compiled ? null : c.fix);
    line(c.available, 'cuda devices', c.available ? `${c.deviceCount}: ${c.devices.join(', ')}; driver ${c.driver}` : `none: ${c.reason}${c.driver ? ` (driver ${c.driver})` : ''}`, c.compiled ? c.fix : null);
  }
  const t = r.torchBridge;
  line(t.status === 'built', 'libtorch bridge', t.status === 'built' ? `built against torch ${t.torchVersion} (${t.torchLibDir}), CUDA ${t.cuda ?? 'none'}, at ${t.builtAt}` : t.status, t.fix);
  const p = r.python;
  line(Boolean(p?.torch) && !p?.fix, 'bench baseline', p?.note ?? 'unknown', p?.fix);
  return lines.join('\n');
}

export async function run(args) {
  const unknown = args.filter((a) => a !== '--json');
  if (unknown.length) {
    console.error(`rlkernels doctor: unknown option '${unknown[0]}' (doctor [--json])`);
    return 2;
  }
  const r = await diagnose();
  console.log(args.includes('--json') ? JSON.stringify(r, null, 2) : text(r));
  return r.binary.loaded ? 0 : 1;
}
