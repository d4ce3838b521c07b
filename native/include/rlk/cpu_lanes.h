// Double-precision lanes for the CPU token passes: Lanes<4> (AVX2) and
// Lanes<8> (AVX-512) with the operators and functions the policy-loss
// registry (policy_loss_modes.h) calls on its F: arithmetic, comparisons
// giving LaneMask, Sel, Exp, Log, Finite. So the same entry that CUDA runs on
// float runs here on 4 or 8 tokens at once, in double (the loss is a sum of
// terms that cancel; double lanes keep the CPU within rounding of float64).
//
// Written with GCC vector extensions (and, for the 8-lane comparisons, two
// AVX-512 builtins) without target attributes: every function is always_inline, and a pass that uses them
// carries the target attribute (RLK_AVX2 / RLK_AVX512 of cpu_simd.h), so GCC
// lowers the vectors there to that ISA's instructions; nothing here is ever
// compiled out of line for a CPU that lacks it. Lane order is fixed, so
// horizontal sums are deterministic.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <cmath>
#include <cstdint>
#include <cstring>

#include <immintrin.h>  // declares the AVX-512 builtins that CmpMask<8> expands (only in an RLK_AVX512 pass)

#define RLK_LANE inline __attribute__((always_inline))

namespace rlk::lanes {

template <int N>
struct LaneMask;

// GCC takes vector_size only from a constant, not a template argument.
template <int N> struct VecTypes;
template <> struct VecTypes<4> {
  typedef double D __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  typedef float Fv __attribute__((vector_size(16)));
  typedef uint8_t B __attribute__((vector_size(4)));
};
template <> struct VecTypes<8> {
  typedef double D __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  typedef float Fv __attribute__((vector_size(32)));
  typedef uint8_t B __attribute__((vector_size(8)));
};

template <int N>
struct Lanes {
  typedef typename VecTypes<N>::D D;
  typedef typename VecTypes<N>::I I;
  typedef typename VecTypes<N>::Fv Fv;
  static constexpr int kN = N;
  D v;
  RLK_LANE Lanes() : v(D{} + 0.0) {}
  RLK_LANE Lanes(double x) : v(D{} + x) {}
  RLK_LANE static Lanes Of(const D& d) {
    Lanes r;
    r.v = d;
    return r;
  }
  RLK_LANE double operator[](int k) const { return v[k]; }
};

template <int N>
struct LaneMask {
  typename Lanes<N>::I m;  // all ones (true) or zero per lane
  RLK_LANE LaneMask() : m(typename Lanes<N>::I{} + 0) {}
  RLK_LANE LaneMask(bool b) : m(typename Lanes<N>::I{} + (b ? -1 : 0)) {}
  RLK_LANE static LaneMask Of(const typename Lanes<N>::I& x) {
    LaneMask r;
    r.m = x;
    return r;
  }
};

#define RLK_LANE_BIN(op)                                                                                       \
  template <int N> RLK_LANE Lanes<N> operator op(const Lanes<N>& a, const Lanes<N>& b) { return Lanes<N>::Of(a.v op b.v); } \
  template <int N> RLK_LANE Lanes<N> operator op(const Lanes<N>& a, double b) { return Lanes<N>::Of(a.v op b); }     \
  template <int N> RLK_LANE Lanes<N> operator op(double a, const Lanes<N>& b) { return Lanes<N>::Of(a op b.v); }
RLK_LANE_BIN(+)
RLK_LANE_BIN(-)
RLK_LANE_BIN(*)
RLK_LANE_BIN(/)
#undef RLK_LANE_BIN
template <int N> RLK_LANE Lanes<N> operator-(const Lanes<N>& a) { return Lanes<N>::Of(-a.v); }
template <int N> RLK_LANE Lanes<N>& operator+=(Lanes<N>& a, const Lanes<N>& b) { a.v += b.v; return a; }
template <int N> RLK_LANE Lanes<N>& operator-=(Lanes<N>& a, const Lanes<N>& b) { a.v -= b.v; return a; }

// Comparisons are ordered (false with a NaN), as the scalar ones; != is unordered.
// On 8 lanes GCC 12 lowered a vector comparison (and a vector ?:) lane by lane
// under the AVX-512 target, so they are the compare-into-mask builtin there
// (expanded only inside the RLK_AVX512 pass that inlines them); on 4 lanes a
// vector select, which AVX2 builds from one compare.
template <int N, int kPred>
RLK_LANE typename Lanes<N>::I CmpMask(const typename Lanes<N>::D& a, const typename Lanes<N>::D& b) {
  typedef typename Lanes<N>::I I;
  if constexpr (N == 8) {
    return (I)__builtin_ia32_cvtmask2q512(__builtin_ia32_cmppd512_mask(a, b, kPred, (unsigned char)-1, 4));
  } else {
    switch (kPred) {
      case 0x11: return (a < b) ? (I{} - 1) : (I{} + 0);
      case 0x12: return (a <= b) ? (I{} - 1) : (I{} + 0);
      case 0x1e: return (a > b) ? (I{} - 1) : (I{} + 0);
      case 0x1d: return (a >= b) ? (I{} - 1) : (I{} + 0);
      case 0x00: return (a == b) ? (I{} - 1) : (I{} + 0);
      default: return (a != b) ? (I{} - 1) : (I{} + 0);
    }
  }
}
// _CMP_LT_OQ, _CMP_LE_OQ, _CMP_GT_OQ, _CMP_GE_OQ, _CMP_EQ_OQ, _CMP_NEQ_UQ.
#define RLK_LANE_CMP(op, pred)                                                                                  \
  template <int N> RLK_LANE LaneMask<N> operator op(const Lanes<N>& a, const Lanes<N>& b) {                     \
    return LaneMask<N>::Of(CmpMask<N, pred>(a.v, b.v));                                                         \
  }                                                                                                             \
  template <int N> RLK_LANE LaneMask<N> operator op(const Lanes<N>& a, double b) { return a op Lanes<N>(b); }
RLK_LANE_CMP(<, 0x11)
RLK_LANE_CMP(<=, 0x12)
RLK_LANE_CMP(>, 0x1e)
RLK_LANE_CMP(>=, 0x1d)
RLK_LANE_CMP(==, 0x00)
RLK_LANE_CMP(!=, 0x04)
#undef RLK_LANE_CMP

template <int N> RLK_LANE LaneMask<N> operator&(const LaneMask<N>& a, const LaneMask<N>& b) { return LaneMask<N>::Of(a.m & b.m); }
template <int N> RLK_LANE LaneMask<N> operator|(const LaneMask<N>& a, const LaneMask<N>& b) { return LaneMask<N>::Of(a.m | b.m); }
template <int N> RLK_LANE LaneMask<N> operator!(const LaneMask<N>& a) { return LaneMask<N>::Of(~a.m); }

template <int N>
RLK_LANE Lanes<N> Sel(const LaneMask<N>& m, const Lanes<N>& a, const Lanes<N>& b) {
  typedef typename Lanes<N>::I I;
  typedef typename Lanes<N>::D D;
  return Lanes<N>::Of((D)(((I)a.v & m.m) | ((I)b.v & ~m.m)));
}

template <int N>
RLK_LANE LaneMask<N> Finite(const Lanes<N>& x) {
  typedef typename Lanes<N>::I I;
  const I e = (I)x.v & (I{} + 0x7ff0000000000000ll);
  const I z = e ^ (I{} + 0x7ff0000000000000ll);
  return LaneMask<N>::Of((z | -z) >> 63);  // z != 0
}

// e^x, within a few ulps of std::exp; NaN stays NaN, x is clamped to
// [-708, 708] first (so huge arguments give 0 or e^708 rather than garbage;
// the callers' arguments that matter lie far inside). x = n ln2 + r with the
// round-to-nearest of x log2e by the 1.5 * 2^52 trick (its low bits are n as
// an integer), ln2 split in two (n ln2_hi exact), |r| <= ln2 / 2, then the
// Taylor polynomial of degree 13 (truncation < 4e-18 relative) and 2^n
// built in the exponent bits.
template <int N>
RLK_LANE Lanes<N> Exp(const Lanes<N>& x) {
  typedef typename Lanes<N>::I I;
  typedef typename Lanes<N>::D D;
  D xv = x.v;
  xv = Sel(Lanes<N>::Of(xv) < -708.0, Lanes<N>(-708.0), Lanes<N>::Of(xv)).v;
  xv = Sel(Lanes<N>::Of(xv) > 708.0, Lanes<N>(708.0), Lanes<N>::Of(xv)).v;
  const double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const D t = xv * 1.4426950408889634 + kShift;
  const D n = t - kShift;
  D r = xv - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  static constexpr double kInvFact[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                          1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,      1.0 / 720.0,
                                          1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,         0.5,
                                          1.0,                1.0};
  D p = D{} + kInvFact[0];
  for (int k = 1; k < 14; ++k) p = p * r + kInvFact[k];
  const I ni = (I)t - (I)(D{} + kShift);
  const D scale = (D)((ni + 1023) << 52);
  const D y = p * scale;
  // NaN in, NaN out (the clamps above keep NaN; its n is garbage).
  return Sel(x != x, x, Lanes<N>::Of(y));
}

// e^x - x - 1 for finite x in [-20, 20] (NaN stays NaN) with Exp's reduction
// x = n ln2 + r and e^r = 1 + r + r^2 q(r): where n = 0, r is x exactly and
// the value is r^2 q(r), without the cancellation of e^x - x - 1 (|x| <=
// ln2 / 2 there); elsewhere 2^n e^r - x - 1 loses at most ~40 ulps (|x| >
// ln2 / 2 keeps the value above 0.05 of its terms). One polynomial instead
// of Exp plus kl_penalty.h's 16-term series.
template <int N>
RLK_LANE Lanes<N> ExpMinusXMinus1(const Lanes<N>& x) {
  typedef typename Lanes<N>::I I;
  typedef typename Lanes<N>::D D;
  const D xv = x.v;
  const double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const D t = xv * 1.4426950408889634 + kShift;
  const D n = t - kShift;
  D r = xv - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  static constexpr double kInvFact[12] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                          1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,      1.0 / 720.0,
                                          1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,         0.5};
  D q = D{} + kInvFact[0];
  for (int k = 1; k < 12; ++k) q = q * r + kInvFact[k];
  const D tail = r * r * q;
  const I ni = (I)t - (I)(D{} + kShift);
  const D scale = (D)((ni + 1023) << 52);
  const D direct = ((tail + r) + 1.0) * scale - xv - 1.0;
  return Sel(Lanes<N>::Of(n) == 0.0, Lanes<N>::Of(tail), Lanes<N>::Of(direct));
}

// ln x lane by lane (only the rare dppo-kl and pre-pass paths need it).
template <int N>
RLK_LANE Lanes<N> Log(const Lanes<N>& x) {
  Lanes<N> r;
  for (int k = 0; k < N; ++k) r.v[k] = std::log(x.v[k]);
  return r;
}

template <int N>
RLK_LANE Lanes<N> LoadF(const float* p) {
  typename Lanes<N>::Fv f;
  std::memcpy(&f, p, sizeof(f));
  return Lanes<N>::Of(__builtin_convertvector(f, typename Lanes<N>::D));
}

template <int N>
RLK_LANE void StoreF(float* p, const Lanes<N>& x) {
  const typename Lanes<N>::Fv f = __builtin_convertvector(x.v, typename Lanes<N>::Fv);
  std::memcpy(p, &f, sizeof(f));
}

// N bytes, nonzero -> true: the bytes as one integer in every lane, lane k
// keeping its byte k (a widening conversion was lowered byte by byte).
template <int N>
RLK_LANE LaneMask<N> LoadMask(const uint8_t* p) {
  typedef typename Lanes<N>::I I;
  uint64_t bytes = 0;
  std::memcpy(&bytes, p, N);
  I sel;
  for (int k = 0; k < N; ++k) sel[k] = int64_t(0xffull << (8 * k));
  const I v = (I{} + int64_t(bytes)) & sel;
  return LaneMask<N>::Of((v | -v) >> 63);  // sign of v | -v: v != 0 (no vector ?:, see above)
}

// Sum of the lanes in a fixed order (pairwise).
template <int N>
RLK_LANE double HSum(const Lanes<N>& x) {
  double a[N];
  std::memcpy(a, &x.v, sizeof(a));
  for (int w = N / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) a[k] += a[k + w];
  return a[0];
}

// Count of true lanes, accumulated as negative ones.
template <int N>
RLK_LANE int64_t HCount(const typename Lanes<N>::I& c) {
  int64_t s = 0;
  for (int k = 0; k < N; ++k) s -= c[k];
  return s;
}

}  // namespace rlk::lanes
