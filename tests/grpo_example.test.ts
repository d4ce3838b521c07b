// The grpo-keychain example learns: a short seeded run of the Node GRPO
// trainer (TorchScript policy through rlkernels/torch, this package's
// log-probs, advantages and objective) must raise the mean reward clearly
// above where it started and above chance.
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { ROOT, describeBridge } from './torch_helpers.js';

describeBridge('examples/grpo-keychain', () => {
  it('a short seeded run raises the reward from chance', () => {
    const seed = process.env.RLK_SEED ? Number(process.env.RLK_SEED) : 1;
    const out = mkdtempSync(join(tmpdir(), 'rlk-grpo-'));
    // One chain link (the curriculum's first stage) keeps the run short on a loaded 2-core machine.
    const args = ['--steps', '50', '--seed', String(seed), '--max-chain', '1', '--epochs', '1', '--lr', '3e-3', '--out', out];
    const r = spawnSync(process.execPath, [join(ROOT, 'examples', 'grpo-keychain', 'train.mjs'), ...args], { encoding: 'utf8', cwd: ROOT });
    const lines = r.stdout.trim().split('\n');
    expect(r.status, `exit ${r.status} (seed ${seed}): ${r.stderr}`).toBe(0);
    expect(lines.some((l) => /^step +\d+\/50 +reward [\d.]+ +loss -?[\d.]+ +kl .* +clip [\d.]+ +tok\/s \d+/.test(l))).toBe(true);
    const s = JSON.parse(lines[lines.length - 1]);
    expect(s.steps).toBe(50);
    const msg = `seed ${seed}: rewardStart ${s.rewardStart}, rewardEnd ${s.rewardEnd}, chance ${s.chance}`;
    expect(s.rewardEnd, msg).toBeGreaterThan(s.rewardStart + 0.08);
    expect(s.rewardEnd, msg).toBeGreaterThan(3 * s.chance);
    expect(s.chart).toMatch(/\.svg$/);
  });
});
