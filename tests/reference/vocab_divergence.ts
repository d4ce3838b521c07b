// Float64 references for vocabDivergence, written from DESIGN 3.5 and TRL's
// generalized_jsd_loss (M = beta p_t + (1 - beta) p_s; beta = 0 is forward KL,
// beta = 1 reverse KL), independently of the kernels: the value straight from
// its definition, the gradient through the softmax Jacobian
// dV/dz_j = (h_j - p_j sum_k h_k) / T with h_k = p_k dV/dp_k.

export type Kind = 'forward-kl' | 'reverse-kl' | 'jsd';

export interface RefOptions {
  kind: Kind;
  beta?: number;
  temperature?: number;
  /** Per row: true where the row is ignored (value 0, zero gradient). */
  ignored?: ArrayLike<boolean>;
}

export interface RefResult {
  values: Float64Array;
  gradStudent: Float64Array;
  gradTeacher: Float64Array;
}

/** log softmax of z (float64); -inf entries stay -inf. */
function logSoftmax(z: Float64Array): Float64Array {
  let m = -Infinity;
  for (const v of z) m = Math.max(m, v);
  let s = 0;
  for (const v of z) s += Math.exp(v - m);
  const lse = m + Math.log(s);
  return z.map((v) => v - lse);
}

/** p (a - b) with 0 (anything) = 0: the 0 log 0 = 0 convention. */
function plog(p: number, a: number, b: number): number {
  return p === 0 ? 0 : p * (a - b);
}

function effectiveKind(kind: Kind, beta: number): Kind {
  if (kind === 'jsd' && beta === 0) return 'forward-kl';
  if (kind === 'jsd' && beta === 1) return 'reverse-kl';
  return kind;
}

/** One row: value and gradients with respect to the student's and teacher's logits. */
export function divergenceRow(
  student: ArrayLike<number>,
  teacher: ArrayLike<number>,
  kindIn: Kind,
  beta = 0.5,
  temperature = 1,
): { value: number; gs: Float64Array; gt: Float64Array } {
  const V = student.length;
  const kind = effectiveKind(kindIn, beta);
  const ls = logSoftmax(Float64Array.from(student, (v) => v / temperature));
  const lt = logSoftmax(Float64Array.from(teacher, (v) => v / temperature));
  const ps = ls.map(Math.exp);
  const pt = lt.map(Math.exp);
  // hs_k = p_s,k dV/dp_s,k and ht_k = p_t,k dV/dp_t,k, with V written as a function of the two probability vectors.
  const hs = new Float64Array(V);
  const ht = new Float64Array(V);
  let value = 0;
  for (let k = 0; k < V; k++) {
    if (kind === 'forward-kl') {
      // V = sum p_t (log p_t - log p_s): dV/dp_s = -p_t / p_s, dV/dp_t = log p_t - log p_s + 1.
      value += plog(pt[k], lt[k], ls[k]);
      hs[k] = -pt[k];
      ht[k] = pt[k] === 0 ? 0 : pt[k] * (lt[k] - ls[k] + 1);
    } else if (kind === 'reverse-kl') {
      value += plog(ps[k], ls[k], lt[k]);
      hs[k] = ps[k] === 0 ? 0 : ps[k] * (ls[k] - lt[k] + 1);
      ht[k] = -ps[k];
    } else {
      // V = beta sum p_t log p_t + (1 - beta) sum p_s log p_s - sum M log M:
      // dV/dp_t = beta (log p_t - log M), dV/dp_s = (1 - beta) (log p_s - log M).
      const m = beta * pt[k] + (1 - beta) * ps[k];
      const lm = Math.log(m);
      value += beta * plog(pt[k], lt[k], lm) + (1 - beta) * plog(ps[k], ls[k], lm);
      ht[k] = pt[k] === 0 ? 0 : beta * pt[k] * (lt[k] - lm);
      hs[k] = ps[k] === 0 ? 0 : (1 - beta) * ps[k] * (ls[k] - lm);
    }
  }
  let sumS = 0;
  let sumT = 0;
  for (let k = 0; k < V; k++) {
    sumS += hs[k];
    sumT += ht[k];
  }
  const gs = new Float64Array(V);
  const gt = new Float64Array(V);
  for (let k = 0; k < V; k++) {
    gs[k] = (hs[k] - ps[k] * sumS) / temperature;
    gt[k] = (ht[k] - pt[k] * sumT) / temperature;
  }
  return { value, gs, gt };
}

/** Rows of [rows, V] row-major data. */
export function vocabDivergenceRef(student: ArrayLike<number>, teacher: ArrayLike<number>, rows: number, V: number, opts: RefOptions): RefResult {
  const values = new Float64Array(rows);
  const gradStudent = new Float64Array(rows * V);
  const gradTeacher = new Float64Array(rows * V);
  for (let r = 0; r < rows; r++) {
    if (opts.ignored?.[r]) continue;
    const s = Array.prototype.slice.call(student, r * V, (r + 1) * V) as number[];
    const t = Array.prototype.slice.call(teacher, r * V, (r + 1) * V) as number[];
    const { value, gs, gt } = divergenceRow(s, t, opts.kind, opts.beta ?? 0.5, opts.temperature ?? 1);
    values[r] = value;
    gradStudent.set(gs, r * V);
    gradTeacher.set(gt, r * V);
  }
  return { values, gradStudent, gradTeacher };
}
