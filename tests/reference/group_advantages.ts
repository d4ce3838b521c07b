// Float64 references for group advantages, written from DESIGN 3.6 and
// LOSSES.md section 4 (and the verl / TRL / GoLongRL code they cite),
// independently of the kernels: groups numbered in order of first
// appearance with a Map, plain loops over each group's members, and the
// whitening (REINFORCE++, GDPO) done token by token exactly as verl's
// masked_whiten (values tiled over [B, T], masked mean, masked unbiased
// variance, (x - mean) * rsqrt(var + 1e-8)).

export type RefMethod = 'grpo' | 'drgrpo' | 'rloo' | 'reinforce++' | 'tmn-reweight' | 'gdpo' | 'grpo-passk' | 'opo' | 'remax' | 'gpg';

export interface RefOptions {
  method: RefMethod;
  /** Group id of each row: any values (numbers or bigints). */
  groupOf: ArrayLike<number | bigint>;
  /** Length of informative (defaults to the number of groups). */
  numGroups?: number;
  /** Task id of each row (tmn-reweight); all one task when absent. */
  taskOf?: ArrayLike<number | bigint>;
  /** [B, T] 0/1 mask rows (flattened) with T, or token counts per row. */
  mask?: { data: ArrayLike<number>; T: number };
  tokenCounts?: ArrayLike<number>;
  /** gdpo: the K reward columns of each row (rewards is then ignored). */
  columns?: number[][];
  rewardWeights?: number[];
  baseline?: ArrayLike<number>;
  scale?: 'group' | 'batch' | 'none';
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

/** Groups in order of first appearance: members[g] = rows of the g-th distinct id. */
export function numberGroups(ids: ArrayLike<number | bigint>): number[][] {
  const slot = new Map<string, number>();
  const members: number[][] = [];
  for (let i = 0; i < ids.length; i++) {
    const k = String(ids[i]);
    let g = slot.get(k);
    if (g === undefined) {
      g = members.length;
      slot.set(k, g);
      members.push([]);
    }
    members[g].push(i);
  }
  return members;
}

/** Tokens per row: mask rows, token counts, or 1 each. */
function tokensOf(B: number, o: RefOptions): number[] {
  return Array.from({ length: B }, (_, i) => {
    if (o.mask) {
      let n = 0;
      for (let t = 0; t < o.mask.T; t++) n += o.mask.data[i * o.mask.T + t] !== 0 ? 1 : 0;
      return n;
    }
    return o.tokenCounts ? o.tokenCounts[i] : 1;
  });
}

/** verl's masked_whiten of one value per row, each tiled over its row's tokens; rows without tokens get 0. */
function whiten(x: number[], tokens: number[], varFloorZero: boolean): Float64Array {
  const vals: number[] = [];
  x.forEach((v, i) => {
    for (let t = 0; t < tokens[i]; t++) vals.push(v);
  });
  const N = vals.length;
  // Shifted by the first value, so that equal values have exactly that mean (the variance is then 0 and the
  // result 0, which a rounded mean divided by sqrt(1e-8) would turn into noise of 1e-12).
  const mu = N > 0 ? vals[0] + mean(vals.map((v) => v - vals[0])) : 0;
  let ss = 0;
  for (const v of vals) ss += (v - mu) * (v - mu);
  if (N < 2 && !varFloorZero) throw new Error('whitening needs 2 tokens');
  const v = N > 1 ? ss / (N - 1) : 0;
  return Float64Array.from(x, (xi, i) => (tokens[i] > 0 ? (xi - mu) / Math.sqrt(v + 1e-8) : 0));
}

export function refGroupAdvantages(rewards: ArrayLike<number>, o: RefOptions): RefResult {
  const B = o.groupOf.length;
  const eps = o.eps ?? 1e-6;
  const members = numberGroups(o.groupOf);
  const G = members.length;
  // gdpo passes rows of K columns; the other methods read rewards.
  const colOf = o.columns ? (k: number, i: number) => o.columns![i][k] : (_k: number, i: number) => rewards[i];
  const K = o.columns ? o.columns[0]?.length ?? 1 : 1;
  const cache = Array.from({ length: K }, (_, k) => members.map((rows) => rows.map((i) => colOf(k, i))));
  const values = (g: number, k = 0) => cache[k][g];
  // verl: a group of one has mean 0 and std 1; GoLongRL: mean 0, var 1.
  const memo = new Map<number[], [number, number]>();
  const stats = (v: number[]): [number, number] => {
    let m = memo.get(v);
    if (!m) memo.set(v, (m = v.length > 1 ? [mean(v), varUnbiased(v)] : [0, 1]));
    return m;
  };
  const meanOf = (v: number[]) => stats(v)[0];
  const varOf = (v: number[]) => stats(v)[1];
  const informative = new Uint8Array(o.numGroups ?? G);
  for (let g = 0; g < G; g++) {
    let any = false;
    for (let k = 0; k < K; k++) {
      const v = values(g, k);
      any ||= v.some((x) => x !== v[0]);
    }
    informative[g] = any ? 1 : 0;
  }
  const groupOfRow = new Int32Array(B);
  members.forEach((rows, g) => rows.forEach((i) => (groupOfRow[i] = g)));
  const adv = new Float64Array(B);
  const r = (i: number) => rewards[i];

  switch (o.method) {
    case 'grpo':
    case 'drgrpo':
    case 'rloo':
    case 'gpg': {
      const scale = o.method === 'drgrpo' ? 'none' : o.scale ?? 'group';
      const all = Array.from({ length: B }, (_, i) => r(i));
      const stdB = B > 1 ? Math.sqrt(varUnbiased(all)) : 1;
      const alpha = B / Math.max(all.filter((x) => x !== 0).length, 1);
      for (let i = 0; i < B; i++) {
        const v = values(groupOfRow[i]);
        const n = v.length;
        const c = r(i) - meanOf(v);
        if (o.method === 'rloo') adv[i] = n > 1 ? (n / (n - 1)) * c : r(i);
        else if (o.method === 'gpg') adv[i] = alpha * c;
        else if (scale === 'group') adv[i] = c / (Math.sqrt(varOf(v)) + eps);
        else if (scale === 'batch') adv[i] = c / (stdB + eps);
        else adv[i] = c;
      }
      break;
    }
    case 'reinforce++': {
      const x = Array.from({ length: B }, (_, i) => r(i) - meanOf(values(groupOfRow[i])));
      adv.set(whiten(x, tokensOf(B, o), true));
      break;
    }
    case 'gdpo': {
      const w = o.rewardWeights ?? new Array(K).fill(1);
      const S = Array.from({ length: B }, (_, i) => {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const v = values(groupOfRow[i], k);
          s += w[k] * ((colOf(k, i) - meanOf(v)) / (Math.sqrt(varOf(v)) + eps));
        }
        return s;
      });
      adv.set(whiten(S, tokensOf(B, o), false));
      break;
    }
    case 'grpo-passk': {
      for (let g = 0; g < G; g++) {
        const v = values(g);
        if (v.length < 2) throw new Error('grpo-passk: a group of one');
        const sorted = [...v].sort((a, b) => b - a);
        const first = members[g][v.indexOf(sorted[0])];
        const d = sorted[0] - sorted[1];
        adv[first] = o.scale === 'none' ? d : d / (Math.sqrt(varOf(v)) + eps);
      }
      break;
    }
    case 'opo': {
      const L = tokensOf(B, o);
      for (let g = 0; g < G; g++) {
        const rows = members[g];
        let sl = 0;
        let slr = 0;
        for (const i of rows) {
          sl += L[i];
          slr += L[i] * r(i);
        }
        const b = rows.length > 1 && sl > 0 ? slr / sl : 0;
        for (const i of rows) adv[i] = r(i) - b;
      }
      break;
    }
    case 'remax':
      for (let i = 0; i < B; i++) adv[i] = r(i) - o.baseline![i];
      break;
    case 'tmn-reweight': {
      const alpha = o.alpha ?? 0.8;
      const gamma = o.gamma ?? 1;
      const reweight = o.reweight ?? true;
      const taskKey = (g: number) => (o.taskOf ? String(o.taskOf[members[g][0]]) : '0');
      const taskGroups = new Map<string, number[]>();
      for (let g = 0; g < G; g++) {
        if (!taskGroups.has(taskKey(g))) taskGroups.set(taskKey(g), []);
        taskGroups.get(taskKey(g))!.push(g);
      }
      const taskMean = new Map<string, number>();
      const taskVar = new Map<string, number>();
      for (const [t, gs] of taskGroups) {
        taskVar.set(t, mean(gs.map((h) => varOf(values(h)))));
        taskMean.set(t, mean(gs.map((h) => meanOf(values(h)))));
      }
      for (let g = 0; g < G; g++) {
        const varTask = taskVar.get(taskKey(g))!;
        const meanTask = taskMean.get(taskKey(g))!;
        const v = values(g);
        const n = v.length;
        const mg = meanOf(v);
        const m = n > 1 ? alpha * mg + (1 - alpha) * meanTask : meanTask;
        const p = v.filter((x) => x > m).length / n;
        const w = Math.exp(gamma * (0.5 - p));
        for (const i of members[g]) {
          const a = (r(i) - mg) / (Math.sqrt(varTask) + eps);
          adv[i] = !reweight ? a : r(i) > mg ? a * w : a / w;
        }
      }
      break;
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
