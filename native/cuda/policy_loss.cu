// CUDA policy loss: one cooperative launch for the loss, its gradient and its
// stats. The grid is sized from the occupancy so every block is resident, and
// grid.sync() separates the phases:
//   A. one block per sequence (grid-stride over sequences): mask counts,
//      GSPO's sum of log-ratios, rollout log-weight sum and minimum, reduced
//      in the block in a fixed order; thread 0 decides rejection, sequence
//      weight and GSPO ratio and writes the sequence's state;
//   -- grid.sync --
//   B. every block reduces the B sequence states itself, in the same fixed
//      order (so all get identical denominators without another sync);
//   C. grid-stride over tokens (int64): per-token loss, gradient, gradEntropy
//      and stat partials; per-thread compensated (Kahan) float sums, then a
//      fixed-order block reduction in double into per-block partials;
//   -- grid.sync --
//   D. block 0 reduces the per-block partials in block order and writes the
//      loss and the stats.
// No float atomics; the result depends only on the inputs and the grid size,
// which is fixed per device, so it is deterministic run to run. Packed
// cuSeqlens are validated on the device (bad values set the device error
// word, read by the host as a RangeError) and every index is clamped so bad
// offsets cannot read or write out of bounds.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cfloat>

#include "rlk/policy_loss.h"
#include "rlk/runtime.h"

namespace rlk::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Sequence state written in phase A.
enum SeqFlag : int32_t { kSeqRejected = 1, kSeqGspoGrad = 2, kSeqVetoed = 4 };
struct SeqState {
  float weight;    // applied sequence-level rollout weight
  float gspo_s;    // GSPO ratio
  int32_t n_kept;  // kept tokens
  int32_t flags;   // SeqFlag
};

// Per-block partials of phase C, combined by block 0 in phase D.
enum Partial : int { kPObj = 0, kPNegLr, kPRatio, kPWeight, kPKl, kPEnt, kPClip, kPLow, kPHigh, kPDual, kPMin, kPMax, kPCount };

struct Sum { __device__ static double Op(double a, double b) { return a + b; } };
struct Min { __device__ static double Op(double a, double b) { return a < b ? a : b; } };
struct Max { __device__ static double Op(double a, double b) { return a > b ? a : b; } };

// Block-wide reduction of one double per thread in a fixed order: warp
// shuffles, one slot per warp in shared memory, then warp 0. Every thread
// gets the result. Assumes blockDim.x == kThreads; `slots` holds kWarps
// values and is reused, hence the leading __syncthreads.
template <class Op>
__device__ double BlockReduce(double v, double* slots) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = Op::Op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = slots[lane < kWarps ? lane : 0];
    for (int o = kWarps / 2; o > 0; o >>= 1) v = Op::Op(v, __shfl_down_sync(0xffffffffu, v, o));
    // Lanes >= kWarps read slot 0 above; shuffles do not order memory, so
    // without this lane 0's write races with those reads (found by the
    // emulated device under ThreadSanitizer).
    __syncwarp();
    if (lane == 0) slots[0] = v;
  }
  __syncthreads();
  return slots[0];
}

// Kahan-compensated float accumulator: the per-token terms have both signs
// (advantages do), so a plain float sum would lose the small total. Once the
// sum is infinite the compensation is dropped: (inf - inf) - y is NaN, which
// turned a -inf total (a -inf log-prob with the k1 term; the CPU's double
// sum gives -inf) into NaN at the next term.
struct Kahan {
  float s = 0.f, c = 0.f;
  __device__ void Add(float x) {
    float y = x - c;
    float t = s + y;
    c = isfinite(t) ? (t - s) - y : 0.f;
    s = t;
  }
  __device__ double Value() const { return double(s) - double(c); }
};

__device__ __forceinline__ void ReportBadOffsets(int32_t* error_word) {
  if (error_word) atomicCAS(error_word, 0, int32_t(kDeviceErrorIndexOutOfRange));
}

__global__ void __launch_bounds__(kThreads) PolicyLossKernel(PolicyLossParams p,
                                                             SeqState* __restrict__ seqs,     // [B]
                                                             double* __restrict__ partials) { // [gridDim.x, kPCount]
  cg::grid_group grid = cg::this_grid();
  __shared__ double slots[kWarps];
  __shared__ double totals[4];
  const int64_t B = p.num_seqs, N = p.num_tokens;
  const bool packed = p.cu_seqlens != nullptr;
  const bool tis = p.tis_level != kTisNone;
  const bool tis_token_mask = p.tis_level == kTisToken && p.tis_mode == kTisMask;
  const bool gspo = p.mode == kPolicyGspo;
  const float upper = float(p.tis_upper), lower = float(p.tis_lower);

  // Sequence bounds, clamped into [0, N] so bad offsets stay in bounds.
  auto seq_range = [&](int64_t i, int64_t* b, int64_t* e) {
    if (packed) {
      int64_t lo = p.cu_seqlens[i], hi = p.cu_seqlens[i + 1];
      lo = lo < 0 ? 0 : (lo > N ? N : lo);
      hi = hi < lo ? lo : (hi > N ? N : hi);
      *b = lo;
      *e = hi;
    } else {
      *b = i * p.seq_len;
      *e = *b + p.seq_len;
    }
  };

  // ---- A: per-sequence decisions.
  if (packed && blockIdx.x == 0 && threadIdx.x == 0 && (p.cu_seqlens[0] != 0 || int64_t(p.cu_seqlens[B]) != N))
    ReportBadOffsets(p.error_word);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    if (packed && threadIdx.x == 0 && p.cu_seqlens[i] > p.cu_seqlens[i + 1]) ReportBadOffsets(p.error_word);
    int64_t b, e;
    seq_range(i, &b, &e);
    float n0 = 0.f, nk = 0.f, min_x = FLT_MAX;
    Kahan sum_d, sum_x;
    for (int64_t t = b + threadIdx.x; t < e; t += kThreads) {
      if (p.mask && !p.mask[t]) continue;
      n0 += 1.f;
      bool keep = true;
      if (tis) {
        float x = p.old_logprobs[t] - p.rollout_logprobs[t];
        sum_x.Add(x);
        min_x = fminf(min_x, x);
        if (tis_token_mask) {
          float w;
          keep = TokenRolloutWeight<float>(kTisMask, x, lower, upper, &w);  // as phase C decides
        }
      }
      if (!keep) continue;
      nk += 1.f;
      if (gspo) sum_d.Add(p.logprobs[t] - p.old_logprobs[t]);
    }
    // Counts stay exact in double; a sequence is at most 2^31 tokens.
    double c0 = BlockReduce<Sum>(double(n0), slots);
    double ck = BlockReduce<Sum>(double(nk), slots);
    double sd = BlockReduce<Sum>(sum_d.Value(), slots);
    double sx = BlockReduce<Sum>(sum_x.Value(), slots);
    double mx = BlockReduce<Min>(double(min_x), slots);
    if (threadIdx.x == 0) {
      SeqState q{1.f, 1.f, 0, kSeqGspoGrad};
      bool rejected = false;
      if (p.use_veto && c0 > 0 && mx < p.log_veto) {
        rejected = true;
        q.flags |= kSeqVetoed;
      }
      if (p.tis_level == kTisSequence || p.tis_level == kTisGeometric) {
        double lw = p.tis_level == kTisSequence ? sx : (c0 > 0 ? sx / c0 : 0.0);
        if (!SequenceRolloutWeight<float>(p.tis_mode, float(lw), lower, upper, &q.weight)) rejected = true;
      }
      if (gspo && ck > 0) {
        bool pass_grad;
        q.gspo_s = GspoRatio<float>(float(sd / ck), &pass_grad);
        if (!pass_grad) q.flags &= ~kSeqGspoGrad;
      }
      if (rejected) q.flags |= kSeqRejected;
      q.n_kept = rejected ? 0 : int32_t(ck);
      seqs[i] = q;
    }
  }
  grid.sync();

  // ---- B: denominators, reduced by every block in the same order.
  {
    double tokens = 0, sequences = 0, vetoed = 0, longest = 0;
    for (int64_t i = threadIdx.x; i < B; i += kThreads) {
      SeqState q = seqs[i];
      tokens += q.n_kept;
      sequences += q.n_kept > 0 ? 1 : 0;
      vetoed += (q.flags & kSeqVetoed) ? 1 : 0;
      int64_t b, e;
      seq_range(i, &b, &e);
      longest = fmax(longest, double(e - b));
    }
    tokens = BlockReduce<Sum>(tokens, slots);
    sequences = BlockReduce<Sum>(sequences, slots);
    vetoed = BlockReduce<Sum>(vetoed, slots);
    longest = BlockReduce<Max>(longest, slots);
    if (threadIdx.x == 0) {
      totals[0] = tokens;
      totals[1] = sequences;
      totals[2] = vetoed;
      totals[3] = longest;
    }
    __syncthreads();
  }
  const double tokens = totals[0], sequences = totals[1];
  const double tok_den = p.token_count > 0 ? p.token_count : tokens;
  const double seq_den = p.sequence_count > 0 ? p.sequence_count : sequences;
  const double scale = p.loss_scale > 0 ? p.loss_scale : (packed ? totals[3] : double(p.seq_len));
  float base = 0.f;  // aggregation weight (divided by n_i for seq-mean-token-mean)
  switch (p.aggregation) {
    case kAggTokenMean: base = tok_den > 0 ? float(p.dp_size / tok_den) : 0.f; break;
    case kAggSeqMeanTokenSum:
    case kAggSeqMeanTokenMean: base = seq_den > 0 ? float(p.dp_size / seq_den) : 0.f; break;
    default: base = scale > 0 ? float(1.0 / scale) : 0.f; break;
  }

  // ---- C: tokens.
  const float lo = float(1.0 - p.clip_low), hi = float(1.0 + p.clip_high);
  const float dual_c = float(p.dual_clip), kl_coef = float(p.kl_coef), ent_coef = float(p.entropy_coef);
  const bool dual = p.use_dual_clip && !gspo;
  const bool has_kl = p.ref_logprobs != nullptr, has_ent = p.entropy != nullptr;
  Kahan obj_sum, neg_lr_sum, ratio_sum, weight_sum, kl_sum, ent_sum;
  float clip = 0.f, low = 0.f, high = 0.f, dualn = 0.f;  // per-thread counts stay far below 2^24
  float rmin = FLT_MAX, rmax = -FLT_MAX;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t n_loop = B > 0 ? N : 0;  // B = 0 with tokens is bad cuSeqlens, already reported
  for (int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x; t < n_loop; t += stride) {
    int64_t i;
    if (packed) {
      // Largest i with cu[i] <= t (upper bound minus one), clamped into [0, B).
      int64_t a = 0, z = B;
      while (a < z) {
        int64_t mid = (a + z) >> 1;
        if (int64_t(p.cu_seqlens[mid + 1]) <= t) a = mid + 1;
        else z = mid;
      }
      i = a < B ? a : B - 1;
    } else {
      i = t / p.seq_len;
    }
    const SeqState q = seqs[i];
    bool keep = (!p.mask || p.mask[t]) && !(q.flags & kSeqRejected);
    float w = 1.f;
    if (keep && tis) {
      if (p.tis_level == kTisToken) {
        keep = TokenRolloutWeight<float>(p.tis_mode, p.old_logprobs[t] - p.rollout_logprobs[t], lower, upper, &w);
      } else {
        w = q.weight;
      }
    }
    if (!keep) {
      p.grad[t] = 0.f;
      if (has_ent) p.grad_entropy[t] = 0.f;
      continue;
    }
    const float coef = p.aggregation == kAggSeqMeanTokenMean ? base / float(q.n_kept) : base;
    const float lp = p.logprobs[t];
    const float d = lp - p.old_logprobs[t];
    const float lr = ClampLogRatio(d);
    float dr;
    const float r = TokenRatio<float>(gspo, d, q.gspo_s, (q.flags & kSeqGspoGrad) != 0, &dr);
    const float A = p.advantages[p.adv_per_sequence ? i : t];
    float dl_dr;
    uint32_t flags;
    const float L = Surrogate<float>(A, r, lo, hi, dual, dual_c, &dl_dr, &flags);
    float obj = w * L;
    float g = w * dl_dr * dr;
    if (has_kl) {
      float kv, kg;
      KlValueGrad<float>(p.kl_estimator, lp - p.ref_logprobs[t], &kv, &kg);
      obj += kl_coef * kv;
      g += kl_coef * kg;
      kl_sum.Add(kv);
    }
    if (has_ent) {
      const float h = p.entropy[t];
      obj -= ent_coef * h;
      ent_sum.Add(h);
      p.grad_entropy[t] = -coef * ent_coef;
    }
    p.grad[t] = coef * g;
    obj_sum.Add(coef * obj);
    clip += (flags & kFlagClip) ? 1.f : 0.f;
    low += (flags & kFlagLow) ? 1.f : 0.f;
    high += (flags & kFlagHigh) ? 1.f : 0.f;
    dualn += (flags & kFlagDual) ? 1.f : 0.f;
    neg_lr_sum.Add(-lr);
    ratio_sum.Add(r);
    rmin = fminf(rmin, r);
    rmax = fmaxf(rmax, r);
    weight_sum.Add(w);
  }
  {
    double v[kPCount];
    v[kPObj] = BlockReduce<Sum>(obj_sum.Value(), slots);
    v[kPNegLr] = BlockReduce<Sum>(neg_lr_sum.Value(), slots);
    v[kPRatio] = BlockReduce<Sum>(ratio_sum.Value(), slots);
    v[kPWeight] = BlockReduce<Sum>(weight_sum.Value(), slots);
    v[kPKl] = BlockReduce<Sum>(kl_sum.Value(), slots);
    v[kPEnt] = BlockReduce<Sum>(ent_sum.Value(), slots);
    v[kPClip] = BlockReduce<Sum>(clip, slots);
    v[kPLow] = BlockReduce<Sum>(low, slots);
    v[kPHigh] = BlockReduce<Sum>(high, slots);
    v[kPDual] = BlockReduce<Sum>(dualn, slots);
    v[kPMin] = BlockReduce<Min>(rmin, slots);
    v[kPMax] = BlockReduce<Max>(rmax, slots);
    if (threadIdx.x == 0)
      for (int k = 0; k < kPCount; ++k) partials[int64_t(blockIdx.x) * kPCount + k] = v[k];
  }
  grid.sync();

  // ---- D: block 0 combines the blocks in order.
  if (blockIdx.x != 0) return;
  double v[kPCount];
  for (int k = 0; k < kPCount; ++k) {
    double acc = k == kPMin ? DBL_MAX : (k == kPMax ? -DBL_MAX : 0.0);
    for (int64_t j = threadIdx.x; j < gridDim.x; j += kThreads) {
      double x = partials[j * kPCount + k];
      acc = k == kPMin ? fmin(acc, x) : (k == kPMax ? fmax(acc, x) : acc + x);
    }
    v[k] = k == kPMin ? BlockReduce<Min>(acc, slots) : (k == kPMax ? BlockReduce<Max>(acc, slots) : BlockReduce<Sum>(acc, slots));
  }
  if (threadIdx.x == 0) {
    *p.loss = float(v[kPObj]);
    float* st = p.stats;
    for (int k = 0; k < kPolicyStatCount; ++k) st[k] = 0.f;
    if (tokens > 0) {
      const double inv = 1.0 / tokens;
      st[kStatClipFraction] = float(v[kPClip] * inv);
      st[kStatClipFractionLow] = float(v[kPLow] * inv);
      st[kStatClipFractionHigh] = float(v[kPHigh] * inv);
      st[kStatDualClipFraction] = float(v[kPDual] * inv);
      st[kStatPpoKl] = float(v[kPNegLr] * inv);
      st[kStatRatioMean] = float(v[kPRatio] * inv);
      st[kStatRatioMin] = float(v[kPMin]);
      st[kStatRatioMax] = float(v[kPMax]);
      st[kStatIsWeightMean] = float(v[kPWeight] * inv);
      st[kStatKlMean] = float(v[kPKl] * inv);
      st[kStatEntropyMean] = float(v[kPEnt] * inv);
    }
    st[kStatVetoedSequences] = float(totals[2]);
    st[kStatKeptTokens] = float(tokens);
    st[kStatSequences] = float(sequences);
  }
}

Status CudaError(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  return Status{err == cudaErrorMemoryAllocation ? Status::kOutOfMemory : Status::kCudaError, what};
}

}  // namespace

Status PolicyLoss(const PolicyLossParams& p) {
  // SeqState::n_kept is an int32 count of one sequence's tokens (packed
  // sequences are bounded by the int32 cuSeqlens; padded ones by T).
  if (p.cu_seqlens == nullptr && p.seq_len > INT32_MAX)
    return Status{Status::kUnsupported, "policyLoss: sequences longer than 2^31 - 1 tokens are not supported on CUDA"};
  Status st = CudaError(cudaSetDevice(p.device), "policyLoss: cudaSetDevice failed");
  if (!st.ok()) return st;
  int sms = 0, coop = 0, per_sm = 0;
  st = CudaError(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device), "policyLoss: cudaDeviceGetAttribute failed");
  if (!st.ok()) return st;
  st = CudaError(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, p.device), "policyLoss: cudaDeviceGetAttribute failed");
  if (!st.ok()) return st;
  if (!coop) return Status{Status::kUnsupported, "policyLoss: the GPU does not support cooperative launches"};
  st = CudaError(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, PolicyLossKernel, kThreads, 0),
                 "policyLoss: cudaOccupancyMaxActiveBlocksPerMultiprocessor failed");
  if (!st.ok()) return st;
  if (per_sm < 1) return Status{Status::kCudaError, "policyLoss: the kernel cannot be resident on this GPU"};
  // Every block must be resident for grid.sync(); more work than blocks is
  // covered by the grid-stride loops. The grid depends only on the device and
  // the sizes, so results stay bitwise reproducible.
  int64_t want = (p.num_tokens + kThreads - 1) / kThreads;
  if (p.num_seqs > want) want = p.num_seqs;
  int64_t max_blocks = int64_t(per_sm) * sms;
  int blocks = int(want < 1 ? 1 : (want > max_blocks ? max_blocks : want));

  void* scratch = nullptr;
  const size_t seq_bytes = size_t(p.num_seqs > 0 ? p.num_seqs : 1) * sizeof(SeqState);
  const size_t seq_bytes_aligned = (seq_bytes + 255) / 256 * 256;
  st = DeviceAlloc(p.device, seq_bytes_aligned + size_t(blocks) * kPCount * sizeof(double), &scratch);
  if (!st.ok()) return st;
  SeqState* seqs = static_cast<SeqState*>(scratch);
  double* partials = reinterpret_cast<double*>(static_cast<char*>(scratch) + seq_bytes_aligned);
  PolicyLossParams params = p;
  void* args[] = {&params, &seqs, &partials};
  // The typed form of the C++ API (valid CUDA; the emulated device needs the
  // parameter types to call the kernel).
  cudaError_t err = cudaLaunchCooperativeKernel(PolicyLossKernel, dim3(unsigned(blocks)),
                                                dim3(kThreads), args, 0, static_cast<cudaStream_t>(p.stream));
  if (err == cudaSuccess) err = cudaGetLastError();
  // The caching allocator reuses blocks in stream order on this device's one
  // stream, so the scratch may be handed back before the kernel has run.
  DeviceFree(p.device, scratch);
  return CudaError(err, "policyLoss: cooperative kernel launch failed");
}

}  // namespace rlk::cuda
