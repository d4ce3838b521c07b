// The cache of freed large host blocks (native/addon/tensor.cc, README "Host memory"): a block of
// 2 MiB or more handed back by dispose() serves the next output of the same rounded size. A reused
// block must behave as a fresh one: poisoned under RLK_POISON_ALLOC=1 (vitest.config.ts sets it),
// never shared by two live tensors, and overwritten in full by the op that takes it.
import { describe, expect, it } from 'vitest';
import * as rlk from '../src/index.js';
import { TOLERANCE, expectClose, freshSeed, randn, rng } from './helpers.js';
import { klPenaltyRef } from './reference/kl_penalty.js';

const N = (3 << 20) / 4 + 5;  // 3 MiB and a bit: above the cache's 2 MiB floor, not a multiple of it

describe('host block cache', () => {
  it('a reused block is poisoned again (RLK_POISON_ALLOC=1) and holds none of its old contents', () => {
    const a = rlk.full([N], 7);
    a.dispose();
    const b = rlk.empty([N]);
    const v = b.toArraySync() as Float32Array;
    expect(v.length).toBe(N);
    expect(v.every(Number.isNaN)).toBe(true);
    b.dispose();
  });

  it('live tensors never share a block; sizes that round alike still get their own', () => {
    const ts: rlk.Tensor[] = [];
    for (let k = 0; k < 6; k++) {
      const t = rlk.full([N + k], k);
      ts.push(t);
      if (k % 2 === 1) {
        ts.shift()!.dispose();  // free one, allocate the next: the freed block is the one reused
      }
    }
    for (const t of ts) {
      const k = t.shape[0] - N;
      expect((t.toArraySync() as Float32Array).every((x) => x === k)).toBe(true);
      t.dispose();
    }
  });

  it('klPenalty k3 on outputs taken from the cache, call after call', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (let call = 0; call < 3; call++) {
      const logp = Float32Array.from(randn(r, N, 2), (x) => -Math.abs(x) - 0.01);
      const noise = randn(r, N, 0.5);
      const ref = Float32Array.from(logp, (x, i) => x + noise[i]);
      const lt = rlk.tensor(logp);
      const rt = rlk.tensor(ref);
      const out = rlk.klPenalty(lt, rt, { estimator: 'k3' });
      const want = klPenaltyRef('k3', logp, ref);
      expectClose(`k3 call ${call} values`, out.values.toArraySync(), want.values, TOLERANCE.float32, seed);
      expectClose(`k3 call ${call} grad`, out.grad.toArraySync(), want.grad, TOLERANCE.float32, seed);
      for (const t of [lt, rt, out.values, out.grad]) t.dispose();
    }
  });
});
