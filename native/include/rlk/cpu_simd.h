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
  V n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
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
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
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
