// Policy loss (DESIGN 3.3): verl's clipped surrogate (vanilla with dual clip,
// or GSPO's token form), rollout correction, KL and entropy terms, one of
// four aggregations, its gradient with respect to the log-probs and its
// stats, in one pass over the tokens. The kernels know no option names:
// src/policy_loss.ts maps them to the codes and scalars below.
//
// Sequences: padded layout, sequence i is tokens [i*T, (i+1)*T) of the
// flattened [B, T] tensors; packed layout, tokens [cu[i], cu[i+1]).
//
// Per token t of sequence i with kept mask m'_t (the mask after rollout
// rejection) the loss is sum_t a_t (w_t L_t + kl_coef k_t - ent_coef H_t),
// where a_t is the aggregation weight:
//   token-mean               dp / tokens
//   seq-mean-token-sum       dp / sequences
//   seq-mean-token-mean      dp / (sequences * n_i)
//   seq-mean-token-sum-norm  1 / loss_scale
// (tokens = sum m', n_i = sum_t m' of sequence i, sequences = #{n_i > 0},
// each overridable by an explicit global count; a zero denominator gives a
// zero weight, so an all-masked batch gives loss 0 and a zero gradient).
#pragma once
#include <cmath>
#include <cstdint>

#include "rlk/common.h"
#include "rlk/kl_penalty.h"

namespace rlk {

enum PolicyLossMode : int32_t { kPolicyVanilla = 0, kPolicyGspo = 1 };
enum PolicyLossAgg : int32_t { kAggTokenMean = 0, kAggSeqMeanTokenSum = 1, kAggSeqMeanTokenMean = 2, kAggSeqMeanTokenSumNorm = 3 };
enum TisLevel : int32_t { kTisNone = 0, kTisToken = 1, kTisSequence = 2, kTisGeometric = 3 };
enum TisMode : int32_t { kTisTruncate = 0, kTisMask = 1 };

// Layout of the stats tensor (float32 [kPolicyStatCount]); src/policy_loss.ts
// reads it by these indices.
enum PolicyStat : int32_t {
  kStatClipFraction = 0,
  kStatClipFractionLow = 1,
  kStatClipFractionHigh = 2,
  kStatDualClipFraction = 3,
  kStatPpoKl = 4,
  kStatRatioMean = 5,
  kStatRatioMin = 6,
  kStatRatioMax = 7,
  kStatIsWeightMean = 8,
  kStatVetoedSequences = 9,
  kStatKlMean = 10,
  kStatEntropyMean = 11,
  kStatKeptTokens = 12,     // sum m' (local)
  kStatSequences = 13,      // #{n_i > 0} (local)
  kPolicyStatCount = 14,
};

struct PolicyLossParams {
  const float* logprobs;          // [N]
  const float* old_logprobs;      // [N]
  const float* advantages;        // [N], or [B] when adv_per_sequence
  const uint8_t* mask;            // [N], nullptr: every token counts
  const float* rollout_logprobs;  // [N], needed when tis_level != kTisNone
  const float* ref_logprobs;      // [N], nullptr: no KL term
  const float* entropy;           // [N], nullptr: no entropy term
  const int32_t* cu_seqlens;      // [B + 1] packed layout, nullptr: padded [B, T]
  float* loss;                    // [] (one float)
  float* grad;                    // [N]
  float* grad_entropy;            // [N], written when entropy != nullptr
  float* stats;                   // [kPolicyStatCount]
  int64_t num_seqs;               // B
  int64_t seq_len;                // T (padded layout)
  int64_t num_tokens;             // N (= B * T padded)
  int32_t mode;                   // PolicyLossMode
  int32_t aggregation;            // PolicyLossAgg
  int32_t adv_per_sequence;       // 1: advantages is [B]
  int32_t use_dual_clip;          // 1: dual clip at dual_clip (vanilla only)
  int32_t tis_level;              // TisLevel
  int32_t tis_mode;               // TisMode
  int32_t use_veto;               // 1: veto sequences with a token log-weight < log_veto
  int32_t kl_estimator;           // KlEstimator, when ref_logprobs
  double clip_low, clip_high, dual_clip;
  double token_count;             // > 0: explicit global token count
  double sequence_count;          // > 0: explicit global sequence count
  double loss_scale;              // > 0: explicit; else T padded, the longest sequence packed
  double dp_size;
  double tis_upper, tis_lower, log_veto;
  double kl_coef, entropy_coef;
  int32_t device;                 // CUDA ordinal (CUDA only)
  void* stream;                   // cudaStream_t (CUDA only)
  int32_t* error_word;            // device error word (CUDA only: bad cu_seqlens)
};

namespace cpu {
Status PolicyLoss(const PolicyLossParams& p);
}  // namespace cpu
namespace cuda {
Status PolicyLoss(const PolicyLossParams& p);
}  // namespace cuda

}  // namespace rlk

namespace rlk {

// Flags of one token's surrogate, for the stats.
enum SurrogateFlag : uint32_t {
  kFlagClip = 1u,      // L2 > L1 (verl's pg_clipfrac)
  kFlagLow = 2u,       // r < 1 - clip_low and A < 0
  kFlagHigh = 4u,      // r > 1 + clip_high and A > 0
  kFlagDual = 8u,      // A < 0 and the dual clip is active (verl's pg_clipfrac_lower)
};

// verl's clipped surrogate for one token with ratio r and advantage A:
//   L1 = -A r, L2 = -A clamp(r, lo, hi), Lc = max(L1, L2),
//   where A < 0 (and dual): L = min(Lc, -A c).
// dL/dr follows torch's autograd of those ops: max passes the gradient to the
// larger argument (half to each on a tie; a tie with r inside [lo, hi] has
// both halves equal to -A), clamp passes it only inside its bounds, so
// dL/dr = -A where L1 >= L2 and the dual clip is not active, else 0.
template <class F>
RLK_HD F Surrogate(F A, F r, F lo, F hi, bool dual, F dual_c, F* dl_dr, uint32_t* flags) {
  F l1 = -A * r;
  F rc = r < lo ? lo : (r > hi ? hi : r);
  F l2 = -A * rc;
  F lc = l1 > l2 ? l1 : l2;
  F g = l1 >= l2 ? -A : F(0);
  uint32_t f = 0;
  if (l2 > l1) f |= kFlagClip;
  if (r < lo && A < F(0)) f |= kFlagLow;
  if (r > hi && A > F(0)) f |= kFlagHigh;
  if (dual && A < F(0)) {
    F l3 = -A * dual_c;
    if (lc > l3) {
      lc = l3;
      g = F(0);
      f |= kFlagDual;
    }
  }
  *dl_dr = g;
  *flags = f;
  return lc;
}

namespace policy_detail {
#if defined(__CUDACC__)
RLK_HD float Exp(float x) { return expf(x); }
RLK_HD double Exp(double x) { return ::exp(x); }
#else
inline float Exp(float x) { return std::exp(x); }
inline double Exp(double x) { return std::exp(x); }
#endif
}  // namespace policy_detail

// DESIGN 3.3's clamp of log-ratios and rollout log-weights to [-20, 20].
template <class F>
RLK_HD F ClampLogRatio(F x) { return x < F(-20) ? F(-20) : (x > F(20) ? F(20) : x); }

// One token's ratio and its derivative dr/dlogp from d = logp - old.
// Vanilla: r = exp(clamp(d, -20, 20)); the clamp passes the gradient inside
// its bounds (inclusive), so dr = r there and 0 outside. GSPO: r = s, the
// sequence ratio, whose derivative with respect to the token's own logp is s
// (verl's exp(logp_t - sg(logp_t) + sg(mean))), or 0 where the sequence's
// clamp at 10 blocks it (gspo_grad false).
template <class F>
RLK_HD F TokenRatio(bool gspo, F d, F gspo_s, bool gspo_grad, F* dr) {
  if (gspo) {
    *dr = gspo_grad ? gspo_s : F(0);
    return gspo_s;
  }
  const F r = policy_detail::Exp(ClampLogRatio(d));
  *dr = (d >= F(-20) && d <= F(20)) ? r : F(0);
  return r;
}

// The per-token and per-sequence decisions below are shared by the CPU (F =
// double) and CUDA (F = float) kernels. Their minimum is std::min's,
// `upper < w ? upper : w`, so a NaN weight stays NaN (DESIGN 4: NaN
// propagates); CUDA's fminf would return `upper` and hide it.

// Rollout-correction weight of one token (DESIGN 3.3) from its log-weight
// x = old - rollout: w = exp(clamp(x, -20, 20)). Returns whether the token is
// kept: mode kTisMask keeps it when w lies in [lower, upper] and applies w;
// kTisTruncate keeps every token and applies min(w, upper). A kernel that
// decides twice (count pass, token pass) must call this with the same F and
// the same x so both passes agree bit for bit.
template <class F>
RLK_HD bool TokenRolloutWeight(int32_t tis_mode, F x, F lower, F upper, F* w) {
  const F wt = policy_detail::Exp(ClampLogRatio(x));
  if (tis_mode == kTisMask) {
    *w = wt;
    return wt >= lower && wt <= upper;
  }
  *w = upper < wt ? upper : wt;
  return true;
}

// Sequence-level rollout weight from the sequence's log-weight lw (the sum,
// or the mean for 'geometric', of the masked tokens' log-weights). Returns
// false when mode kTisMask rejects the sequence (w outside [lower, upper]).
template <class F>
RLK_HD bool SequenceRolloutWeight(int32_t tis_mode, F lw, F lower, F upper, F* weight) {
  const F w = policy_detail::Exp(ClampLogRatio(lw));
  if (tis_mode == kTisMask) {
    *weight = w;
    return !(w < lower || w > upper);
  }
  *weight = upper < w ? upper : w;
  return true;
}

// GSPO's sequence ratio s = exp(min(mean, 10)) from the mean log-ratio over
// the kept tokens; *grad: whether clamp(max = 10) passes the gradient (at and
// below 10). A NaN mean gives a NaN ratio (fminf would give e^10).
template <class F>
RLK_HD F GspoRatio(F mean, bool* grad) {
  *grad = mean <= F(10);
  return policy_detail::Exp(mean > F(10) ? F(10) : mean);
}

}  // namespace rlk
