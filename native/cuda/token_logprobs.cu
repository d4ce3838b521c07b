// CUDA kernels of the token log-prob family. One warp per row (V <= 2048) or
// one 512-thread block per row, grid-stride over rows with int64 offsets (no
// 65535 limit), 16-byte vector loads of the logits with scalar head and tail
// for rows that are not 16-byte aligned (odd V), an online log-sum-exp in fp32
// in one read, and warp-shuffle then shared-memory reductions in a fixed
// order (deterministic; no float atomics). The backward reads each row once
// and writes it once when given the forward's stats (twice read otherwise).
// Bad data (a target outside [0, V) that is not ignore_index, a per-row
// temperature that is not positive and finite) sets the device error word and
// gives NaN for that row; never a device assert.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "rlk/token_logprobs.h"

namespace rlk::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kBlockThreads = 512;   // block-per-row kernels
constexpr int kWarpBlockThreads = 256;  // warp-per-row kernels: 8 rows a block
constexpr int64_t kWarpRowMaxVocab = 2048;
constexpr int64_t kMaxGrid = int64_t(1) << 20;  // grid-stride beyond this
// GroupReduce: whole warps (full-mask shuffles) and at most 32 per-warp
// slots, which warp 0 reduces.
static_assert(kBlockThreads % 32 == 0 && kBlockThreads / 32 <= 32, "block reduction needs full warps, at most 32");
static_assert(kWarpBlockThreads % 32 == 0, "warp-per-row blocks must hold whole warps");

Status CudaCheck(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status{Status::kCudaError, what};
}

// The running state of an online log-sum-exp over some of a row's logits:
// m = max of the raw logits seen (-FLT_MAX before any finite one, so that
// x - m is never -inf - -inf), u = s - 1 with s = sum e^{(x - m) / T},
// t = sum e^{(x - m) / T} (x - m) / T. The element that set m contributes its
// term, 1, implicitly: u sums the others, so a confident token (s rounds to 1
// in float32) keeps the digits of s - 1 that log-prob, entropy and 1 - p_t
// are made of. Before any element u = -1 (s = 0). Rescaling to a larger max
// m' (set by a new element, whose 1 becomes the implicit one) with
// delta = (m - m') / T: u' = e^delta (1 + u), t' = e^delta (t + delta s).
// Within a thread s and t are compensated (Kahan) sums, cs and ct their lost
// low parts: a thread adds a few hundred pack sums, and the plain fp32 sum
// would drift by ~1e-6 relative, the whole tolerance. Compensation is folded
// into s and t before a rescale and before the reduction across threads.
struct Lse {
  float m, u, t;
  float cs, ct;
};

__device__ __forceinline__ void KahanAdd(float& sum, float& comp, float x) {
  const float y = x - comp;
  const float t = sum + y;
  comp = (t - sum) - y;
  sum = t;
}

__device__ __forceinline__ void Fold(Lse& a) {
  a.u -= a.cs;
  a.t -= a.ct;
  a.cs = 0.0f;
  a.ct = 0.0f;
}

__device__ __forceinline__ float Exp(float x) { return exp2f(x * kLog2e); }

// True when new_max raised the max: the element holding it then contributes
// its 1 implicitly and must not be accumulated.
template <bool kEntropy>
__device__ __forceinline__ bool Rescale(Lse& a, float new_max, float inv_t) {
  if (new_max > a.m) {
    Fold(a);
    const float delta = (a.m - new_max) * inv_t;
    const float e = Exp(delta);
    if (kEntropy) a.t = TlpShiftEntropy(e, delta, 1.0f + a.u, a.t);
    a.u = TlpScaledSum(e, a.u);
    a.m = new_max;
    return true;
  }
  return false;
}

// A NaN logit never wins the max compare, but its exp is NaN, which s and t
// then carry to the row's result: NaN stays in its row.
template <bool kEntropy>
__device__ __forceinline__ void Accumulate(Lse& a, float x, float inv_t) {
  const float d = (x - a.m) * inv_t;
  const float e = Exp(d);
  KahanAdd(a.u, a.cs, e);
  if (kEntropy && e != 0.0f) KahanAdd(a.t, a.ct, e * d);
}

// One element: either it raises the max (its term is the implicit 1) or it is summed.
template <bool kEntropy>
__device__ __forceinline__ void AddElement(Lse& a, float x, float inv_t) {
  if (!Rescale<kEntropy>(a, x, inv_t)) Accumulate<kEntropy>(a, x, inv_t);
}

template <bool kEntropy>
__device__ __forceinline__ Lse Merge(Lse a, Lse b, float inv_t) {
  const float m = fmaxf(a.m, b.m);
  const float da = (a.m - m) * inv_t, db = (b.m - m) * inv_t;
  const float ea = Exp(da), eb = Exp(db);
  Lse r;
  r.m = m;
  // The side holding m keeps its implicit 1 (ea or eb is 1 there); the
  // other's whole sum 1 + u is scaled in.
  r.u = a.m >= b.m ? a.u + TlpScaledSum(eb, b.u) : b.u + TlpScaledSum(ea, a.u);
  r.t = 0.0f;
  r.cs = 0.0f;
  r.ct = 0.0f;
  if (kEntropy) r.t = TlpShiftEntropy(ea, da, 1.0f + a.u, a.t) + TlpShiftEntropy(eb, db, 1.0f + b.u, b.t);
  return r;
}

// `a` must be folded (cs = ct = 0).
template <bool kEntropy>
__device__ __forceinline__ Lse WarpReduce(Lse a, float inv_t) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Lse b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
    b.u = __shfl_xor_sync(0xffffffffu, a.u, o);
    b.t = __shfl_xor_sync(0xffffffffu, a.t, o);
    b.cs = 0.0f;
    b.ct = 0.0f;
    // Both lanes merge (lower, upper) in the same order, so every lane ends
    // with bitwise the same value.
    a = (threadIdx.x & o) ? Merge<kEntropy>(b, a, inv_t) : Merge<kEntropy>(a, b, inv_t);
  }
  return a;
}

// Reduces over the row's group (a warp, or the whole block) and gives every
// thread of the group the result. The block version needs all kBlockThreads
// threads and uses `smem` (one slot per warp plus the result).
template <int kGroup, bool kEntropy>
__device__ __forceinline__ Lse GroupReduce(Lse a, float inv_t, Lse* smem) {
  a = WarpReduce<kEntropy>(a, inv_t);
  if (kGroup == 32) return a;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kWarps = kGroup / 32;
  if (lane == 0) smem[warp] = a;
  __syncthreads();
  if (warp == 0) {
    Lse b = lane < kWarps ? smem[lane] : Lse{-FLT_MAX, -1.0f, 0.0f, 0.0f, 0.0f};
    b = WarpReduce<kEntropy>(b, inv_t);
    if (lane == 0) smem[kWarps] = b;
  }
  __syncthreads();
  Lse r = smem[kWarps];
  __syncthreads();  // smem is reused by the next row
  return r;
}

// 16 bytes of logits: 4 floats or 8 16-bit floats.
template <class T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <class T>
__device__ __forceinline__ Pack<T> LoadPack(const T* p) {
  uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  Pack<T> out;
  memcpy(&out, &raw, 16);
  return out;
}

template <class T>
__device__ __forceinline__ void StorePack(T* p, const Pack<T>& v) {
  uint4 raw;
  memcpy(&raw, &v, 16);
  *reinterpret_cast<uint4*>(p) = raw;
}

// How a row splits: `head` scalar elements up to the first 16-byte boundary,
// `vecs` aligned packs, then a scalar tail.
template <class T>
__device__ __forceinline__ void RowSplit(const T* row, int64_t vocab, int64_t* head, int64_t* vecs) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
  int64_t h = int64_t(((16u - (addr & 15u)) & 15u) / sizeof(T));
  if ((addr % sizeof(T)) != 0) h = vocab;  // never happens for tensors; stay safe
  if (h > vocab) h = vocab;
  *head = h;
  *vecs = (vocab - h) / Pack<T>::kN;
}

template <int kGroup, class T, bool kEntropy>
__device__ Lse RowLse(const T* row, int64_t vocab, float inv_t, int lane, Lse* smem) {
  Lse a{-FLT_MAX, -1.0f, 0.0f, 0.0f, 0.0f};
  int64_t head, vecs;
  RowSplit(row, vocab, &head, &vecs);
  constexpr int kN = Pack<T>::kN;
  for (int64_t j = lane; j < head; j += kGroup) {
    AddElement<kEntropy>(a, ToFloat(row[j]), inv_t);
  }
  const T* body = row + head;
  for (int64_t v = lane; v < vecs; v += kGroup) {
    const Pack<T> p = LoadPack(body + v * kN);
    float x[kN];
    float mx = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      x[k] = ToFloat(p.v[k]);
      mx = fmaxf(mx, x[k]);
    }
    bool skip = Rescale<kEntropy>(a, mx, inv_t);
    // The pack's exps summed as a tree, then one compensated add; when the
    // pack raised the max, its first element holding it is the implicit 1.
    float e[kN], et[kN];
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const float d = (x[k] - a.m) * inv_t;
      float ek = Exp(d);
      if (skip && x[k] == a.m) {
        ek = 0.0f;
        skip = false;
      }
      e[k] = ek;
      et[k] = ek != 0.0f ? ek * d : 0.0f;
    }
#pragma unroll
    for (int w = kN / 2; w > 0; w >>= 1) {
#pragma unroll
      for (int k = 0; k < w; ++k) {
        e[k] += e[k + w];
        if (kEntropy) et[k] += et[k + w];
      }
    }
    KahanAdd(a.u, a.cs, e[0]);
    if (kEntropy) KahanAdd(a.t, a.ct, et[0]);
  }
  for (int64_t j = head + vecs * kN + lane; j < vocab; j += kGroup) {
    AddElement<kEntropy>(a, ToFloat(row[j]), inv_t);
  }
  Fold(a);
  return GroupReduce<kGroup, kEntropy>(a, inv_t, smem);
}

__device__ __forceinline__ void ReportError(int32_t* word, int32_t code) {
  if (word) atomicCAS(word, 0, code);
}

// The row's 1/T, or 0 for a bad per-row temperature (reported once per row).
__device__ __forceinline__ float RowInvTemperature(const float* temperature, float fixed, int64_t r, int32_t* word,
                                                   bool report) {
  const float inv = TlpRowInvTemperature(temperature, fixed, r);
  if (inv == 0.0f && report) ReportError(word, kDeviceErrorBadTemperature);
  return inv;
}

__device__ __forceinline__ float QuietNaN() { return __int_as_float(0x7fc00000); }

// Rows handled by this group: warp `w` of the block for kGroup == 32, the
// whole block otherwise; strided over the grid.
template <int kGroup>
__device__ __forceinline__ void GroupIndex(int64_t* first, int64_t* stride, int* lane) {
  constexpr int kGroupsPerBlock = (kGroup == 32) ? kWarpBlockThreads / 32 : 1;
  *first = int64_t(blockIdx.x) * kGroupsPerBlock + (kGroup == 32 ? threadIdx.x / 32 : 0);
  *stride = int64_t(gridDim.x) * kGroupsPerBlock;
  *lane = kGroup == 32 ? int(threadIdx.x & 31) : int(threadIdx.x);
}

template <int kGroup, class T, class Idx, bool kEntropy>
__global__ void TokenLogprobsFwdKernel(TokenLogprobsFwdParams p) {
  __shared__ Lse smem[kBlockThreads / 32 + 1];
  const T* logits = static_cast<const T*>(p.logits);  // [rows, vocab]
  const bool partial = p.partials != nullptr;
  const int cols = p.entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  int64_t first, stride;
  int lane;
  GroupIndex<kGroup>(&first, &stride, &lane);
  for (int64_t r = first; r < p.rows; r += stride) {
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    const bool leader = lane == 0;
    if (tg == p.ignore_index) {
      if (leader) {
        // The binding rejects a bad per-row temperature on the CPU whether or
        // not the row is ignored; report it here too so both devices agree.
        RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, true);
        if (partial) {
          for (int k = 0; k < cols; ++k) p.partials[r * cols + k] = 0.0f;
        } else {
          TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
        }
      }
      continue;  // uniform over the group: every thread read the same target
    }
    const bool bad_target = tg < 0 || tg >= p.vocab_size;
    if (bad_target && leader) ReportError(p.error_word, kDeviceErrorTargetOutOfRange);
    const float inv_t = RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, leader);
    const T* row = logits + r * p.vocab;
    const Lse a = RowLse<kGroup, T, kEntropy>(row, p.vocab, inv_t, lane, smem);
    if (!leader) continue;
    const int64_t local = tg - p.vocab_start;
    const bool in_row = !bad_target && local >= 0 && local < p.vocab;
    const float xt = in_row ? ToFloat(row[local]) : 0.0f;
    const bool bad = bad_target || inv_t == 0.0f;
    if (partial) {
      float* out = p.partials + r * cols;
      out[0] = bad ? QuietNaN() : a.m;
      out[1] = bad ? QuietNaN() : a.u;
      out[2] = bad ? QuietNaN() : xt;
      if (p.entropy) out[3] = bad ? QuietNaN() : a.t;
      continue;
    }
    const float log_s = log1pf(a.u);
    const float lp = TlpLogprob(xt, a.m, inv_t, log_s);
    const float h = TlpEntropy(log_s, a.t, 1.0f + a.u);
    p.logprobs[r] = bad ? QuietNaN() : lp;
    if (p.entropy_out) p.entropy_out[r] = bad ? QuietNaN() : h;
    if (p.stats) {
      float* out = p.stats + r * kTlpStatsCols;
      out[0] = bad ? QuietNaN() : a.m;
      out[1] = bad ? QuietNaN() : a.u;
      out[2] = bad ? QuietNaN() : h;
    }
  }
}

// d logits_j = [g (1[j = t] - p_j) - gE p_j (log p_j + H)] / T with
// p_j = e^{(x_j - m)/T} / s and log p_j + H = (x_j - m)/T + c, c = H - log s
// (TlpGradTerm); the target's own element through TlpTargetGrad (1 - p_t from
// s - 1, and g / T for a -inf target logit, as PyTorch).
template <bool kEntropy>
__device__ __forceinline__ float GradAt(float x, bool is_target, float m, float inv_t, float inv_s, float g, float ge,
                                        float c, float u) {
  if (is_target) return TlpTargetGrad(x, m, inv_t, u, g, ge, c, kEntropy);
  const float d = (x - m) * inv_t;
  const float pj = Exp(d) * inv_s;
  const float gr = TlpGradTerm<kEntropy>(pj, d, g, ge, c);
  return gr * inv_t;
}

template <int kGroup, class T, class Idx, bool kEntropy>
__global__ void TokenLogprobsBwdKernel(TokenLogprobsBwdParams p) {
  __shared__ Lse smem[kBlockThreads / 32 + 1];
  const T* logits = static_cast<const T*>(p.logits);  // [rows, vocab]
  T* grad = static_cast<T*>(p.grad_logits);           // [rows, vocab], may alias logits
  int64_t first, stride;
  int lane;
  GroupIndex<kGroup>(&first, &stride, &lane);
  constexpr int kN = Pack<T>::kN;
  for (int64_t r = first; r < p.rows; r += stride) {
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    const T* row = logits + r * p.vocab;
    T* out = grad + r * p.vocab;
    const bool leader = lane == 0;
    if (tg == p.ignore_index) {
      RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, leader);  // reported as on the CPU
      for (int64_t j = lane; j < p.vocab; j += kGroup) out[j] = FromFloat<T>(0.0f);
      continue;
    }
    const bool bad_target = tg < 0 || tg >= p.vocab_size;
    if (bad_target && leader) ReportError(p.error_word, kDeviceErrorTargetOutOfRange);
    float inv_t = RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, leader);
    const bool bad = bad_target || inv_t == 0.0f;
    float m, u, h;
    if (p.stats) {
      m = p.stats[r * kTlpStatsCols];
      u = p.stats[r * kTlpStatsCols + 1];
      h = p.stats[r * kTlpStatsCols + 2];
    } else {
      const Lse a = p.grad_entropy ? RowLse<kGroup, T, true>(row, p.vocab, inv_t, lane, smem)
                                   : RowLse<kGroup, T, false>(row, p.vocab, inv_t, lane, smem);
      m = a.m;
      u = a.u;
      h = TlpEntropy(log1pf(a.u), a.t, 1.0f + a.u);
    }
    if (bad) {
      for (int64_t j = lane; j < p.vocab; j += kGroup) out[j] = FromFloat<T>(QuietNaN());
      continue;
    }
    const float g = p.grad_logprobs[r];
    const float ge = p.grad_entropy ? p.grad_entropy[r] : 0.0f;
    const float inv_s = 1.0f / (1.0f + u);
    const float c = h - log1pf(u);
    const int64_t local = tg - p.vocab_start;  // may be outside [0, vocab): no target here
    int64_t head, vecs;
    RowSplit(row, p.vocab, &head, &vecs);
    // Packs need the output row aligned like the input row (true for tensors
    // from the allocator); otherwise every element goes the scalar way.
    if (((reinterpret_cast<uintptr_t>(row) ^ reinterpret_cast<uintptr_t>(out)) & 15u) != 0) {
      head = p.vocab;
      vecs = 0;
    }
    for (int64_t j = lane; j < head; j += kGroup)
      out[j] = FromFloat<T>(GradAt<kEntropy>(ToFloat(row[j]), j == local, m, inv_t, inv_s, g, ge, c, u));
    for (int64_t v = lane; v < vecs; v += kGroup) {
      const int64_t base = head + v * kN;
      // Read before write: in place, each thread overwrites only what it read.
      const Pack<T> x = LoadPack(row + base);
      Pack<T> o;
#pragma unroll
      for (int k = 0; k < kN; ++k)
        o.v[k] = FromFloat<T>(
            GradAt<kEntropy>(ToFloat(x.v[k]), base + k == local, m, inv_t, inv_s, g, ge, c, u));
      StorePack(out + base, o);
    }
    for (int64_t j = head + vecs * kN + lane; j < p.vocab; j += kGroup)
      out[j] = FromFloat<T>(GradAt<kEntropy>(ToFloat(row[j]), j == local, m, inv_t, inv_s, g, ge, c, u));
  }
}

template <class Idx>
__global__ void TokenLogprobsCombineKernel(TokenLogprobsCombineParams p) {
  const int cols = p.cols;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < p.rows; r += int64_t(gridDim.x) * blockDim.x) {
    if (TlpTargetAt<Idx>(p.targets, r) == p.ignore_index) {
      RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, true);  // reported as on the CPU
      TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
      continue;
    }
    const float inv_t = RowInvTemperature(p.temperature, p.inv_temperature, r, p.error_word, true);
    float big = -FLT_MAX;
    float xt = 0.0f;
    int kstar = -1;  // the first shard holding the row maximum: its own 1 stays implicit
    for (int k = 0; k < p.shards; ++k) {
      const float* q = p.partials[k] + r * cols;
      if (q[0] > big || (kstar < 0 && q[0] == big)) {
        big = q[0];
        kstar = k;
      }
      xt += q[2];
    }
    // Column 1 of a shard is its s - 1 (as the CPU combine).
    float u = kstar >= 0 ? p.partials[kstar][r * cols + 1] : -1.0f, t = 0.0f;
    for (int k = 0; k < p.shards; ++k) {
      const float* q = p.partials[k] + r * cols;
      const float delta = (q[0] - big) * inv_t;
      const float a = Exp(delta);
      if (k != kstar) u += TlpScaledSum(a, q[1]);
      if (cols == kTlpPartialColsEntropy) t += TlpShiftEntropy(a, delta, 1.0f + q[1], q[3]);
    }
    const float log_s = log1pf(u);
    const float lp = TlpLogprob(xt, big, inv_t, log_s);
    const float h = cols == kTlpPartialColsEntropy ? TlpEntropy(log_s, t, 1.0f + u) : QuietNaN();
    const bool bad = inv_t == 0.0f;
    p.logprobs[r] = bad ? QuietNaN() : lp;
    if (p.entropy_out) p.entropy_out[r] = bad ? QuietNaN() : h;
    if (p.stats) {
      float* out = p.stats + r * kTlpStatsCols;
      out[0] = bad ? QuietNaN() : big;
      out[1] = bad ? QuietNaN() : u;
      out[2] = bad ? QuietNaN() : h;
    }
  }
}

// A kernel goes to the calling thread's current device, but p.stream and the
// tensors belong to p.device: with another device current the launch fails
// (invalid resource handle). DeviceStream and DeviceAlloc set the device
// only when they create a stream or cudaMalloc a block, so after any op on
// another GPU the current device is stale; the launcher sets it itself.
Status SetDevice(int device, const char* what) {
  if (cudaSetDevice(device) == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  return Status{Status::kCudaError, what};
}

unsigned GridFor(int64_t groups) {
  return unsigned(groups < 1 ? 1 : groups > kMaxGrid ? kMaxGrid : groups);
}

template <class Fn>
Status DispatchIndex(DType d, const char* op, Fn&& fn) {
  if (d == DType::kInt32) return fn(int32_t{});
  if (d == DType::kInt64) return fn(int64_t{});
  return Status{Status::kInvalidArgument, op};
}

// Launches kernel<kGroup> with the right grid: a warp per row for short rows,
// a block per row otherwise.
template <class Launch>
Status LaunchRows(int64_t rows, int64_t vocab, cudaStream_t stream, const char* what, Launch&& launch) {
  if (vocab <= kWarpRowMaxVocab) {
    constexpr int64_t kRowsPerBlock = kWarpBlockThreads / 32;
    launch(std::integral_constant<int, 32>{}, GridFor((rows + kRowsPerBlock - 1) / kRowsPerBlock), kWarpBlockThreads, stream);
  } else {
    launch(std::integral_constant<int, kBlockThreads>{}, GridFor(rows), kBlockThreads, stream);
  }
  return CudaCheck(cudaGetLastError(), what);
}

}  // namespace

Status TokenLogprobsFwd(const TokenLogprobsFwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (Status st = SetDevice(p.device, "tokenLogprobs: cudaSetDevice failed"); !st.ok()) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const bool entropy = p.entropy || (p.partials == nullptr && p.stats != nullptr);
  const char* what = p.partials ? "tokenLogprobsPartials: kernel launch failed" : "tokenLogprobs: kernel launch failed";
  return RLK_DISPATCH_FLOATING(p.logits_dtype, "tokenLogprobs", [&] {
    return DispatchIndex(p.targets_dtype, "tokenLogprobs: targets must be int32 or int64", [&](auto idx) {
      using Idx = decltype(idx);
      return LaunchRows(p.rows, p.vocab, stream, what, [&](auto group, unsigned grid, int threads, cudaStream_t st) {
        constexpr int kGroup = decltype(group)::value;
        if (entropy) TokenLogprobsFwdKernel<kGroup, T, Idx, true><<<grid, threads, 0, st>>>(p);
        else TokenLogprobsFwdKernel<kGroup, T, Idx, false><<<grid, threads, 0, st>>>(p);
      });
    });
  });
}

Status TokenLogprobsBwd(const TokenLogprobsBwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (Status st = SetDevice(p.device, "tokenLogprobsBackward: cudaSetDevice failed"); !st.ok()) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  return RLK_DISPATCH_FLOATING(p.logits_dtype, "tokenLogprobsBackward", [&] {
    return DispatchIndex(p.targets_dtype, "tokenLogprobsBackward: targets must be int32 or int64", [&](auto idx) {
      using Idx = decltype(idx);
      return LaunchRows(p.rows, p.vocab, stream, "tokenLogprobsBackward: kernel launch failed",
                        [&](auto group, unsigned grid, int threads, cudaStream_t st) {
                          constexpr int kGroup = decltype(group)::value;
                          if (p.grad_entropy) TokenLogprobsBwdKernel<kGroup, T, Idx, true><<<grid, threads, 0, st>>>(p);
                          else TokenLogprobsBwdKernel<kGroup, T, Idx, false><<<grid, threads, 0, st>>>(p);
                        });
    });
  });
}

Status TokenLogprobsCombine(const TokenLogprobsCombineParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (Status st = SetDevice(p.device, "combineTokenLogprobs: cudaSetDevice failed"); !st.ok()) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  return DispatchIndex(p.targets_dtype, "combineTokenLogprobs: targets must be int32 or int64", [&](auto idx) {
    using Idx = decltype(idx);
    TokenLogprobsCombineKernel<Idx><<<GridFor((p.rows + 255) / 256), 256, 0, stream>>>(p);
    return CudaCheck(cudaGetLastError(), "combineTokenLogprobs: kernel launch failed");
  });
}

}  // namespace rlk::cuda
