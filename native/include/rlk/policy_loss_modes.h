// The policy-loss registry (LOSSES.md section 2; verl's POLICY_LOSS_REGISTRY
// on the Python side): one small entry per mode, shared by the CPU (F =
// double, double lanes in its sequence pre-pass, float lanes in its token
// pass) and CUDA (F = float) machinery, which owns everything else
// (rollout correction, rejection, off-policy mask, aggregation, the KL and
// entropy terms, stats, reductions). Adding a mode is one entry here, one
// line in PolicyModeDispatch below, its option names in src/policy_loss.ts
// and its test.
//
// An entry is a struct with
//   kSeqSums           how many per-sequence sums its pre-pass needs (0: a
//                      token-local mode, no pre-pass);
//   kCov               1: needs the batch means of A and logp over the kept
//                      tokens and a selection of tokens (clip-cov, kl-cov);
//   kFoldsIs           1: the rollout IS weight enters the sequence state
//                      instead of multiplying the token loss (geo-mean, vespo);
//   SeqTerms(c, t, w, o, out[kSeqSums])  a kept token's terms of those sums
//                      (w its IS weight after normalisation, o its off-policy
//                      mask);
//   SeqFinal(c, sums, n, is, q)  the sequence state from the sums over its n
//                      kept tokens (is: whether IS weights are on);
//   Token(c, t, q, out)  the token's loss, its derivatives and its stat flags.
// The machinery forms, for a kept token of sequence i with aggregation
// weight a_i, IS weight w (1 for kFoldsIs modes) and off-policy mask o:
//   loss += a_i w o loss_t,   grad_t = a_i (w o grad + grad_seq).
// `grad` is the token's own derivative d loss_t / d logp_t; `grad_seq` the
// part that reaches it through its sequence's state (already summed over the
// sequence's tokens and scaled by the sequence, so only a_i multiplies it).
#pragma once
#include <cmath>
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

// Token-pass code: on the CPU it runs on lane types inside a pass compiled
// for one ISA (cpu_lanes.h), so it is always inlined there; an out-of-line
// copy would be compiled for the baseline target, which the lanes' AVX-512
// builtins refuse (GCC emitted one for dppo-kl once its Log grew).
#if defined(__CUDACC__)
#define RLK_TOKEN RLK_HD
#else
#define RLK_TOKEN inline __attribute__((always_inline))
#endif

// Mode codes; src/policy_loss.ts maps the option names onto them (same order).
enum PolicyLossMode : int32_t {
  kPolicyVanilla = 0,
  kPolicyGspo = 1,
  kPolicySapo = 2,
  kPolicyGpg = 3,
  kPolicyCispo = 4,
  kPolicyGeoMean = 5,
  kPolicyDppoTv = 6,
  kPolicyDppoKl = 7,
  kPolicyDro = 8,
  kPolicyClipCov = 9,
  kPolicyKlCov = 10,
  kPolicyReinforce = 11,
  kPolicyLuspo = 12,
  kPolicyVespo = 13,
  kPolicyNumModes = 14,
};

namespace policy_detail {
#if defined(__CUDACC__)
RLK_HD float Exp(float x) { return expf(x); }
RLK_HD double Exp(double x) { return ::exp(x); }
RLK_HD float Log(float x) { return logf(x); }
RLK_HD double Log(double x) { return ::log(x); }
RLK_HD float Expm1(float x) { return expm1f(x); }
RLK_HD double Expm1(double x) { return ::expm1(x); }
RLK_HD bool Finite(float x) { return isfinite(x); }
RLK_HD bool Finite(double x) { return isfinite(x); }
#else
inline float Exp(float x) { return std::exp(x); }
inline double Exp(double x) { return std::exp(x); }
inline float Log(float x) { return std::log(x); }
inline double Log(double x) { return std::log(x); }
inline float Expm1(float x) { return std::expm1(x); }
inline double Expm1(double x) { return std::expm1(x); }
inline bool Finite(float x) { return std::isfinite(x); }
inline bool Finite(double x) { return std::isfinite(x); }
#endif
// m ? a : b. Entries select with Sel, combine conditions with & | ! and call
// Exp / Log / Expm1 / Finite / Min / Max / Clamp unqualified, so that they also run
// on the CPU's lane types (cpu_lanes.h), whose overloads ADL finds.
template <class F> RLK_TOKEN F Sel(bool m, const F& a, const F& b) { return m ? a : b; }
// std::min/max argument order: a NaN in `v` propagates (CUDA's fminf would hide it).
template <class F> RLK_TOKEN F Min(const F& v, const F& hi) { return Sel(hi < v, hi, v); }
template <class F> RLK_TOKEN F Max(const F& v, const F& lo) { return Sel(lo > v, lo, v); }
template <class F> RLK_TOKEN F Clamp(const F& v, const F& lo, const F& hi) { return Sel(v < lo, lo, Sel(v > hi, hi, v)); }
}  // namespace policy_detail

// The condition type of F: bool for float / double, a lane mask for lanes.
template <class F> using MaskOf = decltype(F() < F());

// DESIGN 3.3's clamp of log-ratios and rollout log-weights to [-20, 20].
template <class F>
RLK_TOKEN F ClampLogRatio(const F& x) {
  using namespace policy_detail;
  return Clamp(x, F(-20), F(20));
}

// Mode constants, from PolicyLossParams, in the machinery's precision.
template <class F>
struct ModeConsts {
  F lo, hi;          // ratio bounds 1 - clipLow, 1 + clipHigh
  F cl, ch;          // clipLow, clipHigh themselves (geo-mean, dppo thresholds)
  F dual_c;          // dual clip (vanilla)
  bool dual;
  F cap;             // vanilla ratioCap; dppo R
  bool has_cap;
  F tau_pos, tau_neg;                          // sapo
  F beta;                                      // dro
  F cov_lb, cov_ub;                            // clip-cov
  F kappa;                                     // kl-cov ppoKlCoef
  F k_pos, lambda_pos, k_neg, lambda_neg;      // vespo
};

// What the machinery hands a token.
template <class F>
struct PolicyToken {
  F logp, old, A;
  F d;              // logp - old, unclamped
  MaskOf<F> sel{};  // selected (clip-cov, kl-cov)
  F d_lo = F(0);    // logp - old - d exactly (the rounding of d; 0 in double), pre-pass only
  F lw = F(0);      // ln of the IS weight after normalisation, pre-pass of kFoldsIs modes only
                    // (float machinery forms it in double: see VespoMode)
};

// A sequence's state from its pre-pass (1 and 0 for token-local modes).
template <class F>
struct SeqState {
  F s = F(1);      // sequence ratio (gspo, luspo, geo-mean), ln w_i (vespo)
  F ds = F(0);     // gspo: d s / d logp_t of the token form (s, or 0 past the clamp)
  F value = F(0);  // geo-mean: the sequence loss -G A s
  F gseq = F(0);   // the per-sequence gradient factor (luspo, geo-mean)
  F w = F(1);      // geo-mean: G_i; vespo: w_i
  F phi_pos = F(0), phi_neg = F(0);  // vespo: phi for A >= 0 and for A < 0
};

// A sequence state in another precision: float machinery finishes its
// sequences in double (vespo's phi is exponentially sensitive to ln w_i).
template <class T, class F>
RLK_HD SeqState<T> SeqStateAs(const SeqState<F>& q) {
  SeqState<T> r;
  r.s = T(q.s); r.ds = T(q.ds); r.value = T(q.value); r.gseq = T(q.gseq); r.w = T(q.w);
  r.phi_pos = T(q.phi_pos); r.phi_neg = T(q.phi_neg);
  return r;
}

// A token's loss, derivatives and stat flags (clipFraction, clipFractionLow,
// clipFractionHigh, dualClipFraction).
template <class F>
struct TokenTerm {
  F loss = F(0);
  F grad = F(0);       // d loss_t / d logp_t (times a w o)
  F grad_seq = F(0);   // through the sequence state (times a)
  F ratio = F(1);      // for the ratio stats
  MaskOf<F> clip{}, low{}, high{}, dual{};
};

// verl's clipped surrogate on ratio r (value), with dr its derivative with
// respect to logp: L1 = -A min(r, cap), L2 = -A clamp(r, lo, hi),
// L = max(L1, L2), then the dual clip min(L, -A c) where A < 0. torch's
// autograd: max passes the gradient to the larger argument (a tie inside
// [lo, hi] gives -A either way), clamp and min pass it only inside their
// bounds, so dL/dr = -A where L1 >= L2, r < cap and the dual clip is
// inactive, else 0.
template <class F>
RLK_TOKEN void ClippedSurrogate(const ModeConsts<F>& c, const F& A, const F& r, const F& dr, bool dual, bool cap, TokenTerm<F>* o) {
  using namespace policy_detail;
  using M = MaskOf<F>;
  const F rl = cap ? Min(r, c.cap) : r;
  const F l1 = -A * rl;
  const F l2 = -A * Clamp(r, c.lo, c.hi);
  F L = Sel(l1 > l2, l1, l2);  // NaN in either side stays NaN
  M live = l1 >= l2;
  if (cap) live = live & (r < c.cap);
  F g = Sel(live, -A, F(0));
  o->clip = l2 > l1;
  o->low = (r < c.lo) & (A < F(0));
  o->high = (r > c.hi) & (A > F(0));
  if (dual) {
    const F l3 = -A * c.dual_c;
    const M act = (A < F(0)) & (L > l3);
    L = Sel(act, l3, L);
    g = Sel(act, F(0), g);
    o->dual = act;
  }
  o->loss = L;
  o->grad = g * dr;
}

// The ratio of the token modes: r = exp(clamp(d, -20, 20)); the clamp passes
// the gradient inside its bounds (inclusive).
template <class F>
RLK_TOKEN F ClampedRatio(const F& d, F* dr) {
  using namespace policy_detail;
  const F r = Exp(ClampLogRatio(d));
  *dr = Sel((d >= F(-20)) & (d <= F(20)), r, F(0));
  return r;
}

// TRL's KL bias correction (use_bias_correction_kl): a token's KL value k and
// its derivative dk become k r and r dk + k dr, r the token's clamped ratio.
template <class F>
RLK_TOKEN void KlBiasCorrection(const F& d, F* k, F* dk) {
  F dr;
  const F r = ClampedRatio(d, &dr);
  *dk = r * *dk + *k * dr;
  *k = *k * r;
}

// ---- token-local modes ------------------------------------------------------
// SeqTerms runs once per token in the pre-pass and Token once per token in
// the token pass, both also on the CPU's lanes (select with Sel, no ?: on F);
// SeqFinal runs once per sequence, in scalar F.

// vanilla (+ ratioCap: TRL's delta, INTELLECT-2), verl compute_policy_loss_vanilla.
struct VanillaMode {
  static constexpr int kSeqSums = 0, kCov = 0, kFoldsIs = 0;
  template <class F> RLK_TOKEN static void SeqTerms(const ModeConsts<F>&, const PolicyToken<F>&, F, F, F*) {}
  template <class F> RLK_HD static void SeqFinal(const ModeConsts<F>&, const F*, F, bool, SeqState<F>*) {}
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    F dr;
    o->ratio = ClampedRatio(t.d, &dr);
    ClippedSurrogate(c, t.A, o->ratio, dr, c.dual, c.has_cap, o);
  }
};

// sapo (verl compute_policy_loss_sapo, TRL sapo): l = -A (4/tau) sigmoid(tau (r - 1)).
struct SapoMode : VanillaMode {
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    using namespace policy_detail;
    F dr;
    const F r = ClampedRatio(t.d, &dr);
    const F tau = Sel(t.A > F(0), c.tau_pos, c.tau_neg);
    const F e = Exp(-tau * (r - F(1)));
    const F sg = F(1) / (F(1) + e);
    // 1 - sg as e sg where sg is near 1: float32's 1 - sg there keeps a few bits
    // (7% off at sg = 1 - 1e-7, seed 237676829 on cuda); e may be inf where sg < 0.5.
    const F sg1 = Sel(sg < F(0.5), F(1) - sg, e * sg);
    o->ratio = r;
    o->loss = -t.A * (F(4) / tau) * sg;
    o->grad = -t.A * F(4) * sg * sg1 * dr;
  }
};

// gpg (verl compute_policy_loss_gpg) and reinforce (verl bypass mode): l = -A logp.
struct GpgMode : VanillaMode {
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>&, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    F dr;
    o->ratio = ClampedRatio(t.d, &dr);
    o->loss = -t.A * t.logp;
    o->grad = -t.A;
  }
};

// cispo (verl compute_policy_loss_cispo, TRL cispo): l = -sg(clip(r)) A logp.
struct CispoMode : VanillaMode {
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    using namespace policy_detail;
    F dr;
    const F r = ClampedRatio(t.d, &dr);
    const F rc = Clamp(r, c.lo, c.hi);
    o->ratio = r;
    o->loss = -rc * t.A * t.logp;
    o->grad = -rc * t.A;
    o->clip = (r < c.lo) | (r > c.hi);
    o->low = (r < c.lo) & (t.A < F(0));
    o->high = (r > c.hi) & (t.A > F(0));
  }
};

// dppo-tv / dppo-kl (verl compute_policy_loss_dppo_tv / _kl): a trust region
// on the probabilities; l = -A sg(min(r, R)) logp sg(valid).
template <bool kKl>
struct DppoMode : VanillaMode {
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    using namespace policy_detail;
    using M = MaskOf<F>;
    F dr;
    const F r = ClampedRatio(t.d, &dr);
    const F p = Exp(t.logp), po = Exp(t.old);
    const M pos = t.A > F(0);
    M valid;
    if (kKl) {
      // 1 - p as -(e^logp - 1): in float32, 1 - Exp(logp) keeps only ~6e-8 / (1 - p) of
      // its value (3e-4 at p = 0.9998), which moved b by 1e-4 of clipHigh and flipped
      // tokens the float64 formula keeps.
      const F omp = -Expm1(t.logp), omo = -Expm1(t.old);
      const F b = po * (t.old - t.logp) + omo * Log((omo + F(1e-8)) / (omp + F(1e-8)));
      valid = (pos & ((b <= c.ch) | (p <= po))) | ((!pos) & ((b <= c.cl) | (p >= po)));
    } else {
      valid = (pos & (p - po <= c.ch)) | ((!pos) & (p - po >= -c.cl));
    }
    const F rc = Min(r, c.cap);
    o->ratio = r;
    o->loss = Sel(valid, -t.A * rc * t.logp, F(0));
    o->grad = Sel(valid, -t.A * rc, F(0));
    o->clip = !valid;
    o->high = (!valid) & pos;
    o->low = (!valid) & (!pos);
    o->dual = valid & (r > c.cap);
  }
};

// dro (verl compute_policy_loss_dro): l = -(A logp - beta/2 (logp - old)^2).
struct DroMode : VanillaMode {
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    F dr;
    o->ratio = ClampedRatio(t.d, &dr);
    o->loss = -(t.A * t.logp - F(0.5) * c.beta * t.d * t.d);
    o->grad = -t.A + c.beta * t.d;
  }
};

// clip-cov (verl compute_policy_loss_clip_cov): the PPO surrogate on r = e^d
// (no clamp) without dual clip; selected tokens give 0 (still counted).
struct ClipCovMode : VanillaMode {
  static constexpr int kCov = 1;
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    using namespace policy_detail;
    const F r = Exp(t.d);
    ClippedSurrogate(c, t.A, r, r, false, false, o);
    o->ratio = r;
    o->clip = t.sel;
    o->loss = Sel(t.sel, F(0), o->loss);
    o->grad = Sel(t.sel, F(0), o->grad);
  }
  // A candidate for selection: lb < cov < ub and not clipped (the band
  // first: it rules out most tokens without an exp).
  template <class F>
  RLK_HD static bool Candidate(const ModeConsts<F>& c, const PolicyToken<F>& t, F cov) {
    using namespace policy_detail;
    if (!(cov > c.cov_lb && cov < c.cov_ub)) return false;
    const F r = Exp(t.d);
    const F l1 = -t.A * r, l2 = -t.A * Clamp(r, c.lo, c.hi);
    return !(l2 > l1);
  }
};

// kl-cov (verl compute_policy_loss_kl_cov): l = -A r + [sel] kappa |d|, r = e^d.
struct KlCovMode : VanillaMode {
  static constexpr int kCov = 1;
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>&, TokenTerm<F>* o) {
    using namespace policy_detail;
    const F r = Exp(t.d);
    o->ratio = r;
    const F sgn = Sel(t.d > F(0), F(1), Sel(t.d < F(0), F(-1), F(0)));
    o->loss = -t.A * r + Sel(t.sel, c.kappa * Sel(t.d < F(0), -t.d, t.d), F(0));
    o->grad = -t.A * r + Sel(t.sel, c.kappa * sgn, F(0));
    o->clip = t.sel;
  }
};

// ---- sequence-level modes ---------------------------------------------------

// gspo (DESIGN 3.3): s = exp(min(mean d, 10)), the token form's derivative s.
struct GspoMode {
  static constexpr int kSeqSums = 1, kCov = 0, kFoldsIs = 0;
  template <class F>
  RLK_TOKEN static void SeqTerms(const ModeConsts<F>&, const PolicyToken<F>& t, F, F, F* out) { out[0] = t.d; }
  template <class F>
  RLK_HD static void SeqFinal(const ModeConsts<F>&, const F* sums, F n, bool, SeqState<F>* q) {
    if (!(n > F(0))) return;
    const F mean = sums[0] / n;
    q->s = policy_detail::Exp(mean > F(10) ? F(10) : mean);
    q->ds = mean <= F(10) ? q->s : F(0);
  }
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>& q, TokenTerm<F>* o) {
    o->ratio = q.s;
    ClippedSurrogate(c, t.A, q.s, q.ds, false, false, o);
  }
};

// luspo (TRL luspo): GSPO's ratio with the gradient through the mean:
// grad_t = (s/n)[mean <= 10] sum_u w_u o_u dl_u/ds, dl_u/ds = -A_u unless
// the clipped side wins (L2 > L1: s > hi with A > 0, s < lo with A < 0).
// sums: [sum d, sum w o A over A > 0, over A < 0].
struct LuspoMode : GspoMode {
  static constexpr int kSeqSums = 3;
  template <class F>
  RLK_TOKEN static void SeqTerms(const ModeConsts<F>&, const PolicyToken<F>& t, F w, F o, F* out) {
    using namespace policy_detail;
    const F woa = w * o * t.A;
    out[0] = t.d;
    out[1] = Sel(t.A > F(0), woa, F(0));
    out[2] = Sel(t.A < F(0), woa, F(0));
  }
  template <class F>
  RLK_HD static void SeqFinal(const ModeConsts<F>& c, const F* sums, F n, bool is, SeqState<F>* q) {
    GspoMode::SeqFinal(c, sums, n, is, q);
    if (!(n > F(0))) return;
    const F s = q->s;
    // Which tokens' L1 wins, as ClippedSurrogate decides: above hi only A < 0,
    // below lo only A > 0, inside (bounds included) every token.
    F sum;
    if (s > c.hi) sum = -sums[2];
    else if (s < c.lo) sum = -sums[1];
    else sum = -(sums[1] + sums[2]);
    q->gseq = q->ds / n * sum;
  }
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>& q, TokenTerm<F>* o) {
    o->ratio = q.s;
    ClippedSurrogate(c, t.A, q.s, F(0), false, false, o);
    o->grad_seq = q.gseq;
  }
};

// geo-mean (verl compute_policy_loss_geo_mean, GMPO): s_i = exp(mean of the
// sign-clipped log-ratios), every kept token carries L_i = -G_i Abar_i s_i.
// sums: [sum l~, sum A, sum ln(w + 1e-10), sum o].
struct GeoMeanMode {
  static constexpr int kSeqSums = 4, kCov = 0, kFoldsIs = 1;
  template <class F>
  RLK_TOKEN static F ClippedLog(const ModeConsts<F>& c, const F& A, const F& d) {
    using namespace policy_detail;
    return Sel(A > F(0), Sel(d < c.ch, d, c.ch), Sel(A < F(0), Sel(d > -c.cl, d, -c.cl), F(0)));
  }
  template <class F>
  RLK_TOKEN static void SeqTerms(const ModeConsts<F>& c, const PolicyToken<F>& t, F w, F o, F* out) {
    using namespace policy_detail;
    out[0] = ClippedLog(c, t.A, t.d);
    out[1] = t.A;
    out[2] = Log(w + F(1e-10));
    out[3] = o;
  }
  template <class F>
  RLK_HD static void SeqFinal(const ModeConsts<F>&, const F* sums, F n, bool is, SeqState<F>* q) {
    if (!(n > F(0))) return;
    const F s = policy_detail::Exp(sums[0] / n), abar = sums[1] / n;
    const F G = is ? policy_detail::Exp(sums[2] / n) : F(1);
    q->s = s;
    q->w = G;
    q->value = -G * abar * s;
    q->gseq = sums[3] * G * (-abar * s) / n;
  }
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>& c, const PolicyToken<F>& t, const SeqState<F>& q, TokenTerm<F>* o) {
    using namespace policy_detail;
    using M = MaskOf<F>;
    o->ratio = q.s;
    o->loss = q.value;
    const M pos = t.A > F(0), neg = t.A < F(0);
    const M hi = pos & (t.d > c.ch), lo = neg & (t.d < -c.cl);
    const M live = (pos & (t.d <= c.ch)) | (neg & (t.d >= -c.cl));
    o->grad_seq = Sel(live, q.gseq, F(0));
    o->clip = hi | lo;
    o->low = lo;
    o->high = hi;
  }
};

// vespo (TRL vespo, get_gamma_weights): ln w_i = clamp(sum dbar + sum
// clamp(ln w^IS), ln 1e-8, 20); phi = exp(lambda + k ln w - lambda w);
// l = -sg(phi) A logp. sums: [sum dbar, sum clamp(ln w^IS, ln 1e-8, 20), the
// rounding of the dbar inside the clamp]. phi is exponentially sensitive to
// ln w (relative error |k - lambda w| times its absolute error), so float
// machinery carries the rounding of logp - old into the sum, forms ln w^IS in
// double (a float weight, its exp and the normaliser's rounding cost ~1e-7 of
// ln w_i over a sequence) and finishes the sequence in double; phi depends
// only on the sequence and the sign of A, so both values are formed once per
// sequence.
struct VespoMode {
  static constexpr int kSeqSums = 3, kCov = 0, kFoldsIs = 1;
  template <class F>
  RLK_TOKEN static void SeqTerms(const ModeConsts<F>&, const PolicyToken<F>& t, F, F, F* out) {
    using namespace policy_detail;
    out[0] = ClampLogRatio(t.d);
    out[1] = Clamp(t.lw, F(-18.420680743952367), F(20));
    out[2] = Sel((t.d > F(-20)) & (t.d < F(20)), t.d_lo, F(0));
  }
  template <class F>
  RLK_HD static void SeqFinal(const ModeConsts<F>& c, const F* sums, F n, bool is, SeqState<F>* q) {
    using namespace policy_detail;
    const F lw = Clamp(sums[0] + sums[2] + (is ? sums[1] : F(0)), F(-18.420680743952367), F(20));
    q->s = lw;
    q->w = Exp(lw);
    const F lam_pos = Max(c.lambda_pos, F(1e-4)), lam_neg = Max(c.lambda_neg, F(1e-4));
    const F phi_pos = Exp(lam_pos + c.k_pos * lw - lam_pos * q->w);
    const F phi_neg = Exp(lam_neg + c.k_neg * lw - lam_neg * q->w);
    q->phi_pos = Sel(Finite(phi_pos), phi_pos, F(0));
    q->phi_neg = Sel(Finite(phi_neg), phi_neg, F(0));
    (void)n;
  }
  template <class F>
  RLK_TOKEN static void Token(const ModeConsts<F>&, const PolicyToken<F>& t, const SeqState<F>& q, TokenTerm<F>* o) {
    using namespace policy_detail;
    F dr;
    o->ratio = ClampedRatio(t.d, &dr);
    const F phi = Sel(t.A >= F(0), q.phi_pos, q.phi_neg);
    o->loss = -phi * t.A * t.logp;
    o->grad = -phi * t.A;
  }
};

// The registry: calls fn.template operator()<Entry>() for the mode's entry,
// so a machinery instantiates its passes once per mode (no switch per token).
// Host code: the entry picks a kernel or a templated CPU pass.
template <class Fn>
inline auto PolicyModeDispatch(int32_t mode, Fn&& fn) -> decltype(fn.template operator()<VanillaMode>()) {
  switch (mode) {
    case kPolicyGspo: return fn.template operator()<GspoMode>();
    case kPolicySapo: return fn.template operator()<SapoMode>();
    case kPolicyGpg:
    case kPolicyReinforce: return fn.template operator()<GpgMode>();
    case kPolicyCispo: return fn.template operator()<CispoMode>();
    case kPolicyGeoMean: return fn.template operator()<GeoMeanMode>();
    case kPolicyDppoTv: return fn.template operator()<DppoMode<false>>();
    case kPolicyDppoKl: return fn.template operator()<DppoMode<true>>();
    case kPolicyDro: return fn.template operator()<DroMode>();
    case kPolicyClipCov: return fn.template operator()<ClipCovMode>();
    case kPolicyKlCov: return fn.template operator()<KlCovMode>();
    case kPolicyLuspo: return fn.template operator()<LuspoMode>();
    case kPolicyVespo: return fn.template operator()<VespoMode>();
    default: return fn.template operator()<VanillaMode>();
  }
}

// clip-cov's selection key (LOSSES.md): splitmix64's finaliser of
// i 2^32 + j + (seed + 1) 0x9E3779B97F4A7C15, all mod 2^64. Distinct for
// distinct (i, j) with j < 2^32 (the finaliser is a bijection).
RLK_HD uint64_t ClipCovKey(uint64_t seed, uint64_t i, uint64_t j) {
  uint64_t z = (i << 32) + j + (seed + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// kl-cov's order as one 64-bit key, smallest first: larger cov first, then
// the smaller flat index (t < 2^32). cov's float bits are made monotone
// (flip all bits of negatives, the sign bit of positives), then inverted.
// Assumes t < 2^32 (the binding refuses more tokens for kl-cov).
RLK_HD uint64_t KlCovKey(float cov, uint64_t t) {
  cov += 0.0f;  // -0 ties with +0 (A = 0 gives (0 - 0) * x = -0 for x < 0)
  uint32_t u;
  memcpy(&u, &cov, 4);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t(~u) << 32) | (t & 0xffffffffull);
}

}  // namespace rlk
