// The package as a user gets it: `npm pack`, install the tarball in a fresh
// project, import it, and see that the prebuilt binary loaded (no compile).
// Needs the prebuilds `npm test` makes (`npm run build` runs prebuildify).
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(__dirname, '..');
const temps: string[] = [];
afterAll(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});
function temp(): string {
  const d = mkdtempSync(join(tmpdir(), 'rlk-pkg-'));
  temps.push(d);
  return d;
}

// The GPU machines have no npm and no network (scripts/gpu/run.sh sets this).
const describePack = process.env.RLK_SKIP_PACK_TEST === '1' ? describe.skip : describe;
if (process.env.RLK_SKIP_PACK_TEST === '1') console.log('[rlkernels] packaging tests skipped: RLK_SKIP_PACK_TEST=1');

describePack('packaging', () => {
  const prebuilds = join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
  const havePrebuild = existsSync(prebuilds) && readdirSync(prebuilds).some((f) => f.endsWith('.node'));

  it('npm run build left a prebuilt binary under prebuilds/', () => {
    expect(havePrebuild).toBe(true);
  });

  it('the packed tarball installs and imports with no compile', () => {
    if (!havePrebuild) throw new Error('no prebuilt binary: run `npm run build` first');
    const packDir = temp();
    const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', packDir], { cwd: ROOT, encoding: 'utf8' });
    const tarball = join(packDir, out.trim().split('\n').pop()!);
    expect(existsSync(tarball)).toBe(true);
    const app = temp();
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'rlk-consumer', private: true, type: 'module' }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: app, stdio: 'pipe', timeout: 180_000 });
    const installed = join(app, 'node_modules', 'rlkernels');
    expect(existsSync(join(installed, 'build'))).toBe(false); // nothing was compiled
    const script = `import * as rlk from 'rlkernels';
const t = rlk.tensor([[1, 2], [3, 4]], { dtype: 'bfloat16' });
const info = rlk.buildInfo();
console.log(JSON.stringify({ binary: info.binary, cuda: info.cuda.compiled, values: Array.from(await t.toArray()) }));`;
    writeFileSync(join(app, 'check.mjs'), script);
    // RLK_CUDA_SIM=0: the consumer loads the shipped binary, not this checkout's emulated-CUDA test build.
    const res = JSON.parse(execFileSync(process.execPath, ['check.mjs'], { cwd: app, encoding: 'utf8', env: { ...process.env, RLK_CUDA_SIM: '0' } }));
    expect(res.binary).toContain(join('node_modules', 'rlkernels', 'prebuilds', `${process.platform}-${process.arch}`));
    expect(res.values).toEqual([1, 2, 3, 4]);
    // The prebuilt binary carries the CUDA code when this machine's build had nvcc.
    expect(typeof res.cuda).toBe('boolean');
  }, 240_000);

  it('a missing binary gives one error that lists what was tried and how to fix it', () => {
    const dir = temp();
    cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
    cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    let stderr = '';
    try {
      execFileSync(process.execPath, ['-e', "import('./dist/index.js').catch(e => { console.error(e.name + ': ' + e.message); process.exit(3); })"], {
        cwd: dir,
        encoding: 'utf8',
        stdio: 'pipe',
        env: { ...process.env, RLK_NATIVE_PATH: '', RLK_CUDA_SIM: '0' },
      });
    } catch (err) {
      stderr = (err as { stderr: string }).stderr;
      expect((err as { status: number }).status).toBe(3);
    }
    expect(stderr).toMatch(/^NativeLoadError: rlkernels: no native binary could be loaded/);
    expect(stderr).toMatch(/Tried:\n.*prebuilds.*no binary\n.*build.*no binary/);
    expect(stderr).toMatch(/Fix: .*npm run build/);
  });
});
