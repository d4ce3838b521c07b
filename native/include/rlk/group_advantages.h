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
