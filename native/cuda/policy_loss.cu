// CUDA policy loss: the phases of policy_loss.h in one cooperative launch per
// call, the kernel instantiated once per registry entry (policy_loss_modes.h)
// so its token loop carries no per-token switch. The grid is sized from the
// occupancy so every block is resident, and grid.sync() separates the phases:
//   R. one block per sequence (grid-stride over sequences): the rollout sums
//      over the input mask, reduced in the block in a fixed order; thread 0
//      takes the sequence's decisions (rejection, weight, off-policy KL);
//   -- grid.sync --
//   D. every block reduces the B sequence records itself, in the same fixed
//      order, so all get identical denominators and IS normaliser;
//   S. (sequence and covariance modes) one block per sequence: the mode's
//      sums over the kept tokens; thread 0 forms the sequence state;
//   -- grid.sync --; every block reduces the covariance means;
//   K. (covariance modes) radix select of the k smallest 64-bit keys among
//      the candidates, 4 bits a round: per-block histograms with shared
//      integer atomics (exact, so deterministic), grid.sync, every block
//      scans the block histograms in order;
//   T. grid-stride over tokens (int64): loss, gradient, gradEntropy and stat
//      partials in compensated float sums, a fixed-order block reduction in
//      double into per-block partials;
//   -- grid.sync --
//   E. block 0 reduces the per-block partials in block order.
// No float atomics; the result depends only on the inputs and the grid size,
// which is fixed per device, so it is deterministic run to run. Decisions
// taken in several phases (token rejection, clip-cov candidates, keys) go
// through one __noinline__ function each, so every phase computes them with
// the same instructions (FMA contraction cannot differ between call sites).
// Packed cuSeqlens are validated on the device (bad values set the device
// error word, read by the host as a RangeError) and every index is clamped so
// bad offsets cannot read or write out of bounds.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cfloat>

#include "rlk/policy_loss.h"
#include "rlk/runtime.h"

// __noinline__ is nvcc's; g++ builds for the emulated device (native/sim)
// cannot take it as a macro (libstdc++ spells __attribute__((__noinline__))).
#if defined(RLK_CUDA_SIM_DEVICE)
#define RLK_NOINLINE __attribute__((noinline))
#else
#define RLK_NOINLINE __noinline__
#endif

namespace rlk::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRadixBits = 4;
constexpr int kBins = 1 << kRadixBits;

enum SeqFlag : int32_t { kSeqRejected = 1, kSeqVetoed = 2, kSeqPartlyRejected = 4 };

// A sequence's record: rollout sums and decisions (phase R), state (phase S).
struct SeqRec {
  float n0;        // masked tokens
  float n;         // kept tokens (0 when rejected)
  float w_seq;     // sequence IS weight before normalisation
  float sum_w;     // token IS weights over the masked tokens
  float kl_off;    // off-policy KL
  float cov_a, cov_l;  // sums of A and logp over the kept tokens
  int32_t flags;   // SeqFlag
  SeqState<float> st;
};

// Per-block partials of phase T, combined by block 0 in phase E.
enum Partial : int {
  kPObj = 0, kPNegLr, kPRatio, kPWeight, kPKl, kPEnt, kPOff, kPClip, kPLow, kPHigh, kPDual, kPMin, kPMax, kPCount
};

struct Sum { __device__ static double Op(double a, double b) { return a + b; } };
struct Min { __device__ static double Op(double a, double b) { return a < b ? a : b; } };
struct Max { __device__ static double Op(double a, double b) { return a > b ? a : b; } };

// Block-wide reduction of one double per thread in a fixed order: warp
// shuffles, one slot per warp in shared memory, then warp 0. Every thread
// gets the result. Assumes blockDim.x == kThreads; `slots` holds kWarps
// values and is reused, hence the leading __syncthreads.
template <class Op>
__device__ double BlockReduce(double v, double* slots) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = Op::Op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = slots[lane < kWarps ? lane : 0];
    for (int o = kWarps / 2; o > 0; o >>= 1) v = Op::Op(v, __shfl_down_sync(0xffffffffu, v, o));
    // Lanes >= kWarps read slot 0 above; shuffles do not order memory, so
    // without this lane 0's write races with those reads (found by the
    // emulated device under ThreadSanitizer).
    __syncwarp();
    if (lane == 0) slots[0] = v;
  }
  __syncthreads();
  return slots[0];
}

// Kahan-compensated float accumulator: the per-token terms have both signs
// (advantages do), so a plain float sum would lose the small total. Once the
// sum is infinite the compensation is dropped ((inf - inf) - y is NaN).
struct Kahan {
  float s = 0.f, c = 0.f;
  __device__ void Add(float x) {
    float y = x - c;
    float t = s + y;
    c = isfinite(t) ? (t - s) - y : 0.f;
    s = t;
  }
  __device__ double Value() const { return double(s) - double(c); }
};

__device__ __forceinline__ void ReportBadOffsets(int32_t* error_word) {
  if (error_word) atomicCAS(error_word, 0, int32_t(kDeviceErrorIndexOutOfRange));
}

// The decisions every phase must take alike (see the file comment).
__device__ RLK_NOINLINE bool TokenRollout(const PolicyLossParams& p, int64_t t, float* w) {
  return RolloutToken<float>(p, RolloutLogRatio<float>(p, t), w);
}

// Covariance key of a kept token (UINT64_MAX: not a candidate).
__device__ RLK_NOINLINE uint64_t CovKey(const PolicyLossParams& p, const ModeConsts<float>& mc, int64_t i, int64_t j, int64_t t,
                                        float A, float abar, float lbar) {
  PolicyToken<float> tok{p.logprobs[t], p.old_logprobs[t], A, 0.f, false};
  tok.d = tok.logp - tok.old;
  const float cov = (A - abar) * (tok.logp - lbar);
  if (p.mode == kPolicyClipCov) {
    if (!ClipCovMode::Candidate(mc, tok, cov)) return ~0ull;
    return ClipCovKey(uint64_t(p.cov_seed), uint64_t(i), uint64_t(j));
  }
  return KlCovKey(cov, uint64_t(t));
}

struct Layout {
  const PolicyLossParams& p;
  bool packed;
  __device__ void Range(int64_t i, int64_t* b, int64_t* e) const {
    const int64_t N = p.num_tokens;
    if (packed) {
      int64_t lo = p.cu_seqlens[i], hi = p.cu_seqlens[i + 1];
      lo = lo < 0 ? 0 : (lo > N ? N : lo);
      hi = hi < lo ? lo : (hi > N ? N : hi);
      *b = lo;
      *e = hi;
    } else {
      *b = i * p.seq_len;
      *e = *b + p.seq_len;
    }
  }
  // The sequence holding token t: largest i with cu[i] <= t, clamped into [0, B).
  __device__ int64_t SeqOf(int64_t t) const {
    const int64_t B = p.num_seqs;
    if (!packed) return t / p.seq_len;
    int64_t a = 0, z = B;
    while (a < z) {
      const int64_t mid = (a + z) >> 1;
      if (int64_t(p.cu_seqlens[mid + 1]) <= t) a = mid + 1;
      else z = mid;
    }
    return a < B ? a : B - 1;
  }
};

// A masked token's keep decision, final IS weight and off-policy mask; *raw
// (when asked) the IS weight before the batch normaliser.
__device__ __forceinline__ bool KeepToken(const PolicyLossParams& p, const SeqRec& q, int64_t t, float A, float norm, bool rollout,
                                          float* w, float* o, float* raw = nullptr) {
  *w = 1.f;
  *o = 1.f;
  if (raw) *raw = 1.f;
  if (q.flags & kSeqRejected) return false;
  if (!rollout) return true;
  float wt;
  if (!TokenRollout(p, t, &wt)) return false;
  const float r = p.tis_level == kTisToken ? wt : p.tis_level != kTisNone ? q.w_seq : 1.f;
  if (p.tis_level != kTisNone) *w = r * norm;
  if (raw) *raw = r;
  if (p.off_policy && A < 0.f && q.kl_off > float(p.off_policy_delta)) *o = 0.f;
  return true;
}

template <class Mode>
__global__ void __launch_bounds__(kThreads) PolicyLossKernel(PolicyLossParams p,
                                                             SeqRec* __restrict__ seqs,             // [B]
                                                             double* __restrict__ partials,         // [gridDim.x, kPCount]
                                                             unsigned long long* __restrict__ bins) {  // [gridDim.x, kBins]
  cg::grid_group grid = cg::this_grid();
  __shared__ double slots[kWarps];
  __shared__ double totals[12];
  __shared__ unsigned long long hist[kBins];
  const int64_t B = p.num_seqs, N = p.num_tokens;
  const Layout lay{p, p.cu_seqlens != nullptr};
  const bool rollout = RolloutActive(p);
  const ModeConsts<float> mc = MakeModeConsts<float>(p);
  auto masked = [&](int64_t t) { return p.mask == nullptr || p.mask[t] != 0; };
  auto adv = [&](int64_t i, int64_t t) { return p.advantages[p.adv_per_sequence ? i : t]; };

  // ---- R: rollout sums and per-sequence decisions.
  if (lay.packed && blockIdx.x == 0 && threadIdx.x == 0 && (p.cu_seqlens[0] != 0 || int64_t(p.cu_seqlens[B]) != N))
    ReportBadOffsets(p.error_word);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    if (lay.packed && threadIdx.x == 0 && p.cu_seqlens[i] > p.cu_seqlens[i + 1]) ReportBadOffsets(p.error_word);
    int64_t b, e;
    lay.Range(i, &b, &e);
    float n0 = 0.f, nk = 0.f, min_x = FLT_MAX, kmax[3] = {-FLT_MAX, -FLT_MAX, -FLT_MAX};
    Kahan sum_x, sum_w, sum_b, ksum[3];
    for (int64_t t = b + threadIdx.x; t < e; t += kThreads) {
      if (!masked(t)) continue;
      n0 += 1.f;
      if (!rollout) continue;
      const float x = RolloutLogRatio<float>(p, t);
      float w;
      if (TokenRollout(p, t, &w)) nk += 1.f;
      sum_x.Add(x);
      min_x = fminf(min_x, x);
      sum_w.Add(w);
      if (p.num_criteria > 0) {
        float k[3];
        RejectEstimators(x, k);
        for (int j = 0; j < 3; ++j) {
          ksum[j].Add(k[j]);
          kmax[j] = fmaxf(kmax[j], k[j]);
        }
      }
      if (p.off_policy) {
        const float bb = (p.rollout_logprobs && p.mode != kPolicyReinforce) ? p.rollout_logprobs[t] : p.old_logprobs[t];
        sum_b.Add(bb - p.logprobs[t]);
      }
    }
    if (!rollout) nk = n0;
    // Counts stay exact in double; a sequence is at most 2^31 tokens.
    RolloutSums<float> s;
    s.n0 = float(BlockReduce<Sum>(double(n0), slots));
    s.nk = float(BlockReduce<Sum>(double(nk), slots));
    s.sum_x = float(BlockReduce<Sum>(sum_x.Value(), slots));
    s.min_x = float(BlockReduce<Min>(double(min_x), slots));
    s.sum_w = float(BlockReduce<Sum>(sum_w.Value(), slots));
    s.sum_b = float(BlockReduce<Sum>(sum_b.Value(), slots));
    if (p.num_criteria > 0) {
      for (int j = 0; j < 3; ++j) {
        s.ksum[j] = float(BlockReduce<Sum>(ksum[j].Value(), slots));
        s.kmax[j] = float(BlockReduce<Max>(double(kmax[j]), slots));
      }
    }
    if (threadIdx.x == 0) {
      SeqRec q{};
      q.n0 = s.n0;
      q.sum_w = s.sum_w;
      q.w_seq = 1.f;
      bool veto = false;
      const bool rejected = rollout && RolloutSequence<float>(p, s, &q.w_seq, &veto);
      q.flags = (rejected ? kSeqRejected : 0) | (veto ? kSeqVetoed : 0);
      q.kl_off = s.sum_b / fmaxf(s.n0, 1.f);
      q.n = rejected ? 0.f : s.nk;
      if (s.n0 > 0.f && q.n < s.n0) q.flags |= kSeqPartlyRejected;
      q.st = SeqState<float>();
      seqs[i] = q;
    }
  }
  grid.sync();

  // ---- D: denominators and the IS normaliser, reduced by every block in the same order.
  {
    double v[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // in_mask, tokens, sequences, longest, vetoed, rejected, sum_w, sum_wseq, n_wseq
    for (int64_t i = threadIdx.x; i < B; i += kThreads) {
      const SeqRec q = seqs[i];
      v[0] += q.n0;
      v[1] += q.n;
      v[2] += q.n > 0.f ? 1 : 0;
      int64_t b, e;
      lay.Range(i, &b, &e);
      v[3] = fmax(v[3], double(e - b));
      v[4] += (q.flags & kSeqVetoed) ? 1 : 0;
      v[5] += (q.flags & kSeqPartlyRejected) ? 1 : 0;
      v[6] += q.sum_w;
      if (q.n0 > 0.f) {
        v[7] += q.w_seq;
        v[8] += 1;
      }
    }
    for (int k = 0; k < 9; ++k) {
      const double r = k == 3 ? BlockReduce<Max>(v[k], slots) : BlockReduce<Sum>(v[k], slots);
      if (threadIdx.x == 0) totals[k] = r;
    }
    __syncthreads();
  }
  const double in_mask = totals[0], tokens = totals[1], sequences = totals[2];
  float norm = 1.f, ln_norm = 0.f;
  if (p.is_normalize && p.tis_level != kTisNone) {
    const double mu = p.tis_level == kTisToken ? (in_mask > 0 ? totals[6] / in_mask : 0.0) : (totals[8] > 0 ? totals[7] / totals[8] : 0.0);
    if (mu > 1e-8) {
      norm = float(1.0 / mu);
      ln_norm = float(-log(mu));
    }
  }
  const double tok_den = p.token_count > 0 ? p.token_count : tokens;
  const double seq_den = p.sequence_count > 0 ? p.sequence_count : sequences;
  const double scale = p.loss_scale > 0 ? p.loss_scale : (lay.packed ? totals[3] : double(p.seq_len));
  // The aggregation weight of a kept token is agg_base, divided by n_i for seq-mean-token-mean.
  const bool agg_per_n = p.aggregation == kAggSeqMeanTokenMean;
  const float agg_base = float(AggregationWeight(agg_per_n ? kAggSeqMeanTokenSum : p.aggregation, p.dp_size, tok_den, seq_den, scale, 1.0));

  // ---- S: the mode's per-sequence sums and the covariance sums.
  float abar = 0.f, lbar = 0.f;
  if (Mode::kSeqSums > 0 || Mode::kCov) {
    constexpr int S = Mode::kSeqSums > 0 ? Mode::kSeqSums : 1;
    for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
      int64_t b, e;
      lay.Range(i, &b, &e);
      const SeqRec q = seqs[i];
      Kahan sums[S], ca, cl;
      for (int64_t t = b + threadIdx.x; t < e; t += kThreads) {
        if (!masked(t)) continue;
        const float A = adv(i, t);
        float w, o, raw;
        if (!KeepToken(p, q, t, A, norm, rollout, &w, &o, &raw)) continue;
        PolicyToken<float> tok{p.logprobs[t], p.old_logprobs[t], A, 0.f, false};
        tok.d = tok.logp - tok.old;
        // TwoSum: the exact rounding error of logp - old (adds only, so no FMA contraction).
        {
          const float bv = tok.d - tok.logp, av = tok.d - bv;
          tok.d_lo = (tok.logp - av) + (-tok.old - bv);
        }
        // In float: DESIGN 4 keeps float64 out of the GPU's token loops (the H20
        // has little of it). vespo's phi amplifies the ~1e-7 this leaves on
        // ln w_i by |k - lambda w_i| (README, numerics). The normaliser enters
        // as its log from double: ln(float(1 / mu)) put the same 6e-8 on every
        // token, n_i times over the sequence's sum (seed 605204742: 2.3e-5 of
        // the loss).
        if (Mode::kFoldsIs) tok.lw = logf(raw) + ln_norm;
        if (Mode::kSeqSums > 0) {
          float v[S];
          Mode::SeqTerms(mc, tok, w, o, v);
          for (int j = 0; j < S; ++j) sums[j].Add(v[j]);
        }
        if (Mode::kCov) {
          ca.Add(A);
          cl.Add(tok.logp);
        }
      }
      double tot[S];
      for (int j = 0; j < S; ++j) tot[j] = BlockReduce<Sum>(sums[j].Value(), slots);
      const float sa = float(BlockReduce<Sum>(ca.Value(), slots));
      const float sl = float(BlockReduce<Sum>(cl.Value(), slots));
      if (threadIdx.x == 0) {
        // The sequence is finished in double (see SeqStateAs).
        SeqState<double> st;
        if (Mode::kSeqSums > 0 && !(q.flags & kSeqRejected))
          Mode::SeqFinal(MakeModeConsts<double>(p), tot, double(q.n), p.tis_level != kTisNone, &st);
        seqs[i].st = SeqStateAs<float>(st);
        seqs[i].cov_a = sa;
        seqs[i].cov_l = sl;
      }
    }
    grid.sync();
    if (Mode::kCov) {
      double a = 0, l = 0;
      for (int64_t i = threadIdx.x; i < B; i += kThreads) {
        a += seqs[i].cov_a;
        l += seqs[i].cov_l;
      }
      a = BlockReduce<Sum>(a, slots);
      l = BlockReduce<Sum>(l, slots);
      abar = tokens > 0 ? float(a / tokens) : 0.f;
      lbar = tokens > 0 ? float(l / tokens) : 0.f;
    }
  }

  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t n_loop = B > 0 ? N : 0;  // B = 0 with tokens is bad cuSeqlens, already reported

  // ---- K: the k smallest keys among the candidates (covariance modes).
  uint64_t threshold = 0;
  bool any_sel = false;
  if (Mode::kCov) {
    // Round r counts, per 4-bit digit, the candidates whose key matches the
    // prefix found so far above the digit; the first round (all digits free)
    // also gives the candidate count.
    auto key_of = [&](int64_t t, uint64_t* key) -> bool {
      if (!masked(t)) return false;
      const int64_t i = lay.SeqOf(t);
      const SeqRec& q = seqs[i];
      const float A = adv(i, t);
      float w, o;
      if (!KeepToken(p, q, t, A, norm, rollout, &w, &o)) return false;
      int64_t b, e;
      lay.Range(i, &b, &e);
      *key = CovKey(p, mc, i, t - b, t, A, abar, lbar);
      return *key != ~0ull;
    };
    uint64_t prefix = 0;
    unsigned long long want = 0;
    for (int round = 0; round < 64 / kRadixBits; ++round) {
      const int shift = 64 - kRadixBits * (round + 1);
      const uint64_t high_mask = round == 0 ? 0ull : (~0ull << (shift + kRadixBits));
      if (threadIdx.x < kBins) hist[threadIdx.x] = 0;
      __syncthreads();
      for (int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x; t < n_loop; t += stride) {
        uint64_t key;
        if (!key_of(t, &key) || (key & high_mask) != prefix) continue;
        atomicAdd(&hist[(key >> shift) & (kBins - 1)], 1ull);  // integer: exact in any order
      }
      __syncthreads();
      if (threadIdx.x < kBins) bins[int64_t(blockIdx.x) * kBins + threadIdx.x] = hist[threadIdx.x];
      grid.sync();
      // Every block sums the histograms in block order (exact integers).
      if (threadIdx.x < kBins) {
        unsigned long long c = 0;
        for (unsigned j = 0; j < gridDim.x; ++j) c += bins[int64_t(j) * kBins + threadIdx.x];
        hist[threadIdx.x] = c;
      }
      __syncthreads();
      if (round == 0) {
        unsigned long long total = 0;
        for (int d = 0; d < kBins; ++d) total += hist[d];
        const double ratio = p.cov_ratio;
        long long k = (long long)floor(ratio * tokens);
        if (k < 1) k = 1;
        want = tokens > 0 ? (unsigned long long)(k) : 0ull;
        if (want > total) want = total;
      }
      if (want == 0) break;
      unsigned long long below = 0;
      int d = 0;
      for (; d < kBins - 1 && below + hist[d] < want; ++d) below += hist[d];
      want -= below;
      prefix |= uint64_t(d) << shift;
      any_sel = true;
      __syncthreads();  // hist is rewritten next round
      grid.sync();      // bins too
    }
    threshold = prefix;
  }

  // ---- T: tokens.
  const float klc = float(p.kl_coef), entc = float(p.entropy_coef);
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  const bool stat_seq_w = p.mode == kPolicyGeoMean;
  Kahan obj_sum, neg_lr_sum, ratio_sum, weight_sum, kl_sum, ent_sum;
  float clip = 0.f, low = 0.f, high = 0.f, dualn = 0.f, offn = 0.f;  // per-thread counts stay far below 2^24
  float rmin = FLT_MAX, rmax = -FLT_MAX;
  for (int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x; t < n_loop; t += stride) {
    const int64_t i = lay.SeqOf(t);
    const SeqRec& q = seqs[i];
    const float A = adv(i, t);
    float w, o;
    if (!masked(t) || !KeepToken(p, q, t, A, norm, rollout, &w, &o)) {
      p.grad[t] = 0.f;
      if (has_ent) p.grad_entropy[t] = 0.f;
      continue;
    }
    const float coef = q.n > 0.f ? (agg_per_n ? agg_base / q.n : agg_base) : 0.f;
    PolicyToken<float> tok{p.logprobs[t], p.old_logprobs[t], A, 0.f, false};
    tok.d = tok.logp - tok.old;
    if (Mode::kCov && any_sel) {
      int64_t b, e;
      lay.Range(i, &b, &e);
      tok.sel = CovKey(p, mc, i, t - b, t, A, abar, lbar) <= threshold;
    }
    TokenTerm<float> term;
    Mode::Token(mc, tok, q.st, &term);
    const float wl = Mode::kFoldsIs ? 1.f : w;
    float obj = wl * o * term.loss;
    float g = wl * o * term.grad + term.grad_seq;
    if (has_kl) {
      float kv, kg;
      KlValueGrad<float>(p.kl_estimator, tok.logp - p.ref_logprobs[t], &kv, &kg);
      if (p.kl_bias_correction) KlBiasCorrection(tok.d, &kv, &kg);
      obj += klc * kv;
      g += klc * kg;
      kl_sum.Add(kv);
    }
    if (has_ent) {
      const float h = p.entropy[t];
      obj -= entc * h;
      ent_sum.Add(h);
      p.grad_entropy[t] = -coef * entc;
    }
    p.grad[t] = coef * g;
    obj_sum.Add(coef * obj);
    clip += term.clip ? 1.f : 0.f;
    low += term.low ? 1.f : 0.f;
    high += term.high ? 1.f : 0.f;
    dualn += term.dual ? 1.f : 0.f;
    offn += 1.f - o;
    neg_lr_sum.Add(-ClampLogRatio(tok.d));
    ratio_sum.Add(term.ratio);
    rmin = fminf(rmin, term.ratio);
    rmax = fmaxf(rmax, term.ratio);
    weight_sum.Add(stat_seq_w ? q.st.w : w);
  }
  {
    double v[kPCount];
    v[kPObj] = BlockReduce<Sum>(obj_sum.Value(), slots);
    v[kPNegLr] = BlockReduce<Sum>(neg_lr_sum.Value(), slots);
    v[kPRatio] = BlockReduce<Sum>(ratio_sum.Value(), slots);
    v[kPWeight] = BlockReduce<Sum>(weight_sum.Value(), slots);
    v[kPKl] = BlockReduce<Sum>(kl_sum.Value(), slots);
    v[kPEnt] = BlockReduce<Sum>(ent_sum.Value(), slots);
    v[kPOff] = BlockReduce<Sum>(offn, slots);
    v[kPClip] = BlockReduce<Sum>(clip, slots);
    v[kPLow] = BlockReduce<Sum>(low, slots);
    v[kPHigh] = BlockReduce<Sum>(high, slots);
    v[kPDual] = BlockReduce<Sum>(dualn, slots);
    v[kPMin] = BlockReduce<Min>(rmin, slots);
    v[kPMax] = BlockReduce<Max>(rmax, slots);
    if (threadIdx.x == 0)
      for (int k = 0; k < kPCount; ++k) partials[int64_t(blockIdx.x) * kPCount + k] = v[k];
  }
  grid.sync();

  // ---- E: block 0 combines the blocks in order.
  if (blockIdx.x != 0) return;
  double v[kPCount];
  for (int k = 0; k < kPCount; ++k) {
    double acc = k == kPMin ? DBL_MAX : (k == kPMax ? -DBL_MAX : 0.0);
    for (int64_t j = threadIdx.x; j < gridDim.x; j += kThreads) {
      const double x = partials[j * kPCount + k];
      acc = k == kPMin ? fmin(acc, x) : (k == kPMax ? fmax(acc, x) : acc + x);
    }
    v[k] = k == kPMin ? BlockReduce<Min>(acc, slots) : (k == kPMax ? BlockReduce<Max>(acc, slots) : BlockReduce<Sum>(acc, slots));
  }
  if (threadIdx.x == 0) {
    *p.loss = float(v[kPObj]);
    float* st = p.stats;
    for (int k = 0; k < kPolicyStatCount; ++k) st[k] = 0.f;
    if (tokens > 0) {
      const double inv = 1.0 / tokens;
      st[kStatClipFraction] = float(v[kPClip] * inv);
      st[kStatClipFractionLow] = float(v[kPLow] * inv);
      st[kStatClipFractionHigh] = float(v[kPHigh] * inv);
      st[kStatDualClipFraction] = float(v[kPDual] * inv);
      st[kStatPpoKl] = float(v[kPNegLr] * inv);
      st[kStatRatioMean] = float(v[kPRatio] * inv);
      st[kStatRatioMin] = float(v[kPMin]);
      st[kStatRatioMax] = float(v[kPMax]);
      st[kStatIsWeightMean] = float(v[kPWeight] * inv);
      st[kStatKlMean] = float(v[kPKl] * inv);
      st[kStatEntropyMean] = float(v[kPEnt] * inv);
      st[kStatOffPolicyMaskedFraction] = float(v[kPOff] * inv);
    }
    st[kStatVetoedSequences] = float(totals[4]);
    st[kStatKeptTokens] = float(tokens);
    st[kStatSequences] = float(sequences);
    st[kStatRejectedFraction] = in_mask > 0 ? float(1.0 - tokens / in_mask) : 0.f;
    st[kStatRejectedSequences] = float(totals[5]);
  }
}

Status CudaError(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  return Status{err == cudaErrorMemoryAllocation ? Status::kOutOfMemory : Status::kCudaError, what};
}

// Launches the kernel of one registry entry.
struct Launcher {
  const PolicyLossParams& p;
  template <class Mode>
  Status operator()() const {
    int sms = 0, coop = 0, per_sm = 0;
    Status st = CudaError(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device), "policyLoss: cudaDeviceGetAttribute failed");
    if (!st.ok()) return st;
    st = CudaError(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, p.device), "policyLoss: cudaDeviceGetAttribute failed");
    if (!st.ok()) return st;
    if (!coop) return Status{Status::kUnsupported, "policyLoss: the GPU does not support cooperative launches"};
    st = CudaError(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, PolicyLossKernel<Mode>, kThreads, 0),
                   "policyLoss: cudaOccupancyMaxActiveBlocksPerMultiprocessor failed");
    if (!st.ok()) return st;
    if (per_sm < 1) return Status{Status::kCudaError, "policyLoss: the kernel cannot be resident on this GPU"};
    // Every block must be resident for grid.sync(); more work than blocks is
    // covered by the grid-stride loops. The grid depends only on the device and
    // the sizes, so results stay bitwise reproducible.
    int64_t want = (p.num_tokens + kThreads - 1) / kThreads;
    if (p.num_seqs > want) want = p.num_seqs;
    const int64_t max_blocks = int64_t(per_sm) * sms;
    const int blocks = int(want < 1 ? 1 : (want > max_blocks ? max_blocks : want));

    void* scratch = nullptr;
    const size_t seq_bytes = (size_t(p.num_seqs > 0 ? p.num_seqs : 1) * sizeof(SeqRec) + 255) / 256 * 256;
    const size_t part_bytes = (size_t(blocks) * kPCount * sizeof(double) + 255) / 256 * 256;
    const size_t bin_bytes = size_t(blocks) * kBins * sizeof(unsigned long long);
    st = DeviceAlloc(p.device, seq_bytes + part_bytes + bin_bytes, &scratch);
    if (!st.ok()) return st;
    SeqRec* seqs = static_cast<SeqRec*>(scratch);
    double* partials = reinterpret_cast<double*>(static_cast<char*>(scratch) + seq_bytes);
    unsigned long long* bins = reinterpret_cast<unsigned long long*>(static_cast<char*>(scratch) + seq_bytes + part_bytes);
    PolicyLossParams params = p;
    void* args[] = {&params, &seqs, &partials, &bins};
    // The typed form of the C++ API (valid CUDA; the emulated device needs the
    // parameter types to call the kernel).
    cudaError_t err = cudaLaunchCooperativeKernel(PolicyLossKernel<Mode>, dim3(unsigned(blocks)), dim3(kThreads), args, 0,
                                                  static_cast<cudaStream_t>(p.stream));
    if (err == cudaSuccess) err = cudaGetLastError();
    // The caching allocator reuses blocks in stream order on this device's one
    // stream, so the scratch may be handed back before the kernel has run.
    DeviceFree(p.device, scratch);
    return CudaError(err, "policyLoss: cooperative kernel launch failed");
  }
};

}  // namespace

Status PolicyLoss(const PolicyLossParams& p) {
  // Counts of one sequence's tokens are float-exact below 2^24 per thread and
  // reduced in double; packed sequences are bounded by the int32 cuSeqlens.
  if (p.cu_seqlens == nullptr && p.seq_len > INT32_MAX)
    return Status{Status::kUnsupported, "policyLoss: sequences longer than 2^31 - 1 tokens are not supported on CUDA"};
  Status st = CudaError(cudaSetDevice(p.device), "policyLoss: cudaSetDevice failed");
  if (!st.ok()) return st;
  return PolicyModeDispatch(p.mode, Launcher{p});
}

}  // namespace rlk::cuda
