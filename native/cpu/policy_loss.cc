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
// count. Token math and every sum are in double; outputs are float.
#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

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

inline double Clamp(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

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
  // Rollout weight of a token from its log-weight (DESIGN: clamp at +-20).
  auto token_weight = [&](int64_t t, double* x) {
    *x = double(p.old_logprobs[t]) - double(p.rollout_logprobs[t]);
    return std::exp(Clamp(*x, -20.0, 20.0));
  };

  // ---- A: per-tile partials for the per-sequence decisions.
  {
    ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
      for (int64_t k = tb; k < te; ++k) {
        TileA a;
        for (int64_t t = tiles[size_t(k)].begin; t < tiles[size_t(k)].end; ++t) {
          if (!masked(t)) continue;
          a.n0 += 1;
          bool keep = true;
          if (tis) {
            double x;
            double w = token_weight(t, &x);
            a.sum_x += x;
            a.min_x = std::min(a.min_x, x);
            if (tis_token_mask) keep = w >= p.tis_lower && w <= p.tis_upper;
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
        double w = std::exp(Clamp(lw, -20.0, 20.0));
        if (p.tis_mode == kTisMask) {
          if (w < p.tis_lower || w > p.tis_upper) q.rejected = true;
          q.weight = w;
        } else {
          q.weight = std::min(w, p.tis_upper);
        }
      }
      if (gspo && s.nk > 0) {
        double mean = s.sum_d / s.nk;
        q.gspo_s = std::exp(std::min(mean, 10.0));
        q.gspo_grad = mean <= 10.0;  // clamp(max = 10) passes the gradient at and below 10
      }
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
  const double lo = 1.0 - p.clip_low, hi = 1.0 + p.clip_high;
  const bool dual = p.use_dual_clip && !gspo;
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  ParallelFor(num_tiles, grain, [&](int64_t tb, int64_t te) {
    for (int64_t k = tb; k < te; ++k) {
      const Tile& tile = tiles[size_t(k)];
      const SeqInfo& q = seqs[size_t(tile.seq)];
      TileC c;
      for (int64_t t = tile.begin; t < tile.end; ++t) {
        bool keep = masked(t) && !q.rejected;
        double w = 1.0;
        if (keep && tis) {
          if (p.tis_level == kTisToken) {
            double x;
            double wt = token_weight(t, &x);
            if (p.tis_mode == kTisMask) {
              keep = wt >= p.tis_lower && wt <= p.tis_upper;
              w = wt;
            } else {
              w = std::min(wt, p.tis_upper);
            }
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
        const double lr = Clamp(d, -20.0, 20.0);
        double r, dr;
        if (gspo) {
          r = q.gspo_s;
          dr = q.gspo_grad ? r : 0.0;  // d/dlogp_t exp(logp_t - sg(logp_t) + sg(mean)) = s
        } else {
          r = std::exp(lr);
          dr = (d >= -20.0 && d <= 20.0) ? r : 0.0;
        }
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
      tc[size_t(k)] = c;
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
