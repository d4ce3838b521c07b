// Inputs that the spawned ranks (rank.mjs) and the single-process side of
// tests/torch_distributed.test.ts build identically from a seed.

/** mulberry32: a small deterministic generator of floats in [0, 1). */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const IGNORE = -100;

/** The vocabulary-parallel cases: full logits [rows, V] and targets, upstream gradients for the backward. */
export function vocabCases(seed) {
  const r = rng(seed);
  const shapes = [
    { rows: 7, vocab: 37, scale: 3, temperature: 0.7 },
    { rows: 3, vocab: 1001, scale: 12, temperature: 1 },
    { rows: 1, vocab: 5, scale: 1, temperature: 2 },
  ];
  return shapes.map(({ rows, vocab, scale, temperature }) => {
    const logits = new Float32Array(rows * vocab).map(() => (r() * 2 - 1) * scale);
    const targets = new Int32Array(rows).map(() => Math.floor(r() * vocab));
    if (rows > 2) targets[1] = IGNORE;
    const gradLogprobs = new Float32Array(rows).map(() => r() * 2 - 1);
    const gradEntropy = new Float32Array(rows).map(() => r() * 2 - 1);
    return { rows, vocab, temperature, logits, targets, gradLogprobs, gradEntropy };
  });
}

/** The GRPO batch: B sequences of T tokens, a linear LM head [V, H] on hidden states [B, T, H]. */
export const GRPO = { B: 8, T: 5, H: 6, V: 11, groupSize: 4 };

export function grpoBatch(seed) {
  const r = rng(seed);
  const { B, T, H, V, groupSize } = GRPO;
  const weight = new Float32Array(V * H).map(() => (r() * 2 - 1) * 0.5);
  const hidden = new Float32Array(B * T * H).map(() => r() * 2 - 1);
  const targets = new Int32Array(B * T).map(() => Math.floor(r() * V));
  const mask = new Uint8Array(B * T);
  for (let i = 0; i < B; i++) {
    const len = i === 5 ? 0 : 1 + Math.floor(r() * T);  // sequence 5 has no token
    for (let t = 0; t < len; t++) mask[i * T + t] = 1;
  }
  // Old log-probs: the current ones shifted by up to +-0.4, so some ratios clip.
  const shift = new Float32Array(B * T).map(() => (r() * 2 - 1) * 0.4);
  const rewards = new Float32Array(B).map(() => Math.round(r() * 3) / 3);
  const groupIds = new Int32Array(B).map((_, i) => Math.floor(i / groupSize));
  return { weight, hidden, targets, mask, shift, rewards, groupIds, numGroups: B / groupSize };
}

/** Which samples rank `rank` of `world` holds: groups are split across ranks. */
export function grpoSamples(rank, world) {
  const order = [0, 4, 1, 5, 2, 6, 3, 7];
  const per = order.length / world;
  return order.slice(rank * per, (rank + 1) * per);
}

/**
 * The vocabulary-parallel linear cases: hidden [...lead, H], the whole LM head [V, H] (and bias [V]), targets,
 * upstream gradients. V is odd or smaller than some world sizes' multiples; one case has per-row temperatures,
 * a chunk size below the rows and a custom ignoreIndex.
 */
export function linearCases(seed) {
  const r = rng(seed ^ 0x5eed1);
  const shapes = [
    { lead: [7], dim: 5, vocab: 37, scale: 1.5, temperature: 0.7, entropy: true, bias: true },
    { lead: [3], dim: 16, vocab: 1001, scale: 1, temperature: 1, entropy: false, bias: false },
    { lead: [1], dim: 3, vocab: 5, scale: 2, temperature: 2, entropy: true, bias: false },
    { lead: [3, 11], dim: 8, vocab: 301, scale: 1, temperature: 'rows', entropy: true, bias: true, chunkSize: 32, ignoreIndex: -1 },
  ];
  return shapes.map(({ lead, dim, vocab, scale, temperature, entropy, bias, chunkSize, ignoreIndex = IGNORE }) => {
    const rows = lead.reduce((a, b) => a * b, 1);
    const hidden = new Float32Array(rows * dim).map(() => (r() * 2 - 1) * scale);
    const weight = new Float32Array(vocab * dim).map(() => (r() * 2 - 1) * scale);
    const b = bias ? new Float32Array(vocab).map(() => r() * 2 - 1) : undefined;
    const targets = new Int32Array(rows).map(() => Math.floor(r() * vocab));
    if (rows > 2) targets[1] = ignoreIndex;
    if (rows > 5) targets[5] = ignoreIndex;
    const temps = temperature === 'rows' ? new Float32Array(rows).map(() => 0.5 + r()) : undefined;
    const gradLogprobs = new Float32Array(rows).map(() => r() * 2 - 1);
    const gradEntropy = entropy ? new Float32Array(rows).map(() => r() * 2 - 1) : undefined;
    return {
      lead, rows, dim, vocab, hidden, weight, bias: b, targets, entropy, chunkSize, ignoreIndex,
      temperature: temps ?? temperature, gradLogprobs, gradEntropy,
    };
  });
}
