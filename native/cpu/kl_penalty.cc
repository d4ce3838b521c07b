// CPU klPenalty. k1, abs, k2, k1+ are a subtraction and a product a token:
// elementwise in double (the difference logp - ref of two floats is exact in
// double), memory-bound. k3 and k3+ need e^x - x - 1: in double through the
// scalar series of kl_penalty.h that costs ~35 ns a token (6x torch.compile),
// so whole vectors of 16 (AVX-512) or 8 (AVX2) tokens go through float32
// vector code (below), the tail and the baseline path through the double
// code. Threads over fixed slices; each element is independent, so the result
// does not depend on the thread count.
//
// The vector k3: d = logp - ref in double (exact), so the clamp decisions at
// +-20 are the scalar path's; x = float(clamp(ref - logp)); for |x| < 1 the
// Taylor series x^2 sum_{n=2..11} x^(n-2)/n! in float (terms past 1/11! are
// below float rounding), else e^x - 1 - x with Cephes' exp (relative error
// ~1e-7; at |x| >= 1 e^x - 1 - x >= 0.36 so no cancellation beyond a few
// units). The gradient -(e^x - 1) is -(x + k) where the series is used (no
// cancellation), -(e^x - 1) elsewhere.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "rlk/kl_penalty.h"

#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

constexpr float kInvFact[10] = {2.5052108385441720e-08f, 2.7557319223985891e-07f, 2.7557319223985893e-06f,
                                2.4801587301587302e-05f, 1.9841269841269841e-04f, 1.3888888888888889e-03f,
                                8.3333333333333333e-03f, 4.1666666666666667e-02f, 1.6666666666666667e-01f, 0.5f};  // 1/11! .. 1/2!

void ScalarRange(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    if (p.mask && !p.mask[i]) {
      p.values[i] = 0.f;
      p.grad[i] = 0.f;
      continue;
    }
    double v, g;
    KlValueGrad<double>(p.estimator, double(p.logprobs[i]) - double(p.ref_logprobs[i]), &v, &g);
    p.values[i] = float(v);
    p.grad[i] = float(g);
  }
}

RLK_AVX512 int64_t K3Avx512(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  using namespace simd::avx512;
  const bool plus = p.estimator == kKlK3Plus;
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512 lp = _mm512_loadu_ps(p.logprobs + i), rf = _mm512_loadu_ps(p.ref_logprobs + i);
    const __m512d dlo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(lp)), _mm512_cvtps_pd(_mm512_castps512_ps256(rf)));
    const __m512d dhi = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(lp, 1)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(rf, 1)));
    // x = clamp(-d, -20, 20), x_clamped where -d is outside (NaN: neither, as the scalar code).
    const __m512d lo = _mm512_set1_pd(-20.0), hi = _mm512_set1_pd(20.0);
    const __m512d xlo = _mm512_sub_pd(_mm512_setzero_pd(), dlo), xhi = _mm512_sub_pd(_mm512_setzero_pd(), dhi);
    const __mmask16 xc = __mmask16(_mm512_cmp_pd_mask(xlo, lo, _CMP_LT_OQ) | _mm512_cmp_pd_mask(xlo, hi, _CMP_GT_OQ)) |
                         __mmask16(__mmask16(_mm512_cmp_pd_mask(xhi, lo, _CMP_LT_OQ) | _mm512_cmp_pd_mask(xhi, hi, _CMP_GT_OQ)) << 8);
    const __m512 x = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_min_pd(hi, _mm512_max_pd(lo, xlo)))),
                                        _mm512_cvtpd_ps(_mm512_min_pd(hi, _mm512_max_pd(lo, xhi))), 1);
    __m512 s = _mm512_set1_ps(kInvFact[0]);
    for (int k = 1; k < 10; ++k) s = _mm512_fmadd_ps(s, x, _mm512_set1_ps(kInvFact[k]));
    const __m512 ks = _mm512_mul_ps(_mm512_mul_ps(x, x), s);
    const __m512 e = Exp(x);
    const __m512 em1 = _mm512_sub_ps(e, _mm512_set1_ps(1.0f));
    const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(1.0f), _CMP_LT_OQ);
    const __m512 k = _mm512_mask_blend_ps(small, _mm512_sub_ps(em1, x), ks);
    const __mmask16 vc = _mm512_cmp_ps_mask(k, _mm512_set1_ps(10.0f), _CMP_GT_OQ);
    const __m512 value = _mm512_mask_blend_ps(vc, k, _mm512_set1_ps(10.0f));
    __m512 grad;
    if (plus) {
      grad = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(dlo)), _mm512_cvtpd_ps(dhi), 1);
    } else {
      const __m512 g = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mask_blend_ps(small, em1, _mm512_add_ps(x, ks)));
      grad = _mm512_maskz_mov_ps(__mmask16(~(xc | vc)), g);
    }
    __mmask16 keep = 0xFFFF;
    if (p.mask) keep = _mm512_cmp_epi32_mask(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.mask + i))), _mm512_setzero_si512(), _MM_CMPINT_NE);
    _mm512_storeu_ps(p.values + i, _mm512_maskz_mov_ps(keep, value));
    _mm512_storeu_ps(p.grad + i, _mm512_maskz_mov_ps(keep, grad));
  }
  return i;
}

RLK_AVX2 int64_t K3Avx2(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  using namespace simd::avx2;
  const bool plus = p.estimator == kKlK3Plus;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 lp = _mm256_loadu_ps(p.logprobs + i), rf = _mm256_loadu_ps(p.ref_logprobs + i);
    const __m256d dlo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(lp)), _mm256_cvtps_pd(_mm256_castps256_ps128(rf)));
    const __m256d dhi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(lp, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(rf, 1)));
    const __m256d lo = _mm256_set1_pd(-20.0), hi = _mm256_set1_pd(20.0);
    const __m256d xlo = _mm256_sub_pd(_mm256_setzero_pd(), dlo), xhi = _mm256_sub_pd(_mm256_setzero_pd(), dhi);
    const __m128 xclo = _mm256_cvtpd_ps(_mm256_or_pd(_mm256_cmp_pd(xlo, lo, _CMP_LT_OQ), _mm256_cmp_pd(xlo, hi, _CMP_GT_OQ)));
    const __m128 xchi = _mm256_cvtpd_ps(_mm256_or_pd(_mm256_cmp_pd(xhi, lo, _CMP_LT_OQ), _mm256_cmp_pd(xhi, hi, _CMP_GT_OQ)));
    // The all-ones doubles convert to NaN floats: nonzero where clamped.
    const __m256 xc = _mm256_cmp_ps(_mm256_set_m128(xchi, xclo), _mm256_set_m128(xchi, xclo), _CMP_UNORD_Q);
    const __m256 x = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_min_pd(hi, _mm256_max_pd(lo, xhi))), _mm256_cvtpd_ps(_mm256_min_pd(hi, _mm256_max_pd(lo, xlo))));
    __m256 s = _mm256_set1_ps(kInvFact[0]);
    for (int k = 1; k < 10; ++k) s = _mm256_fmadd_ps(s, x, _mm256_set1_ps(kInvFact[k]));
    const __m256 ks = _mm256_mul_ps(_mm256_mul_ps(x, x), s);
    const __m256 e = Exp(x);
    const __m256 em1 = _mm256_sub_ps(e, _mm256_set1_ps(1.0f));
    const __m256 small = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(1.0f), _CMP_LT_OQ);
    const __m256 k = _mm256_blendv_ps(_mm256_sub_ps(em1, x), ks, small);
    const __m256 vc = _mm256_cmp_ps(k, _mm256_set1_ps(10.0f), _CMP_GT_OQ);
    const __m256 value = _mm256_blendv_ps(k, _mm256_set1_ps(10.0f), vc);
    __m256 grad;
    if (plus) {
      grad = _mm256_set_m128(_mm256_cvtpd_ps(dhi), _mm256_cvtpd_ps(dlo));
    } else {
      const __m256 g = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_blendv_ps(em1, _mm256_add_ps(x, ks), small));
      grad = _mm256_andnot_ps(_mm256_or_ps(xc, vc), g);
    }
    if (p.mask) {
      const __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.mask + i)));
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));  // all ones where masked out
      _mm256_storeu_ps(p.values + i, _mm256_andnot_ps(keep, value));
      _mm256_storeu_ps(p.grad + i, _mm256_andnot_ps(keep, grad));
    } else {
      _mm256_storeu_ps(p.values + i, value);
      _mm256_storeu_ps(p.grad + i, grad);
    }
  }
  return i;
}

}  // namespace

Status KlPenalty(const KlPenaltyParams& p) {
  if (p.estimator < 0 || p.estimator >= kKlNumEstimators)
    return Status{Status::kInvalidArgument, "unknown KL estimator code"};
  const bool k3 = p.estimator == kKlK3 || p.estimator == kKlK3Plus;
  const simd::IsaKind isa = simd::Isa();
  ParallelFor(p.n, 1 << 14, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    if (k3 && isa == simd::IsaKind::kAvx512) i = K3Avx512(p, begin, end);
    else if (k3 && isa == simd::IsaKind::kAvx2) i = K3Avx2(p, begin, end);
    ScalarRange(p, i, end);
  });
  return Status::Ok();
}

}  // namespace rlk::cpu
