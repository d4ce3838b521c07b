// CUDA group advantages: the four stages of rlk/group_advantages.h, all on
// the device's stream, no host round trip, deterministic.
//
// - Groups given by ids become segments with CUB's stable radix sort of
//   (id, row) pairs (deterministic, and stable so rows keep their order
//   within a group) and a lower-bound search per group; consecutive groups
//   need neither. Tasks (tmn-reweight) are segments of groups the same way.
// - One warp per group (per task) reduces its segment in a fixed order
//   (lane-strided loads, xor-butterfly shuffles, which give every lane the
//   same bits); the batch-wide REINFORCE++ statistics are one block's fixed
//   shared-memory tree. No float atomics.
// - Statistics accumulate in double. This is the exception DESIGN 4 allows
//   for by its reason: the rewards are one value per sequence (B is
//   thousands to tens of thousands), so the double work is microseconds even
//   on an H20, and r - mean_g must not lose the digits a float mean of
//   rewards near 50 or 100 would (the CPU path is double too).
// - Bad data (an id out of range, a task id changing within a group, a
//   negative token count, inconsistent partials) sets the device error word;
//   the kernels then keep every index in range and write NaN for the rows
//   concerned.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <cstdint>
#include <vector>

#include "rlk/group_advantages.h"
#include "rlk/runtime.h"

namespace rlk::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kReduceThreads = 1024;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this

using Rec = GroupRecord;  // the per-group math is shared with the CPU (group_advantages.h)
using Coef = GroupCoef;

#define RLK_CUDA_CHECK_LAUNCH(what)                                                    \
  do {                                                                                 \
    if (cudaGetLastError() != cudaSuccess)                                             \
      return Status{Status::kCudaError, "groupAdvantages: launch of " what " failed"}; \
  } while (0)

int Blocks(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  return int(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}
// One warp per item.
int WarpBlocks(int64_t items) { return Blocks(items * kWarp, kThreads); }

__device__ __forceinline__ int64_t LoadIdx(const void* p, DType dt, int64_t i) {
  return dt == DType::kInt64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}
__device__ __forceinline__ void SetError(int32_t* word, int32_t code) { atomicCAS(word, 0, code); }

template <class T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double WarpMin(double v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmin(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double WarpMax(double v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum in a fixed tree; blockDim.x == kReduceThreads. All threads
// get the result.
__device__ double BlockSum(double v, double* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  double r = smem[0];
  __syncthreads();
  return r;
}

// Rows of each group: implicit for consecutive groups, else a segment of the
// rows sorted by group.
struct GroupView {
  const int64_t* perm = nullptr;     // [B] rows sorted (stably) by group
  const int64_t* offsets = nullptr;  // [G + 1]
  int64_t gs = 0;
  __device__ int64_t Begin(int64_t g) const { return gs ? g * gs : offsets[g]; }
  __device__ int64_t End(int64_t g) const { return gs ? (g + 1) * gs : offsets[g + 1]; }
  __device__ int64_t Row(int64_t k) const { return gs ? k : perm[k]; }
};

// Group of row i, or -1 (with the error word set) when its id is out of range.
__device__ __forceinline__ int64_t GroupOf(const GroupAdvantagesParams& p, int64_t i, int32_t* err) {
  if (!p.group_ids) return i / p.group_size;
  int64_t g = LoadIdx(p.group_ids, p.group_ids_dtype, i);
  if (g < 0 || g >= p.num_groups) {
    SetError(err, kDeviceErrorIndexOutOfRange);
    return -1;
  }
  return g;
}

// ---- segments ----------------------------------------------------------------

// Group ids to sort keys; an id out of range goes to the sentinel key G
// (after every group), so it joins no group.
__global__ void GroupKeysKernel(GroupAdvantagesParams p, int32_t* keys /*[B]*/, int64_t* rows /*[B]*/, int32_t* err) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.batch; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t g = LoadIdx(p.group_ids, p.group_ids_dtype, i);
    if (g < 0 || g >= p.num_groups) {
      SetError(err, kDeviceErrorIndexOutOfRange);
      g = p.num_groups;
    }
    keys[i] = int32_t(g);
    rows[i] = i;
  }
}

// offsets[k] = first position whose key >= k, for k in [0, num_keys].
__global__ void LowerBoundKernel(const int32_t* keys /*[n] sorted*/, int64_t n, int64_t num_keys, int64_t* offsets /*[num_keys + 1]*/) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k <= num_keys; k += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if (int64_t(keys[mid]) < k) lo = mid + 1;
      else hi = mid;
    }
    offsets[k] = lo;
  }
}

// Device buffers of one call, returned to the caching allocator at the end
// (blocks are reused in stream order, so queued work still owns them).
class Workspace {
 public:
  explicit Workspace(int device) : device_(device) {}
  ~Workspace() {
    for (void* p : ptrs_) DeviceFree(device_, p);
  }
  template <class T>
  Status Get(int64_t n, T** out) {
    void* p = nullptr;
    Status st = DeviceAlloc(device_, size_t(n > 0 ? n : 1) * sizeof(T), &p);
    if (st.ok()) ptrs_.push_back(p);
    *out = static_cast<T*>(p);
    return st;
  }

 private:
  int device_;
  std::vector<void*> ptrs_;
};

#define RLK_TRY(expr)              \
  do {                             \
    Status _st = (expr);           \
    if (!_st.ok()) return _st;     \
  } while (0)

int KeyBits(int64_t max_key) {
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) <= max_key) ++bits;
  return bits;
}

// Stable sort of (key, value) by key in [0, num_keys] (num_keys = sentinel),
// then the segment offsets of keys [0, num_keys).
Status Segments(int32_t* keys, int64_t* values, int64_t n, int64_t num_keys, Workspace& ws, cudaStream_t stream,
                int64_t** perm, int64_t** offsets) {
  int32_t* keys_out = nullptr;
  RLK_TRY(ws.Get(n, &keys_out));
  RLK_TRY(ws.Get(n, perm));
  RLK_TRY(ws.Get(num_keys + 1, offsets));
  if (n > 0) {
    size_t temp_bytes = 0;
    int bits = KeyBits(num_keys);
    // CUB reports launch failures with cudaPeekAtLastError, which leaves the
    // error pending: clear it, or the next op's launch check would take it
    // for its own.
    if (cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, keys_out, values, *perm, n, 0, bits, stream) != cudaSuccess) {
      cudaGetLastError();
      return Status{Status::kCudaError, "groupAdvantages: cub::DeviceRadixSort (size query) failed"};
    }
    uint8_t* temp = nullptr;
    RLK_TRY(ws.Get(int64_t(temp_bytes), &temp));
    if (cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_out, values, *perm, n, 0, bits, stream) != cudaSuccess) {
      cudaGetLastError();
      return Status{Status::kCudaError, "groupAdvantages: cub::DeviceRadixSort failed"};
    }
  }
  LowerBoundKernel<<<Blocks(num_keys + 1, kThreads), kThreads, 0, stream>>>(keys_out, n, num_keys, *offsets);
  RLK_CUDA_CHECK_LAUNCH("LowerBoundKernel");
  return Status::Ok();
}

Status BuildGroups(const GroupAdvantagesParams& p, Workspace& ws, cudaStream_t stream, int32_t* err, GroupView* view) {
  if (!p.group_ids) {
    view->gs = p.group_size;
    return Status::Ok();
  }
  int32_t* keys = nullptr;
  int64_t* rows = nullptr;
  RLK_TRY(ws.Get(p.batch, &keys));
  RLK_TRY(ws.Get(p.batch, &rows));
  GroupKeysKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p, keys, rows, err);
  RLK_CUDA_CHECK_LAUNCH("GroupKeysKernel");
  int64_t* perm = nullptr;
  int64_t* offsets = nullptr;
  RLK_TRY(Segments(keys, rows, p.batch, p.num_groups, ws, stream, &perm, &offsets));
  view->perm = perm;
  view->offsets = offsets;
  return Status::Ok();
}

// ---- stage 1: group records ---------------------------------------------------

__global__ void GroupStatsKernel(GroupAdvantagesParams p, GroupView v, Rec* out /*[G]*/, int32_t* err) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  for (int64_t g = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; g < p.num_groups; g += warps) {
    const int64_t b = v.Begin(g), e = v.End(g);
    if (b == e) {
      if (lane == 0) out[g] = Rec{0, 0, 0, 0, 0, 0};
      continue;
    }
    double sum = 0, mn = INFINITY, mx = -INFINITY;
    for (int64_t k = b + lane; k < e; k += kWarp) {
      double r = p.rewards[v.Row(k)];
      sum += r;
      mn = fmin(mn, r);
      mx = fmax(mx, r);
    }
    const double n = double(e - b);
    const double mean = WarpSum(sum) / n;
    double m2 = 0;
    for (int64_t k = b + lane; k < e; k += kWarp) {
      double d = double(p.rewards[v.Row(k)]) - mean;
      m2 += d * d;
    }
    m2 = WarpSum(m2);
    mn = WarpMin(mn);
    mx = WarpMax(mx);
    double key = 1;
    if (p.task_ids) {
      int64_t t = LoadIdx(p.task_ids, p.task_ids_dtype, v.Row(b));
      bool bad = t < 0 || t >= p.num_groups;
      for (int64_t k = b + 1 + lane; k < e; k += kWarp) bad |= LoadIdx(p.task_ids, p.task_ids_dtype, v.Row(k)) != t;
      if (__any_sync(0xffffffffu, bad)) {
        if (lane == 0) SetError(err, kDeviceErrorTaskIdInvalid);
        t = 0;  // keeps stage 2's task index in range
      }
      key = double(t) + 1;
    }
    if (lane == 0) out[g] = Rec{n, mean, m2, mn, mx, key};
  }
}

// ---- stage 2: coefficients ----------------------------------------------------

__global__ void CoefKernel(const Rec* s1 /*[G]*/, int64_t G, AdvantageMethod method, double eps, Coef* c /*[G]*/) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x)
    c[g] = GroupCoefficient(method, s1[g], eps);
}

// Sort keys of the groups by task (key - 1); empty groups go to the sentinel G.
__global__ void TaskKeysKernel(const Rec* s1, int64_t G, int32_t* keys, int64_t* groups) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    keys[g] = s1[g].n > 0 ? int32_t(int64_t(s1[g].key) - 1) : int32_t(G);
    groups[g] = g;
  }
}

// One warp per task: mean over the task's groups of mean_g and of var_g, in
// group order.
__global__ void TaskAggKernel(const Rec* s1, const int64_t* perm, const int64_t* offsets, int64_t G, double* task_mean,
                              double* task_var) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  for (int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; t < G; t += warps) {
    const int64_t b = offsets[t], e = offsets[t + 1];
    double sm = 0, sv = 0;
    for (int64_t k = b + lane; k < e; k += kWarp) {
      const Rec s = s1[perm[k]];
      sm += GroupMean(s);
      sv += GroupVar(s);
    }
    sm = WarpSum(sm);
    sv = WarpSum(sv);
    if (lane == 0 && e > b) {
      task_mean[t] = sm / double(e - b);
      task_var[t] = sv / double(e - b);
    }
  }
}

__global__ void TmnCoefKernel(const Rec* s1, int64_t G, const double* task_mean, const double* task_var, double eps,
                              double alpha, Coef* c) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    const Rec s = s1[g];
    if (s.n == 0) {
      c[g] = Coef{0, 1, 1, 0};
      continue;
    }
    const int64_t t = int64_t(s.key) - 1;
    c[g] = TmnCoefficient(s, task_mean[t], task_var[t], eps, alpha);
  }
}

Status Coefficients(const GroupAdvantagesParams& p, const Rec* s1, Workspace& ws, cudaStream_t stream, Coef** c) {
  const int64_t G = p.num_groups;
  RLK_TRY(ws.Get(G, c));
  if (G == 0) return Status::Ok();
  if (p.method != AdvantageMethod::kTmnReweight) {
    CoefKernel<<<Blocks(G, kThreads), kThreads, 0, stream>>>(s1, G, p.method, p.eps, *c);
    RLK_CUDA_CHECK_LAUNCH("CoefKernel");
    return Status::Ok();
  }
  int32_t* keys = nullptr;
  int64_t* groups = nullptr;
  double *task_mean = nullptr, *task_var = nullptr;
  RLK_TRY(ws.Get(G, &keys));
  RLK_TRY(ws.Get(G, &groups));
  RLK_TRY(ws.Get(G, &task_mean));
  RLK_TRY(ws.Get(G, &task_var));
  TaskKeysKernel<<<Blocks(G, kThreads), kThreads, 0, stream>>>(s1, G, keys, groups);
  RLK_CUDA_CHECK_LAUNCH("TaskKeysKernel");
  int64_t* perm = nullptr;
  int64_t* offsets = nullptr;
  RLK_TRY(Segments(keys, groups, G, G, ws, stream, &perm, &offsets));
  TaskAggKernel<<<WarpBlocks(G), kThreads, 0, stream>>>(s1, perm, offsets, G, task_mean, task_var);
  RLK_CUDA_CHECK_LAUNCH("TaskAggKernel");
  TmnCoefKernel<<<Blocks(G, kThreads), kThreads, 0, stream>>>(s1, G, task_mean, task_var, p.eps, p.alpha, *c);
  RLK_CUDA_CHECK_LAUNCH("TmnCoefKernel");
  return Status::Ok();
}

// tmn-reweight: w = exp(gamma (0.5 - p)) from the (combined) fraction p.
__global__ void ReweightKernel(const Rec* s2, int64_t G, double gamma, Coef* c) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x)
    ApplyTmnReweight(&c[g], s2[g].mean, gamma);
}

// ---- stage 3 ------------------------------------------------------------------

// tmn-reweight: per group, the fraction of rewards > m as an indicator's record.
__global__ void AboveKernel(GroupAdvantagesParams p, GroupView v, const Coef* c, Rec* out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  for (int64_t g = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; g < p.num_groups; g += warps) {
    const int64_t b = v.Begin(g), e = v.End(g);
    if (b == e) {
      if (lane == 0) out[g] = Rec{0, 0, 0, 0, 0, 0};
      continue;
    }
    const double m = c[g].threshold;
    long long above = 0;
    for (int64_t k = b + lane; k < e; k += kWarp) above += double(p.rewards[v.Row(k)]) > m;
    const double a = double(WarpSum(above));
    if (lane == 0) out[g] = AboveRecord(a, double(e - b));
  }
}

// Masked tokens per row: one block per row, 16-byte loads where the row is
// aligned (the mask is the bulk of the bytes: B x T with T up to 1M).
__global__ void MaskCountKernel(const uint8_t* mask /*[B, T]*/, int64_t B, int64_t T, int64_t* counts /*[B]*/) {
  __shared__ long long smem[kThreads];
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const uint8_t* row = mask + i * T;
    long long n = 0;
    int64_t head = 0;
    if ((reinterpret_cast<uintptr_t>(row) & 15) == 0) {
      const int64_t vecs = T / 16;
      const uint4* rv = reinterpret_cast<const uint4*>(row);
      for (int64_t k = threadIdx.x; k < vecs; k += blockDim.x) {
        const uint4 x = rv[k];
        const uint32_t w[4] = {x.x, x.y, x.z, x.w};
        for (int j = 0; j < 4; ++j)
          for (int s = 0; s < 32; s += 8) n += ((w[j] >> s) & 0xFFu) != 0;
      }
      head = vecs * 16;
    }
    for (int64_t t = head + threadIdx.x; t < T; t += blockDim.x) n += row[t] != 0;
    smem[threadIdx.x] = n;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (int(threadIdx.x) < s) smem[threadIdx.x] += smem[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) counts[i] = smem[0];
    __syncthreads();
  }
}

__global__ void TokenCountsKernel(const void* tc, DType dt, int64_t B, int64_t* counts, int32_t* err) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t v = LoadIdx(tc, dt, i);
    if (v < 0) {
      SetError(err, kDeviceErrorNegativeTokenCount);
      v = 0;
    }
    counts[i] = v;
  }
}

Status TokenCounts(const GroupAdvantagesParams& p, Workspace& ws, cudaStream_t stream, int32_t* err, int64_t** counts) {
  RLK_TRY(ws.Get(p.batch, counts));
  if (p.batch == 0) return Status::Ok();
  if (p.token_counts) {
    TokenCountsKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p.token_counts, p.token_counts_dtype, p.batch, *counts, err);
    RLK_CUDA_CHECK_LAUNCH("TokenCountsKernel");
  } else {
    MaskCountKernel<<<int(p.batch < kMaxBlocks ? p.batch : kMaxBlocks), kThreads, 0, stream>>>(p.mask, p.batch, p.seq_len, *counts);
    RLK_CUDA_CHECK_LAUNCH("MaskCountKernel");
  }
  return Status::Ok();
}

// REINFORCE++: one record of x = r - mean_g over the masked tokens (weight =
// the row's token count). One block, two passes, fixed-order trees.
__global__ void __launch_bounds__(kReduceThreads) WhitenStatsKernel(GroupAdvantagesParams p, const Coef* c, const int64_t* counts, Rec* out, int32_t* err) {
  __shared__ double smem[kReduceThreads];
  double n = 0, sum = 0, mn = INFINITY, mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < p.batch; i += kReduceThreads) {
    const int64_t g = GroupOf(p, i, err);
    if (counts[i] == 0 || g < 0) continue;
    const double w = double(counts[i]), x = double(p.rewards[i]) - c[g].center;
    n += w;
    sum += w * x;
    mn = fmin(mn, x);
    mx = fmax(mx, x);
  }
  n = BlockSum(n, smem);
  sum = BlockSum(sum, smem);
  const double mean = n > 0 ? sum / n : 0.0;
  double m2 = 0;
  for (int64_t i = threadIdx.x; i < p.batch; i += kReduceThreads) {
    const int64_t g = GroupOf(p, i, err);
    if (counts[i] == 0 || g < 0) continue;
    const double d = double(p.rewards[i]) - c[g].center - mean;
    m2 += double(counts[i]) * d * d;
  }
  m2 = BlockSum(m2, smem);
  // min and max: the same tree with negation for max is not needed by the
  // math (only records merge them); a plain shared-memory pass keeps it fixed.
  smem[threadIdx.x] = mn;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) smem[threadIdx.x] = fmin(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  mn = smem[0];
  __syncthreads();
  smem[threadIdx.x] = mx;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) smem[threadIdx.x] = fmax(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  mx = smem[0];
  if (threadIdx.x == 0) out[0] = n > 0 ? Rec{n, mean, m2, mn, mx, 1} : Rec{0, 0, 0, 0, 0, 0};
}

Status Round2(const GroupAdvantagesParams& p, const GroupView& v, const Coef* c, Workspace& ws, cudaStream_t stream,
              int32_t* err, Rec** s2) {
  if (p.method == AdvantageMethod::kTmnReweight) {
    RLK_TRY(ws.Get(p.num_groups, s2));
    if (p.num_groups == 0) return Status::Ok();
    AboveKernel<<<WarpBlocks(p.num_groups), kThreads, 0, stream>>>(p, v, c, *s2);
    RLK_CUDA_CHECK_LAUNCH("AboveKernel");
    return Status::Ok();
  }
  int64_t* counts = nullptr;
  RLK_TRY(TokenCounts(p, ws, stream, err, &counts));
  RLK_TRY(ws.Get(1, s2));
  WhitenStatsKernel<<<1, kReduceThreads, 0, stream>>>(p, c, counts, *s2, err);
  RLK_CUDA_CHECK_LAUNCH("WhitenStatsKernel");
  return Status::Ok();
}

// ---- stage 4 ------------------------------------------------------------------

__global__ void FinalizeKernel(GroupAdvantagesParams p, const Coef* c, const int64_t* counts /*[B] or null*/,
                               const Rec* whiten /*[1] or null*/, int32_t* err) {
  double mu = 0, inv_std = 1;
  if (whiten) WhitenMoments(whiten[0], &mu, &inv_std);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.batch; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = GroupOf(p, i, err);
    if (g < 0) {
      p.advantages[i] = NAN;
      continue;
    }
    p.advantages[i] = float(RowAdvantage(p.rewards[i], c[g], whiten != nullptr, whiten ? counts[i] : 0, mu, inv_std));
  }
}

__global__ void InformativeKernel(const Rec* s1, int64_t G, uint8_t* informative) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x)
    informative[g] = s1[g].max > s1[g].min ? 1 : 0;
}

Status Finalize(const GroupAdvantagesParams& p, const Rec* s1, const Coef* c, const Rec* s2, Workspace& ws,
                cudaStream_t stream, int32_t* err) {
  int64_t* counts = nullptr;
  const Rec* whiten = nullptr;
  if (p.method == AdvantageMethod::kReinforcePP) {
    RLK_TRY(TokenCounts(p, ws, stream, err, &counts));
    whiten = s2;
  }
  if (p.batch > 0) {
    FinalizeKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p, c, counts, whiten, err);
    RLK_CUDA_CHECK_LAUNCH("FinalizeKernel");
  }
  if (p.num_groups > 0) {
    InformativeKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(s1, p.num_groups, p.informative);
    RLK_CUDA_CHECK_LAUNCH("InformativeKernel");
  }
  return Status::Ok();
}

// ---- float32 records (the cross-rank partials) ----------------------------------

// The mean travels as float hi + lo (see the header).
__global__ void RecToFloatKernel(const Rec* in, int64_t rows, float* out /*[rows, 7]*/) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < rows; k += int64_t(gridDim.x) * blockDim.x)
    PackGroupRecord(in[k], out + k * kGroupStatCols);
}

// check_keys: records of round 1 must have a task key in [1, G] (stage 2
// indexes by it); a bad one is reported and replaced by 1.
__global__ void FloatToRecKernel(const float* in /*[rows, 7]*/, int64_t rows, int64_t G, bool check_keys, Rec* out, int32_t* err) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < rows; k += int64_t(gridDim.x) * blockDim.x) {
    Rec s = UnpackGroupRecord(in + k * kGroupStatCols);
    if (!(s.n >= 0)) {
      SetError(err, kDeviceErrorBadPartials);
      s.n = 0;
    }
    if (check_keys && !GroupKeyValid(s, G)) {
      SetError(err, kDeviceErrorBadPartials);
      s.key = 1;
    }
    out[k] = s;
  }
}

Status ToFloat(const Rec* s, int64_t rows, float* out, cudaStream_t stream) {
  if (rows == 0) return Status::Ok();
  RecToFloatKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(s, rows, out);
  RLK_CUDA_CHECK_LAUNCH("RecToFloatKernel");
  return Status::Ok();
}

Status FromFloat(const float* in, int64_t rows, int64_t G, bool check_keys, Workspace& ws, cudaStream_t stream, int32_t* err,
                 Rec** out) {
  RLK_TRY(ws.Get(rows, out));
  if (rows == 0) return Status::Ok();
  FloatToRecKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(in, rows, G, check_keys, *out, err);
  RLK_CUDA_CHECK_LAUNCH("FloatToRecKernel");
  return Status::Ok();
}

// Chan's merge of part into acc, row by row (rank order is the launch order).
__global__ void MergeKernel(Rec* acc, const float* part /*[rows, 7]*/, int64_t rows, bool first, int32_t* err) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < rows; k += int64_t(gridDim.x) * blockDim.x) {
    Rec a = first ? Rec{} : acc[k];
    if (!MergeGroupRecord(&a, UnpackGroupRecord(part + k * kGroupStatCols))) SetError(err, kDeviceErrorBadPartials);
    acc[k] = a;
  }
}

struct DeviceGuard {
  static Status Set(int device) {
    if (cudaSetDevice(device) == cudaSuccess) return Status::Ok();
    cudaGetLastError();  // not left pending for the next launch check
    return Status{Status::kCudaError, "groupAdvantages: cudaSetDevice failed"};
  }
};

}  // namespace

Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, int device, int32_t* err) {
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  GroupView v;
  RLK_TRY(BuildGroups(p, ws, stream, err, &v));
  Rec* s1 = nullptr;
  RLK_TRY(ws.Get(p.num_groups, &s1));
  if (p.num_groups > 0) {
    GroupStatsKernel<<<WarpBlocks(p.num_groups), kThreads, 0, stream>>>(p, v, s1, err);
    RLK_CUDA_CHECK_LAUNCH("GroupStatsKernel");
  }
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, s1, ws, stream, &c));
  Rec* s2 = nullptr;
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    RLK_TRY(Round2(p, v, c, ws, stream, err, &s2));
    if (p.method == AdvantageMethod::kTmnReweight && p.num_groups > 0) {
      ReweightKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(s2, p.num_groups, p.gamma, c);
      RLK_CUDA_CHECK_LAUNCH("ReweightKernel");
    }
  }
  return Finalize(p, s1, c, s2, ws, stream, err);
}

Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const float* stats1, float* out, int device, int32_t* err) {
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  GroupView v;
  RLK_TRY(BuildGroups(p, ws, stream, err, &v));
  if (!stats1) {
    Rec* s1 = nullptr;
    RLK_TRY(ws.Get(p.num_groups, &s1));
    if (p.num_groups > 0) {
      GroupStatsKernel<<<WarpBlocks(p.num_groups), kThreads, 0, stream>>>(p, v, s1, err);
      RLK_CUDA_CHECK_LAUNCH("GroupStatsKernel");
    }
    return ToFloat(s1, p.num_groups, out, stream);
  }
  Rec* s1 = nullptr;
  RLK_TRY(FromFloat(stats1, p.num_groups, p.num_groups, true, ws, stream, err, &s1));
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, s1, ws, stream, &c));
  Rec* s2 = nullptr;
  RLK_TRY(Round2(p, v, c, ws, stream, err, &s2));
  return ToFloat(s2, AdvantageRound2Rows(p.method, p.num_groups), out, stream);
}

Status GroupAdvantagesCombine(const float* const* parts, int64_t num_parts, int64_t rows, float* out, int device,
                              void* stream_ptr, int32_t* err) {
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Workspace ws(device);
  Rec* acc = nullptr;
  RLK_TRY(ws.Get(rows, &acc));
  if (rows == 0) return Status::Ok();
  for (int64_t r = 0; r < num_parts; ++r) {
    MergeKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(acc, parts[r], rows, r == 0, err);
    RLK_CUDA_CHECK_LAUNCH("MergeKernel");
  }
  return ToFloat(acc, rows, out, stream);
}

Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const float* stats1, const float* stats2, int device,
                               int32_t* err) {
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  Rec* s1 = nullptr;
  RLK_TRY(FromFloat(stats1, p.num_groups, p.num_groups, true, ws, stream, err, &s1));
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, s1, ws, stream, &c));
  Rec* s2 = nullptr;
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    const int64_t rows = AdvantageRound2Rows(p.method, p.num_groups);
    RLK_TRY(FromFloat(stats2, rows, p.num_groups, false, ws, stream, err, &s2));
    if (p.method == AdvantageMethod::kTmnReweight && p.num_groups > 0) {
      ReweightKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(s2, p.num_groups, p.gamma, c);
      RLK_CUDA_CHECK_LAUNCH("ReweightKernel");
    }
  }
  return Finalize(p, s1, c, s2, ws, stream, err);
}

namespace {
__global__ void BroadcastKernel(const float* adv /*[B]*/, const uint8_t* mask /*[B, T]*/, int64_t B, int64_t T, float* out /*[B, T]*/) {
  const int64_t n = B * T;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x)
    out[k] = mask[k] ? adv[k / T] : 0.0f;
}
}  // namespace

Status BroadcastAdvantages(const BroadcastAdvantagesParams& p) {
  if (p.batch * p.seq_len == 0) return Status::Ok();
  // The stream belongs to p.device: launching on it while another device is
  // current (the thread's last op ran on cuda:0, this one is on cuda:1) fails.
  RLK_TRY(DeviceGuard::Set(p.device));
  BroadcastKernel<<<Blocks(p.batch * p.seq_len, kThreads), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(
      p.advantages, p.mask, p.batch, p.seq_len, p.out);
  RLK_CUDA_CHECK_LAUNCH("BroadcastKernel");
  return Status::Ok();
}

}  // namespace rlk::cuda
