// Independent float64 references for the 16-bit float formats: decode every
// bit pattern exactly from its definition, then round by searching the sorted
// table (nearest, ties to the even bit pattern). Shares no code with the addon.

function decode(bits: number, expBits: number, manBits: number): number {
  const bias = (1 << (expBits - 1)) - 1;
  const sign = bits >> (expBits + manBits) ? -1 : 1;
  const exp = (bits >> manBits) & ((1 << expBits) - 1);
  const man = bits & ((1 << manBits) - 1);
  if (exp === (1 << expBits) - 1) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** (1 - bias - manBits);
  return sign * (1 + man / 2 ** manBits) * 2 ** (exp - bias);
}

interface Format {
  /** Finite non-negative values in increasing order, with their bit patterns. */
  values: Float64Array;
  bits: Uint16Array;
  /** The overflow threshold: the largest finite value plus half its spacing. */
  overflow: number;
  expBits: number;
  manBits: number;
}

function buildFormat(expBits: number, manBits: number): Format {
  const count = (1 << (expBits + manBits)) - (1 << manBits); // finite non-negative patterns
  const values = new Float64Array(count);
  const bits = new Uint16Array(count);
  for (let b = 0; b < count; b++) {
    values[b] = decode(b, expBits, manBits);
    bits[b] = b;
  }
  const max = values[count - 1];
  const spacing = max - values[count - 2];
  return { values, bits, overflow: max + spacing / 2, expBits, manBits };
}

const formats: Record<'bfloat16' | 'float16', Format> = {
  bfloat16: buildFormat(8, 7),
  float16: buildFormat(5, 10),
};

/** The bit pattern nearest to x (ties to even); NaN gives a NaN pattern. */
export function roundBits(x: number, dtype: 'bfloat16' | 'float16'): number {
  const f = formats[dtype];
  const signBit = 1 << (f.expBits + f.manBits);
  const infBits = ((1 << f.expBits) - 1) << f.manBits;
  if (Number.isNaN(x)) return infBits | (1 << (f.manBits - 1));
  const neg = x < 0 || Object.is(x, -0);
  const a = Math.abs(x);
  if (a >= f.overflow) return (neg ? signBit : 0) | infBits;
  let lo = 0;
  let hi = f.values.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (f.values[mid] <= a) lo = mid;
    else hi = mid;
  }
  let pick: number;
  if (a <= f.values[lo]) pick = lo;
  else if (a >= f.values[hi]) pick = hi;
  else {
    const dl = a - f.values[lo];
    const dh = f.values[hi] - a;
    pick = dl < dh ? lo : dh < dl ? hi : f.bits[lo] % 2 === 0 ? lo : hi;
  }
  return (neg ? signBit : 0) | f.bits[pick];
}

/** The value a 16-bit float holds after rounding x. */
export function roundTo(x: number, dtype: 'bfloat16' | 'float16'): number {
  const f = formats[dtype];
  return decode(roundBits(x, dtype), f.expBits, f.manBits);
}

export function decodeBits(bits: number, dtype: 'bfloat16' | 'float16'): number {
  const f = formats[dtype];
  return decode(bits, f.expBits, f.manBits);
}

/** Rounds every value as a tensor of `dtype` would hold it (float32 via Math.fround). */
export function roundArray(xs: ArrayLike<number>, dtype: 'float32' | 'bfloat16' | 'float16'): Float64Array {
  const out = new Float64Array(xs.length);
  for (let i = 0; i < xs.length; i++) out[i] = dtype === 'float32' ? Math.fround(xs[i]) : roundTo(xs[i], dtype);
  return out;
}
