// CUDA group advantages: the stages of rlk/group_advantages.h, all on the
// device's stream, no host round trip, deterministic.
//
// - Numbering (ids of any int64 values to slots in order of first
//   appearance) by two stable radix sorts: (id, position) pairs, whose runs
//   are the groups; then the runs' first positions, whose order is the order
//   of first appearance. A row finds its run's head by binary search. No
//   scans, no atomics; the count of groups stays in device memory.
// - Rows of each slot: a stable sort of (slot, row) and a lower-bound search
//   per slot, so a group's rows keep their order.
// - One warp per group (per task) merges its rows' records in a fixed order
//   (lane-strided Chan merges, then a shuffle-down tree); batch-wide records
//   are one block's fixed shared-memory tree. No float atomics.
// - Records in double. This is the exception DESIGN 4 allows for by its
//   reason: one value per sequence (B is thousands to tens of thousands), so
//   the double work is microseconds even on an H20, and r - mean_g must not
//   lose the digits a float mean of rewards near 50 or 100 would.
// - Bad data (more groups than num_groups, a task id changing within a
//   group, a negative token count, a grpo-passk group of one, gdpo with fewer
//   than two tokens, bad or inconsistent partials, a row whose group no
//   partial holds) sets the device error word; the kernels keep every index
//   in range and write NaN for the rows concerned.
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
constexpr int kReduceThreads = 256;  // block trees of GroupRecords (80 bytes each) in shared memory
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this
constexpr int64_t kNoKey = INT64_MAX;  // sorts after every position

using Rec = GroupRecord;  // the per-group math is shared with the CPU (group_advantages.h)
using Coef = GroupCoef;

#define RLK_CUDA_CHECK_LAUNCH(what)                                                    \
  do {                                                                                 \
    if (cudaGetLastError() != cudaSuccess)                                             \
      return Status{Status::kCudaError, "groupAdvantages: launch of " what " failed"}; \
  } while (0)
#define RLK_TRY(expr)          \
  do {                         \
    Status _st = (expr);       \
    if (!_st.ok()) return _st; \
  } while (0)

int Blocks(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  return int(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}
// One warp per item.
int WarpBlocks(int64_t items) { return Blocks(items * kWarp, kThreads); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)
#define WARP_STRIDE(w, n)                                                          \
  for (int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; w < (n); \
       w += int64_t(gridDim.x) * blockDim.x / kWarp)

__device__ __forceinline__ int64_t LoadIdx(const void* p, DType dt, int64_t i) {
  return dt == DType::kInt64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}
__device__ __forceinline__ void SetError(int32_t* word, int32_t code) { atomicCAS(word, 0, code); }

// Merge of records whose rows interleave (lane-strided): a tie for the max
// keeps the smaller row index, as the row-order merge on the CPU does.
__device__ void MergeAnyOrder(Rec* a, const Rec& b) {
  const bool tie = a->n > 0 && b.n > 0 && a->max == b.max;
  const double arg = b.arg;
  MergeGroupRecord(a, b);
  if (tie) a->arg = fmin(a->arg, arg);
}
__device__ Rec ShflDown(const Rec& r, int o) {
  Rec s;
  s.n = __shfl_down_sync(0xffffffffu, r.n, o);
  s.mean = __shfl_down_sync(0xffffffffu, r.mean, o);
  s.m2 = __shfl_down_sync(0xffffffffu, r.m2, o);
  s.min = __shfl_down_sync(0xffffffffu, r.min, o);
  s.max = __shfl_down_sync(0xffffffffu, r.max, o);
  s.max2 = __shfl_down_sync(0xffffffffu, r.max2, o);
  s.arg = __shfl_down_sync(0xffffffffu, r.arg, o);
  s.owner = __shfl_down_sync(0xffffffffu, r.owner, o);
  s.w = __shfl_down_sync(0xffffffffu, r.w, o);
  s.wmean = __shfl_down_sync(0xffffffffu, r.wmean, o);
  s.nonzero = __shfl_down_sync(0xffffffffu, r.nonzero, o);
  return s;
}
// Lane 0 gets the merge of the warp's records (a fixed tree).
__device__ Rec WarpMerge(Rec acc) {
  const int lane = threadIdx.x % kWarp;
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const Rec other = ShflDown(acc, o);
    if (lane + o < kWarp) MergeAnyOrder(&acc, other);
  }
  return acc;
}
// Thread 0 gets the merge of the block's records (blockDim.x == kReduceThreads).
__device__ Rec BlockMerge(Rec acc, Rec* smem) {
  smem[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) MergeAnyOrder(&smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  return smem[0];
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
  int device() const { return device_; }

 private:
  int device_;
  std::vector<void*> ptrs_;
};

// ---- sorting, numbering, rows per slot -----------------------------------------

__global__ void IotaKernel(int64_t n, int64_t* out) {
  GRID_STRIDE(i, n) out[i] = i;
}
__global__ void IdsToKeysKernel(const void* ids, DType dt, int64_t n, int64_t* keys) {
  GRID_STRIDE(i, n) keys[i] = LoadIdx(ids, dt, i);
}

int KeyBits(int64_t max_key) {
  int bits = 1;
  while (bits < 63 && (int64_t(1) << bits) <= max_key) ++bits;
  return bits;
}

// Stable sort of positions 0..n-1 by keys (the low `bits` bits of
// non-negative keys, or all 64 bits of signed ones when bits == 64).
Status SortByKey(const int64_t* keys, int64_t n, int bits, Workspace& ws, cudaStream_t stream, int64_t** sorted,
                 int64_t** perm) {
  int64_t* iota = nullptr;
  RLK_TRY(ws.Get(n, sorted));
  RLK_TRY(ws.Get(n, perm));
  RLK_TRY(ws.Get(n, &iota));
  if (n == 0) return Status::Ok();
  IotaKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(n, iota);
  RLK_CUDA_CHECK_LAUNCH("IotaKernel");
  size_t temp_bytes = 0;
  // CUB reports launch failures with cudaPeekAtLastError, which leaves the
  // error pending: clear it, or the next op's launch check would take it.
  if (cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, *sorted, iota, *perm, n, 0, bits, stream) != cudaSuccess) {
    cudaGetLastError();
    return Status{Status::kCudaError, "groupAdvantages: cub::DeviceRadixSort (size query) failed"};
  }
  uint8_t* temp = nullptr;
  RLK_TRY(ws.Get(int64_t(temp_bytes), &temp));
  if (cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, *sorted, iota, *perm, n, 0, bits, stream) != cudaSuccess) {
    cudaGetLastError();
    return Status{Status::kCudaError, "groupAdvantages: cub::DeviceRadixSort failed"};
  }
  return Status::Ok();
}

// Head of the run of equal keys holding sorted position k.
__device__ int64_t RunHead(const int64_t* sk, int64_t k) {
  const int64_t key = sk[k];
  int64_t lo = 0, hi = k;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sk[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Per run head: its first valid position (positions ascend within a run),
// the key of the second sort; every other entry sorts last.
__global__ void RunFirstKernel(const int64_t* sk, const int64_t* perm, const uint8_t* valid, int64_t n, int64_t* first) {
  GRID_STRIDE(k, n) {
    int64_t f = kNoKey;
    if (k == 0 || sk[k] != sk[k - 1]) {
      for (int64_t j = k; j < n && sk[j] == sk[k]; ++j)
        if (!valid || valid[perm[j]]) {
          f = perm[j];
          break;
        }
    }
    first[k] = f;
  }
}
// Slot j is the run whose first position is the j-th smallest.
__global__ void RunSlotKernel(const int64_t* sf /*[n] sorted firsts*/, const int64_t* heads /*[n]*/, const int64_t* sk,
                              int64_t n, int64_t cap, int64_t* slot_of_head /*[n]*/, int64_t* slot_keys /*[cap]*/,
                              int32_t* err) {
  GRID_STRIDE(j, n) {
    if (sf[j] == kNoKey) continue;
    if (j >= cap) {
      SetError(err, kDeviceErrorTooManyGroups);
      slot_of_head[heads[j]] = -1;
      continue;
    }
    slot_of_head[heads[j]] = j;
    slot_keys[j] = sk[heads[j]];
  }
}
__global__ void RunDenseKernel(const int64_t* sk, const int64_t* perm, const uint8_t* valid, int64_t n,
                               const int64_t* slot_of_head, int64_t* dense) {
  GRID_STRIDE(k, n) {
    const int64_t pos = perm[k];
    dense[pos] = !valid || valid[pos] ? slot_of_head[RunHead(sk, k)] : -1;
  }
}
__global__ void RunCountKernel(const int64_t* sf, int64_t n, int64_t cap, int64_t* count) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sf[mid] < kNoKey) lo = mid + 1;
    else hi = mid;
  }
  *count = lo < cap ? lo : cap;
}

struct Numbering {
  int64_t* dense = nullptr;      // [n] slot of each entry; -1 invalid or past cap
  int64_t* slot_keys = nullptr;  // [cap] the key of each slot
  int64_t* count = nullptr;      // [1] slots in use (<= cap)
};
// Keys of any int64 values to slots 0..cap-1 in order of first appearance
// among the valid entries; more than cap distinct keys sets the error word.
Status Number(const int64_t* keys, const uint8_t* valid, int64_t n, int64_t cap, Workspace& ws, cudaStream_t stream,
              int32_t* err, Numbering* out) {
  RLK_TRY(ws.Get(n, &out->dense));
  RLK_TRY(ws.Get(cap, &out->slot_keys));
  RLK_TRY(ws.Get(1, &out->count));
  if (n == 0) {
    if (cudaMemsetAsync(out->count, 0, sizeof(int64_t), stream) != cudaSuccess) {
      cudaGetLastError();
      return Status{Status::kCudaError, "groupAdvantages: cudaMemsetAsync failed"};
    }
    return Status::Ok();
  }
  int64_t *sk = nullptr, *perm = nullptr, *first = nullptr, *sf = nullptr, *heads = nullptr, *slot_of_head = nullptr;
  RLK_TRY(SortByKey(keys, n, 64, ws, stream, &sk, &perm));
  RLK_TRY(ws.Get(n, &first));
  RLK_TRY(ws.Get(n, &slot_of_head));
  RunFirstKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(sk, perm, valid, n, first);
  RLK_CUDA_CHECK_LAUNCH("RunFirstKernel");
  RLK_TRY(SortByKey(first, n, 64, ws, stream, &sf, &heads));
  RunSlotKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(sf, heads, sk, n, cap, slot_of_head, out->slot_keys, err);
  RLK_CUDA_CHECK_LAUNCH("RunSlotKernel");
  RunDenseKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(sk, perm, valid, n, slot_of_head, out->dense);
  RLK_CUDA_CHECK_LAUNCH("RunDenseKernel");
  RunCountKernel<<<1, 1, 0, stream>>>(sf, n, cap, out->count);
  RLK_CUDA_CHECK_LAUNCH("RunCountKernel");
  return Status::Ok();
}

__global__ void SlotKeysKernel(const int64_t* dense, int64_t n, int64_t cap, int64_t* keys) {
  GRID_STRIDE(i, n) keys[i] = dense[i] < 0 ? cap : dense[i];
}
// offsets[s] = first sorted position whose key >= s, for s in [0, cap].
__global__ void LowerBoundKernel(const int64_t* keys /*[n] sorted*/, int64_t n, int64_t cap, int64_t* offsets) {
  GRID_STRIDE(s, cap + 1) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (keys[mid] < s) lo = mid + 1;
      else hi = mid;
    }
    offsets[s] = lo;
  }
}

// Entries of each slot: a stable sort by slot (invalid ones last) and the
// offsets of slots [0, cap].
Status SlotRows(const int64_t* dense, int64_t n, int64_t cap, Workspace& ws, cudaStream_t stream, int64_t** perm,
                int64_t** offsets) {
  int64_t *keys = nullptr, *sorted = nullptr;
  RLK_TRY(ws.Get(n, &keys));
  RLK_TRY(ws.Get(cap + 1, offsets));
  if (n > 0) {
    SlotKeysKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(dense, n, cap, keys);
    RLK_CUDA_CHECK_LAUNCH("SlotKeysKernel");
  }
  RLK_TRY(SortByKey(keys, n, KeyBits(cap), ws, stream, &sorted, perm));
  LowerBoundKernel<<<Blocks(cap + 1, kThreads), kThreads, 0, stream>>>(sorted, n, cap, *offsets);
  RLK_CUDA_CHECK_LAUNCH("LowerBoundKernel");
  return Status::Ok();
}

// Rows of each slot: implicit for consecutive groups, else slot_of_row and
// the rows sorted by slot.
struct GroupView {
  int64_t gs = 0;
  const int64_t* dense = nullptr;    // [B] slot of each row (-1: none)
  const int64_t* perm = nullptr;     // [B] rows sorted (stably) by slot
  const int64_t* offsets = nullptr;  // [cap + 1]
  __device__ int64_t Begin(int64_t s) const { return gs ? s * gs : offsets[s]; }
  __device__ int64_t End(int64_t s) const { return gs ? (s + 1) * gs : offsets[s + 1]; }
  __device__ int64_t Row(int64_t k) const { return gs ? k : perm[k]; }
  __device__ int64_t SlotOf(int64_t i) const { return gs ? i / gs : dense[i]; }
};

Status ViewFromDense(const GroupAdvantagesParams& p, const int64_t* dense, Workspace& ws, cudaStream_t stream,
                     GroupView* v) {
  int64_t *perm = nullptr, *offsets = nullptr;
  RLK_TRY(SlotRows(dense, p.batch, p.num_groups, ws, stream, &perm, &offsets));
  v->dense = dense;
  v->perm = perm;
  v->offsets = offsets;
  return Status::Ok();
}

// Stage 0 of the single process (and of round 1).
Status BuildGroups(const GroupAdvantagesParams& p, Workspace& ws, cudaStream_t stream, int32_t* err, GroupView* v,
                   Numbering* num) {
  if (p.group_size > 0) {
    v->gs = p.group_size;
    return Status::Ok();
  }
  int64_t* keys = nullptr;
  RLK_TRY(ws.Get(p.batch, &keys));
  if (p.batch > 0) {
    IdsToKeysKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p.group_ids, p.group_ids_dtype, p.batch, keys);
    RLK_CUDA_CHECK_LAUNCH("IdsToKeysKernel");
  }
  RLK_TRY(Number(keys, nullptr, p.batch, p.num_groups, ws, stream, err, num));
  return ViewFromDense(p, num->dense, ws, stream, v);
}

// ---- token counts ---------------------------------------------------------------

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
  GRID_STRIDE(i, B) {
    int64_t v = LoadIdx(tc, dt, i);
    if (v < 0) {
      SetError(err, kDeviceErrorNegativeTokenCount);
      v = 0;
    }
    counts[i] = v;
  }
}

// Tokens per row, or null where the method reads none (gdpo without a mask: 1 each).
Status TokenCounts(const GroupAdvantagesParams& p, Workspace& ws, cudaStream_t stream, int32_t* err, int64_t** counts) {
  *counts = nullptr;
  if (!p.token_counts && !p.mask) return Status::Ok();
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

// ---- stage 1: group records ---------------------------------------------------

// One warp per slot: K records (lane-strided Chan merges of the rows in row
// order, then the warp tree) and the task id. whole: a grpo-passk group of
// one is an error.
__global__ void RecordsKernel(GroupAdvantagesParams p, GroupView v, const int64_t* counts, bool whole, Rec* rec /*[G, K]*/,
                              int64_t* task /*[G]*/, int32_t* err) {
  const int lane = threadIdx.x % kWarp;
  const int64_t K = p.cols;
  WARP_STRIDE(g, p.num_groups) {
    const int64_t b = v.Begin(g), e = v.End(g);
    for (int64_t col = 0; col < K; ++col) {
      Rec acc;
      for (int64_t k = b + lane; k < e; k += kWarp) {
        const int64_t i = v.Row(k);
        MergeGroupRecord(&acc, RowRecord(p.rewards[i * K + col], double(i), counts ? double(counts[i]) : 0.0));
      }
      acc = WarpMerge(acc);
      if (lane == 0) rec[g * K + col] = acc;
    }
    int64_t t = 0;
    if (p.task_ids && e > b) {
      t = LoadIdx(p.task_ids, p.task_ids_dtype, v.Row(b));
      bool bad = false;
      for (int64_t k = b + 1 + lane; k < e; k += kWarp) bad |= LoadIdx(p.task_ids, p.task_ids_dtype, v.Row(k)) != t;
      if (__any_sync(0xffffffffu, bad) && lane == 0) SetError(err, kDeviceErrorTaskIdInvalid);
    }
    if (lane == 0) {
      task[g] = t;
      if (whole && p.method == AdvantageMethod::kGrpoPassk && e - b == 1) SetError(err, kDeviceErrorPasskGroupOfOne);
    }
  }
}

// ---- stage 2: coefficients ----------------------------------------------------

// The merge of every slot's column-0 record (grpo 'batch', gpg).
__global__ void __launch_bounds__(kReduceThreads) BatchKernel(const Rec* rec, int64_t G, int64_t K, BatchStats* out) {
  // Raw storage: CUDA runs no constructors for __shared__ (Rec has member defaults).
  __shared__ double smem_raw[kReduceThreads * sizeof(Rec) / sizeof(double)];
  Rec* smem = reinterpret_cast<Rec*>(smem_raw);
  Rec acc;
  for (int64_t g = threadIdx.x; g < G; g += kReduceThreads) MergeAnyOrder(&acc, rec[g * K]);
  acc = BlockMerge(acc, smem);
  if (threadIdx.x == 0) out->all = acc;
}

__global__ void CoefKernel(const Rec* rec, int64_t G, int64_t K, AdvantageMethod method, AdvantageScale scale,
                           const BatchStats* batch, double eps, const double* weights, Coef* c) {
  GRID_STRIDE(j, G * K) {
    const BatchStats b = batch ? *batch : BatchStats{};
    c[j] = GroupCoefficient(method, scale, rec[j], b, eps, weights ? weights[j % K] : 1.0);
  }
}

// tmn-reweight: the slots' tasks as keys, valid where the slot has rows.
__global__ void TaskKeysKernel(const Rec* rec, const int64_t* task, int64_t G, int64_t* keys, uint8_t* valid) {
  GRID_STRIDE(g, G) {
    keys[g] = task[g];
    valid[g] = rec[g].n > 0 ? 1 : 0;
  }
}
// One warp per task slot: the mean over its groups of mean_g and of var_g.
__global__ void TaskAggKernel(const Rec* rec, const int64_t* perm, const int64_t* offsets, int64_t G, double* task_mean,
                              double* task_var) {
  const int lane = threadIdx.x % kWarp;
  WARP_STRIDE(t, G) {
    const int64_t b = offsets[t], e = offsets[t + 1];
    double sm = 0, sv = 0;
    for (int64_t k = b + lane; k < e; k += kWarp) {
      const Rec s = rec[perm[k]];
      sm += GroupMean(s);
      sv += GroupVar(s);
    }
    for (int o = kWarp / 2; o > 0; o >>= 1) {
      sm += __shfl_xor_sync(0xffffffffu, sm, o);
      sv += __shfl_xor_sync(0xffffffffu, sv, o);
    }
    if (lane == 0 && e > b) {
      task_mean[t] = sm / double(e - b);
      task_var[t] = sv / double(e - b);
    }
  }
}
__global__ void TmnCoefKernel(const Rec* rec, int64_t G, const int64_t* task_slot, const double* task_mean,
                              const double* task_var, double eps, double alpha, Coef* c) {
  GRID_STRIDE(g, G) {
    const int64_t t = task_slot[g];
    c[g] = rec[g].n > 0 && t >= 0 ? TmnCoefficient(rec[g], task_mean[t], task_var[t], eps, alpha) : Coef{};
  }
}

Status Coefficients(const GroupAdvantagesParams& p, const Rec* rec, const int64_t* task, Workspace& ws,
                    cudaStream_t stream, int32_t* err, Coef** c) {
  const int64_t G = p.num_groups, K = p.cols;
  RLK_TRY(ws.Get(G * K, c));
  if (G == 0) return Status::Ok();
  if (p.method != AdvantageMethod::kTmnReweight) {
    BatchStats* batch = nullptr;
    if (p.method == AdvantageMethod::kGpg || (p.method == AdvantageMethod::kGrpo && p.scale == AdvantageScale::kBatch)) {
      RLK_TRY(ws.Get(1, &batch));
      BatchKernel<<<1, kReduceThreads, 0, stream>>>(rec, G, K, batch);
      RLK_CUDA_CHECK_LAUNCH("BatchKernel");
    }
    double* weights = nullptr;
    if (p.reward_weights) {
      RLK_TRY(ws.Get(K, &weights));
      RLK_TRY(CopyHostToDevice(ws.device(), weights, p.reward_weights, size_t(K) * sizeof(double)));
    }
    CoefKernel<<<Blocks(G * K, kThreads), kThreads, 0, stream>>>(rec, G, K, p.method, p.scale, batch, p.eps, weights, *c);
    RLK_CUDA_CHECK_LAUNCH("CoefKernel");
    return Status::Ok();
  }
  int64_t* keys = nullptr;
  uint8_t* valid = nullptr;
  double *task_mean = nullptr, *task_var = nullptr;
  RLK_TRY(ws.Get(G, &keys));
  RLK_TRY(ws.Get(G, &valid));
  RLK_TRY(ws.Get(G, &task_mean));
  RLK_TRY(ws.Get(G, &task_var));
  TaskKeysKernel<<<Blocks(G, kThreads), kThreads, 0, stream>>>(rec, task, G, keys, valid);
  RLK_CUDA_CHECK_LAUNCH("TaskKeysKernel");
  Numbering tasks;
  RLK_TRY(Number(keys, valid, G, G, ws, stream, err, &tasks));
  int64_t *perm = nullptr, *offsets = nullptr;
  RLK_TRY(SlotRows(tasks.dense, G, G, ws, stream, &perm, &offsets));
  TaskAggKernel<<<WarpBlocks(G), kThreads, 0, stream>>>(rec, perm, offsets, G, task_mean, task_var);
  RLK_CUDA_CHECK_LAUNCH("TaskAggKernel");
  TmnCoefKernel<<<Blocks(G, kThreads), kThreads, 0, stream>>>(rec, G, tasks.dense, task_mean, task_var, p.eps, p.alpha, *c);
  RLK_CUDA_CHECK_LAUNCH("TmnCoefKernel");
  return Status::Ok();
}

// tmn-reweight: w = exp(gamma (0.5 - p)) from the (combined) fraction p.
__global__ void ReweightKernel(const Rec* s2, int64_t G, double gamma, Coef* c) {
  GRID_STRIDE(g, G) ApplyTmnReweight(&c[g], s2[g].mean, gamma);
}

// ---- stage 3 ------------------------------------------------------------------

// tmn-reweight: per slot, the fraction of rewards > m as an indicator's record.
__global__ void AboveKernel(GroupAdvantagesParams p, GroupView v, const Coef* c, Rec* out) {
  const int lane = threadIdx.x % kWarp;
  WARP_STRIDE(g, p.num_groups) {
    const int64_t b = v.Begin(g), e = v.End(g);
    const double m = c[g].threshold;
    long long above = 0;
    for (int64_t k = b + lane; k < e; k += kWarp) above += double(p.rewards[v.Row(k)]) > m;
    for (int o = kWarp / 2; o > 0; o >>= 1) above += __shfl_xor_sync(0xffffffffu, above, o);
    if (lane == 0) out[g] = e > b ? AboveRecord(double(above), double(e - b)) : Rec{};
  }
}

// The value a whitening method whitens (reinforce++: r - mean_g; gdpo: S).
__device__ double PreWhiten(const GroupAdvantagesParams& p, int64_t i, const Coef* k) {
  return p.method == AdvantageMethod::kGdpo ? GdpoValue(p.rewards + i * p.cols, k, p.cols)
                                            : double(p.rewards[i]) - k->center;
}

// reinforce++ and gdpo: one token-weighted record of the values to whiten
// (each token carries its row's value). One block, a fixed tree.
__global__ void __launch_bounds__(kReduceThreads) WhitenStatsKernel(GroupAdvantagesParams p, GroupView v, const Coef* c,
                                                                   const int64_t* counts, Rec* out, int32_t* err) {
  // Raw storage: CUDA runs no constructors for __shared__ (Rec has member defaults).
  __shared__ double smem_raw[kReduceThreads * sizeof(Rec) / sizeof(double)];
  Rec* smem = reinterpret_cast<Rec*>(smem_raw);
  Rec acc;
  for (int64_t i = threadIdx.x; i < p.batch; i += kReduceThreads) {
    const int64_t g = v.SlotOf(i);
    const double w = counts ? double(counts[i]) : 1.0;
    if (g < 0 || w == 0) continue;
    Rec r;
    r.n = w;
    r.mean = r.min = r.max = PreWhiten(p, i, c + g * p.cols);
    MergeGroupRecord(&acc, r);
  }
  acc = BlockMerge(acc, smem);
  if (threadIdx.x == 0) {
    out[0] = acc;
    if (p.method == AdvantageMethod::kGdpo && !(acc.n >= 2)) SetError(err, kDeviceErrorGdpoTokens);
  }
}

Status Round2(const GroupAdvantagesParams& p, const GroupView& v, const Coef* c, const int64_t* counts, Workspace& ws,
              cudaStream_t stream, int32_t* err, Rec** s2) {
  if (p.method == AdvantageMethod::kTmnReweight) {
    RLK_TRY(ws.Get(p.num_groups, s2));
    if (p.num_groups == 0) return Status::Ok();
    AboveKernel<<<WarpBlocks(p.num_groups), kThreads, 0, stream>>>(p, v, c, *s2);
    RLK_CUDA_CHECK_LAUNCH("AboveKernel");
    return Status::Ok();
  }
  RLK_TRY(ws.Get(1, s2));
  WhitenStatsKernel<<<1, kReduceThreads, 0, stream>>>(p, v, c, counts, *s2, err);
  RLK_CUDA_CHECK_LAUNCH("WhitenStatsKernel");
  return Status::Ok();
}

// ---- stage 4 ------------------------------------------------------------------

__global__ void FinalizeKernel(GroupAdvantagesParams p, GroupView v, const Coef* c, const int64_t* counts,
                               const Rec* whiten /*[1] or null*/) {
  double mu = 0, inv_std = 1;
  if (whiten) WhitenMoments(whiten[0], &mu, &inv_std);
  GRID_STRIDE(i, p.batch) {
    const int64_t g = v.SlotOf(i);
    if (g < 0) {
      p.advantages[i] = NAN;
      continue;
    }
    const Coef* k = c + g * p.cols;
    double a;
    if (whiten) a = WhitenValue(PreWhiten(p, i, k), counts ? double(counts[i]) : 1.0, mu, inv_std);
    else a = RowValue(p.method, p.rewards[i], *k, double(i), double(p.rank), p.baseline ? double(p.baseline[i]) : 0.0);
    p.advantages[i] = float(a);
  }
}

__global__ void InformativeKernel(const Rec* rec, int64_t G, int64_t K, uint8_t* informative) {
  GRID_STRIDE(g, G) {
    uint8_t f = 0;
    for (int64_t k = 0; k < K; ++k) f |= rec[g * K + k].max > rec[g * K + k].min ? 1 : 0;
    informative[g] = f;
  }
}

Status Finalize(const GroupAdvantagesParams& p, const GroupView& v, const Rec* rec, const Coef* c, const Rec* s2,
                const int64_t* counts, cudaStream_t stream) {
  if (p.batch > 0) {
    FinalizeKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p, v, c, counts, AdvantageWhitens(p.method) ? s2 : nullptr);
    RLK_CUDA_CHECK_LAUNCH("FinalizeKernel");
  }
  if (p.num_groups > 0) {
    InformativeKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(rec, p.num_groups, p.cols, p.informative);
    RLK_CUDA_CHECK_LAUNCH("InformativeKernel");
  }
  return Status::Ok();
}

// ---- cross-rank partials (int64 rows) ---------------------------------------------

__device__ void PackRowDev(int64_t* row, int64_t width, int64_t id, int64_t task, int64_t present, const Rec* recs,
                           int64_t K) {
  for (int64_t j = 0; j < width; ++j) row[j] = 0;
  row[kWordId] = id;
  row[kWordTask] = task;
  row[kWordPresent] = present;
  row[kWordCount] = int64_t(recs[0].n);
  for (int64_t k = 0; k < K; ++k) PackRecord(recs[k], row, k);
}

// Round 1: slots in use get their id, task and records; the rest zeros.
__global__ void PackRound1Kernel(const Rec* rec, const int64_t* task, const int64_t* slot_keys, const int64_t* count,
                                 int64_t G, int64_t K, int64_t* out) {
  const int64_t width = PartialWidth(K);
  GRID_STRIDE(g, G) {
    if (g < *count) PackRowDev(out + g * width, width, slot_keys[g], task[g], 1, rec + g * K, K);
    else for (int64_t j = 0; j < width; ++j) out[g * width + j] = 0;
  }
}
// Round 2: every row present, keyed by its slot (or 0 for the one whitening record).
__global__ void PackRound2Kernel(const Rec* rec, int64_t rows, int64_t* out) {
  const int64_t width = PartialWidth(1);
  GRID_STRIDE(g, rows) PackRowDev(out + g * width, width, g, 0, 1, rec + g, 1);
}

// Combined partials to slots: records, tasks, ids and validity.
__global__ void UnpackKernel(const int64_t* stats, int64_t rows, int64_t K, Rec* rec, int64_t* task, int64_t* keys,
                             uint8_t* valid, int32_t* err) {
  const int64_t width = PartialWidth(K);
  GRID_STRIDE(g, rows) {
    const int64_t* row = stats + g * width;
    bool ok = row[kWordPresent] != 0;
    if (ok && row[kWordCount] < 0) {
      SetError(err, kDeviceErrorBadPartials);
      ok = false;
    }
    valid[g] = ok ? 1 : 0;
    keys[g] = row[kWordId];
    task[g] = ok ? row[kWordTask] : 0;
    for (int64_t k = 0; k < K; ++k) rec[g * K + k] = ok ? UnpackRecord(row, k) : Rec{};
  }
}
// Two valid records with one id.
__global__ void DuplicateKernel(const int64_t* sk, const int64_t* perm, const uint8_t* valid, int64_t n, int32_t* err) {
  GRID_STRIDE(k, n) {
    if (k == 0 || sk[k] != sk[k - 1] || !valid[perm[k]]) continue;
    for (int64_t j = k - 1; j >= 0 && sk[j] == sk[k]; --j)
      if (valid[perm[j]]) {
        SetError(err, kDeviceErrorBadPartials);
        break;
      }
  }
}
// This rank's rows in the combined slots: binary search of the row's id.
__global__ void LookUpKernel(GroupAdvantagesParams p, const int64_t* sk, const int64_t* perm, const uint8_t* valid,
                             int64_t n, int64_t* dense, int32_t* err) {
  GRID_STRIDE(i, p.batch) {
    const int64_t id = LoadIdx(p.group_ids, p.group_ids_dtype, i);
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sk[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    int64_t slot = -1;
    for (int64_t k = lo; k < n && sk[k] == id; ++k)
      if (valid[perm[k]]) {
        slot = perm[k];
        break;
      }
    if (slot < 0) SetError(err, kDeviceErrorUnknownGroup);
    dense[i] = slot;
  }
}
__global__ void PasskOneKernel(const Rec* rec, int64_t G, int64_t K, int32_t* err) {
  GRID_STRIDE(g, G) if (rec[g * K].n == 1) SetError(err, kDeviceErrorPasskGroupOfOne);
}

struct Combined {
  Rec* rec = nullptr;
  int64_t* task = nullptr;
};
Status Unpack(const GroupAdvantagesParams& p, const int64_t* stats, Workspace& ws, cudaStream_t stream, int32_t* err,
              Combined* c, GroupView* v) {
  const int64_t rows = p.num_groups, K = p.cols;
  int64_t *keys = nullptr, *sk = nullptr, *perm = nullptr, *dense = nullptr;
  uint8_t* valid = nullptr;
  RLK_TRY(ws.Get(rows * K, &c->rec));
  RLK_TRY(ws.Get(rows, &c->task));
  RLK_TRY(ws.Get(rows, &keys));
  RLK_TRY(ws.Get(rows, &valid));
  RLK_TRY(ws.Get(p.batch, &dense));
  if (rows > 0) {
    UnpackKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(stats, rows, K, c->rec, c->task, keys, valid, err);
    RLK_CUDA_CHECK_LAUNCH("UnpackKernel");
  }
  RLK_TRY(SortByKey(keys, rows, 64, ws, stream, &sk, &perm));
  if (rows > 0) {
    DuplicateKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(sk, perm, valid, rows, err);
    RLK_CUDA_CHECK_LAUNCH("DuplicateKernel");
  }
  if (p.batch > 0) {
    LookUpKernel<<<Blocks(p.batch, kThreads), kThreads, 0, stream>>>(p, sk, perm, valid, rows, dense, err);
    RLK_CUDA_CHECK_LAUNCH("LookUpKernel");
  }
  return ViewFromDense(p, dense, ws, stream, v);
}

// ---- combine ------------------------------------------------------------------------

__global__ void EntryKeysKernel(const int64_t* all, int64_t n, int64_t width, int64_t* keys, uint8_t* valid, int32_t* err) {
  GRID_STRIDE(j, n) {
    const int64_t* row = all + j * width;
    bool ok = row[kWordPresent] != 0;
    if (ok && row[kWordCount] < 0) {
      SetError(err, kDeviceErrorBadPartials);
      ok = false;
    }
    keys[j] = row[kWordId];
    valid[j] = ok ? 1 : 0;
  }
}
// One thread per slot: its entries in position order (rank order, then row).
__global__ void MergeSlotsKernel(const int64_t* all, int64_t width, int64_t K, int64_t rows, const uint8_t* valid,
                                 const int64_t* perm, const int64_t* offsets, const int64_t* slot_keys,
                                 const int64_t* count, int64_t* out, int32_t* err) {
  GRID_STRIDE(s, rows) {
    int64_t* o = out + s * width;
    if (s >= *count) {
      for (int64_t j = 0; j < width; ++j) o[j] = 0;
      continue;
    }
    int64_t task = 0;
    bool first = true;
    Rec acc[1];
    // Column by column keeps the record array small; the task check runs on column 0.
    for (int64_t col = 0; col < K; ++col) {
      acc[0] = Rec{};
      for (int64_t k = offsets[s]; k < offsets[s + 1]; ++k) {
        const int64_t j = perm[k];
        if (!valid[j]) continue;
        const int64_t* row = all + j * width;
        if (col == 0) {
          if (first) task = row[kWordTask];
          else if (row[kWordTask] != task) SetError(err, kDeviceErrorBadPartials);
          first = false;
        }
        Rec b = UnpackRecord(row, col);
        b.owner = double(j / rows);
        MergeGroupRecord(&acc[0], b);
      }
      if (col == 0) {
        for (int64_t w = 0; w < width; ++w) o[w] = 0;
        o[kWordId] = slot_keys[s];
        o[kWordTask] = task;
        o[kWordPresent] = 1;
        o[kWordCount] = int64_t(acc[0].n);
      }
      PackRecord(acc[0], o, col);
    }
  }
}

struct DeviceGuard {
  static Status Set(int device) {
    if (cudaSetDevice(device) == cudaSuccess) return Status::Ok();
    cudaGetLastError();  // not left pending for the next launch check
    return Status{Status::kCudaError, "groupAdvantages: cudaSetDevice failed"};
  }
};

Status Records(const GroupAdvantagesParams& p, const GroupView& v, const int64_t* counts, bool whole, Workspace& ws,
               cudaStream_t stream, int32_t* err, Rec** rec, int64_t** task) {
  RLK_TRY(ws.Get(p.num_groups * p.cols, rec));
  RLK_TRY(ws.Get(p.num_groups, task));
  if (p.num_groups == 0) return Status::Ok();
  RecordsKernel<<<WarpBlocks(p.num_groups), kThreads, 0, stream>>>(p, v, counts, whole, *rec, *task, err);
  RLK_CUDA_CHECK_LAUNCH("RecordsKernel");
  return Status::Ok();
}

Status ApplyRound2(const GroupAdvantagesParams& p, const Rec* s2, Coef* c, cudaStream_t stream) {
  if (p.method == AdvantageMethod::kTmnReweight && p.num_groups > 0) {
    ReweightKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(s2, p.num_groups, p.gamma, c);
    RLK_CUDA_CHECK_LAUNCH("ReweightKernel");
  }
  return Status::Ok();
}

__global__ void GdpoTokensKernel(const Rec* s2, int32_t* err) {
  if (blockIdx.x == 0 && threadIdx.x == 0 && !(s2[0].n >= 2)) SetError(err, kDeviceErrorGdpoTokens);
}

__global__ void UnpackRound2Kernel(const int64_t* stats, int64_t rows, Rec* rec) {
  GRID_STRIDE(g, rows) rec[g] = UnpackRecord(stats + g * PartialWidth(1), 0);
}

}  // namespace

Status GroupAdvantagesFwd(const GroupAdvantagesParams& p, int device, int32_t* err) {
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  GroupView v;
  Numbering num;
  RLK_TRY(BuildGroups(p, ws, stream, err, &v, &num));
  int64_t* counts = nullptr;
  RLK_TRY(TokenCounts(p, ws, stream, err, &counts));
  Rec* rec = nullptr;
  int64_t* task = nullptr;
  RLK_TRY(Records(p, v, counts, true, ws, stream, err, &rec, &task));
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, rec, task, ws, stream, err, &c));
  Rec* s2 = nullptr;
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    RLK_TRY(Round2(p, v, c, counts, ws, stream, err, &s2));
    RLK_TRY(ApplyRound2(p, s2, c, stream));
  }
  return Finalize(p, v, rec, c, s2, counts, stream);
}

Status GroupAdvantagesPartials(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows, int64_t* out,
                               int device, int32_t* err) {
  (void)stats1_rows;  // == p.num_groups (checked by the binding)
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  int64_t* counts = nullptr;
  RLK_TRY(TokenCounts(p, ws, stream, err, &counts));
  GroupView v;
  if (!stats1) {
    Numbering num;
    RLK_TRY(BuildGroups(p, ws, stream, err, &v, &num));
    Rec* rec = nullptr;
    int64_t* task = nullptr;
    RLK_TRY(Records(p, v, counts, false, ws, stream, err, &rec, &task));
    if (p.num_groups == 0) return Status::Ok();
    PackRound1Kernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(rec, task, num.slot_keys, num.count,
                                                                             p.num_groups, p.cols, out);
    RLK_CUDA_CHECK_LAUNCH("PackRound1Kernel");
    return Status::Ok();
  }
  Combined cmb;
  RLK_TRY(Unpack(p, stats1, ws, stream, err, &cmb, &v));
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, cmb.rec, cmb.task, ws, stream, err, &c));
  Rec* s2 = nullptr;
  RLK_TRY(Round2(p, v, c, counts, ws, stream, err, &s2));
  const int64_t rows = AdvantageRound2Rows(p.method, p.num_groups);
  if (rows == 0) return Status::Ok();
  PackRound2Kernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(s2, rows, out);
  RLK_CUDA_CHECK_LAUNCH("PackRound2Kernel");
  return Status::Ok();
}

Status GroupAdvantagesCombine(const int64_t* const* parts, int64_t num_parts, int64_t rows, int64_t width, int64_t* out,
                              int device, void* stream_ptr, int32_t* err) {
  if (width <= kPartialHead || (width - kPartialHead) % kPartialPerCol != 0)
    return Status{Status::kOutOfRange, "partials have a bad width"};
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Workspace ws(device);
  const int64_t K = (width - kPartialHead) / kPartialPerCol, n = num_parts * rows;
  if (rows == 0) return Status::Ok();
  int64_t *all = nullptr, *keys = nullptr;
  uint8_t* valid = nullptr;
  RLK_TRY(ws.Get(n * width, &all));
  RLK_TRY(ws.Get(n, &keys));
  RLK_TRY(ws.Get(n, &valid));
  for (int64_t r = 0; r < num_parts; ++r) {
    if (cudaMemcpyAsync(all + r * rows * width, parts[r], size_t(rows * width) * sizeof(int64_t), cudaMemcpyDeviceToDevice,
                        stream) != cudaSuccess) {
      cudaGetLastError();
      return Status{Status::kCudaError, "combineGroupAdvantagesPartials: cudaMemcpyAsync failed"};
    }
  }
  EntryKeysKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(all, n, width, keys, valid, err);
  RLK_CUDA_CHECK_LAUNCH("EntryKeysKernel");
  Numbering num;
  RLK_TRY(Number(keys, valid, n, rows, ws, stream, err, &num));
  int64_t *perm = nullptr, *offsets = nullptr;
  RLK_TRY(SlotRows(num.dense, n, rows, ws, stream, &perm, &offsets));
  MergeSlotsKernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(all, width, K, rows, valid, perm, offsets,
                                                                   num.slot_keys, num.count, out, err);
  RLK_CUDA_CHECK_LAUNCH("MergeSlotsKernel");
  return Status::Ok();
}

Status GroupAdvantagesFinalize(const GroupAdvantagesParams& p, const int64_t* stats1, int64_t stats1_rows,
                               const int64_t* stats2, int device, int32_t* err) {
  (void)stats1_rows;  // == p.num_groups (checked by the binding)
  RLK_TRY(DeviceGuard::Set(device));
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  Workspace ws(device);
  int64_t* counts = nullptr;
  RLK_TRY(TokenCounts(p, ws, stream, err, &counts));
  Combined cmb;
  GroupView v;
  RLK_TRY(Unpack(p, stats1, ws, stream, err, &cmb, &v));
  if (p.method == AdvantageMethod::kGrpoPassk && p.num_groups > 0) {
    PasskOneKernel<<<Blocks(p.num_groups, kThreads), kThreads, 0, stream>>>(cmb.rec, p.num_groups, p.cols, err);
    RLK_CUDA_CHECK_LAUNCH("PasskOneKernel");
  }
  Coef* c = nullptr;
  RLK_TRY(Coefficients(p, cmb.rec, cmb.task, ws, stream, err, &c));
  Rec* s2 = nullptr;
  if (AdvantageNeedsRound2(p.method, p.reweight)) {
    const int64_t rows = AdvantageRound2Rows(p.method, p.num_groups);
    RLK_TRY(ws.Get(rows, &s2));
    if (rows > 0) {
      UnpackRound2Kernel<<<Blocks(rows, kThreads), kThreads, 0, stream>>>(stats2, rows, s2);
      RLK_CUDA_CHECK_LAUNCH("UnpackRound2Kernel");
    }
    if (p.method == AdvantageMethod::kGdpo) {
      // The combined whitening record must hold two tokens, as on one rank.
      GdpoTokensKernel<<<1, 1, 0, stream>>>(s2, err);
      RLK_CUDA_CHECK_LAUNCH("GdpoTokensKernel");
    }
    RLK_TRY(ApplyRound2(p, s2, c, stream));
  }
  return Finalize(p, v, cmb.rec, c, s2, counts, stream);
}

namespace {
__global__ void BroadcastKernel(const float* adv /*[B]*/, const uint8_t* mask /*[B, T]*/, int64_t B, int64_t T, float* out /*[B, T]*/) {
  GRID_STRIDE(k, B * T) out[k] = mask[k] ? adv[k / T] : 0.0f;
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
