// CPU policy loss: three passes over fixed tiles of at most kTile tokens of
// one sequence each (a long sequence is several tiles, so one 1M-token
// sequence still uses every thread):
//   A. per tile: mask counts, GSPO's sum of log-ratios, rollout log-weight
//      sums and minima (what the per-sequence decisions need);
//   B. per sequence, serially: rejection, sequence weights, GSPO ratio,
//      denominators and each sequence's aggregation weight;
//   C. per tile: per-token loss, gradient and stat partial sums.
// Tiles depend only on the shapes, partial sums are kept per tile and
// combined in tile order, so results are bitwise the same for any thread
// count (for a given instruction set). Token math and every sum are in
// double; outputs are float. Phase C runs 8 (AVX-512) or 4 (AVX2) tokens per
// vector in double lanes, chosen at run time, or the scalar pass.
//
// GCC 12 reports -W(maybe-)uninitialized inside its own AVX-512 intrinsics
// (the _mm512_undefined_* pass-through operand of the masked builtins), a
// known false positive; it would drown real warnings, so it is off here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "rlk/cpu_simd.h"
#include "rlk/policy_loss.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

constexpr int64_t kTile = 8192;

struct Tile {
  int64_t seq, begin, end;
};

// Phase A partials of one tile.
struct TileA {
  double n0 = 0;      // tokens in the given mask
  double nk = 0;      // of those, kept by token-level rejection
  double sum_d = 0;   // sum over kept tokens of logp - old (GSPO)
  double sum_x = 0;   // sum over masked tokens of old - rollout (sequence TIS)
  double min_x = std::numeric_limits<double>::infinity();  // veto
};

// Phase C partials of one tile (sums over kept tokens).
struct TileC {
  double obj = 0;  // sum of w L + kl_coef k - ent_coef H (before the aggregation weight)
  double clip = 0, low = 0, high = 0, dual = 0;
  double neg_lr = 0, ratio = 0, weight = 0, kl = 0, ent = 0;
  double rmin = std::numeric_limits<double>::infinity();
  double rmax = -std::numeric_limits<double>::infinity();
};

struct SeqInfo {
  double coef = 0;      // aggregation weight a_t of the sequence's kept tokens
  double weight = 1;    // applied sequence-level rollout weight
  double gspo_s = 1;    // GSPO ratio
  bool gspo_grad = true;
  bool rejected = false;
};


// ---- AVX-512 token pass (phase C) -------------------------------------------
// The same per-token math as the scalar path below, in double, 8 tokens at a
// time: the loss is a sum whose terms cancel (advantages have both signs), so
// float per-token terms would leave errors of a few 1e-7 of the largest term,
// far above 1e-6 of a small total; double lanes keep the CPU result within
// rounding of the float64 reference. e^x - x - 1 (k3) uses the Taylor series
// on |x| < 1 as KlValueGrad does, and e^x - 1 = x + (e^x - x - 1).
namespace avx512v {
using D = __m512d;
using M = __mmask8;

RLK_AVX512 inline D Set(double v) { return _mm512_set1_pd(v); }
// min/max_pd return their second operand when either is NaN: v goes second
// so a NaN stays NaN, as in the scalar pass (and CUDA).
RLK_AVX512 inline D Clamp(D v, double lo, double hi) { return _mm512_min_pd(Set(hi), _mm512_max_pd(Set(lo), v)); }
RLK_AVX512 inline D LoadF(const float* p, M valid) { return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(valid, p)); }
RLK_AVX512 inline void StoreF(float* p, M valid, D v) { _mm256_mask_storeu_ps(p, valid, _mm512_cvtpd_ps(v)); }

// e^x for |x| <= 700 (callers clamp to [-20, 20]); NaN stays NaN. Reduction
// x = n ln2 + r with ln2 split in two (n ln2_hi exact), |r| <= ln2 / 2, then
// the Taylor polynomial of degree 13 (truncation < 4e-18 relative) and 2^n
// by scalef: within a few ulps of std::exp.
RLK_AVX512 inline D ExpPd(D x) {
  const D n = _mm512_roundscale_pd(_mm512_mul_pd(x, Set(1.4426950408889634)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  D r = _mm512_fnmadd_pd(n, Set(6.93147180369123816490e-01), x);
  r = _mm512_fnmadd_pd(n, Set(1.90821492927058770002e-10), r);
  static constexpr double kInvFact[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                          1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,      1.0 / 720.0,
                                          1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,         0.5,
                                          1.0,                1.0};
  D p = Set(kInvFact[0]);
  for (int k = 1; k < 14; ++k) p = _mm512_fmadd_pd(p, r, Set(kInvFact[k]));
  return _mm512_scalef_pd(p, n);
}

// e^x - x - 1, as kl_detail::ExpMinusXMinus1<double>.
RLK_AVX512 inline D ExpMinusXMinus1(D x) {
  static constexpr double kInvFact[16] = {
      2.8114572543455207e-15, 4.7794773323873853e-14, 7.6471637318198164e-13, 1.1470745597729725e-11,
      1.6059043836821613e-10, 2.0876756987868099e-09, 2.5052108385441720e-08, 2.7557319223985891e-07,
      2.7557319223985893e-06, 2.4801587301587302e-05, 1.9841269841269841e-04, 1.3888888888888889e-03,
      8.3333333333333333e-03, 4.1666666666666667e-02, 1.6666666666666667e-01, 0.5};
  D p = Set(kInvFact[0]);
  for (int k = 1; k < 16; ++k) p = _mm512_fmadd_pd(p, x, Set(kInvFact[k]));
  const D series = _mm512_mul_pd(_mm512_mul_pd(x, x), p);
  const D direct = _mm512_sub_pd(_mm512_sub_pd(ExpPd(x), x), Set(1.0));
  const M small = _mm512_cmp_pd_mask(_mm512_abs_pd(x), Set(1.0), _CMP_LT_OQ);
  return _mm512_mask_blend_pd(small, direct, series);
}
}  // namespace avx512v


// Phase C of one tile, scalar, in double (any CPU; also the path for
// token-level rejection, whose decisions must match phase A's bit for bit).
void TokenTileScalar(const PolicyLossParams& p, const Tile& tile, const SeqInfo& q, TileC* out) {
  const bool gspo = p.mode == kPolicyGspo, tis = p.tis_level != kTisNone;
  const double lo = 1.0 - p.clip_low, hi = 1.0 + p.clip_high;
  const bool dual = p.use_dual_clip && !gspo;
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  auto masked = [&](int64_t t) { return p.mask == nullptr || p.mask[t] != 0; };
  TileC c;
  for (int64_t t = tile.begin; t < tile.end; ++t) {
    bool keep = masked(t) && !q.rejected;
    double w = 1.0;
    if (keep && tis) {
      if (p.tis_level == kTisToken) {
        keep = TokenRolloutWeight<double>(p.tis_mode, double(p.old_logprobs[t]) - double(p.rollout_logprobs[t]),
                                          p.tis_lower, p.tis_upper, &w);
      } else {
        w = q.weight;
      }
    }
    if (!keep) {
      p.grad[t] = 0.f;
      if (has_ent) p.grad_entropy[t] = 0.f;
      continue;
    }
    const double d = double(p.logprobs[t]) - double(p.old_logprobs[t]);
    const double lr = ClampLogRatio(d);
    double dr;
    const double r = TokenRatio<double>(gspo, d, q.gspo_s, q.gspo_grad, &dr);
    const double A = double(p.advantages[p.adv_per_sequence ? tile.seq : t]);
    double dl_dr;
    uint32_t flags;
    double L = Surrogate<double>(A, r, lo, hi, dual, p.dual_clip, &dl_dr, &flags);
    double obj = w * L;
    double g = w * dl_dr * dr;
    if (has_kl) {
      double kv, kg;
      KlValueGrad<double>(p.kl_estimator, double(p.logprobs[t]) - double(p.ref_logprobs[t]), &kv, &kg);
      obj += p.kl_coef * kv;
      g += p.kl_coef * kg;
      c.kl += kv;
    }
    if (has_ent) {
      double h = double(p.entropy[t]);
      obj -= p.entropy_coef * h;
      c.ent += h;
      p.grad_entropy[t] = float(-q.coef * p.entropy_coef);
    }
    p.grad[t] = float(q.coef * g);
    c.obj += obj;
    c.clip += (flags & kFlagClip) ? 1 : 0;
    c.low += (flags & kFlagLow) ? 1 : 0;
    c.high += (flags & kFlagHigh) ? 1 : 0;
    c.dual += (flags & kFlagDual) ? 1 : 0;
    c.neg_lr -= lr;
    c.ratio += r;
    c.rmin = std::min(c.rmin, r);
    c.rmax = std::max(c.rmax, r);
    c.weight += w;
  }
  *out = c;
}

// Phase C of one tile, AVX-512 in double lanes (see avx512v above). Not used
// for token-level rejection, whose keep decisions must match phase A's.
RLK_AVX512 void TokenTileAvx512(const PolicyLossParams& p, const Tile& tile, const SeqInfo& q, TileC* out) {
  using namespace avx512v;
  const bool gspo = p.mode == kPolicyGspo, tis = p.tis_level != kTisNone;
  const bool dual = p.use_dual_clip && !gspo;
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  const D lo = Set(1.0 - p.clip_low), hi = Set(1.0 + p.clip_high);
  const D dual_c = Set(p.dual_clip), upper = Set(p.tis_upper);
  const D klc = Set(p.kl_coef), entc = Set(p.entropy_coef);
  const D coef = Set(q.coef);
  const D zero = _mm512_setzero_pd(), one = Set(1.0);
  const D seq_adv = p.adv_per_sequence ? Set(double(p.advantages[tile.seq])) : zero;
  const D gspo_r = Set(q.gspo_s), gspo_dr = Set(q.gspo_grad ? q.gspo_s : 0.0);
  const D seq_w = Set(q.weight);
  const D grad_ent = Set(-q.coef * p.entropy_coef);
  D obj = zero, neg_lr = zero, ratio = zero, weight = zero, kl = zero, ent = zero;
  int64_t clip = 0, low = 0, high = 0, dualn = 0;
  D rmin = Set(INFINITY), rmax = Set(-INFINITY);
  for (int64_t t = tile.begin; t < tile.end; t += 8) {
    const int64_t n = std::min<int64_t>(8, tile.end - t);
    const M valid = M((1u << n) - 1u);
    M keep = valid;
    if (p.mask) {
      const __m128i mb = _mm_maskz_loadu_epi8(valid, p.mask + t);
      keep = _mm512_mask_cmpneq_epi64_mask(valid, _mm512_cvtepu8_epi64(mb), _mm512_setzero_si512());
    }
    if (q.rejected) keep = 0;
    D w = one;
    if (tis) {
      if (p.tis_level == kTisToken) {  // truncate
        const D x = _mm512_sub_pd(LoadF(p.old_logprobs + t, valid), LoadF(p.rollout_logprobs + t, valid));
        w = _mm512_min_pd(upper, ExpPd(Clamp(x, -20.0, 20.0)));  // NaN stays NaN, as std::min(w, upper)
      } else {
        w = seq_w;
      }
    }
    const D lp = LoadF(p.logprobs + t, valid);
    const D d = _mm512_sub_pd(lp, LoadF(p.old_logprobs + t, valid));
    const D lr = Clamp(d, -20.0, 20.0);
    D r, dr;
    if (gspo) {
      r = gspo_r;
      dr = gspo_dr;
    } else {
      r = ExpPd(lr);
      const M in = _mm512_cmp_pd_mask(d, Set(-20.0), _CMP_GE_OQ) & _mm512_cmp_pd_mask(d, Set(20.0), _CMP_LE_OQ);
      dr = _mm512_maskz_mov_pd(in, r);
    }
    const D A = p.adv_per_sequence ? seq_adv : LoadF(p.advantages + t, valid);
    const D neg_a = _mm512_sub_pd(zero, A);
    const D l1 = _mm512_mul_pd(neg_a, r);
    const D l2 = _mm512_mul_pd(neg_a, _mm512_min_pd(hi, _mm512_max_pd(lo, r)));  // NaN r stays NaN
    D L = _mm512_max_pd(l1, l2);
    D g = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(l1, l2, _CMP_GE_OQ), neg_a);
    const M a_neg = _mm512_cmp_pd_mask(A, zero, _CMP_LT_OQ), a_pos = _mm512_cmp_pd_mask(A, zero, _CMP_GT_OQ);
    const M f_clip = _mm512_cmp_pd_mask(l2, l1, _CMP_GT_OQ);
    const M f_low = _mm512_cmp_pd_mask(r, lo, _CMP_LT_OQ) & a_neg;
    const M f_high = _mm512_cmp_pd_mask(r, hi, _CMP_GT_OQ) & a_pos;
    M f_dual = 0;
    if (dual) {
      const D l3 = _mm512_mul_pd(neg_a, dual_c);
      f_dual = a_neg & _mm512_cmp_pd_mask(L, l3, _CMP_GT_OQ);
      L = _mm512_mask_blend_pd(f_dual, L, l3);
      g = _mm512_mask_blend_pd(f_dual, g, zero);
    }
    D o = _mm512_mul_pd(w, L);
    D gv = _mm512_mul_pd(_mm512_mul_pd(w, g), dr);
    if (has_kl) {
      const D kd = _mm512_sub_pd(lp, LoadF(p.ref_logprobs + t, valid));
      D kv, kg;
      switch (p.kl_estimator) {
        case kKlK1: kv = kd; kg = one; break;
        case kKlAbs:
          kv = _mm512_abs_pd(kd);
          kg = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(kd, zero, _CMP_GT_OQ),
                                    _mm512_mask_blend_pd(_mm512_cmp_pd_mask(kd, zero, _CMP_LT_OQ), zero, Set(-1.0)), one);
          break;
        case kKlK2: kv = _mm512_mul_pd(Set(0.5), _mm512_mul_pd(kd, kd)); kg = kd; break;
        case kKlK1Plus: kv = kd; kg = kd; break;
        default: {  // k3, k3+
          const D x = _mm512_sub_pd(zero, kd);
          const D xc = Clamp(x, -20.0, 20.0);
          const M x_cl = _mm512_cmp_pd_mask(x, Set(-20.0), _CMP_LT_OQ) | _mm512_cmp_pd_mask(x, Set(20.0), _CMP_GT_OQ);
          const D em = ExpMinusXMinus1(xc);
          const M v_cl = _mm512_cmp_pd_mask(em, Set(10.0), _CMP_GT_OQ);
          kv = _mm512_mask_blend_pd(v_cl, em, Set(10.0));
          // d/dlogp (e^x - x - 1) = -(e^x - 1) = -(x + (e^x - x - 1)).
          kg = p.kl_estimator == kKlK3Plus ? kd : _mm512_maskz_mov_pd(M(~(x_cl | v_cl)), _mm512_sub_pd(zero, _mm512_add_pd(xc, em)));
        }
      }
      o = _mm512_fmadd_pd(klc, kv, o);
      gv = _mm512_fmadd_pd(klc, kg, gv);
      kl = _mm512_mask_add_pd(kl, keep, kl, kv);
    }
    if (has_ent) {
      const D h = LoadF(p.entropy + t, valid);
      o = _mm512_fnmadd_pd(entc, h, o);
      ent = _mm512_mask_add_pd(ent, keep, ent, h);
      StoreF(p.grad_entropy + t, valid, _mm512_maskz_mov_pd(keep, grad_ent));
    }
    StoreF(p.grad + t, valid, _mm512_maskz_mov_pd(keep, _mm512_mul_pd(coef, gv)));
    obj = _mm512_mask_add_pd(obj, keep, obj, o);
    neg_lr = _mm512_mask_sub_pd(neg_lr, keep, neg_lr, lr);
    ratio = _mm512_mask_add_pd(ratio, keep, ratio, r);
    weight = _mm512_mask_add_pd(weight, keep, weight, w);
    clip += __builtin_popcount(unsigned(keep & f_clip));
    low += __builtin_popcount(unsigned(keep & f_low));
    high += __builtin_popcount(unsigned(keep & f_high));
    dualn += __builtin_popcount(unsigned(keep & f_dual));
    rmin = _mm512_mask_min_pd(rmin, keep, r, rmin);  // a NaN r is skipped, as std::min(rmin, r)
    rmax = _mm512_mask_max_pd(rmax, keep, r, rmax);
  }
  TileC c;
  c.obj = _mm512_reduce_add_pd(obj);
  c.neg_lr = _mm512_reduce_add_pd(neg_lr);
  c.ratio = _mm512_reduce_add_pd(ratio);
  c.weight = _mm512_reduce_add_pd(weight);
  c.kl = _mm512_reduce_add_pd(kl);
  c.ent = _mm512_reduce_add_pd(ent);
  c.clip = double(clip);
  c.low = double(low);
  c.high = double(high);
  c.dual = double(dualn);
  c.rmin = _mm512_reduce_min_pd(rmin);
  c.rmax = _mm512_reduce_max_pd(rmax);
  *out = c;
}

// ---- AVX2 token pass (phase C): the AVX-512 pass on 4 double lanes, with
// lane masks held as all-ones doubles; the tile's last (size % 4) tokens go
// through the scalar pass and are merged after the vector part, in order.
namespace avx2v {
using D = __m256d;

RLK_AVX2 inline D Set(double v) { return _mm256_set1_pd(v); }
RLK_AVX2 inline D Clamp(D v, double lo, double hi) { return _mm256_min_pd(Set(hi), _mm256_max_pd(Set(lo), v)); }  // NaN stays NaN
RLK_AVX2 inline D LoadF(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
#define RLK_CMP(a, b, op) _mm256_cmp_pd((a), (b), (op))
RLK_AVX2 inline D And(D m, D v) { return _mm256_and_pd(m, v); }
RLK_AVX2 inline D Blend(D m, D a, D b) { return _mm256_blendv_pd(a, b, m); }  // m ? b : a
RLK_AVX2 inline int Bits(D m) { return _mm256_movemask_pd(m); }

// e^x for |x| <= 700 (callers clamp to [-20, 20]); as avx512v::ExpPd, with
// 2^n built in the exponent field (no scalef in AVX2).
RLK_AVX2 inline D ExpPd(D x) {
  const D n = _mm256_round_pd(_mm256_mul_pd(x, Set(1.4426950408889634)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  D r = _mm256_fnmadd_pd(n, Set(6.93147180369123816490e-01), x);
  r = _mm256_fnmadd_pd(n, Set(1.90821492927058770002e-10), r);
  static constexpr double kInvFact[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                          1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,      1.0 / 720.0,
                                          1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,         0.5,
                                          1.0,                1.0};
  D p = Set(kInvFact[0]);
  for (int k = 1; k < 14; ++k) p = _mm256_fmadd_pd(p, r, Set(kInvFact[k]));
  const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)), 52);
  return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
}

RLK_AVX2 inline D ExpMinusXMinus1(D x) {
  static constexpr double kInvFact[16] = {
      2.8114572543455207e-15, 4.7794773323873853e-14, 7.6471637318198164e-13, 1.1470745597729725e-11,
      1.6059043836821613e-10, 2.0876756987868099e-09, 2.5052108385441720e-08, 2.7557319223985891e-07,
      2.7557319223985893e-06, 2.4801587301587302e-05, 1.9841269841269841e-04, 1.3888888888888889e-03,
      8.3333333333333333e-03, 4.1666666666666667e-02, 1.6666666666666667e-01, 0.5};
  D p = Set(kInvFact[0]);
  for (int k = 1; k < 16; ++k) p = _mm256_fmadd_pd(p, x, Set(kInvFact[k]));
  const D series = _mm256_mul_pd(_mm256_mul_pd(x, x), p);
  const D direct = _mm256_sub_pd(_mm256_sub_pd(ExpPd(x), x), Set(1.0));
  const D ax = _mm256_andnot_pd(Set(-0.0), x);
  return Blend(RLK_CMP(ax, Set(1.0), _CMP_LT_OQ), direct, series);
}
}  // namespace avx2v

RLK_AVX2 void TokenTileAvx2(const PolicyLossParams& p, const Tile& tile, const SeqInfo& q, TileC* out) {
  using namespace avx2v;
  const bool gspo = p.mode == kPolicyGspo, tis = p.tis_level != kTisNone;
  const bool dual = p.use_dual_clip && !gspo;
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  const D lo = Set(1.0 - p.clip_low), hi = Set(1.0 + p.clip_high);
  const D dual_c = Set(p.dual_clip), upper = Set(p.tis_upper);
  const D klc = Set(p.kl_coef), entc = Set(p.entropy_coef);
  const D coef = Set(q.coef);
  const D zero = _mm256_setzero_pd(), one = Set(1.0);
  const D seq_adv = p.adv_per_sequence ? Set(double(p.advantages[tile.seq])) : zero;
  const D gspo_r = Set(q.gspo_s), gspo_dr = Set(q.gspo_grad ? q.gspo_s : 0.0);
  const D seq_w = Set(q.weight);
  const D grad_ent = Set(-q.coef * p.entropy_coef);
  const D all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  D obj = zero, neg_lr = zero, ratio = zero, weight = zero, kl = zero, ent = zero;
  int64_t clip = 0, low = 0, high = 0, dualn = 0;
  D rmin = Set(INFINITY), rmax = Set(-INFINITY);
  const int64_t vec_end = tile.begin + (tile.end - tile.begin) / 4 * 4;
  for (int64_t t = tile.begin; t < vec_end; t += 4) {
    D keep = all;
    if (p.mask) {
      int32_t bytes;
      std::memcpy(&bytes, p.mask + t, 4);
      const __m256i m = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(bytes));
      keep = _mm256_castsi256_pd(_mm256_xor_si256(_mm256_cmpeq_epi64(m, _mm256_setzero_si256()), _mm256_set1_epi64x(-1)));
    }
    if (q.rejected) keep = zero;
    D w = one;
    if (tis) {
      if (p.tis_level == kTisToken) {  // truncate
        const D x = _mm256_sub_pd(LoadF(p.old_logprobs + t), LoadF(p.rollout_logprobs + t));
        w = _mm256_min_pd(upper, ExpPd(Clamp(x, -20.0, 20.0)));  // NaN stays NaN
      } else {
        w = seq_w;
      }
    }
    const D lp = LoadF(p.logprobs + t);
    const D d = _mm256_sub_pd(lp, LoadF(p.old_logprobs + t));
    const D lr = Clamp(d, -20.0, 20.0);
    D r, dr;
    if (gspo) {
      r = gspo_r;
      dr = gspo_dr;
    } else {
      r = ExpPd(lr);
      dr = And(_mm256_and_pd(RLK_CMP(d, Set(-20.0), _CMP_GE_OQ), RLK_CMP(d, Set(20.0), _CMP_LE_OQ)), r);
    }
    const D A = p.adv_per_sequence ? seq_adv : LoadF(p.advantages + t);
    const D neg_a = _mm256_sub_pd(zero, A);
    const D l1 = _mm256_mul_pd(neg_a, r);
    const D l2 = _mm256_mul_pd(neg_a, _mm256_min_pd(hi, _mm256_max_pd(lo, r)));  // NaN r stays NaN
    D L = _mm256_max_pd(l1, l2);
    D g = And(RLK_CMP(l1, l2, _CMP_GE_OQ), neg_a);
    const D a_neg = RLK_CMP(A, zero, _CMP_LT_OQ), a_pos = RLK_CMP(A, zero, _CMP_GT_OQ);
    const D f_clip = RLK_CMP(l2, l1, _CMP_GT_OQ);
    const D f_low = _mm256_and_pd(RLK_CMP(r, lo, _CMP_LT_OQ), a_neg);
    const D f_high = _mm256_and_pd(RLK_CMP(r, hi, _CMP_GT_OQ), a_pos);
    D f_dual = zero;
    if (dual) {
      const D l3 = _mm256_mul_pd(neg_a, dual_c);
      f_dual = _mm256_and_pd(a_neg, RLK_CMP(L, l3, _CMP_GT_OQ));
      L = Blend(f_dual, L, l3);
      g = Blend(f_dual, g, zero);
    }
    D o = _mm256_mul_pd(w, L);
    D gv = _mm256_mul_pd(_mm256_mul_pd(w, g), dr);
    if (has_kl) {
      const D kd = _mm256_sub_pd(lp, LoadF(p.ref_logprobs + t));
      D kv, kg;
      switch (p.kl_estimator) {
        case kKlK1: kv = kd; kg = one; break;
        case kKlAbs:
          kv = _mm256_andnot_pd(Set(-0.0), kd);
          kg = Blend(RLK_CMP(kd, zero, _CMP_GT_OQ), And(RLK_CMP(kd, zero, _CMP_LT_OQ), Set(-1.0)), one);
          break;
        case kKlK2: kv = _mm256_mul_pd(Set(0.5), _mm256_mul_pd(kd, kd)); kg = kd; break;
        case kKlK1Plus: kv = kd; kg = kd; break;
        default: {  // k3, k3+
          const D x = _mm256_sub_pd(zero, kd);
          const D xc = Clamp(x, -20.0, 20.0);
          const D x_cl = _mm256_or_pd(RLK_CMP(x, Set(-20.0), _CMP_LT_OQ), RLK_CMP(x, Set(20.0), _CMP_GT_OQ));
          const D em = ExpMinusXMinus1(xc);
          const D v_cl = RLK_CMP(em, Set(10.0), _CMP_GT_OQ);
          kv = Blend(v_cl, em, Set(10.0));
          kg = p.kl_estimator == kKlK3Plus ? kd : _mm256_andnot_pd(_mm256_or_pd(x_cl, v_cl), _mm256_sub_pd(zero, _mm256_add_pd(xc, em)));
        }
      }
      o = _mm256_fmadd_pd(klc, kv, o);
      gv = _mm256_fmadd_pd(klc, kg, gv);
      kl = _mm256_add_pd(kl, And(keep, kv));
    }
    if (has_ent) {
      const D h = LoadF(p.entropy + t);
      o = _mm256_fnmadd_pd(entc, h, o);
      ent = _mm256_add_pd(ent, And(keep, h));
      _mm_storeu_ps(p.grad_entropy + t, _mm256_cvtpd_ps(And(keep, grad_ent)));
    }
    _mm_storeu_ps(p.grad + t, _mm256_cvtpd_ps(And(keep, _mm256_mul_pd(coef, gv))));
    obj = _mm256_add_pd(obj, And(keep, o));
    neg_lr = _mm256_sub_pd(neg_lr, And(keep, lr));
    ratio = _mm256_add_pd(ratio, And(keep, r));
    weight = _mm256_add_pd(weight, And(keep, w));
    const int k = Bits(keep);
    clip += __builtin_popcount(unsigned(k & Bits(f_clip)));
    low += __builtin_popcount(unsigned(k & Bits(f_low)));
    high += __builtin_popcount(unsigned(k & Bits(f_high)));
    dualn += __builtin_popcount(unsigned(k & Bits(f_dual)));
    rmin = Blend(keep, rmin, _mm256_min_pd(r, rmin));  // a NaN r is skipped
    rmax = Blend(keep, rmax, _mm256_max_pd(r, rmax));
  }
  // Horizontal sums in a fixed lane order.
  auto hsum = [](D v) RLK_AVX2 {
    alignas(32) double a[4];
    _mm256_store_pd(a, v);
    return (a[0] + a[1]) + (a[2] + a[3]);
  };
  auto hmin = [](D v) RLK_AVX2 {
    alignas(32) double a[4];
    _mm256_store_pd(a, v);
    return std::min(std::min(a[0], a[1]), std::min(a[2], a[3]));
  };
  auto hmax = [](D v) RLK_AVX2 {
    alignas(32) double a[4];
    _mm256_store_pd(a, v);
    return std::max(std::max(a[0], a[1]), std::max(a[2], a[3]));
  };
  TileC c;
  c.obj = hsum(obj);
  c.neg_lr = hsum(neg_lr);
  c.ratio = hsum(ratio);
  c.weight = hsum(weight);
  c.kl = hsum(kl);
  c.ent = hsum(ent);
  c.clip = double(clip);
  c.low = double(low);
  c.high = double(high);
  c.dual = double(dualn);
  c.rmin = hmin(rmin);
  c.rmax = hmax(rmax);
  if (vec_end < tile.end) {
    TileC tail;
    TokenTileScalar(p, Tile{tile.seq, vec_end, tile.end}, q, &tail);
    c.obj += tail.obj; c.neg_lr += tail.neg_lr; c.ratio += tail.ratio; c.weight += tail.weight;
    c.kl += tail.kl; c.ent += tail.ent;
    c.clip += tail.clip; c.low += tail.low; c.high += tail.high; c.dual += tail.dual;
    c.rmin = std::min(c.rmin, tail.rmin);
    c.rmax = std::max(c.rmax, tail.rmax);
  }
  *out = c;
}
#undef RLK_CMP

}  // namespace

Status PolicyLoss(const PolicyLossParams& p) {
  const int64_t B = p.num_seqs, N = p.num_tokens;
  const bool packed = p.cu_seqlens != nullptr;
  if (packed) {
    bool ok = p.cu_seqlens[0] == 0 && int64_t(p.cu_seqlens[B]) == N;
    for (int64_t i = 0; ok && i < B; ++i) ok = p.cu_seqlens[i] <= p.cu_seqlens[i + 1];
    if (!ok) return Status{Status::kOutOfRange, "cuSeqlens must start at 0, never decrease and end at the number of tokens"};
  } else if (B * p.seq_len != N) {
    return Status{Status::kInvalidArgument, "B * T must equal the number of tokens"};
  }
  auto seq_begin = [&](int64_t i) { return packed ? int64_t(p.cu_seqlens[i]) : i * p.seq_len; };
  auto seq_end = [&](int64_t i) { return packed ? int64_t(p.cu_seqlens[i + 1]) : (i + 1) * p.seq_len; };

  std::vector<Tile> tiles;
  std::vector<TileA> ta;
  std::vector<TileC> tc;
  std::vector<SeqInfo> seqs;
  try {
    int64_t count = 0;
    for (int64_t i = 0; i < B; ++i) count += (seq_end(i) - seq_begin(i) + kTile - 1) / kTile;
    tiles.reserve(size_t(count));
    for (int64_t i = 0; i < B; ++i)
      for (int64_t b = seq_begin(i); b < seq_end(i); b += kTile) tiles.push_back({i, b, std::min(b + kTile, seq_end(i))});
    ta.resize(tiles.size());
    tc.resize(tiles.size());
    seqs.resize(size_t(B));
  } catch (const std::bad_alloc&) {
    return Status{Status::kOutOfMemory, "out of host memory for per-sequence partials"};
  }
  const int64_t num_tiles = int64_t(tiles.size());
  const int64_t grain = std::max<int64_t>(1, num_tiles > 0 ? (1 << 15) * num_tiles / std::max<int64_t>(N, 1) : 1);

  const bool tis = p.tis_level != kTisNone;
  const bool tis_token_mask = p.tis_level == kTisToken && p.tis_mode == kTisMask;
  const bool gspo = p.mode == kPolicyGspo;
  auto masked = [&](int64_t t) { return p.mask == nullptr || p.mask[t] != 0; };

  // ---- A: per-tile partials for the per-sequence decisions.
  {
    ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
      for (int64_t k = tb; k < te; ++k) {
        TileA a;
        if (!tis && !gspo) {  // only the counts are needed
          int64_t count = 0;
          const Tile& tile = tiles[size_t(k)];
          if (p.mask) {
            for (int64_t t = tile.begin; t < tile.end; ++t) count += p.mask[t] != 0;
          } else {
            count = tile.end - tile.begin;
          }
          a.n0 = a.nk = double(count);
          ta[size_t(k)] = a;
          continue;
        }
        for (int64_t t = tiles[size_t(k)].begin; t < tiles[size_t(k)].end; ++t) {
          if (!masked(t)) continue;
          a.n0 += 1;
          bool keep = true;
          if (tis) {
            const double x = double(p.old_logprobs[t]) - double(p.rollout_logprobs[t]);
            if (tis_token_mask) {
              double w;
              keep = TokenRolloutWeight<double>(kTisMask, x, p.tis_lower, p.tis_upper, &w);
            }
            a.sum_x += x;
            a.min_x = std::min(a.min_x, x);
          }
          if (!keep) continue;
          a.nk += 1;
          if (gspo) a.sum_d += double(p.logprobs[t]) - double(p.old_logprobs[t]);
        }
        ta[size_t(k)] = a;
      }
    });
  }

  // ---- B: per-sequence decisions and denominators, serially in order.
  std::vector<double> n_kept;
  try {
    n_kept.assign(size_t(B), 0.0);
  } catch (const std::bad_alloc&) {
    return Status{Status::kOutOfMemory, "out of host memory for per-sequence partials"};
  }
  double vetoed = 0, tokens = 0, sequences = 0, longest = 0;
  {
    size_t k = 0;
    for (int64_t i = 0; i < B; ++i) {
      TileA s;
      for (; k < tiles.size() && tiles[k].seq == i; ++k) {
        const TileA& a = ta[k];
        s.n0 += a.n0;
        s.nk += a.nk;
        s.sum_d += a.sum_d;
        s.sum_x += a.sum_x;
        s.min_x = std::min(s.min_x, a.min_x);
      }
      SeqInfo& q = seqs[size_t(i)];
      longest = std::max(longest, double(seq_end(i) - seq_begin(i)));
      if (p.use_veto && s.n0 > 0 && s.min_x < p.log_veto) {
        q.rejected = true;
        vetoed += 1;
      }
      if (p.tis_level == kTisSequence || p.tis_level == kTisGeometric) {
        double lw = p.tis_level == kTisSequence ? s.sum_x : (s.n0 > 0 ? s.sum_x / s.n0 : 0.0);
        if (!SequenceRolloutWeight<double>(p.tis_mode, lw, p.tis_lower, p.tis_upper, &q.weight)) q.rejected = true;
      }
      if (gspo && s.nk > 0) q.gspo_s = GspoRatio<double>(s.sum_d / s.nk, &q.gspo_grad);
      double n = q.rejected ? 0.0 : s.nk;
      n_kept[size_t(i)] = n;
      tokens += n;
      if (n > 0) sequences += 1;
    }
  }
  const double tok_den = p.token_count > 0 ? p.token_count : tokens;
  const double seq_den = p.sequence_count > 0 ? p.sequence_count : sequences;
  const double scale = p.loss_scale > 0 ? p.loss_scale : (packed ? longest : double(p.seq_len));
  for (int64_t i = 0; i < B; ++i) {
    double n = n_kept[size_t(i)];
    double c = 0;
    if (n > 0) {
      switch (p.aggregation) {
        case kAggTokenMean: c = tok_den > 0 ? p.dp_size / tok_den : 0; break;
        case kAggSeqMeanTokenSum: c = seq_den > 0 ? p.dp_size / seq_den : 0; break;
        case kAggSeqMeanTokenMean: c = seq_den > 0 ? p.dp_size / (seq_den * n) : 0; break;
        default: c = scale > 0 ? 1.0 / scale : 0; break;
      }
    }
    seqs[size_t(i)].coef = c;
  }

  // ---- C: per-token loss, gradient and stats.
  // Token-level rejection keeps the scalar pass: its keep decisions must match phase A's.
  const simd::IsaKind isa = tis_token_mask ? simd::IsaKind::kBaseline : simd::Isa();
  ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
    for (int64_t k = tb; k < te; ++k) {
      const Tile& tile = tiles[size_t(k)];
      const SeqInfo& q = seqs[size_t(tile.seq)];
      if (isa == simd::IsaKind::kAvx512) TokenTileAvx512(p, tile, q, &tc[size_t(k)]);
      else if (isa == simd::IsaKind::kAvx2) TokenTileAvx2(p, tile, q, &tc[size_t(k)]);
      else TokenTileScalar(p, tile, q, &tc[size_t(k)]);
    }
  });

  // ---- D: combine the tiles in order.
  TileC s;
  double loss = 0;
  for (size_t k = 0; k < tiles.size(); ++k) {
    const TileC& c = tc[k];
    loss += seqs[size_t(tiles[k].seq)].coef * c.obj;
    s.clip += c.clip; s.low += c.low; s.high += c.high; s.dual += c.dual;
    s.neg_lr += c.neg_lr; s.ratio += c.ratio; s.weight += c.weight; s.kl += c.kl; s.ent += c.ent;
    s.rmin = std::min(s.rmin, c.rmin);
    s.rmax = std::max(s.rmax, c.rmax);
  }
  *p.loss = float(loss);
  float* st = p.stats;
  for (int k = 0; k < kPolicyStatCount; ++k) st[k] = 0.f;
  if (tokens > 0) {
    const double inv = 1.0 / tokens;
    st[kStatClipFraction] = float(s.clip * inv);
    st[kStatClipFractionLow] = float(s.low * inv);
    st[kStatClipFractionHigh] = float(s.high * inv);
    st[kStatDualClipFraction] = float(s.dual * inv);
    st[kStatPpoKl] = float(s.neg_lr * inv);
    st[kStatRatioMean] = float(s.ratio * inv);
    st[kStatRatioMin] = float(s.rmin);
    st[kStatRatioMax] = float(s.rmax);
    st[kStatIsWeightMean] = float(s.weight * inv);
    st[kStatKlMean] = float(s.kl * inv);
    st[kStatEntropyMean] = float(s.ent * inv);
  }
  st[kStatVetoedSequences] = float(vetoed);
  st[kStatKeptTokens] = float(tokens);
  st[kStatSequences] = float(sequences);
  return Status::Ok();
}

}  // namespace rlk::cpu
