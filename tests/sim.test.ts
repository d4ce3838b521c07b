// The emulated CUDA device's own checks (native/sim, DESIGN 9): each
// deliberately broken kernel of native/sim/tests/broken.cu must be reported
// with its .cu line, block and thread, and never hang; the real kernels must
// run clean under AddressSanitizer and ThreadSanitizer. The drivers are
// built by `npm run build:sim` (build-sim/sim/).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const ASAN = join(ROOT, 'build-sim', 'sim', 'rlk_sim_asan');
const TSAN = join(ROOT, 'build-sim', 'sim', 'rlk_sim_tsan');
const BROKEN = join(ROOT, 'native', 'sim', 'tests', 'broken.cu');
const HAVE = existsSync(ASAN) && existsSync(TSAN);
if (!HAVE) console.log(`[rlkernels] emulated-device checks skipped: no sanitizer drivers in build-sim/sim (npm run build:sim)`);

/** Line of broken.cu tagged `EXPECT: <name>`. */
function expectedLine(name: string): number {
  const lines = readFileSync(BROKEN, 'utf8').split('\n');
  const i = lines.findIndex((l) => l.includes(`EXPECT: ${name}`) && !l.includes('is("'));
  if (i < 0) throw new Error(`no EXPECT: ${name} in broken.cu`);
  return i + 1;
}

function run(driver: string, arg: string, env: Record<string, string> = {}): { status: number | null; out: string } {
  const r = spawnSync(driver, [arg], {
    encoding: 'utf8',
    timeout: 590_000,
    env: {
      ...process.env,
      ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0',
      TSAN_OPTIONS: 'halt_on_error=1:exitcode=66:report_signal_unsafe=0',
      RLK_SIM_THREADS: '1',
      ...env,
    },
  });
  if (r.error) throw r.error;
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

/** The report names broken.cu:<line>, a block and a thread. */
function expectReport(out: string, name: string): void {
  const line = expectedLine(name);
  expect(out, out).toContain(`broken.cu:${line}`);
  expect(out, out).toMatch(/block \(\d+,\d+,\d+\)/);
  expect(out, out).toMatch(/thread \(\d+,\d+,\d+\)/);
}

describe.skipIf(!HAVE)('emulated CUDA device: misuse is reported, never hangs', () => {
  const own: Array<[string, RegExp]> = [
    ['sync-partial', /__syncthreads\(\) not reached by the whole block/],
    ['sync-two-places', /__syncthreads\(\) reached at two different places/],
    ['shfl-mask', /__shfl_down_sync with mask 0xfffffffe, which does not name the calling lane 0/],
    ['shfl-exited', /returned while lanes .* wait for it in __shfl_xor_sync/],
    ['vote-missing-lane', /__any_sync with mask 0xffffffff names lane\(s\) 16-31, which do not exist/],
    ['grid-sync', /grid\.sync\(\) outside a cooperative launch/],
  ];
  for (const [name, what] of own) {
    it(name, () => {
      const r = run(ASAN, name);
      expect(r.status, r.out).toBe(1);
      expect(r.out).toMatch(what);
      expectReport(r.out, name);
      expect(r.out).toContain('cudaErrorLaunchFailure');
    });
  }

  it('out-of-bounds global access (AddressSanitizer, exact-size device allocations)', () => {
    const r = run(ASAN, 'oob-global');
    expect(r.status, r.out).not.toBe(0);
    expect(r.out).toMatch(/AddressSanitizer: heap-buffer-overflow/);
    expectReport(r.out, 'oob-global');
  });

  it('out-of-bounds shared access (AddressSanitizer; guard bytes in the addon build)', () => {
    const r = run(ASAN, 'oob-shared');
    expect(r.status, r.out).not.toBe(0);
    expect(r.out).toMatch(/AddressSanitizer: heap-buffer-overflow/);
    expectReport(r.out, 'oob-shared');
    const t = run(TSAN, 'oob-shared');
    expect(t.out).toMatch(/out-of-bounds shared memory write: the __shared__ variable declared at .*broken\.cu:\d+ \(128 bytes\)/);
  });

  it('a data race on shared memory between barriers (ThreadSanitizer, fibers registered)', () => {
    const r = run(TSAN, 'race-shared');
    expect(r.status, r.out).toBe(66);
    expect(r.out).toMatch(/ThreadSanitizer: data race/);
    expectReport(r.out, 'race-shared');
  });

  it('the fixed kernel and a cooperative launch of several blocks are clean under both sanitizers', () => {
    for (const driver of [ASAN, TSAN]) {
      for (const name of ['fixed-shared', 'coop']) {
        const r = run(driver, name);
        expect(r.status, r.out).toBe(0);
        expect(r.out).toContain(`driver: ${name} -> cudaSuccess`);
      }
    }
  });
});

describe.skipIf(!HAVE)('emulated CUDA device: every kernel family runs clean under the sanitizers', () => {
  // RLK_SIM_SMS=1: occupancy-sized cooperative grids of a few blocks, so
  // small inputs reach the grid-stride loops.
  it('AddressSanitizer', { timeout: 600_000 }, () => {
    const r = run(ASAN, 'kernels', { RLK_SIM_SMS: '1' });
    expect(r.status, r.out).toBe(0);
    expect(r.out).toContain('driver: kernels clean');
  });
  it('ThreadSanitizer', { timeout: 600_000 }, () => {
    const r = run(TSAN, 'kernels', { RLK_SIM_SMS: '1' });
    expect(r.status, r.out).toBe(0);
    expect(r.out).toContain('driver: kernels clean');
  });
});
