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
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

// Saved statistics, one row per token: (max of the row's logits x,
// sum_j exp((x_j - max) / T), entropy). log-sum-exp(z) = max / T + log(sum).
constexpr int kTlpStatsCols = 3;
// Partials of a vocabulary shard, one row per token: (max of the shard's
// logits, sum_j exp((x_j - max) / T), the target's logit when the shard holds
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
  void* stream = nullptr;            // CUDA: cudaStream_t
};

// d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T, over full
// rows or a shard (vocab_start); a -inf target logit drops the 1[j = target]
// term (its logprob is the constant -inf), so the gradient stays finite.
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
  void* stream = nullptr;
};

namespace cpu {
// Synchronous. Targets and temperatures are assumed checked by the caller; a
// target out of range still never reads outside the row (its outputs are NaN).
Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p);
Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p);
Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p);
}  // namespace cpu

namespace cuda {
// Enqueued on p.stream. A target outside [0, vocab_size) that is not
// ignore_index, or a per-row temperature that is not positive and finite,
// sets the device error word (the row's outputs are NaN) and is reported at
// the next read.
Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p);
Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p);
Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p);
}  // namespace cuda

}  // namespace rlk
