// The command line (`npx rlkernels`, bin/rlkernels.mjs): doctor's fields, and
// bench --quick --json on tiny shapes giving well-formed results and writing
// its chart. Kept fast: tiny shapes, one family with PyTorch eager (when a
// Python with torch is there), no torch.compile (its warm-up compiles).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const BIN = join(__dirname, '..', 'bin', 'rlkernels.mjs');

function cli(args: string[], timeout = 240_000) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout, env: { ...process.env, RLK_POISON_ALLOC: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('rlkernels command line', () => {
  it('lists its commands and rejects an unknown one', () => {
    const help = cli(['--help']);
    expect(help.code).toBe(0);
    for (const c of ['doctor', 'bench', 'version']) expect(help.stdout).toContain(c);
    const bad = cli(['no-such-command']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/unknown command 'no-such-command'/);
  });

  it('doctor --json reports the binary, CPU path, threads, CUDA, the libtorch bridge and the bench Python', () => {
    const r = cli(['doctor', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout);
    expect(d.binary.loaded).toBe(true);
    expect(existsSync(d.binary.path)).toBe(true);
    expect(d.binary.kind).toMatch(/prebuilt|local build|RLK_NATIVE_PATH/);
    expect(['avx512', 'avx2', 'baseline']).toContain(d.cpu.isa);
    expect(['avx512', 'avx2', 'baseline']).toContain(d.cpu.best);
    expect(d.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(typeof d.cuda.compiled).toBe('boolean');
    expect(typeof d.cuda.available).toBe('boolean');
    expect(Array.isArray(d.cuda.devices)).toBe(true);
    // Every gap comes with what to do.
    if (!d.cuda.available) expect(d.cuda.reason.length > 0 && d.cuda.fix.length > 0).toBe(true);
    expect(['built', 'not built', 'stale', 'unreadable']).toContain(d.torchBridge.status);
    if (d.torchBridge.status === 'not built') expect(d.torchBridge.fix).toMatch(/npx rlkernels build-torch/);
    else if (d.torchBridge.status === 'built') expect(typeof d.torchBridge.torchVersion).toBe('string');
    expect(typeof d.python.note).toBe('string');
    // The text form names the same things.
    const t = cli(['doctor']);
    expect(t.code).toBe(0);
    for (const w of ['binary', 'cpu', 'cuda compiled', 'cuda devices', 'libtorch bridge', 'bench baseline']) expect(t.stdout).toContain(w);
    expect(cli(['doctor', '--bogus']).code).toBe(2);
  });

  it('doctor reads the libtorch bridge record the bridge build writes', async () => {
    // @ts-expect-error: a plain .mjs module without type declarations
    const { torchBridgeStatus } = await import('../bin/commands/doctor.mjs');
    const root = mkdtempSync(join(tmpdir(), 'rlk-doctor-'));
    try {
      expect(torchBridgeStatus(root).status).toBe('not built');
      const { mkdirSync, writeFileSync } = await import('node:fs');
      mkdirSync(join(root, 'build-torch'), { recursive: true });
      writeFileSync(join(root, 'build-torch', 'torch-build.json'), JSON.stringify({ torchVersion: '2.13.0', torchLibDir: root, cuda: null, builtAt: '2026-11-30T12:00:00Z' }));
      expect(torchBridgeStatus(root)).toMatchObject({ status: 'built', torchVersion: '2.13.0', torchLibDir: root, builtAt: '2026-11-30T12:00:00Z' });
      writeFileSync(join(root, 'build-torch', 'torch-build.json'), JSON.stringify({ torchVersion: '2.13.0', torchLibDir: join(root, 'gone') }));
      expect(torchBridgeStatus(root).status).toBe('stale');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('bench --quick --json on tiny shapes gives well-formed rows and writes the chart', () => {
    const out = mkdtempSync(join(tmpdir(), 'rlk-bench-'));
    try {
      const r = cli(['bench', '--quick', '--tiny', '--json', '--no-compile', '--only', 'kl_penalty,token_logprobs', '--out', out]);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout.trim().split('\n').pop()!);
      expect(j.machine.isa).toMatch(/avx512|avx2|baseline/);
      expect(j.machine.threads).toBe(2);
      expect(j.config.modes).toEqual(['eager']);
      expect(j.rows.length).toBeGreaterThanOrEqual(4);
      for (const row of j.rows) {
        expect(typeof row.family).toBe('string');
        expect(typeof row.op).toBe('string');
        expect(row.shape).toMatch(/^\[\d+(, \d+)*\]$/);
        expect(row.ms).toBeGreaterThan(0);
        // Eager PyTorch beside each row wherever a Python with torch was found.
        if (j.machine.torch) expect(row.eager).toBeGreaterThan(0);
        expect(row.compile).toBeUndefined();
      }
      expect(j.rows.some((row: { op: string }) => /overhead/.test(row.op))).toBe(true);
      const svg = readFileSync(join(out, 'chart.svg'), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg).toContain('rlkernels');
      expect((svg.match(/<rect /g) ?? []).length).toBeGreaterThan(j.rows.length);
      expect(JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')).rows.length).toBe(j.rows.length);
      expect(readFileSync(join(out, 'RESULTS.md'), 'utf8')).toMatch(/\| family \| op \|/);
      // The progress bar went to stderr.
      expect(r.stderr).toMatch(/\d+%/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('rewriting the all-families section keeps the sections after it (a family\'s own ## heading is demoted)', async () => {
    // @ts-expect-error: a plain .mjs module without type declarations
    const { reportMarkdown } = await import('../bench/run.mjs');
    // @ts-expect-error: a plain .mjs module without type declarations
    const { writeResultsSection } = await import('../bench/common.mjs');
    const dir = mkdtempSync(join(tmpdir(), 'rlk-results-'));
    try {
      const path = join(dir, 'RESULTS.md');
      const { writeFileSync } = await import('node:fs');
      writeFileSync(path, '# Benchmark results\n\n## All families (bench/run.mjs)\n\nold\n\n## Later section\n\nkept\n');
      const res = {
        machine: { isa: 'avx2', flags: ['avx2'], cpu: 'test cpu', node: 'v20', pythonNote: 'none', date: '2026-11-30T00:00:00Z', loadavg: [0, 0, 0] },
        config: { threads: 2 },
        rows: [],
        families: [{ family: 'linear_logprobs', markdown: '## Fused linear log-probs (CPU)\n\n| a |\n|---|\n| 1 |' }],
      };
      for (let i = 0; i < 2; i++) writeResultsSection('All families (bench/run.mjs)', reportMarkdown(res, 'node bench/run.mjs'), path);
      const text = readFileSync(path, 'utf8');
      expect(text.match(/^## Later section$/gm)).toHaveLength(1);
      expect(text.match(/^## All families/gm)).toHaveLength(1);
      expect(text).toContain('#### Fused linear log-probs (CPU)');
      expect(text).not.toMatch(/^## Fused linear/m);
      expect(text).not.toContain('\nold\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bench rejects bad options', () => {
    expect(cli(['bench', '--device', 'tpu']).code).toBe(2);
    expect(cli(['bench', '--threads', 'x']).code).toBe(2);
    expect(cli(['bench', '--frobnicate']).code).toBe(2);
  });
});
