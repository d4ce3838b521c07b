// Runs every bench/*.bench.mjs in turn (each prints its own markdown table,
// PyTorch side by side where /usr/bin/python3 has torch). Arguments pass
// through (e.g. --gpu). `npm run bench` builds first.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const files = readdirSync(here)
  .filter((f) => f.endsWith('.bench.mjs'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
let failed = 0;
for (const f of files) {
  console.log(`\n### ${f}\n`);
  const r = spawnSync(process.execPath, [join(here, f), ...process.argv.slice(2).filter((a) => a.startsWith('--'))], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`${f} exited with ${r.status}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
