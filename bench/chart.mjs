// An SVG chart of the harness's rows: per op, horizontal bars of the time of
// rlkernels, PyTorch eager and torch.compile on a log scale (they differ by
// orders of magnitude), each labelled with its time and rlkernels' bar with
// its speedup over compile (or eager). Plain SVG, no dependency.

const COLORS = { rlkernels: '#d9480f', eager: '#868e96', compile: '#1c7ed6' };
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (ms) => (ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 1 ? `${ms.toFixed(1)} ms` : ms >= 0.001 ? `${(ms * 1000).toFixed(1)} us` : `${(ms * 1e6).toFixed(0)} ns`);

/** rows: [{ family, op, shape, dtype, ms, eager?, compile? }]; title: one line. Returns SVG text. */
export function chartSvg(rows, title) {
  const rowsWithTime = rows.filter((r) => typeof r.ms === 'number' && r.ms > 0);
  const label = (r) => `${r.family ? `${r.family}: ` : ''}${r.op} ${r.shape ?? ''} ${r.dtype ?? ''}`.trim();
  const labelW = Math.min(520, 12 + 6.6 * Math.max(20, ...rowsWithTime.map((r) => label(r).length)));
  const plotW = 560;
  const barH = 11;
  const groupH = 3 * barH + 14;
  const top = 58;
  const width = labelW + plotW + 150;
  const height = top + groupH * rowsWithTime.length + 30;
  const values = rowsWithTime.flatMap((r) => [r.ms, r.eager, r.compile]).filter((v) => typeof v === 'number' && v > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values, 1))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values, 1))));
  const x = (v) => labelW + (plotW * (Math.log10(v) - Math.log10(lo))) / (Math.log10(hi) - Math.log10(lo) || 1);
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="10" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`);
  let lx = 10;
  for (const [k, c] of Object.entries(COLORS)) {
    const name = k === 'eager' ? 'PyTorch eager' : k === 'compile' ? 'torch.compile' : 'rlkernels';
    out.push(`<rect x="${lx}" y="28" width="12" height="10" fill="${c}"/><text x="${lx + 16}" y="37">${name}</text>`);
    lx += 30 + 7 * name.length;
  }
  out.push(`<text x="${lx + 10}" y="37" fill="#495057">time per call, log scale (shorter is faster)</text>`);
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    const xx = x(d);
    out.push(`<line x1="${xx}" y1="${top - 6}" x2="${xx}" y2="${height - 24}" stroke="#dee2e6"/>`);
    out.push(`<text x="${xx}" y="${height - 10}" text-anchor="middle" fill="#495057">${esc(fmt(d))}</text>`);
  }
  rowsWithTime.forEach((r, i) => {
    const y0 = top + i * groupH;
    out.push(`<text x="${labelW - 8}" y="${y0 + 1.5 * barH + 4}" text-anchor="end">${esc(label(r))}</text>`);
    [['rlkernels', r.ms], ['eager', r.eager], ['compile', r.compile]].forEach(([k, v], j) => {
      const y = y0 + j * barH;
      if (typeof v !== 'number' || !(v > 0)) {
        out.push(`<text x="${labelW + 4}" y="${y + barH - 2}" fill="#adb5bd">${k === 'rlkernels' ? '' : `${k === 'eager' ? 'eager' : 'compile'}: n/a`}</text>`);
        return;
      }
      const w = Math.max(1, x(v) - labelW);
      out.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH - 2}" fill="${COLORS[k]}"/>`);
      let text = fmt(v);
      if (k === 'rlkernels') {
        const base = typeof r.compile === 'number' ? ['compile', r.compile] : typeof r.eager === 'number' ? ['eager', r.eager] : null;
        if (base) text += `  (${(base[1] / v).toFixed(1)}x vs ${base[0]})`;
      }
      out.push(`<text x="${(labelW + w + 4).toFixed(1)}" y="${y + barH - 2}">${esc(text)}</text>`);
    });
  });
  out.push('</svg>');
  return out.join('\n');
}
