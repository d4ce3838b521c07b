// Float64 reference of DESIGN 3.4 (verl's kl_penalty), written from the
// formulas, independently of the kernels: value and d value / d logp.
export type KlRefEstimator = 'k1' | 'abs' | 'k2' | 'k3' | 'k1+' | 'k3+';

export function klRef(estimator: KlRefEstimator, logp: number, ref: number): { value: number; grad: number } {
  const d = logp - ref;
  switch (estimator) {
    case 'k1':
      return { value: d, grad: 1 };
    case 'abs':
      return { value: Math.abs(d), grad: Math.sign(d) };
    case 'k2':
      return { value: 0.5 * d * d, grad: d };
    case 'k1+':
      return { value: d, grad: d };
    case 'k3':
    case 'k3+': {
      const raw = ref - logp;
      const x = Math.min(20, Math.max(-20, raw));
      // expm1(x) - x keeps e^x - x - 1 accurate near 0 in float64 (error ~ eps |x|).
      const k = Math.expm1(x) - x;
      const value = Math.min(10, Math.max(-10, k));
      if (estimator === 'k3+') return { value, grad: d };
      // d/dlogp of e^x - x - 1 with x = ref - logp is 1 - e^x; clamps pass the gradient only inside (inclusive).
      const inside = raw >= -20 && raw <= 20 && k <= 10 && k >= -10;
      return { value, grad: inside ? -Math.expm1(x) : 0 };
    }
  }
}

/** Values and gradient of an array, 0 where masked. */
export function klPenaltyRef(
  estimator: KlRefEstimator,
  logp: ArrayLike<number>,
  ref: ArrayLike<number>,
  mask?: ArrayLike<number>,
): { values: Float64Array; grad: Float64Array } {
  const n = logp.length;
  const values = new Float64Array(n);
  const grad = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (mask && !mask[i]) continue;
    const r = klRef(estimator, logp[i], ref[i]);
    values[i] = r.value;
    grad[i] = r.grad;
  }
  return { values, grad };
}
