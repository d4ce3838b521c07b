// Group advantages (DESIGN 3.6): GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline
// and GoLongRL's TMN-Reweight over groups of sequences, the DAPO
// "informative" flag per group, the broadcast of sequence advantages to
// tokens, and the cross-rank form (partials, combine, finalize).
//
// Every method is computed in the same four stages, so the single-process
// call and the cross-rank protocol run the same arithmetic:
//   1. group statistics: one record per group (count, mean, M2, min, max, key)
//      where key = task id + 1 (1 without tasks; 0 for an empty group);
//   2. per-group coefficients from the records (and, for tmn-reweight, the
//      task aggregates over the groups' records);
//   3. a second record set where the method needs one: tmn-reweight's
//      fraction of each group's rewards above the smoothed mean m (one record
//      per group, its `mean` is the fraction), REINFORCE++'s token-weighted
//      statistics of r - mean_g (one record);
//   4. the per-row advantages and the per-group informative flag.
// Records of several ranks merge with Chan's formula (count, mean, M2), which
// does not cancel the way sums of squares do. In the float32 partials the
// mean travels as a hi + lo pair: Chan's delta (mean_b - mean_a) of a group
// whose spread is small beside its mean would otherwise lose the digits that
// the float32 rounding of each mean dropped.
#pragma once
#include <cmath>
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

// The numbering is shared with src/group_advantages.ts (METHOD_CODES).
enum class AdvantageMethod : int32_t { kGrpo = 0, kDrGrpo = 1, kRloo = 2, kReinforcePP = 3, kTmnReweight = 4 };

// Columns of a statistics record, as stored in the float32 partial tensors
// ([K, kGroupStatCols]) of the cross-rank form: the mean is
// double(mean) + double(mean_lo). Counts and keys are exact below 2^24.
constexpr int kGroupStatCols = 7;
enum GroupStatCol : int {
  kStatCount = 0, kStatMean = 1, kStatM2 = 2, kStatMin = 3, kStatMax = 4, kStatKey = 5, kStatMeanLo = 6
};

// Whether stage 3 exists for a method (and so a second cross-rank round).
inline bool AdvantageNeedsRound2(AdvantageMethod m, bool reweight) {
  return m == AdvantageMethod::kReinforcePP || (m == AdvantageMethod::kTmnReweight && reweight);
}
// Rows of the round-2 record set: one per group (tmn) or one in all (reinforce++).
inline int64_t AdvantageRound2Rows(AdvantageMethod m, int64_t num_groups) {
  return m == AdvantageMethod::kReinforcePP ? 1 : num_groups;
}

// ---- the per-group math, shared by the CPU and CUDA kernels (in double) ----

// A statistics record: count, mean, M2 (sum of squared deviations), min,
// max, key (task id + 1; 1 without tasks; 0 for an empty record).
struct GroupRecord {
  double n = 0, mean = 0, m2 = 0, min = 0, max = 0, key = 0;
};
// Stage 2's per-group coefficients: the advantage of reward r is
// (r - center) * scale_pos where r > center, else (r - center) * scale_neg;
// threshold is tmn-reweight's smoothed mean m.
struct GroupCoef {
  double center = 0, scale_pos = 1, scale_neg = 1, threshold = 0;
};

constexpr double kWhitenEps = 1e-8;  // verl's masked_whiten: rsqrt(var + 1e-8)

// verl's and GoLongRL's group of one (RLOO, GRPO, REINFORCE++-baseline,
// TMN): mean 0 and std (var) 1.
RLK_HD double GroupMean(const GroupRecord& s) { return s.n > 1 ? s.mean : 0.0; }
RLK_HD double GroupVar(const GroupRecord& s) { return s.n > 1 ? s.m2 / (s.n - 1) : 1.0; }

// Chan et al.'s pairwise update of a by b: exact for equal values (delta =
// 0) and free of the cancellation of sum-of-squares forms. Returns false
// (a unchanged) when both hold rows but disagree on the task key.
RLK_HD bool MergeGroupRecord(GroupRecord* a, const GroupRecord& b) {
  if (b.n == 0) return true;
  if (a->n == 0) {
    *a = b;
    return true;
  }
  if (a->key != b.key) return false;
  const double n = a->n + b.n, delta = b.mean - a->mean;
  a->mean += delta * (b.n / n);
  a->m2 += b.m2 + delta * delta * (a->n * b.n / n);
  a->min = b.min < a->min ? b.min : a->min;
  a->max = a->max < b.max ? b.max : a->max;
  a->n = n;
  return true;
}

// A record as a float32 row [kGroupStatCols] of the cross-rank partials.
RLK_HD void PackGroupRecord(const GroupRecord& s, float* o) {
  o[kStatCount] = float(s.n);
  o[kStatMean] = float(s.mean);
  o[kStatMeanLo] = float(s.mean - double(o[kStatMean]));
  o[kStatM2] = float(s.m2);
  o[kStatMin] = float(s.min);
  o[kStatMax] = float(s.max);
  o[kStatKey] = float(s.key);
}
RLK_HD GroupRecord UnpackGroupRecord(const float* r) {
  GroupRecord s;
  s.n = r[kStatCount];
  s.mean = double(r[kStatMean]) + double(r[kStatMeanLo]);
  s.m2 = r[kStatM2];
  s.min = r[kStatMin];
  s.max = r[kStatMax];
  s.key = r[kStatKey];
  return s;
}
// Stage 2 indexes the task arrays by key - 1: a combined round-1 record
// with rows must carry a whole key in [1, G].
RLK_HD bool GroupKeyValid(const GroupRecord& r, int64_t num_groups) {
  return !(r.n > 0) || (r.key >= 1 && r.key <= double(num_groups) && r.key == floor(r.key));
}

// grpo, drgrpo, rloo: center mean_g; scale 1 / (std_g + eps) (grpo),
// n / (n - 1) (rloo, n > 1), else 1.
RLK_HD GroupCoef GroupCoefficient(AdvantageMethod method, const GroupRecord& s, double eps) {
  double scale = 1;
  if (method == AdvantageMethod::kGrpo) scale = 1.0 / (sqrt(GroupVar(s)) + eps);
  if (method == AdvantageMethod::kRloo && s.n > 1) scale = s.n / (s.n - 1);
  GroupCoef c;
  c.center = GroupMean(s);
  c.scale_pos = c.scale_neg = scale;
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
  s.key = 1;
  return s;
}
// w = exp(gamma (0.5 - p)) from the (combined) fraction p: A w above the
// group mean, A / w elsewhere.
RLK_HD void ApplyTmnReweight(GroupCoef* c, double frac, double gamma) {
  const double w = exp(gamma * (0.5 - frac)), scale = c->scale_pos;
  c->scale_pos = scale * w;
  c->scale_neg = scale / w;
}
// REINFORCE++'s whitening from the token-weighted record of r - mean_g.
// verl's masked_var raises for fewer than two tokens; here the variance is
// 0 then, and the lone token (x = mean) gets 0.
RLK_HD void WhitenMoments(const GroupRecord& w, double* mu, double* inv_std) {
  const double var = w.n > 1 ? w.m2 / (w.n - 1) : 0.0;
  *mu = w.mean;
  *inv_std = 1.0 / sqrt(var + kWhitenEps);
}
// Stage 4 for one row: the coefficient's advantage, whitened (REINFORCE++:
// 0 for a row without tokens) when `whiten`.
RLK_HD double RowAdvantage(double r, const GroupCoef& k, bool whiten, int64_t token_count, double mu, double inv_std) {
  double a = (r - k.center) * (r > k.center ? k.scale_pos : k.scale_neg);
  if (whiten) a = token_count == 0 ? 0.0 : (a - mu) * inv_std;
  return a;
}

struct GroupAdvantagesParams {
  const float* rewards = nullptr;        // [B]
  const void* group_ids = nullptr;       // [B] int32/int64 in [0, G), or null: consecutive groups of group_size
  DType group_ids_dtype = DType::kInt32;
  int64_t group_size = 0;                // > 0 exactly when group_ids is null; B = G * group_size
  const void* task_ids = nullptr;        // [B] int32/int64 in [0, G), constant within a group; null: one task
  DType task_ids_dtype = DType::kInt32;
  const uint8_t* mask = nullptr;         // [B, T] nonzero = token counts (reinforce++), or null
  const void* token_counts = nullptr;    // [B] int32/int64 >= 0 (reinforce++), or null
  DType token_counts_dtype = DType::kInt32;
  int64_t batch = 0;                     // B
  int64_t seq_len = 0;                   // T (with mask)
  int64_t num_groups = 0;                // G
  AdvantageMethod method = AdvantageMethod::kGrpo;
  double eps = 1e-6;
  double alpha = 0.8;
  double gamma = 1.0;
  bool reweight = true;

  float* advantages = nullptr;           // [B] out
  uint8_t* informative = nullptr;        // [G] out
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

// The launchers. Data errors (an id out of range, a task id that changes
// within a group, a negative token count, partials that disagree on a
// group's task) come back as kOutOfRange on the CPU; on CUDA they set the
// device error word (runtime.h) and surface at the next read.
namespace cpu {
// Single process: advantages [B] and informative [G].
Status GroupAdvantagesFwd(const GroupAdvantagesParams& p);
// Cross-rank round 1 (stats1 == nullptr): out [G, 7] from this rank's rows.
// Round 2 (stats1 = the combined round-1 records [G, 7]): out
// [AdvantageRound2Rows, 7].
Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const float* stats1, float* out);
// Merges parts[0..num_parts) ([rows, 7] each) in that order into out [rows, 7].
Status GroupAdvantagesCombine(const float* const* parts, int64_t num_parts, int64_t rows, float* out);
// Advantages [B] and informative [G] of this rank's rows from the combined
// records (stats2 null when the method has no round 2).
Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const float* stats1, const float* stats2);
Status BroadcastAdvantages(const BroadcastAdvantagesParams& p);
}  // namespace cpu

namespace cuda {
// Device pointers throughout; work is enqueued on p.stream; the device
// error word is `error_word` (int32 in device memory).
Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, int device, int32_t* error_word);
Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const float* stats1, float* out, int device,
                               int32_t* error_word);
// parts: host array of device pointers.
Status GroupAdvantagesCombine(const float* const* parts, int64_t num_parts, int64_t rows, float* out, int device,
                              void* stream, int32_t* error_word);
Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const float* stats1, const float* stats2, int device,
                               int32_t* error_word);
Status BroadcastAdvantages(const BroadcastAdvantagesParams& p);
}  // namespace cuda

}  // namespace rlk
