// Build facts, threads and the CUDA namespace.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkNumber, cudaUnavailableReason, parseDevice } from './checks.js';
import { PACKAGE_ROOT, native, nativePath } from './native.js';
import type { BuildInfo, Device } from './types.js';

const VERSION: string = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

function linearLogprobsCudaReason(compiled: boolean): string | null {
  if (!compiled) return 'this binary was built without CUDA';
  const why = (native as unknown as { linearLogprobsCudaStatus?: () => string }).linearLogprobsCudaStatus?.() ?? 'this binary predates the CUDA linear log-probs';
  return why === '' ? null : why;
}

/** What the loaded binary holds and what it found: CUDA compiled, archs, runtime and driver versions, and why no GPU is usable. */
export function buildInfo(): BuildInfo {
  const n = native.buildInfo();
  const reason = cudaUnavailableReason();
  return {
    version: VERSION,
    binary: nativePath,
    napiVersion: n.napiVersion,
    cpu: { simd: n.cpuSimd, threads: n.threads },
    cuda: {
      compiled: n.cudaCompiled,
      archs: n.cudaArchs,
      emulated: n.cudaArchs.startsWith('emulated'),
      runtimeVersion: cudaVersion(n.cudaRuntimeVersion),
      driverVersion: cudaVersion(n.cudaDriverVersion),
      deviceCount: n.cudaDeviceCount,
      devices: n.cudaDevices,
      available: reason === null,
      reason,
      linearLogprobs: linearLogprobsCudaReason(n.cudaCompiled),
    },
  };
}

/** Threads used by CPU kernels. Defaults to the RLK_NUM_THREADS environment variable, else the core count. */
export function setNumThreads(threads: number): void {
  native.setNumThreads(checkNumber('setNumThreads', 'threads', threads, { integer: true, min: 1, max: 1024 }));
}

export function getNumThreads(): number {
  return native.getNumThreads();
}

export const cuda = {
  /** True when a CUDA device can be used. */
  isAvailable(): boolean {
    return cudaUnavailableReason() === null;
  },
  /** Usable CUDA devices (0 when none). */
  deviceCount(): number {
    return cudaUnavailableReason() === null ? native.buildInfo().cudaDeviceCount : 0;
  },
  /** Waits for the device's queued work. Defaults to `cuda:0`. */
  synchronize(device: Device = 'cuda'): void {
    native.cudaSynchronize(parseDevice('cuda.synchronize', 'device', device));
  },
  /** Returns the caching allocator's free blocks to the driver. Defaults to `cuda:0`. */
  emptyCache(device: Device = 'cuda'): void {
    native.cudaEmptyCache(parseDevice('cuda.emptyCache', 'device', device));
  },
};
