// Policy loss (DESIGN 3.3, LOSSES.md): every mode of the registry in
// policy_loss_modes.h, rollout correction (DESIGN's `tis` and current verl's
// `rolloutCorrection`: IS weights, IcePop mask, batch normalisation,
// rejection criteria), TRL's off-policy mask, the KL (with TRL's bias
// correction) and entropy terms, one of five aggregations, the gradient with
// respect to the log-probs and the stats. The kernels know no option names:
// src/policy_loss.ts maps them to the codes and scalars below.
//
// Sequences: padded layout, sequence i is tokens [i*T, (i+1)*T) of the
// flattened [B, T] tensors; packed layout, tokens [cu[i], cu[i+1]).
//
// Phases, the same for every mode (each backend runs them its own way):
//   R  rollout pre-pass over the input mask m, per sequence: counts, the
//      log-ratio sums of sequence IS weights, token IS weight sums (batch
//      normalisation), rejection statistics, the off-policy KL;
//   D  per-sequence decisions: rejection (so n_i, the kept mask M = m k),
//      sequence weights, normaliser mu, off-policy flags;
//   S  the mode's pre-pass over M (sequence modes: kSeqSums; covariance
//      modes: the batch means of A and logp), then each sequence's state;
//   K  covariance modes: the selection (clip-cov's keys, kl-cov's top-k);
//   T  the token pass: loss, gradient, gradEntropy, stat partials;
//   reduce the partials in a fixed order.
// Per kept token of sequence i the loss is a_i (w o l_t + kl_coef k_t -
// ent_coef H_t) with the aggregation weight
//   token-mean               dp / tokens
//   token-sum                dp
//   seq-mean-token-sum       dp / sequences
//   seq-mean-token-mean      dp / (sequences * n_i)
//   seq-mean-token-sum-norm  dp / (sequences * loss_scale)   (current verl)
// (tokens = sum M, n_i = sum_t M of sequence i, sequences = #{n_i > 0}, each
// overridable by an explicit global count; a zero denominator gives a zero
// weight, so an all-masked batch gives loss 0 and a zero gradient).
#pragma once
#include <cmath>
#include <cstdint>

#include "rlk/common.h"
#include "rlk/kl_penalty.h"
#include "rlk/policy_loss_modes.h"

namespace rlk {

enum PolicyLossAgg : int32_t {
  kAggTokenMean = 0, kAggSeqMeanTokenSum = 1, kAggSeqMeanTokenMean = 2, kAggSeqMeanTokenSumNorm = 3, kAggTokenSum = 4,
};
// Rollout IS weights: DESIGN's `tis` (levels token / sequence / geometric;
// its mask mode rejects) or LOSSES.md's `rolloutCorrection.is` (token /
// sequence; its mask mode zeroes the weight, IcePop).
enum TisLevel : int32_t { kTisNone = 0, kTisToken = 1, kTisSequence = 2, kTisGeometric = 3 };
enum TisMode : int32_t { kTisTruncate = 0, kTisMask = 1 };
enum RolloutSource : int32_t { kRolloutTis = 0, kRolloutCorrection = 1 };
// Rejection criteria (LOSSES.md section 3): estimator k1/k2/k3 of
// KL(pi_rollout || pi_old) per token, or its sum / mean / max over a sequence.
enum RejectAgg : int32_t { kRejectToken = 0, kRejectSeqSum = 1, kRejectSeqMean = 2, kRejectSeqMax = 3 };
constexpr int kMaxRejectCriteria = 8;

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
  kStatKeptTokens = 12,     // sum M (local)
  kStatSequences = 13,      // #{n_i > 0} (local)
  kStatRejectedFraction = 14,
  kStatRejectedSequences = 15,
  kStatOffPolicyMaskedFraction = 16,
  kPolicyStatCount = 17,
};

struct PolicyLossParams {
  const float* logprobs;          // [N]
  const float* old_logprobs;      // [N]
  const float* advantages;        // [N], or [B] when adv_per_sequence
  const uint8_t* mask;            // [N], nullptr: every token counts
  const float* rollout_logprobs;  // [N], needed by rollout weights / rejection (not reinforce) and read by offPolicyMask
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
  int32_t kl_bias_correction;     // 1: KL value k r (TRL use_bias_correction_kl)
  int32_t rollout_source;         // RolloutSource: how tis_level / tis_mode read
  int32_t is_normalize;           // 1: divide the IS weights by their batch mean
  int32_t is_has_lower;           // rolloutCorrection truncate: max(w, tis_lower) too
  int32_t num_criteria;           // rejection criteria, <= kMaxRejectCriteria
  int32_t crit_estimator[kMaxRejectCriteria];  // 1, 2, 3: k1, k2, k3
  int32_t crit_agg[kMaxRejectCriteria];        // RejectAgg
  double crit_lo[kMaxRejectCriteria], crit_hi[kMaxRejectCriteria];  // keep iff lo <= stat <= hi
  int32_t off_policy;             // 1: TRL off-policy mask with threshold off_policy_delta
  double off_policy_delta;
  double clip_low, clip_high, dual_clip;
  double ratio_cap;               // > 0: vanilla's ratioCap, dppo's R
  double tau_pos, tau_neg, beta;
  double cov_ratio, cov_lb, cov_ub, cov_seed, kl_cov_coef;
  double k_pos, lambda_pos, k_neg, lambda_neg;
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

// ---- helpers shared by the CPU and CUDA machinery ---------------------------

template <class F>
RLK_HD ModeConsts<F> MakeModeConsts(const PolicyLossParams& p) {
  ModeConsts<F> c;
  c.lo = F(1.0 - p.clip_low);
  c.hi = F(1.0 + p.clip_high);
  c.cl = F(p.clip_low);
  c.ch = F(p.clip_high);
  c.dual_c = F(p.dual_clip);
  c.dual = p.use_dual_clip != 0 && p.mode == kPolicyVanilla;
  c.cap = F(p.ratio_cap);
  c.has_cap = p.ratio_cap > 0;
  c.tau_pos = F(p.tau_pos);
  c.tau_neg = F(p.tau_neg);
  c.beta = F(p.beta);
  c.cov_lb = F(p.cov_lb);
  c.cov_ub = F(p.cov_ub);
  c.kappa = F(p.kl_cov_coef);
  c.k_pos = F(p.k_pos);
  c.lambda_pos = F(p.lambda_pos);
  c.k_neg = F(p.k_neg);
  c.lambda_neg = F(p.lambda_neg);
  return c;
}

// Whether the rollout pre-pass has anything to compute beyond mask counts.
RLK_HD bool RolloutActive(const PolicyLossParams& p) {
  return p.tis_level != kTisNone || p.num_criteria > 0 || p.off_policy != 0;
}

// The token's log rho: old - rollout (LOSSES.md section 3), or for reinforce
// sg(logp) - old (verl bypass: old_log_prob is the rollout's).
template <class F>
RLK_HD F RolloutLogRatio(const PolicyLossParams& p, int64_t t) {
  if (p.mode == kPolicyReinforce) return F(p.logprobs[t]) - F(p.old_logprobs[t]);
  if (p.rollout_logprobs == nullptr) return F(0);
  return F(p.old_logprobs[t]) - F(p.rollout_logprobs[t]);
}

// The rejection estimators of KL(pi_rollout || pi_old) from ls = clamp(x):
// k1 = -ls, k2 = ls^2 / 2, k3 = e^ls - 1 - ls (cancellation-free).
template <class F>
RLK_HD void RejectEstimators(F x, F* k) {
  const F ls = ClampLogRatio(x);
  k[0] = -ls;
  k[1] = F(0.5) * ls * ls;
  k[2] = kl_detail::ExpMinusXMinus1(ls);
}

// One masked token's rollout decision from its log rho x: its IS weight
// before batch normalisation (token levels; 1 otherwise) and whether
// token-level rejection keeps it. A backend that decides in several passes
// calls this with the same F and x each time, so the passes agree bit for bit.
// `tis` mask mode: the weight outside [lower, upper] rejects the token;
// rolloutCorrection mask mode (IcePop): it zeroes the weight and keeps it.
// The minima are std::min's (NaN weights stay NaN: DESIGN 4).
template <class F>
RLK_HD bool RolloutToken(const PolicyLossParams& p, F x, F* w) {
  bool keep = true;
  F wt = F(1);
  if (p.tis_level == kTisToken) {
    wt = policy_detail::Exp(ClampLogRatio(x));
    const F upper = F(p.tis_upper), lower = F(p.tis_lower);
    if (p.tis_mode == kTisMask) {
      const bool in = wt >= lower && wt <= upper;
      if (p.rollout_source == kRolloutTis) keep = in;
      else if (!in) wt = F(0);
    } else {
      wt = policy_detail::Min(wt, upper);
      if (p.rollout_source == kRolloutCorrection && p.is_has_lower) wt = policy_detail::Max(wt, lower);
    }
  }
  for (int c = 0; c < p.num_criteria; ++c) {
    if (p.crit_agg[c] != kRejectToken) continue;
    F k[3];
    RejectEstimators(x, k);
    const F v = k[p.crit_estimator[c] - 1];
    if (!(v >= F(p.crit_lo[c]) && v <= F(p.crit_hi[c]))) keep = false;
  }
  *w = wt;
  return keep;
}

// A sequence's rollout pre-pass sums over its masked tokens.
template <class F>
struct RolloutSums {
  F n0 = F(0);        // masked tokens
  F nk = F(0);        // of those, kept by token-level rejection
  F sum_x = F(0);     // sum of log rho (sequence weights, geometric mean)
  F min_x = F(0);     // min log rho (veto); valid when n0 > 0
  F sum_w = F(0);     // sum of token IS weights (batch normalisation)
  F ksum[3] = {F(0), F(0), F(0)};
  F kmax[3] = {F(0), F(0), F(0)};  // valid when n0 > 0
  F sum_b = F(0);     // sum of b - logp (off-policy mask)
};

// The sequence's decisions from its sums: rejection (sequence criteria, `tis`
// mask mode at sequence levels, the veto) and the sequence IS weight before
// normalisation. Returns whether the sequence is rejected.
template <class F>
RLK_HD bool RolloutSequence(const PolicyLossParams& p, const RolloutSums<F>& s, F* w_seq, bool* vetoed) {
  bool rejected = false;
  *vetoed = false;
  *w_seq = F(1);
  if (p.use_veto && s.n0 > F(0) && s.min_x < F(p.log_veto)) {
    rejected = true;
    *vetoed = true;
  }
  if (p.tis_level == kTisSequence || p.tis_level == kTisGeometric) {
    const F lw = p.tis_level == kTisSequence ? s.sum_x : (s.n0 > F(0) ? s.sum_x / s.n0 : F(0));
    F w = policy_detail::Exp(ClampLogRatio(lw));
    const F upper = F(p.tis_upper), lower = F(p.tis_lower);
    if (p.tis_mode == kTisMask) {
      const bool in = !(w < lower || w > upper);
      if (p.rollout_source == kRolloutTis) {
        if (!in) rejected = true;
      } else if (!in) {
        w = F(0);
      }
    } else {
      w = policy_detail::Min(w, upper);
      if (p.rollout_source == kRolloutCorrection && p.is_has_lower) w = policy_detail::Max(w, lower);
    }
    *w_seq = w;
  }
  for (int c = 0; c < p.num_criteria; ++c) {
    if (p.crit_agg[c] == kRejectToken) continue;
    const int e = p.crit_estimator[c] - 1;
    F v = F(0);
    if (s.n0 > F(0)) {
      if (p.crit_agg[c] == kRejectSeqSum) v = s.ksum[e];
      else if (p.crit_agg[c] == kRejectSeqMean) v = s.ksum[e] / s.n0;
      else v = s.kmax[e];
    }
    if (!(v >= F(p.crit_lo[c]) && v <= F(p.crit_hi[c]))) rejected = true;
  }
  return rejected;
}

// The aggregation weight of a kept token of a sequence with n kept tokens.
RLK_HD double AggregationWeight(int32_t agg, double dp, double tok_den, double seq_den, double scale, double n) {
  if (!(n > 0)) return 0.0;
  switch (agg) {
    case kAggTokenMean: return tok_den > 0 ? dp / tok_den : 0.0;
    case kAggTokenSum: return dp;
    case kAggSeqMeanTokenSum: return seq_den > 0 ? dp / seq_den : 0.0;
    case kAggSeqMeanTokenMean: return seq_den > 0 ? dp / (seq_den * n) : 0.0;
    default: return seq_den > 0 && scale > 0 ? dp / (seq_den * scale) : 0.0;
  }
}

namespace cpu {
Status PolicyLoss(const PolicyLossParams& p);
}  // namespace cpu
namespace cuda {
Status PolicyLoss(const PolicyLossParams& p);
}  // namespace cuda

}  // namespace rlk
