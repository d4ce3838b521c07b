// CPU kernels of the token log-prob family: rows in parallel (ParallelFor),
// each row read once by a vectorised online log-sum-exp (AVX-512 or AVX2,
// chosen at run time; a scalar path for other CPUs and RLK_SIMD=baseline).
// Every row's result depends on that row alone, in a fixed order, so results
// are bitwise the same whatever the thread count.
#include "rlk/token_logprobs.h"

// GCC 12's AVX-512 headers build _mm512_undefined_ps() from a self-initialised
// variable and warn about it wherever the intrinsics inline (GCC PR 105593);
// the value is never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

// One row's statistics relative to the max of its raw logits (see the header).
struct RowStats {
  float m;     // max of the raw logits (-FLT_MAX when the row is all -inf)
  double sm1;  // s - 1, s = sum e^{(x - m) / T} (the max's own term, 1, left out of the sum)
  double t;    // sum e^{(x - m) / T} (x - m) / T
};

// ---- scalar path ------------------------------------------------------------
// Two passes as the vector paths (token_logprobs_isa.inc), in double.
template <class T, bool kEntropy>
RowStats RowStatsScalar(const T* x, int64_t n, float inv_t) {
  float m = -FLT_MAX;
  int64_t a = -1;
  for (int64_t j = 0; j < n; ++j) {
    const float v = ToFloat(x[j]);
    if (v > m || (a < 0 && v == m)) {
      m = v;
      a = j;
    }
  }
  double s = 0, t = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (j == a) continue;
    const double d = (double(ToFloat(x[j])) - double(m)) * double(inv_t);
    const double e = std::exp(d);
    s += e;
    if (kEntropy && e != 0) t += e * d;
  }
  return {m, a >= 0 ? s : s - 1.0, t};
}

template <class T, bool kEntropy>
void RowGradScalar(const T* x, T* out, int64_t n, float m, float inv_t, float inv_s, float g, float ge, float c) {
  for (int64_t j = 0; j < n; ++j) {
    double d = (double(ToFloat(x[j])) - double(m)) * double(inv_t);
    double p = std::exp(d) * double(inv_s);
    double gr = TlpGradTerm<kEntropy>(p, d, double(g), double(ge), double(c));
    out[j] = FromFloat<T>(float(gr * double(inv_t)));
  }
}

// ---- vector paths: small op wrappers, then the shared row kernels ----------
namespace tlp_avx512 {
using namespace ::rlk::simd::avx512;
RLK_AVX512 inline V Set1(float v) { return _mm512_set1_ps(v); }
RLK_AVX512 inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
RLK_AVX512 inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
RLK_AVX512 inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
RLK_AVX512 inline V Max(V a, V b) { return _mm512_max_ps(a, b); }
RLK_AVX512 inline V Min(V a, V b) { return _mm512_min_ps(a, b); }
RLK_AVX512 inline bool AnyGreater(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0; }
// a * b where a != 0 (or NaN), else 0.
RLK_AVX512 inline V MulNonZero(V a, V b) {
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_UQ), a, b);
}
struct W { __m512d lo, hi; };  // lanes 0-7, 8-15
RLK_AVX512 inline W Widen(V v) { return {_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))}; }
RLK_AVX512 inline W WAdd(W a, W b) { return {_mm512_add_pd(a.lo, b.lo), _mm512_add_pd(a.hi, b.hi)}; }
RLK_AVX512 inline W WMul(W a, W b) { return {_mm512_mul_pd(a.lo, b.lo), _mm512_mul_pd(a.hi, b.hi)}; }
RLK_AVX512 inline __m512d MulNonZeroD(__m512d a, __m512d b) {
  return _mm512_maskz_mul_pd(_mm512_cmp_pd_mask(a, _mm512_setzero_pd(), _CMP_NEQ_UQ), a, b);
}
RLK_AVX512 inline W WMulNonZero(W a, W b) { return {MulNonZeroD(a.lo, b.lo), MulNonZeroD(a.hi, b.hi)}; }
RLK_AVX512 inline void WStore(double* p, W w) { _mm512_storeu_pd(p, w.lo); _mm512_storeu_pd(p + 8, w.hi); }
RLK_AVX512 inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
// Per lane, the start of the step that raised the lane's maximum (a float:
// exact for rows below 2^24 elements, which the caller checks).
using IdxV = __m512;
RLK_AVX512 inline IdxV IdxInit() { return _mm512_set1_ps(-1.0f); }
RLK_AVX512 inline __mmask16 GtMask(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
RLK_AVX512 inline IdxV BlendIdx(IdxV idx, __mmask16 k, int64_t j) { return _mm512_mask_blend_ps(k, idx, _mm512_set1_ps(float(j))); }
RLK_AVX512 inline void IdxStore(float* p, IdxV v) { _mm512_storeu_ps(p, v); }
#define RLK_TLP_ATTR RLK_AVX512
#include "token_logprobs_isa.inc"
#undef RLK_TLP_ATTR
}  // namespace tlp_avx512

namespace tlp_avx2 {
using namespace ::rlk::simd::avx2;
RLK_AVX2 inline V Set1(float v) { return _mm256_set1_ps(v); }
RLK_AVX2 inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
RLK_AVX2 inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
RLK_AVX2 inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
RLK_AVX2 inline V Max(V a, V b) { return _mm256_max_ps(a, b); }
RLK_AVX2 inline V Min(V a, V b) { return _mm256_min_ps(a, b); }
RLK_AVX2 inline bool AnyGreater(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0; }
RLK_AVX2 inline V MulNonZero(V a, V b) {
  return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_NEQ_UQ), _mm256_mul_ps(a, b));
}
struct W { __m256d lo, hi; };  // lanes 0-3, 4-7
RLK_AVX2 inline W Widen(V v) { return {_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))}; }
RLK_AVX2 inline W WAdd(W a, W b) { return {_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)}; }
RLK_AVX2 inline W WMul(W a, W b) { return {_mm256_mul_pd(a.lo, b.lo), _mm256_mul_pd(a.hi, b.hi)}; }
RLK_AVX2 inline __m256d MulNonZeroD(__m256d a, __m256d b) {
  return _mm256_and_pd(_mm256_cmp_pd(a, _mm256_setzero_pd(), _CMP_NEQ_UQ), _mm256_mul_pd(a, b));
}
RLK_AVX2 inline W WMulNonZero(W a, W b) { return {MulNonZeroD(a.lo, b.lo), MulNonZeroD(a.hi, b.hi)}; }
RLK_AVX2 inline void WStore(double* p, W w) { _mm256_storeu_pd(p, w.lo); _mm256_storeu_pd(p + 4, w.hi); }
RLK_AVX2 inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
using IdxV = __m256;
RLK_AVX2 inline IdxV IdxInit() { return _mm256_set1_ps(-1.0f); }
RLK_AVX2 inline __m256 GtMask(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
RLK_AVX2 inline IdxV BlendIdx(IdxV idx, __m256 k, int64_t j) { return _mm256_blendv_ps(idx, _mm256_set1_ps(float(j)), k); }
RLK_AVX2 inline void IdxStore(float* p, IdxV v) { _mm256_storeu_ps(p, v); }
#define RLK_TLP_ATTR RLK_AVX2
#include "token_logprobs_isa.inc"
#undef RLK_TLP_ATTR
}  // namespace tlp_avx2

// The row kernels of one ISA, for the drivers below.
struct ScalarIsa {
  template <class T, bool E> static RowStats Stats(const T* x, int64_t n, float it, const T* = nullptr) { return RowStatsScalar<T, E>(x, n, it); }
  template <class T, bool E>
  static void Grad(const T* x, T* o, int64_t n, float m, float it, float is, float g, float ge, float c) {
    RowGradScalar<T, E>(x, o, n, m, it, is, g, ge, c);
  }
};
struct Avx2Isa {
  template <class T, bool E> static RowStats Stats(const T* x, int64_t n, float it, const T* next = nullptr) {
    return tlp_avx2::RowStatsVec<T, E>(x, n, it, next);
  }
  template <class T, bool E>
  static void Grad(const T* x, T* o, int64_t n, float m, float it, float is, float g, float ge, float c) {
    tlp_avx2::RowGradVec<T, E>(x, o, n, m, it, is, g, ge, c);
  }
};
struct Avx512Isa {
  template <class T, bool E> static RowStats Stats(const T* x, int64_t n, float it, const T* next = nullptr) {
    return tlp_avx512::RowStatsVec<T, E>(x, n, it, next);
  }
  template <class T, bool E>
  static void Grad(const T* x, T* o, int64_t n, float m, float it, float is, float g, float ge, float c) {
    tlp_avx512::RowGradVec<T, E>(x, o, n, m, it, is, g, ge, c);
  }
};


// Rows per ParallelFor slice: enough elements that a slice outweighs its
// scheduling, few enough that two threads share a small batch.
inline int64_t Grain(int64_t vocab) { return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(vocab, 1)); }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class Isa, class T, class Idx>
void FwdRows(const TokenLogprobsFwdParams& p, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(p.logits);
  const bool partial = p.partials != nullptr;
  const bool entropy = p.entropy || (!partial && p.stats);
  const int cols = p.entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    if (tg == p.ignore_index) {
      if (partial) {
        for (int k = 0; k < cols; ++k) p.partials[r * cols + k] = 0.0f;
      } else {
        TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
      }
      continue;
    }
    const float inv_t = TlpRowInvTemperature(p.temperature, p.inv_temperature, r);
    const T* x = logits + r * p.vocab;
    const T* next = r + 1 < end ? x + p.vocab : nullptr;
    const RowStats st = entropy ? Isa::template Stats<T, true>(x, p.vocab, inv_t, next) : Isa::template Stats<T, false>(x, p.vocab, inv_t, next);
    const int64_t local = tg - p.vocab_start;
    const bool in_row = local >= 0 && local < p.vocab;
    const bool in_range = tg >= 0 && tg < p.vocab_size;
    if (partial) {
      float* out = p.partials + r * cols;
      out[0] = st.m;
      out[1] = float(st.sm1);
      out[2] = !in_range ? kNaN : in_row ? ToFloat(x[local]) : 0.0f;
      if (p.entropy) out[3] = float(st.t);
      continue;
    }
    const double log_s = std::log1p(st.sm1);
    const double lp = in_row ? TlpLogprob(double(ToFloat(x[local])), double(st.m), double(inv_t), log_s) : double(kNaN);
    const double h = TlpEntropy(log_s, st.t, 1.0 + st.sm1);
    p.logprobs[r] = float(lp);
    if (p.entropy_out) p.entropy_out[r] = float(h);
    if (p.stats) {
      float* out = p.stats + r * kTlpStatsCols;
      out[0] = st.m;
      out[1] = float(st.sm1);
      out[2] = float(h);
    }
  }
}

template <class Isa, class T, class Idx>
void BwdRows(const TokenLogprobsBwdParams& p, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(p.logits);
  T* grad = static_cast<T*>(p.grad_logits);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    T* out = grad + r * p.vocab;
    const T* x = logits + r * p.vocab;
    if (tg == p.ignore_index) {
      std::memset(static_cast<void*>(out), 0, size_t(p.vocab) * sizeof(T));  // +0 in all three dtypes
      continue;
    }
    const float inv_t = TlpRowInvTemperature(p.temperature, p.inv_temperature, r);
    const float g = p.grad_logprobs[r];
    const float ge = p.grad_entropy ? p.grad_entropy[r] : 0.0f;
    float m;
    double sm1, h;
    if (p.stats) {
      m = p.stats[r * kTlpStatsCols];
      sm1 = p.stats[r * kTlpStatsCols + 1];
      h = p.stats[r * kTlpStatsCols + 2];
    } else {
      const RowStats st = p.grad_entropy ? Isa::template Stats<T, true>(x, p.vocab, inv_t) : Isa::template Stats<T, false>(x, p.vocab, inv_t);
      m = st.m;
      sm1 = st.sm1;
      h = TlpEntropy(std::log1p(st.sm1), st.t, 1.0 + st.sm1);
    }
    const int64_t local = tg - p.vocab_start;
    const bool in_row = local >= 0 && local < p.vocab;
    const bool in_range = tg >= 0 && tg < p.vocab_size;
    // Read before the row is overwritten (in place).
    const float xt = in_row ? ToFloat(x[local]) : 0.0f;
    const double s = 1.0 + sm1;
    const double inv_s = 1.0 / s;
    const double c = h - std::log1p(sm1);
    if (p.grad_entropy)
      Isa::template Grad<T, true>(x, out, p.vocab, m, inv_t, float(inv_s), g, ge, float(c));
    else
      Isa::template Grad<T, false>(x, out, p.vocab, m, inv_t, float(inv_s), g, ge, float(c));
    if (!in_range) {
      for (int64_t j = 0; j < p.vocab; ++j) out[j] = FromFloat<T>(kNaN);
    } else if (in_row) {
      out[local] = FromFloat<T>(float(TlpTargetGrad(double(xt), double(m), double(inv_t), sm1, double(g),
                                                    p.grad_entropy ? double(ge) : 0.0, c, p.grad_entropy != nullptr)));
    }
  }
}

template <class Idx>
void CombineRows(const TokenLogprobsCombineParams& p, int64_t begin, int64_t end) {
  const int cols = p.cols;
  for (int64_t r = begin; r < end; ++r) {
    if (TlpTargetAt<Idx>(p.targets, r) == p.ignore_index) {
      TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
      continue;
    }
    const double inv_t = TlpRowInvTemperature(p.temperature, p.inv_temperature, r);
    float big = -FLT_MAX;
    double xt = 0;
    int kstar = -1;  // the first shard holding the row maximum: its own term 1 stays implicit
    for (int k = 0; k < p.shards; ++k) {
      const float* q = p.partials[k] + r * cols;
      if (q[0] > big || (kstar < 0 && q[0] == big)) {
        big = q[0];
        kstar = k;
      }
      xt += double(q[2]);
    }
    // Column 1 of a shard is its s - 1; s = sum_k e^delta_k (1 + sm1_k), so
    // s - 1 = sm1_k* + sum_{k != k*} e^delta_k (1 + sm1_k) without forming s.
    double sm1 = kstar >= 0 ? double(p.partials[kstar][r * cols + 1]) : -1.0, t = 0;
    for (int k = 0; k < p.shards; ++k) {
      const float* q = p.partials[k] + r * cols;
      const double delta = (double(q[0]) - double(big)) * inv_t;
      const double a = std::exp(delta);
      if (k != kstar) sm1 += TlpScaledSum(a, double(q[1]));
      if (cols == kTlpPartialColsEntropy) t += TlpShiftEntropy(a, delta, 1.0 + double(q[1]), double(q[3]));
    }
    const double log_s = std::log1p(sm1);
    const double lp = TlpLogprob(xt, double(big), inv_t, log_s);
    const double h = cols == kTlpPartialColsEntropy ? TlpEntropy(log_s, t, 1.0 + sm1) : double(kNaN);
    p.logprobs[r] = float(lp);
    if (p.entropy_out) p.entropy_out[r] = float(h);
    if (p.stats) {
      float* out = p.stats + r * kTlpStatsCols;
      out[0] = big;
      out[1] = float(sm1);
      out[2] = float(h);
    }
  }
}

Status BadTargets(const char* op) { return Status{Status::kInvalidArgument, op}; }

template <class Fn>
Status DispatchIndex(DType d, const char* op, Fn&& fn) {
  if (d == DType::kInt32) { fn(int32_t{}); return Status::Ok(); }
  if (d == DType::kInt64) { fn(int64_t{}); return Status::Ok(); }
  return BadTargets(op);
}

template <class Fn>
void DispatchIsa(Fn&& fn) {
  switch (simd::Isa()) {
    case simd::IsaKind::kAvx512: fn(Avx512Isa{}); break;
    case simd::IsaKind::kAvx2: fn(Avx2Isa{}); break;
    default: fn(ScalarIsa{}); break;
  }
}

}  // namespace

Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  return RLK_DISPATCH_FLOATING(p.logits_dtype, "tokenLogprobs", [&] {
    return DispatchIndex(p.targets_dtype, "tokenLogprobs: targets must be int32 or int64", [&](auto idx) {
      using Idx = decltype(idx);
      DispatchIsa([&](auto isa) {
        using Isa = decltype(isa);
        ParallelFor(p.rows, Grain(p.vocab), [&](int64_t b, int64_t e) { FwdRows<Isa, T, Idx>(p, b, e); });
      });
    });
  });
}

Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  return RLK_DISPATCH_FLOATING(p.logits_dtype, "tokenLogprobsBackward", [&] {
    return DispatchIndex(p.targets_dtype, "tokenLogprobsBackward: targets must be int32 or int64", [&](auto idx) {
      using Idx = decltype(idx);
      DispatchIsa([&](auto isa) {
        using Isa = decltype(isa);
        ParallelFor(p.rows, Grain(p.vocab), [&](int64_t b, int64_t e) { BwdRows<Isa, T, Idx>(p, b, e); });
      });
    });
  });
}

Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p) {
  if (p.rows == 0) return Status::Ok();
  return DispatchIndex(p.targets_dtype, "combineTokenLogprobs: targets must be int32 or int64", [&](auto idx) {
    using Idx = decltype(idx);
    ParallelFor(p.rows, 4096, [&](int64_t b, int64_t e) { CombineRows<Idx>(p, b, e); });
  });
}

}  // namespace rlk::cpu
