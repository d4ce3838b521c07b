// Token log-probs and entropy from logits (DESIGN 3.1): forward, fused
// backward, and the vocabulary-parallel form (per-shard partials, their
// combination, and the backward from a shard). Plain params structs and
// launchers; no Node, no allocation. Launchers return a Status, never throw.
//
// Row statistics are kept relative to the row maximum of the *raw* logits
// (before the temperature): z - max(z) = (x - max(x)) / T is then exact up to
// one rounding whatever the magnitude of the logits, which a log-sum-exp
// stored in z units (|lse| up to 1e4 / T) could not give in fp32.
#pragma once
#include <cfloat>
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

// Saved statistics, one row per token: (max of the row's logits x,
// s - 1 with s = sum_j exp((x_j - max) / T), entropy).
// log-sum-exp(z) = max / T + log1p(s - 1). s - 1 rather than s: for a
// confident token s rounds to 1 in float32, and s - 1 (the mass of the other
// logits) is what log-prob, entropy and 1 - p_t are made of.
constexpr int kTlpStatsCols = 3;
// Partials of a vocabulary shard, one row per token: (max of the shard's
// logits, s - 1 with s = sum_j exp((x_j - max) / T) (-1 for a shard of -inf), the target's logit when the shard holds
// it else 0, and with entropy sum_j e_j (x_j - max) / T where e_j is the
// exp of the second column).
constexpr int kTlpPartialCols = 3;
constexpr int kTlpPartialColsEntropy = 4;
// The most shards one combine call takes (the CUDA kernel gets the pointers
// by value).
constexpr int kTlpMaxShards = 128;

// Forward over full rows (`partials == nullptr`) or over a vocabulary shard
// (`partials != nullptr`, then logprobs/entropy/stats are unused).
struct TokenLogprobsFwdParams {
  const void* logits = nullptr;      // [rows, vocab], logits_dtype (a shard: columns vocab_start ..)
  DType logits_dtype = DType::kFloat32;
  const void* targets = nullptr;     // [rows], int32 or int64
  DType targets_dtype = DType::kInt64;
  const float* temperature = nullptr;  // [rows] or nullptr: then inv_temperature for every row
  float inv_temperature = 1.0f;
  int64_t rows = 0;
  int64_t vocab = 0;                 // columns of `logits`
  int64_t vocab_start = 0;           // shard: global index of column 0
  int64_t vocab_size = 0;            // the whole vocabulary (targets are checked against it)
  int64_t ignore_index = -100;
  bool entropy = false;
  float* logprobs = nullptr;         // [rows]
  float* entropy_out = nullptr;      // [rows] or nullptr
  float* stats = nullptr;            // [rows, kTlpStatsCols] or nullptr (computes the entropy column)
  float* partials = nullptr;         // [rows, 3 or 4 with entropy] or nullptr
  int32_t* error_word = nullptr;     // CUDA: the device error word (runtime.h)
  int device = 0;                    // CUDA: the ordinal (the launcher makes it current)
  void* stream = nullptr;            // CUDA: cudaStream_t of `device`
};

// d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T, over full
// rows or a shard (vocab_start); a -inf target logit has p_t = 0 and keeps the
// 1[j = target] term (g / T), as PyTorch's log_softmax(...).gather backward.
struct TokenLogprobsBwdParams {
  const void* logits = nullptr;      // [rows, vocab], logits_dtype
  DType logits_dtype = DType::kFloat32;
  const void* targets = nullptr;     // [rows], int32 or int64
  DType targets_dtype = DType::kInt64;
  const float* temperature = nullptr;  // [rows] or nullptr
  float inv_temperature = 1.0f;
  const float* grad_logprobs = nullptr;  // [rows]
  const float* grad_entropy = nullptr;   // [rows] or nullptr
  const float* stats = nullptr;      // [rows, kTlpStatsCols] or nullptr: recomputed (full rows only)
  void* grad_logits = nullptr;       // [rows, vocab], logits_dtype; may be `logits` (in place)
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t vocab_start = 0;
  int64_t vocab_size = 0;
  int64_t ignore_index = -100;
  int32_t* error_word = nullptr;
  int device = 0;
  void* stream = nullptr;
};

// Combines the partials of all shards into log-probs (and entropy, stats).
struct TokenLogprobsCombineParams {
  const float* partials[kTlpMaxShards] = {};  // each [rows, cols]
  int32_t shards = 0;
  int32_t cols = kTlpPartialCols;    // 4 when the partials carry entropy
  const void* targets = nullptr;     // [rows], int32 or int64 (only ignore_index is looked at)
  DType targets_dtype = DType::kInt64;
  const float* temperature = nullptr;  // [rows] or nullptr
  float inv_temperature = 1.0f;
  int64_t rows = 0;
  int64_t ignore_index = -100;
  float* logprobs = nullptr;         // [rows]
  float* entropy_out = nullptr;      // [rows] or nullptr (needs cols == 4)
  float* stats = nullptr;            // [rows, kTlpStatsCols] or nullptr (entropy column NaN when cols == 3)
  int32_t* error_word = nullptr;
  int device = 0;
  void* stream = nullptr;
};

// ---- row math shared by the CPU and CUDA kernels --------------------------------
// One copy of each scalar formula (STYLE 1). F is double where the CPU keeps
// its row sums in fp64 and float on the GPU.

template <class Idx>
RLK_HD int64_t TlpTargetAt(const void* targets, int64_t r) {  // targets: [rows]
  return int64_t(static_cast<const Idx*>(targets)[r]);
}

// The row's 1/T, or 0 when a per-row temperature is not positive and finite
// or its float32 inverse is not (the CUDA kernels report that row; the binding
// has rejected such rows before the CPU kernels run). 1.0f / t is correctly
// rounded, so it equals float(1.0 / double(t)).
RLK_HD float TlpRowInvTemperature(const float* temperature, float fixed, int64_t r) {  // temperature: [rows] or null
  if (!temperature) return fixed;
  const float t = temperature[r];
  const float inv = 1.0f / t;
  if (!(t > 0.0f) || !(t <= FLT_MAX) || !(inv > 0.0f) || !(inv <= FLT_MAX)) return 0.0f;  // also NaN
  return inv;
}

// An ignored row (target == ignore_index): logprob, entropy and stats exactly 0.
RLK_HD void TlpZeroRow(float* logprobs, float* entropy_out, float* stats, int64_t r) {
  logprobs[r] = 0.0f;
  if (entropy_out) entropy_out[r] = 0.0f;
  if (stats)
    for (int k = 0; k < kTlpStatsCols; ++k) stats[r * kTlpStatsCols + k] = 0.0f;
}

// Moves an entropy sum t = sum e^{(x - m)/T} (x - m)/T, whose exp sum is s, to
// a larger max m': with delta = (m - m')/T and a = e^delta,
// t' = a (t + delta s). 0 when s == 0 (then t == 0 too) or a == 0: delta is
// then -inf or so large that delta * s overflows (logits at the dtype's
// lowest finite value, as Hugging Face masks them, divided by T < 1), and
// 0 * inf would be NaN where the true limit is 0.
template <class F>
RLK_HD F TlpShiftEntropy(F a, F delta, F s, F t) {
  return (s != F(0) && a != F(0)) ? a * (t + delta * s) : F(0);
}

// a (1 + sm1): a shard's or a thread's sum of exps s = 1 + sm1 moved to a
// larger max (a = e^delta); 0 when a == 0 whatever sm1 is.
template <class F>
RLK_HD F TlpScaledSum(F a, F sm1) {
  return a != F(0) ? a * (F(1) + sm1) : F(0);
}

// The gradient of the target's own logit, d/dx_t, the 1[j = target] term
// included: [g (1 - p_t) - gE p_t (log p_t + H)] / T, with
// 1 - p_t = (s - 1 - (e^d - 1)) / s = (sm1 - expm1(d)) / s: both parts are
// >= 0, so a confident token (p_t near 1, s - 1 tiny) keeps its digits where
// 1 - e^d / s would cancel. A -inf target logit gives g / T, as PyTorch's
// log_softmax(...).gather backward does (p_t = 0, the one-hot term stays).
RLK_HD float TlpExpm1(float x) { return expm1f(x); }
RLK_HD double TlpExpm1(double x) { return expm1(x); }
RLK_HD float TlpExpF(float x) { return expf(x); }
RLK_HD double TlpExpF(double x) { return exp(x); }

template <class F>
RLK_HD F TlpTargetGrad(F xt, F m, F inv_t, F sm1, F g, F ge, F c, bool entropy) {
  if (xt == F(-INFINITY)) return g * inv_t;
  const F d = (xt - m) * inv_t;
  const F s = F(1) + sm1;
  F gr = g * ((sm1 - TlpExpm1(d)) / s);
  const F pt = TlpExpF(d) / s;
  if (entropy && pt != F(0)) gr -= ge * pt * (d + c);
  return gr * inv_t;
}

// logprob = (x_t - m)/T - log s. x_t <= m and s >= 1 make it <= 0; the clamp
// guards the last rounding only (and keeps NaN).
template <class F>
RLK_HD F TlpLogprob(F xt, F m, F inv_t, F log_s) {
  const F lp = (xt - m) * inv_t - log_s;
  return lp > F(0) ? F(0) : lp;
}

// entropy = log s - t/s, clamped at 0 (keeps NaN).
template <class F>
RLK_HD F TlpEntropy(F log_s, F t, F s) {
  const F h = log_s - t / s;
  return h < F(0) ? F(0) : h;
}

// T times the gradient of one logit without the target's one-hot term:
// -g p - gE p (d + c), with d = (x - m)/T, p = e^d / s and c = H - log s
// (log p + H = d + c). The entropy term is skipped where p == 0 (d = -inf)
// and without an entropy gradient (c may be NaN then: stats from partials
// without entropy carry no H).
template <bool kEntropy, class F>
RLK_HD F TlpGradTerm(F p, F d, F g, F ge, F c) {
  F gr = -g * p;
  if (kEntropy && p != F(0)) gr -= ge * p * (d + c);
  return gr;
}

namespace cpu {
// Synchronous. Targets and temperatures are assumed checked by the caller; a
// target out of range still never reads outside the row (its outputs are NaN).
Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p);
Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p);
Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p);
}  // namespace cpu

namespace cuda {
// Make p.device current, then enqueue on p.stream. A target outside
// [0, vocab_size) that is not ignore_index (the row's outputs are NaN), or a
// per-row temperature that is not positive and finite with a finite inverse
// (on any row, ignored ones included, as the CPU binding checks them all),
// sets the device error word, reported at the next read.
Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p);
Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p);
Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p);
}  // namespace cuda

}  // namespace rlk
