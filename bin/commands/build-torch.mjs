// `rlkernels build-torch`: builds the libtorch bridge (rlkernels/torch,
// native/torch/) against the libtorch found here: the one inside a PyTorch
// >= 2.4 wheel (RLK_PYTHON, then .venv/bin/python, then python3) or a
// LibTorch folder named by LIBTORCH. Writes build-torch/Release/
// rlkernels_torch.node and, beside it, build-torch/torch-build.json (what it
// was built against; `rlkernels doctor` and the loader read it).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const summary = 'build the libtorch bridge (rlkernels/torch) against the local PyTorch or LIBTORCH';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OUT = join(ROOT, 'build-torch');
const MIN = [2, 4];

const PROBE = `
import json, os, sys
import torch
print(json.dumps({
  "version": torch.__version__,
  "prefix": torch.utils.cmake_prefix_path,
  "lib": os.path.join(os.path.dirname(torch.__file__), "lib"),
  "cuda": torch.version.cuda,
}))
`;

function versionOk(v) {
  const [a, b] = String(v).split('+')[0].split('.').map(Number);
  return a > MIN[0] || (a === MIN[0] && b >= MIN[1]);
}

function probePython(py) {
  const r = spawnSync(py, ['-c', PROBE], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || '').trim().split('\n').pop() };
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { error: 'unreadable output' };
  }
}

/** Where libtorch is: { version, prefix, lib, cuda, source } or { tried: [...] }. */
export function findTorch(env = process.env) {
  const tried = [];
  if (env.LIBTORCH) {
    const dir = resolve(env.LIBTORCH);
    const lib = join(dir, 'lib');
    const prefix = join(dir, 'share', 'cmake');
    if (!existsSync(join(lib, 'libtorch.so'))) return { tried: [`LIBTORCH=${dir}: no lib/libtorch.so`] };
    const vf = join(dir, 'build-version');
    const version = existsSync(vf) ? readFileSync(vf, 'utf8').trim() : 'unknown';
    return { version, prefix, lib, cuda: existsSync(join(lib, 'libtorch_cuda.so')) ? 'yes' : null, source: `LIBTORCH=${dir}` };
  }
  const candidates = [];
  if (env.RLK_PYTHON) candidates.push(env.RLK_PYTHON);
  const venv = join(ROOT, '.venv', 'bin', 'python');
  if (existsSync(venv)) candidates.push(venv);
  candidates.push('python3');
  for (const py of candidates) {
    const p = probePython(py);
    if (p.error) {
      tried.push(`${py}: ${p.error}`);
      continue;
    }
    if (!versionOk(p.version)) {
      tried.push(`${py}: torch ${p.version} is older than ${MIN.join('.')}`);
      if (py === env.RLK_PYTHON) break;
      continue;
    }
    return { ...p, source: py };
  }
  return { tried };
}

/** A folder holding node_api.h: node's own headers, else the node-api-headers package. */
function nodeIncludeDir() {
  const candidates = [join(dirname(dirname(process.execPath)), 'include', 'node')];
  try {
    candidates.push(createRequire(import.meta.url)('node-api-headers').include_dir);
  } catch {
    // not installed (a development dependency)
  }
  return candidates.find((d) => d && existsSync(join(d, 'node_api.h')));
}

function run(cmd, args, quiet) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: quiet ? ['ignore', 'pipe', 'pipe'] : 'inherit', encoding: 'utf8' });
  if (r.status !== 0 && quiet) process.stderr.write((r.stdout ?? '') + (r.stderr ?? ''));
  return r.status ?? 1;
}


async function run_impl(args) {
  const ifAvailable = args.includes('--if-available');
  const quiet = args.includes('--quiet');
  const jobsArg = args.find((a) => a.startsWith('--jobs='));
  const jobs = jobsArg ? Math.max(1, Number(jobsArg.slice(7)) || 1) : 1;
  if (args.includes('--help')) {
    console.log('usage: rlkernels build-torch [--if-available] [--jobs=N] [--quiet]\n' +
      '  finds torch through RLK_PYTHON, .venv/bin/python or python3 (PyTorch >= 2.4), or LIBTORCH=<LibTorch folder>\n' +
      '  --if-available  exit 0 (with a note) when no libtorch is found\n' +
      '  --jobs=N        parallel compile jobs (default 1: a bridge file takes ~1.5 GB to compile)');
    return 0;
  }
  const torch = findTorch();
  if (!torch.lib) {
    const msg = 'build-torch: no libtorch found. Tried:\n' + torch.tried.map((t) => `  ${t}`).join('\n') +
      '\nInstall PyTorch >= 2.4 (`bash scripts/setup-venv.sh` makes .venv with PyTorch 2.13 CPU), or set RLK_PYTHON to a python that has it, or LIBTORCH to a LibTorch folder.';
    if (ifAvailable) {
      console.log(msg + '\nbuild-torch: skipped (--if-available); the core package works without the bridge.');
      return 0;
    }
    console.error(msg);
    return 1;
  }
  console.log(`build-torch: torch ${torch.version} (${torch.source}), libraries in ${torch.lib}`);
  mkdirSync(OUT, { recursive: true });
  const inc = nodeIncludeDir();
  if (!inc) {
    console.error('build-torch: Node-API headers not found (node_api.h next to node, or the node-api-headers package)');
    return 1;
  }
  // Plain CMake (cmake-js is a development dependency, absent where users
  // install the package): an addon on Linux needs only the Node-API headers.
  const cache = join(OUT, 'CMakeCache.txt');
  const prior = existsSync(cache) ? /^CMAKE_GENERATOR:INTERNAL=(.*)$/m.exec(readFileSync(cache, 'utf8'))?.[1] : undefined;
  const generator = prior ?? (spawnSync('ninja', ['--version']).status === 0 ? 'Ninja' : 'Unix Makefiles');
  let code = run('cmake', [
    '-S', join(ROOT, 'native', 'torch'), '-B', OUT, '-G', generator, '-DCMAKE_BUILD_TYPE=Release',
    `-DCMAKE_JS_INC=${inc}`, `-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=${join(OUT, 'Release')}`, '-DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION',
    `-DRLK_TORCH_PREFIX=${torch.prefix}`, `-DRLK_TORCH_LIB=${torch.lib}`,
    `-DRLK_NAPI_INC=${dirname(createRequire(import.meta.url).resolve('node-addon-api/package.json'))}`,
  ], quiet);
  if (code === 0) code = run('cmake', ['--build', OUT, '--parallel', String(jobs)], quiet);
  if (code !== 0) {
    console.error('build-torch: the build failed (see above)');
    return code;
  }
  const info = {
    torchVersion: torch.version,
    torchLibDir: torch.lib,
    torchPrefix: torch.prefix,
    cuda: torch.cuda ?? null,
    cudaKernels: false,
    source: torch.source,
    bridge: join(OUT, 'Release', 'rlkernels_torch.node'),
    builtAt: new Date().toISOString(),
  };
  writeFileSync(join(OUT, 'torch-build.json'), JSON.stringify(info, null, 2) + '\n');
  console.log(`build-torch: wrote ${info.bridge} and ${join(OUT, 'torch-build.json')}`);
  return 0;
}

export { run_impl as run };
