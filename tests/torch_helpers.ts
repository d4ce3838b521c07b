// What the libtorch bridge tests share: whether torch is on this machine (then
// the bridge must be built: its tests never skip silently), and a python to
// make TorchScript files with.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe } from 'vitest';
import * as torch from '../src/torch.js';

export const ROOT = join(import.meta.dirname, '..');

/** RLK_PYTHON, else .venv/bin/python, when it imports torch; null otherwise. */
export const TORCH_PYTHON: string | null = (() => {
  const candidates = [process.env.RLK_PYTHON, join(ROOT, '.venv', 'bin', 'python')].filter((p): p is string => !!p && existsSync(p));
  for (const py of candidates) {
    if (spawnSync(py, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0) return py;
  }
  return null;
})();

export const BRIDGE = torch.bridgeStatus();

/**
 * describe() for bridge tests: runs where the bridge loads; where torch is present but the bridge is not
 * loadable the suite fails (see torch.test.ts); where neither is, it is skipped with the reason printed.
 */
export const describeBridge: typeof describe = (BRIDGE.loadable ? describe : describe.skip) as typeof describe;
if (!BRIDGE.loadable) console.log(`[rlkernels] libtorch bridge tests skipped: ${BRIDGE.problem}`);

/** Runs python code; returns stdout (throws with stderr on failure). */
export function python(code: string, args: string[] = []): string {
  if (!TORCH_PYTHON) throw new Error('no python with torch');
  // From a file: torch.jit.script reads the module's source.
  const file = join(mkdtempSync(join(tmpdir(), 'rlk-py-')), 'script.py');
  writeFileSync(file, code);
  const r = spawnSync(TORCH_PYTHON, [file, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}
