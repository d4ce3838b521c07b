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

/**
 * log-sum-exp of z over a row, and its max; NaN propagates, all -inf gives -inf.
 * Formed as m + log1p(sum of the terms other than the first maximum's, which is 1):
 * for a confident row (one z far above the rest) log(s) with s = 1 + tiny would round
 * the tiny part away even in float64.
 */
function rowLse(x: ArrayLike<number>, off: number, V: number, T: number): { lse: number; max: number; l1p: number } {
  let m = -Infinity;
  let a = -1;
  let nan = false;
  for (let j = 0; j < V; j++) {
    const z = x[off + j] / T;
    if (Number.isNaN(z)) nan = true;
    if (z > m) {
      m = z;
      a = j;
    }
  }
  if (nan) return { lse: NaN, max: NaN, l1p: NaN };
  if (m === -Infinity) return { lse: -Infinity, max: m, l1p: NaN };
  let s = 0;
  for (let j = 0; j < V; j++) if (j !== a) s += Math.exp(x[off + j] / T - m);
  return { lse: m + Math.log1p(s), max: m, l1p: Math.log1p(s) };
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
    // (z - max) - log1p(...), not z - lse: lse = max + tiny rounds the tiny part away.
    const { max, l1p } = rowLse(x, off, V, T);
    logprobs[r] = x[off + t] / T - max - l1p;
    let h = 0;
    for (let j = 0; j < V; j++) {
      const lp = x[off + j] / T - max - l1p;
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
    const { max, l1p } = rowLse(x, off, V, T);
    const g = gradLogprobs[r];
    const gE = gradEntropy ? gradEntropy[r] : 0;
    const H = entropy[r];
    for (let j = 0; j < V; j++) {
      const lp = x[off + j] / T - max - l1p;
      const p = Math.exp(lp);
      let d = -g * p;
      if (p > 0 || Number.isNaN(p)) d -= gE * p * (lp + H);
      // The one-hot term, kept for a -inf target logit too (p_t = 0 there): what
      // PyTorch's log_softmax(z).gather backward gives, g (1[j = t] - p_j).
      // g (1 - p_t) as -g expm1(log p_t): 1 - p_t of a confident token is tiny.
      if (j === t) d = -g * Math.expm1(lp) - (p > 0 || Number.isNaN(p) ? gE * p * (lp + H) : 0);
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
