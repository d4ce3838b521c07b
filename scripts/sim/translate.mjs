#!/usr/bin/env node
// Turns a CUDA source (native/cuda/X.cu) into a C++ translation unit for g++
// and the emulated device (native/sim, DESIGN 9). Only what g++ cannot parse
// changes, on the same lines (`#line` keeps every diagnostic, __FILE__ and
// __LINE__ on the .cu):
//   k<<<grid, block, smem, stream>>>(args)
//     -> ::rlk_sim::Launch(::rlk_sim::Cfg(grid, block, smem, stream), "k", __FILE__, __LINE__,
//                          [&](auto&... a) { k(a...); }, args)
//   __shared__ T name[N];         -> auto& name = ::rlk_sim::Shared<T[N]>([] {}, __FILE__, __LINE__);
//   extern __shared__ T name[];   -> T* const name = static_cast<T*>(::rlk_sim::DynamicShared(__FILE__, __LINE__));
// Everything else (templates, __device__ functions, the host launchers) is
// compiled as written.
//
// Usage: node scripts/sim/translate.mjs <in.cu> <out.cc>
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** The source with comments and string/char literals blanked (same length, newlines kept). */
function codeOnly(src) {
  const out = src.split('');
  let i = 0;
  const blank = (a, b) => {
    for (let k = a; k < b; k++) if (out[k] !== '\n') out[k] = ' ';
  };
  while (i < src.length) {
    const c = src[i];
    if (c === '/' && src[i + 1] === '/') {
      const e = src.indexOf('\n', i);
      const end = e < 0 ? src.length : e;
      blank(i, end);
      i = end;
    } else if (c === '/' && src[i + 1] === '*') {
      const e = src.indexOf('*/', i + 2);
      const end = e < 0 ? src.length : e + 2;
      blank(i, end);
      i = end;
    } else if (c === '"' || c === "'") {
      // Raw strings are not used in the kernels; plain literals with escapes.
      let k = i + 1;
      while (k < src.length && src[k] !== c) k += src[k] === '\\' ? 2 : 1;
      blank(i + 1, k);
      i = k + 1;
    } else {
      i++;
    }
  }
  return out.join('');
}

function fail(file, src, at, msg) {
  const line = src.slice(0, at).split('\n').length;
  console.error(`${file}:${line}: rlk-sim translate: ${msg}`);
  process.exit(1);
}

/** Index of the bracket matching the one at `open` (in code-only text). */
function matchForward(code, open, o, c) {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    if (code[i] === o) depth++;
    else if (code[i] === c && --depth === 0) return i;
  }
  return -1;
}

/** Start of the kernel expression that ends just before `end` (name, ::, template arguments). */
function kernelStart(code, end) {
  let i = end;
  while (i > 0 && /\s/.test(code[i - 1])) i--;
  for (;;) {
    if (code[i - 1] === '>') {
      let depth = 0;
      let k = i - 1;
      for (; k >= 0; k--) {
        if (code[k] === '>') depth++;
        else if (code[k] === '<' && --depth === 0) break;
      }
      if (k < 0) return -1;
      i = k;
      while (i > 0 && /\s/.test(code[i - 1])) i--;
    }
    let k = i;
    while (k > 0 && /[A-Za-z0-9_]/.test(code[k - 1])) k--;
    if (k === i) return -1;
    i = k;
    let j = i;
    while (j > 0 && /\s/.test(code[j - 1])) j--;
    if (code.slice(j - 2, j) === '::') {
      i = j - 2;
      while (i > 0 && /\s/.test(code[i - 1])) i--;
      if (!/[A-Za-z0-9_>]/.test(code[i - 1] ?? '')) return i;  // leading ::
      continue;
    }
    return i;
  }
}

const newlines = (s) => (s.match(/\n/g) ?? []).length;

export function translate(src, file) {
  const code = codeOnly(src);
  const edits = [];  // [start, end, text]

  // Kernel launches.
  for (let at = code.indexOf('<<<'); at >= 0; at = code.indexOf('<<<', at + 3)) {
    const close = code.indexOf('>>>', at + 3);
    if (close < 0) fail(file, src, at, 'unterminated <<<');
    const start = kernelStart(code, at);
    if (start < 0) fail(file, src, at, 'cannot find the kernel before <<<');
    let p = close + 3;
    while (/\s/.test(code[p])) p++;
    if (code[p] !== '(') fail(file, src, at, 'expected ( after >>>');
    const rparen = matchForward(code, p, '(', ')');
    if (rparen < 0) fail(file, src, at, 'unbalanced launch arguments');
    const kernel = src.slice(start, at).trim();
    const cfg = src.slice(at + 3, close);
    const args = src.slice(p + 1, rparen);
    const name = kernel.replace(/\s+/g, ' ');
    let text =
      `(void)::rlk_sim::Launch(::rlk_sim::Cfg(${cfg}), ${JSON.stringify(name)}, __FILE__, __LINE__, ` +
      `[&](auto&... rlk_sim_a) { ${kernel.replace(/\n/g, ' ')}(rlk_sim_a...); }` +
      (args.trim() ? `, ${args})` : ')');
    const lost = newlines(src.slice(start, rparen + 1)) - newlines(text);
    text += '\n'.repeat(Math.max(0, lost));
    edits.push([start, rparen + 1, text]);
    at = rparen;
  }

  // __shared__ declarations.
  const re = /(\bextern\s+)?\b__shared__\b([^;]*);/g;
  for (let m; (m = re.exec(code)); ) {
    const start = m.index;
    const end = start + m[0].length;
    const declText = src.slice(start + m[0].indexOf('__shared__') + '__shared__'.length, end - 1);
    const d = declText.replace(/\s+/g, ' ').replace(/\bstatic\b/g, '').replace(/__align__\s*\(\s*\d+\s*\)/g, '').trim();
    const dm = /^(.*?)\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)$/.exec(d);
    if (!dm || !dm[1].trim()) fail(file, src, start, `cannot parse the __shared__ declaration "${d}"`);
    const [, type, name, dims] = dm;
    let text;
    if (m[1]) {
      if (!/^\[\s*\]$/.test(dims.trim())) fail(file, src, start, 'extern __shared__ must be an array of unknown bound');
      text = `${type.trim()}* const ${name} = static_cast<${type.trim()}*>(::rlk_sim::DynamicShared(__FILE__, __LINE__));`;
    } else {
      text = `auto& ${name} = ::rlk_sim::Shared<${type.trim()}${dims.replace(/\s+/g, '')}>([] {}, __FILE__, __LINE__);`;
    }
    text += '\n'.repeat(newlines(src.slice(start, end)));
    edits.push([start, end, text]);
  }

  edits.sort((a, b) => a[0] - b[0]);
  let out = '';
  let pos = 0;
  for (const [s, e, t] of edits) {
    if (s < pos) fail(file, src, s, 'overlapping rewrites');
    out += src.slice(pos, s) + t;
    pos = e;
  }
  out += src.slice(pos);
  // nvcc includes cuda_runtime.h in every .cu; so does the emulated build.
  return `// Generated by scripts/sim/translate.mjs from ${file}: edit the .cu, not this file.\n` +
    `#include <cuda_runtime.h>\n#line 1 "${file}"\n${out}`;
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error('usage: node scripts/sim/translate.mjs <in.cu> <out.cc>');
    process.exit(2);
  }
  const file = resolve(input);
  const text = translate(readFileSync(file, 'utf8'), file);
  if (!existsSync(output) || readFileSync(output, 'utf8') !== text) {
    mkdirSync(dirname(resolve(output)), { recursive: true });
    writeFileSync(output, text);
  }
}
