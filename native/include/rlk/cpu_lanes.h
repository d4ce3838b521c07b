// Lanes for the CPU token passes. Double lanes, Lanes<4> (AVX2) and
// Lanes<8> (AVX-512), for the policy loss's sequence pre-pass (its sums feed
// exponentials); float lanes, FLanes<8> and FLanes<16>, for its token pass.
// Both carry the operators and functions the policy-loss registry
// (policy_loss_modes.h) calls on its F: arithmetic, comparisons giving a lane
// mask, Sel, Exp, Log, Finite. So the same entry that CUDA runs on float runs
// here on 4 to 16 tokens at once.
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

// A lane condition: on 4 lanes (AVX2) a vector of all-ones / zero lanes, on 8
// lanes (AVX-512) an 8-bit mask that lives in a k register. As a vector,
// every select was a ternary logic op, every comparison a compare plus a
// mask-to-vector move, and the masks took vector registers the constants then
// had to be reloaded for: ~40 % of the policy-loss token pass's instructions.
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
template <>
struct LaneMask<8> {
  unsigned char k;  // bit j: lane j
  RLK_LANE LaneMask() : k(0) {}
  RLK_LANE LaneMask(bool b) : k(b ? 0xff : 0) {}
  RLK_LANE static LaneMask Bits(unsigned char x) {
    LaneMask r;
    r.k = x;
    return r;
  }
};

// The arithmetic of a lane type LT (Lanes here, FLanes below), scalars
// converted to its element type S first.
#define RLK_LANE_BIN(LT, S, op)                                                                                \
  template <int N> RLK_LANE LT<N> operator op(const LT<N>& a, const LT<N>& b) { return LT<N>::Of(a.v op b.v); } \
  template <int N> RLK_LANE LT<N> operator op(const LT<N>& a, double b) { return LT<N>::Of(a.v op S(b)); }     \
  template <int N> RLK_LANE LT<N> operator op(double a, const LT<N>& b) { return LT<N>::Of(S(a) op b.v); }
#define RLK_LANE_ARITH(LT, S)                                                                          \
  RLK_LANE_BIN(LT, S, +)                                                                               \
  RLK_LANE_BIN(LT, S, -)                                                                               \
  RLK_LANE_BIN(LT, S, *)                                                                               \
  RLK_LANE_BIN(LT, S, /)                                                                               \
  template <int N> RLK_LANE LT<N> operator-(const LT<N>& a) { return LT<N>::Of(-a.v); }                \
  template <int N> RLK_LANE LT<N>& operator+=(LT<N>& a, const LT<N>& b) { a.v += b.v; return a; }      \
  template <int N> RLK_LANE LT<N>& operator-=(LT<N>& a, const LT<N>& b) { a.v -= b.v; return a; }
RLK_LANE_ARITH(Lanes, double)

// Comparisons are ordered (false with a NaN), as the scalar ones; != is unordered.
// On 8 lanes GCC 12 lowered a vector comparison (and a vector ?:) lane by lane
// under the AVX-512 target, so they are the compare-into-mask builtin there
// (expanded only inside the RLK_AVX512 pass that inlines them); on 4 lanes a
// vector select, which AVX2 builds from one compare.
template <int N, int kPred>
RLK_LANE LaneMask<N> CmpMask(const typename Lanes<N>::D& a, const typename Lanes<N>::D& b) {
  typedef typename Lanes<N>::I I;
  if constexpr (N == 8) {
    return LaneMask<8>::Bits(__builtin_ia32_cmppd512_mask(a, b, kPred, (unsigned char)-1, 4));
  } else {
    I m;
    switch (kPred) {
      case 0x11: m = (a < b) ? (I{} - 1) : (I{} + 0); break;
      case 0x12: m = (a <= b) ? (I{} - 1) : (I{} + 0); break;
      case 0x1e: m = (a > b) ? (I{} - 1) : (I{} + 0); break;
      case 0x1d: m = (a >= b) ? (I{} - 1) : (I{} + 0); break;
      case 0x00: m = (a == b) ? (I{} - 1) : (I{} + 0); break;
      default: m = (a != b) ? (I{} - 1) : (I{} + 0); break;
    }
    return LaneMask<N>::Of(m);
  }
}
// The comparisons of a lane type LT giving its mask type MT through CMP:
// _CMP_LT_OQ, _CMP_LE_OQ, _CMP_GT_OQ, _CMP_GE_OQ, _CMP_EQ_OQ, _CMP_NEQ_UQ.
#define RLK_LANE_CMP(LT, MT, CMP, op, pred)                                                            \
  template <int N> RLK_LANE MT<N> operator op(const LT<N>& a, const LT<N>& b) { return CMP<N, pred>(a.v, b.v); } \
  template <int N> RLK_LANE MT<N> operator op(const LT<N>& a, double b) { return a op LT<N>(b); }
#define RLK_LANE_CMPS(LT, MT, CMP)      \
  RLK_LANE_CMP(LT, MT, CMP, <, 0x11)    \
  RLK_LANE_CMP(LT, MT, CMP, <=, 0x12)   \
  RLK_LANE_CMP(LT, MT, CMP, >, 0x1e)    \
  RLK_LANE_CMP(LT, MT, CMP, >=, 0x1d)   \
  RLK_LANE_CMP(LT, MT, CMP, ==, 0x00)   \
  RLK_LANE_CMP(LT, MT, CMP, !=, 0x04)
RLK_LANE_CMPS(Lanes, LaneMask, CmpMask)

template <int N> RLK_LANE LaneMask<N> operator&(const LaneMask<N>& a, const LaneMask<N>& b) { return LaneMask<N>::Of(a.m & b.m); }
template <int N> RLK_LANE LaneMask<N> operator|(const LaneMask<N>& a, const LaneMask<N>& b) { return LaneMask<N>::Of(a.m | b.m); }
template <int N> RLK_LANE LaneMask<N> operator!(const LaneMask<N>& a) { return LaneMask<N>::Of(~a.m); }
RLK_LANE LaneMask<8> operator&(const LaneMask<8>& a, const LaneMask<8>& b) { return LaneMask<8>::Bits(a.k & b.k); }
RLK_LANE LaneMask<8> operator|(const LaneMask<8>& a, const LaneMask<8>& b) { return LaneMask<8>::Bits(a.k | b.k); }
RLK_LANE LaneMask<8> operator!(const LaneMask<8>& a) { return LaneMask<8>::Bits((unsigned char)~a.k); }

template <int N>
RLK_LANE Lanes<N> Sel(const LaneMask<N>& m, const Lanes<N>& a, const Lanes<N>& b) {
  typedef typename Lanes<N>::I I;
  typedef typename Lanes<N>::D D;
  if constexpr (N == 8) {
    return Lanes<8>::Of(__builtin_ia32_blendmpd_512_mask(b.v, a.v, m.k));  // a where the bit is set
  } else {
    return Lanes<N>::Of((D)(((I)a.v & m.m) | ((I)b.v & ~m.m)));
  }
}

// x86's min and max, one instruction each: a < b ? a : b and a > b ? a : b
// (b when either is NaN).
template <int N>
RLK_LANE Lanes<N> MinPd(const Lanes<N>& a, const Lanes<N>& b) {
  if constexpr (N == 8) return Lanes<8>::Of(__builtin_ia32_minpd512_mask(a.v, b.v, a.v, (unsigned char)-1, 4));
  else return Lanes<4>::Of(__builtin_ia32_minpd256(a.v, b.v));
}
template <int N>
RLK_LANE Lanes<N> MaxPd(const Lanes<N>& a, const Lanes<N>& b) {
  if constexpr (N == 8) return Lanes<8>::Of(__builtin_ia32_maxpd512_mask(a.v, b.v, a.v, (unsigned char)-1, 4));
  else return Lanes<4>::Of(__builtin_ia32_maxpd256(a.v, b.v));
}

// policy_loss_modes.h's Min / Max / Clamp (ADL prefers these for lanes), the
// same results bit for bit, NaN in v included: Min(v, hi) = Sel(hi < v, hi, v)
// is minpd(hi, v), Max(v, lo) = Sel(lo > v, lo, v) is maxpd(lo, v).
template <int N> RLK_LANE Lanes<N> Min(const Lanes<N>& v, const Lanes<N>& hi) { return MinPd(hi, v); }
template <int N> RLK_LANE Lanes<N> Max(const Lanes<N>& v, const Lanes<N>& lo) { return MaxPd(lo, v); }
template <int N>
RLK_LANE Lanes<N> Clamp(const Lanes<N>& v, const Lanes<N>& lo, const Lanes<N>& hi) {
  return Sel(v < lo, lo, MinPd(hi, v));
}

// x - x is 0 for a finite x and NaN for inf and NaN; the ordered == is false on NaN.
template <int N>
RLK_LANE LaneMask<N> Finite(const Lanes<N>& x) {
  return (x - x) == 0.0;
}

// sum_{k < K} c[k] r^k by Estrin's scheme: pairs c[k] + c[k+1] r, then
// pairs of those with r^2, r^4, r^8. The dependent chain is ~log2 K
// multiply-adds instead of Horner's K, which had bounded the token passes
// (two 13-deep chains a vector, too long for out-of-order overlap). V: a
// vector of doubles or of floats, C its element type.
template <class V, class C, int K>
RLK_LANE V Estrin(const V& r, const C (&c)[K]) {
  static_assert(K >= 1 && K <= 16, "Estrin: up to degree 15");
  V t[16];
  int n = 0;
  for (int k = 0; k < K; k += 2) t[n++] = k + 1 < K ? (V{} + c[k + 1]) * r + c[k] : V{} + c[k];
  V x = r * r;
  while (n > 1) {
    int m = 0;
    for (int k = 0; k < n; k += 2) t[m++] = k + 1 < n ? t[k + 1] * x + t[k] : t[k];
    n = m;
    if (n > 1) x = x * x;
  }
  return t[0];
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
  // maxpd / minpd with x second keep a NaN x, and a NaN goes through every
  // step below to y (NaN times the garbage scale is NaN).
  const D xv = MinPd(Lanes<N>(708.0), MaxPd(Lanes<N>(-708.0), x)).v;
  const double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const D t = xv * 1.4426950408889634 + kShift;
  const D n = t - kShift;
  D r = xv - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  static constexpr double kInvFact[14] = {1.0,          1.0,           0.5,            1.0 / 6.0,
                                          1.0 / 24.0,   1.0 / 120.0,   1.0 / 720.0,    1.0 / 5040.0,
                                          1.0 / 40320.0, 1.0 / 362880.0, 1.0 / 3628800.0, 1.0 / 39916800.0,
                                          1.0 / 479001600.0, 1.0 / 6227020800.0};  // 1 / k!
  const D p = Estrin(r, kInvFact);
  const I ni = (I)t - (I)(D{} + kShift);
  const D scale = (D)((ni + 1023) << 52);
  return Lanes<N>::Of(p * scale);
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
  static constexpr double kInvFact[12] = {0.5,           1.0 / 6.0,      1.0 / 24.0,      1.0 / 120.0,
                                          1.0 / 720.0,   1.0 / 5040.0,   1.0 / 40320.0,   1.0 / 362880.0,
                                          1.0 / 3628800.0, 1.0 / 39916800.0, 1.0 / 479001600.0, 1.0 / 6227020800.0};  // 1 / (k + 2)!
  const D q = Estrin(r, kInvFact);
  const D tail = r * r * q;
  const I ni = (I)t - (I)(D{} + kShift);
  const D scale = (D)((ni + 1023) << 52);
  const D direct = ((tail + r) + 1.0) * scale - xv - 1.0;
  return Sel(Lanes<N>::Of(n) == 0.0, Lanes<N>::Of(tail), Lanes<N>::Of(direct));
}

// Whether every lane is true.
template <int N>
RLK_LANE bool All(const LaneMask<N>& m) {
  if constexpr (N == 8) {
    return m.k == 0xff;
  } else {
    int64_t a = -1;
    for (int k = 0; k < N; ++k) a &= m.m[k];
    return a != 0;
  }
}

// ln x, within a few ulps of std::log (dppo-kl's token term; it was lane by
// lane, a third of that mode's call). x = 2^e m with m in [sqrt(1/2),
// sqrt(2)), s = (m - 1) / (m + 1), ln m = 2 atanh s = s (2 + 2 s^2 / 3 +
// 2 s^4 / 5 + ...) (|s| <= 0.172: 12 terms leave < 1e-19), e ln2 with ln2 in
// two parts. A vector holding anything but positive normal finite numbers
// (0, negatives, subnormals, inf, NaN) takes std::log for those lanes.
template <int N>
RLK_LANE Lanes<N> Log(const Lanes<N>& x) {
  typedef typename Lanes<N>::I I;
  typedef typename Lanes<N>::D D;
  const I bits = (I)x.v;
  D m = (D)((bits & (I{} + 0x000fffffffffffffll)) | (I{} + 0x3ff0000000000000ll));  // [1, 2)
  const double kShift = 6755399441055744.0;  // 1.5 * 2^52: e's bits added to it read as kShift + e
  const D e0 = (D)(((bits >> 52) - 1023) + (I)(D{} + kShift)) - kShift;
  const LaneMask<N> big = Lanes<N>::Of(m) > 1.4142135623730951;
  m = Sel(big, Lanes<N>::Of(m * 0.5), Lanes<N>::Of(m)).v;
  const D e = Sel(big, Lanes<N>::Of(e0 + 1.0), Lanes<N>::Of(e0)).v;
  const D sv = (m - 1.0) / (m + 1.0);
  static constexpr double kC[12] = {2.0,        2.0 / 3.0,  2.0 / 5.0,  2.0 / 7.0,  2.0 / 9.0,  2.0 / 11.0,
                                    2.0 / 13.0, 2.0 / 15.0, 2.0 / 17.0, 2.0 / 19.0, 2.0 / 21.0, 2.0 / 23.0};
  const D lnm = sv * Estrin(sv * sv, kC);
  Lanes<N> r = Lanes<N>::Of(e * 6.93147180369123816490e-01 + (lnm + e * 1.90821492927058770002e-10));
  if (!All((x >= 2.2250738585072014e-308) & (x <= 1.7976931348623157e308)))
    for (int k = 0; k < N; ++k)
      if (!(x.v[k] >= 2.2250738585072014e-308 && x.v[k] <= 1.7976931348623157e308)) r.v[k] = std::log(x.v[k]);
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

// N bytes, nonzero -> true. On 4 lanes: the bytes as one integer in every
// lane, lane k keeping its byte k (a widening conversion was lowered byte by
// byte); on 8, one byte test into a mask register.
template <int N>
RLK_LANE LaneMask<N> LoadMask(const uint8_t* p) {
  typedef typename Lanes<N>::I I;
  uint64_t bytes = 0;
  std::memcpy(&bytes, p, N);
  if constexpr (N == 8) {
    typedef char V16 __attribute__((vector_size(16)));
    typedef long long L2 __attribute__((vector_size(16)));
    const V16 v = (V16)(L2{(long long)bytes, 0});
    return LaneMask<8>::Bits((unsigned char)__builtin_ia32_ptestmb128(v, v, (unsigned short)0xff));
  } else {
    I sel;
    for (int k = 0; k < N; ++k) sel[k] = int64_t(0xffull << (8 * k));
    const I v = (I{} + int64_t(bytes)) & sel;
    return LaneMask<N>::Of((v | -v) >> 63);  // sign of v | -v: v != 0 (no vector ?:, see above)
  }
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

// A count of true lanes per lane (int64 lanes, so no overflow): on 4 lanes
// the masks' -1s subtracted, on 8 a masked add of 1 (one instruction).
template <int N>
struct LaneCount {
  typename Lanes<N>::I c = typename Lanes<N>::I{} + 0;
  RLK_LANE void Add(const LaneMask<N>& m) {
    if constexpr (N == 8) {
      typedef long long Q __attribute__((vector_size(64)));
      c = (typename Lanes<8>::I)__builtin_ia32_paddq512_mask((Q)c, Q{} + 1, (Q)c, m.k);
    } else {
      c -= m.m;
    }
  }
  RLK_LANE int64_t Total() const {
    int64_t s = 0;
    for (int k = 0; k < N; ++k) s += c[k];
    return s;
  }
};

// ---- float lanes: FLanes<8> (AVX2) and FLanes<16> (AVX-512) -----------------
// The policy-loss token pass runs on these: twice the tokens of a double
// vector per instruction, and that pass was bound by vector instructions
// (~130 a vector of 8 doubles: the ratio's exp, the KL's, the clip selects).
// Its per-token terms are float32 as on CUDA (DESIGN 4: <= 1e-6 relative to
// float64), its sums go to double every block of vectors (FlushTo).

template <int N> struct FVecTypes;
template <> struct FVecTypes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  typedef float H __attribute__((vector_size(16)));  // half a vector
  typedef char B16 __attribute__((vector_size(16)));
};
template <> struct FVecTypes<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  typedef float H __attribute__((vector_size(32)));
  typedef char B16 __attribute__((vector_size(16)));
};

template <int N>
struct FLanes {
  typedef typename FVecTypes<N>::F V;
  typedef typename FVecTypes<N>::I I;
  static constexpr int kN = N;
  V v;
  RLK_LANE FLanes() : v(V{} + 0.0f) {}
  RLK_LANE FLanes(double x) : v(V{} + float(x)) {}
  RLK_LANE static FLanes Of(const V& x) {
    FLanes r;
    r.v = x;
    return r;
  }
  RLK_LANE float operator[](int k) const { return v[k]; }
};

// As LaneMask: all-ones / zero int32 lanes on 8 (AVX2), a 16-bit k-register mask on 16.
template <int N>
struct FMask {
  typename FLanes<N>::I m;
  RLK_LANE FMask() : m(typename FLanes<N>::I{} + 0) {}
  RLK_LANE FMask(bool b) : m(typename FLanes<N>::I{} + (b ? -1 : 0)) {}
  RLK_LANE static FMask Of(const typename FLanes<N>::I& x) {
    FMask r;
    r.m = x;
    return r;
  }
};
template <>
struct FMask<16> {
  unsigned short k;
  RLK_LANE FMask() : k(0) {}
  RLK_LANE FMask(bool b) : k(b ? 0xffff : 0) {}
  RLK_LANE static FMask Bits(unsigned short x) {
    FMask r;
    r.k = x;
    return r;
  }
};

RLK_LANE_ARITH(FLanes, float)

// Ordered comparisons (false with a NaN), != unordered, as on double lanes.
template <int N, int kPred>
RLK_LANE FMask<N> FCmpMask(const typename FLanes<N>::V& a, const typename FLanes<N>::V& b) {
  if constexpr (N == 16) {
    return FMask<16>::Bits(__builtin_ia32_cmpps512_mask(a, b, kPred, (unsigned short)-1, 4));
  } else {
    typedef typename FLanes<N>::I I;
    switch (kPred) {
      case 0x11: return FMask<N>::Of((I)(a < b));
      case 0x12: return FMask<N>::Of((I)(a <= b));
      case 0x1e: return FMask<N>::Of((I)(a > b));
      case 0x1d: return FMask<N>::Of((I)(a >= b));
      case 0x00: return FMask<N>::Of((I)(a == b));
      default: return FMask<N>::Of((I)(a != b));
    }
  }
}
RLK_LANE_CMPS(FLanes, FMask, FCmpMask)
#undef RLK_LANE_CMPS
#undef RLK_LANE_CMP
#undef RLK_LANE_ARITH
#undef RLK_LANE_BIN

template <int N> RLK_LANE FMask<N> operator&(const FMask<N>& a, const FMask<N>& b) { return FMask<N>::Of(a.m & b.m); }
template <int N> RLK_LANE FMask<N> operator|(const FMask<N>& a, const FMask<N>& b) { return FMask<N>::Of(a.m | b.m); }
template <int N> RLK_LANE FMask<N> operator!(const FMask<N>& a) { return FMask<N>::Of(~a.m); }
RLK_LANE FMask<16> operator&(const FMask<16>& a, const FMask<16>& b) { return FMask<16>::Bits(a.k & b.k); }
RLK_LANE FMask<16> operator|(const FMask<16>& a, const FMask<16>& b) { return FMask<16>::Bits(a.k | b.k); }
RLK_LANE FMask<16> operator!(const FMask<16>& a) { return FMask<16>::Bits((unsigned short)~a.k); }

template <int N>
RLK_LANE FLanes<N> Sel(const FMask<N>& m, const FLanes<N>& a, const FLanes<N>& b) {
  typedef typename FLanes<N>::I I;
  typedef typename FLanes<N>::V V;
  if constexpr (N == 16) {
    return FLanes<16>::Of(__builtin_ia32_blendmps_512_mask(b.v, a.v, m.k));
  } else {
    return FLanes<N>::Of((V)(((I)a.v & m.m) | ((I)b.v & ~m.m)));
  }
}

// minps / maxps: b when either is NaN.
template <int N>
RLK_LANE FLanes<N> MinPs(const FLanes<N>& a, const FLanes<N>& b) {
  if constexpr (N == 16) return FLanes<16>::Of(__builtin_ia32_minps512_mask(a.v, b.v, a.v, (unsigned short)-1, 4));
  else return FLanes<8>::Of(__builtin_ia32_minps256(a.v, b.v));
}
template <int N>
RLK_LANE FLanes<N> MaxPs(const FLanes<N>& a, const FLanes<N>& b) {
  if constexpr (N == 16) return FLanes<16>::Of(__builtin_ia32_maxps512_mask(a.v, b.v, a.v, (unsigned short)-1, 4));
  else return FLanes<8>::Of(__builtin_ia32_maxps256(a.v, b.v));
}
template <int N> RLK_LANE FLanes<N> Min(const FLanes<N>& v, const FLanes<N>& hi) { return MinPs(hi, v); }
template <int N> RLK_LANE FLanes<N> Max(const FLanes<N>& v, const FLanes<N>& lo) { return MaxPs(lo, v); }
template <int N>
RLK_LANE FLanes<N> Clamp(const FLanes<N>& v, const FLanes<N>& lo, const FLanes<N>& hi) {
  return Sel(v < lo, lo, MinPs(hi, v));
}
template <int N>
RLK_LANE FMask<N> Finite(const FLanes<N>& x) {
  return (x - x) == 0.0;
}

// e^x in float: cpu_simd.h's Cephes expf (x = n ln2 + r, 1 + r + r^2 p(r),
// ~1.2e-7 relative), n rounded by the 1.5 * 2^23 trick and 2^n built in the
// exponent bits. x is clamped to [-87.3, 88.3] first (NaN kept), so the
// result is a normal float or NaN: e^x below e^-87.3 reads 1.2e-38 and above
// e^88.3 reads 2.1e38 instead of 0 and inf (the policy modes' arguments lie
// within [-20, 20] or give a sigmoid that is 0 or 1 either way).
template <int N>
RLK_LANE FLanes<N> Exp(const FLanes<N>& x) {
  typedef typename FLanes<N>::I I;
  typedef typename FLanes<N>::V V;
  const V xv = MinPs(FLanes<N>(88.3), MaxPs(FLanes<N>(-87.3), x)).v;
  const float kShift = 12582912.0f;  // 1.5 * 2^23
  const V t = xv * 1.44269504088896341f + kShift;
  const V n = t - kShift;
  V r = xv - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  static constexpr float kP[6] = {5.0000001201e-1f, 1.6666665459e-1f, 4.1665795894e-2f,
                                  8.3334519073e-3f, 1.3981999507e-3f, 1.9875691500e-4f};
  const V p = Estrin(r, kP);
  const V y = (p * (r * r) + r) + 1.0f;
  const I ni = (I)t - (I)(V{} + kShift);
  return FLanes<N>::Of(y * (V)((ni + 127) << 23));
}

// e^x - x - 1 for finite x in [-20, 20] (NaN stays NaN), as ExpMinusXMinus1
// on doubles: where n = 0 (|x| <= ln2 / 2) r^2 q(r) without cancellation,
// elsewhere 2^n e^r - x - 1 (at most ~20 float ulps of the value, at |x|
// just past ln2 / 2).
template <int N>
RLK_LANE FLanes<N> ExpMinusXMinus1(const FLanes<N>& x) {
  typedef typename FLanes<N>::I I;
  typedef typename FLanes<N>::V V;
  const V xv = x.v;
  const float kShift = 12582912.0f;
  const V t = xv * 1.44269504088896341f + kShift;
  const V n = t - kShift;
  V r = xv - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  static constexpr float kInvFact[7] = {0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040, 1.0f / 40320};  // 1 / (k + 2)!
  const V tail = r * r * Estrin(r, kInvFact);
  const I ni = (I)t - (I)(V{} + kShift);
  const V direct = ((tail + r) + 1.0f) * (V)((ni + 127) << 23) - xv - 1.0f;
  return Sel(FLanes<N>::Of(n) == 0.0, FLanes<N>::Of(tail), FLanes<N>::Of(direct));
}

template <int N>
RLK_LANE bool All(const FMask<N>& m) {
  if constexpr (N == 16) {
    return m.k == 0xffff;
  } else {
    int32_t a = -1;
    for (int k = 0; k < N; ++k) a &= m.m[k];
    return a != 0;
  }
}

template <int N>
RLK_LANE FLanes<N> Abs(const FLanes<N>& x) {
  typedef typename FLanes<N>::I I;
  return FLanes<N>::Of((typename FLanes<N>::V)((I)x.v & 0x7fffffff));
}

// ln x in float, as Log on doubles: x = 2^e m, m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh s, s = (m - 1) / (m + 1), |s| <= 0.172 (5 terms leave
// < 2e-9); lanes that are not positive normal finite take std::log.
template <int N>
RLK_LANE FLanes<N> Log(const FLanes<N>& x) {
  typedef typename FLanes<N>::I I;
  typedef typename FLanes<N>::V V;
  const I bits = (I)x.v;
  V m = (V)((bits & (I{} + 0x007fffff)) | (I{} + 0x3f800000));  // [1, 2)
  const V e0 = __builtin_convertvector((bits >> 23) - 127, V);
  const FMask<N> big = FLanes<N>::Of(m) > 1.41421356237309505;
  m = Sel(big, FLanes<N>::Of(m * 0.5f), FLanes<N>::Of(m)).v;
  const V e = Sel(big, FLanes<N>::Of(e0 + 1.0f), FLanes<N>::Of(e0)).v;
  const V sv = (m - 1.0f) / (m + 1.0f);
  static constexpr float kC[5] = {2.0f, 2.0f / 3, 2.0f / 5, 2.0f / 7, 2.0f / 9};
  const V lnm = sv * Estrin(sv * sv, kC);
  FLanes<N> r = FLanes<N>::Of(e * 0.693359375f + (lnm + e * -2.12194440e-4f));
  if (!All((x >= 1.17549435e-38) & (x <= 3.40282347e38)))
    for (int k = 0; k < N; ++k)
      if (!(x.v[k] >= 1.17549435e-38f && x.v[k] <= 3.40282347e38f)) r.v[k] = std::log(x.v[k]);
  return r;
}

// e^x - 1 without the cancellation of Exp(x) - 1 near 0 (dppo-kl's 1 - p as
// p -> 1): x + ExpMinusXMinus1(x) where its reduction has n = 0 (|x| < 0.34 <
// ln2 / 2), Exp(x) - 1 elsewhere (|e^x - 1| > 0.28 there, a few ulps). NaN
// stays NaN (the Exp side), -inf and x below -87.3 give -1.
template <int N>
RLK_LANE FLanes<N> Expm1(const FLanes<N>& x) {
  const FMask<N> near = Abs(x) < FLanes<N>(0.34f);
  const FLanes<N> xs = Sel(near, x, FLanes<N>(0.0f));
  return Sel(near, xs + ExpMinusXMinus1(xs), Exp(x) - FLanes<N>(1.0f));
}

template <int N>
RLK_LANE FLanes<N> LoadFl(const float* p) {
  typename FLanes<N>::V f;
  std::memcpy(&f, p, sizeof(f));
  return FLanes<N>::Of(f);
}
template <int N>
RLK_LANE void StoreFl(float* p, const FLanes<N>& x) {
  std::memcpy(p, &x.v, sizeof(x.v));
}

// N mask bytes, nonzero -> true: one byte test into a k register on 16; on
// 8, the bytes zero-extended to int32 lanes and compared with 0.
template <int N>
RLK_LANE FMask<N> LoadFMask(const uint8_t* p) {
  typedef typename FVecTypes<N>::B16 B16;
  B16 b{};
  std::memcpy(&b, p, N);
  if constexpr (N == 16) {
    return FMask<16>::Bits((unsigned short)__builtin_ia32_ptestmb128(b, b, (unsigned short)0xffff));
  } else {
    typedef typename FLanes<N>::I I;
    const I v = (I)__builtin_ia32_pmovzxbd256(b);
    return FMask<N>::Of((I)(v != 0));
  }
}

// The two halves of x widened to double and added to acc (N / 2 double lanes).
template <int N>
RLK_LANE void AddWide(Lanes<N / 2>& acc, const FLanes<N>& x) {
  typedef typename FVecTypes<N>::H H;
  typedef typename Lanes<N / 2>::D D;
  H lo, hi;
  std::memcpy(&lo, &x.v, sizeof(H));
  std::memcpy(&hi, reinterpret_cast<const char*>(&x.v) + sizeof(H), sizeof(H));
  acc.v += __builtin_convertvector(lo, D) + __builtin_convertvector(hi, D);
}

// Counts of true lanes per int32 lane (a tile has at most 2^31 tokens).
template <int N>
struct FLaneCount {
  typename FLanes<N>::I c = typename FLanes<N>::I{} + 0;
  RLK_LANE void Add(const FMask<N>& m) {
    if constexpr (N == 16) {
      typedef int V16 __attribute__((vector_size(64)));
      c = (typename FLanes<16>::I)__builtin_ia32_paddd512_mask((V16)c, V16{} + 1, (V16)c, m.k);
    } else {
      c -= m.m;
    }
  }
  RLK_LANE int64_t Total() const {
    int64_t s = 0;
    for (int k = 0; k < N; ++k) s += c[k];
    return s;
  }
};

}  // namespace rlk::lanes
