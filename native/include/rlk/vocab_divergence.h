// Vocabulary divergences for distillation (DESIGN 3.5): per row, a divergence
// between p_t = softmax(teacher / T) and p_s = softmax(student / T) and its
// elementwise derivative with respect to the student (and optionally the
// teacher) logits. No Node, no allocation here.
//
// Kinds (M = beta p_t + (1 - beta) p_s, as TRL's generalized_jsd_loss and
// Liger's JSD form it):
//   kForwardKl  KL(p_t || p_s)
//   kReverseKl  KL(p_s || p_t)
//   kJsd        beta KL(p_t || M) + (1 - beta) KL(p_s || M); as TRL and Liger
//               do, beta = 0 means forward KL and beta = 1 reverse KL (the
//               launchers remap those two).
#pragma once
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

enum class DivergenceKind : int32_t { kForwardKl = 0, kReverseKl = 1, kJsd = 2 };

struct VocabDivergenceParams {
  const void* student;        // [rows, vocab], student_dtype (float32/bfloat16/float16)
  const void* teacher;        // [rows, vocab], teacher_dtype
  const uint8_t* mask;        // [rows] or nullptr; 0 ignores the row
  const void* targets;        // [rows] int32/int64 or nullptr; == ignore_index ignores the row
  float* values;              // [rows] out
  void* grad_student;         // [rows, vocab] out, student_dtype
  void* grad_teacher;         // [rows, vocab] out, teacher_dtype, or nullptr
  DType student_dtype = DType::kFloat32;
  DType teacher_dtype = DType::kFloat32;
  DType targets_dtype = DType::kInt64;
  int64_t rows = 0, vocab = 0, ignore_index = -100;
  DivergenceKind kind = DivergenceKind::kForwardKl;
  float beta = 0.5f;             // jsd only, in [0, 1]
  float inv_temperature = 1.0f;  // 1 / T, T > 0
  float inv_temperature_lo = 0.0f;  // 1 / T - inv_temperature (the residual of rounding 1 / T to float), or 0
  int device = 0;                // CUDA ordinal (the CUDA launcher sets it current)
  void* stream = nullptr;        // cudaStream_t for the CUDA launcher
};

// Kind after the beta = 0 / beta = 1 remap of jsd.
inline DivergenceKind EffectiveKind(const VocabDivergenceParams& p) {
  if (p.kind == DivergenceKind::kJsd && p.beta == 0.0f) return DivergenceKind::kForwardKl;
  if (p.kind == DivergenceKind::kJsd && p.beta == 1.0f) return DivergenceKind::kReverseKl;
  return p.kind;
}

namespace cpu {
// Synchronous; threads over rows; deterministic for any thread count.
Status VocabDivergence(const VocabDivergenceParams& p);
}  // namespace cpu

namespace cuda {
// Enqueued on p.stream; returns once the kernels are launched.
Status VocabDivergence(const VocabDivergenceParams& p);
}  // namespace cuda

}  // namespace rlk
