// CPU kernels of the vocabulary divergences (DESIGN 3.5). Threads over rows
// (ParallelFor); each row is done by one thread, so results do not depend on
// the thread count. Inner loops run on AVX-512, AVX2 or scalar code chosen at
// run time (simd::Isa()).
//
// Per row, with z = logits / T, p = softmax(z), dt = t - max(t), ds = s - max(s):
//   pass 1 (one read of both logits, online): max and sum of exp of each side,
//     blockwise (a block's max, then its sum of exp from L1, merged into the
//     running pair in double with a rescale when the max grows); for the KLs
//     with a gradient also the weighted sum sum_k w_k d_k that the softmax
//     Jacobian brings into the gradient (see Normalisers);
//   pass 2 (second read, from cache, last block first): the value, in a
//     cancellation-free form (below), accumulated in fp32 lanes and in double
//     across blocks; the KLs' gradients are written here too (they need only
//     pass 1's results);
//   pass 3 (jsd with a gradient, third read): the gradients, which need the
//     row's value sums KL(p_t || M), KL(p_s || M) and so cannot be formed
//     earlier.
//     Without a student gradient (values only, grad_student null) every kind
//     stops after pass 2, which then forms only the value's sums; the KLs
//     stop after pass 1 where the row's divergence is large enough for the
//     direct form E_p[x] to meet DESIGN 4 (DirectKl), pass 1 then also
//     summing what that form needs.
// Only pass 1 reads from memory: a row (two rows of logits, up to 2 MB at
// V = 262144 in fp32) is still in L2 for passes 2 and 3. The value is formed
// in pass 2 rather than online in pass 1 because its cancellation-free form
// below, and JSD's log M_j, need both rows' normalisers first.
//
// Cancellation-free value: with x_j = log p_t_j - log p_s_j formed as
// ((t - max t) - (s - max s)) / T - log(S_t / S_s) (the constant in double;
// no large log-sum-exp subtracted per element; why not t - s: VdivLogRatio),
//   KL(p_t || p_s) = sum_j p_t phi(x_j),  phi(y) = e^-y - 1 + y >= 0,
// because sum_j p_t e^-x_j = sum_j p_s = 1. Every term is >= 0, so a small
// divergence between close distributions keeps its relative accuracy, and an
// error in log(S_t / S_s) enters only to second order. phi is evaluated as
// p y^2 P(-y) for |y| < 0.34 (P: the Exp polynomial, e^r = 1 + r + r^2 P(r))
// and as p y + (q - p) with q = p e^-y otherwise (no overflow of e^-y); a term
// with p = 0 contributes q (the mass the decomposition still owes).

// The row code is written once over an `Ops` class and always inlined into one
// function per ISA that carries the target attribute. GCC warns (-Wpsabi) that
// the generic templates take vector types without the ISA enabled; they never
// exist out of line, so no call crosses that ABI.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's AVX-512 intrinsics self-initialise their undefined operands
// (`__m512 __Y = __Y;`), which -Wmaybe-uninitialized reports at every inlined
// use; the operand is a don't-care by definition.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "rlk/vocab_divergence.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

#define RLK_VDIV_INLINE __attribute__((always_inline)) inline

constexpr int64_t kBlock = 1024;     // elements per online block (two fp32 blocks fit L1)
constexpr int kSumParts = 32;        // fp32 partial sums per side of a block's sum of exp (pass 1)
constexpr float kSmall = kVdivSmall;

// ---- ISA wrappers -------------------------------------------------------------
struct ScalarOps {
  using V = float;
  using M = bool;
  static constexpr int kLanes = 1;
  static V Set(float v) { return v; }
  template <class T> static V Load(const T* p) { return ToFloat(*p); }
  template <class T> static V LoadTail(const T* p, int64_t, float) { return ToFloat(*p); }
  template <class T> static void Store(T* p, V v) { *p = FromFloat<T>(v); }
  template <class T> static void StoreTail(T* p, V v, int64_t) { *p = FromFloat<T>(v); }
  static V Add(V a, V b) { return a + b; }
  static V Sub(V a, V b) { return a - b; }
  static V Mul(V a, V b) { return a * b; }
  static V Div(V a, V b) { return a / b; }
  static V Rcp(V a) { return 1.0f / a; }
  static V Fma(V a, V b, V c) { return std::fma(a, b, c); }
  static V Max(V a, V b) { return a > b ? a : b; }  // maxps semantics: b when either is NaN
  static V Min(V a, V b) { return a < b ? a : b; }
  static V Abs(V a) { return std::fabs(a); }
  static M Lt(V a, V b) { return a < b; }
  static M Gt(V a, V b) { return a > b; }
  static M Eq(V a, V b) { return a == b; }
  static V Select(M m, V t, V f) { return m ? t : f; }
  static V AddWhere(M m, V acc, V x) { return m ? acc + x : acc; }
  static V AddUnless(M m, V acc, V x) { return m ? acc : acc + x; }
  static unsigned MaskBits(M m) { return m ? 1u : 0u; }
  static V Exp(V a) { return simd::Exp(a); }
  static V Exp2Neg(V a) { return std::exp2(a); }
  static V ExpLow(V a) { return simd::Exp(a); }
  static V Exp2NegNoLow(V a) { return std::exp2(a); }
  static V Log(V a) { return simd::Log(a); }
  static float ReduceAdd(V a) { return a; }
  static float ReduceMax(V a) { return a; }
  static float ReduceMin(V a) { return a; }
};

struct Avx512Ops {
  using V = __m512;
  using M = __mmask16;
  static constexpr int kLanes = 16;
  RLK_AVX512 static V Set(float v) { return _mm512_set1_ps(v); }
  template <class T> RLK_AVX512 static V Load(const T* p) { return simd::avx512::Load(p); }
  template <class T> RLK_AVX512 static V LoadTail(const T* p, int64_t n, float fill) { return simd::avx512::LoadTail(p, n, fill); }
  template <class T> RLK_AVX512 static void Store(T* p, V v) { simd::avx512::Store(p, v); }
  template <class T> RLK_AVX512 static void StoreTail(T* p, V v, int64_t n) { simd::avx512::StoreTail(p, v, n); }
  RLK_AVX512 static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  RLK_AVX512 static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  RLK_AVX512 static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  RLK_AVX512 static V Div(V a, V b) { return _mm512_div_ps(a, b); }
  RLK_AVX512 static V Rcp(V a) { return _mm512_rcp14_ps(a); }  // relative error < 2^-14
  RLK_AVX512 static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  RLK_AVX512 static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  RLK_AVX512 static V Min(V a, V b) { return _mm512_min_ps(a, b); }
  RLK_AVX512 static V Abs(V a) { return _mm512_abs_ps(a); }
  RLK_AVX512 static M Lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  RLK_AVX512 static M Gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  RLK_AVX512 static M Eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  RLK_AVX512 static V Select(M m, V t, V f) { return _mm512_mask_blend_ps(m, f, t); }
  // acc + x in the lanes of m (AddWhere) or of not m (AddUnless), acc elsewhere: one masked add.
  RLK_AVX512 static V AddWhere(M m, V acc, V x) { return _mm512_mask_add_ps(acc, m, acc, x); }
  RLK_AVX512 static V AddUnless(M m, V acc, V x) { return _mm512_mask_add_ps(acc, M(~m), acc, x); }
  RLK_AVX512 static unsigned MaskBits(M m) { return unsigned(m); }
  RLK_AVX512 static V Exp(V a) { return simd::avx512::Exp(a); }
  // 2^a for a <= 0, -inf or NaN (the exps' arguments carry log2(e) / T).
  RLK_AVX512 static V Exp2Neg(V a) {
    V dc;
    return simd::avx512::Exp2Neg(a, &dc);
  }
  // e^a for a <= 88, -inf or NaN: Exp without its overflow and special blends.
  RLK_AVX512 static V ExpLow(V a) {
    V dc;
    return simd::avx512::ExpNeg<true>(a, &dc);
  }
  // Exp2Neg without its bottom clamp: every argument >= kExp2NegLow, or NaN.
  RLK_AVX512 static V Exp2NegNoLow(V a) {
    V dc;
    return simd::avx512::Exp2Neg<false, false>(a, &dc);
  }
  RLK_AVX512 static V Log(V a) { return simd::avx512::Log(a); }
  RLK_AVX512 static float ReduceAdd(V a) { return simd::avx512::ReduceAdd(a); }
  RLK_AVX512 static float ReduceMax(V a) { return simd::avx512::ReduceMax(a); }
  RLK_AVX512 static float ReduceMin(V a) { return _mm512_reduce_min_ps(a); }
};

struct Avx2Ops {
  using V = __m256;
  using M = __m256;
  static constexpr int kLanes = 8;
  RLK_AVX2 static V Set(float v) { return _mm256_set1_ps(v); }
  template <class T> RLK_AVX2 static V Load(const T* p) { return simd::avx2::Load(p); }
  template <class T> RLK_AVX2 static V LoadTail(const T* p, int64_t n, float fill) { return simd::avx2::LoadTail(p, n, fill); }
  template <class T> RLK_AVX2 static void Store(T* p, V v) { simd::avx2::Store(p, v); }
  template <class T> RLK_AVX2 static void StoreTail(T* p, V v, int64_t n) { simd::avx2::StoreTail(p, v, n); }
  RLK_AVX2 static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  RLK_AVX2 static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  RLK_AVX2 static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  RLK_AVX2 static V Div(V a, V b) { return _mm256_div_ps(a, b); }
  RLK_AVX2 static V Rcp(V a) { return _mm256_rcp_ps(a); }  // relative error < 1.5 2^-12
  RLK_AVX2 static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  RLK_AVX2 static V Max(V a, V b) { return _mm256_max_ps(a, b); }
  RLK_AVX2 static V Min(V a, V b) { return _mm256_min_ps(a, b); }
  RLK_AVX2 static V Abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  RLK_AVX2 static M Lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  RLK_AVX2 static M Gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  RLK_AVX2 static M Eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  RLK_AVX2 static V Select(M m, V t, V f) { return _mm256_blendv_ps(f, t, m); }
  // acc + (x or +0): adding +0 leaves acc's bits as they are (acc is never -0 here).
  RLK_AVX2 static V AddWhere(M m, V acc, V x) { return _mm256_add_ps(acc, _mm256_and_ps(m, x)); }
  RLK_AVX2 static V AddUnless(M m, V acc, V x) { return _mm256_add_ps(acc, _mm256_andnot_ps(m, x)); }
  RLK_AVX2 static unsigned MaskBits(M m) { return unsigned(_mm256_movemask_ps(m)); }
  RLK_AVX2 static V Exp(V a) { return simd::avx2::Exp(a); }
  RLK_AVX2 static V Exp2Neg(V a) {
    V dc;
    return simd::avx2::Exp2Neg(a, &dc);
  }
  RLK_AVX2 static V ExpLow(V a) {
    V dc;
    return simd::avx2::ExpNeg<true>(a, &dc);
  }
  RLK_AVX2 static V Exp2NegNoLow(V a) {
    V dc;
    return simd::avx2::Exp2Neg<false, false>(a, &dc);
  }
  RLK_AVX2 static V Log(V a) { return simd::avx2::Log(a); }
  RLK_AVX2 static float ReduceAdd(V a) { return simd::avx2::ReduceAdd(a); }
  RLK_AVX2 static float ReduceMax(V a) { return simd::avx2::ReduceMax(a); }
  RLK_AVX2 static float ReduceMin(V a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
  }
};

// ---- element math (generic) ------------------------------------------------------
// e^r - 1 - r = r^2 P(r) for |r| < ln2/2, the polynomial of simd::Exp.
template <class Ops>
RLK_VDIV_INLINE typename Ops::V ExpPoly(const typename Ops::V& r) {
  using namespace simd::detail;
  auto p = Ops::Fma(Ops::Set(kP0), r, Ops::Set(kP1));
  p = Ops::Fma(p, r, Ops::Set(kP2));
  p = Ops::Fma(p, r, Ops::Set(kP3));
  p = Ops::Fma(p, r, Ops::Set(kP4));
  return Ops::Fma(p, r, Ops::Set(kP5));
}

// e^r - 1 without cancellation, for |r| < kSmall.
template <class Ops>
RLK_VDIV_INLINE typename Ops::V Expm1Small(const typename Ops::V& r) {
  return Ops::Fma(ExpPoly<Ops>(r), Ops::Mul(r, r), r);
}

// log(1 + w) for w > -1, with the rounding of 1 + w corrected. The
// correction (at most half an ulp of u) is divided by u through an
// approximate reciprocal: its 2^-12 relative error is far below the ulp of
// the result, and a division was the loop's slowest instruction.
template <class Ops>
RLK_VDIV_INLINE typename Ops::V Log1p(const typename Ops::V& w) {
  auto one = Ops::Set(1.0f);
  auto u = Ops::Add(one, w);
  auto v = Ops::Add(Ops::Log(u), Ops::Mul(Ops::Sub(w, Ops::Sub(u, one)), Ops::Rcp(u)));
  return Ops::Select(Ops::Eq(u, one), w, v);
}

// p phi(y) with q = p e^-y given (see the file comment); p = 0 gives q.
// The p = 0 select stays a select: p = 0 comes with y = -inf (a -inf logit)
// and with y = +inf (p underflowed to 0 at the lowest float, the other side
// -inf), and p y is NaN in both; clamping y at -1e30 would save a compare and
// a blend but leave the second NaN (the wide-rows test's row 5).
template <class Ops>
RLK_VDIV_INLINE typename Ops::V PhiW(const typename Ops::V& p, const typename Ops::V& y, const typename Ops::V& q) {
  auto zero = Ops::Set(0.0f);
  auto r = Ops::Sub(zero, y);
  auto small = Ops::Mul(p, Ops::Mul(Ops::Mul(r, r), ExpPoly<Ops>(r)));
  auto big = Ops::Fma(p, y, Ops::Sub(q, p));
  auto v = Ops::Select(Ops::Lt(Ops::Abs(y), Ops::Set(kSmall)), small, big);
  return Ops::Select(Ops::Eq(p, zero), q, v);
}

template <class Ops>
struct RowConsts {
  typename Ops::V tmax, smax;  // raw row maxima
  typename Ops::V inv_t;       // 1 / T
  typename Ops::V inv_t2;      // log2(e) / T: the exps in base 2 (Exp2Neg)
  typename Ops::V rst, rss;    // 1 / sum_j e^{(t_j - tmax) / T}, same for s
  typename Ops::V xoff;        // -log(S_t / S_s), so x = ((t - tmax) - (s - smax)) / T + xoff
  typename Ops::V xoff_lo, inv_t_lo;  // the float residuals of xoff and 1 / T (VdivLogRatio)
  typename Ops::V beta, omb;   // beta, 1 - beta
  typename Ops::V tref, sref;  // kl: the logits at the reference index (argmax of the weighting side)
  typename Ops::V c0;          // kl with a gradient: sum_k w_k d_k (RefDiff), from pass 1
  // jsd (JsdRatiosOf): the side formed directly is the one with the
  // smaller mixture weight gamma = min(beta, 1 - beta): sig = +1 (the
  // student, gamma = beta) or -1 (the teacher); lg = -log(gamma), rho =
  // (1 - gamma) / gamma.
  typename Ops::V sig, gam, lg, rho;
  typename Ops::V lgd, rhod;  // -log(1 - gamma), gamma / (1 - gamma)
};

template <class Ops>
struct Probs {
  typename Ops::V pt, ps, x;  // p_t, p_s, log p_t - log p_s
};

// x = (dt - ds) / T + xoff as VdivLogRatio (dt = t - tmax, ds = s - smax:
// why not t - s, there): one fma and the residuals of xoff and 1 / T.
// The low part takes d clamped to +-1e30 (an infinite d would make it NaN).
// kExactInvT: 1 / T is a float (T = 1, or a power of two), inv_t_lo is 0 and
// the low part is xoff_lo: the same bits without the clamp and the fma.
template <class Ops, bool kExactInvT = false>
RLK_VDIV_INLINE typename Ops::V LogRatio(const typename Ops::V& dt, const typename Ops::V& ds, const RowConsts<Ops>& k) {
  auto d = Ops::Sub(dt, ds);
  if constexpr (kExactInvT) return Ops::Add(Ops::Fma(d, k.inv_t, k.xoff), k.xoff_lo);
  auto dl = Ops::Min(Ops::Max(d, Ops::Set(-1e30f)), Ops::Set(1e30f));
  return Ops::Add(Ops::Fma(d, k.inv_t, k.xoff), Ops::Fma(dl, k.inv_t_lo, k.xoff_lo));
}

// kClampLow = false: the row is clamp-free (RowNorm::clamp_free), the exps
// drop their bottom clamp for the same bits. kExactInvT: as LogRatio.
template <class Ops, bool kClampLow = true, bool kExactInvT = false>
RLK_VDIV_INLINE Probs<Ops> Prep(const typename Ops::V& t, const typename Ops::V& s, const RowConsts<Ops>& k) {
  auto dt = Ops::Sub(t, k.tmax);
  auto ds = Ops::Sub(s, k.smax);
  Probs<Ops> e;
  // dt, ds <= 0 (or NaN): Exp2Neg, without Exp's overflow and special-value
  // blends, and in base 2 (no Cody-Waite reduction, a shorter polynomial).
  if constexpr (kClampLow) {
    e.pt = Ops::Mul(Ops::Exp2Neg(Ops::Mul(dt, k.inv_t2)), k.rst);
    e.ps = Ops::Mul(Ops::Exp2Neg(Ops::Mul(ds, k.inv_t2)), k.rss);
  } else {
    e.pt = Ops::Mul(Ops::Exp2NegNoLow(Ops::Mul(dt, k.inv_t2)), k.rst);
    e.ps = Ops::Mul(Ops::Exp2NegNoLow(Ops::Mul(ds, k.inv_t2)), k.rss);
  }
  e.x = LogRatio<Ops, kExactInvT>(dt, ds, k);
  return e;
}

// p_s - p_t: p_t (e^-x - 1) near x = 0 (no cancellation), the plain
// difference elsewhere (no overflow of e^-x where p_t is tiny).
template <class Ops>
RLK_VDIV_INLINE typename Ops::V DiffSt(const Probs<Ops>& e) {
  auto small = Ops::Mul(e.pt, Expm1Small<Ops>(Ops::Sub(Ops::Set(0.0f), e.x)));
  auto big = Ops::Sub(e.ps, e.pt);
  return Ops::Select(Ops::Lt(Ops::Abs(e.x), Ops::Set(kSmall)), small, big);
}

// JSD log-ratios y_t = log(p_t / M) = -log1p((1 - beta)(e^-x - 1)) and
// y_s = log(p_s / M) = -log1p(beta (e^x - 1)), and their offsets from their
// upper bounds, a_t = y_t + log(beta) = -log1p(rho_t e^-x) <= 0 with
// rho_t = (1 - beta) / beta, a_s = y_s + log(1 - beta) = -log1p(rho_s e^x).
// The gradients use a_t - sum_k p_t,k a_t,k (= y_t - KL(p_t || M)): for
// distant distributions y_t and KL(p_t || M) both approach -log(beta), and
// their fp32 difference would lose its digits; a_t keeps them (formed
// directly where it is small: JsdRatiosOf).
template <class Ops>
struct JsdRatios {
  typename Ops::V yt, ys, at, as;
};

// y_t and y_s with one exp and one log a lane (the old form took two of
// each): y_t - y_s = x exactly, so one side is formed and the other is the
// first plus or minus x.
// With z = sig x (the direct side d, the other o; see RowConsts),
//   z <= 1: y_d = -log1p(gamma (e^z - 1)), y_o = y_d + z;
//   z > 1:  y_o = lg - log1p(rho e^-z),    y_d = y_o - z,
// so the side formed from the other is never a small difference of large
// terms: near z = 0, |y_o| >= (1 - gamma) |z| >= |z| / 2; beyond z = 1, y_d
// is about -z. e^z - 1 is the polynomial where |z| < kSmall. Where z is
// -inf (a -inf logit) e^z = 0 gives y_d = -log(1 - gamma) and y_o = -inf;
// +inf gives y_o = lg and y_d = -inf; NaN stays NaN.
// kA (the gradients): also a_t, a_s. a_o is -log1p(rho e^-z) itself beyond
// z = 1; a_d = y_d + log(1 - gamma) is small below z = -1, where it is
// formed as -log1p(rho_d e^z), rho_d = gamma / (1 - gamma) (a second log);
// elsewhere each is its y minus its bound.
template <class Ops, bool kA>
RLK_VDIV_INLINE JsdRatios<Ops> JsdRatiosOf(const typename Ops::V& x, const RowConsts<Ops>& k) {
  auto zero = Ops::Set(0.0f), one = Ops::Set(1.0f);
  auto z = Ops::Mul(x, k.sig);
  auto far = Ops::Gt(z, one);
  auto ez = Ops::ExpLow(Ops::Select(far, Ops::Sub(zero, z), z));  // e^-z beyond 1, e^z elsewhere (<= e)
  auto em = Ops::Select(Ops::Lt(Ops::Abs(z), Ops::Set(kSmall)), Expm1Small<Ops>(z), Ops::Sub(ez, one));
  auto l = Log1p<Ops>(Ops::Select(far, Ops::Mul(k.rho, ez), Ops::Mul(k.gam, em)));
  auto yd = Ops::Sub(zero, l);
  auto yo = Ops::Add(yd, z);
  auto yo_far = Ops::Sub(k.lg, l);
  yd = Ops::Select(far, Ops::Sub(yo_far, z), yd);
  yo = Ops::Select(far, yo_far, yo);
  const auto direct_s = Ops::Gt(k.sig, zero);
  JsdRatios<Ops> r;
  r.ys = Ops::Select(direct_s, yd, yo);
  r.yt = Ops::Select(direct_s, yo, yd);
  r.at = r.as = zero;
  if constexpr (kA) {
    const auto near_d = Ops::Lt(z, Ops::Sub(zero, one));
    const auto ad = Ops::Select(near_d, Ops::Sub(zero, Log1p<Ops>(Ops::Mul(k.rhod, ez))), Ops::Sub(yd, k.lgd));
    const auto ao = Ops::Select(far, Ops::Sub(zero, l), Ops::Sub(yo, k.lg));
    r.as = Ops::Select(direct_s, ad, ao);
    r.at = Ops::Select(direct_s, ao, ad);
  }
  return r;
}

// For the KL gradients p_t (x_j - KL) (forward, teacher) and p_s (-x_j - KL)
// (reverse, student): with w the weighting distribution and r the index of
// its largest logit, x_j - KL = (d_j - sum_k w_k d_k) / T with
// d_j = (t_j - t_r) - (s_j - s_r) (raw logits). d_r = 0 exactly, so when w is
// peaked (a confident teacher or student) the dominant term no longer
// subtracts two nearly equal O(10) numbers, whose fp32 rounding would swamp
// the small difference.
template <class Ops>
RLK_VDIV_INLINE typename Ops::V RefDiff(const typename Ops::V& t, const typename Ops::V& s, const RowConsts<Ops>& k) {
  return Ops::Sub(Ops::Sub(t, k.tref), Ops::Sub(s, k.sref));
}
// Pass 1: row maxima and sums of exp, one read, blockwise online.
struct RowNorm {
  float tmax = -INFINITY, smax = -INFINITY;
  double tsum = 0.0, ssum = 0.0;
  int64_t targ = 0, sarg = 0;  // an index holding each maximum
  // With a reference side w (RefSide): sum_b f_b A_b and sum_b f_b D_qb E_b
  // (f_b: the block's factor against the running maximum), see Normalisers.
  double ra = 0.0, rd = 0.0;
  // Normalisers: every exp argument of the row against its maxima is >=
  // kExp2NegLow (a -inf or NaN logit, or a span beyond 125 / (log2(e) / T),
  // clears it), so the later passes' exps can drop their bottom clamp.
  bool clamp_free = false;
};

// Which side's weighted reference difference sum_k w_k d_k (RefDiff, the
// KL gradients' row constant) pass 1 also forms: none, p_t (forward KL's
// teacher gradient) or p_s (reverse KL's student gradient).
enum class RefSide { kNone, kTeacher, kStudent };

// e^x for x <= 0 in double (Cody-Waite reduction, degree-13 Taylor, |error|
// ~1 ulp; results below 2^-1022 flush to 0). Two per block per side: glibc's
// exp, called between AVX-512 loops, took ~10 % of pass 1 (perf).
inline double ExpNonPositive(double x) {
  if (!(x > -708.0)) return x != x ? x : 0.0;  // NaN stays NaN; -inf and underflow give 0
  const double shift = 6755399441055744.0;    // 1.5 * 2^52: adding it rounds to an integer
  const double n = (x * 1.4426950408889634 + shift) - shift;
  // n * ln2_hi is exact (ln2_hi has 21 trailing zero bits, |n| < 2^11).
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double q = 1.0 / 6227020800.0;  // 1/13!
  for (double c : {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                   1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0})
    q = q * r + c;
  uint64_t bits = uint64_t(int64_t(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return q * scale;
}

// Returns true when the block raised the running maximum. ra, rd (or null):
// the reference sums, scaled as the sum is, with the block's ba, bd.
inline bool MergeBlock(float* m, double* sum, float bm, double bs, float inv_t, double* ra = nullptr, double ba = 0.0,
                       double* rd = nullptr, double bd = 0.0) {
  if (bm == -INFINITY) {  // all -inf: bs is 0, or NaN that must reach the row
    *sum += bs;
    if (ra) *ra += ba;
    return false;
  }
  if (bm > *m) {
    const double f = ExpNonPositive((double(*m) - double(bm)) * inv_t);
    *sum = *sum * f + bs;
    if (ra) {
      *ra = *ra * f + ba;
      *rd = *rd * f + bd;
    }
    *m = bm;
    return true;
  }
  const double f = ExpNonPositive((double(bm) - double(*m)) * inv_t);
  *sum += bs * f;
  if (ra) {
    *ra += ba * f;
    *rd += bd * f;
  }
  return false;
}

// The first index in [b, e) holding v, or b when none does (v NaN).
template <class Ops, class T>
RLK_VDIV_INLINE int64_t FirstEqual(const T* x, int64_t b, int64_t e, float v) {
  constexpr int L = Ops::kLanes;
  const auto vv = Ops::Set(v);
  for (int64_t i = b; i < e; i += L) {
    const int64_t rem = e - i;
    const auto xv = rem >= L ? Ops::Load(x + i) : Ops::LoadTail(x + i, rem, NAN);
    const unsigned bits = Ops::MaskBits(Ops::Eq(xv, vv));
    if (bits) return i + __builtin_ctz(bits);
  }
  return b;
}

template <class Ops, class T>
RLK_VDIV_INLINE void StoreAt(T* p, const typename Ops::V& v, int64_t rem) {
  if (rem >= Ops::kLanes) Ops::Store(p, v);
  else Ops::StoreTail(p, v, rem);
}
template <class Ops>
RLK_VDIV_INLINE typename Ops::V LoadAt(const float* p, int64_t rem) {
  return rem >= Ops::kLanes ? Ops::Load(p) : Ops::LoadTail(p, rem, 0.0f);
}

// With kKeep (values only), keep receives the block-relative exps of both
// sides (keep[j] = e^{(t_j - block max) / T}, keep[nv + j] the same for s) and
// the block maxima (keep[2 nv + 2 blk], keep[2 nv + 2 blk + 1]), so that
// pass 2 forms p_t, p_s with one multiply each instead of two more exps.
inline int64_t KeepFloats(int64_t nv) { return 2 * nv + 2 * ((nv + kBlock - 1) / kBlock); }

// Prefetches the n elements of both rows one block past i (a pass's step):
// while a block's exps run from L1, its next block's maximum loop will find
// that block in cache. A prefetch past the row is harmless.
template <int64_t n, class TS, class TT>
RLK_VDIV_INLINE void PrefetchNextBlock(const TS* s, const TT* t, int64_t i) {
  const uintptr_t nt = reinterpret_cast<uintptr_t>(t) + uintptr_t(i + kBlock) * sizeof(TT);
  const uintptr_t ns = reinterpret_cast<uintptr_t>(s) + uintptr_t(i + kBlock) * sizeof(TS);
  for (uintptr_t o = 0; o < n * sizeof(TT); o += 64) __builtin_prefetch(reinterpret_cast<const void*>(nt + o), 0, 3);
  for (uintptr_t o = 0; o < n * sizeof(TS); o += 64) __builtin_prefetch(reinterpret_cast<const void*>(ns + o), 0, 3);
}

// With a reference side w (kRef), pass 1 also forms what the KL gradients'
// row constant c = sum_k w_k d_k needs, d_k = (t_k - t_r) - (s_k - s_r) with
// r the row's argmax of w (RefDiff), so that the gradients are written in
// pass 2 (no third read of the row). The row's r is known only at the end, so
// each block b takes its own reference q_b, the first index of its maximum
// (e_w = 1 there, and its term exactly 0, as r's is in the row form):
// A_b = sum_{k in b} e_w,k ((t_k - t_qb) - (s_k - s_qb)) in fp32 lanes, and
// since D_k - D_r = (D_k - D_qb) + (D_qb - D_r) with D = t - s,
//   c = (sum_b f_b A_b + sum_b f_b D_qb E_b - D_r S_w) / S_w
// (E_b the block's sum of exp, f_b its factor, S_w = sum_b f_b E_b), the
// shifts in double, exact for the float logits.
// One block of Normalisers: its sums of exp against the block maxima rt, rs
// (*bst, *bss) and, with kRef, its reference sum A_b (*ba, against the
// logits vqt, vqs at the block's reference index). kClampLow = false: every
// exp argument of the block is >= kExp2NegLow (the block's minima say so),
// and the exps drop their bottom clamp (a max, a compare and an and-not each
// on AVX2, a max on AVX-512) for the same bits; the rest of the block
// (fewer than K vectors, a partial one filled with -inf) always clamps.
template <class Ops, bool kClampLow, bool kKeep, RefSide kRef, class TS, class TT>
RLK_VDIV_INLINE void NormBlockSums(const TS* s, const TT* t, int64_t b, int64_t e, int64_t nv, float* keep,
                                   const typename Ops::V& rt, const typename Ops::V& rs, const typename Ops::V& vinv,
                                   const typename Ops::V& vqt, const typename Ops::V& vqs, double* bst, double* bss,
                                   double* ba) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes;
  const float ninf = -INFINITY;
  V ra = Ops::Set(0.0f);
  // kSumParts fp32 partial sums per side on every ISA (AVX-512: 2 vectors,
  // AVX2: 4, scalar: 32), so a block's sum has the same rounding on every
  // path: the normalisers' error reaches the gradients of close
  // distributions as (error of log(S_t / S_s)) / |x|, and the scalar path's
  // two 512-term running sums once gave them 5e-5 relative error, ten times
  // the AVX-512 path's.
  // The block maximum's own terms (exactly 1) go to separate sums: added
  // to the float32 partial sums they would round away the other terms of
  // their lane, which are all of S - 1 when one logit dominates the row (a
  // confident teacher or student), and log(S_t / S_s) enters every log-ratio
  // x (an error of 6e-8 there was most of x where p_t ~ p_s).
  constexpr int K = kSumParts / L;
  V at[K], as[K];
  const V zero = Ops::Set(0.0f), one = Ops::Set(1.0f);
  V ot = zero, os = zero;
  // acc += ex where ex < 1, ones += ex elsewhere (the 1s, and NaN). A macro,
  // not a lambda: a lambda does not inherit the ISA's target attribute, so
  // the compares and blends in it were out-of-line calls.
#define RLK_VDIV_ADD_SPLIT(acc, ones, ex)     \
  do {                                        \
    const auto small_ = Ops::Lt(ex, one);     \
    acc = Ops::AddWhere(small_, acc, ex);     \
    ones = Ops::AddUnless(small_, ones, ex);  \
  } while (0)
  // ra += e_w ((t - t_q) - (s - s_q)), 0 where e_w = 0 (a -inf logit would
  // give 0 * inf).
#define RLK_VDIV_ADD_REF(tv_, sv_, et_, es_)                                                          \
  do {                                                                                                \
    if constexpr (kRef != RefSide::kNone) {                                                           \
      const V ew_ = kRef == RefSide::kTeacher ? (et_) : (es_);                                        \
      const V dd_ = Ops::Sub(Ops::Sub(tv_, vqt), Ops::Sub(sv_, vqs));                                 \
      ra = Ops::Add(ra, Ops::Select(Ops::Eq(ew_, zero), zero, Ops::Mul(ew_, dd_)));                   \
    }                                                                                                 \
  } while (0)
  for (int u = 0; u < K; ++u) at[u] = as[u] = zero;
  // The arguments are <= 0 (the block's maximum), so Exp2Neg. While this
  // block's exps run from L1, the next block is prefetched: its maximum
  // loop then reads from cache instead of waiting on memory, and the
  // memory transfer overlaps the arithmetic (one stream per side; a
  // prefetch past the row is harmless).
  int64_t i = b;
  for (; i + K * L <= e; i += K * L) {
    PrefetchNextBlock<K * L>(s, t, i);
    for (int u = 0; u < K; ++u) {
      const V tv = Ops::Load(t + i + u * L), sv = Ops::Load(s + i + u * L);
      V et, es;
      if constexpr (kClampLow) {
        et = Ops::Exp2Neg(Ops::Mul(Ops::Sub(tv, rt), vinv));
        es = Ops::Exp2Neg(Ops::Mul(Ops::Sub(sv, rs), vinv));
      } else {
        et = Ops::Exp2NegNoLow(Ops::Mul(Ops::Sub(tv, rt), vinv));
        es = Ops::Exp2NegNoLow(Ops::Mul(Ops::Sub(sv, rs), vinv));
      }
      if constexpr (kKeep) {
        Ops::Store(keep + i + u * L, et);
        Ops::Store(keep + nv + i + u * L, es);
      }
      RLK_VDIV_ADD_SPLIT(at[u], ot, et);
      RLK_VDIV_ADD_SPLIT(as[u], os, es);
      RLK_VDIV_ADD_REF(tv, sv, et, es);
    }
  }
  for (int u = 0; i < e; i += L, u = (u + 1) % K) {
    const int64_t rem = e - i;
    V tv = rem >= L ? Ops::Load(t + i) : Ops::LoadTail(t + i, rem, ninf);
    V sv = rem >= L ? Ops::Load(s + i) : Ops::LoadTail(s + i, rem, ninf);
    const V et = Ops::Exp2Neg(Ops::Mul(Ops::Sub(tv, rt), vinv));
    const V es = Ops::Exp2Neg(Ops::Mul(Ops::Sub(sv, rs), vinv));
    if constexpr (kKeep) {
      StoreAt<Ops>(keep + i, et, rem);
      StoreAt<Ops>(keep + nv + i, es, rem);
    }
    RLK_VDIV_ADD_SPLIT(at[u], ot, et);
    RLK_VDIV_ADD_SPLIT(as[u], os, es);
    RLK_VDIV_ADD_REF(tv, sv, et, es);
  }
#undef RLK_VDIV_ADD_SPLIT
#undef RLK_VDIV_ADD_REF
  for (int w = K / 2; w >= 1; w /= 2) {
    for (int u = 0; u < w; ++u) {
      at[u] = Ops::Add(at[u], at[u + w]);
      as[u] = Ops::Add(as[u], as[u + w]);
    }
  }
  *bst = double(Ops::ReduceAdd(ot)) + double(Ops::ReduceAdd(at[0]));
  *bss = double(Ops::ReduceAdd(os)) + double(Ops::ReduceAdd(as[0]));
  *ba = double(Ops::ReduceAdd(ra));
}

// The maxima and minima of one block of both rows (pass 1's first loop).
// Min(x, mn) returns mn where x is NaN, so a NaN never enters the minima (it
// reaches the sums through its exp); a partial vector's fill does not either
// (FLT_MAX), so a clamp-free row need not have V a multiple of the vector width.
struct BlockExt {
  float tmax, smax, tmin, smin;
};

template <class Ops, class TS, class TT>
RLK_VDIV_INLINE BlockExt BlockExtrema(const TS* s, const TT* t, int64_t b, int64_t e) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes;
  const float ninf = -INFINITY;
  V mt = Ops::Set(ninf), ms = Ops::Set(ninf);
  V lt = Ops::Set(FLT_MAX), ls = Ops::Set(FLT_MAX);
  for (int64_t i = b; i < e; i += L) {
    const int64_t rem = e - i;
    if (rem >= L) {
      const V tv = Ops::Load(t + i), sv = Ops::Load(s + i);
      mt = Ops::Max(mt, tv);
      ms = Ops::Max(ms, sv);
      lt = Ops::Min(tv, lt);
      ls = Ops::Min(sv, ls);
    } else {
      mt = Ops::Max(mt, Ops::LoadTail(t + i, rem, ninf));
      ms = Ops::Max(ms, Ops::LoadTail(s + i, rem, ninf));
      lt = Ops::Min(Ops::LoadTail(t + i, rem, FLT_MAX), lt);
      ls = Ops::Min(Ops::LoadTail(s + i, rem, FLT_MAX), ls);
    }
  }
  return {Ops::ReduceMax(mt), Ops::ReduceMax(ms), Ops::ReduceMin(lt), Ops::ReduceMin(ls)};
}

template <class Ops, bool kKeep, RefSide kRef = RefSide::kNone, class TS, class TT>
RLK_VDIV_INLINE RowNorm Normalisers(const TS* s, const TT* t, int64_t nv, float inv_t, float* keep) {
  using V = typename Ops::V;
  const float ninf = -INFINITY;
  RowNorm n;
  // The exps in base 2: 2^{(x - max) log2(e) / T} (Exp2Neg).
  const float inv_t2 = simd::detail::Log2eScale(inv_t);
  const V vinv = Ops::Set(inv_t2);
  float tmin = FLT_MAX, smin = FLT_MAX;
  for (int64_t b = 0; b < nv; b += kBlock) {
    const int64_t e = std::min(nv, b + kBlock);
    const auto [bmt, bms, blt, bls] = BlockExtrema<Ops>(s, t, b, e);
    tmin = std::fmin(tmin, blt);
    smin = std::fmin(smin, bls);
    // An all -inf block is summed against 0: its terms are 0, a NaN stays NaN.
    const V rt = Ops::Set(bmt == ninf ? 0.0f : bmt), rs = Ops::Set(bms == ninf ? 0.0f : bms);
    // The block's reference index and logits (kRef).
    int64_t q = b;
    if constexpr (kRef == RefSide::kTeacher) q = FirstEqual<Ops>(t, b, e, bmt);
    if constexpr (kRef == RefSide::kStudent) q = FirstEqual<Ops>(s, b, e, bms);
    const float qt = ToFloat(t[q]), qs = ToFloat(s[q]);
    const V vqt = Ops::Set(qt), vqs = Ops::Set(qs);
    // Every exp argument (x - max) * (log2(e) / T) is formed in float,
    // monotone in x, so it is at least the minimum's. A block with a -inf
    // logit (or a NaN maximum) clamps.
    double bst, bss, ba;
    if ((blt - bmt) * inv_t2 >= simd::detail::kExp2NegLow && (bls - bms) * inv_t2 >= simd::detail::kExp2NegLow)
      NormBlockSums<Ops, false, kKeep, kRef>(s, t, b, e, nv, keep, rt, rs, vinv, vqt, vqs, &bst, &bss, &ba);
    else
      NormBlockSums<Ops, true, kKeep, kRef>(s, t, b, e, nv, keep, rt, rs, vinv, vqt, vqs, &bst, &bss, &ba);
    // The argmax is looked up only when the running maximum rises (a scan of
    // the block, in L1).
    if constexpr (kKeep) {
      keep[2 * nv + 2 * (b / kBlock)] = bmt;
      keep[2 * nv + 2 * (b / kBlock) + 1] = bms;
    }
    if constexpr (kRef == RefSide::kNone) {
      if (MergeBlock(&n.tmax, &n.tsum, bmt, bst, inv_t)) n.targ = FirstEqual<Ops>(t, b, e, bmt);
      if (MergeBlock(&n.smax, &n.ssum, bms, bss, inv_t)) n.sarg = FirstEqual<Ops>(s, b, e, bms);
    } else {
      // D_q E_b; an all -inf block (E_b 0 or NaN) adds only its A_b.
      const double dq = double(qt) - double(qs);
      if constexpr (kRef == RefSide::kTeacher) {
        if (MergeBlock(&n.tmax, &n.tsum, bmt, bst, inv_t, &n.ra, ba, &n.rd, dq * bst)) n.targ = q;
        if (MergeBlock(&n.smax, &n.ssum, bms, bss, inv_t)) n.sarg = FirstEqual<Ops>(s, b, e, bms);
      } else {
        if (MergeBlock(&n.tmax, &n.tsum, bmt, bst, inv_t)) n.targ = FirstEqual<Ops>(t, b, e, bmt);
        if (MergeBlock(&n.smax, &n.ssum, bms, bss, inv_t, &n.ra, ba, &n.rd, dq * bss)) n.sarg = q;
      }
    }
  }
  // A row with no finite logit has no distribution.
  if (n.tmax == ninf) n.tsum = NAN;
  if (n.smax == ninf) n.ssum = NAN;
  // Pass 2's exp arguments (x - row max) * (log2(e) / T) are all >= kExp2NegLow.
  n.clamp_free = (tmin - n.tmax) * inv_t2 >= simd::detail::kExp2NegLow && (smin - n.smax) * inv_t2 >= simd::detail::kExp2NegLow;
  return n;
}

// Pass 1 of the values-only KLs: Normalisers<Ops, true> with plain block sums
// (no split of the block maximum's 1s: the value needs no accurate
// normalisers, see Row) and, in a block whose exp arguments all lie at or
// above kExp2NegLow, exps without their bottom clamp (a max, a compare and an
// and-not each on AVX2). A separate function, not a mode of Normalisers:
// folded into it as template switches, Normalisers' own uses came out
// slower with the same instruction count (callgrind), e.g. values-only jsd
// +10 % on AVX-512 (`bench/op_loop.mjs --ab`).
// kKeep: store the exps for pass 2. kDir (the weighting side, kTeacher for
// forward KL and kStudent for reverse, or kNone): also the block's sums of
// the direct form (DirectBlock), in clamp-free blocks only (a row with a
// clamped block takes pass 2).
struct DirectBlock {
  double tmax, smax;  // the block's maxima (raw logits)
  double aw;          // the weighting side's sum of exp (e_t forward, e_s reverse)
  double f, g;        // sum e_w d, sum e_w d^2, d = (t - tmax_b) - (s - smax_b)
};

template <class Ops, bool kClampLow, bool kKeep, RefSide kDir, class TS, class TT>
RLK_VDIV_INLINE void PlainBlockSums(const TS* s, const TT* t, int64_t b, int64_t e, int64_t nv, float* keep,
                                    const typename Ops::V& rt, const typename Ops::V& rs, const typename Ops::V& vinv,
                                    double* bst, double* bss, DirectBlock* db) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes;
  constexpr int K = kSumParts / L;  // the same partial sums as Normalisers
  constexpr bool kD = kDir != RefSide::kNone;
  const float ninf = -INFINITY;
  const V zero = Ops::Set(0.0f);
  V at[K], as[K], fd[K], gd[K];
  for (int u = 0; u < K; ++u) at[u] = as[u] = fd[u] = gd[u] = zero;
  // d = dt - ds is what the exps' arguments already hold; sum e_w d and
  // sum e_w d^2 take a subtract, a multiply, an add and an fma a vector. A
  // macro, not a lambda, as RLK_VDIV_ADD_SPLIT.
#define RLK_VDIV_DIRECT(u_, dt_, ds_, et_, es_)                 \
  do {                                                          \
    if constexpr (kD) {                                         \
      const V d_ = Ops::Sub(dt_, ds_);                          \
      const V ed_ = Ops::Mul(kDir == RefSide::kTeacher ? (et_) : (es_), d_); \
      fd[u_] = Ops::Add(fd[u_], ed_);                           \
      gd[u_] = Ops::Fma(ed_, d_, gd[u_]);                       \
    }                                                           \
  } while (0)
  int64_t i = b;
  for (; i + K * L <= e; i += K * L) {
    PrefetchNextBlock<K * L>(s, t, i);
    for (int u = 0; u < K; ++u) {
      const V tv = Ops::Load(t + i + u * L), sv = Ops::Load(s + i + u * L);
      const V dt = Ops::Sub(tv, rt), ds = Ops::Sub(sv, rs);
      V et, es;
      if constexpr (kClampLow) {
        et = Ops::Exp2Neg(Ops::Mul(dt, vinv));
        es = Ops::Exp2Neg(Ops::Mul(ds, vinv));
      } else {
        et = Ops::Exp2NegNoLow(Ops::Mul(dt, vinv));
        es = Ops::Exp2NegNoLow(Ops::Mul(ds, vinv));
      }
      if constexpr (kKeep) {
        Ops::Store(keep + i + u * L, et);
        Ops::Store(keep + nv + i + u * L, es);
      }
      at[u] = Ops::Add(at[u], et);
      as[u] = Ops::Add(as[u], es);
      RLK_VDIV_DIRECT(u, dt, ds, et, es);
    }
  }
  // The rest (fewer than K vectors, a partial one filled with -inf) clamps;
  // the fill's d (-inf - -inf) is NaN, so d is 0 where the weight is 0 (only
  // the fill, in a clamp-free block).
  for (int u = 0; i < e; i += L, u = (u + 1) % K) {
    const int64_t rem = e - i;
    const V tv = rem >= L ? Ops::Load(t + i) : Ops::LoadTail(t + i, rem, ninf);
    const V sv = rem >= L ? Ops::Load(s + i) : Ops::LoadTail(s + i, rem, ninf);
    const V dt = Ops::Sub(tv, rt), ds = Ops::Sub(sv, rs);
    const V et = Ops::Exp2Neg(Ops::Mul(dt, vinv));
    const V es = Ops::Exp2Neg(Ops::Mul(ds, vinv));
    if constexpr (kKeep) {
      StoreAt<Ops>(keep + i, et, rem);
      StoreAt<Ops>(keep + nv + i, es, rem);
    }
    at[u] = Ops::Add(at[u], et);
    as[u] = Ops::Add(as[u], es);
    if constexpr (kD) {
      const auto fill = Ops::Eq(kDir == RefSide::kTeacher ? et : es, zero);
      RLK_VDIV_DIRECT(u, Ops::Select(fill, zero, dt), Ops::Select(fill, zero, ds), et, es);
    }
  }
  for (int w = K / 2; w >= 1; w /= 2) {
    for (int u = 0; u < w; ++u) {
      at[u] = Ops::Add(at[u], at[u + w]);
      as[u] = Ops::Add(as[u], as[u + w]);
      if constexpr (kD) {
        fd[u] = Ops::Add(fd[u], fd[u + w]);
        gd[u] = Ops::Add(gd[u], gd[u + w]);
      }
    }
  }
#undef RLK_VDIV_DIRECT
  *bst = double(Ops::ReduceAdd(at[0]));
  *bss = double(Ops::ReduceAdd(as[0]));
  if constexpr (kD) {
    db->aw = kDir == RefSide::kTeacher ? *bst : *bss;
    db->f = double(Ops::ReduceAdd(fd[0]));
    db->g = double(Ops::ReduceAdd(gd[0]));
  }
}

// The per-block sums of the direct form (DirectKl), one row at a time.
inline DirectBlock* DirectScratch(int64_t blocks) {
  static thread_local std::vector<DirectBlock> buf;
  if (int64_t(buf.size()) < blocks) buf.resize(size_t(blocks));
  return buf.data();
}

// kDir != kNone: fills db[0 .. blocks) and *direct_ok (every block clamp-free).
template <class Ops, bool kKeep, RefSide kDir, class TS, class TT>
RLK_VDIV_INLINE RowNorm PlainNormalisers(const TS* s, const TT* t, int64_t nv, float inv_t, float* keep, DirectBlock* db,
                                         bool* direct_ok) {
  using V = typename Ops::V;
  const float ninf = -INFINITY;
  RowNorm n;
  if (direct_ok) *direct_ok = true;
  // The exps in base 2: 2^{(x - max) log2(e) / T} (Exp2Neg).
  const float inv_t2 = simd::detail::Log2eScale(inv_t);
  const V vinv = Ops::Set(inv_t2);
  for (int64_t b = 0; b < nv; b += kBlock) {
    const int64_t e = std::min(nv, b + kBlock);
    const auto [bmt, bms, blt, bls] = BlockExtrema<Ops>(s, t, b, e);
    // An all -inf block is summed against 0: its terms are 0, a NaN stays NaN.
    const V rt = Ops::Set(bmt == ninf ? 0.0f : bmt), rs = Ops::Set(bms == ninf ? 0.0f : bms);
    // Every exp argument (x - max) * (1 / T) is formed in float, monotone in
    // x, so it is at least the minimum's. A block with a -inf logit clamps.
    const float dt = (blt - bmt) * inv_t2, ds = (bls - bms) * inv_t2;
    double bst, bss;
    DirectBlock* blk = db ? db + b / kBlock : nullptr;
    if (dt >= simd::detail::kExp2NegLow && ds >= simd::detail::kExp2NegLow) {
      PlainBlockSums<Ops, false, kKeep, kDir>(s, t, b, e, nv, keep, rt, rs, vinv, &bst, &bss, blk);
    } else {
      PlainBlockSums<Ops, true, kKeep, RefSide::kNone>(s, t, b, e, nv, keep, rt, rs, vinv, &bst, &bss, blk);
      if (direct_ok) *direct_ok = false;
    }
    if (blk) {
      blk->tmax = bmt;
      blk->smax = bms;
    }
    if constexpr (kKeep) {
      keep[2 * nv + 2 * (b / kBlock)] = bmt;
      keep[2 * nv + 2 * (b / kBlock) + 1] = bms;
    }
    if (MergeBlock(&n.tmax, &n.tsum, bmt, bst, inv_t)) n.targ = FirstEqual<Ops>(t, b, e, bmt);
    if (MergeBlock(&n.smax, &n.ssum, bms, bss, inv_t)) n.sarg = FirstEqual<Ops>(s, b, e, bms);
  }
  // A row with no finite logit has no distribution.
  if (n.tmax == ninf) n.tsum = NAN;
  if (n.smax == ninf) n.ssum = NAN;
  return n;
}

// The direct form of the values-only KLs, from pass 1 alone. With
// x_j = log p_t,j - log p_s,j = d_j / T + c_b in block b (d_j as in
// DirectBlock, c_b = ((tmax_b - tmax) - (smax_b - smax)) / T - log(S_t / S_s)),
// forward KL = E_pt[x] and reverse KL = -E_ps[x]: sums over the row that
// pass 1 forms with four vector operations more, where the phi form needs a
// second pass over the row and its kept exps (twice the row in scratch,
// beyond L2 at V = 151936). Its error is first order in the normalisers'
// rounding and in the exps' (~1e-7 relative each, their fp32 block sums
// included), times the spread of x, where the phi form's is second order:
// it is taken only where the value is large against that spread,
// KL >= kDirectMin (1 + sd(x) + rms(x - c_b)) under the weighting side, so
// that its relative error stays near that of the phi form (measured per row:
// rms ~1e-7, at most 1.1e-6; DESIGN 4 allows 5e-6). Close distributions (a student near its
// teacher), a -inf logit or a block span beyond 125 / (log2(e) / T) take
// pass 2; so do NaN rows (the comparison fails).
constexpr double kDirectMin = 0.2;

inline bool DirectKl(const RowNorm& n, const DirectBlock* db, int64_t blocks, double inv_t, bool forward, float* out) {
  const double wmax = forward ? n.tmax : n.smax, wsum = forward ? n.tsum : n.ssum;
  const double lr = std::log(n.tsum) - std::log(n.ssum);
  double m1 = 0.0, m2 = 0.0, mc = 0.0;  // sums of e_w x, e_w x^2, e_w (x - c_b)^2
  for (int64_t b = 0; b < blocks; ++b) {
    const DirectBlock& k = db[b];
    const double f = ExpNonPositive(((forward ? k.tmax : k.smax) - wmax) * inv_t);
    if (f == 0.0) continue;  // a block e^-708 below the row's maximum
    const double c = ((k.tmax - double(n.tmax)) - (k.smax - double(n.smax))) * inv_t - lr;
    const double f1 = k.f * inv_t, g2 = k.g * inv_t * inv_t;
    m1 += f * (f1 + c * k.aw);
    m2 += f * (g2 + c * (2.0 * f1 + c * k.aw));
    mc += f * g2;
  }
  m1 /= wsum;
  m2 /= wsum;
  mc /= wsum;
  const double kl = forward ? m1 : -m1;
  const double sd = std::sqrt(std::fmax(0.0, m2 - m1 * m1));
  if (!(kl >= kDirectMin * (1.0 + sd + std::sqrt(mc)))) return false;
  *out = float(kl);
  return true;
}

// Whether the calling thread's last values-only KL row took pass 2: then the
// next one keeps its exps in pass 1 (a row of a batch is like its
// neighbours), and a row whose direct form fails needs no second pass 1. A
// hint only: each row's value depends on its own data alone.
thread_local bool tls_vdiv_pass2 = false;

template <class Ops, bool kKeep, class TS, class TT>
RLK_VDIV_INLINE RowNorm KlPass1(const TS* s, const TT* t, int64_t nv, float inv_t, float* keep, DirectBlock* db,
                                bool forward, bool* direct_ok) {
  return forward ? PlainNormalisers<Ops, kKeep, RefSide::kTeacher>(s, t, nv, inv_t, keep, db, direct_ok)
                 : PlainNormalisers<Ops, kKeep, RefSide::kStudent>(s, t, nv, inv_t, keep, db, direct_ok);
}

// Pass 2: the value's sums: for the KLs sums[0] = the KL, sums[1] = sum_j w_j
// d_j (RefDiff); for jsd sums[0] = KL(p_t || M), sums[1] = KL(p_s || M),
// sums[2] = sum p_t a_t, sums[3] = sum p_s a_s.
// kMode: kValueOnly forms only what the value needs (sums[0], and sums[1]
// for jsd); kForGrad (jsd) also the sums the gradient pass needs;
// kFusedGrad (the KLs) also writes the gradients: they need the row's
// normalisers and k.c0, both from pass 1, not the value.
// Blocks are taken last to first: pass 1 ended on the row's last blocks, so
// those are the ones still in L2 where two rows and their scratch outgrow it
// (V = 151936: 1.2 MB of fp32 logits, 2.4 MB with the values-only scratch,
// against 2 MB of L2 a core); in order, the first blocks would have been
// evicted first, and each read would evict the next one needed.
enum class PassMode { kValueOnly, kForGrad, kFusedGrad };

// Scratch of pass 2 for jsd's pass 3 (kForGrad): float rows [kScratchRows][nv]:
// p_t, p_s, y_t, y_s, a_t, a_s, exactly as pass 2 formed them, so pass 3
// spends no exp or log and gives bitwise what recomputing them gave.
constexpr int kScratchRows = 6;

// kValueOnly: scratch is pass 1's keep (p = kept exp * the block's factor
// e^{(block max - row max) / T} / S, formed in double).
template <class Ops, DivergenceKind kKind, PassMode kMode, bool kExactInvT = false, bool kClampLow = true, class TS, class TT>
RLK_VDIV_INLINE void ValuePass(const TS* s, const TT* t, int64_t nv, const RowConsts<Ops>& k, double sums[4], TS* gs,
                               TT* gt, float* scratch, const RowNorm& n, float inv_t) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes;
  const float ninf = -INFINITY;
  sums[0] = sums[1] = sums[2] = sums[3] = 0.0;
  for (int64_t b = (nv - 1) / kBlock * kBlock; b >= 0; b -= kBlock) {
    const int64_t e = std::min(nv, b + kBlock);
    V at = Ops::Set(0.0f), as = at, bt = at, bs = at;
    V ct = at, cs = at;
    if constexpr (kMode == PassMode::kValueOnly) {
      // An all -inf block (maximum -inf) kept exps of 0 (or NaN): factor 0.
      const float bmt = scratch[2 * nv + 2 * (b / kBlock)], bms = scratch[2 * nv + 2 * (b / kBlock) + 1];
      ct = Ops::Set(float(ExpNonPositive((double(bmt) - double(n.tmax)) * inv_t) / n.tsum));
      cs = Ops::Set(float(ExpNonPositive((double(bms) - double(n.smax)) * inv_t) / n.ssum));
    }
    for (int64_t i = b; i < e; i += L) {
      const int64_t rem = e - i;
      V tv = rem >= L ? Ops::Load(t + i) : Ops::LoadTail(t + i, rem, ninf);
      V sv = rem >= L ? Ops::Load(s + i) : Ops::LoadTail(s + i, rem, ninf);
      Probs<Ops> q;
      if constexpr (kMode == PassMode::kValueOnly) {
        q.pt = Ops::Mul(LoadAt<Ops>(scratch + i, rem), ct);
        q.ps = Ops::Mul(LoadAt<Ops>(scratch + nv + i, rem), cs);
        q.x = LogRatio<Ops, kExactInvT>(Ops::Sub(tv, k.tmax), Ops::Sub(sv, k.smax), k);
      } else {
        // A partial vector's fill (-inf) needs the clamp (its exp would be NaN without it).
        if (kClampLow || rem < L) q = Prep<Ops, true, kExactInvT>(tv, sv, k);
        else q = Prep<Ops, false, kExactInvT>(tv, sv, k);
      }
      if constexpr (kMode == PassMode::kForGrad) {
        StoreAt<Ops>(scratch + i, q.pt, rem);
        StoreAt<Ops>(scratch + nv + i, q.ps, rem);
      }
      if constexpr (kKind == DivergenceKind::kForwardKl) {
        at = Ops::Add(at, PhiW<Ops>(q.pt, q.x, q.ps));
        if constexpr (kMode == PassMode::kFusedGrad) {
          StoreAt<Ops>(gs + i, Ops::Mul(DiffSt<Ops>(q), k.inv_t), rem);
          if (gt) {
            const V zero = Ops::Set(0.0f);
            const V g = Ops::Select(Ops::Eq(q.pt, zero), zero, Ops::Mul(q.pt, Ops::Sub(RefDiff<Ops>(tv, sv, k), k.c0)));
            StoreAt<Ops>(gt + i, Ops::Mul(Ops::Mul(g, k.inv_t), k.inv_t), rem);
          }
        }
      } else if constexpr (kKind == DivergenceKind::kReverseKl) {
        at = Ops::Add(at, PhiW<Ops>(q.ps, Ops::Sub(Ops::Set(0.0f), q.x), q.pt));
        if constexpr (kMode == PassMode::kFusedGrad) {
          const V zero = Ops::Set(0.0f);
          const V g = Ops::Select(Ops::Eq(q.ps, zero), zero, Ops::Mul(q.ps, Ops::Sub(k.c0, RefDiff<Ops>(tv, sv, k))));
          StoreAt<Ops>(gs + i, Ops::Mul(Ops::Mul(g, k.inv_t), k.inv_t), rem);
          if (gt) StoreAt<Ops>(gt + i, Ops::Mul(Ops::Sub(zero, DiffSt<Ops>(q)), k.inv_t), rem);
        }
      } else {
        JsdRatios<Ops> y;
        if constexpr (kMode == PassMode::kValueOnly) y = JsdRatiosOf<Ops, false>(q.x, k);
        else y = JsdRatiosOf<Ops, true>(q.x, k);
        if constexpr (kMode == PassMode::kForGrad) {
          StoreAt<Ops>(scratch + 2 * nv + i, y.yt, rem);
          StoreAt<Ops>(scratch + 3 * nv + i, y.ys, rem);
          StoreAt<Ops>(scratch + 4 * nv + i, y.at, rem);
          StoreAt<Ops>(scratch + 5 * nv + i, y.as, rem);
        }
        V m = Ops::Fma(k.beta, q.pt, Ops::Mul(k.omb, q.ps));
        V zero = Ops::Set(0.0f);
        at = Ops::Add(at, PhiW<Ops>(q.pt, y.yt, m));
        as = Ops::Add(as, PhiW<Ops>(q.ps, y.ys, m));
        if constexpr (kMode == PassMode::kForGrad) {
          bt = Ops::Add(bt, Ops::Select(Ops::Eq(q.pt, zero), zero, Ops::Mul(q.pt, y.at)));
          bs = Ops::Add(bs, Ops::Select(Ops::Eq(q.ps, zero), zero, Ops::Mul(q.ps, y.as)));
        }
      }
    }
    sums[0] += double(Ops::ReduceAdd(at));
    sums[1] += double(Ops::ReduceAdd(as));
    if constexpr (kKind == DivergenceKind::kJsd) {
      sums[2] += double(Ops::ReduceAdd(bt));
      sums[3] += double(Ops::ReduceAdd(bs));
    }
  }
}

// a - b or c - d, whichever has the smaller operands (they are equal in exact
// arithmetic): the fp32 error of a difference scales with its operands.
template <class Ops>
RLK_VDIV_INLINE typename Ops::V TighterDiff(const typename Ops::V& a, const typename Ops::V& b, const typename Ops::V& c,
                                            const typename Ops::V& d) {
  auto m1 = Ops::Max(Ops::Abs(a), Ops::Abs(b));
  auto m2 = Ops::Max(Ops::Abs(c), Ops::Abs(d));
  return Ops::Select(Ops::Lt(m2, m1), Ops::Sub(c, d), Ops::Sub(a, b));
}

// Pass 3 (jsd): the gradients (derivation: d log p_j / d z_i = 1[i = j] - p_i).
//   d/dzs = (1 - beta) p_s (y_s - KL(p_s || M)) = (1 - beta) p_s (a_s - sum p_s a_s);
//   d/dzt = beta p_t (y_t - KL(p_t || M)) = beta p_t (a_t - sum p_t a_t)
// each times 1/T for the logits; p = 0 gives exactly 0 (its log is -inf).
// c = {KL(p_t || M), KL(p_s || M), sum p_t a_t, sum p_s a_s}. The KLs'
// gradients (d/dzs = p_s - p_t and p_t (x - KL) = p_t (d_j - sum p_t d) / T
// forward; d/dzs = p_s (sum p_s d - d_j) / T and d/dzt = p_t - p_s reverse)
// are written in pass 2 (kFusedGrad).
template <class Ops, class TS, class TT>
RLK_VDIV_INLINE void GradPass(const TS*, const TT*, int64_t nv, const RowConsts<Ops>& k, const float c[4], TS* gs, TT* gt,
                              const float* scratch) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes;
  const V zero = Ops::Set(0.0f);
  const V c0 = Ops::Set(c[0]), c1 = Ops::Set(c[1]), c2 = Ops::Set(c[2]), c3 = Ops::Set(c[3]);
  for (int64_t i = 0; i < nv; i += L) {
    const int64_t rem = nv - i;
    const V pt = LoadAt<Ops>(scratch + i, rem);
    const V ps = LoadAt<Ops>(scratch + nv + i, rem);
    JsdRatios<Ops> y;
    y.yt = LoadAt<Ops>(scratch + 2 * nv + i, rem);
    y.ys = LoadAt<Ops>(scratch + 3 * nv + i, rem);
    y.at = LoadAt<Ops>(scratch + 4 * nv + i, rem);
    y.as = LoadAt<Ops>(scratch + 5 * nv + i, rem);
    V g_s = Ops::Select(Ops::Eq(ps, zero), zero, Ops::Mul(Ops::Mul(k.omb, ps), TighterDiff<Ops>(y.ys, c1, y.as, c3)));
    V g_t = Ops::Select(Ops::Eq(pt, zero), zero, Ops::Mul(Ops::Mul(k.beta, pt), TighterDiff<Ops>(y.yt, c0, y.at, c2)));
    StoreAt<Ops>(gs + i, Ops::Mul(g_s, k.inv_t), rem);
    if (gt) StoreAt<Ops>(gt + i, Ops::Mul(g_t, k.inv_t), rem);
  }
}

// The calling thread's scratch of at least n floats (pass 2 -> pass 3), kept
// between calls: 8 B a vocabulary entry (24 B for jsd), 768 KB at V = 32000,
// L2-resident where the row is; growing it is the only allocation.
inline float* Scratch(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class Ops, class TS, class TT>
RLK_VDIV_INLINE void Row(const VocabDivergenceParams& p, DivergenceKind kind, int64_t r) {
  const int64_t nv = p.vocab;
  const TS* s = static_cast<const TS*>(p.student) + r * nv;
  const TT* t = static_cast<const TT*>(p.teacher) + r * nv;
  // No student gradient: values only (and then no teacher gradient either).
  TS* gs = p.grad_student ? static_cast<TS*>(p.grad_student) + r * nv : nullptr;
  TT* gt = p.grad_teacher ? static_cast<TT*>(p.grad_teacher) + r * nv : nullptr;
  if (VdivRowIgnored(p, r)) {
    p.values[r] = 0.0f;
    if (gs) std::memset(static_cast<void*>(gs), 0, size_t(nv) * sizeof(TS));  // all-zero bits are +0 in every float format
    if (gt) std::memset(static_cast<void*>(gt), 0, size_t(nv) * sizeof(TT));
    return;
  }
  float* keep = gs ? nullptr : Scratch(size_t(KeepFloats(nv)));
  // With gradients, the KLs' row constant sum_k w_k d_k comes from pass 1
  // (teacher-weighted for forward KL's teacher gradient, student-weighted
  // for reverse KL's student gradient).
  RowNorm n;
  // The values-only KLs take plain block sums (PlainNormalisers): their
  // value needs no accurate normalisers. Relative errors e_t, e_s of S_t, S_s
  // scale p_t by (1 - e_t) and shift every x by d = e_s - e_t, and since
  // sum_j p_t e^-x_j = 1, sum_j p_t phi(x_j + d) = KL + e^-d - 1 + d: the
  // value moves by e_t relative and d^2 / 2 absolute (~1e-13), where the
  // gradients move by d / |x| (Normalisers). jsd's terms lack that identity.
  if (!gs && kind == DivergenceKind::kJsd) {
    n = Normalisers<Ops, true>(s, t, nv, p.inv_temperature, keep);
  } else if (!gs) {
    // The direct form where it is accurate (DirectKl), else pass 2 below.
    const bool forward = kind == DivergenceKind::kForwardKl;
    const int64_t blocks = (nv + kBlock - 1) / kBlock;
    DirectBlock* db = DirectScratch(blocks);
    const bool kept = tls_vdiv_pass2;
    bool ok = false;
    n = kept ? KlPass1<Ops, true>(s, t, nv, p.inv_temperature, keep, db, forward, &ok)
             : KlPass1<Ops, false>(s, t, nv, p.inv_temperature, keep, db, forward, &ok);
    float v;
    if (ok && DirectKl(n, db, blocks, double(p.inv_temperature) + double(p.inv_temperature_lo), forward, &v)) {
      tls_vdiv_pass2 = false;
      p.values[r] = v;
      return;
    }
    tls_vdiv_pass2 = true;
    if (!kept) n = KlPass1<Ops, true>(s, t, nv, p.inv_temperature, keep, db, forward, &ok);
  } else if (kind == DivergenceKind::kReverseKl) {
    n = Normalisers<Ops, false, RefSide::kStudent>(s, t, nv, p.inv_temperature, keep);
  } else if (kind == DivergenceKind::kForwardKl && gt) {
    n = Normalisers<Ops, false, RefSide::kTeacher>(s, t, nv, p.inv_temperature, keep);
  } else {
    n = Normalisers<Ops, false>(s, t, nv, p.inv_temperature, keep);
  }
  const VdivRowScalars rk = VdivRowConstants(p, kind, n.tsum, n.ssum);
  RowConsts<Ops> k;
  k.tmax = Ops::Set(n.tmax);
  k.smax = Ops::Set(n.smax);
  k.inv_t = Ops::Set(p.inv_temperature);
  k.inv_t2 = Ops::Set(simd::detail::Log2eScale(p.inv_temperature));
  k.rst = Ops::Set(rk.rst);
  k.rss = Ops::Set(rk.rss);
  k.xoff = Ops::Set(rk.xoff);
  k.xoff_lo = Ops::Set(rk.xoff_lo);
  k.inv_t_lo = Ops::Set(p.inv_temperature_lo);
  k.beta = Ops::Set(p.beta);
  k.omb = Ops::Set(1.0f - p.beta);
  if (kind != DivergenceKind::kJsd) {
    // c0 = (sum_b f_b A_b + sum_b f_b D_qb E_b - D_r S_w) / S_w (Normalisers).
    const int64_t ref = kind == DivergenceKind::kForwardKl ? n.targ : n.sarg;
    const float tr = ToFloat(t[ref]), sr = ToFloat(s[ref]);
    const double sw = kind == DivergenceKind::kForwardKl ? n.tsum : n.ssum;
    k.tref = Ops::Set(tr);
    k.sref = Ops::Set(sr);
    k.c0 = Ops::Set(float((n.rd - (double(tr) - double(sr)) * sw + n.ra) / sw));
  }
  if (kind == DivergenceKind::kJsd) {
    const bool direct_s = p.beta <= 0.5f;
    k.sig = Ops::Set(direct_s ? 1.0f : -1.0f);
    k.gam = Ops::Set(direct_s ? p.beta : 1.0f - p.beta);
    k.lg = Ops::Set(direct_s ? rk.lbt : rk.lbs);
    k.rho = Ops::Set(direct_s ? rk.rhot : rk.rhos);
    k.lgd = Ops::Set(direct_s ? rk.lbs : rk.lbt);
    k.rhod = Ops::Set(direct_s ? rk.rhos : rk.rhot);
  }
  double sums[4];
  if (!gs) {
    // The KLs' value pass is short enough for the log-ratio's low-part fma
    // and clamp to show (a tenth of it on AVX2): without them where 1 / T is
    // exact. jsd's pass is dominated by its exp and log.
    const bool exact = p.inv_temperature_lo == 0.0f;
    switch (kind) {
      case DivergenceKind::kForwardKl:
        if (exact) ValuePass<Ops, DivergenceKind::kForwardKl, PassMode::kValueOnly, true>(s, t, nv, k, sums, gs, gt, keep, n, p.inv_temperature);
        else ValuePass<Ops, DivergenceKind::kForwardKl, PassMode::kValueOnly>(s, t, nv, k, sums, gs, gt, keep, n, p.inv_temperature);
        break;
      case DivergenceKind::kReverseKl:
        if (exact) ValuePass<Ops, DivergenceKind::kReverseKl, PassMode::kValueOnly, true>(s, t, nv, k, sums, gs, gt, keep, n, p.inv_temperature);
        else ValuePass<Ops, DivergenceKind::kReverseKl, PassMode::kValueOnly>(s, t, nv, k, sums, gs, gt, keep, n, p.inv_temperature);
        break;
      case DivergenceKind::kJsd: ValuePass<Ops, DivergenceKind::kJsd, PassMode::kValueOnly>(s, t, nv, k, sums, gs, gt, keep, n, p.inv_temperature); break;
    }
    p.values[r] = VdivRowValue(kind, p.beta, sums);
    return;
  }
  // The gradient passes' exps without their bottom clamp where the row is
  // clamp-free (the common case: a span of logits below 125 / (log2(e) / T),
  // no -inf), and the log-ratio without its low-part fma and clamp where
  // 1 / T is exact (T = 1): together ~10 of the KLs' ~75 vector operations
  // a pair in pass 2 on AVX2. The same bits either way.
  const bool fast = n.clamp_free && p.inv_temperature_lo == 0.0f;
  switch (kind) {
    case DivergenceKind::kForwardKl:
      if (fast) ValuePass<Ops, DivergenceKind::kForwardKl, PassMode::kFusedGrad, true, false>(s, t, nv, k, sums, gs, gt, nullptr, n, p.inv_temperature);
      else ValuePass<Ops, DivergenceKind::kForwardKl, PassMode::kFusedGrad>(s, t, nv, k, sums, gs, gt, nullptr, n, p.inv_temperature);
      break;
    case DivergenceKind::kReverseKl:
      if (fast) ValuePass<Ops, DivergenceKind::kReverseKl, PassMode::kFusedGrad, true, false>(s, t, nv, k, sums, gs, gt, nullptr, n, p.inv_temperature);
      else ValuePass<Ops, DivergenceKind::kReverseKl, PassMode::kFusedGrad>(s, t, nv, k, sums, gs, gt, nullptr, n, p.inv_temperature);
      break;
    case DivergenceKind::kJsd: {
      float* scratch = Scratch(size_t(kScratchRows) * size_t(nv));
      if (n.clamp_free) ValuePass<Ops, DivergenceKind::kJsd, PassMode::kForGrad, false, false>(s, t, nv, k, sums, gs, gt, scratch, n, p.inv_temperature);
      else ValuePass<Ops, DivergenceKind::kJsd, PassMode::kForGrad>(s, t, nv, k, sums, gs, gt, scratch, n, p.inv_temperature);
      const float c[4] = {float(sums[0]), float(sums[1]), float(sums[2]), float(sums[3])};
      GradPass<Ops>(s, t, nv, k, c, gs, gt, scratch);
      break;
    }
  }
  p.values[r] = VdivRowValue(kind, p.beta, sums);
}

// flatten: every wrapper inlined into the ISA's function (GCC had kept
// ExpNeg and the mask compares and blends out of line, as calls: 40 % of
// pass 1's time).
template <class TS, class TT>
RLK_AVX512 __attribute__((flatten)) void RowsAvx512(const VocabDivergenceParams& p, DivergenceKind kind, int64_t b, int64_t e) {
  for (int64_t r = b; r < e; ++r) Row<Avx512Ops, TS, TT>(p, kind, r);
}
template <class TS, class TT>
RLK_AVX2 __attribute__((flatten)) void RowsAvx2(const VocabDivergenceParams& p, DivergenceKind kind, int64_t b, int64_t e) {
  for (int64_t r = b; r < e; ++r) Row<Avx2Ops, TS, TT>(p, kind, r);
}
template <class TS, class TT>
void RowsScalar(const VocabDivergenceParams& p, DivergenceKind kind, int64_t b, int64_t e) {
  for (int64_t r = b; r < e; ++r) Row<ScalarOps, TS, TT>(p, kind, r);
}

}  // namespace

Status VocabDivergence(const VocabDivergenceParams& p) {
  if (Status st = VocabDivergenceCheck(p); !st.ok()) return st;
  if (p.rows == 0) return Status::Ok();
  const DivergenceKind kind = EffectiveKind(p);
  const simd::IsaKind isa = simd::Isa();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / p.vocab);
  return RLK_DISPATCH_FLOATING(p.student_dtype, "vocabDivergence", [&] {
    using TS = T;
    return RLK_DISPATCH_FLOATING(p.teacher_dtype, "vocabDivergence", [&] {
      using TT = T;
      ParallelFor(p.rows, grain, [&](int64_t b, int64_t e) {
        switch (isa) {
          case simd::IsaKind::kAvx512: RowsAvx512<TS, TT>(p, kind, b, e); break;
          case simd::IsaKind::kAvx2: RowsAvx2<TS, TT>(p, kind, b, e); break;
          default: RowsScalar<TS, TT>(p, kind, b, e); break;
        }
      });
      return Status::Ok();
    });
  });
}

}  // namespace rlk::cpu
