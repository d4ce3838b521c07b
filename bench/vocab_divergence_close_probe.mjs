// Accuracy probe of the values-only KLs on close rows (bench/RESULTS.md, "Close rows"): the
// teacher is the student plus N(0, noise^2) per logit and plus a constant shift per row (OFF * U(1, 2);
// the student's logits N(0, SC^2)), for noises 1 to 0.03; per row relative error against a float64
// sum of p phi(x), worst and rms, and the array's (DESIGN 4's measure). Run it with RLK_NATIVE_PATH
// set to each build to compare.
//   [RLK_SIMD=avx2] [V=32000] [ROWS=32] [OFF=0] [SC=2] [TS=1] node bench/vocab_divergence_close_probe.mjs
import * as rlk from '../dist/index.js';
let seed = 7;
const rnd = () => { seed = (seed * 48271) % 2147483647; return seed / 2147483647; };
const randn = () => { const u = rnd() || 1e-12, v = rnd(); return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v); };
function refKl(a, b, V, T) {
  let ma = -Infinity, mb = -Infinity;
  for (let j = 0; j < V; j++) { ma = Math.max(ma, a[j]); mb = Math.max(mb, b[j]); }
  let za = 0, zb = 0;
  for (let j = 0; j < V; j++) { za += Math.exp((a[j] - ma) / T); zb += Math.exp((b[j] - mb) / T); }
  const c = (mb - ma) / T - Math.log(za / zb);
  let kl = 0;
  for (let j = 0; j < V; j++) {
    const x = (a[j] - b[j]) / T + c;
    const phi = Math.abs(x) < 1e-3 ? x * x * (0.5 - x / 6 + x * x / 24) : Math.expm1(-x) + x;
    kl += Math.exp((a[j] - ma) / T) / za * phi;
  }
  return kl;
}
const V = Number(process.env.V ?? 32000), rows = Number(process.env.ROWS ?? 32);
const OFF = Number(process.env.OFF ?? 0), SC = Number(process.env.SC ?? 2);
for (const noise of [1, 0.3, 0.1, 0.03]) {
  const s = new Float32Array(rows * V), t = new Float32Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const off = OFF * (1 + rnd());
    for (let j = 0; j < V; j++) {
      const a = SC * randn();
      s[r * V + j] = a;
      t[r * V + j] = a + off + noise * randn();
    }
  }
  for (const kind of ['forward-kl', 'reverse-kl']) for (const T of (process.env.TS??'1').split(',').map(Number)) {
    const S = rlk.tensor(s, { shape: [rows, V] }), Tt = rlk.tensor(t, { shape: [rows, V] });
    const v = rlk.vocabDivergence(S, Tt, { kind, temperature: T, grad: false });
    const got = v.values.toArraySync(); v.values.dispose(); S.dispose(); Tt.dispose();
    let worst = 0, s2 = 0, klm = 0, nd = 0, nr = 0;
    for (let r = 0; r < rows; r++) {
      const tr = t.subarray(r * V, (r + 1) * V), sr = s.subarray(r * V, (r + 1) * V);
      const kl = kind === 'forward-kl' ? refKl(tr, sr, V, T) : refKl(sr, tr, V, T);
      const e = Math.abs(got[r] - kl) / kl; worst = Math.max(worst, e); nd += (got[r] - kl) ** 2; nr += kl * kl; s2 += e * e; klm += kl / rows;
    }
    console.log(`V=${V} T ${T} noise ${noise} ${kind}: array ${Math.sqrt(nd / nr).toExponential(2)} KL~${klm.toExponential(2)} worst ${worst.toExponential(2)} rms ${Math.sqrt(s2 / rows).toExponential(2)}`);
  }
}
