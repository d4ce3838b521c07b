// CPU policy loss: the phases of policy_loss.h over fixed tiles of at most
// kTile tokens of one sequence each (a long sequence is several tiles, so one
// 1M-token sequence still uses every thread). Each pass runs only when the
// options need it: the plain objective (vanilla, token-mean, KL) is a mask
// count (none without a mask) and the token pass.
// Tiles depend only on the shapes, partial sums are kept per tile and
// combined in tile order, so results are bitwise the same for any thread
// count. Every sum is in double (the loss is a sum whose terms cancel,
// advantages having both signs), and so are the sequence pre-pass and the
// scalar passes; the vector token pass forms each token's terms in float32,
// as CUDA does (DESIGN 4), on twice the lanes. Outputs are float. The token
// pass is instantiated once per registry entry and per feature set, so its
// inner loop carries no per-token switch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlk/cpu_lanes.h"
#include "rlk/cpu_simd.h"
#include "rlk/policy_loss.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

constexpr int64_t kTile = 8192;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Tile {
  int64_t seq, begin, end;
};

// Per-sequence results of phases D and S.
struct Seq {
  int64_t begin = 0;
  bool rejected = false;
  double n = 0;          // kept tokens
  double w_seq = 1;      // sequence IS weight after normalisation
  double kl_off = 0;     // off-policy KL
  double coef = 0;       // aggregation weight a_i
  SeqState<double> st;   // the mode's sequence state
};

// Token pass partials of one tile (sums over kept tokens).
struct TileT {
  double obj = 0;  // sum of w o l + kl_coef k - ent_coef H (before a_i)
  double clip = 0, low = 0, high = 0, dual = 0, off = 0;
  double neg_lr = 0, ratio = 0, weight = 0, kl = 0, ent = 0;
  double rmin = kInf, rmax = -kInf;
};

struct Ctx {
  const PolicyLossParams& p;
  const std::vector<Tile>& tiles;
  std::vector<Seq>& seqs;
  const uint8_t* sel;  // [N] selection (covariance modes), else nullptr
  double norm;         // 1 / mu of the IS weights (1 without normalisation)
  bool rollout;        // RolloutActive
};

// Nonzero bytes among n, eight at a time (the byte loop cost 7 % of a plain
// vanilla call): a byte's top bit after ((x & 0x7f..) + 0x7f..) | x says it
// is nonzero, and the multiply adds the eight bits into the top byte.
inline int64_t CountNonzero(const uint8_t* m, int64_t n) {
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full, kOnes = 0x0101010101010101ull;
  int64_t c = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    std::memcpy(&x, m + i, 8);
    const uint64_t top = ((((x & kLow7) + kLow7) | x) >> 7) & kOnes;
    c += int64_t((top * kOnes) >> 56);
  }
  for (; i < n; ++i) c += m[i] != 0;
  return c;
}

inline bool Masked(const PolicyLossParams& p, int64_t t) { return p.mask == nullptr || p.mask[t] != 0; }

// A masked token's keep decision, final IS weight and off-policy mask, the
// same in every pass.
inline bool KeepToken(const Ctx& c, const Seq& q, int64_t t, double* w, double* o, double A) {
  *w = 1.0;
  *o = 1.0;
  if (q.rejected) return false;
  if (!c.rollout) return true;
  const PolicyLossParams& p = c.p;
  double wt;
  if (!RolloutToken<double>(p, RolloutLogRatio<double>(p, t), &wt)) return false;
  if (p.tis_level == kTisToken) *w = wt * c.norm;
  else if (p.tis_level != kTisNone) *w = q.w_seq;
  if (p.off_policy && A < 0 && q.kl_off > p.off_policy_delta) *o = 0.0;
  return true;
}

inline double Advantage(const PolicyLossParams& p, const Tile& tile, int64_t t) {
  return double(p.advantages[p.adv_per_sequence ? tile.seq : t]);
}

// ---- phase S: the mode's per-sequence sums, and the batch sums of A and
// logp, of tokens [begin, end) of a tile, added to sums[] and cov[] (scalar:
// any CPU, and every rollout option).
template <class Mode>
void SeqPass(const Ctx& c, const ModeConsts<double>& mc, const Tile& tile, int64_t begin, int64_t end, double* sums, double* cov) {
  const PolicyLossParams& p = c.p;
  const Seq& q = c.seqs[size_t(tile.seq)];
  constexpr int S = Mode::kSeqSums > 0 ? Mode::kSeqSums : 1;
  for (int64_t t = begin; t < end; ++t) {
    if (!Masked(p, t)) continue;
    const double A = Advantage(p, tile, t);
    double w, o;
    if (!KeepToken(c, q, t, &w, &o, A)) continue;
    PolicyToken<double> tok{double(p.logprobs[t]), double(p.old_logprobs[t]), A, 0, false};
    tok.d = tok.logp - tok.old;
    if (Mode::kFoldsIs) tok.lw = std::log(w);
    if (Mode::kSeqSums > 0) {
      double v[S];
      Mode::SeqTerms(mc, tok, w, o, v);
      for (int j = 0; j < S; ++j) sums[j] += v[j];
    }
    if (Mode::kCov) {
      cov[0] += A;
      cov[1] += tok.logp;
    }
  }
}

// The mode constants on lanes (double lanes of the sequence pre-pass, float
// lanes of the token pass).
template <class L>
RLK_LANE ModeConsts<L> LaneConsts(const ModeConsts<double>& md) {
  ModeConsts<L> mc;
  mc.lo = md.lo; mc.hi = md.hi; mc.cl = md.cl; mc.ch = md.ch; mc.dual_c = md.dual_c; mc.dual = md.dual;
  mc.cap = md.cap; mc.has_cap = md.has_cap; mc.tau_pos = md.tau_pos; mc.tau_neg = md.tau_neg; mc.beta = md.beta;
  mc.cov_lb = md.cov_lb; mc.cov_ub = md.cov_ub; mc.kappa = md.kappa;
  mc.k_pos = md.k_pos; mc.lambda_pos = md.lambda_pos; mc.k_neg = md.k_neg; mc.lambda_neg = md.lambda_neg;
  return mc;
}

// N floats as lanes of L: widened to double lanes, or float lanes as they are.
template <class L>
RLK_LANE L LoadLanes(const float* x) {
  if constexpr (std::is_same_v<L, lanes::Lanes<L::kN>>) return lanes::LoadF<L::kN>(x);
  else return lanes::LoadFl<L::kN>(x);
}

// Tokens t .. t + N - 1 on lanes (seq_a: the sequence's advantage when
// advantages are per sequence).
template <class L>
RLK_LANE PolicyToken<L> LoadTokenLanes(const PolicyLossParams& p, int64_t t, const L& seq_a) {
  PolicyToken<L> tok;
  tok.logp = LoadLanes<L>(p.logprobs + t);
  tok.old = LoadLanes<L>(p.old_logprobs + t);
  tok.A = p.adv_per_sequence ? seq_a : LoadLanes<L>(p.advantages + t);
  tok.d = tok.logp - tok.old;
  return tok;
}

// Phase S on N double lanes, without a rollout option: every masked token
// is kept with w = o = 1 (ln w = 0). A scalar pass here cost as much as the
// token pass (geo-mean's sign-dependent clip was a branch a token, taken at
// random); its sums are formed per lane and added in a fixed order.
template <int N, class Mode>
RLK_LANE void SeqBodyLanes(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, double* sums, double* cov) {
  using L = lanes::Lanes<N>;
  using LM = lanes::LaneMask<N>;
  using lanes::Sel;
  const PolicyLossParams& p = c.p;
  constexpr int S = Mode::kSeqSums > 0 ? Mode::kSeqSums : 1;
  const ModeConsts<L> mc = LaneConsts<L>(md);
  const L one(1.0), zero(0.0);
  const L seq_a(p.adv_per_sequence ? double(p.advantages[tile.seq]) : 0.0);
  L acc[S], cov_a, cov_l;
  const int64_t vend = tile.begin + (tile.end - tile.begin) / N * N;
  for (int64_t t = tile.begin; t < vend; t += N) {
    if (p.mask) {
      uint64_t bytes = 0;
      std::memcpy(&bytes, p.mask + t, N);
      if (bytes == 0) continue;
    }
    const LM keep = p.mask ? lanes::LoadMask<N>(p.mask + t) : LM(true);
    PolicyToken<L> tok = LoadTokenLanes<L>(p, t, seq_a);
    if (Mode::kSeqSums > 0) {
      L v[S];
      Mode::SeqTerms(mc, tok, one, one, v);
      for (int j = 0; j < S; ++j) acc[j] += Sel(keep, v[j], zero);
    }
    if (Mode::kCov) {
      cov_a += Sel(keep, tok.A, zero);
      cov_l += Sel(keep, tok.logp, zero);
    }
  }
  for (int j = 0; j < S; ++j) sums[j] += lanes::HSum(acc[j]);
  cov[0] += lanes::HSum(cov_a);
  cov[1] += lanes::HSum(cov_l);
  SeqPass<Mode>(c, md, tile, vend, tile.end, sums, cov);
}

template <class Mode>
RLK_AVX2 __attribute__((flatten)) void SeqPassAvx2(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, double* sums, double* cov) {
  SeqBodyLanes<4, Mode>(c, md, tile, sums, cov);
}

template <class Mode>
RLK_AVX512 __attribute__((flatten, noinline)) void SeqPassAvx512(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, double* sums, double* cov) {
  SeqBodyLanes<8, Mode>(c, md, tile, sums, cov);
}

// Phase S of one tile: its sums[] and cov[] from zero.
template <class Mode>
void SeqTile(const Ctx& c, const ModeConsts<double>& md, simd::IsaKind isa, const Tile& tile, double* sums, double* cov) {
  constexpr int S = Mode::kSeqSums > 0 ? Mode::kSeqSums : 1;
  for (int j = 0; j < S; ++j) sums[j] = 0;
  cov[0] = cov[1] = 0;
  if (isa == simd::IsaKind::kAvx512) SeqPassAvx512<Mode>(c, md, tile, sums, cov);
  else if (isa == simd::IsaKind::kAvx2) SeqPassAvx2<Mode>(c, md, tile, sums, cov);
  else SeqPass<Mode>(c, md, tile, tile.begin, tile.end, sums, cov);
}

// ---- phase T: the token pass, scalar (any CPU, and every rollout option).
template <class Mode, bool kHasKl, bool kHasEnt>
void TokenPass(const Ctx& c, const ModeConsts<double>& mc, const Tile& tile, int64_t begin, int64_t end, TileT* out) {
  const PolicyLossParams& p = c.p;
  const Seq& q = c.seqs[size_t(tile.seq)];
  const bool stat_seq_w = p.mode == kPolicyGeoMean;
  const double klc = p.kl_coef, entc = p.entropy_coef;
  TileT r;
  for (int64_t t = begin; t < end; ++t) {
    const double A = Advantage(p, tile, t);
    double w, o;
    if (!Masked(p, t) || !KeepToken(c, q, t, &w, &o, A)) {
      p.grad[t] = 0.f;
      if (kHasEnt) p.grad_entropy[t] = 0.f;
      continue;
    }
    PolicyToken<double> tok{double(p.logprobs[t]), double(p.old_logprobs[t]), A, 0, c.sel != nullptr && c.sel[t] != 0};
    tok.d = tok.logp - tok.old;
    TokenTerm<double> term;
    Mode::Token(mc, tok, q.st, &term);
    const double wl = Mode::kFoldsIs ? 1.0 : w;
    double obj = wl * o * term.loss;
    double g = wl * o * term.grad + term.grad_seq;
    if (kHasKl) {
      double kv, kg;
      KlValueGrad<double>(p.kl_estimator, tok.logp - double(p.ref_logprobs[t]), &kv, &kg);
      if (p.kl_bias_correction) KlBiasCorrection(tok.d, &kv, &kg);
      obj += klc * kv;
      g += klc * kg;
      r.kl += kv;
    }
    if (kHasEnt) {
      const double h = double(p.entropy[t]);
      obj -= entc * h;
      r.ent += h;
      p.grad_entropy[t] = float(-q.coef * entc);
    }
    p.grad[t] = float(q.coef * g);
    r.obj += obj;
    r.clip += term.clip ? 1 : 0;
    r.low += term.low ? 1 : 0;
    r.high += term.high ? 1 : 0;
    r.dual += term.dual ? 1 : 0;
    r.off += 1.0 - o;
    r.neg_lr -= ClampLogRatio(tok.d);
    r.ratio += term.ratio;
    r.rmin = std::min(r.rmin, term.ratio);
    r.rmax = std::max(r.rmax, term.ratio);
    r.weight += stat_seq_w ? q.st.w : w;
  }
  *out = r;
}

// ---- phase T on N float lanes: the same entry and the same sums, for the
// options whose tokens need no rollout decision (every mode, the KL and
// entropy terms, any mask and aggregation). Kept tokens are the mask's.
// Token terms are float32, as on CUDA (the sequence pre-pass, whose sums
// feed exponentials, stays in double); each lane's sums are float over a
// block of kBlock vectors, then double.

// KlValueGrad (kl_penalty.h) on lanes, the same formulas and clamps, with
// e^x - x - 1 from lanes::ExpMinusXMinus1 (one polynomial, exact reduction
// near 0) and d/dlogp (e^x - x - 1) = -(e^x - 1) = -(x + (e^x - x - 1)).
template <class L>
RLK_LANE void KlLanes(int32_t est, const L& d, L* value, L* grad) {
  using lanes::Sel;
  switch (est) {
    case kKlK1: *value = d; *grad = L(1.0); return;
    case kKlAbs: *value = Sel(d < 0.0, -d, d); *grad = Sel(d > 0.0, L(1.0), Sel(d < 0.0, L(-1.0), L(0.0))); return;
    case kKlK2: *value = 0.5 * d * d; *grad = d; return;
    case kKlK1Plus: *value = d; *grad = d; return;
    default: break;
  }
  const L x = -d;
  const auto x_cl = (x < -20.0) | (x > 20.0);
  const L xc = Sel(x < -20.0, L(-20.0), Sel(x > 20.0, L(20.0), x));
  const L em = lanes::ExpMinusXMinus1(xc);
  const auto v_cl = em > 10.0;
  *value = Sel(v_cl, L(10.0), em);
  *grad = est == kKlK3Plus ? d : Sel(x_cl | v_cl, L(0.0), -(xc + em));
}

template <int N, class Mode, bool kHasKl, bool kHasEnt>
RLK_LANE void TokenBodyLanes(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, TileT* out) {
  using L = lanes::FLanes<N>;
  using LM = lanes::FMask<N>;
  using D = lanes::Lanes<N / 2>;
  using lanes::Sel;
  constexpr int kBlock = 16;  // 16 float terms a lane before a double sum: ~1e-6 of their sizes at most
  const PolicyLossParams& p = c.p;
  const Seq& q = c.seqs[size_t(tile.seq)];
  const ModeConsts<L> mc = LaneConsts<L>(md);
  const SeqState<L> st = SeqStateAs<L>(q.st);
  const L coef(q.coef), klc(p.kl_coef), entc(p.entropy_coef), zero(0.0);
  const L seq_a(p.adv_per_sequence ? double(p.advantages[tile.seq]) : 0.0);
  const L grad_ent(-q.coef * p.entropy_coef);
  D obj, neg_lr, ratio, kl, ent;
  L rmin(INFINITY), rmax(-INFINITY);
  lanes::FLaneCount<N> nclip, nlow, nhigh, ndual, nkept;
  const int64_t vend = tile.begin + (tile.end - tile.begin) / N * N;
  for (int64_t b = tile.begin; b < vend; b += int64_t(kBlock) * N) {
    const int64_t bend = std::min(vend, b + int64_t(kBlock) * N);
    L fobj, fneg, fratio, fkl, fent;
    for (int64_t t = b; t < bend; t += N) {
      if (p.mask) {
        // N dropped tokens (padding) add exactly nothing to the sums (every
        // term is selected to +0 there): only their zero gradients are stored.
        uint64_t bytes[2] = {0, 0};
        std::memcpy(bytes, p.mask + t, N);
        if ((bytes[0] | bytes[1]) == 0) {
          lanes::StoreFl<N>(p.grad + t, zero);
          if (kHasEnt) lanes::StoreFl<N>(p.grad_entropy + t, zero);
          continue;
        }
      }
      const LM keep = p.mask ? lanes::LoadFMask<N>(p.mask + t) : LM(true);
      PolicyToken<L> tok = LoadTokenLanes<L>(p, t, seq_a);
      if (Mode::kCov && c.sel) tok.sel = lanes::LoadFMask<N>(c.sel + t);
      TokenTerm<L> term;
      Mode::Token(mc, tok, st, &term);
      L o = term.loss;
      L g = term.grad + term.grad_seq;
      if (kHasKl) {
        L kv, kg;
        KlLanes<L>(p.kl_estimator, tok.logp - lanes::LoadFl<N>(p.ref_logprobs + t), &kv, &kg);
        if (p.kl_bias_correction) KlBiasCorrection(tok.d, &kv, &kg);
        o += klc * kv;
        g += klc * kg;
        fkl += Sel(keep, kv, zero);
      }
      if (kHasEnt) {
        const L h = lanes::LoadFl<N>(p.entropy + t);
        o -= entc * h;
        fent += Sel(keep, h, zero);
        lanes::StoreFl<N>(p.grad_entropy + t, Sel(keep, grad_ent, zero));
      }
      lanes::StoreFl<N>(p.grad + t, Sel(keep, coef * g, zero));
      fobj += Sel(keep, o, zero);
      nkept.Add(keep);
      nclip.Add(keep & term.clip);
      nlow.Add(keep & term.low);
      nhigh.Add(keep & term.high);
      ndual.Add(keep & term.dual);
      fneg -= Sel(keep, ClampLogRatio(tok.d), zero);
      fratio += Sel(keep, term.ratio, zero);
      rmin = Sel(keep & (term.ratio < rmin), term.ratio, rmin);  // a NaN ratio is skipped, as std::min
      rmax = Sel(keep & (term.ratio > rmax), term.ratio, rmax);
    }
    lanes::AddWide(obj, fobj);
    lanes::AddWide(neg_lr, fneg);
    lanes::AddWide(ratio, fratio);
    if (kHasKl) lanes::AddWide(kl, fkl);
    if (kHasEnt) lanes::AddWide(ent, fent);
  }
  TileT r;
  r.obj = lanes::HSum(obj);
  r.neg_lr = lanes::HSum(neg_lr);
  r.ratio = lanes::HSum(ratio);
  r.kl = lanes::HSum(kl);
  r.ent = lanes::HSum(ent);
  r.clip = double(nclip.Total());
  r.low = double(nlow.Total());
  r.high = double(nhigh.Total());
  r.dual = double(ndual.Total());
  // Every kept token's stat weight is 1, or geo-mean's G_i (the same for the tile).
  r.weight = double(nkept.Total()) * (p.mode == kPolicyGeoMean ? q.st.w : 1.0);
  for (int k = 0; k < N; ++k) {
    r.rmin = std::min(r.rmin, double(rmin[k]));
    r.rmax = std::max(r.rmax, double(rmax[k]));
  }
  if (vend < tile.end) {
    TileT tail;
    TokenPass<Mode, kHasKl, kHasEnt>(c, md, tile, vend, tile.end, &tail);
    r.obj += tail.obj; r.neg_lr += tail.neg_lr; r.ratio += tail.ratio; r.weight += tail.weight;
    r.kl += tail.kl; r.ent += tail.ent;
    r.clip += tail.clip; r.low += tail.low; r.high += tail.high; r.dual += tail.dual;
    r.rmin = std::min(r.rmin, tail.rmin);
    r.rmax = std::max(r.rmax, tail.rmax);
  }
  *out = r;
}

// The ISA entry points: everything inlined (flatten) so the lanes compile to
// that ISA's instructions, 8 float lanes on AVX2, 16 on AVX-512 (its comparisons go
// through cpu_lanes.h's CmpMask: GCC 12 lowered them lane by lane otherwise).
template <class Mode, bool kHasKl, bool kHasEnt>
RLK_AVX2 __attribute__((flatten)) void TokenPassAvx2(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, TileT* out) {
  TokenBodyLanes<8, Mode, kHasKl, kHasEnt>(c, md, tile, out);
}

template <class Mode, bool kHasKl, bool kHasEnt>
RLK_AVX512 __attribute__((flatten, noinline)) void TokenPassAvx512(const Ctx& c, const ModeConsts<double>& md, const Tile& tile, TileT* out) {
  TokenBodyLanes<16, Mode, kHasKl, kHasEnt>(c, md, tile, out);
}

template <class Mode, bool kHasKl, bool kHasEnt>
void TokenTile(const Ctx& c, const ModeConsts<double>& md, simd::IsaKind isa, const Tile& tile, TileT* out) {
  if (isa == simd::IsaKind::kAvx512) TokenPassAvx512<Mode, kHasKl, kHasEnt>(c, md, tile, out);
  else if (isa == simd::IsaKind::kAvx2) TokenPassAvx2<Mode, kHasKl, kHasEnt>(c, md, tile, out);
  else TokenPass<Mode, kHasKl, kHasEnt>(c, md, tile, tile.begin, tile.end, out);
}

// Phases S, K and T for one registry entry.
template <class Mode>
Status RunMode(Ctx& ctx, const ModeConsts<double>& mc, std::vector<Seq>& seqs, std::vector<uint8_t>& sel,
               std::vector<TileT>& tt, double tokens, int64_t num_tiles, int64_t grain) {
  const PolicyLossParams& p = ctx.p;
  const std::vector<Tile>& tiles = ctx.tiles;
  const int64_t B = p.num_seqs, N = p.num_tokens;
  // ---- S: the mode's pre-pass; K: the selection.
  if (Mode::kSeqSums > 0 || Mode::kCov) {
    constexpr int S = Mode::kSeqSums > 0 ? Mode::kSeqSums : 1;
    std::vector<double> part;
    try {
      part.resize(size_t(num_tiles) * (S + 2));
    } catch (const std::bad_alloc&) {
      return Status{Status::kOutOfMemory, "out of host memory for per-sequence partials"};
    }
    const simd::IsaKind isa = ctx.rollout ? simd::IsaKind::kBaseline : simd::Isa();
    ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
      for (int64_t k = tb; k < te; ++k) {
        double* row = part.data() + size_t(k) * (S + 2);
        SeqTile<Mode>(ctx, mc, isa, tiles[size_t(k)], row, row + S);
      }
    });
    double cov_a = 0, cov_l = 0;
    size_t k = 0;
    for (int64_t i = 0; i < B; ++i) {
      double sums[S] = {};
      for (; k < tiles.size() && tiles[k].seq == i; ++k) {
        const double* row = part.data() + k * (S + 2);
        for (int j = 0; j < S; ++j) sums[j] += row[j];
        cov_a += row[S];
        cov_l += row[S + 1];
      }
      Seq& q = seqs[size_t(i)];
      if (Mode::kSeqSums > 0 && !q.rejected) Mode::SeqFinal(mc, sums, q.n, p.tis_level != kTisNone, &q.st);
    }
    if (Mode::kCov) {
      // Candidates with their keys; each slice of tiles keeps only its `want`
      // smallest in a max-heap (the k smallest of the union are among them),
      // then the k smallest of those. With the default ratio (2e-4) a slice
      // keeps a few hundred of its tokens and most candidates cost one
      // comparison with the heap's top: no batch-sized candidate array (its
      // page faults and its nth_element were 3/4 of a kl-cov call). Pairs are
      // unique (t is), so the selected set is the same for any split.
      const double abar = tokens > 0 ? cov_a / tokens : 0.0, lbar = tokens > 0 ? cov_l / tokens : 0.0;
      const bool clip_cov = p.mode == kPolicyClipCov;
      const size_t want = size_t(std::max<int64_t>(int64_t(std::floor(p.cov_ratio * tokens)), 1));
      using Cand = std::pair<uint64_t, int64_t>;
      std::vector<std::vector<Cand>> cand;
      std::vector<Cand> all;
      try {
        cand.resize(size_t(num_tiles));
        sel.assign(size_t(N), 0);
        ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
          std::vector<Cand>& heap = cand[size_t(tb)];
          for (int64_t kk = tb; kk < te; ++kk) {
            const Tile& tile = tiles[size_t(kk)];
            const Seq& q = seqs[size_t(tile.seq)];
            for (int64_t t = tile.begin; t < tile.end; ++t) {
              if (!Masked(p, t)) continue;
              const double A = Advantage(p, tile, t);
              double w, o;
              if (!KeepToken(ctx, q, t, &w, &o, A)) continue;
              PolicyToken<double> tok{double(p.logprobs[t]), double(p.old_logprobs[t]), A, 0, false};
              tok.d = tok.logp - tok.old;
              const double cov = (A - abar) * (tok.logp - lbar);
              uint64_t key;
              if (clip_cov) {
                if (!ClipCovMode::Candidate(mc, tok, cov)) continue;
                key = ClipCovKey(uint64_t(p.cov_seed), uint64_t(tile.seq), uint64_t(t - q.begin));
              } else {
                key = KlCovKey(float(cov), uint64_t(t));
              }
              const Cand c(key, t);
              if (heap.size() < want) {
                heap.push_back(c);
                if (heap.size() == want) std::make_heap(heap.begin(), heap.end());
              } else if (c < heap.front()) {
                std::pop_heap(heap.begin(), heap.end());
                heap.back() = c;
                std::push_heap(heap.begin(), heap.end());
              }
            }
          }
        });
        size_t total = 0;
        for (auto& v : cand) total += v.size();
        all.reserve(total);
        for (auto& v : cand) all.insert(all.end(), v.begin(), v.end());
      } catch (const std::bad_alloc&) {
        return Status{Status::kOutOfMemory, "out of host memory for the covariance selection"};
      }
      const int64_t kk = tokens > 0 ? std::min<int64_t>(int64_t(want), int64_t(all.size())) : 0;
      if (kk > 0) {
        std::nth_element(all.begin(), all.begin() + (kk - 1), all.end());
        for (int64_t j = 0; j < kk; ++j) sel[size_t(all[size_t(j)].second)] = 1;
      }
      ctx.sel = sel.data();
    }
  }

  // ---- T: the token pass, on lanes unless a rollout option decides per token.
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  const simd::IsaKind isa = ctx.rollout ? simd::IsaKind::kBaseline : simd::Isa();
  auto run = [&](auto pass) {
    ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
      for (int64_t k = tb; k < te; ++k) pass(ctx, mc, isa, tiles[size_t(k)], &tt[size_t(k)]);
    });
  };
  if (has_kl && has_ent) run(TokenTile<Mode, true, true>);
  else if (has_kl) run(TokenTile<Mode, true, false>);
  else if (has_ent) run(TokenTile<Mode, false, true>);
  else run(TokenTile<Mode, false, false>);
  return Status::Ok();
}

struct ModeRunner {
  Ctx& ctx;
  const ModeConsts<double>& mc;
  const std::vector<Tile>& tiles;
  std::vector<Seq>& seqs;
  std::vector<uint8_t>& sel;
  std::vector<TileT>& tt;
  double tokens;
  int64_t num_tiles, grain;
  template <class Mode>
  Status operator()() { return RunMode<Mode>(ctx, mc, seqs, sel, tt, tokens, num_tiles, grain); }
};

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
  std::vector<Seq> seqs;
  std::vector<RolloutSums<double>> tr;
  std::vector<TileT> tt;
  std::vector<uint8_t> sel;
  const bool rollout = RolloutActive(p);
  const bool need_r = rollout || p.mask != nullptr;
  try {
    int64_t count = 0;
    for (int64_t i = 0; i < B; ++i) count += (seq_end(i) - seq_begin(i) + kTile - 1) / kTile;
    tiles.reserve(size_t(count));
    for (int64_t i = 0; i < B; ++i)
      for (int64_t b = seq_begin(i); b < seq_end(i); b += kTile) tiles.push_back({i, b, std::min(b + kTile, seq_end(i))});
    seqs.resize(size_t(B));
    if (need_r) tr.resize(tiles.size());
    tt.resize(tiles.size());
  } catch (const std::bad_alloc&) {
    return Status{Status::kOutOfMemory, "out of host memory for per-sequence partials"};
  }
  const int64_t num_tiles = int64_t(tiles.size());
  const int64_t grain = std::max<int64_t>(1, num_tiles > 0 ? (1 << 15) * num_tiles / std::max<int64_t>(N, 1) : 1);
  for (int64_t i = 0; i < B; ++i) seqs[size_t(i)].begin = seq_begin(i);

  // ---- R: rollout pre-pass over the input mask.
  if (need_r) {
    ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
      for (int64_t k = tb; k < te; ++k) {
        const Tile& tile = tiles[size_t(k)];
        RolloutSums<double> a;
        a.min_x = kInf;
        for (int j = 0; j < 3; ++j) a.kmax[j] = -kInf;
        if (!rollout) {
          const double n = double(CountNonzero(p.mask + tile.begin, tile.end - tile.begin));
          a.n0 = a.nk = n;
          tr[size_t(k)] = a;
          continue;
        }
        const bool crit = p.num_criteria > 0;
        for (int64_t t = tile.begin; t < tile.end; ++t) {
          if (!Masked(p, t)) continue;
          const double x = RolloutLogRatio<double>(p, t);
          double w;
          a.n0 += 1;
          if (RolloutToken<double>(p, x, &w)) a.nk += 1;
          a.sum_x += x;
          a.min_x = std::min(a.min_x, x);
          a.sum_w += w;
          if (crit) {
            double kx[3];
            RejectEstimators(x, kx);
            for (int j = 0; j < 3; ++j) {
              a.ksum[j] += kx[j];
              a.kmax[j] = std::max(a.kmax[j], kx[j]);
            }
          }
          if (p.off_policy) {
            const double b = (p.rollout_logprobs && p.mode != kPolicyReinforce) ? double(p.rollout_logprobs[t]) : double(p.old_logprobs[t]);
            a.sum_b += b - double(p.logprobs[t]);
          }
        }
        tr[size_t(k)] = a;
      }
    });
  }

  // ---- D: per-sequence decisions, serially in order.
  double in_mask = 0, tokens = 0, sequences = 0, longest = 0, vetoed = 0, rejected_seqs = 0;
  double sum_w = 0, sum_wseq = 0, n_wseq = 0;
  {
    size_t k = 0;
    for (int64_t i = 0; i < B; ++i) {
      RolloutSums<double> s;
      s.min_x = kInf;
      for (int j = 0; j < 3; ++j) s.kmax[j] = -kInf;
      if (!need_r) s.n0 = s.nk = double(seq_end(i) - seq_begin(i));
      for (; k < tiles.size() && tiles[k].seq == i; ++k) {
        if (!need_r) continue;
        const RolloutSums<double>& a = tr[k];
        s.n0 += a.n0;
        s.nk += a.nk;
        s.sum_x += a.sum_x;
        s.min_x = std::min(s.min_x, a.min_x);
        s.sum_w += a.sum_w;
        for (int j = 0; j < 3; ++j) {
          s.ksum[j] += a.ksum[j];
          s.kmax[j] = std::max(s.kmax[j], a.kmax[j]);
        }
        s.sum_b += a.sum_b;
      }
      Seq& q = seqs[size_t(i)];
      bool veto = false;
      q.rejected = rollout && RolloutSequence<double>(p, s, &q.w_seq, &veto);
      if (veto) vetoed += 1;
      q.kl_off = s.sum_b / std::max(s.n0, 1.0);
      q.n = q.rejected ? 0.0 : s.nk;
      in_mask += s.n0;
      tokens += q.n;
      if (q.n > 0) sequences += 1;
      if (s.n0 > 0 && q.n < s.n0) rejected_seqs += 1;
      longest = std::max(longest, double(seq_end(i) - seq_begin(i)));
      sum_w += s.sum_w;
      if (s.n0 > 0) {
        sum_wseq += q.w_seq;
        n_wseq += 1;
      }
    }
  }
  double norm = 1.0;
  if (p.is_normalize && p.tis_level != kTisNone) {
    const double mu = p.tis_level == kTisToken ? (in_mask > 0 ? sum_w / in_mask : 0.0) : (n_wseq > 0 ? sum_wseq / n_wseq : 0.0);
    if (mu > 1e-8) norm = 1.0 / mu;
  }
  if (p.tis_level != kTisNone && p.tis_level != kTisToken)
    for (Seq& q : seqs) q.w_seq *= norm;
  const double tok_den = p.token_count > 0 ? p.token_count : tokens;
  const double seq_den = p.sequence_count > 0 ? p.sequence_count : sequences;
  const double scale = p.loss_scale > 0 ? p.loss_scale : (packed ? longest : double(p.seq_len));
  for (Seq& q : seqs) q.coef = AggregationWeight(p.aggregation, p.dp_size, tok_den, seq_den, scale, q.n);

  Ctx ctx{p, tiles, seqs, nullptr, norm, rollout};
  const ModeConsts<double> mc = MakeModeConsts<double>(p);

  Status status = PolicyModeDispatch(p.mode, ModeRunner{ctx, mc, tiles, seqs, sel, tt, tokens, num_tiles, grain});
  if (!status.ok()) return status;

  // ---- reduce the tiles in order.
  TileT s;
  double loss = 0;
  for (size_t k = 0; k < tiles.size(); ++k) {
    const TileT& c = tt[k];
    loss += seqs[size_t(tiles[k].seq)].coef * c.obj;
    s.clip += c.clip; s.low += c.low; s.high += c.high; s.dual += c.dual; s.off += c.off;
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
    st[kStatOffPolicyMaskedFraction] = float(s.off * inv);
  }
  st[kStatVetoedSequences] = float(vetoed);
  st[kStatKeptTokens] = float(tokens);
  st[kStatSequences] = float(sequences);
  st[kStatRejectedFraction] = in_mask > 0 ? float(1.0 - tokens / in_mask) : 0.f;
  st[kStatRejectedSequences] = float(rejected_seqs);
  return Status::Ok();
}

}  // namespace rlk::cpu
