// examples/grpo-keychain --world-size 2: two data-parallel ranks (cross-rank
// advantages, global counts, averaged gradients) sample the same rollouts as
// one process, so the first steps' reward curve is the same, bitwise (the
// gradients differ only in float summation order, which takes tens of steps
// to flip a sampled token).
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import * as torch from '../src/torch.js';
import { ROOT, describeBridge } from './torch_helpers.js';

const hasGloo = (() => {
  try {
    return torch.distributed.availableBackends().includes('gloo');
  } catch {
    return false;
  }
})();

describeBridge('examples/grpo-keychain --world-size', () => {
  it.skipIf(!hasGloo)('2 processes give the reward curve of one process on the same seed', () => {
    const seed = process.env.RLK_SEED ? Number(process.env.RLK_SEED) : 1;
    const out = mkdtempSync(join(tmpdir(), 'rlk-grpo-dp-'));
    // Groups of 4 in mini-batches of 12 rows split 6 + 6: a group straddles the ranks in every mini-batch.
    const args = ['--steps', '12', '--seed', String(seed), '--max-chain', '1', '--epochs', '2', '--prompts', '6', '--group', '4', '--minibatches', '2', '--out', out, '--quiet'];
    const run = (extra: string[]) => {
      const r = spawnSync(process.execPath, [join(ROOT, 'examples', 'grpo-keychain', 'train.mjs'), ...args, ...extra], {
        encoding: 'utf8', cwd: ROOT, timeout: 120_000, env: { ...process.env, GRPO_REWARDS: '1' },
      });
      expect(r.status, `exit ${r.status} (seed ${seed}) ${extra.join(' ')}: ${r.stderr}`).toBe(0);
      return JSON.parse(r.stdout.trim().split('\n').pop()!);
    };
    const one = run([]);
    const two = run(['--world-size', '2']);
    expect(two.worldSize).toBe(2);
    expect(one.rewards.length).toBe(12);
    expect(two.rewards, `seed ${seed}`).toEqual(one.rewards);
  }, 240_000);
});
