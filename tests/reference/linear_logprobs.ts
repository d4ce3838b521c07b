// Float64 references for the fused linear log-probs, from DESIGN 3.2 and 3.1:
// x = h W^T + b, z = x / T, logprob = z[t] - logsumexp(z), H = -sum p log p;
// dx_j = [g (1[j = t] - p_j) - gE p_j (log p_j + H)] / T, dh = dx W,
// dW = dx^T h, db = sum_rows dx. Written independently of the kernels; the
// inputs hold the exact values the tensors store.

export interface LinearRefInput {
  h: ArrayLike<number>; // [N * H]
  w: ArrayLike<number>; // [V * H]
  b?: ArrayLike<number>; // [V]
  rows: number;
  dim: number;
  vocab: number;
  targets: ArrayLike<number>;
  temperature: number | ArrayLike<number>;
  ignoreIndex: number;
}

const tempAt = (t: number | ArrayLike<number>, r: number): number => (typeof t === 'number' ? t : t[r]);

/** The logits of one row in float64. */
export function refLogitsRow(inp: LinearRefInput, r: number, out: Float64Array = new Float64Array(inp.vocab)): Float64Array {
  const { h, w, b, dim: H, vocab: V } = inp;
  for (let j = 0; j < V; j++) {
    let s = 0;
    for (let k = 0; k < H; k++) s += h[r * H + k] * w[j * H + k];
    out[j] = s + (b ? b[j] : 0);
  }
  return out;
}

/** Row softmax pieces: log-sum-exp of z (NaN if any NaN, -inf if all -inf). */
function lse(z: Float64Array): number {
  let m = -Infinity;
  for (const v of z) {
    if (Number.isNaN(v)) return NaN;
    if (v > m) m = v;
  }
  if (m === -Infinity) return -Infinity;
  if (m === Infinity) return NaN;
  let s = 0;
  for (const v of z) s += Math.exp(v - m);
  return m + Math.log(s);
}

export function refLinearForward(inp: LinearRefInput): { logprobs: Float64Array; entropy: Float64Array } {
  const { rows, vocab: V, targets, ignoreIndex } = inp;
  const logprobs = new Float64Array(rows);
  const entropy = new Float64Array(rows);
  const x = new Float64Array(V);
  const z = new Float64Array(V);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    const T = tempAt(inp.temperature, r);
    refLogitsRow(inp, r, x);
    for (let j = 0; j < V; j++) z[j] = x[j] / T;
    const L = lse(z);
    logprobs[r] = z[t] - L;
    let ent = 0;
    for (let j = 0; j < V; j++) {
      const lp = z[j] - L;
      const p = Math.exp(lp);
      if (Number.isNaN(p)) ent = NaN;
      else if (p > 0) ent -= p * lp;
    }
    entropy[r] = ent;
  }
  return { logprobs, entropy };
}

export interface LinearRefGrads {
  gradHidden: Float64Array;
  gradWeight: Float64Array;
  gradBias: Float64Array;
}

export function refLinearBackward(inp: LinearRefInput, g: ArrayLike<number>, gE?: ArrayLike<number>): LinearRefGrads {
  const { rows, dim: H, vocab: V, targets, ignoreIndex, h, w } = inp;
  const gradHidden = new Float64Array(rows * H);
  const gradWeight = new Float64Array(V * H);
  const gradBias = new Float64Array(V);
  const { entropy } = refLinearForward(inp);
  const x = new Float64Array(V);
  const z = new Float64Array(V);
  const dx = new Float64Array(V);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    const T = tempAt(inp.temperature, r);
    refLogitsRow(inp, r, x);
    for (let j = 0; j < V; j++) z[j] = x[j] / T;
    const L = lse(z);
    const ge = gE ? gE[r] : 0;
    for (let j = 0; j < V; j++) {
      const lp = z[j] - L;
      const p = Math.exp(lp);
      let d = -g[r] * p;
      if (gE && p > 0) d -= ge * p * (lp + entropy[r]);
      if (j === t && x[j] !== -Infinity) d += g[r];
      dx[j] = d / T;
    }
    for (let j = 0; j < V; j++) {
      const d = dx[j];
      gradBias[j] += d;
      for (let k = 0; k < H; k++) {
        gradHidden[r * H + k] += d * w[j * H + k];
        gradWeight[j * H + k] += d * h[r * H + k];
      }
    }
  }
  return { gradHidden, gradWeight, gradBias };
}

/** sum_r g_r logprob_r + gE_r H_r, the objective whose gradient refLinearBackward gives. */
export function refLinearObjective(inp: LinearRefInput, g: ArrayLike<number>, gE?: ArrayLike<number>): number {
  const { logprobs, entropy } = refLinearForward(inp);
  let s = 0;
  for (let r = 0; r < inp.rows; r++) s += g[r] * logprobs[r] + (gE ? gE[r] * entropy[r] : 0);
  return s;
}
