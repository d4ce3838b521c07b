// CUDA kernels of the vocabulary divergences (DESIGN 3.5): the same math as
// native/cpu/vocab_divergence.cc (see its head comment for the
// cancellation-free forms), one block per row, grid-stride over rows (no 65535
// limit), int64 offsets.
//
// Per row:
//   pass 1 (one read of both logits): per-thread online max and sum of exp
//     (rescaled when the max grows; compensated fp32 sums), the argmax index,
//     then a fixed-order block reduction (warp shuffles, per-warp slots in
//     shared memory, warp 0) with the sums in double (O(blockDim) work);
//   pass 2 (second read, mostly from L2): the value's sums;
//   pass 3 (third read): the gradients, which need the normalisers and the
//     value (the softmax Jacobian's row sum). Forward KL without a teacher
//     gradient writes its student gradient in pass 2 and skips pass 3.
// Loads and gradient stores are 16 bytes wide (8 elements per step) when both
// rows share their alignment, with scalar head and tail; no float atomics; every launch is
// checked. Deterministic: each thread walks a fixed set of elements in a
// fixed order and the reductions have a fixed shape.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "rlk/common.h"
#include "rlk/vocab_divergence.h"

namespace rlk::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// BlockSum/BlockCombine: full warps (the shuffles use a full mask) and at most
// 32 per-warp slots, reduced by warp 0.
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block reductions need full warps, at most 32");
constexpr float kSmall = kVdivSmall;
constexpr float kJsdClamp = kVdivJsdClamp;

// ---- loads ----------------------------------------------------------------
__device__ __forceinline__ void Load8(const float* p, float v[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void Load8(const bf16_t* p, float v[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[2 * k] = Bf16ToFloat(uint16_t(w[k] & 0xFFFFu));
    v[2 * k + 1] = Bf16ToFloat(uint16_t(w[k] >> 16));
  }
}
__device__ __forceinline__ void Load8(const f16_t* p, float v[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[2 * k] = HalfToFloat(uint16_t(w[k] & 0xFFFFu));
    v[2 * k + 1] = HalfToFloat(uint16_t(w[k] >> 16));
  }
}

// Calls f(j, t_j, s_j) for this thread's elements of a row, always in the same
// order. 16-byte loads when both rows reach 16-byte alignment after the same
// number of head elements (always the case when V * element size is a
// multiple of 16 and the tensors start aligned).
template <class TS, class TT, class F>
__device__ __forceinline__ void ForRow(const TS* s, const TT* t, int64_t nv, F&& f) {
  const int64_t tid = threadIdx.x;
  const int64_t hs = int64_t((16 - (reinterpret_cast<uintptr_t>(s) & 15)) & 15) / int64_t(sizeof(TS));
  const int64_t ht = int64_t((16 - (reinterpret_cast<uintptr_t>(t) & 15)) & 15) / int64_t(sizeof(TT));
  const bool vec = hs == ht && (reinterpret_cast<uintptr_t>(s) % sizeof(TS)) == 0 &&
                   (reinterpret_cast<uintptr_t>(t) % sizeof(TT)) == 0 && hs < nv;
  const int64_t head = vec ? hs : nv;
  for (int64_t j = tid; j < head; j += blockDim.x) f(j, ToFloat(t[j]), ToFloat(s[j]));
  if (!vec) return;
  const int64_t nvec = (nv - head) / 8;
  for (int64_t c = tid; c < nvec; c += blockDim.x) {
    const int64_t j0 = head + c * 8;
    float tv[8], sv[8];
    Load8(t + j0, tv);
    Load8(s + j0, sv);
#pragma unroll
    for (int k = 0; k < 8; ++k) f(j0 + k, tv[k], sv[k]);
  }
  for (int64_t j = head + nvec * 8 + tid; j < nv; j += blockDim.x) f(j, ToFloat(t[j]), ToFloat(s[j]));
}

__device__ __forceinline__ void Store8(float* p, const float v[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void Store8(bf16_t* p, const float v[8]) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = uint32_t(FloatToBf16(v[2 * k])) | (uint32_t(FloatToBf16(v[2 * k + 1])) << 16);
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void Store8(f16_t* p, const float v[8]) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = uint32_t(FloatToHalf(v[2 * k])) | (uint32_t(FloatToHalf(v[2 * k + 1])) << 16);
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// As ForRow, for the passes that write gradients: f(j, t_j, s_j, g_s, g_t)
// sets both outputs; the 8-element steps store them 16 bytes at a time when
// the outputs share the inputs' alignment (fresh allocations do), else one
// element at a time. gt may be null.
template <class TS, class TT, class F>
__device__ __forceinline__ void ForRowOut(const TS* s, const TT* t, int64_t nv, TS* gs, TT* gt, F&& f) {
  const int64_t tid = threadIdx.x;
  const int64_t hs = int64_t((16 - (reinterpret_cast<uintptr_t>(s) & 15)) & 15) / int64_t(sizeof(TS));
  const int64_t ht = int64_t((16 - (reinterpret_cast<uintptr_t>(t) & 15)) & 15) / int64_t(sizeof(TT));
  const bool vec = hs == ht && (reinterpret_cast<uintptr_t>(s) % sizeof(TS)) == 0 &&
                   (reinterpret_cast<uintptr_t>(t) % sizeof(TT)) == 0 && hs < nv;
  const bool vec_out = ((reinterpret_cast<uintptr_t>(gs) ^ reinterpret_cast<uintptr_t>(s)) & 15) == 0 &&
                       (!gt || ((reinterpret_cast<uintptr_t>(gt) ^ reinterpret_cast<uintptr_t>(t)) & 15) == 0);
  const int64_t head = vec ? hs : nv;
  for (int64_t j = tid; j < head; j += blockDim.x) {
    float a, b;
    f(j, ToFloat(t[j]), ToFloat(s[j]), a, b);
    gs[j] = FromFloat<TS>(a);
    if (gt) gt[j] = FromFloat<TT>(b);
  }
  if (!vec) return;
  const int64_t nvec = (nv - head) / 8;
  for (int64_t c = tid; c < nvec; c += blockDim.x) {
    const int64_t j0 = head + c * 8;
    float tv[8], sv[8], a[8], b[8];
    Load8(t + j0, tv);
    Load8(s + j0, sv);
#pragma unroll
    for (int k = 0; k < 8; ++k) f(j0 + k, tv[k], sv[k], a[k], b[k]);
    if (vec_out) {
      Store8(gs + j0, a);
      if (gt) Store8(gt + j0, b);
    } else {
      for (int k = 0; k < 8; ++k) {
        gs[j0 + k] = FromFloat<TS>(a[k]);
        if (gt) gt[j0 + k] = FromFloat<TT>(b[k]);
      }
    }
  }
  for (int64_t j = head + nvec * 8 + tid; j < nv; j += blockDim.x) {
    float a, b;
    f(j, ToFloat(t[j]), ToFloat(s[j]), a, b);
    gs[j] = FromFloat<TS>(a);
    if (gt) gt[j] = FromFloat<TT>(b);
  }
}

// Neumaier-compensated fp32 sum.
struct CSum {
  float s = 0.0f, c = 0.0f;
  __device__ __forceinline__ void Add(float v) {
    const float n = s + v;
    c += fabsf(s) >= fabsf(v) ? (s - n) + v : (v - n) + s;
    s = n;
  }
  __device__ __forceinline__ double Value() const { return double(s) + double(c); }
};

// ---- block reductions (fixed order) -------------------------------------------
// Sums N doubles over the block; every thread gets the totals. Uses
// shared[kWarps][N]; ends with a barrier so the slots can be reused.
template <int N>
__device__ __forceinline__ void BlockSum(double v[N], double (*shared)[4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < N; ++k)
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_down_sync(0xFFFFFFFFu, v[k], o);
  if (lane == 0)
    for (int k = 0; k < N; ++k) shared[warp][k] = v[k];
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < N; ++k) {
      double x = lane < kWarps ? shared[lane][k] : 0.0;
      for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xFFFFFFFFu, x, o);
      if (lane == 0) shared[0][k] = x;
    }
  }
  __syncthreads();
  for (int k = 0; k < N; ++k) v[k] = shared[0][k];
  __syncthreads();
}

// Online (max, sum of e^{(x - max) / T}, first argmax) of one side.
struct MaxSum {
  float m;
  double s;
  long long idx;
};

__device__ __forceinline__ MaxSum Combine(MaxSum a, MaxSum b, float inv_t) {
  if (b.m == -INFINITY) { a.s += b.s; return a; }  // b.s is 0 or NaN
  if (a.m == -INFINITY) { b.s += a.s; return b; }
  if (b.m > a.m || (b.m == a.m && b.idx < a.idx)) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  // a has the larger max (or NaN got here: the sums carry it).
  a.s += b.s * exp((double(b.m) - double(a.m)) * inv_t);
  return a;
}

__device__ __forceinline__ MaxSum WarpCombine(MaxSum v, float inv_t) {
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum w;
    w.m = __shfl_down_sync(0xFFFFFFFFu, v.m, o);
    w.s = __shfl_down_sync(0xFFFFFFFFu, v.s, o);
    w.idx = __shfl_down_sync(0xFFFFFFFFu, v.idx, o);
    v = Combine(v, w, inv_t);
  }
  return v;
}

__device__ __forceinline__ void BlockCombine(MaxSum v[2], MaxSum (*shared)[2], float inv_t) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = 0; k < 2; ++k) v[k] = WarpCombine(v[k], inv_t);
  if (lane == 0) {
    shared[warp][0] = v[0];
    shared[warp][1] = v[1];
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < 2; ++k) {
      MaxSum x = lane < kWarps ? shared[lane][k] : MaxSum{-INFINITY, 0.0, 0};
      x = WarpCombine(x, inv_t);
      if (lane == 0) shared[0][k] = x;
    }
  }
  __syncthreads();
  v[0] = shared[0][0];
  v[1] = shared[0][1];
  __syncthreads();
}

// ---- element math (as the CPU code) ---------------------------------------------
__device__ __forceinline__ float ExpPoly(float r) {  // (e^r - 1 - r) / r^2, Cephes' expf polynomial
  float p = fmaf(1.9875691500e-4f, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  return fmaf(p, r, 5.0000001201e-1f);
}

// p phi(y), phi(y) = e^-y - 1 + y, with q = p e^-y; p = 0 gives q.
__device__ __forceinline__ float PhiW(float p, float y, float q) {
  if (p == 0.0f) return q;
  if (fabsf(y) < kSmall) {
    const float r = -y;
    return p * (r * r * ExpPoly(r));
  }
  return fmaf(p, y, q - p);
}

struct RowConsts {
  float tmax, smax, inv_t, rst, rss, xoff, beta, omb;
  float xoff_lo, inv_t_lo;  // residuals of xoff and 1 / T (VdivLogRatio)
  float tref, sref;            // kl: logits at the weighting side's argmax
  float lbt, lbs, rhot, rhos;  // jsd
};

struct Probs {
  float pt, ps, x;
};

__device__ __forceinline__ Probs Prep(float t, float s, const RowConsts& k) {
  Probs e;
  const float dt = t - k.tmax, ds = s - k.smax;
  e.pt = expf(dt * k.inv_t) * k.rst;
  e.ps = expf(ds * k.inv_t) * k.rss;
  e.x = VdivLogRatio(dt - ds, k.inv_t, k.inv_t_lo, k.xoff, k.xoff_lo);
  return e;
}

__device__ __forceinline__ float DiffSt(const Probs& e) {  // p_s - p_t
  return fabsf(e.x) < kSmall ? e.pt * expm1f(-e.x) : e.ps - e.pt;
}

__device__ __forceinline__ float RefDiff(float t, float s, const RowConsts& k) { return (t - k.tref) - (s - k.sref); }

struct JsdRatios {
  float yt, ys, at, as;
};

__device__ __forceinline__ JsdRatios Jsd(const Probs& e, const RowConsts& k) {
  const float xc = fminf(fmaxf(e.x, -kJsdClamp), kJsdClamp);
  const bool far_t = xc > 1.0f, far_s = xc < -1.0f;
  const float lt = -log1pf(far_t ? k.rhot * expf(-xc) : k.omb * expm1f(-xc));
  const float ls = -log1pf(far_s ? k.rhos * expf(xc) : k.beta * expm1f(xc));
  JsdRatios r;
  r.yt = far_t ? lt + k.lbt : lt;
  r.ys = far_s ? ls + k.lbs : ls;
  if (e.x < -kJsdClamp) r.yt = r.ys + e.x;
  if (e.x > kJsdClamp) r.ys = r.yt - e.x;
  r.at = far_t ? lt : r.yt - k.lbt;
  r.as = far_s ? ls : r.ys - k.lbs;
  if (e.x < -kJsdClamp) r.at = r.yt - k.lbt;
  if (e.x > kJsdClamp) r.as = r.ys - k.lbs;
  return r;
}

__device__ __forceinline__ float TighterDiff(float a, float b, float c, float d) {
  return fmaxf(fabsf(c), fabsf(d)) < fmaxf(fabsf(a), fabsf(b)) ? c - d : a - b;
}

template <class TS, class TT, DivergenceKind kKind>
__global__ void __launch_bounds__(kThreads) VocabDivergenceKernel(const VocabDivergenceParams p) {
  __shared__ double red[kWarps][4];
  __shared__ MaxSum red_ms[kWarps][2];
  const int64_t nv = p.vocab;
  const float inv_t = p.inv_temperature;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const TS* s = static_cast<const TS*>(p.student) + row * nv;
    const TT* t = static_cast<const TT*>(p.teacher) + row * nv;
    TS* gs = p.grad_student ? static_cast<TS*>(p.grad_student) + row * nv : nullptr;  // null: values only
    TT* gt = p.grad_teacher ? static_cast<TT*>(p.grad_teacher) + row * nv : nullptr;
    if (VdivRowIgnored(p, row)) {
      for (int64_t j = threadIdx.x; gs && j < nv; j += blockDim.x) {
        gs[j] = FromFloat<TS>(0.0f);
        if (gt) gt[j] = FromFloat<TT>(0.0f);
      }
      if (threadIdx.x == 0) p.values[row] = 0.0f;
      continue;
    }
    // Pass 1: online max, sum of exp and argmax per thread.
    float m[2] = {-INFINITY, -INFINITY};
    CSum sum[2];
    long long idx[2] = {0, 0};
    ForRow(s, t, nv, [&](int64_t j, float tv, float sv) {
      const float v[2] = {tv, sv};
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (v[k] == -INFINITY) continue;  // contributes 0 (and keeps -inf - -inf out)
        if (v[k] > m[k]) {
          const float sc = m[k] == -INFINITY ? 0.0f : expf((m[k] - v[k]) * inv_t);
          sum[k].s *= sc;
          sum[k].c *= sc;
          sum[k].Add(1.0f);
          m[k] = v[k];
          idx[k] = j;
        } else {
          sum[k].Add(expf((v[k] - m[k]) * inv_t));  // NaN stays NaN
        }
      }
    });
    MaxSum ms[2] = {{m[0], sum[0].Value(), idx[0]}, {m[1], sum[1].Value(), idx[1]}};
    BlockCombine(ms, red_ms, inv_t);
    const double tsum = ms[0].m == -INFINITY ? NAN : ms[0].s;  // a row with no finite logit has no distribution
    const double ssum = ms[1].m == -INFINITY ? NAN : ms[1].s;
    const VdivRowScalars rk = VdivRowConstants(p, kKind, tsum, ssum);
    RowConsts k;
    k.tmax = ms[0].m;
    k.smax = ms[1].m;
    k.inv_t = inv_t;
    k.rst = rk.rst;
    k.rss = rk.rss;
    k.xoff = rk.xoff;
    k.xoff_lo = rk.xoff_lo;
    k.inv_t_lo = p.inv_temperature_lo;
    k.beta = p.beta;
    k.omb = 1.0f - p.beta;
    k.tref = k.sref = 0.0f;
    k.lbt = rk.lbt;
    k.lbs = rk.lbs;
    k.rhot = rk.rhot;
    k.rhos = rk.rhos;
    if (kKind == DivergenceKind::kForwardKl || kKind == DivergenceKind::kReverseKl) {
      const int64_t r = kKind == DivergenceKind::kForwardKl ? ms[0].idx : ms[1].idx;
      k.tref = ToFloat(t[r]);
      k.sref = ToFloat(s[r]);
    }
    // Pass 2: the value's sums (as the CPU's ValuePass).
    const bool fused = kKind == DivergenceKind::kForwardKl && gt == nullptr && gs != nullptr;
    CSum acc[4];
    if (fused) {
      ForRowOut(s, t, nv, gs, static_cast<TT*>(nullptr), [&](int64_t, float tv, float sv, float& g_s, float& g_t) {
        const Probs q = Prep(tv, sv, k);
        acc[0].Add(PhiW(q.pt, q.x, q.ps));
        g_s = DiffSt(q) * inv_t;
        g_t = 0.0f;
      });
    } else {
      ForRow(s, t, nv, [&](int64_t, float tv, float sv) {
        const Probs q = Prep(tv, sv, k);
        if (kKind == DivergenceKind::kForwardKl) {
          acc[0].Add(PhiW(q.pt, q.x, q.ps));
          acc[1].Add(q.pt == 0.0f ? 0.0f : q.pt * RefDiff(tv, sv, k));
        } else if (kKind == DivergenceKind::kReverseKl) {
          acc[0].Add(PhiW(q.ps, -q.x, q.pt));
          acc[1].Add(q.ps == 0.0f ? 0.0f : q.ps * RefDiff(tv, sv, k));
        } else {
          const JsdRatios y = Jsd(q, k);
          const float mm = fmaf(k.beta, q.pt, k.omb * q.ps);
          acc[0].Add(PhiW(q.pt, y.yt, mm));
          acc[1].Add(PhiW(q.ps, y.ys, mm));
          acc[2].Add(q.pt == 0.0f ? 0.0f : q.pt * y.at);
          acc[3].Add(q.ps == 0.0f ? 0.0f : q.ps * y.as);
        }
      });
    }
    double sums[4] = {acc[0].Value(), acc[1].Value(), acc[2].Value(), acc[3].Value()};
    BlockSum<4>(sums, red);
    if (threadIdx.x == 0) p.values[row] = VdivRowValue(kKind, p.beta, sums);
    if (fused || gs == nullptr) continue;
    // Pass 3: the gradients (derivation above GradPass in the CPU file).
    const float c0 = float(sums[0]), c1 = float(sums[1]), c2 = float(sums[2]), c3 = float(sums[3]);
    ForRowOut(s, t, nv, gs, gt, [&](int64_t, float tv, float sv, float& g_s, float& g_t) {
      const Probs q = Prep(tv, sv, k);
      if (kKind == DivergenceKind::kForwardKl) {
        g_s = DiffSt(q);
        g_t = q.pt == 0.0f ? 0.0f : q.pt * (RefDiff(tv, sv, k) - c1) * inv_t;
      } else if (kKind == DivergenceKind::kReverseKl) {
        g_s = q.ps == 0.0f ? 0.0f : q.ps * (c1 - RefDiff(tv, sv, k)) * inv_t;
        g_t = -DiffSt(q);
      } else {
        const JsdRatios y = Jsd(q, k);
        g_s = q.ps == 0.0f ? 0.0f : k.omb * q.ps * TighterDiff(y.ys, c1, y.as, c3);
        g_t = q.pt == 0.0f ? 0.0f : k.beta * q.pt * TighterDiff(y.yt, c0, y.at, c2);
      }
      g_s *= inv_t;
      g_t *= inv_t;
    });
  }
}

Status CheckLaunch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return Status{Status::kCudaError, what};
}

template <class TS, class TT>
Status LaunchTyped(const VocabDivergenceParams& p, DivergenceKind kind, int grid, cudaStream_t stream) {
  switch (kind) {
    case DivergenceKind::kForwardKl:
      VocabDivergenceKernel<TS, TT, DivergenceKind::kForwardKl><<<grid, kThreads, 0, stream>>>(p);
      break;
    case DivergenceKind::kReverseKl:
      VocabDivergenceKernel<TS, TT, DivergenceKind::kReverseKl><<<grid, kThreads, 0, stream>>>(p);
      break;
    case DivergenceKind::kJsd:
      VocabDivergenceKernel<TS, TT, DivergenceKind::kJsd><<<grid, kThreads, 0, stream>>>(p);
      break;
  }
  return CheckLaunch("vocabDivergence: kernel launch failed (VocabDivergenceKernel)");
}

}  // namespace

Status VocabDivergence(const VocabDivergenceParams& p) {
  if (Status st = VocabDivergenceCheck(p); !st.ok()) return st;
  if (p.rows == 0) return Status::Ok();
  if (cudaSetDevice(p.device) != cudaSuccess) {
    cudaGetLastError();
    return Status{Status::kCudaError, "vocabDivergence: cudaSetDevice failed"};
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();
    sms = 132;
  }
  // Enough blocks to fill the GPU several times over; the kernel strides over
  // the remaining rows.
  const int64_t max_grid = int64_t(sms) * 8;
  const int grid = int(p.rows < max_grid ? p.rows : max_grid);
  const DivergenceKind kind = EffectiveKind(p);
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  return RLK_DISPATCH_FLOATING(p.student_dtype, "vocabDivergence", [&] {
    using TS = T;
    return RLK_DISPATCH_FLOATING(p.teacher_dtype, "vocabDivergence", [&] {
      using TT = T;
      return LaunchTyped<TS, TT>(p, kind, grid, stream);
    });
  });
}

}  // namespace rlk::cuda
