// `rlkernels version`: the package version and the addon's build summary.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const summary = 'print the package version';

export async function run() {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  console.log(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version);
  return 0;
}
