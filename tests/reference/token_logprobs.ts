// Float64 references for the token log-prob family, written from DESIGN 3.1's
// formulas (z = x / T, logprob = z[t] - logsumexp(z), H = -sum p log p,
// dz_j = g (1[j = t] - p_j) / T - gE p_j (log p_j + H) / T), independently of
// the kernels. x holds the exact values the tensor stores.

export interface RefInput {
  x: ArrayLike<number>;   // [rows * V]
  rows: number;
  vocab: number;
  targets: ArrayLike<number>;
  temperature: ArrayLike<number> | number;
  ignoreIndex: number;
}

function tempAt(t: ArrayLike<number> | number, r: number): number {
  return typeof t === 'number' ? t : t[r];
}

/** log-sum-exp of z over a row, and its max; NaN propagates, all -inf gives -inf. */
function rowLse(x: ArrayLike<number>, off: number, V: number, T: number): { lse: number; max: number } {
  let m = -Infinity;
  let nan = false;
  for (let j = 0; j < V; j++) {
    const z = x[off + j] / T;
    if (Number.isNaN(z)) nan = true;
    if (z > m) m = z;
  }
  if (nan) return { lse: NaN, max: NaN };
  if (m === -Infinity) return { lse: -Infinity, max: m };
  let s = 0;
  for (let j = 0; j < V; j++) s += Math.exp(x[off + j] / T - m);
  return { lse: m + Math.log(s), max: m };
}

export function refForward(inp: RefInput): { logprobs: Float64Array; entropy: Float64Array } {
  const { x, rows, vocab: V, targets, temperature, ignoreIndex } = inp;
  const logprobs = new Float64Array(rows);
  const entropy = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    const T = tempAt(temperature, r);
    const off = r * V;
    const { lse } = rowLse(x, off, V, T);
    logprobs[r] = x[off + t] / T - lse;
    let h = 0;
    for (let j = 0; j < V; j++) {
      const lp = x[off + j] / T - lse;
      const p = Math.exp(lp);
      if (Number.isNaN(p)) h = NaN;
      else if (p > 0) h -= p * lp;
    }
    entropy[r] = h;
  }
  return { logprobs, entropy };
}

/** Analytic gradient with respect to the logits x (not z). */
export function refBackward(inp: RefInput, gradLogprobs: ArrayLike<number>, gradEntropy?: ArrayLike<number>): Float64Array {
  const { x, rows, vocab: V, targets, temperature, ignoreIndex } = inp;
  const out = new Float64Array(rows * V);
  const { entropy } = refForward(inp);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    const T = tempAt(temperature, r);
    const off = r * V;
    const { lse } = rowLse(x, off, V, T);
    const g = gradLogprobs[r];
    const gE = gradEntropy ? gradEntropy[r] : 0;
    const H = entropy[r];
    for (let j = 0; j < V; j++) {
      const lp = x[off + j] / T - lse;
      const p = Math.exp(lp);
      let d = -g * p;
      if (p > 0 || Number.isNaN(p)) d -= gE * p * (lp + H);
      // The one-hot term; a -inf target logit has the constant log-prob -inf, so
      // the term is dropped (DESIGN 4: a finite gradient).
      if (j === t && x[off + j] !== -Infinity) d += g;
      out[off + j] = d / T;
    }
  }
  return out;
}

/** sum_r g_r logprob_r + gE_r H_r: the scalar whose gradient refBackward gives. */
export function refObjective(inp: RefInput, gradLogprobs: ArrayLike<number>, gradEntropy?: ArrayLike<number>): number {
  const { logprobs, entropy } = refForward(inp);
  let s = 0;
  for (let r = 0; r < inp.rows; r++) s += gradLogprobs[r] * logprobs[r] + (gradEntropy ? gradEntropy[r] * entropy[r] : 0);
  return s;
}
