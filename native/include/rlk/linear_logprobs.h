// Fused linear log-probs (DESIGN 3.2): token log-probs and entropy from the
// hidden states and the LM-head weight, logits = hidden @ weight^T + bias,
// without ever holding the [rows, vocab] logits. Rows go in chunks; a chunk's
// logits live in fp32 (one tile per task on the forward, the chunk's
// [vocab, chunk] block on the backward), so memory beyond inputs and outputs
// is bounded by the chunk, never by the number of rows.
//
// The row statistics are those of token_logprobs.h (max of the raw logits,
// sum of exp((x - max) / T), entropy sums), and the per-row formulas are its
// Tlp* helpers, so the results equal tokenLogprobs on the materialised fp32
// logits up to the rounding of the sums. A weight shard (vocab_start,
// vocab_size) gives tokenLogprobsPartials' layout, so combineTokenLogprobs
// and the shard backward of 3.1 apply unchanged.
//
// Determinism: every output element is a sum in an order fixed by the shapes
// and the chunk size alone. The vocabulary is cut into fixed tiles (one task
// each, whatever thread runs it); gradWeight and gradBias rows belong to one
// tile and add the chunks in order; gradHidden elements belong to one column
// block and add the vocabulary in order. The thread count never changes a bit.
#pragma once
#include <cstdint>

#include "rlk/common.h"
#include "rlk/token_logprobs.h"

namespace rlk {

// Vocabulary columns per tile task (a multiple of every microkernel's row count).
constexpr int64_t kLinTile = 256;
// Row chunks are padded to a multiple of this (the widest microkernel's columns).
constexpr int64_t kLinRowPad = 32;
// The default chunk: as many rows as keep the backward's fp32 chunk of
// logits near this many bytes, clamped to [kLinMinChunk, kLinMaxChunk].
constexpr int64_t kLinChunkBytes = int64_t(64) << 20;
constexpr int64_t kLinMinChunk = 32;
constexpr int64_t kLinMaxChunk = 256;

// The default row chunk for a vocabulary (CPU): fixed by the shapes alone,
// never by the thread count, so results do not depend on it.
inline int64_t LinDefaultChunk(int64_t vocab) {
  int64_t c = kLinChunkBytes / (4 * (vocab > 0 ? vocab : 1));
  c = c / kLinRowPad * kLinRowPad;
  return c < kLinMinChunk ? kLinMinChunk : (c > kLinMaxChunk ? kLinMaxChunk : c);
}

struct LinearLogprobsFwdParams {
  const void* hidden = nullptr;      // [rows, dim], dtype
  const void* weight = nullptr;      // [vocab, dim], dtype (a shard: rows vocab_start ..)
  const void* bias = nullptr;        // [vocab], bias_dtype, or nullptr
  DType dtype = DType::kFloat32;     // hidden and weight
  DType bias_dtype = DType::kFloat32;
  const void* targets = nullptr;     // [rows], int32 or int64
  DType targets_dtype = DType::kInt64;
  const float* temperature = nullptr;  // [rows] or nullptr: inv_temperature for every row
  float inv_temperature = 1.0f;
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t vocab = 0;                 // rows of `weight`
  int64_t vocab_start = 0;           // shard: global index of weight row 0
  int64_t vocab_size = 0;            // the whole vocabulary
  int64_t ignore_index = -100;
  int64_t chunk = 0;                 // rows per chunk; 0: the default
  bool entropy = false;
  float* logprobs = nullptr;         // [rows]
  float* entropy_out = nullptr;      // [rows] or nullptr
  float* stats = nullptr;            // [rows, kTlpStatsCols] or nullptr
  float* partials = nullptr;         // [rows, 3 | 4] (tokenLogprobsPartials' layout) or nullptr
  int32_t* error_word = nullptr;     // CUDA
  int device = 0;                    // CUDA
  void* stream = nullptr;            // CUDA
};

// dlogits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T (token_logprobs.h),
// then gradHidden = dlogits @ weight, gradWeight = dlogits^T @ hidden,
// gradBias = sum over rows of dlogits. With a shard, gradHidden is this
// shard's part (ranks sum it) and `stats` (combined) is required.
struct LinearLogprobsBwdParams {
  const void* hidden = nullptr;      // [rows, dim], dtype
  const void* weight = nullptr;      // [vocab, dim], dtype
  const void* bias = nullptr;        // [vocab], bias_dtype, or nullptr
  DType dtype = DType::kFloat32;
  DType bias_dtype = DType::kFloat32;
  const void* targets = nullptr;     // [rows]
  DType targets_dtype = DType::kInt64;
  const float* temperature = nullptr;  // [rows] or nullptr
  float inv_temperature = 1.0f;
  const float* grad_logprobs = nullptr;  // [rows]
  const float* grad_entropy = nullptr;   // [rows] or nullptr
  const float* stats = nullptr;      // [rows, kTlpStatsCols] or nullptr (recomputed; full vocabulary only)
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t vocab = 0;
  int64_t vocab_start = 0;
  int64_t vocab_size = 0;
  int64_t ignore_index = -100;
  int64_t chunk = 0;
  void* grad_hidden = nullptr;       // [rows, dim], dtype
  void* grad_weight = nullptr;       // [vocab, dim], dtype
  void* grad_bias = nullptr;         // [vocab], bias_dtype, or nullptr
  int32_t* error_word = nullptr;
  int device = 0;
  void* stream = nullptr;
};

namespace cpu {
// Synchronous; targets and temperatures are checked by the caller.
Status LinearLogprobsFwd(const LinearLogprobsFwdParams& p);
Status LinearLogprobsBwd(const LinearLogprobsBwdParams& p);
}  // namespace cpu

namespace cuda {
// Enqueued on p.stream; the matrix products through cuBLAS, loaded at run
// time (kUnsupported naming the library when it is missing).
Status LinearLogprobsFwd(const LinearLogprobsFwdParams& p);
Status LinearLogprobsBwd(const LinearLogprobsBwdParams& p);
// "" when the CUDA linear path can run, else why not (no cuBLAS headers at
// build time, or the library not found at run time).
const char* LinearLogprobsCudaStatus();
}  // namespace cuda

}  // namespace rlk
