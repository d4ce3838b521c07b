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
#include <cmath>
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
  void* grad_student;         // [rows, vocab] out, student_dtype, or nullptr for the values alone
  void* grad_teacher;         // [rows, vocab] out, teacher_dtype, or nullptr (always with grad_student null)
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

// ---- shared by the CPU and CUDA launchers and kernels ----------------------------
// One copy of each scalar formula (STYLE 1); the element math itself is
// written per target (vector ops on the CPU, scalar on the GPU).

constexpr float kVdivSmall = 0.34f;     // |r| < ln2/2: the exp polynomial gives e^r - 1 - r without cancellation
constexpr float kVdivJsdClamp = 80.0f;  // |x| beyond this: e^|x| would overflow in the log1p forms

// The launchers' own checks (the binding has checked the same before).
inline Status VocabDivergenceCheck(const VocabDivergenceParams& p) {
  if (p.rows < 0 || p.vocab < 1) return Status{Status::kInvalidArgument, "vocabDivergence: rows must be >= 0 and vocab >= 1"};
  if (!(p.beta >= 0.0f && p.beta <= 1.0f)) return Status{Status::kOutOfRange, "vocabDivergence: beta must be in [0, 1]"};
  if (!(p.inv_temperature > 0.0f) || !std::isfinite(p.inv_temperature))
    return Status{Status::kOutOfRange, "vocabDivergence: temperature must be a finite number > 0"};
  if (p.targets && p.targets_dtype != DType::kInt32 && p.targets_dtype != DType::kInt64)
    return Status{Status::kInvalidArgument, "vocabDivergence: targets must be int32 or int64"};
  if (p.rows > 0 && (!p.student || !p.teacher || !p.values))
    return Status{Status::kInvalidArgument, "vocabDivergence: missing tensor"};
  if (p.grad_teacher && !p.grad_student)
    return Status{Status::kInvalidArgument, "vocabDivergence: a teacher gradient needs the student gradient"};
  return Status::Ok();
}

// A row that is masked out or whose target is ignore_index: value 0, zero gradients.
RLK_HD bool VdivRowIgnored(const VocabDivergenceParams& p, int64_t r) {
  if (p.mask && p.mask[r] == 0) return true;
  if (p.targets) {
    const int64_t target = p.targets_dtype == DType::kInt32 ? int64_t(static_cast<const int32_t*>(p.targets)[r])
                                                            : static_cast<const int64_t*>(p.targets)[r];
    if (target == p.ignore_index) return true;
  }
  return false;
}

// A row's constants from its sums of exp (pass 1), for the
// element math: x = ((t - tmax) - (s - smax))/T + xoff = log p_t - log p_s.
struct VdivRowScalars {
  float rst, rss;    // 1 / sum_j e^{(t_j - tmax)/T}, the same for s
  float xoff;        // -log(S_t / S_s), formed in double
  float xoff_lo;     // the residual of rounding xoff to float (see VdivLogRatio)
  float lbt, lbs;    // jsd: -log(beta), -log(1 - beta) (upper bounds of y_t, y_s)
  float rhot, rhos;  // jsd: (1 - beta)/beta, beta/(1 - beta)
};

RLK_HD VdivRowScalars VdivRowConstants(const VocabDivergenceParams& p, DivergenceKind kind, double tsum, double ssum) {
  VdivRowScalars k;
  k.rst = float(1.0 / tsum);
  k.rss = float(1.0 / ssum);
  const double xoff = log(ssum) - log(tsum);
  k.xoff = float(xoff);
  k.xoff_lo = float(xoff - double(k.xoff));
  k.lbt = k.lbs = k.rhot = k.rhos = 0.0f;
  if (kind == DivergenceKind::kJsd) {
    const double b = p.beta;
    k.lbt = float(-log(b));
    k.lbs = float(-log1p(-b));
    k.rhot = float((1.0 - b) / b);
    k.rhos = float(b / (1.0 - b));
  }
  return k;
}

// x_j = log p_t,j - log p_s,j = d/T + xoff for one element, d = (t - tmax) -
// (s - smax), not t - s: a constant shift of one side's logits (another
// model's logit scale) leaves x unchanged, but in float32 t - s then rounds
// at the shift's ulp (1.9e-6 at 16-32) on every element, where t - tmax and
// s - smax are exact near the maxima (Sterbenz), on the elements that carry
// the weight; on close rows, whose KL is ~x^2 / 2, that was 2.2e-5 of the KL
// and 7e-5 of the gradients (shift 20-40, x ~ 0.03;
// tests/vocab_divergence_shift.test.ts). For 16-bit logits d is exact, as
// t - s was. x is tiny where the two log-probabilities nearly agree, which
// 16-bit logits make common (d often equals T log(S_t / S_s) to a few
// ulps): the float roundings of xoff and of 1/T
// (|error| ~ 1e-7 |xoff|) would then be most of x, and of p_s - p_t formed
// from it. So xoff and 1/T carry their residuals: the fma rounds once, with
// the product exact, then the low parts are added.
// The low part takes d clamped to +-1e30: an infinite d (a -inf logit on one
// side) would give inf * 0 or inf - inf there, where x is rightly infinite.
RLK_HD float VdivLogRatio(float d, float inv_t, float inv_t_lo, float xoff, float xoff_lo) {
  return fmaf(d, inv_t, xoff) + fmaf(fminf(fmaxf(d, -1e30f), 1e30f), inv_t_lo, xoff_lo);
}

// The row's value from pass 2's sums: the KL (sums[0]), or for jsd
// beta KL(p_t || M) + (1 - beta) KL(p_s || M).
RLK_HD float VdivRowValue(DivergenceKind kind, float beta, const double sums[4]) {
  return kind == DivergenceKind::kJsd ? float(double(beta) * sums[0] + (1.0 - double(beta)) * sums[1]) : float(sums[0]);
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
