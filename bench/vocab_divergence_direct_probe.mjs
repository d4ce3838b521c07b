// Accuracy probe of the values-only KLs' one-pass direct form (bench/RESULTS.md, "Values-only KLs
// in one pass"): worst and rms per-row relative error against float64, bucketed by the ratio
// KL / (1 + sd + rms) that picks the form. Run it with RLK_NATIVE_PATH set to each build to compare.
//   [RLK_SIMD=avx2] [V=1003] [ROWS=400] [REPS=6] [SEED=7] [NEAR=1] node bench/vocab_divergence_direct_probe.mjs
// NEAR=1: every student near its teacher (sig 0.03-1, log scale) and finer buckets below r = 0.2.
import * as rlk from '../dist/index.js';
let seed = Number(process.env.SEED ?? 7);
const rnd = () => { seed = (seed * 48271) % 2147483647; return seed / 2147483647; };
const randn = () => { const u = rnd() || 1e-12, v = rnd(); return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v); };
function refStats(s, t, V, T, fwd) {
  let ms = -Infinity, mt = -Infinity;
  for (let j = 0; j < V; j++) { ms = Math.max(ms, s[j]); mt = Math.max(mt, t[j]); }
  let zs = 0, zt = 0;
  for (let j = 0; j < V; j++) { zs += Math.exp((s[j] - ms) / T); zt += Math.exp((t[j] - mt) / T); }
  const L = Math.log(zt) - Math.log(zs);
  let m1 = 0, m2 = 0, mc = 0, kl = 0;
  for (let b = 0; b < V; b += 1024) {
    const e = Math.min(V, b + 1024);
    let bt = -Infinity, bs = -Infinity;
    for (let j = b; j < e; j++) { bt = Math.max(bt, t[j]); bs = Math.max(bs, s[j]); }
    const c = ((bt - mt) - (bs - ms)) / T - L;
    for (let j = b; j < e; j++) {
      const lt = (t[j] - mt) / T - Math.log(zt), ls = (s[j] - ms) / T - Math.log(zs);
      const w = Math.exp(fwd ? lt : ls), x = lt - ls;
      m1 += w * x; m2 += w * x * x; mc += w * (x - c) ** 2;
    }
  }
  kl = fwd ? m1 : -m1;
  const sd = Math.sqrt(Math.max(0, m2 - m1 * m1));
  return { kl, ratio: kl / (1 + sd + Math.sqrt(mc)) };
}
const buckets = {};
const near = process.env.NEAR === '1';
const EDGES = near ? [0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2] : [0.15, 0.2, 0.25, 0.35, 0.6];
const names = [...EDGES.map((e, i) => (i ? `${EDGES[i - 1]}-${e}` : `<${e}`)), `>=${EDGES.at(-1)}`];
const V = Number(process.env.V ?? 1003), rows = Number(process.env.ROWS ?? 400);
for (let rep = 0; rep < Number(process.env.REPS ?? 6); rep++) for (const T of [1, 0.7]) {
  const s = new Float32Array(rows * V), t = new Float32Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const sig = near ? 0.03 * Math.exp(3.5 * rnd()) : 0.5 + 3 * rnd(), scale = 1 + 6 * rnd(), off = 10 * randn(), style = near ? 0 : rnd();
    for (let j = 0; j < V; j++) {
      const a = scale * randn();
      t[r * V + j] = a + off;
      s[r * V + j] = style < 0.5 ? a + sig * randn() : sig * randn();
    }
  }
  for (const kind of ['forward-kl', 'reverse-kl']) {
    const res = [];
    // Call each binary's addon through the package's tensors: the two builds are loaded via RLK_NATIVE_PATH in two processes instead.
    const S = rlk.tensor(s, { shape: [rows, V] }), Tt = rlk.tensor(t, { shape: [rows, V] });
    const v = rlk.vocabDivergence(S, Tt, { kind, temperature: T, grad: false });
    const got = v.values.toArraySync();
    v.values.dispose(); S.dispose(); Tt.dispose();
    for (let r = 0; r < rows; r++) {
      const { kl, ratio } = refStats(s.subarray(r * V, (r + 1) * V), t.subarray(r * V, (r + 1) * V), V, T, kind === 'forward-kl');
      const err = Math.abs(got[r] - kl) / kl;
      let b = 0;
      while (b < EDGES.length && ratio >= EDGES[b]) b++;
      const k = names[b];
      const bk = (buckets[k] ??= { n: 0, worst: 0, sum2: 0 });
      bk.n++; bk.worst = Math.max(bk.worst, err); bk.sum2 += err * err;
    }
  }
}
for (const k of names)
  if (buckets[k]) console.log(`${k}: rows ${buckets[k].n} worst ${buckets[k].worst.toExponential(2)} rms ${Math.sqrt(buckets[k].sum2 / buckets[k].n).toExponential(2)}`);
