// CPU klPenalty. k1, abs, k2, k1+ are a subtraction and a product a token:
// elementwise in double (the difference logp - ref of two floats is exact in
// double), memory-bound. k3 and k3+ need e^x - x - 1: in double through the
// scalar series of kl_penalty.h that costs ~35 ns a token (6x torch.compile),
// so whole vectors of 16 (AVX-512) or 8 (AVX2) tokens go through float32
// vector code (below), the tail and the baseline path through the double
// code. Threads over fixed slices; each element is independent, so the result
// does not depend on the thread count.
//
// The vector k3 (FLanes of cpu_lanes.h: 8 floats on AVX2, 16 on AVX-512):
// x = ref - logp in float (the float rounding of the exact difference, as
// the double path's float(clamp(d)) wherever |d| <= 20), clamped to +-20;
// e^x - 1 and e^x - 1 - x then come from one polynomial (K3Parts). Where the
// clamp acts (|x| > 20), k at the bound (19 or ~5e8) exceeds 10, so the
// value clamp zeroes the gradient there too and a rounding of x onto a bound
// changes no output. The double difference, its clamp and the conversions
// back had been a quarter of the AVX2 loop's instructions, and Cephes' exp
// beside a degree-11 series another third: 2 M tokens, 1 thread, 5.4 -> 2.3
// ms on AVX2, 2.7 -> 1.45 ms on AVX-512 (bench/op_loop.mjs k3).
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "rlk/kl_penalty.h"

#include "rlk/cpu_lanes.h"
#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

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

// e^x - 1 (em1) and e^x - 1 - x (k) for x in [-20, 20] (NaN stays NaN),
// with s(r) = (e^r - 1 - r) / r^2 as a degree-7 minimax polynomial on
// [-1, 1] (relative error 1e-8 with float coefficients):
//   |x| < 1: r = x, k = x^2 s(x) (no cancellation), em1 = x + k;
//   else:    x = n ln2 + r (|r| <= ln2 / 2), em1 = 2^n (r + r^2 s(r)) + (2^n - 1)
//            (2^n - 1 exact for n >= -24), k = em1 - x: at |x| >= 1,
//            k >= 0.36 and |em1| / k <= 2.4, so the difference costs ~1 bit.
template <int N>
RLK_LANE void K3Parts(const lanes::FLanes<N>& x, lanes::FLanes<N>* em1, lanes::FLanes<N>* k) {
  using F = lanes::FLanes<N>;
  typedef typename F::I I;
  typedef typename F::V V;
  static constexpr float kS[8] = {5.000000000e-01f, 1.666666716e-01f, 4.166673496e-02f, 8.333310485e-03f,
                                  1.388545032e-03f, 1.984393748e-04f, 2.535491149e-05f, 2.772777634e-06f};
  const float kShift = 12582912.0f;  // 1.5 * 2^23: t's low bits are n = round(x log2e)
  const V t = x.v * 1.44269504088896341f + kShift;
  const lanes::FMask<N> small = Abs(x) < 1.0;
  const V n = Sel(small, F(0.0), F::Of(t - kShift)).v;
  V r = x.v - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const V tail = r * r * lanes::Estrin(r, kS);
  const V q = tail + r;  // e^r - 1
  const V scale = (V)(((I)t - (I)(V{} + kShift) + 127) << 23);
  const V big = q * scale + (scale - 1.0f);
  *em1 = Sel(small, F::Of(q), F::Of(big));
  *k = Sel(small, F::Of(tail), F::Of(big - x.v));
}

template <int N>
RLK_LANE int64_t K3Lanes(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  using F = lanes::FLanes<N>;
  const bool plus = p.estimator == kKlK3Plus;
  int64_t i = begin;
  for (; i + N <= end; i += N) {
    const F x0 = lanes::LoadFl<N>(p.ref_logprobs + i) - lanes::LoadFl<N>(p.logprobs + i);
    F em1, k;
    K3Parts(Clamp(x0, F(-20.0), F(20.0)), &em1, &k);
    // value = min(k, 10) (minps(10, k) keeps a NaN k); the gradient is 0 where it is clamped.
    F value = lanes::MinPs(F(10.0), k);
    F grad = plus ? -x0 : Sel(k > 10.0, F(0.0), -em1);
    if (p.mask) {
      const lanes::FMask<N> keep = lanes::LoadFMask<N>(p.mask + i);
      value = Sel(keep, value, F(0.0));
      grad = Sel(keep, grad, F(0.0));
    }
    lanes::StoreFl<N>(p.values + i, value);
    lanes::StoreFl<N>(p.grad + i, grad);
  }
  return i;
}

RLK_AVX512 __attribute__((flatten)) int64_t K3Avx512(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  return K3Lanes<16>(p, begin, end);
}

RLK_AVX2 __attribute__((flatten)) int64_t K3Avx2(const KlPenaltyParams& p, int64_t begin, int64_t end) {
  return K3Lanes<8>(p, begin, end);
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
