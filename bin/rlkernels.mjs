#!/usr/bin/env node
// `npx rlkernels <command>`: each command is a module in bin/commands/ that
// exports `run(args: string[]): Promise<number>` (the exit code) and `summary`.
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const dir = join(dirname(fileURLToPath(import.meta.url)), 'commands');
const commands = readdirSync(dir).filter((f) => f.endsWith('.mjs')).map((f) => f.slice(0, -4)).sort();
const [name, ...args] = process.argv.slice(2);

async function usage(code) {
  const lines = ['usage: rlkernels <command> [options]', '', 'commands:'];
  for (const c of commands) {
    const mod = await import(pathToFileURL(join(dir, `${c}.mjs`)).href);
    lines.push(`  ${c.padEnd(12)} ${mod.summary ?? ''}`);
  }
  (code ? console.error : console.log)(lines.join('\n'));
  return code;
}

let code;
if (!name || name === '--help' || name === '-h' || name === 'help') code = await usage(name ? 0 : 1);
else if (!commands.includes(name)) {
  console.error(`rlkernels: unknown command '${name}'`);
  code = await usage(1);
} else {
  const mod = await import(pathToFileURL(join(dir, `${name}.mjs`)).href);
  code = await mod.run(args);
}
process.exitCode = code;
