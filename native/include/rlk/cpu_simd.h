// Vectorised fp32 math for the CPU kernels, chosen at run time: one binary
// runs on any x86-64 and uses AVX-512 where the CPU has it. Functions carry
// target attributes instead of file-wide -m flags, so nothing compiled here
// executes an instruction the CPU lacks unless Isa() said it may.
//
// Exp is Cephes' expf (range reduction to 2^n, degree-5 polynomial on
// [-ln2/2, ln2/2]), relative error ~1.2e-7 for normal results. -inf gives 0,
// NaN gives NaN, results below FLT_MIN flush to 0 on the AVX2 path (they are
// below any sum of exps the kernels form after shifting by the row max).
// AVX2 flushes results below 2.3e-38 to 0 for the same reason.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "rlk/common.h"

namespace rlk::simd {

enum class IsaKind { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline IsaKind DetectIsa() {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return IsaKind::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return IsaKind::kAvx2;
  return IsaKind::kBaseline;
}
// Cached; RLK_SIMD=avx2|baseline in the environment lowers it (for tests).
IsaKind Isa();
const char* IsaName(IsaKind k);

namespace detail {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
}  // namespace detail

// The scalar twin of the vector Exp (same reduction and polynomial), for
// tails and the baseline path.
inline float Exp(float x) {
  using namespace detail;
  if (x != x) return x;
  if (x > 88.72283935546875f) return INFINITY;
  if (x < -103.972084045410f) return 0.0f;
  float n = std::nearbyint(x * kLog2e);
  float r = std::fma(n, -kLn2Hi, x);
  r = std::fma(n, -kLn2Lo, r);
  float p = std::fma(std::fma(std::fma(std::fma(std::fma(kP0, r, kP1), r, kP2), r, kP3), r, kP4), r, kP5);
  float y = std::fma(p, r * r, r) + 1.0f;
  return std::ldexp(y, int(n));
}

// ---- AVX-512: 16 lanes -------------------------------------------------------
#define RLK_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")))
namespace avx512 {
constexpr int kLanes = 16;
using V = __m512;

RLK_AVX512 inline V Exp(V x) {
  using namespace detail;
  const V hi = _mm512_set1_ps(88.72283935546875f), lo = _mm512_set1_ps(-103.972084045410f);
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  V xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  V n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  V p = _mm512_fmadd_ps(_mm512_set1_ps(kP0), r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  V y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  // x > 88.38 overflows in scalef to inf, as it should.
  y = _mm512_scalef_ps(y, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), n, _mm512_set1_ps(200.0f)));
  y = _mm512_mask_blend_ps(tiny, y, _mm512_setzero_ps());
  return _mm512_mask_blend_ps(nan, y, x);
}

RLK_AVX512 inline V Load(const float* p) { return _mm512_loadu_ps(p); }
RLK_AVX512 inline V Load(const bf16_t* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
RLK_AVX512 inline V Load(const f16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
RLK_AVX512 inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
RLK_AVX512 inline void Store(bf16_t* p, V v) {
  // Round to nearest even on the bits; NaN keeps a quiet NaN.
  __m512i x = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_blend_epi32(nan, r, _mm512_or_si512(x, _mm512_set1_epi32(0x400000)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}
RLK_AVX512 inline void Store(f16_t* p, V v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Tails: the first n (< kLanes) elements, other lanes set to `fill`.
template <class T>
RLK_AVX512 inline V LoadTail(const T* p, int64_t n, float fill) {
  alignas(64) T buf[kLanes];
  for (int i = 0; i < kLanes; ++i) buf[i] = FromFloat<T>(fill);
  std::memcpy(buf, p, size_t(n) * sizeof(T));
  return Load(buf);
}
template <class T>
RLK_AVX512 inline void StoreTail(T* p, V v, int64_t n) {
  alignas(64) T buf[kLanes];
  Store(buf, v);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
}
RLK_AVX512 inline float ReduceAdd(V v) { return _mm512_reduce_add_ps(v); }
RLK_AVX512 inline float ReduceMax(V v) { return _mm512_reduce_max_ps(v); }
}  // namespace avx512

// ---- AVX2: 8 lanes ---------------------------------------------------------------
#define RLK_AVX2 __attribute__((target("avx2,fma,f16c")))
namespace avx2 {
constexpr int kLanes = 8;
using V = __m256;

RLK_AVX2 inline V Exp(V x) {
  using namespace detail;
  const V hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-86.64f);
  V nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  V tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  V big = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
  V xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  // n = round(xc log2e) as ExpNeg below computes it (1.5 2^23 added in one fma).
  const V magic = _mm256_set1_ps(12582912.0f);
  const V nm = _mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), magic);
  V n = _mm256_sub_ps(nm, magic);
  V r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  V p = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  V y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  // 2^(n-1) built in the exponent field (n is in [-125, 128] after the
  // clamp, and 2^128 itself is not a float), then doubled exactly.
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(nm), _mm256_set1_epi32(126)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  y = _mm256_add_ps(y, y);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), tiny);
  return _mm256_blendv_ps(y, x, nan);
}

RLK_AVX2 inline V Load(const float* p) { return _mm256_loadu_ps(p); }
RLK_AVX2 inline V Load(const bf16_t* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
RLK_AVX2 inline V Load(const f16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
RLK_AVX2 inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
RLK_AVX2 inline void Store(bf16_t* p, V v) {
  alignas(32) float tmp[kLanes];
  _mm256_store_ps(tmp, v);
  for (int i = 0; i < kLanes; ++i) p[i].bits = FloatToBf16(tmp[i]);
}
RLK_AVX2 inline void Store(f16_t* p, V v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <class T>
RLK_AVX2 inline V LoadTail(const T* p, int64_t n, float fill) {
  alignas(32) T buf[kLanes];
  for (int i = 0; i < kLanes; ++i) buf[i] = FromFloat<T>(fill);
  std::memcpy(buf, p, size_t(n) * sizeof(T));
  return Load(buf);
}
template <class T>
RLK_AVX2 inline void StoreTail(T* p, V v, int64_t n) {
  alignas(32) T buf[kLanes];
  Store(buf, v);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
}
RLK_AVX2 inline float ReduceAdd(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
RLK_AVX2 inline float ReduceMax(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
}  // namespace avx2

}  // namespace rlk::simd

// ==== Log (added with the vocabulary divergences) ===========================
// Cephes' logf: x = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1 exactly,
// log x = f - f^2/2 + f^3 P(f) + e ln2 (ln2 split in a hi part exact in
// float and a lo part), P of degree 8. Relative error about 1e-7 for positive
// normal and subnormal x (checked against float64 through the divergence
// tests, whose JSD path uses it); log(0) = -inf, log(x < 0) = NaN,
// log(inf) = inf, NaN gives NaN. The vector versions and the scalar twin use
// the same reduction and polynomial, so every ISA path gives the same value
// up to FMA contraction.
namespace rlk::simd {
namespace detail {
constexpr float kSqrtHalf = 0.707106781186547524f, kSqrt2 = 1.41421356237309505f;
constexpr float kL0 = 7.0376836292e-2f, kL1 = -1.1514610310e-1f, kL2 = 1.1676998740e-1f;
constexpr float kL3 = -1.2420140846e-1f, kL4 = 1.4249322787e-1f, kL5 = -1.6668057665e-1f;
constexpr float kL6 = 2.0000714765e-1f, kL7 = -2.4999993993e-1f, kL8 = 3.3333331174e-1f;
}  // namespace detail

inline float Log(float x) {
  using namespace detail;
  if (x != x) return x;
  if (x < 0.0f) return NAN;
  if (x == 0.0f) return -INFINITY;
  if (x == INFINITY) return x;
  int e;
  float m = std::frexp(x, &e);  // [0.5, 1)
  if (m < kSqrtHalf) {
    m = m + m;
    e -= 1;
  }
  float f = m - 1.0f;
  float z = f * f;
  float p = std::fma(std::fma(std::fma(std::fma(std::fma(std::fma(std::fma(std::fma(kL0, f, kL1), f, kL2), f, kL3), f, kL4), f, kL5), f, kL6), f, kL7), f, kL8);
  float ef = float(e);
  float y = std::fma(p * f, z, ef * kLn2Lo);
  y = std::fma(-0.5f, z, y);
  return std::fma(ef, kLn2Hi, f + y);
}

namespace avx512 {
RLK_AVX512 inline V Log(V x) {
  using namespace detail;
  // getexp/getmant read subnormals correctly, so no pre-scaling is needed.
  V e = _mm512_getexp_ps(x);
  V m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(kSqrt2), _CMP_GE_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
  V f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  V z = _mm512_mul_ps(f, f);
  V p = _mm512_fmadd_ps(_mm512_set1_ps(kL0), f, _mm512_set1_ps(kL1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL7));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kL8));
  V y = _mm512_fmadd_ps(_mm512_mul_ps(p, f), z, _mm512_mul_ps(e, _mm512_set1_ps(kLn2Lo)));
  y = _mm512_fmadd_ps(_mm512_set1_ps(-0.5f), z, y);
  V r = _mm512_fmadd_ps(e, _mm512_set1_ps(kLn2Hi), _mm512_add_ps(f, y));
  // Specials: 0 -> -inf, negative -> NaN, inf -> inf, NaN -> NaN.
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_EQ_OQ), r, _mm512_set1_ps(-INFINITY));
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), r, _mm512_set1_ps(NAN));
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), r, x);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, x);
}
}  // namespace avx512

namespace avx2 {
RLK_AVX2 inline V Log(V x) {
  using namespace detail;
  // Subnormals: scale by 2^23 first so the exponent field is meaningful.
  V sub = _mm256_cmp_ps(x, _mm256_set1_ps(1.17549435e-38f), _CMP_LT_OQ);
  V xs = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(8388608.0f)), sub);
  __m256i bits = _mm256_castps_si256(xs);
  V e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
  e = _mm256_sub_ps(e, _mm256_and_ps(sub, _mm256_set1_ps(23.0f)));
  V m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFF)), _mm256_set1_epi32(0x3F800000)));
  V big = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrt2), _CMP_GE_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_ps(e, _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
  V f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  V z = _mm256_mul_ps(f, f);
  V p = _mm256_fmadd_ps(_mm256_set1_ps(kL0), f, _mm256_set1_ps(kL1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL5));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL6));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL7));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kL8));
  V y = _mm256_fmadd_ps(_mm256_mul_ps(p, f), z, _mm256_mul_ps(e, _mm256_set1_ps(kLn2Lo)));
  y = _mm256_fmadd_ps(_mm256_set1_ps(-0.5f), z, y);
  V r = _mm256_fmadd_ps(e, _mm256_set1_ps(kLn2Hi), _mm256_add_ps(f, y));
  r = _mm256_blendv_ps(r, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  r = _mm256_blendv_ps(r, _mm256_set1_ps(NAN), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  r = _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
}  // namespace avx2
}  // namespace rlk::simd

// ==== ExpNeg: e^d for d <= 0 (added for the token log-prob kernels) =========
// The same reduction as Exp with a shorter polynomial (detail::kQ*), for
// arguments already shifted by a row maximum: d <= 0, -inf or NaN. kClampHigh also clamps d at 88 (for
// callers whose maximum comes from outside, e.g. saved statistics); without
// it d > 0 gives garbage on AVX2. It skips Exp's overflow and special-value
// blends: the clamp at the bottom is written max(lo, d), which returns d when
// d is NaN, so NaN flows through the polynomial untouched, and -inf lands on
// lo, whose result is exactly 0 (AVX-512: scalef by 2^-151 or less rounds to
// 0; AVX2 masks results below lo). `dc` receives a clamped argument, finite
// wherever d is not NaN, and equal to d wherever the result is not 0, so a
// product e * dc is e * d, and 0 (not NaN) for d = -inf. Results between
// 2^-149 and FLT_MIN are denormal on AVX-512 and 0 on AVX2: both are below
// any sum the kernels form (the row's own maximum contributes 1).
// kClampLow = false drops the bottom clamp (AVX2: a max, a compare and an
// and-not of the exp's ~17 instructions; AVX-512: a max), for callers that
// know every d >= kExpNegLow (finite, or NaN): below it the result is garbage.
namespace rlk::simd {
namespace detail {
// ExpNeg's polynomial: e^r on [-ln2/2, ln2/2] (0.1 % wider, for the n off by
// one that the AVX2 rounding allows) as one degree-6 minimax polynomial in
// Horner form, 1 + r (1 + r (kQ2 + ...)): six fmas where Cephes' form,
// 1 + r + r^2 P(r), takes five, a multiply, an fma and an add: two of the
// exp's ~17 AVX2 instructions. Float32 evaluation: at most 7.4e-8 relative error
// (1.2 ulps), no bias (mean signed error 5e-10), against Cephes' ~1 ulp.
constexpr float kQ2 = 4.999999106e-01f, kQ3 = 1.666641980e-01f, kQ4 = 4.166822881e-02f;
constexpr float kQ5 = 8.374899626e-03f, kQ6 = 1.383691910e-03f;
constexpr float kExpNegLow = -87.0f;  // ExpNeg<.., false> is exact down to here on every ISA
}  // namespace detail
namespace avx512 {
template <bool kClampHigh = false, bool kClampLow = true>
RLK_AVX512 inline V ExpNeg(V d, V* dc) {
  using namespace detail;
  V xc = kClampLow ? _mm512_max_ps(_mm512_set1_ps(-105.0f), d) : d;
  if (kClampHigh) xc = _mm512_min_ps(_mm512_set1_ps(88.0f), xc);
  *dc = xc;
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  V y = _mm512_fmadd_ps(_mm512_set1_ps(kQ6), r, _mm512_set1_ps(kQ5));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kQ4));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kQ3));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kQ2));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}
}  // namespace avx512
namespace avx2 {
template <bool kClampHigh = false, bool kClampLow = true>
RLK_AVX2 inline V ExpNeg(V d, V* dc) {
  using namespace detail;
  // n >= -126 above lo, so 2^n is a normal float built in the exponent field.
  const V lo = _mm256_set1_ps(kExpNegLow);
  V xc = kClampLow ? _mm256_max_ps(lo, d) : d;
  if (kClampHigh) xc = _mm256_min_ps(_mm256_set1_ps(88.0f), xc);
  *dc = xc;  // where xc != d (d < lo) the result is 0
  // n = round(xc log2e) by adding 1.5 2^23 (one fma: the sum's ulp is 1, so
  // it rounds to the nearest integer, and its low bits are that integer), in
  // place of a multiply, a round (2 uops) and a float-to-int conversion: an
  // eighth of the exp's uops on AVX2. n may differ from Exp's by one where
  // x log2e lies within a float rounding of a half-integer; r then lies a
  // hair outside [-ln2/2, ln2/2], where the polynomial is as accurate.
  const V magic = _mm256_set1_ps(12582912.0f);  // 1.5 2^23
  const V nm = _mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), magic);
  const V n = _mm256_sub_ps(nm, magic);
  V r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  V y = _mm256_fmadd_ps(_mm256_set1_ps(kQ6), r, _mm256_set1_ps(kQ5));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kQ4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kQ3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kQ2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  // nm's bits are 0x4B400000 + n; shifted by 23 the constant part leaves the
  // word, so (bits + bias) << 23 is 2^(n + bias - 127) in the exponent field.
  const __m256i nbits = _mm256_castps_si256(nm);
  if (kClampHigh) {
    // n up to 128: 2^(n-1), then doubled exactly (2^128 is not a float).
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(nbits, _mm256_set1_epi32(126)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_add_ps(y, y);
  } else {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(nbits, _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
  // d < lo (and -inf) gives 0; NaN (unordered) keeps the NaN y carries.
  return kClampLow ? _mm256_andnot_ps(_mm256_cmp_ps(d, lo, _CMP_LT_OQ), y) : y;
}
}  // namespace avx2

// Scalar twin for the baseline path and row tails.
inline float ExpNeg(float d) { return Exp(d); }
}  // namespace rlk::simd

// ==== Exp2Neg: 2^t for t <= 0 (the log-prob and divergence row sums) ========
// ExpNeg with the log2(e) folded into the caller's scale: a caller that forms
// d = (x - m) / T anyway forms t = (x - m) (log2(e) / T) for the same
// multiply, and 2^t needs no Cody-Waite reduction (f = t - round(t) is exact)
// and a polynomial one degree shorter for the same range of results.
// Why: Zen 4 and 5 issue multiplies and fmas on two of their four FP pipes.
// A vector of the log-prob rows' pass 2 (AVX2, no entropy) costs 15
// operations with ExpNeg, 11 of them on those two pipes; with Exp2Neg 14,
// 7 of them there (the reduction's adds go to the other two). Measured:
// pass-2-bound rows 20 % faster on AVX2, 7-12 % on AVX-512 (bench/RESULTS.md).
// Same contract as ExpNeg: t <= 0, -inf or NaN; NaN flows through, -inf
// gives exactly 0, `tc` receives t clamped (finite where t is not NaN, equal
// to t wherever the result is not 0 and t <= 127), kClampHigh also clamps t
// at 127 (a maximum from saved statistics), and kClampLow = false is for
// callers that know every t >= kExp2NegLow.
namespace rlk::simd {
namespace detail {
// 2^f = 1 + f q(f) on [-1/2, 1/2] (f = t - round(t), exact on both ISAs), q of
// degree 4 fitted for minimax relative error: 9.1e-8 in exact arithmetic,
// at most 1.72e-7 evaluated in float32 with fmas (every float f of the
// interval; mean signed error -2e-8 on a uniform grid).
constexpr float kE1 = 6.931470037e-01f, kE2 = 2.402224243e-01f, kE3 = 5.550733954e-02f;
constexpr float kE4 = 9.671512991e-03f, kE5 = 1.326471451e-03f;
constexpr double kLog2eD = 1.4426950408889634074, kLn2D = 0.69314718055994530942;
constexpr float kExp2NegLow = -125.0f;  // Exp2Neg<.., false> is exact down to here on every ISA
// log2(e) / T in float, the callers' scale. The contract admits any T whose
// 1 / T is a finite float, and below T = 4.3e-39 log2(e) / T overflows: then
// t = 0 * inf would be NaN where x = m (a row of equal logits). FLT_MAX keeps
// t = 0 there, and 2^t = 0 for every gap beyond 151 / FLT_MAX, as e^{-gap/T}.
inline float Log2eScale(float inv_t) { return float(std::fmin(3.4028234663852886e38, kLog2eD * double(inv_t))); }
}  // namespace detail
namespace avx512 {
template <bool kClampHigh = false, bool kClampLow = true>
RLK_AVX512 inline V Exp2Neg(V t, V* tc) {
  using namespace detail;
  // Below -151 the result, 2^n times at most 1.42, rounds to 0 in scalef.
  V xc = kClampLow ? _mm512_max_ps(_mm512_set1_ps(-151.0f), t) : t;
  if (kClampHigh) xc = _mm512_min_ps(_mm512_set1_ps(127.0f), xc);
  *tc = xc;
  const V n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V f = _mm512_sub_ps(xc, n);
  V y = _mm512_fmadd_ps(_mm512_set1_ps(kE5), f, _mm512_set1_ps(kE4));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE3));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE1));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}
}  // namespace avx512
namespace avx2 {
template <bool kClampHigh = false, bool kClampLow = true>
RLK_AVX2 inline V Exp2Neg(V t, V* tc) {
  using namespace detail;
  // -125 <= n <= 127 inside the clamps, so 2^n is a normal float built in
  // the exponent field.
  const V lo = _mm256_set1_ps(kExp2NegLow);
  V xc = kClampLow ? _mm256_max_ps(lo, t) : t;
  if (kClampHigh) xc = _mm256_min_ps(_mm256_set1_ps(127.0f), xc);
  *tc = xc;  // where xc != t (t < lo) the result is 0
  // n = round(xc) by adding 1.5 2^23, as in ExpNeg; f = xc - n is exact.
  const V magic = _mm256_set1_ps(12582912.0f);
  const V nm = _mm256_add_ps(xc, magic);
  const V f = _mm256_sub_ps(xc, _mm256_sub_ps(nm, magic));
  V y = _mm256_fmadd_ps(_mm256_set1_ps(kE5), f, _mm256_set1_ps(kE4));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kE3));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kE2));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kE1));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f));
  // nm's bits are 0x4B400000 + n: (bits + 127) << 23 is 2^n (see ExpNeg).
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(nm), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  // t < lo (and -inf) gives 0; NaN (unordered) keeps the NaN y carries.
  return kClampLow ? _mm256_andnot_ps(_mm256_cmp_ps(t, lo, _CMP_LT_OQ), y) : y;
}
}  // namespace avx2
}  // namespace rlk::simd
