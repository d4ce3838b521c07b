// Where the libtorch bridge is and whether it can load, without loading it
// (nor libtorch): what `rlkernels doctor` and the loader in torch.ts ask.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PACKAGE_ROOT } from './native.js';

/** What `npx rlkernels build-torch` records beside the bridge (build-torch/torch-build.json). */
export interface TorchBuildRecord {
  torchVersion: string;
  torchLibDir: string;
  torchPrefix?: string;
  /** torch's CUDA version (`torch.version.cuda`), or null for a CPU build of torch. */
  cuda: string | null;
  /** Whether the bridge itself carries CUDA kernels. */
  cudaKernels?: boolean;
  builtAt: string;
  source?: string;
  bridge?: string;
}

export interface BridgeStatus {
  /** The bridge binary exists. */
  built: boolean;
  /** Built and nothing stands in the way of loading it (it has not been loaded to find out). */
  loadable: boolean;
  /** Why it cannot load, with what to do; null when it can. */
  problem: string | null;
  /** Path of the bridge binary and of its build record. */
  path: string;
  recordPath: string;
  /** The build record, when there is one. */
  record: TorchBuildRecord | null;
  /** The torch version now found in the recorded library folder (null when none is). */
  torchVersionFound: string | null;
}

/** The bridge's build folder: `RLK_TORCH_BRIDGE_DIR`, else `build-torch/` in the package. */
export function bridgeDir(): string {
  return process.env.RLK_TORCH_BRIDGE_DIR || join(PACKAGE_ROOT, 'build-torch');
}

const HOW_TO_BUILD =
  'Build it with `npx rlkernels build-torch` (it needs PyTorch >= 2.4: `bash scripts/setup-venv.sh` makes .venv with ' +
  'PyTorch 2.13 CPU, or set RLK_PYTHON to a python that has torch, or LIBTORCH to a LibTorch folder). ' +
  "The core API ('rlkernels') works without it.";

/** The torch version in a libtorch folder: the wheel's torch/version.py or a LibTorch folder's build-version. */
export function torchVersionAt(libDir: string): string | null {
  const root = dirname(libDir);
  const py = join(root, 'version.py');
  if (existsSync(py)) {
    const m = /^__version__\s*=\s*['"]([^'"]+)['"]/m.exec(readFileSync(py, 'utf8'));
    if (m) return m[1];
  }
  const bv = join(root, 'build-version');
  if (existsSync(bv)) return readFileSync(bv, 'utf8').trim();
  return existsSync(join(libDir, 'libtorch.so')) ? 'unknown' : null;
}

/** Where the bridge stands, read from files only: never loads libtorch. */
export function bridgeStatus(): BridgeStatus {
  const dir = bridgeDir();
  const path = join(dir, 'Release', 'rlkernels_torch.node');
  const recordPath = join(dir, 'torch-build.json');
  const built = existsSync(path);
  let record: TorchBuildRecord | null = null;
  let problem: string | null = null;
  let found: string | null = null;
  if (existsSync(recordPath)) {
    try {
      record = JSON.parse(readFileSync(recordPath, 'utf8')) as TorchBuildRecord;
    } catch {
      problem = `rlkernels/torch: the build record ${recordPath} is unreadable. ${HOW_TO_BUILD}`;
    }
  }
  if (!built) {
    problem = `rlkernels/torch: the libtorch bridge is not built (looked for ${path}). ${HOW_TO_BUILD}`;
  } else if (!problem && !record) {
    problem = `rlkernels/torch: the bridge at ${path} has no build record (${recordPath}), so the torch it was built against is unknown. ${HOW_TO_BUILD}`;
  } else if (record && !problem) {
    found = torchVersionAt(record.torchLibDir);
    if (found === null) {
      problem =
        `rlkernels/torch: the bridge was built against torch ${record.torchVersion} in ${record.torchLibDir}, which is no longer there. ` +
        `Rebuild it against the torch you have now. ${HOW_TO_BUILD}`;
    } else if (found !== 'unknown' && found !== record.torchVersion) {
      problem =
        `rlkernels/torch: the bridge was built against torch ${record.torchVersion}, but ${record.torchLibDir} now holds torch ${found}; ` +
        `loading it there could crash the process, so it is refused. Rebuild it: ${HOW_TO_BUILD}`;
    }
  }
  return { built, loadable: problem === null, problem, path, recordPath, record, torchVersionFound: found };
}
