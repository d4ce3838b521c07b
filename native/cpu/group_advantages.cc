// CPU group advantages: the stages of rlk/group_advantages.h in double.
//
// Determinism: the numbering is sequential in row order; each group's
// reduction runs on one thread in row order; batch-wide reductions run over
// fixed chunks of kChunk rows merged in chunk order; so nothing depends on
// the thread count.
#include "rlk/group_advantages.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

constexpr int64_t kChunk = 4096;  // rows per partial of a batch-wide reduction (fixed: not the thread count)
using Rec = GroupRecord;          // the per-group math is shared with CUDA (group_advantages.h)
using Coef = GroupCoef;

Status Error(const char* what) { return Status{Status::kOutOfRange, what}; }
#define RLK_TRY(expr)          \
  do {                         \
    Status _st = (expr);       \
    if (!_st.ok()) return _st; \
  } while (0)

inline int64_t LoadIndex(const void* p, DType dt, int64_t i) {
  return dt == DType::kInt64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Ids of any int64 values to slots 0, 1, ... in order of first insertion:
// a direct table when the ids span a range comparable to their number (the
// dense ids most trainers pass), else open addressing that grows with the
// distinct ids (not with the rows), so that a batch of few groups probes a
// table that stays in cache.
class IdTable {
 public:
  // `lo`..`hi`: the ids' range when known (lo > hi: unknown), `n`: at most
  // this many distinct ids.
  void Reset(int64_t n, int64_t lo, int64_t hi) {
    count_ = 0;
    const uint64_t span = lo <= hi ? uint64_t(hi) - uint64_t(lo) : ~uint64_t(0);
    if (span < uint64_t(4 * n + 64)) {
      direct_ = true;
      lo_ = lo;
      direct_slots_.assign(size_t(span) + 1, -1);
      return;
    }
    direct_ = false;
    Allocate(64);
  }
  // The slot of `id`, made the next one when new.
  int64_t Insert(int64_t id) {
    if (direct_) {
      int64_t& s = direct_slots_[size_t(uint64_t(id) - uint64_t(lo_))];
      if (s < 0) s = count_++;
      return s;
    }
    for (uint64_t h = Mix64(uint64_t(id)) & mask_;; h = (h + 1) & mask_) {
      Entry& e = table_[h];
      if (e.slot < 0) {
        e = Entry{id, count_};
        const int64_t s = count_++;
        if (2 * count_ > int64_t(mask_)) Grow();
        return s;
      }
      if (e.id == id) return e.slot;
    }
  }
  // Gives `id` the slot `slot` (open addressing only: Reset with lo > hi).
  void Put(int64_t id, int64_t slot) {
    for (uint64_t h = Mix64(uint64_t(id)) & mask_;; h = (h + 1) & mask_) {
      Entry& e = table_[h];
      if (e.slot < 0 || e.id == id) {
        const bool fresh = e.slot < 0;
        e = Entry{id, slot};
        if (fresh && 2 * ++used_ > int64_t(mask_)) Grow();
        count_ = std::max(count_, slot + 1);
        return;
      }
    }
  }
  // The slot of `id`, or -1.
  int64_t Find(int64_t id) const {
    if (direct_) {
      const uint64_t k = uint64_t(id) - uint64_t(lo_);
      return k < direct_slots_.size() ? direct_slots_[size_t(k)] : -1;
    }
    for (uint64_t h = Mix64(uint64_t(id)) & mask_;; h = (h + 1) & mask_) {
      if (table_[h].slot < 0) return -1;
      if (table_[h].id == id) return table_[h].slot;
    }
  }
  int64_t count() const { return count_; }

 private:
  struct Entry {
    int64_t id = 0, slot = -1;
  };
  void Allocate(uint64_t cap) {
    mask_ = cap - 1;
    used_ = 0;
    table_.assign(size_t(cap), Entry{});
  }
  void Grow() {
    std::vector<Entry> old;
    old.swap(table_);
    Allocate(2 * (mask_ + 1));
    for (const Entry& e : old) {
      if (e.slot < 0) continue;
      for (uint64_t h = Mix64(uint64_t(e.id)) & mask_;; h = (h + 1) & mask_)
        if (table_[h].slot < 0) {
          table_[h] = e;
          ++used_;
          break;
        }
    }
  }
  bool direct_ = false;
  int64_t lo_ = 0, count_ = 0, used_ = 0;
  uint64_t mask_ = 0;
  std::vector<int64_t> direct_slots_;
  std::vector<Entry> table_;
};

template <class I>
void IdRange(const I* ids, int64_t n, int64_t* lo, int64_t* hi) {
  I a = n ? ids[0] : I(1), b = n ? ids[0] : I(0);
  for (int64_t i = 1; i < n; ++i) {
    a = ids[i] < a ? ids[i] : a;
    b = ids[i] > b ? ids[i] : b;
  }
  *lo = int64_t(a);
  *hi = int64_t(b);
}

// Rows of each group: implicit for consecutive groups, else slot_of_row and
// a stable counting sort of the rows by slot (CSR), which keeps row order
// within a group.
struct Groups {
  int64_t gs = 0;
  int64_t count = 0;                 // G: slots in use
  std::vector<int64_t> slot;         // [B] (ids)
  std::vector<int64_t> ids;          // [G] (ids) the id of each slot
  std::vector<int64_t> offsets;      // [G + 1] (ids)
  std::vector<int64_t> rows;         // [B] (ids)
  int64_t Begin(int64_t g) const { return gs ? g * gs : offsets[size_t(g)]; }
  int64_t End(int64_t g) const { return gs ? (g + 1) * gs : offsets[size_t(g) + 1]; }
  int64_t Row(int64_t k) const { return gs ? k : rows[size_t(k)]; }
};

// Slots of the rows b, b + 1, ... in turn, without a division per row for
// consecutive groups.
class SlotCursor {
 public:
  SlotCursor(const Groups& grp, int64_t b) : grp_(grp), g_(grp.gs ? b / grp.gs : 0), j_(grp.gs ? b - g_ * grp.gs : 0) {}
  // The slot of row i; i must go up by one per call.
  int64_t Next(int64_t i) {
    if (!grp_.gs) return grp_.slot[size_t(i)];
    const int64_t s = g_;
    if (++j_ == grp_.gs) {
      j_ = 0;
      ++g_;
    }
    return s;
  }

 private:
  const Groups& grp_;
  int64_t g_, j_;
};

void BuildCsr(int64_t B, Groups* g) {
  const int64_t G = g->count;
  g->offsets.assign(size_t(G) + 1, 0);
  g->rows.resize(size_t(B));
  int64_t* off = g->offsets.data();
  const int64_t* slot = g->slot.data();
  for (int64_t i = 0; i < B; ++i) ++off[slot[i] + 1];
  for (int64_t k = 0; k < G; ++k) off[k + 1] += off[k];
  // off[k] serves as slot k's cursor (it ends at the old off[k + 1]); then
  // shifting by one restores the offsets. Rows keep their order in a group.
  for (int64_t i = 0; i < B; ++i) g->rows[size_t(off[slot[i]]++)] = i;
  for (int64_t k = G; k > 0; --k) off[k] = off[k - 1];
  off[0] = 0;
}

// Stage 0: slots in order of first appearance; more than `cap` distinct ids
// (cap >= 0) is an error.
template <class I>
Status NumberT(const I* ids, int64_t B, int64_t cap, IdTable* table, Groups* g) {
  int64_t lo, hi;
  IdRange(ids, B, &lo, &hi);
  table->Reset(B, lo, hi);
  g->slot.resize(size_t(B));
  g->ids.clear();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t s = table->Insert(int64_t(ids[i]));
    if (s == int64_t(g->ids.size())) {
      if (cap >= 0 && s >= cap) return Error("groupIds hold more distinct values than numGroups");
      g->ids.push_back(int64_t(ids[i]));
    }
    g->slot[size_t(i)] = s;
  }
  g->count = table->count();
  return Status::Ok();
}

Status Number(const GroupAdvantagesParams& p, int64_t cap, IdTable* table, Groups* g) {
  // group_size, not group_ids, tells the layouts apart: an empty tensor's data is null.
  if (p.group_size > 0) {
    g->gs = p.group_size;
    g->count = p.batch / p.group_size;
    return Status::Ok();
  }
  g->gs = 0;
  Status st = p.group_ids_dtype == DType::kInt64
                  ? NumberT(static_cast<const int64_t*>(p.group_ids), p.batch, cap, table, g)
                  : NumberT(static_cast<const int32_t*>(p.group_ids), p.batch, cap, table, g);
  if (st.ok()) BuildCsr(p.batch, g);
  return st;
}

// Tokens per row (mask rows or token counts); empty where the method reads none.
Status TokenCounts(const GroupAdvantagesParams& p, std::vector<double>* out) {
  if (!p.token_counts && !p.mask) {
    out->clear();
    return Status::Ok();
  }
  out->resize(size_t(p.batch));  // every entry is written below: no clear(), which would zero it again
  double* c = out->data();
  if (p.token_counts) {
    // No exit inside the loops, and the OR of the counts (negative iff one
    // is) rather than a bool: the compiler vectorises them.
    auto convert = [&](const auto* v) {
      std::remove_cv_t<std::remove_pointer_t<decltype(v)>> bits = 0;
      for (int64_t i = 0; i < p.batch; ++i) {
        bits |= v[i];
        c[i] = double(v[i]);
      }
      return bits < 0;
    };
    const bool negative = p.token_counts_dtype == DType::kInt64 ? convert(static_cast<const int64_t*>(p.token_counts))
                                                                : convert(static_cast<const int32_t*>(p.token_counts));
    return negative ? Error("tokenCounts must be >= 0") : Status::Ok();
  }
  const int64_t T = p.seq_len;
  ParallelFor(p.batch, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(T, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint8_t* m = p.mask + i * T;
      int64_t n = 0;
      for (int64_t t = 0; t < T; ++t) n += m[t] != 0;
      c[i] = double(n);
    }
  });
  return Status::Ok();
}

// One group's record of one column: rows row(b)..row(e - 1) in row order
// (so `arg` is the first row holding the max), two passes in double (mean,
// then M2). The top two and the token weights only where the method reads
// them: the plain loop is what the compiler schedules well.
template <bool kTop2, bool kWeights, class RowOf>
inline Rec GroupRecordOf(const float* rewards, int64_t K, int64_t col, int64_t b, int64_t e, RowOf row,
                         const double* cnt) {
  double sum = 0, mn = INFINITY, mx = -INFINITY, mx2 = -INFINITY, arg = -1, nz = 0, w = 0, wr = 0;
  for (int64_t k = b; k < e; ++k) {
    const int64_t i = row(k);
    const double r = rewards[i * K + col];
    sum += r;
    mn = r < mn ? r : mn;
    nz += r != 0 ? 1.0 : 0.0;
    if constexpr (kTop2) {
      if (r > mx) {
        mx2 = mx;
        mx = r;
        arg = double(i);
      } else {
        mx2 = r > mx2 ? r : mx2;
      }
    } else {
      mx = r > mx ? r : mx;
    }
    if constexpr (kWeights) {
      w += cnt[i];
      wr += cnt[i] * r;
    }
  }
  const double n = double(e - b), mean = sum / n;
  double m2 = 0;
  for (int64_t k = b; k < e; ++k) {
    const double d = double(rewards[row(k) * K + col]) - mean;
    m2 += d * d;
  }
  Rec o;
  o.n = n;
  o.mean = mean;
  o.m2 = m2;
  o.min = mn;
  o.max = mx;
  o.max2 = mx2;
  o.arg = arg;
  o.w = w;
  o.wmean = w > 0 ? wr / w : 0.0;
  o.nonzero = nz;
  return o;
}

template <bool kTop2, bool kWeights>
void RecordsOfGroups(const GroupAdvantagesParams& p, const Groups& grp, const double* cnt, int64_t g0, int64_t g1, Rec* s) {
  const int64_t K = p.cols;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t b = grp.Begin(g), e = grp.End(g);
    for (int64_t col = 0; col < K; ++col) {
      if (b == e) s[g * K + col] = Rec{};
      else if (grp.gs) s[g * K + col] = GroupRecordOf<kTop2, kWeights>(p.rewards, K, col, b, e, [](int64_t k) { return k; }, cnt);
      else {
        const int64_t* rows = grp.rows.data();
        s[g * K + col] = GroupRecordOf<kTop2, kWeights>(p.rewards, K, col, b, e, [rows](int64_t k) { return rows[k]; }, cnt);
      }
    }
  }
}

// Stage 1: one record per group and column, and the group's task id.
// `whole`: these are all the group's rows (not one rank's share), so that a
// grpo-passk group of one is an error here.
Status Records(const GroupAdvantagesParams& p, const Groups& grp, const std::vector<double>& counts, bool whole,
               std::vector<Rec>* rec, std::vector<int64_t>* task) {
  const int64_t G = grp.count, K = p.cols;
  rec->resize(size_t(G * K));
  task->assign(size_t(G), 0);
  std::atomic<int> bad{0};  // 1: task id changes within a group; 2: grpo-passk group of one
  Rec* s = rec->data();
  int64_t* tk = task->data();
  const double* cnt = counts.empty() ? nullptr : counts.data();
  const bool top2 = p.method == AdvantageMethod::kGrpoPassk;
  const bool passk = whole && top2;
  ParallelFor(G, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, p.batch / std::max<int64_t>(G, 1))),
              [&](int64_t g0, int64_t g1) {
    if (top2) {
      if (cnt) RecordsOfGroups<true, true>(p, grp, cnt, g0, g1, s);
      else RecordsOfGroups<true, false>(p, grp, cnt, g0, g1, s);
    } else {
      if (cnt) RecordsOfGroups<false, true>(p, grp, cnt, g0, g1, s);
      else RecordsOfGroups<false, false>(p, grp, cnt, g0, g1, s);
    }
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t b = grp.Begin(g), e = grp.End(g);
      if (passk && e - b == 1) bad.store(2);
      if (p.task_ids && e > b) {
        const int64_t t = LoadIndex(p.task_ids, p.task_ids_dtype, grp.Row(b));
        for (int64_t k = b + 1; k < e; ++k)
          if (LoadIndex(p.task_ids, p.task_ids_dtype, grp.Row(k)) != t) bad.store(1);
        tk[g] = t;
      }
    }
  });
  if (bad.load() == 1) return Error("taskIds must be constant within a group");
  if (bad.load() == 2) return Error("grpo-passk needs groups of at least 2 rows, got a group of one");
  return Status::Ok();
}

// Stage 2 over G slots of records (K columns each) and their task ids.
void Coefficients(const GroupAdvantagesParams& p, int64_t G, const std::vector<Rec>& rec,
                  const std::vector<int64_t>& task, std::vector<Coef>* out) {
  const int64_t K = p.cols;
  std::vector<Coef>& c = *out;
  c.resize(size_t(G * K));
  if (p.method != AdvantageMethod::kTmnReweight) {
    BatchStats batch;
    if (p.method == AdvantageMethod::kGpg || (p.method == AdvantageMethod::kGrpo && p.scale == AdvantageScale::kBatch))
      for (int64_t g = 0; g < G; ++g) MergeGroupRecord(&batch.all, rec[size_t(g * K)]);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t k = 0; k < K; ++k)
        c[size_t(g * K + k)] = GroupCoefficient(p.method, p.scale, rec[size_t(g * K + k)], batch, p.eps,
                                                p.reward_weights ? p.reward_weights[k] : 1.0);
    return;
  }
  // Task aggregates over the groups with rows, tasks numbered in slot order.
  IdTable tasks;
  tasks.Reset(G, 1, 0);
  std::vector<int64_t> tslot(size_t(G), -1);
  for (int64_t g = 0; g < G; ++g)
    if (rec[size_t(g)].n > 0) tslot[size_t(g)] = tasks.Insert(task[size_t(g)]);
  const size_t T = size_t(tasks.count());
  std::vector<double> groups(T, 0.0), sum_mean(T, 0.0), sum_var(T, 0.0);
  for (int64_t g = 0; g < G; ++g) {
    if (tslot[size_t(g)] < 0) continue;
    const size_t t = size_t(tslot[size_t(g)]);
    groups[t] += 1;
    sum_mean[t] += GroupMean(rec[size_t(g)]);
    sum_var[t] += GroupVar(rec[size_t(g)]);
  }
  for (int64_t g = 0; g < G; ++g) {
    if (tslot[size_t(g)] < 0) {
      c[size_t(g)] = Coef{};
      continue;
    }
    const size_t t = size_t(tslot[size_t(g)]);
    c[size_t(g)] = TmnCoefficient(rec[size_t(g)], sum_mean[t] / groups[t], sum_var[t] / groups[t], p.eps, p.alpha);
  }
}

// The value a whitening method whitens (reinforce++: r - mean_g; gdpo: S).
inline double PreWhiten(const GroupAdvantagesParams& p, int64_t i, const Coef* k) {
  return p.method == AdvantageMethod::kGdpo ? GdpoValue(p.rewards + i * p.cols, k, p.cols)
                                            : double(p.rewards[i]) - k->center;
}

// Stage 3. tmn-reweight: per group, n = rows and mean = fraction of rewards
// > m. reinforce++ and gdpo: one token-weighted record of the values to
// whiten (each token carries its sequence's value), two passes per chunk.
Status Round2(const GroupAdvantagesParams& p, const Groups& grp, int64_t G, const std::vector<Coef>& c,
              const std::vector<double>& counts, std::vector<Rec>* out) {
  if (p.method == AdvantageMethod::kTmnReweight) {
    out->assign(size_t(G), Rec{});
    Rec* s = out->data();
    ParallelFor(grp.count, 256, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b = grp.Begin(g), e = grp.End(g);
        if (b == e) continue;
        const double m = c[size_t(g)].threshold;
        double above = 0;
        for (int64_t k = b; k < e; ++k) above += double(p.rewards[grp.Row(k)]) > m;
        s[g] = AboveRecord(above, double(e - b));
      }
    });
    return Status::Ok();
  }
  const int64_t chunks = (p.batch + kChunk - 1) / kChunk;
  std::vector<Rec> part(static_cast<size_t>(chunks));
  const double* cnt = counts.empty() ? nullptr : counts.data();
  const Coef* coef = c.data();
  const int64_t K = p.cols;
  ParallelFor(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t b = ch * kChunk, e = std::min(p.batch, b + kChunk);
      double n = 0, sum = 0, mn = INFINITY, mx = -INFINITY;
      SlotCursor slots(grp, b);
      for (int64_t i = b; i < e; ++i) {
        const int64_t g = slots.Next(i);
        const double w = cnt ? cnt[i] : 1.0;
        if (w == 0) continue;
        const double x = PreWhiten(p, i, coef + g * K);
        n += w;
        sum += w * x;
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      if (n == 0) continue;
      const double mean = sum / n;
      double m2 = 0;
      SlotCursor slots2(grp, b);
      for (int64_t i = b; i < e; ++i) {
        const int64_t g = slots2.Next(i);
        const double w = cnt ? cnt[i] : 1.0;
        if (w == 0) continue;
        const double d = PreWhiten(p, i, coef + g * K) - mean;
        m2 += w * d * d;
      }
      Rec& o = part[size_t(ch)];
      o.n = n;
      o.mean = mean;
      o.m2 = m2;
      o.min = mn;
      o.max = mx;
    }
  });
  out->assign(1, Rec{});
  for (const Rec& s : part) MergeGroupRecord(&(*out)[0], s);
  return Status::Ok();
}

// gdpo's masked_whiten needs two tokens (verl's masked_var divides by N - 1).
Status CheckWhiten(const GroupAdvantagesParams& p, const Rec& w) {
  if (p.method == AdvantageMethod::kGdpo && !(w.n >= 2))
    return Error("gdpo needs at least 2 tokens in the batch (the sum of mask or tokenCounts, or B without them)");
  return Status::Ok();
}

// Stage 4: rows, then informative over `out_groups` (>= G; zeros past G).
void Finalize(const GroupAdvantagesParams& p, const Groups& grp, int64_t G, int64_t out_groups,
              const std::vector<Rec>& rec, const std::vector<Coef>& c, const std::vector<Rec>& rec2,
              const std::vector<double>& counts) {
  const bool whiten = AdvantageWhitens(p.method);
  double mu = 0, inv_std = 1;
  if (whiten) WhitenMoments(rec2[0], &mu, &inv_std);
  // Locals, not p's fields, in the loop: the stores through `out` could
  // alias p for all the compiler knows, which reloads every field per row.
  const float* rewards = p.rewards;
  const float* baseline = p.baseline;
  float* out = p.advantages;
  const Coef* coef = c.data();
  const double* cnt = counts.empty() ? nullptr : counts.data();
  const AdvantageMethod method = p.method;
  const int64_t K = p.cols;
  const double rank = double(p.rank);
  if (!whiten && grp.gs) {
    // The common case (consecutive groups, a coefficient per group) as a
    // plain loop the compiler vectorises.
    const int64_t gs = grp.gs;
    const bool affine = method != AdvantageMethod::kGrpoPassk && method != AdvantageMethod::kRemax;
    ParallelFor(G, std::max<int64_t>(1, (1 << 14) / gs), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const Coef k = coef[g];
        if (affine) {
          // RowValue's (r - center) * scale, with the method's branch out of the loop.
          const double c = k.center, sp = k.scale_pos, sn = k.scale_neg;
          for (int64_t i = g * gs; i < (g + 1) * gs; ++i) {
            const double r = rewards[i];
            out[i] = float((r - c) * (r > c ? sp : sn));
          }
        } else {
          for (int64_t i = g * gs; i < (g + 1) * gs; ++i)
            out[i] = float(RowValue(method, rewards[i], k, double(i), rank, baseline ? baseline[i] : 0.0));
        }
      }
    });
  } else if (!whiten && method != AdvantageMethod::kGrpoPassk && method != AdvantageMethod::kRemax) {
    // Group ids, an affine method: RowValue's (r - center) * scale with the
    // scale picked by indexing, not by a branch. Rewards fall on either side
    // of their group's mean at random, so the branch mispredicted about one
    // row in two: a third of a grpo call's samples over hash ids at B = 65536
    // on one thread, and the call now takes 0.56 of its time.
    const int64_t* slot = grp.slot.data();
    ParallelFor(p.batch, 1 << 14, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const Coef& k = coef[slot[i] * K];
        const double r = rewards[i], scales[2] = {k.scale_neg, k.scale_pos};
        out[i] = float((r - k.center) * scales[r > k.center]);
      }
    });
  } else {
    ParallelFor(p.batch, 1 << 14, [&](int64_t b, int64_t e) {
      SlotCursor slots(grp, b);
      for (int64_t i = b; i < e; ++i) {
        const Coef* k = coef + slots.Next(i) * K;
        double a;
        if (whiten) a = WhitenValue(PreWhiten(p, i, k), cnt ? cnt[i] : 1.0, mu, inv_std);
        else a = RowValue(method, rewards[i], *k, double(i), rank, baseline ? baseline[i] : 0.0);
        out[i] = float(a);
      }
    });
  }
  uint8_t* inf = p.informative;
  ParallelFor(out_groups, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      uint8_t v = 0;
      if (g < G)
        for (int64_t k = 0; k < K; ++k) v |= rec[size_t(g * K + k)].max > rec[size_t(g * K + k)].min ? 1 : 0;
      inf[g] = v;
    }
  });
}

// ---- consecutive groups, one reward column: vectorised (group_advantages_isa.inc)

constexpr int64_t kGaMaxGroupSize = 256;  // the transposed tile of a block (<= 16 KB) stays in L1
constexpr int64_t kGaChunkGroups = 512;   // groups per partial of the batch-wide sums

struct GaPartial {
  double sum = 0, m2 = 0;               // the rewards' (grpo batch)
  double wn = 0, wmean = 0, wm2 = 0;    // reinforce++: the token-weighted record of r - mean_g
};
struct GaArgs {
  const float* rewards;     // [B]
  const float* baseline;    // [B] (remax) or null
  const double* counts;     // [B] token weights of opo's records, or null
  const int32_t* counts32;  // [B] the same from int32 tokenCounts as given (then counts is null)
  const double* tokens;     // [B] tokens per row (reinforce++'s whitening), or null
  const int32_t* tokens32;  // [B] the same from int32 tokenCounts as given (then tokens is null)
  int64_t gs, groups;       // group size, G = B / gs
  AdvantageMethod method;
  AdvantageScale scale;
  bool global;              // a batch-wide factor from the groups' pass (grpo batch, reinforce++)
  double eps;
  float* out;               // [B]
  uint8_t* informative;     // [G]
  double* means;            // [G] scratch (global)
  GaPartial* partials;      // [chunks] scratch (global)
};

bool GaEligible(const GroupAdvantagesParams& p) {
  if (p.group_size <= 0 || p.group_size > kGaMaxGroupSize || p.cols != 1 || p.batch <= 0) return false;
  if (p.task_ids && p.method != AdvantageMethod::kTmnReweight) return false;
  switch (p.method) {
    case AdvantageMethod::kTmnReweight:
    case AdvantageMethod::kGrpo:
    case AdvantageMethod::kDrGrpo:
    case AdvantageMethod::kRloo:
    case AdvantageMethod::kOpo:
    case AdvantageMethod::kRemax:
    case AdvantageMethod::kGpg:
    case AdvantageMethod::kReinforcePP:
      return true;
    case AdvantageMethod::kGrpoPassk:
      // A group of one is the generic path's error; another rank's call
      // owns no top row (RowValue's owner == rank).
      return p.group_size >= 2 && p.rank == 0;
    default:
      return false;
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
namespace ga_avx512 {
constexpr int kGaW = 8;
#define RLK_GA_NATIVE __m512d
#define RLK_GA_SQRT _mm512_sqrt_pd
#define RLK_GA_LOADF(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define RLK_GA_LOADI(p) _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))
#define RLK_GA_GTMASK(a, b) uint32_t(_mm512_cmp_pd_mask(__m512d(a), __m512d(b), _CMP_GT_OQ))
#define RLK_GA_GATHER(dst, base, off) \
  _mm512_store_ps(dst, _mm512_i32gather_ps(_mm512_load_si512(off), base, 4))
#define RLK_GA_GATHER_D(dst, base, off)                                                                             \
  (_mm512_store_pd(dst, _mm512_i32gather_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(off)), base, 8)), \
   _mm512_store_pd((dst) + 8, _mm512_i32gather_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(off) + 1), base, 8)))
// Groups of 16, 16 groups a block: the block is a 16 x 16 float matrix, one
// register a group, transposed in registers (64 shuffles for 256 rewards;
// the 16 gathers of a row each cost ~40 % of a grpo call at B = 65536). tile
// row j = reward j of groups g0 .. g0 + 15 (those past G - 1 repeat G - 1).
inline void GaTranspose16(const float* rewards, int64_t g0, int64_t G, float* tile) {
  __m512 r[16], t[16];
  for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(rewards + std::min<int64_t>(g0 + l, G - 1) * 16);
  // Within each 128-bit lane k: t[2i] = {r2i[4k], r2i+1[4k], r2i[4k+1], r2i+1[4k+1]}, t[2i+1] the
  // same of 4k+2, 4k+3.
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4i + m]'s lane k: rows 4i .. 4i + 3 of column 4k + m.
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Column 4k + m = lane k of r[m], r[4 + m], r[8 + m], r[12 + m].
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44), v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44), w1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
    _mm512_store_ps(tile + m * 16, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_store_ps(tile + (4 + m) * 16, _mm512_shuffle_f32x4(v0, w0, 0xDD));
    _mm512_store_ps(tile + (8 + m) * 16, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_store_ps(tile + (12 + m) * 16, _mm512_shuffle_f32x4(v1, w1, 0xDD));
  }
}
#define RLK_GA_TRANSPOSE16 GaTranspose16
#include "group_advantages_isa.inc"
#undef RLK_GA_TRANSPOSE16
#undef RLK_GA_NATIVE
#undef RLK_GA_SQRT
#undef RLK_GA_LOADF
#undef RLK_GA_LOADI
#undef RLK_GA_GTMASK
#undef RLK_GA_GATHER
#undef RLK_GA_GATHER_D
}  // namespace ga_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace ga_avx2 {
constexpr int kGaW = 4;
#define RLK_GA_NATIVE __m256d
#define RLK_GA_SQRT _mm256_sqrt_pd
#define RLK_GA_LOADF(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define RLK_GA_LOADI(p) _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
#define RLK_GA_GTMASK(a, b) uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(__m256d(a), __m256d(b), _CMP_GT_OQ)))
// Groups of a multiple of 8, 8 groups a block: each 8 rows of the block are
// an 8 x 8 float matrix (one register a group), transposed in registers (24
// shuffles for 64 rewards). AVX2 has gathers too slow to pay, and the scalar
// transpose (a store a reward) was most of an opo call at B = 65536 (0.8x
// torch.compile on AVX2). tile row j = reward j of groups g0 .. g0 + 7 (those
// past G - 1 repeat G - 1).
inline void GaTranspose8(const float* rewards, int64_t g0, int64_t G, int64_t gs, float* tile) {
  const float* src[8];
  const float* base = rewards + g0 * gs;
  if (g0 + 8 <= G)  // a whole block (the clamped form's address arithmetic is a third of the transpose)
    for (int l = 0; l < 8; ++l) src[l] = base + l * gs;
  else
    for (int l = 0; l < 8; ++l) src[l] = rewards + std::min<int64_t>(g0 + l, G - 1) * gs;
  for (int64_t k = 0; k < gs; k += 8) {
    __m256 r[8], t[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src[l] + k);
    // t[2i], t[2i+1]: rows 2i, 2i + 1 interleaved (low and high pairs of each 128-bit half).
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4h + m]: column m (or m + 4 in the high half) of rows 4h .. 4h + 3.
    for (int h = 0; h < 2; ++h) {
      r[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int m = 0; m < 4; ++m) {
      _mm256_store_ps(tile + (k + m) * 8, _mm256_permute2f128_ps(r[m], r[4 + m], 0x20));
      _mm256_store_ps(tile + (k + 4 + m) * 8, _mm256_permute2f128_ps(r[m], r[4 + m], 0x31));
    }
  }
}
// Groups of 16, a whole block of 8, without the transposed tile: each group's
// sums in one register of 4 doubles (its 16 rewards widened 4 at a time,
// added as a tree), then the 4 groups' registers reduced to one register of
// their 4 sums (GaSum4); the min and max on floats, the block's 8 reduced to
// one register by the same halving: no 8 x 8 transposes, no tile stores and
// no row loop of 16 dependent adds (B = 65536, one thread: rloo 11 %, opo
// 13 %, remax 19 % faster). A group's sum is then taken in a different order
// from GroupRecordOf's (a tree of the 16, not in row order), the same every
// call and on any thread count.
// [a0 + a1 + a2 + a3, b.., c.., d..] of four registers.
inline __m256d GaSum4(__m256d a, __m256d b, __m256d c, __m256d d) {
  const __m256d t0 = _mm256_hadd_pd(a, b), t1 = _mm256_hadd_pd(c, d);  // [a01, b01, a23, b23], [c01, d01, c23, d23]
  return _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x21), _mm256_blend_pd(t0, t1, 0xC));
}
inline __m256d GaCount4(const int32_t* c) { return _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))); }
inline __m256d GaCount4(const double* c) { return _mm256_loadu_pd(c); }
// The min (kMax: the max) of each of the 8 registers v[0..7], one lane each,
// in the lane order v[0], v[2], v[4], v[6], v[1], v[3], v[5], v[7].
template <bool kMax>
inline __m256 GaMinMax8(const __m256* v) {
  auto f = [](__m256 a, __m256 b) { return kMax ? _mm256_max_ps(a, b) : _mm256_min_ps(a, b); };
  __m256 p[4], q[2];
  for (int i = 0; i < 4; ++i)  // [group 2i: 4 lanes | group 2i + 1: 4 lanes]
    p[i] = f(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20), _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
  for (int i = 0; i < 2; ++i)  // halves: [4i: 2, 4i + 2: 2], [4i + 1: 2, 4i + 3: 2]
    q[i] = f(_mm256_shuffle_ps(p[2 * i], p[2 * i + 1], 0x88), _mm256_shuffle_ps(p[2 * i], p[2 * i + 1], 0xDD));
  return f(_mm256_shuffle_ps(q[0], q[1], 0x88), _mm256_shuffle_ps(q[0], q[1], 0xDD));
}
// Groups g .. g + 7 from r = rewards + 16 g (c: their token weights, int32 or
// double; C = float: none): sum, mean, m2 (kM2, else zeros), min, max, and
// with weights their sum w and the sum of c r, wr; 8 doubles each.
template <bool kM2, class C>
inline void GaRecords16(const float* r, const C* c, double* sum, double* mean, double* m2, double* mn, double* mx, double* w,
                        double* wr) {
  constexpr bool kWeights = !std::is_same_v<C, float>;
  const __m256 pinf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
  __m256 lo[8], hi[8];
  for (int h = 0; h < 8; h += 4) {
    __m256d s[4], ws[4], wrs[4];
    for (int g = 0; g < 4; ++g) {
      const float* p = r + (h + g) * 16;
      const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
      // min(a, +inf) is +inf in a NaN lane (its second operand): NaN rewards
      // are skipped, as GroupRecordOf's compares skip them.
      lo[h + g] = _mm256_min_ps(b, _mm256_min_ps(a, pinf));
      hi[h + g] = _mm256_max_ps(b, _mm256_max_ps(a, ninf));
      __m256d d[4];
      for (int i = 0; i < 4; ++i) d[i] = _mm256_cvtps_pd(_mm_loadu_ps(p + 4 * i));
      s[g] = _mm256_add_pd(_mm256_add_pd(d[0], d[1]), _mm256_add_pd(d[2], d[3]));
      if constexpr (kWeights) {
        __m256d k[4];
        for (int i = 0; i < 4; ++i) k[i] = GaCount4(c + (h + g) * 16 + 4 * i);
        ws[g] = _mm256_add_pd(_mm256_add_pd(k[0], k[1]), _mm256_add_pd(k[2], k[3]));
        wrs[g] = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(k[0], d[0]), _mm256_mul_pd(k[1], d[1])),
                               _mm256_add_pd(_mm256_mul_pd(k[2], d[2]), _mm256_mul_pd(k[3], d[3])));
      }
    }
    const __m256d total = GaSum4(s[0], s[1], s[2], s[3]);
    _mm256_storeu_pd(sum + h, total);
    _mm256_storeu_pd(mean + h, _mm256_mul_pd(total, _mm256_set1_pd(1.0 / 16)));  // exact: a power of 2
    if constexpr (kWeights) {
      _mm256_storeu_pd(w + h, GaSum4(ws[0], ws[1], ws[2], ws[3]));
      _mm256_storeu_pd(wr + h, GaSum4(wrs[0], wrs[1], wrs[2], wrs[3]));
    }
    if constexpr (kM2) {
      for (int g = 0; g < 4; ++g) {
        const float* p = r + (h + g) * 16;
        const __m256d m = _mm256_broadcast_sd(mean + h + g);
        __m256d e[4];
        for (int i = 0; i < 4; ++i) {
          const __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + 4 * i)), m);
          e[i] = _mm256_mul_pd(d, d);
        }
        s[g] = _mm256_add_pd(_mm256_add_pd(e[0], e[1]), _mm256_add_pd(e[2], e[3]));
      }
      _mm256_storeu_pd(m2 + h, GaSum4(s[0], s[1], s[2], s[3]));
    } else {
      _mm256_storeu_pd(m2 + h, _mm256_setzero_pd());
    }
  }
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // back to groups 0 .. 7
  const __m256 lo8 = _mm256_permutevar8x32_ps(GaMinMax8<false>(lo), order), hi8 = _mm256_permutevar8x32_ps(GaMinMax8<true>(hi), order);
  _mm256_storeu_pd(mn, _mm256_cvtps_pd(_mm256_castps256_ps128(lo8)));
  _mm256_storeu_pd(mn + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(lo8, 1)));
  _mm256_storeu_pd(mx, _mm256_cvtps_pd(_mm256_castps256_ps128(hi8)));
  _mm256_storeu_pd(mx + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(hi8, 1)));
}
#define RLK_GA_RECORDS16 GaRecords16
#define RLK_GA_TRANSPOSE8 GaTranspose8
#include "group_advantages_isa.inc"
#undef RLK_GA_RECORDS16
#undef RLK_GA_TRANSPOSE8
#undef RLK_GA_NATIVE
#undef RLK_GA_SQRT
#undef RLK_GA_LOADF
#undef RLK_GA_LOADI
#undef RLK_GA_GTMASK
}  // namespace ga_avx2
#pragma GCC pop_options
namespace ga_baseline {
constexpr int kGaW = 2;
#define RLK_GA_NATIVE __m128d
#define RLK_GA_SQRT _mm_sqrt_pd
#define RLK_GA_LOADF(p) _mm_cvtps_pd(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))))
#define RLK_GA_LOADI(p) _mm_cvtepi32_pd(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))
#define RLK_GA_GTMASK(a, b) uint32_t(_mm_movemask_pd(_mm_cmpgt_pd(__m128d(a), __m128d(b))))
#include "group_advantages_isa.inc"
#undef RLK_GA_NATIVE
#undef RLK_GA_SQRT
#undef RLK_GA_LOADF
#undef RLK_GA_LOADI
#undef RLK_GA_GTMASK
}  // namespace ga_baseline
#pragma GCC diagnostic pop

// Per-thread scratch: reused across calls so a training loop does not
// page-fault fresh buffers every step; released when a call needed more
// than kKeepBytes.
struct Scratch {
  IdTable table;
  Groups grp;
  std::vector<Rec> rec, rec2;
  std::vector<int64_t> task;
  std::vector<Coef> coef;
  std::vector<double> counts, means, m2s;
  std::vector<GaPartial> partials;
  std::vector<double> task_groups, task_mean, task_var;
  size_t Bytes() const {
    return (grp.slot.capacity() + grp.ids.capacity() + grp.offsets.capacity() + grp.rows.capacity() + task.capacity()) * 8 +
           (rec.capacity() + rec2.capacity()) * sizeof(Rec) + coef.capacity() * sizeof(Coef) +
           (counts.capacity() + means.capacity() + m2s.capacity()) * 8 + partials.capacity() * sizeof(GaPartial) +
           (task_groups.capacity() + task_mean.capacity() + task_var.capacity()) * 8;
  }
};
constexpr size_t kKeepBytes = size_t(64) << 20;

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}
void TrimScratch() {
  if (ThreadScratch().Bytes() > kKeepBytes) ThreadScratch() = Scratch{};
}

Status GaFwd(GroupAdvantagesParams p, InformativeAlloc alloc, void* ctx, Scratch& w) {
  const int64_t G = p.batch / p.group_size;
  if (p.num_groups >= 0 && p.num_groups != G) return Error("numGroups must be B / groupSize");
  // int32 tokenCounts are read as they are (reinforce++'s whitening, opo's
  // weights), not copied into a [B] double array first (15 % of an opo call).
  const int32_t* tokens32 = (p.method == AdvantageMethod::kReinforcePP || p.method == AdvantageMethod::kOpo) && p.token_counts &&
                                    p.token_counts_dtype == DType::kInt32
                                ? static_cast<const int32_t*>(p.token_counts)
                                : nullptr;
  if (tokens32) {
    // Checked by GaForward as it reads them (below).
  } else if (p.token_counts) {
    w.counts.resize(size_t(p.batch));  // no clear(): that would zero it again every call
    const simd::IsaKind isa = simd::Isa();
    const bool ok = isa == simd::IsaKind::kAvx512 ? ga_avx512::GaTokenCounts(p.token_counts, p.token_counts_dtype, p.batch, w.counts.data())
                    : isa == simd::IsaKind::kAvx2 ? ga_avx2::GaTokenCounts(p.token_counts, p.token_counts_dtype, p.batch, w.counts.data())
                                                  : ga_baseline::GaTokenCounts(p.token_counts, p.token_counts_dtype, p.batch, w.counts.data());
    if (!ok) return Error("tokenCounts must be >= 0");
  } else {
    RLK_TRY(TokenCounts(p, &w.counts));
  }
  if (!p.informative) {
    p.informative = alloc ? alloc(G, ctx) : nullptr;
    if (!p.informative) return Status{Status::kOutOfMemory, "groupAdvantages: could not allocate informative"};
  }
  // gpg's batch-wide factor is a count of the rewards, taken before the
  // groups' pass (GaForward): not a global of that pass.
  const bool global = p.method == AdvantageMethod::kReinforcePP || (p.method == AdvantageMethod::kGrpo && p.scale == AdvantageScale::kBatch);
  w.means.resize(global ? size_t(G) : 0);
  w.partials.assign(global ? size_t((G + kGaChunkGroups - 1) / kGaChunkGroups) : 0, GaPartial{});
  const bool opo = p.method == AdvantageMethod::kOpo;
  GaArgs a{p.rewards, p.baseline, opo && !tokens32 ? w.counts.data() : nullptr, opo ? tokens32 : nullptr,
           p.method == AdvantageMethod::kReinforcePP && !tokens32 ? w.counts.data() : nullptr, opo ? nullptr : tokens32,
           p.group_size, G, p.method, p.scale, global, p.eps, p.advantages, p.informative, w.means.data(), w.partials.data()};
  bool counts_ok = true;
  switch (simd::Isa()) {
    case simd::IsaKind::kAvx512: counts_ok = ga_avx512::GaForward(a); break;
    case simd::IsaKind::kAvx2: counts_ok = ga_avx2::GaForward(a); break;
    default: counts_ok = ga_baseline::GaForward(a); break;
  }
  return counts_ok ? Status::Ok() : Error("tokenCounts must be >= 0");
}

// tmn-reweight's task of each group (tk: [G]); false when a task id changes within a group.
template <class I>
bool GaGroupTasks(const I* ids, int64_t G, int64_t gs, int64_t* tk) {
  std::atomic<bool> bad{false};
  ParallelFor(G, std::max<int64_t>(1, 8192 / gs), [=, &bad](int64_t g0, int64_t g1) {
    I diff = 0;  // nonzero iff some id differs from its group's first (no exit: the loop vectorises)
    for (int64_t g = g0; g < g1; ++g) {
      const I t = ids[g * gs];
      for (int64_t j = 1; j < gs; ++j) diff |= ids[g * gs + j] ^ t;
      tk[g] = int64_t(t);
    }
    if (diff != 0) bad.store(true);
  });
  return !bad.load();
}

// tmn-reweight over consecutive groups: stage 1 as vector lanes
// (GaMoments), stage 2's task aggregates over the groups in slot order as
// Coefficients does, then stage 3 and the rows in one pass per group.
Status GaTmn(GroupAdvantagesParams p, InformativeAlloc alloc, void* ctx, Scratch& w) {
  const int64_t gs = p.group_size, G = p.batch / gs;
  if (p.num_groups >= 0 && p.num_groups != G) return Error("numGroups must be B / groupSize");
  w.task.resize(size_t(G));
  int64_t* tk = w.task.data();
  if (!p.task_ids) std::fill(tk, tk + G, 0);
  else if (!(p.task_ids_dtype == DType::kInt64 ? GaGroupTasks(static_cast<const int64_t*>(p.task_ids), G, gs, tk)
                                              : GaGroupTasks(static_cast<const int32_t*>(p.task_ids), G, gs, tk)))
    return Error("taskIds must be constant within a group");
  if (!p.informative) {
    p.informative = alloc ? alloc(G, ctx) : nullptr;
    if (!p.informative) return Status{Status::kOutOfMemory, "groupAdvantages: could not allocate informative"};
  }
  w.means.resize(size_t(G));
  w.m2s.resize(size_t(G));
  switch (simd::Isa()) {
    case simd::IsaKind::kAvx512: ga_avx512::GaMoments(p.rewards, G, gs, w.means.data(), w.m2s.data(), p.informative); break;
    case simd::IsaKind::kAvx2: ga_avx2::GaMoments(p.rewards, G, gs, w.means.data(), w.m2s.data(), p.informative); break;
    default: ga_baseline::GaMoments(p.rewards, G, gs, w.means.data(), w.m2s.data(), p.informative); break;
  }
  // Tasks numbered in order of first appearance; each task's sums over its
  // groups in slot order (Coefficients' order, so the same doubles). A
  // group's record here is (n = gs, mean, M2): GroupMean and GroupVar.
  const double* means = w.means.data();
  const double* m2s = w.m2s.data();
  auto var_of = [&](int64_t g) {
    Rec s;
    s.n = double(gs);
    s.m2 = m2s[g];
    return GroupVar(s);
  };
  auto mean_of = [&](int64_t g) { return gs > 1 ? means[g] : 0.0; };  // GroupMean
  // Raw pointers: the stores through them could alias the thread_local
  // scratch for all the compiler knows, which re-derives it every group.
  w.task_groups.resize(size_t(G));
  w.task_mean.resize(size_t(G));
  w.task_var.resize(size_t(G));
  double* tg = w.task_groups.data();
  double* tsm = w.task_mean.data();
  double* tsv = w.task_var.data();
  int64_t tasks = 0;
  if (!p.task_ids) {
    double sm = 0, sv = 0;  // one task: the sums in registers, the same order
    for (int64_t g = 0; g < G; ++g) {
      sm += mean_of(g);
      sv += var_of(g);
    }
    tasks = 1;
    tg[0] = double(G);
    tsm[0] = sm;
    tsv[0] = sv;
  } else {
    int64_t lo, hi;
    IdRange(tk, G, &lo, &hi);
    IdTable& table = w.table;
    table.Reset(G, lo, hi);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t t = table.Insert(tk[g]);
      if (t == tasks) {
        tg[t] = tsm[t] = tsv[t] = 0;
        ++tasks;
      }
      tg[t] += 1;
      tsm[t] += mean_of(g);
      tsv[t] += var_of(g);
      tk[g] = t;
    }
  }
  // Per task: its mean of group means and TmnCoefficient's scale (in place).
  for (int64_t t = 0; t < tasks; ++t) {
    const double mt = tsm[t] / tg[t];
    tsv[t] = TmnCoefficient(Rec{}, mt, tsv[t] / tg[t], p.eps, p.alpha).scale_pos;
    tsm[t] = mt;
  }
  // TmnCoefficient's smoothed mean m of each group, here (compiled without
  // FMA, as the generic path) so that the ISA code compares with the same m.
  double* thr = w.m2s.data();
  const double* tm = tsm;
  const double alpha = p.alpha;
  if (gs > 1)
    for (int64_t g = 0; g < G; ++g) thr[g] = alpha * means[g] + (1 - alpha) * tm[tk[g]];
  else
    for (int64_t g = 0; g < G; ++g) thr[g] = tm[tk[g]];
  const double* ts = tsv;
  switch (simd::Isa()) {
    case simd::IsaKind::kAvx512: ga_avx512::GaTmnRows(p.rewards, means, thr, tk, ts, G, gs, p.reweight, p.gamma, p.advantages); break;
    case simd::IsaKind::kAvx2: ga_avx2::GaTmnRows(p.rewards, means, thr, tk, ts, G, gs, p.reweight, p.gamma, p.advantages); break;
    default: ga_baseline::GaTmnRows(p.rewards, means, thr, tk, ts, G, gs, p.reweight, p.gamma, p.advantages); break;
  }
  return Status::Ok();
}

Status FwdImpl(const GroupAdvantagesParams& p0, InformativeAlloc alloc, void* ctx, Scratch& w) {
  if (GaEligible(p0)) return p0.method == AdvantageMethod::kTmnReweight ? GaTmn(p0, alloc, ctx, w) : GaFwd(p0, alloc, ctx, w);
  GroupAdvantagesParams p = p0;
  RLK_TRY(Number(p, p.num_groups, &w.table, &w.grp));
  const int64_t G = w.grp.count;
  RLK_TRY(TokenCounts(p, &w.counts));
  RLK_TRY(Records(p, w.grp, w.counts, true, &w.rec, &w.task));
  Coefficients(p, G, w.rec, w.task, &w.coef);
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    RLK_TRY(Round2(p, w.grp, G, w.coef, w.counts, &w.rec2));
    if (p.method == AdvantageMethod::kTmnReweight)
      for (int64_t g = 0; g < G; ++g) ApplyTmnReweight(&w.coef[size_t(g)], w.rec2[size_t(g)].mean, p.gamma);
    else RLK_TRY(CheckWhiten(p, w.rec2[0]));
  }
  const int64_t out_groups = p.num_groups >= 0 ? p.num_groups : G;
  if (!p.informative) {
    p.informative = alloc ? alloc(out_groups, ctx) : nullptr;
    if (!p.informative && out_groups > 0) return Status{Status::kOutOfMemory, "groupAdvantages: could not allocate informative"};
  }
  Finalize(p, w.grp, G, out_groups, w.rec, w.coef, w.rec2, w.counts);
  return Status::Ok();
}

// ---- cross-rank ---------------------------------------------------------------

void PackRow(int64_t* row, int64_t width, int64_t id, int64_t task, int64_t present, const Rec* recs, int64_t K) {
  std::fill(row, row + width, 0);
  row[kWordId] = id;
  row[kWordTask] = task;
  row[kWordPresent] = present;
  row[kWordCount] = int64_t(recs[0].n);
  for (int64_t k = 0; k < K; ++k) PackRecord(recs[k], row, k);
}

// The combined round-1 partials as slots: records [rows, K], tasks, and the
// table of their ids.
struct Combined {
  int64_t rows = 0;
  std::vector<Rec> rec;
  std::vector<int64_t> task;
  IdTable table;
};
Status Unpack(const int64_t* stats, int64_t rows, int64_t K, Combined* c) {
  c->rows = rows;
  c->rec.assign(size_t(rows * K), Rec{});
  c->task.assign(size_t(rows), 0);
  c->table.Reset(rows, 1, 0);
  for (int64_t g = 0; g < rows; ++g) {
    const int64_t* row = stats + g * PartialWidth(K);
    if (row[kWordPresent] == 0) continue;
    if (row[kWordCount] < 0) return Error("stats holds a record with a negative count");
    if (c->table.Find(row[kWordId]) >= 0) return Error("stats holds a group id twice");
    c->table.Put(row[kWordId], g);
    c->task[size_t(g)] = row[kWordTask];
    for (int64_t k = 0; k < K; ++k) c->rec[size_t(g * K + k)] = UnpackRecord(row, k);
  }
  return Status::Ok();
}

// This rank's rows in the combined slots.
Status LookUp(const GroupAdvantagesParams& p, const Combined& c, Groups* g) {
  g->gs = 0;
  g->count = c.rows;
  g->slot.resize(size_t(p.batch));
  for (int64_t i = 0; i < p.batch; ++i) {
    const int64_t s = c.table.Find(LoadIndex(p.group_ids, p.group_ids_dtype, i));
    if (s < 0 || s >= c.rows) return Error("groupIds hold an id that no record of stats has");
    g->slot[size_t(i)] = s;
  }
  BuildCsr(p.batch, g);
  return Status::Ok();
}

}  // namespace

Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, InformativeAlloc alloc, void* ctx) {
  Status st = FwdImpl(p, alloc, ctx, ThreadScratch());
  TrimScratch();
  return st;
}

Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows, int64_t* out) {
  Scratch w;
  RLK_TRY(TokenCounts(p, &w.counts));
  if (!stats1) {
    RLK_TRY(Number(p, p.num_groups, &w.table, &w.grp));
    RLK_TRY(Records(p, w.grp, w.counts, false, &w.rec, &w.task));
    const int64_t K = p.cols, width = PartialWidth(K);
    for (int64_t g = 0; g < p.num_groups; ++g) {
      if (g < w.grp.count) PackRow(out + g * width, width, w.grp.ids[size_t(g)], w.task[size_t(g)], 1, &w.rec[size_t(g * K)], K);
      else std::fill(out + g * width, out + (g + 1) * width, 0);
    }
    return Status::Ok();
  }
  Combined c;
  RLK_TRY(Unpack(stats1, stats1_rows, p.cols, &c));
  RLK_TRY(LookUp(p, c, &w.grp));
  Coefficients(p, c.rows, c.rec, c.task, &w.coef);
  RLK_TRY(Round2(p, w.grp, c.rows, w.coef, w.counts, &w.rec2));
  const int64_t width = PartialWidth(1);
  for (size_t g = 0; g < w.rec2.size(); ++g) PackRow(out + g * width, width, int64_t(g), 0, 1, &w.rec2[g], 1);
  return Status::Ok();
}

Status GroupAdvantagesCombine(const int64_t* const* parts, int64_t num_parts, int64_t rows, int64_t width, int64_t* out) {
  if ((width - kPartialHead) % kPartialPerCol != 0 || width <= kPartialHead) return Error("partials have a bad width");
  const int64_t K = (width - kPartialHead) / kPartialPerCol;
  IdTable table;
  table.Reset(rows * num_parts, 1, 0);
  std::vector<Rec> acc;
  std::vector<int64_t> ids, tasks;
  for (int64_t r = 0; r < num_parts; ++r) {
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t* row = parts[r] + k * width;
      if (row[kWordPresent] == 0) continue;
      if (row[kWordCount] < 0) return Error("partials hold a record with a negative count");
      const int64_t s = table.Insert(row[kWordId]);
      if (s == int64_t(ids.size())) {
        if (s >= rows) return Error("partials hold more distinct groups than rows (raise numGroups)");
        ids.push_back(row[kWordId]);
        tasks.push_back(row[kWordTask]);
        acc.resize(acc.size() + size_t(K));
      } else if (tasks[size_t(s)] != row[kWordTask]) {
        return Error("partials disagree on a group's task (taskIds must be constant within a group across ranks)");
      }
      for (int64_t col = 0; col < K; ++col) {
        Rec b = UnpackRecord(row, col);
        b.owner = double(r);
        MergeGroupRecord(&acc[size_t(s * K + col)], b);
      }
    }
  }
  for (int64_t g = 0; g < rows; ++g) {
    if (g < int64_t(ids.size())) PackRow(out + g * width, width, ids[size_t(g)], tasks[size_t(g)], 1, &acc[size_t(g * K)], K);
    else std::fill(out + g * width, out + (g + 1) * width, 0);
  }
  return Status::Ok();
}

Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows,
                               const int64_t* stats2) {
  Scratch w;
  Combined c;
  RLK_TRY(TokenCounts(p, &w.counts));
  RLK_TRY(Unpack(stats1, stats1_rows, p.cols, &c));
  RLK_TRY(LookUp(p, c, &w.grp));
  for (int64_t g = 0; g < c.rows; ++g)
    if (p.method == AdvantageMethod::kGrpoPassk && c.rec[size_t(g)].n == 1)
      return Error("grpo-passk needs groups of at least 2 rows, got a group of one");
  Coefficients(p, c.rows, c.rec, c.task, &w.coef);
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    const int64_t rows2 = AdvantageRound2Rows(p.method, c.rows);
    w.rec2.resize(size_t(rows2));
    for (int64_t g = 0; g < rows2; ++g) w.rec2[size_t(g)] = UnpackRecord(stats2 + g * PartialWidth(1), 0);
    if (p.method == AdvantageMethod::kTmnReweight)
      for (int64_t g = 0; g < c.rows; ++g) ApplyTmnReweight(&w.coef[size_t(g)], w.rec2[size_t(g)].mean, p.gamma);
    else RLK_TRY(CheckWhiten(p, w.rec2[0]));
  }
  Finalize(p, w.grp, c.rows, c.rows, c.rec, w.coef, w.rec2, w.counts);
  return Status::Ok();
}

Status BroadcastAdvantages(const BroadcastAdvantagesParams& p) {
  const int64_t T = p.seq_len;
  ParallelFor(p.batch, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(T, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float a = p.advantages[i];
      const uint8_t* m = p.mask + i * T;
      float* o = p.out + i * T;
      for (int64_t t = 0; t < T; ++t) o[t] = m[t] ? a : 0.0f;
    }
  });
  return Status::Ok();
}

}  // namespace rlk::cpu
