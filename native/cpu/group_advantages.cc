// CPU group advantages: the four stages of rlk/group_advantages.h in double.
//
// Determinism: each group's reduction runs on one thread in row order; the
// batch-wide REINFORCE++ reduction runs over fixed chunks of kChunk rows
// merged in chunk order; so nothing depends on the thread count.
#include "rlk/group_advantages.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

constexpr int64_t kChunk = 4096;  // rows per partial of a batch-wide reduction (fixed: not the thread count)
using Stat = GroupRecord;  // the per-group math is shared with CUDA (group_advantages.h)
using Coef = GroupCoef;

inline int64_t LoadIndex(const void* p, DType dt, int64_t i) {
  return dt == DType::kInt64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}

// Rows of each group: implicit for consecutive groups, else a stable
// counting sort of the rows by group id (CSR), which keeps row order
// within a group.
struct Groups {
  int64_t gs = 0;
  std::vector<int64_t> offsets;  // [G + 1] (ids)
  std::vector<int64_t> rows;     // [B] (ids)
  int64_t Begin(int64_t g) const { return gs ? g * gs : offsets[size_t(g)]; }
  int64_t End(int64_t g) const { return gs ? (g + 1) * gs : offsets[size_t(g) + 1]; }
  int64_t Row(int64_t k) const { return gs ? k : rows[size_t(k)]; }
};

Status CheckGroupIds(const GroupAdvantagesParams& p) {
  if (!p.group_ids) return Status::Ok();
  for (int64_t i = 0; i < p.batch; ++i) {
    int64_t g = LoadIndex(p.group_ids, p.group_ids_dtype, i);
    if (g < 0 || g >= p.num_groups) return Status{Status::kOutOfRange, "groupIds must be in [0, numGroups)"};
  }
  return Status::Ok();
}

template <class I>
Status BuildGroupsT(const I* ids, int64_t B, int64_t G, Groups* out) {
  out->gs = 0;
  out->offsets.assign(size_t(G) + 1, 0);
  out->rows.resize(size_t(B));
  int64_t* off = out->offsets.data();
  int64_t* rows = out->rows.data();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t g = int64_t(ids[i]);
    if (g < 0 || g >= G) return Status{Status::kOutOfRange, "groupIds must be in [0, numGroups)"};
    ++off[g + 1];
  }
  for (int64_t g = 0; g < G; ++g) off[g + 1] += off[g];
  // off[g] serves as group g's cursor (it ends at the old off[g + 1]); then
  // shifting by one restores the offsets. Rows keep their order in a group.
  for (int64_t i = 0; i < B; ++i) rows[off[int64_t(ids[i])]++] = i;
  for (int64_t g = G; g > 0; --g) off[g] = off[g - 1];
  off[0] = 0;
  return Status::Ok();
}

Status BuildGroups(const GroupAdvantagesParams& p, Groups* out) {
  if (!p.group_ids) {
    out->gs = p.group_size;
    return Status::Ok();
  }
  if (p.group_ids_dtype == DType::kInt64)
    return BuildGroupsT(static_cast<const int64_t*>(p.group_ids), p.batch, p.num_groups, out);
  return BuildGroupsT(static_cast<const int32_t*>(p.group_ids), p.batch, p.num_groups, out);
}

inline int64_t GroupOf(const GroupAdvantagesParams& p, int64_t i) {
  return p.group_ids ? LoadIndex(p.group_ids, p.group_ids_dtype, i) : i / p.group_size;
}

// Stage 1: one record per group, two passes in double (mean, then M2).
Status GroupStats(const GroupAdvantagesParams& p, const Groups& grp, std::vector<Stat>* out) {
  out->assign(size_t(p.num_groups), Stat{});
  std::atomic<int> bad{0};  // 1: task id out of range, 2: task id changes within a group
  Stat* s = out->data();
  const float* rewards = p.rewards;
  ParallelFor(p.num_groups, 256, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      int64_t b = grp.Begin(g), e = grp.End(g);
      if (b == e) continue;
      double sum = 0, mn = INFINITY, mx = -INFINITY;
      for (int64_t k = b; k < e; ++k) {
        double r = rewards[grp.Row(k)];
        sum += r;
        mn = std::min(mn, r);
        mx = std::max(mx, r);
      }
      double n = double(e - b), mean = sum / n, m2 = 0;
      for (int64_t k = b; k < e; ++k) {
        double d = double(rewards[grp.Row(k)]) - mean;
        m2 += d * d;
      }
      double key = 1;
      if (p.task_ids) {
        int64_t t = LoadIndex(p.task_ids, p.task_ids_dtype, grp.Row(b));
        if (t < 0 || t >= p.num_groups) bad.store(1);
        for (int64_t k = b + 1; k < e; ++k)
          if (LoadIndex(p.task_ids, p.task_ids_dtype, grp.Row(k)) != t) bad.store(2);
        key = double(t) + 1;
      }
      s[g] = Stat{n, mean, m2, mn, mx, key};
    }
  });
  if (bad.load() == 1) return Status{Status::kOutOfRange, "taskIds must be in [0, numGroups)"};
  if (bad.load() == 2) return Status{Status::kOutOfRange, "taskIds must be constant within a group"};
  return Status::Ok();
}

// Stage 2 (GroupCoef, GroupMean and GroupVar of group_advantages.h).
void Coefficients(const GroupAdvantagesParams& p, const std::vector<Stat>& s1, std::vector<Coef>* out) {
  const int64_t G = p.num_groups;
  std::vector<Coef>& c = *out;
  c.assign(static_cast<size_t>(G), Coef{});
  if (p.method != AdvantageMethod::kTmnReweight) {
    for (int64_t g = 0; g < G; ++g) c[size_t(g)] = GroupCoefficient(p.method, s1[size_t(g)], p.eps);
    return;
  }
  // Task aggregates in group order (keys are task + 1 in [1, G]).
  std::vector<double> groups(static_cast<size_t>(G), 0.0), sum_mean(groups), sum_var(groups);
  for (int64_t g = 0; g < G; ++g) {
    const Stat& s = s1[size_t(g)];
    if (s.n == 0) continue;
    size_t t = size_t(s.key) - 1;
    groups[t] += 1;
    sum_mean[t] += GroupMean(s);
    sum_var[t] += GroupVar(s);
  }
  for (int64_t g = 0; g < G; ++g) {
    const Stat& s = s1[size_t(g)];
    if (s.n == 0) continue;
    size_t t = size_t(s.key) - 1;
    c[size_t(g)] = TmnCoefficient(s, sum_mean[t] / groups[t], sum_var[t] / groups[t], p.eps, p.alpha);
  }
}

// tmn-reweight's weight from p, the (combined) fraction of the group's
// rewards above m: w = exp(gamma (0.5 - p)); A w above the group mean, A / w
// elsewhere.
void ApplyReweight(const GroupAdvantagesParams& p, const std::vector<Stat>& s2, std::vector<Coef>* c) {
  for (int64_t g = 0; g < p.num_groups; ++g) ApplyTmnReweight(&(*c)[size_t(g)], s2[size_t(g)].mean, p.gamma);
}

// Tokens per row for REINFORCE++'s whitening (mask rows or token counts).
Status TokenCounts(const GroupAdvantagesParams& p, std::vector<int64_t>* out) {
  out->assign(size_t(p.batch), 0);
  int64_t* c = out->data();
  if (p.token_counts) {
    for (int64_t i = 0; i < p.batch; ++i) {
      int64_t v = LoadIndex(p.token_counts, p.token_counts_dtype, i);
      if (v < 0) return Status{Status::kOutOfRange, "tokenCounts must be >= 0"};
      c[i] = v;
    }
    return Status::Ok();
  }
  const int64_t T = p.seq_len;
  ParallelFor(p.batch, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(T, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint8_t* m = p.mask + i * T;
      int64_t n = 0;
      for (int64_t t = 0; t < T; ++t) n += m[t] != 0;
      c[i] = n;
    }
  });
  return Status::Ok();
}

// Stage 3. tmn-reweight: per group, n = rows and mean = fraction of rewards
// > m (an indicator's record, so Chan's merge gives the global fraction).
// reinforce++: one record of x = r - mean_g over the masked tokens (each
// token carries its sequence's x: weight = token count), two passes.
Status Round2(const GroupAdvantagesParams& p, const Groups& grp, const std::vector<Coef>& c, std::vector<Stat>* out) {
  if (p.method == AdvantageMethod::kTmnReweight) {
    out->assign(size_t(p.num_groups), Stat{});
    Stat* s = out->data();
    ParallelFor(p.num_groups, 256, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        int64_t b = grp.Begin(g), e = grp.End(g);
        if (b == e) continue;
        double m = c[size_t(g)].threshold, above = 0;
        for (int64_t k = b; k < e; ++k) above += double(p.rewards[grp.Row(k)]) > m;
        s[g] = AboveRecord(above, double(e - b));
      }
    });
    return Status::Ok();
  }
  std::vector<int64_t> counts;
  Status st = TokenCounts(p, &counts);
  if (!st.ok()) return st;
  const int64_t chunks = (p.batch + kChunk - 1) / kChunk;
  std::vector<Stat> part(static_cast<size_t>(chunks));
  auto x_of = [&](int64_t i) { return double(p.rewards[i]) - c[size_t(GroupOf(p, i))].center; };
  ParallelFor(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      int64_t b = ch * kChunk, e = std::min(p.batch, b + kChunk);
      double n = 0, sum = 0, mn = INFINITY, mx = -INFINITY;
      for (int64_t i = b; i < e; ++i) {
        if (counts[size_t(i)] == 0) continue;
        double w = double(counts[size_t(i)]), x = x_of(i);
        n += w;
        sum += w * x;
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      if (n == 0) continue;
      double mean = sum / n, m2 = 0;
      for (int64_t i = b; i < e; ++i) {
        if (counts[size_t(i)] == 0) continue;
        double d = x_of(i) - mean;
        m2 += double(counts[size_t(i)]) * d * d;
      }
      part[size_t(ch)] = Stat{n, mean, m2, mn, mx, 1};
    }
  });
  out->assign(1, Stat{});
  for (const Stat& s : part) MergeGroupRecord(&(*out)[0], s);
  return Status::Ok();
}

// Stage 4.
Status Finalize(const GroupAdvantagesParams& p, const std::vector<Stat>& s1, const std::vector<Coef>& c,
                const std::vector<Stat>* s2) {
  const bool whiten = p.method == AdvantageMethod::kReinforcePP;
  std::vector<int64_t> counts;
  double mu = 0, inv_std = 1;
  if (whiten) {
    Status st = TokenCounts(p, &counts);
    if (!st.ok()) return st;
    WhitenMoments((*s2)[0], &mu, &inv_std);
  }
  // Locals, not p's fields, in the loop: the stores through `out` could
  // alias p for all the compiler knows, which reloads every field per row.
  const float* rewards = p.rewards;
  float* out = p.advantages;
  const Coef* coef = c.data();
  const int64_t* cnt = counts.data();
  auto row = [=](int64_t i, const Coef& k) {
    out[i] = float(RowAdvantage(rewards[i], k, whiten, whiten ? cnt[i] : 0, mu, inv_std));
  };
  if (p.group_ids) {
    const void* ids = p.group_ids;
    const DType dt = p.group_ids_dtype;
    ParallelFor(p.batch, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) row(i, coef[LoadIndex(ids, dt, i)]);
    });
  } else {
    const int64_t gs = p.group_size;
    ParallelFor(p.num_groups, std::max<int64_t>(1, (1 << 14) / gs), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const Coef k = coef[g];
        for (int64_t i = g * gs; i < (g + 1) * gs; ++i) row(i, k);
      }
    });
  }
  ParallelFor(p.num_groups, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) p.informative[g] = s1[size_t(g)].max > s1[size_t(g)].min ? 1 : 0;
  });
  return Status::Ok();
}

void ToFloat(const std::vector<Stat>& s, float* out) {
  for (size_t k = 0; k < s.size(); ++k) PackGroupRecord(s[k], out + k * kGroupStatCols);
}

std::vector<Stat> FromFloat(const float* in, int64_t rows) {
  std::vector<Stat> s(static_cast<size_t>(rows));
  for (int64_t k = 0; k < rows; ++k) {
    s[size_t(k)] = UnpackGroupRecord(in + k * kGroupStatCols);
  }
  return s;
}

// Combined records come from the user: keys must name a task in [1, G] so
// that stage 2 indexes inside its arrays.
Status CheckRecords(const std::vector<Stat>& s, int64_t num_groups, const char* what) {
  for (const Stat& r : s) {
    if (!(r.n >= 0) || !GroupKeyValid(r, num_groups))
      return Status{Status::kOutOfRange, what};
  }
  return Status::Ok();
}

// Per-thread scratch of the single-process path: reused across calls so a
// training loop does not page-fault fresh buffers every step; released when
// a call needed more than kKeepBytes.
struct Scratch {
  Groups grp;
  std::vector<Stat> s1, s2;
  std::vector<Coef> c;
  size_t Bytes() const {
    return grp.offsets.capacity() * 8 + grp.rows.capacity() * 8 + (s1.capacity() + s2.capacity()) * sizeof(Stat) +
           c.capacity() * sizeof(Coef);
  }
};
constexpr size_t kKeepBytes = size_t(64) << 20;

Status GroupAdvantagesFwdImpl(const GroupAdvantagesParams& p, Scratch& w) {
  Status st = BuildGroups(p, &w.grp);
  if (!st.ok()) return st;
  st = GroupStats(p, w.grp, &w.s1);
  if (!st.ok()) return st;
  Coefficients(p, w.s1, &w.c);
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    st = Round2(p, w.grp, w.c, &w.s2);
    if (!st.ok()) return st;
    if (p.method == AdvantageMethod::kTmnReweight) ApplyReweight(p, w.s2, &w.c);
  }
  return Finalize(p, w.s1, w.c, &w.s2);
}

}  // namespace

Status GroupAdvantagesFwd(const GroupAdvantagesParams& p) {
  thread_local Scratch scratch;
  Status st = GroupAdvantagesFwdImpl(p, scratch);
  if (scratch.Bytes() > kKeepBytes) scratch = Scratch{};
  return st;
}

Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const float* stats1, float* out) {
  Groups grp;
  Status st = BuildGroups(p, &grp);
  if (!st.ok()) return st;
  std::vector<Stat> s;
  if (!stats1) {
    st = GroupStats(p, grp, &s);
    if (!st.ok()) return st;
  } else {
    std::vector<Stat> s1 = FromFloat(stats1, p.num_groups);
    st = CheckRecords(s1, p.num_groups, "stats1 holds a record whose count or task key is invalid");
    if (!st.ok()) return st;
    std::vector<Coef> c;
    Coefficients(p, s1, &c);
    st = Round2(p, grp, c, &s);
    if (!st.ok()) return st;
  }
  ToFloat(s, out);
  return Status::Ok();
}

Status GroupAdvantagesCombine(const float* const* parts, int64_t num_parts, int64_t rows, float* out) {
  std::atomic<bool> mismatch{false};
  ParallelFor(rows, 1024, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      Stat acc;
      for (int64_t r = 0; r < num_parts; ++r) {
        if (!MergeGroupRecord(&acc, UnpackGroupRecord(parts[r] + k * kGroupStatCols))) mismatch.store(true);
      }
      PackGroupRecord(acc, out + k * kGroupStatCols);
    }
  });
  if (mismatch.load())
    return Status{Status::kOutOfRange, "partials disagree on a group's task (taskIds must be constant within a group across ranks)"};
  return Status::Ok();
}

Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const float* stats1, const float* stats2) {
  Status st = CheckGroupIds(p);
  if (!st.ok()) return st;
  std::vector<Stat> s1 = FromFloat(stats1, p.num_groups), s2;
  st = CheckRecords(s1, p.num_groups, "stats1 holds a record whose count or task key is invalid");
  if (!st.ok()) return st;
  std::vector<Coef> c;
  Coefficients(p, s1, &c);
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    s2 = FromFloat(stats2, AdvantageRound2Rows(p.method, p.num_groups));
    if (p.method == AdvantageMethod::kTmnReweight) ApplyReweight(p, s2, &c);
  }
  return Finalize(p, s1, c, &s2);
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
