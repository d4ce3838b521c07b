// Loads the core addon once. node-gyp-build looks in prebuilds/<platform>-<arch>/
// and build/Release; when nothing loads, one error says what was tried and how
// to fix it, rather than a bare dlopen message.
import { createRequire } from 'node:module';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DisposedError, NativeLoadError } from './errors.js';

const require = createRequire(import.meta.url);
export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The tensor object the addon hands out; only this package touches it. */
export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: number;
  readonly device: number;
  readonly disposed: boolean;
  dispose(): void;
  read(): ArrayBuffer;
  readAsync(): Promise<ArrayBuffer>;
  to(dtype: number, device: number): NativeTensor;
  reshape(shape: readonly number[]): NativeTensor;
}

export interface NativeBuildInfo {
  cudaCompiled: boolean;
  cudaArchs: string;
  cudaRuntimeVersion: number;
  cudaDriverVersion: number;
  cudaDeviceCount: number;
  cudaError: string;
  cudaDevices: string[];
  threads: number;
  napiVersion: number;
  cpuSimd: 'avx512' | 'avx2' | 'baseline';
}

export interface NativeCore {
  fromData(shape: readonly number[], dtype: number, device: number, data: ArrayBufferView): NativeTensor;
  empty(shape: readonly number[], dtype: number, device: number): NativeTensor;
  full(shape: readonly number[], dtype: number, device: number, value: number): NativeTensor;
  buildInfo(): NativeBuildInfo;
  memory(): {
    cpu: { tensors: number; bytes: number };
    cuda: Array<{ device: string; tensors: number; bytes: number; allocatedBytes: number; reservedBytes: number; mallocs: number; reuses: number }>;
  };
  setNumThreads(n: number): void;
  getNumThreads(): number;
  cudaSynchronize(device: number): void;
  cudaEmptyCache(device: number): void;
  setDisposedErrorClass(ctor: new (message: string) => Error): void;
}

function describeCandidates(): string {
  const lines: string[] = [];
  for (const dir of [join(PACKAGE_ROOT, 'prebuilds', `${process.platform}-${process.arch}`), join(PACKAGE_ROOT, 'build', 'Release')]) {
    const found = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.node')) : [];
    lines.push(`  ${dir}: ${found.length ? found.join(', ') : 'no binary'}`);
  }
  return lines.join('\n');
}

function load(): { core: NativeCore; path: string } {
  // RLK_NATIVE_PATH names a binary explicitly (a second build tree, a debug build).
  const explicit = process.env.RLK_NATIVE_PATH;
  if (explicit) {
    try {
      return { core: require(explicit) as NativeCore, path: explicit };
    } catch (err) {
      throw new NativeLoadError(`rlkernels: RLK_NATIVE_PATH=${explicit} could not be loaded: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
  // RLK_CUDA_SIM=1: the test build whose `cuda` device is emulated on the CPU
  // (native/sim, DESIGN 9), built by `npm run build:sim` into build-sim/.
  if (process.env.RLK_CUDA_SIM === '1') {
    const path = join(PACKAGE_ROOT, 'build-sim', 'Release', 'rlkernels.node');
    try {
      return { core: require(path) as NativeCore, path };
    } catch (err) {
      throw new NativeLoadError(
        `rlkernels: RLK_CUDA_SIM=1 asks for the emulated-CUDA build, but ${path} could not be loaded ` +
          `(build it with \`npm run build:sim\`): ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`,
        { cause: err },
      );
    }
  }
  const nodeGypBuild = require('node-gyp-build') as { (dir: string): unknown; resolve(dir: string): string };
  try {
    const path = nodeGypBuild.resolve(PACKAGE_ROOT);
    const core = nodeGypBuild(PACKAGE_ROOT) as NativeCore;
    return { core, path };
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new NativeLoadError(
      `rlkernels: no native binary could be loaded for ${process.platform}-${process.arch}, Node ${process.version} (N-API ${process.versions.napi}).\n` +
        `Tried:\n${describeCandidates()}\n` +
        `Loader said: ${reason.split('\n')[0]}\n` +
        `Fix: prebuilt binaries ship for linux-x64 (glibc); elsewhere build from source in the package folder with ` +
        `\`npm run build\` (cmake-js, CMake >= 3.18, a C++17 compiler, and nvcc for CUDA) or \`npm run build:gyp\` (CPU only, node-gyp).`,
      { cause: err },
    );
  }
}

const loaded = load();
/** The addon's functions. Kernel families add theirs and view this with their own types. */
export const native: NativeCore = loaded.core;
export const nativePath: string = loaded.path;
native.setDisposedErrorClass(DisposedError);
