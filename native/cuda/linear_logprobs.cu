// CUDA side of the fused linear log-probs (DESIGN 3.2). Rows go in chunks
// sized from free device memory (or `chunk`); per chunk:
//   forward:  L = h_c @ W^T (+ bias on read) into an fp32 [chunk, V] buffer
//             (cuBLAS, fp32 accumulation; tensor cores for bf16/fp16), then
//             one block per row reads L once: online log-sum-exp, target,
//             entropy, stats or shard partials;
//   backward: the same L, then one block per row reads it once more (twice
//             without the forward's stats) and writes dlogits D [chunk, V]
//             in the inputs' dtype; gradHidden_c = D @ W and
//             gradWeight (+)= D^T @ h_c (fp32, chunks in order) by cuBLAS,
//             gradBias (+)= column sums of D in row order.
// So a chunk's logits are written once and read at most once more (with
// saveForBackward), and no N x V temporary exists.
//
// The matrix products: cuBLAS, loaded with dlopen (libcublas.so.13, then
// .12) on first use, never linked, so the prebuilt binary loads everywhere;
// its headers come from the nvidia-cublas wheel (scripts/fetch-cublas-headers.sh)
// and without them this path is compiled out (the launchers say so). In the
// emulated-device build (RLK_CUDA_SIM) cuBLAS cannot run: a small portable
// GEMM kernel stands in, so the fused row kernels are tested there.
// Deterministic: cuBLAS gives bitwise-equal results run to run on one GPU
// model; the row and column kernels reduce in a fixed order, no atomics.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>

#include "rlk/linear_logprobs.h"
#include "rlk/runtime.h"

#if defined(RLK_CUDA_SIM)
#define RLK_LIN_GEMM_PORTABLE 1
#elif defined(RLK_HAVE_CUBLAS_H)
#include <cublas_api.h>
#include <dlfcn.h>
#define RLK_LIN_GEMM_CUBLAS 1
#endif

namespace rlk::cuda {

#if defined(RLK_LIN_GEMM_PORTABLE) || defined(RLK_LIN_GEMM_CUBLAS)
namespace {

constexpr int kThreads = 256;  // row kernels: one block per row
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGrid = int64_t(1) << 16;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block reduction needs whole warps, at most 32");

Status CudaCheck(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status{Status::kCudaError, what};
}

__device__ __forceinline__ void ReportError(int32_t* word, int32_t code) {
  if (word) atomicCAS(word, 0, code);
}

template <class T>
__device__ __forceinline__ float LoadF(const T* p, int64_t i) { return ToFloat(p[i]); }

// ---- the matrix products ------------------------------------------------------
// Column-major C[m x n] = op(A) op(B) + beta C (cuBLAS's convention), fp32
// accumulation; A and B of one dtype, C of `ct`.
struct GemmArgs {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  DType ab = DType::kFloat32;
  float beta = 0.0f;
  void* c = nullptr;
  DType ct = DType::kFloat32;
  int64_t ldc = 0;
};

#if defined(RLK_LIN_GEMM_PORTABLE)
// One thread per output element, k in order: slow, exact to fp32, and only
// ever run on the emulated device.
template <class TAB, class TC>
__global__ void PortableGemmKernel(GemmArgs g) {
  const TAB* A = static_cast<const TAB*>(g.a);
  const TAB* B = static_cast<const TAB*>(g.b);
  TC* C = static_cast<TC*>(g.c);
  const int64_t total = g.m * g.n;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % g.m, j = e / g.m;
    float acc = 0.0f;
    for (int64_t k = 0; k < g.k; ++k) {
      const float av = ToFloat(g.ta ? A[k + i * g.lda] : A[i + k * g.lda]);
      const float bv = ToFloat(g.tb ? B[j + k * g.ldb] : B[k + j * g.ldb]);
      acc = fmaf(av, bv, acc);
    }
    if (g.beta != 0.0f) acc += g.beta * ToFloat(C[i + j * g.ldc]);
    C[i + j * g.ldc] = FromFloat<TC>(acc);
  }
}

const char* GemmProviderError() { return ""; }

Status Gemm(const GemmArgs& g, cudaStream_t stream, int /*device*/) {
  if (g.m == 0 || g.n == 0) return Status::Ok();
  const int64_t total = g.m * g.n;
  const int grid = int((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
  auto launch = [&](auto ab, auto c) {
    PortableGemmKernel<decltype(ab), decltype(c)><<<grid, 256, 0, stream>>>(g);
  };
  auto with_c = [&](auto ab) {
    switch (g.ct) {
      case DType::kFloat32: launch(ab, float{}); break;
      case DType::kBFloat16: launch(ab, bf16_t{}); break;
      default: launch(ab, f16_t{}); break;
    }
  };
  switch (g.ab) {
    case DType::kFloat32: with_c(float{}); break;
    case DType::kBFloat16: with_c(bf16_t{}); break;
    default: with_c(f16_t{}); break;
  }
  return CudaCheck(cudaGetLastError(), "linearLogprobs: the portable GEMM kernel failed to launch");
}
#else
// cuBLAS through dlopen: the entry points this file uses, resolved once.
struct CublasLib {
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  std::string error;
  cublasHandle_t handles[64] = {};
};

std::mutex g_cublas_mu;

CublasLib& Cublas() {
  static CublasLib lib = [] {
    CublasLib l;
    void* h = nullptr;
    std::string tried;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12"}) {
      h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (h) break;
      const char* e = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
    }
    if (!h) {
      l.error = "cuBLAS is not installed: neither libcublas.so.13 nor libcublas.so.12 could be loaded (" + tried +
                "); install cuBLAS (the CUDA toolkit, or pip install nvidia-cublas and add its lib folder to "
                "LD_LIBRARY_PATH) to run linearLogprobs on CUDA";
      return l;
    }
    l.create = reinterpret_cast<decltype(l.create)>(dlsym(h, "cublasCreate_v2"));
    l.set_stream = reinterpret_cast<decltype(l.set_stream)>(dlsym(h, "cublasSetStream_v2"));
    l.gemm_ex = reinterpret_cast<decltype(l.gemm_ex)>(dlsym(h, "cublasGemmEx"));
    if (!l.create || !l.set_stream || !l.gemm_ex)
      l.error = "the cuBLAS library found lacks cublasCreate_v2, cublasSetStream_v2 or cublasGemmEx";
    return l;
  }();
  return lib;
}

const char* GemmProviderError() { return Cublas().error.c_str(); }

cudaDataType CudaType(DType t) {
  return t == DType::kFloat32 ? CUDA_R_32F : t == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
}

Status Gemm(const GemmArgs& g, cudaStream_t stream, int device) {
  if (g.m == 0 || g.n == 0) return Status::Ok();
  CublasLib& lib = Cublas();
  if (!lib.error.empty()) return Status{Status::kUnsupported, lib.error.c_str()};
  if (device < 0 || device >= 64) return Status{Status::kCudaError, "linearLogprobs: device ordinal out of range"};
  std::lock_guard<std::mutex> lock(g_cublas_mu);
  cublasHandle_t& handle = lib.handles[device];
  if (!handle && lib.create(&handle) != CUBLAS_STATUS_SUCCESS) {
    handle = nullptr;
    return Status{Status::kCudaError, "linearLogprobs: cublasCreate failed"};
  }
  if (lib.set_stream(handle, stream) != CUBLAS_STATUS_SUCCESS)
    return Status{Status::kCudaError, "linearLogprobs: cublasSetStream failed"};
  const float alpha = 1.0f;
  // CUBLAS_COMPUTE_32F: fp32 accumulation; tensor cores for 16-bit inputs,
  // true fp32 (no TF32) for fp32 inputs, which the 1e-6 contract needs.
  const cublasStatus_t st = lib.gemm_ex(
      handle, g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, g.tb ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.m), int(g.n), int(g.k), &alpha,
      g.a, CudaType(g.ab), int(g.lda), g.b, CudaType(g.ab), int(g.ldb), &g.beta, g.c, CudaType(g.ct), int(g.ldc),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) return Status{Status::kCudaError, "linearLogprobs: cublasGemmEx failed"};
  return Status::Ok();
}
#endif

// L[nc, V] (row-major, fp32) = h[c0 : c0 + nc] @ W^T: column-major L^T [V x nc]
// = op_T(W as [H x V]) * (h_c as [H x nc]).
Status LogitsGemm(const void* hidden, const void* weight, DType dt, int64_t c0, int64_t nc, int64_t dim, int64_t vocab,
                  float* L, cudaStream_t s, int device) {
  GemmArgs g;
  g.ta = true;
  g.m = vocab;
  g.n = nc;
  g.k = dim;
  g.a = weight;
  g.lda = dim;
  g.b = static_cast<const char*>(hidden) + c0 * dim * int64_t(ElementSize(dt));
  g.ldb = dim;
  g.ab = dt;
  g.c = L;
  g.ct = DType::kFloat32;
  g.ldc = vocab;
  return Gemm(g, s, device);
}

// ---- per-row online log-sum-exp ----------------------------------------------------
// As token_logprobs.cu's: m = max of the raw logits (-FLT_MAX before any, so
// x - m is never -inf - -inf), u = s - 1 with s = sum e^{(x - m)/T} (the
// element that set m contributes its 1 implicitly, so a confident row keeps
// the digits of s - 1 that its entropy is made of; -1 before any element),
// t = sum e^{(x - m)/T} (x - m)/T; u and t Kahan-compensated within a thread
// (hundreds of terms each).
struct Lse {
  float m, u, t, cs, ct;
};

__device__ __forceinline__ void KahanAdd(float& sum, float& comp, float x) {
  const float y = x - comp;
  const float t = sum + y;
  comp = (t - sum) - y;
  sum = t;
}

template <bool kEntropy>
__device__ __forceinline__ void LseAdd(Lse& a, float x, float it) {
  if (x > a.m) {  // NaN never wins; its exp below carries NaN into u
    a.u -= a.cs;
    a.t -= a.ct;
    a.cs = a.ct = 0.0f;
    const float delta = (a.m - x) * it;
    const float e = expf(delta);
    if (kEntropy) a.t = TlpShiftEntropy(e, delta, 1.0f + a.u, a.t);
    a.u = TlpScaledSum(e, a.u);
    a.m = x;
    return;  // x's own term is the implicit 1
  }
  const float d = (x - a.m) * it;
  const float e = expf(d);
  KahanAdd(a.u, a.cs, e);
  if (kEntropy && e != 0.0f) KahanAdd(a.t, a.ct, e * d);
}

template <bool kEntropy>
__device__ __forceinline__ Lse LseMerge(Lse a, Lse b, float it) {
  const float m = fmaxf(a.m, b.m);
  const float da = (a.m - m) * it, db = (b.m - m) * it;
  const float ea = expf(da), eb = expf(db);
  Lse r;
  r.m = m;
  // The side holding m keeps its implicit 1; the other's whole sum 1 + u is scaled in.
  r.u = a.m >= b.m ? a.u + TlpScaledSum(eb, b.u) : b.u + TlpScaledSum(ea, a.u);
  r.t = kEntropy ? TlpShiftEntropy(ea, da, 1.0f + a.u, a.t) + TlpShiftEntropy(eb, db, 1.0f + b.u, b.t) : 0.0f;
  r.cs = r.ct = 0.0f;
  return r;
}

// The whole block's state, the same in every thread; reduction order fixed
// (butterfly in each warp, then warp 0 over the warps' slots in order).
template <bool kEntropy>
__device__ Lse BlockLse(Lse a, float it) {
  __shared__ float sm[kWarps];
  __shared__ float ss[kWarps];
  __shared__ float st[kWarps];
  __shared__ Lse total;
  a.u -= a.cs;
  a.t -= a.ct;
  a.cs = a.ct = 0.0f;
  for (int o = 16; o > 0; o >>= 1) {
    Lse b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
    b.u = __shfl_xor_sync(0xffffffffu, a.u, o);
    b.t = __shfl_xor_sync(0xffffffffu, a.t, o);
    b.cs = b.ct = 0.0f;
    // Both lanes of a pair merge in the same operand order.
    const bool lower = (threadIdx.x & o) == 0;
    a = lower ? LseMerge<kEntropy>(a, b, it) : LseMerge<kEntropy>(b, a, it);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = a.m;
    ss[warp] = a.u;
    st[warp] = a.t;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Lse r{sm[0], ss[0], st[0], 0.0f, 0.0f};
    for (int w = 1; w < kWarps; ++w) r = LseMerge<kEntropy>(r, Lse{sm[w], ss[w], st[w], 0.0f, 0.0f}, it);
    total = r;
  }
  __syncthreads();
  const Lse r = total;
  __syncthreads();  // `total` and the slots are reused by the next row
  return r;
}

template <class T, bool kEntropy>
__device__ Lse RowLse(const float* x, const T* bias, int64_t vocab, float it) {
  Lse a{-FLT_MAX, -1.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
    const float v = bias ? x[j] + LoadF(bias, j) : x[j];
    LseAdd<kEntropy>(a, v, it);
  }
  return BlockLse<kEntropy>(a, it);
}

template <class Idx>
__device__ __forceinline__ float RowInvT(const LinearLogprobsFwdParams& p, int64_t r, bool leader) {
  const float it = TlpRowInvTemperature(p.temperature, p.inv_temperature, r);
  if (it == 0.0f && leader) ReportError(p.error_word, kDeviceErrorBadTemperature);
  return it;
}

// One block per chunk row, grid-stride (no 65535 limit), int64 offsets.
template <class T, class Idx, bool kEntropy>
__global__ void __launch_bounds__(kThreads) LinFwdRowKernel(LinearLogprobsFwdParams p, const float* L, int64_t c0, int64_t nc) {
  const T* bias = static_cast<const T*>(p.bias);
  const bool partial = p.partials != nullptr;
  const int cols = p.entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  const bool leader = threadIdx.x == 0;
  for (int64_t n = blockIdx.x; n < nc; n += gridDim.x) {
    const int64_t r = c0 + n;
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    float it = RowInvT<Idx>(p, r, leader);
    if (tg == p.ignore_index) {
      if (leader) {
        if (partial) {
          for (int k = 0; k < cols; ++k) p.partials[r * cols + k] = 0.0f;
        } else {
          TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
        }
      }
      continue;
    }
    const float* x = L + n * p.vocab;
    const Lse st = RowLse<T, kEntropy>(x, bias, p.vocab, it);
    if (!leader) continue;
    const bool in_range = tg >= 0 && tg < p.vocab_size;
    if (!in_range) ReportError(p.error_word, kDeviceErrorTargetOutOfRange);
    const int64_t local = tg - p.vocab_start;
    const bool in_shard = local >= 0 && local < p.vocab;
    const float xt = in_shard ? (bias ? x[local] + LoadF(bias, local) : x[local]) : 0.0f;
    const float nan = __int_as_float(0x7fc00000);
    if (partial) {
      float* out = p.partials + r * cols;
      out[0] = st.m;
      out[1] = st.u;  // s - 1, token_logprobs.h's layout
      out[2] = in_range ? xt : nan;
      if (p.entropy) out[3] = st.t;
      continue;
    }
    const float log_s = log1pf(st.u);
    p.logprobs[r] = in_range ? TlpLogprob(xt, st.m, it, log_s) : nan;
    const float h = TlpEntropy(log_s, st.t, 1.0f + st.u);
    if (p.entropy_out) p.entropy_out[r] = h;
    if (p.stats) {
      p.stats[r * kTlpStatsCols] = st.m;
      p.stats[r * kTlpStatsCols + 1] = st.u;
      p.stats[r * kTlpStatsCols + 2] = h;
    }
  }
}

// dlogits rows: D[n][j] = [g (1[j = t] - p_j) - gE p_j (log p_j + H)] / T in
// the inputs' dtype, from L (+ bias) and the row's stats (given, or an
// online pass over L first). Ignored rows get zeros.
template <class T, class Idx, bool kEntropy>
__global__ void __launch_bounds__(kThreads) LinBwdRowKernel(LinearLogprobsBwdParams p, const float* L, T* D, int64_t c0, int64_t nc) {
  const T* bias = static_cast<const T*>(p.bias);
  for (int64_t n = blockIdx.x; n < nc; n += gridDim.x) {
    const int64_t r = c0 + n;
    const int64_t tg = TlpTargetAt<Idx>(p.targets, r);
    const float* x = L + n * p.vocab;
    T* out = D + n * p.vocab;
    const float it = TlpRowInvTemperature(p.temperature, p.inv_temperature, r);
    if (it == 0.0f && threadIdx.x == 0) ReportError(p.error_word, kDeviceErrorBadTemperature);
    if (tg == p.ignore_index) {
      for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) out[j] = FromFloat<T>(0.0f);
      continue;
    }
    const bool in_range = tg >= 0 && tg < p.vocab_size;
    if (!in_range && threadIdx.x == 0) ReportError(p.error_word, kDeviceErrorTargetOutOfRange);
    float m, u, h;  // u = s - 1
    if (p.stats) {
      m = p.stats[r * kTlpStatsCols];
      u = p.stats[r * kTlpStatsCols + 1];
      h = p.stats[r * kTlpStatsCols + 2];
    } else {
      const Lse st = RowLse<T, kEntropy>(x, bias, p.vocab, it);
      m = st.m;
      u = st.u;
      h = TlpEntropy(log1pf(st.u), st.t, 1.0f + st.u);
    }
    const float inv_s = 1.0f / (1.0f + u), c = h - log1pf(u);
    const float g = p.grad_logprobs[r], ge = kEntropy ? p.grad_entropy[r] : 0.0f;
    const int64_t local = tg - p.vocab_start;
    const float nan = __int_as_float(0x7fc00000);
    for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
      const float v = bias ? x[j] + LoadF(bias, j) : x[j];
      const float d = (v - m) * it;
      const float pj = expf(d) * inv_s;
      float gr = TlpGradTerm<kEntropy>(pj, d, g, ge, c);
      // The one-hot term, dropped for a -inf target logit (its log-prob is the constant -inf).
      if (j == local && v != -INFINITY) gr += g;
      out[j] = FromFloat<T>(in_range ? gr * it : nan);
    }
  }
}

// acc[v] (+)= sum over the chunk's rows of D[n][v], rows in order.
template <class T>
__global__ void LinBiasGradKernel(const T* D, int64_t nc, int64_t vocab, float* acc, bool add) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vocab; v += int64_t(gridDim.x) * blockDim.x) {
    float s = add ? acc[v] : 0.0f;
    for (int64_t n = 0; n < nc; ++n) s += ToFloat(D[n * vocab + v]);
    acc[v] = s;
  }
}

template <class T>
__global__ void LinStoreKernel(const float* src, T* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = FromFloat<T>(src[i]);
}

int GridFor(int64_t n, int64_t per_block) {
  int64_t g = (n + per_block - 1) / per_block;
  return int(g < 1 ? 1 : (g > kMaxGrid ? kMaxGrid : g));
}

// Rows per chunk: `requested`, or what a quarter of the free memory holds
// (bytes_per_row each), at most 65536 (cuBLAS takes int dimensions).
int64_t ChunkRows(int64_t requested, int64_t rows, int64_t bytes_per_row) {
  if (requested > 0) return requested < rows ? requested : rows;
  size_t free_b = 0, total_b = 0;
  int64_t budget = int64_t(1) << 30;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) budget = int64_t(free_b / 4);
  else cudaGetLastError();
  int64_t c = budget / (bytes_per_row > 0 ? bytes_per_row : 1);
  if (c < 1) c = 1;
  if (c > 65536) c = 65536;
  return c < rows ? c : rows;
}

// Device scratch from the caching allocator, freed after the work is queued
// (the allocator reuses blocks in stream order).
struct Scratch {
  int device;
  void* p = nullptr;
  explicit Scratch(int d) : device(d) {}
  ~Scratch() {
    if (p) DeviceFree(device, p);
  }
  Status Alloc(size_t bytes) { return DeviceAlloc(device, bytes ? bytes : 1, &p); }
};

template <class Fn>
Status DispatchTypes(DType dt, DType idx, Fn&& fn) {
  auto with_idx = [&](auto t) -> Status {
    if (idx == DType::kInt32) return fn(t, int32_t{});
    return fn(t, int64_t{});
  };
  switch (dt) {
    case DType::kFloat32: return with_idx(float{});
    case DType::kBFloat16: return with_idx(bf16_t{});
    case DType::kFloat16: return with_idx(f16_t{});
    default: return Status{Status::kUnsupported, "linearLogprobs: unsupported dtype"};
  }
}

template <class T, class Idx>
Status Fwd(const LinearLogprobsFwdParams& p) {
  cudaStream_t s = static_cast<cudaStream_t>(p.stream);
  const int64_t chunk = ChunkRows(p.chunk, p.rows, p.vocab * 4);
  Scratch L(p.device);
  Status st = L.Alloc(size_t(chunk) * size_t(p.vocab) * 4);
  if (!st.ok()) return st;
  const bool entropy = p.entropy || (!p.partials && p.stats);
  for (int64_t c0 = 0; c0 < p.rows; c0 += chunk) {
    const int64_t nc = p.rows - c0 < chunk ? p.rows - c0 : chunk;
    st = LogitsGemm(p.hidden, p.weight, p.dtype, c0, nc, p.dim, p.vocab, static_cast<float*>(L.p), s, p.device);
    if (!st.ok()) return st;
    if (entropy)
      LinFwdRowKernel<T, Idx, true><<<GridFor(nc, 1), kThreads, 0, s>>>(p, static_cast<float*>(L.p), c0, nc);
    else
      LinFwdRowKernel<T, Idx, false><<<GridFor(nc, 1), kThreads, 0, s>>>(p, static_cast<float*>(L.p), c0, nc);
    st = CudaCheck(cudaGetLastError(), "linearLogprobs: the row kernel failed to launch");
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

template <class T, class Idx>
Status Bwd(const LinearLogprobsBwdParams& p) {
  cudaStream_t s = static_cast<cudaStream_t>(p.stream);
  constexpr bool kF32 = std::is_same<T, float>::value;
  const int64_t chunk = ChunkRows(p.chunk, p.rows > 0 ? p.rows : 1, p.vocab * int64_t(4 + sizeof(T)));
  Scratch L(p.device), D(p.device), gw32(p.device), gb32(p.device);
  Status st = L.Alloc(size_t(chunk) * size_t(p.vocab) * 4);
  if (st.ok()) st = D.Alloc(size_t(chunk) * size_t(p.vocab) * sizeof(T));
  if (st.ok() && !kF32) st = gw32.Alloc(size_t(p.vocab) * size_t(p.dim) * 4);
  if (st.ok() && p.grad_bias) st = gb32.Alloc(size_t(p.vocab) * 4);
  if (!st.ok()) return st;
  float* gw = kF32 ? static_cast<float*>(p.grad_weight) : static_cast<float*>(gw32.p);
  if (p.rows == 0) {
    st = CudaCheck(cudaMemsetAsync(gw, 0, size_t(p.vocab) * size_t(p.dim) * 4, s), "linearLogprobsBackward: memset failed");
    if (st.ok() && p.grad_bias) st = CudaCheck(cudaMemsetAsync(gb32.p, 0, size_t(p.vocab) * 4, s), "linearLogprobsBackward: memset failed");
  }
  if (!st.ok()) return st;
  T* Dp = static_cast<T*>(D.p);
  for (int64_t c0 = 0; c0 < p.rows; c0 += chunk) {
    const int64_t nc = p.rows - c0 < chunk ? p.rows - c0 : chunk;
    st = LogitsGemm(p.hidden, p.weight, p.dtype, c0, nc, p.dim, p.vocab, static_cast<float*>(L.p), s, p.device);
    if (!st.ok()) return st;
    if (p.grad_entropy)
      LinBwdRowKernel<T, Idx, true><<<GridFor(nc, 1), kThreads, 0, s>>>(p, static_cast<float*>(L.p), Dp, c0, nc);
    else
      LinBwdRowKernel<T, Idx, false><<<GridFor(nc, 1), kThreads, 0, s>>>(p, static_cast<float*>(L.p), Dp, c0, nc);
    st = CudaCheck(cudaGetLastError(), "linearLogprobsBackward: the row kernel failed to launch");
    if (!st.ok()) return st;
    // gradHidden_c [nc, H] = D [nc, V] @ W [V, H]: column-major gH^T [H x nc] = W^T [H x V] D^T [V x nc].
    GemmArgs gh;
    gh.m = p.dim;
    gh.n = nc;
    gh.k = p.vocab;
    gh.a = p.weight;
    gh.lda = p.dim;
    gh.b = Dp;
    gh.ldb = p.vocab;
    gh.ab = p.dtype;
    gh.c = static_cast<char*>(p.grad_hidden) + c0 * p.dim * int64_t(sizeof(T));
    gh.ct = p.dtype;
    gh.ldc = p.dim;
    st = Gemm(gh, s, p.device);
    if (!st.ok()) return st;
    // gradWeight [V, H] (+)= D^T h_c: column-major gW^T [H x V] (+)= h_c^T [H x nc] op_T(D^T as [V x nc]).
    GemmArgs gwa;
    gwa.tb = true;
    gwa.m = p.dim;
    gwa.n = p.vocab;
    gwa.k = nc;
    gwa.a = static_cast<const char*>(p.hidden) + c0 * p.dim * int64_t(sizeof(T));
    gwa.lda = p.dim;
    gwa.b = Dp;
    gwa.ldb = p.vocab;
    gwa.ab = p.dtype;
    gwa.beta = c0 > 0 ? 1.0f : 0.0f;
    gwa.c = gw;
    gwa.ct = DType::kFloat32;
    gwa.ldc = p.dim;
    st = Gemm(gwa, s, p.device);
    if (!st.ok()) return st;
    if (p.grad_bias) {
      LinBiasGradKernel<T><<<GridFor(p.vocab, 256), 256, 0, s>>>(Dp, nc, p.vocab, static_cast<float*>(gb32.p), c0 > 0);
      st = CudaCheck(cudaGetLastError(), "linearLogprobsBackward: the bias kernel failed to launch");
      if (!st.ok()) return st;
    }
  }
  const int64_t wn = p.vocab * p.dim;
  if (!kF32) LinStoreKernel<T><<<GridFor(wn, 256), 256, 0, s>>>(gw, static_cast<T*>(p.grad_weight), wn);
  if (p.grad_bias) LinStoreKernel<T><<<GridFor(p.vocab, 256), 256, 0, s>>>(static_cast<float*>(gb32.p), static_cast<T*>(p.grad_bias), p.vocab);
  return CudaCheck(cudaGetLastError(), "linearLogprobsBackward: the store kernel failed to launch");
}

}  // namespace

const char* LinearLogprobsCudaStatus() { return GemmProviderError(); }

Status LinearLogprobsFwd(const LinearLogprobsFwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.bias && p.bias_dtype != p.dtype) return Status{Status::kInvalidArgument, "bias must have the weight's dtype"};
  if (GemmProviderError()[0]) return Status{Status::kUnsupported, GemmProviderError()};
  Status st = CudaCheck(cudaSetDevice(p.device), "linearLogprobs: cudaSetDevice failed");
  if (!st.ok()) return st;
  return DispatchTypes(p.dtype, p.targets_dtype, [&](auto t, auto i) { return Fwd<decltype(t), decltype(i)>(p); });
}

Status LinearLogprobsBwd(const LinearLogprobsBwdParams& p) {
  if (p.bias && p.bias_dtype != p.dtype) return Status{Status::kInvalidArgument, "bias must have the weight's dtype"};
  if (GemmProviderError()[0]) return Status{Status::kUnsupported, GemmProviderError()};
  Status st = CudaCheck(cudaSetDevice(p.device), "linearLogprobsBackward: cudaSetDevice failed");
  if (!st.ok()) return st;
  return DispatchTypes(p.dtype, p.targets_dtype, [&](auto t, auto i) { return Bwd<decltype(t), decltype(i)>(p); });
}

#else  // neither cuBLAS headers nor the emulated device: the path is compiled out

const char* LinearLogprobsCudaStatus() {
  return "this build has no CUDA linear log-probs: cuBLAS's headers were not found at build time "
         "(run scripts/fetch-cublas-headers.sh, then rebuild)";
}
Status LinearLogprobsFwd(const LinearLogprobsFwdParams&) { return Status{Status::kUnsupported, LinearLogprobsCudaStatus()}; }
Status LinearLogprobsBwd(const LinearLogprobsBwdParams&) { return Status{Status::kUnsupported, LinearLogprobsCudaStatus()}; }

#endif

}  // namespace rlk::cuda
