// Float64 references for group advantages, written from DESIGN 3.6 (and the
// verl / GoLongRL code it cites), independently of the kernels: plain loops
// over each group's members, and REINFORCE++'s whitening done token by token
// exactly as verl's masked_whiten (values tiled over [B, T], masked mean,
// masked unbiased variance, (x - mean) * rsqrt(var + 1e-8)).

export type RefMethod = 'grpo' | 'drgrpo' | 'rloo' | 'reinforce++' | 'tmn-reweight';

export interface RefOptions {
  method: RefMethod;
  /** Group of each row. */
  groupOf: ArrayLike<number>;
  numGroups: number;
  /** Task of each row (tmn-reweight); all one task when absent. */
  taskOf?: ArrayLike<number>;
  /** reinforce++: [B, T] 0/1 mask rows (flattened) with T, or token counts per row. */
  mask?: { data: ArrayLike<number>; T: number };
  tokenCounts?: ArrayLike<number>;
  eps?: number;
  alpha?: number;
  gamma?: number;
  reweight?: boolean;
}

export interface RefResult {
  advantages: Float64Array;
  informative: Uint8Array;
}

function mean(xs: number[]): number {
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Unbiased variance (n - 1), two passes. */
function varUnbiased(xs: number[]): number {
  const m = mean(xs);
  let s = 0;
  for (const x of xs) s += (x - m) * (x - m);
  return s / (xs.length - 1);
}

export function refGroupAdvantages(rewards: ArrayLike<number>, o: RefOptions): RefResult {
  const B = rewards.length;
  const G = o.numGroups;
  const eps = o.eps ?? 1e-6;
  const alpha = o.alpha ?? 0.8;
  const gamma = o.gamma ?? 1;
  const reweight = o.reweight ?? true;
  const members: number[][] = Array.from({ length: G }, () => []);
  for (let i = 0; i < B; i++) members[o.groupOf[i]].push(i);
  const values = members.map((rows) => rows.map((i) => rewards[i]));
  // verl: a group of one has mean 0 and std 1; GoLongRL: mean 0, var 1.
  const meanG = values.map((v) => (v.length > 1 ? mean(v) : 0));
  const varG = values.map((v) => (v.length > 1 ? varUnbiased(v) : 1));
  const informative = new Uint8Array(G);
  values.forEach((v, g) => {
    informative[g] = v.some((x) => x !== v[0]) ? 1 : 0;
  });
  const adv = new Float64Array(B);

  if (o.method === 'grpo' || o.method === 'drgrpo' || o.method === 'rloo') {
    for (let i = 0; i < B; i++) {
      const g = o.groupOf[i];
      const n = values[g].length;
      const c = rewards[i] - meanG[g];
      if (o.method === 'grpo') adv[i] = c / (Math.sqrt(varG[g]) + eps);
      else if (o.method === 'drgrpo') adv[i] = c;
      else adv[i] = n > 1 ? (n / (n - 1)) * c : rewards[i];
    }
    return { advantages: adv, informative };
  }

  if (o.method === 'reinforce++') {
    // Tile each sequence's r - mean_g over its tokens.
    const tokens: Array<{ row: number; value: number }> = [];
    for (let i = 0; i < B; i++) {
      const x = rewards[i] - meanG[o.groupOf[i]];
      if (o.mask) {
        for (let t = 0; t < o.mask.T; t++) if (o.mask.data[i * o.mask.T + t] !== 0) tokens.push({ row: i, value: x });
      } else {
        for (let t = 0; t < o.tokenCounts![i]; t++) tokens.push({ row: i, value: x });
      }
    }
    const N = tokens.length;
    let mu = 0;
    for (const tk of tokens) mu += tk.value;
    mu = N > 0 ? mu / N : 0;
    let ss = 0;
    for (const tk of tokens) ss += (tk.value - mu) * (tk.value - mu);
    // verl raises for N < 2; the kernels use variance 0 there (documented).
    const v = N > 1 ? ss / (N - 1) : 0;
    for (const tk of tokens) adv[tk.row] = (tk.value - mu) / Math.sqrt(v + 1e-8);
    return { advantages: adv, informative };
  }

  // tmn-reweight (GoLongRL).
  const taskOfGroup = new Array<number>(G).fill(-1);
  members.forEach((rows, g) => {
    if (rows.length) taskOfGroup[g] = o.taskOf ? o.taskOf[rows[0]] : 0;
  });
  const taskGroups = new Map<number, number[]>();
  taskOfGroup.forEach((t, g) => {
    if (t < 0) return;
    if (!taskGroups.has(t)) taskGroups.set(t, []);
    taskGroups.get(t)!.push(g);
  });
  for (let g = 0; g < G; g++) {
    if (taskOfGroup[g] < 0) continue;
    const gs = taskGroups.get(taskOfGroup[g])!;
    const varTask = mean(gs.map((h) => varG[h]));
    const meanTask = mean(gs.map((h) => meanG[h]));
    const n = values[g].length;
    const m = n > 1 ? alpha * meanG[g] + (1 - alpha) * meanTask : meanTask;
    const p = values[g].filter((x) => x > m).length / n;
    const w = Math.exp(gamma * (0.5 - p));
    for (const i of members[g]) {
      const a = (rewards[i] - meanG[g]) / (Math.sqrt(varTask) + eps);
      adv[i] = !reweight ? a : rewards[i] > meanG[g] ? a * w : a / w;
    }
  }
  return { advantages: adv, informative };
}

/** verl's `scores.unsqueeze(-1) * response_mask`. */
export function refBroadcast(adv: ArrayLike<number>, mask: ArrayLike<number>, T: number): Float64Array {
  const out = new Float64Array(adv.length * T);
  for (let i = 0; i < adv.length; i++) for (let t = 0; t < T; t++) out[i * T + t] = mask[i * T + t] ? adv[i] : 0;
  return out;
}
