// Group advantages (DESIGN 3.6, LOSSES.md section 4): every method is a
// small entry over one machinery, shared by the single-process call, the
// cross-rank protocol, the CPU and the CUDA side:
//   0. numbering: group ids of any int32/int64 values become slots 0..G-1 in
//      order of first appearance (the order of `informative`);
//   1. group records: one GroupRecord per group and reward column (count,
//      Chan mean/M2, min, max, the top two and where the first max is, the
//      token-weighted mean, the nonzero count), and the group's task id;
//   2. coefficients: per group (and column) the GroupCoef of the method, from
//      the records, the batch record (their merge in slot order) and, for
//      tmn-reweight, the task aggregates;
//   3. a second record set where a statistic needs stage 2's result:
//      tmn-reweight's fraction above the smoothed mean (per group), the
//      token-weighted whitening record of reinforce++ and gdpo (one);
//   4. the per-row formula (RowValue, then the whitening) and informative.
// Records of several ranks merge with Chan's formula in rank order, which
// does not cancel the way sums of squares do; the cross-rank partials carry
// them as int64 words (ids exactly, doubles by their bits), so the exchange
// is exact and a plain all-gather.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "rlk/common.h"

namespace rlk {

// The numbering is shared with src/group_advantages.ts (METHOD_CODES, SCALE_CODES).
enum class AdvantageMethod : int32_t {
  kGrpo = 0, kDrGrpo = 1, kRloo = 2, kReinforcePP = 3, kTmnReweight = 4,
  kGdpo = 5, kGrpoPassk = 6, kOpo = 7, kRemax = 8, kGpg = 9
};
constexpr int32_t kNumAdvantageMethods = 10;
enum class AdvantageScale : int32_t { kGroup = 0, kBatch = 1, kNone = 2 };

RLK_HD bool AdvantageWhitens(AdvantageMethod m) {
  return m == AdvantageMethod::kReinforcePP || m == AdvantageMethod::kGdpo;
}
// Methods that read per-row token counts (mask or tokenCounts).
RLK_HD bool AdvantageUsesTokens(AdvantageMethod m) { return AdvantageWhitens(m) || m == AdvantageMethod::kOpo; }
// Whether stage 3 exists for a method (and so a second cross-rank round).
RLK_HD bool AdvantageNeedsRound2(AdvantageMethod m, bool reweight) {
  return AdvantageWhitens(m) || (m == AdvantageMethod::kTmnReweight && reweight);
}
// Rows of the round-2 record set: one per group (tmn) or one in all (whitening).
RLK_HD int64_t AdvantageRound2Rows(AdvantageMethod m, int64_t num_groups) { return AdvantageWhitens(m) ? 1 : num_groups; }

constexpr double kWhitenEps = 1e-8;  // verl's masked_whiten: rsqrt(var + 1e-8)

// A statistics record of one group and reward column (or of a batch).
struct GroupRecord {
  double n = 0;                  // rows
  double mean = 0, m2 = 0;       // Chan: mean and sum of squared deviations
  double min = 0, max = 0;
  double max2 = -INFINITY;       // second largest, counting ties (grpo-passk)
  double arg = -1, owner = 0;    // the first row holding max: its row index in its part, and the part (rank)
  double w = 0, wmean = 0;       // token weight sum L and sum(L r) / sum(L) (opo)
  double nonzero = 0;            // rows with r != 0 (gpg)
};

// The record of one row: reward r, row index `row`, token weight L.
RLK_HD GroupRecord RowRecord(double r, double row, double L) {
  GroupRecord s;
  s.n = 1;
  s.mean = r;
  s.min = s.max = r;
  s.arg = row;
  s.w = L;
  s.wmean = L > 0 ? r : 0.0;
  s.nonzero = r != 0 ? 1.0 : 0.0;
  return s;
}

// Merges b into a, where b's rows come after a's (so a keeps the first max
// on ties). Chan et al.'s pairwise update: exact for equal values (delta =
// 0) and free of the cancellation of sum-of-squares forms.
RLK_HD void MergeGroupRecord(GroupRecord* a, const GroupRecord& b) {
  if (!(b.n > 0)) return;
  if (!(a->n > 0)) {
    *a = b;
    return;
  }
  const double n = a->n + b.n, delta = b.mean - a->mean;
  a->mean += delta * (b.n / n);
  a->m2 += b.m2 + delta * delta * (a->n * b.n / n);
  a->min = b.min < a->min ? b.min : a->min;
  if (b.max > a->max) {
    a->max2 = a->max > b.max2 ? a->max : b.max2;
    a->max = b.max;
    a->arg = b.arg;
    a->owner = b.owner;
  } else {
    a->max2 = a->max2 > b.max ? a->max2 : b.max;
  }
  const double w = a->w + b.w;
  a->wmean = w > 0 ? a->wmean + (b.wmean - a->wmean) * (b.w / w) : 0.0;
  a->w = w;
  a->nonzero += b.nonzero;
  a->n = n;
}

// verl's and GoLongRL's group of one: mean 0 and std (var) 1.
RLK_HD double GroupMean(const GroupRecord& s) { return s.n > 1 ? s.mean : 0.0; }
RLK_HD double GroupVar(const GroupRecord& s) { return s.n > 1 ? s.m2 / (s.n - 1) : 1.0; }

// Stage 2's coefficients of a group (and column): the advantage of reward r
// is (r - center) * scale_pos where r > center, else (r - center) *
// scale_neg; threshold is tmn-reweight's smoothed mean m; grpo-passk gives
// `top` to the row (arg, owner) and 0 to the others.
struct GroupCoef {
  double center = 0, scale_pos = 1, scale_neg = 1, threshold = 0;
  double top = 0, arg = -1, owner = 0;
};

// Batch-wide inputs of stage 2: the merge of every group's (column 0) record.
struct BatchStats {
  GroupRecord all;
};
// TRL's scale_rewards='batch': the unbiased std of all B rewards (1 for B < 2,
// as a group of one).
RLK_HD double BatchStd(const BatchStats& b) { return b.all.n > 1 ? sqrt(b.all.m2 / (b.all.n - 1)) : 1.0; }
// GPG's alpha = B / max(#{r != 0}, 1).
RLK_HD double GpgAlpha(const BatchStats& b) { return b.all.n / (b.all.nonzero >= 1 ? b.all.nonzero : 1.0); }

// Every method but tmn-reweight: coefficients from the group's record s
// (of one reward column, with its weight for gdpo).
RLK_HD GroupCoef GroupCoefficient(AdvantageMethod method, AdvantageScale scale, const GroupRecord& s,
                                  const BatchStats& batch, double eps, double weight) {
  GroupCoef c;
  c.center = GroupMean(s);
  double k = 1;
  switch (method) {
    case AdvantageMethod::kGrpo:
      if (scale == AdvantageScale::kGroup) k = 1.0 / (sqrt(GroupVar(s)) + eps);
      else if (scale == AdvantageScale::kBatch) k = 1.0 / (BatchStd(batch) + eps);
      break;
    case AdvantageMethod::kRloo:
      if (s.n > 1) k = s.n / (s.n - 1);
      break;
    case AdvantageMethod::kGdpo:  // one column of S = sum_k w_k grpo_k
      k = weight / (sqrt(GroupVar(s)) + eps);
      break;
    case AdvantageMethod::kGrpoPassk:  // groups of >= 2 (checked in stage 1)
      c.center = 0;
      c.top = (s.max - s.max2) * (scale == AdvantageScale::kNone ? 1.0 : 1.0 / (sqrt(GroupVar(s)) + eps));
      c.arg = s.arg;
      c.owner = s.owner;
      break;
    case AdvantageMethod::kOpo:  // verl: the length-weighted mean; 0 for a group of one
      c.center = s.n > 1 && s.w > 0 ? s.wmean : 0.0;
      break;
    case AdvantageMethod::kRemax:  // the row's own baseline (RowValue)
      c.center = 0;
      break;
    case AdvantageMethod::kGpg:
      k = GpgAlpha(batch);
      break;
    default:  // drgrpo, reinforce++ (whitened later)
      break;
  }
  c.scale_pos = c.scale_neg = k;
  return c;
}

// tmn-reweight (a group with rows): scale 1 / (sqrt(mean over the task's
// groups of var_g) + eps), smoothed mean m = alpha mean_g + (1 - alpha)
// mean_task (mean_task for a group of one).
RLK_HD GroupCoef TmnCoefficient(const GroupRecord& s, double task_mean, double task_var, double eps, double alpha) {
  GroupCoef c;
  c.center = GroupMean(s);
  c.scale_pos = c.scale_neg = 1.0 / (sqrt(task_var) + eps);
  c.threshold = s.n > 1 ? alpha * s.mean + (1 - alpha) * task_mean : task_mean;
  return c;
}
// tmn-reweight's stage-3 record of a group of n rows, `above` of them > m:
// an indicator's record, so Chan's merge gives the global fraction.
RLK_HD GroupRecord AboveRecord(double above, double n) {
  const double frac = above / n;
  GroupRecord s;
  s.n = n;
  s.mean = frac;
  s.m2 = above * (1 - frac);
  s.min = above == n ? 1.0 : 0.0;
  s.max = above > 0 ? 1.0 : 0.0;
  return s;
}
// w = exp(gamma (0.5 - p)) from the (combined) fraction p: A w above the
// group mean, A / w elsewhere.
RLK_HD void ApplyTmnReweight(GroupCoef* c, double frac, double gamma) {
  const double w = exp(gamma * (0.5 - frac)), scale = c->scale_pos;
  c->scale_pos = scale * w;
  c->scale_neg = scale / w;
}
// Whitening moments from the token-weighted record of the values. verl's
// masked_var raises for fewer than two tokens: reinforce++ uses variance 0
// then (the lone token gets 0); gdpo refuses it (stage 3 reports it).
RLK_HD void WhitenMoments(const GroupRecord& w, double* mu, double* inv_std) {
  const double var = w.n > 1 ? w.m2 / (w.n - 1) : 0.0;
  *mu = w.mean;
  *inv_std = 1.0 / sqrt(var + kWhitenEps);
}

// Stage 4 before whitening: the value of a row with reward r (column 0),
// the coefficient k of its group, its index `row` in this part (rank
// `rank`), and its baseline (remax).
RLK_HD double RowValue(AdvantageMethod method, double r, const GroupCoef& k, double row, double rank, double baseline) {
  if (method == AdvantageMethod::kGrpoPassk) return k.arg == row && k.owner == rank ? k.top : 0.0;
  if (method == AdvantageMethod::kRemax) return r - baseline;
  return (r - k.center) * (r > k.center ? k.scale_pos : k.scale_neg);
}
// gdpo's S = sum_k w_k (r_k - mean_gk) / (std_gk + eps), r and k of one row and group.
RLK_HD double GdpoValue(const float* r, const GroupCoef* k, int64_t cols) {
  double s = 0;
  for (int64_t j = 0; j < cols; ++j) s += (double(r[j]) - k[j].center) * k[j].scale_pos;
  return s;
}
// Whitening of a value x of a row with `tokens` tokens (0 for a row without).
RLK_HD double WhitenValue(double x, double tokens, double mu, double inv_std) {
  return tokens > 0 ? (x - mu) * inv_std : 0.0;
}

// ---- cross-rank partials: int64 words ---------------------------------------
// A partial row: id, task id, present (0: an unused row), rows, then per
// reward column the record's doubles by their bits. Round-2 rows are keyed by
// the slot of the round-1 record they belong to.
constexpr int64_t kPartialHead = 4;
constexpr int64_t kPartialPerCol = 10;
RLK_HD int64_t PartialWidth(int64_t cols) { return kPartialHead + kPartialPerCol * cols; }
enum PartialWord : int64_t { kWordId = 0, kWordTask = 1, kWordPresent = 2, kWordCount = 3 };

RLK_HD int64_t DoubleToWord(double d) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(d);
#else
  int64_t u;
  std::memcpy(&u, &d, 8);
  return u;
#endif
}
RLK_HD double WordToDouble(int64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(u);
#else
  double d;
  std::memcpy(&d, &u, 8);
  return d;
#endif
}
// Column `col` of a partial row (the count lives once, in the head).
RLK_HD void PackRecord(const GroupRecord& s, int64_t* row, int64_t col) {
  int64_t* o = row + kPartialHead + kPartialPerCol * col;
  const double v[kPartialPerCol] = {s.mean, s.m2, s.min, s.max, s.max2, s.arg, s.owner, s.w, s.wmean, s.nonzero};
  for (int j = 0; j < kPartialPerCol; ++j) o[j] = DoubleToWord(v[j]);
}
RLK_HD GroupRecord UnpackRecord(const int64_t* row, int64_t col) {
  const int64_t* o = row + kPartialHead + kPartialPerCol * col;
  GroupRecord s;
  s.n = double(row[kWordCount]);
  s.mean = WordToDouble(o[0]);
  s.m2 = WordToDouble(o[1]);
  s.min = WordToDouble(o[2]);
  s.max = WordToDouble(o[3]);
  s.max2 = WordToDouble(o[4]);
  s.arg = WordToDouble(o[5]);
  s.owner = WordToDouble(o[6]);
  s.w = WordToDouble(o[7]);
  s.wmean = WordToDouble(o[8]);
  s.nonzero = WordToDouble(o[9]);
  return s;
}

struct GroupAdvantagesParams {
  const float* rewards = nullptr;        // [B, K] (K = cols; 1 except gdpo)
  int64_t cols = 1;                      // K
  const double* reward_weights = nullptr;  // [K] host memory (gdpo), or null: ones
  const float* baseline = nullptr;       // [B] (remax)
  const void* group_ids = nullptr;       // [B] int32/int64, any values (null when B = 0)
  DType group_ids_dtype = DType::kInt32;
  int64_t group_size = 0;                // > 0: consecutive groups of this many rows (group_ids unused)
  const void* task_ids = nullptr;        // [B] int32/int64, any values, constant within a group; null: one task
  DType task_ids_dtype = DType::kInt32;
  const uint8_t* mask = nullptr;         // [B, T] nonzero = token (reinforce++, gdpo, opo), or null
  const void* token_counts = nullptr;    // [B] int32/int64 >= 0, or null
  DType token_counts_dtype = DType::kInt32;
  int64_t batch = 0;                     // B
  int64_t seq_len = 0;                   // T (with mask)
  int64_t num_groups = 0;                // rows of informative and of the partials: an upper bound on the groups
  AdvantageMethod method = AdvantageMethod::kGrpo;
  AdvantageScale scale = AdvantageScale::kGroup;
  double eps = 1e-6;
  double alpha = 0.8;
  double gamma = 1.0;
  bool reweight = true;
  int64_t rank = 0;                      // this part's index (cross-rank finalize of grpo-passk)

  float* advantages = nullptr;           // [B] out
  uint8_t* informative = nullptr;        // [num_groups] out
  void* stream = nullptr;                // cudaStream_t (CUDA only)
};

struct BroadcastAdvantagesParams {
  const float* advantages = nullptr;  // [B]
  const uint8_t* mask = nullptr;      // [B, T]
  float* out = nullptr;               // [B, T]
  int64_t batch = 0, seq_len = 0;
  int device = 0;                     // CUDA ordinal (CUDA only)
  void* stream = nullptr;
};

// The launchers. Data errors (more distinct groups than num_groups, a task id
// that changes within a group, a negative token count, a grpo-passk group of
// one, gdpo with fewer than two tokens, partials that disagree on a group's
// task or lack a row's group) come back as kOutOfRange on the CPU; on CUDA
// they set the device error word (runtime.h) and surface at the next read.
namespace cpu {
// Single process: advantages [B] and informative [num_groups]. With
// num_groups < 0 the groups found decide its length: alloc_informative(G,
// ctx) gives the buffer once G is known.
using InformativeAlloc = uint8_t* (*)(int64_t groups, void* ctx);
Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, InformativeAlloc alloc_informative = nullptr,
                          void* ctx = nullptr);
// Cross-rank round 1 (stats1 == nullptr): out [num_groups, PartialWidth(K)].
// Round 2 (stats1 = the combined round-1 partials, stats1_rows rows): out
// [AdvantageRound2Rows, PartialWidth(1)].
Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows, int64_t* out);
// Merges parts[0..num_parts) ([rows, width] each) in that order into out
// [rows, width]: rows keyed by id, numbered in order of first appearance.
Status GroupAdvantagesCombine(const int64_t* const* parts, int64_t num_parts, int64_t rows, int64_t width, int64_t* out);
// Advantages [B] and informative [stats1_rows] of this rank's rows from the
// combined partials (stats2 null when the method has no round 2).
Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows,
                               const int64_t* stats2);
Status BroadcastAdvantages(const BroadcastAdvantagesParams& p);
}  // namespace cpu

namespace cuda {
// Device pointers throughout (reward_weights: host); work is enqueued on
// p.stream; the device error word is `error_word` (int32 in device memory).
Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, int device, int32_t* error_word);
Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows, int64_t* out,
                               int device, int32_t* error_word);
// parts: host array of device pointers.
Status GroupAdvantagesCombine(const int64_t* const* parts, int64_t num_parts, int64_t rows, int64_t width, int64_t* out,
                              int device, void* stream, int32_t* error_word);
Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows,
                               const int64_t* stats2, int device, int32_t* error_word);
Status BroadcastAdvantages(const BroadcastAdvantagesParams& p);
}  // namespace cuda

}  // namespace rlk
