// Stand-in for <cuda_runtime.h> when native/cuda/*.cu are compiled by g++
// against the emulated device (native/sim, DESIGN 9). The API's
// declarations, types and constants are the real CUDA headers'
// (cuda_runtime_api.h, vector_types.h, driver_types.h): this file adds only
// what nvcc would provide to device code (built-in variables, intrinsics,
// atomics, __shared__ storage, launches) and the C++ API templates of the real
// cuda_runtime.h, here typed so that the emulator can call the kernel.
#pragma once
#if defined(__CUDACC__)
#error "native/sim/include is for g++ builds of the .cu sources, not for nvcc"
#endif

#include <cuda_runtime_api.h>  // the real one (declarations the sim runtime defines)
#include <vector_functions.h>  // make_float4 & co, as the real cuda_runtime.h

#include <math.h>
#include <string.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define RLK_CUDA_SIM_DEVICE 1

// nvcc keywords that g++ lacks. __global__, __device__, __host__,
// __forceinline__ and __noinline__ come from the real host_defines.h.
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
#ifndef __constant__
#define __constant__
#endif

namespace rlk_sim {

// What the built-in variables read: the running CUDA thread's (a fiber's).
struct ThreadVars {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local ThreadVars* tls_vars;

// ---- execution model (native/sim/runtime.cc) ---------------------------------
enum Collective : int {
  kShflIdx = 0, kShflUp, kShflDown, kShflXor,
  kVoteAny, kVoteAll, kVoteBallot, kSyncWarp, kMatchAny,
};
// A warp collective: every lane named in `mask` must arrive at the same one;
// the last to arrive computes every lane's result.
uint64_t WarpCollective(int kind, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line);
unsigned ActiveMask();
// __syncthreads and its reducing forms (op: 0 plain, 1 count, 2 and, 3 or).
int SyncThreads(int op, int pred, const char* file, int line);
void GridSync(const char* file, int line);
bool InCooperativeLaunch();
void* SharedAlloc(const void* key, size_t bytes, size_t align, const char* file, int line);
void* DynamicShared(const char* file, int line);
[[noreturn]] void Trap(const char* what, const char* file, int line);

struct LaunchCfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
inline LaunchCfg Cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return LaunchCfg{grid, block, smem, stream};
}
cudaError_t RunKernel(const LaunchCfg& cfg, bool cooperative, const char* name, const char* file, int line,
                      void (*thunk)(void*), void* closure);

// `k<<<cfg>>>(args)` becomes Launch(Cfg(cfg), "k", ..., [&](auto&... a) { k(a...); }, args):
// the arguments are evaluated once, on the host, and every CUDA thread calls
// the kernel with its own copies (kernel parameters are by value).
template <class F, class... A>
cudaError_t Launch(const LaunchCfg& cfg, const char* name, const char* file, int line, F&& f, A&&... args) {
  auto tup = std::make_tuple(std::forward<A>(args)...);
  struct Closure {
    F* f;
    decltype(tup)* t;
  } cl{&f, &tup};
  return RunKernel(cfg, false, name, file, line,
                   [](void* p) {
                     auto* c = static_cast<Closure*>(p);
                     auto copy = *c->t;  // by-value parameters: one copy per thread
                     std::apply(*c->f, copy);
                   },
                   &cl);
}

template <class... P, size_t... I>
cudaError_t LaunchArgv(bool coop, void (*k)(P...), dim3 g, dim3 b, void** args, size_t smem, cudaStream_t s,
                       const char* file, int line, std::index_sequence<I...>) {
  struct Closure {
    void (*k)(P...);
    void** args;
  } cl{k, args};
  return RunKernel(LaunchCfg{g, b, smem, s}, coop, "kernel", file, line,
                   [](void* p) {
                     auto* c = static_cast<Closure*>(p);
                     c->k(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(c->args[I])...);
                   },
                   &cl);
}

template <class T>
struct SharedKey {
  static inline char key;
};
// `__shared__ T name[N];` becomes `auto& name = Shared<T[N]>([]{}, ...)`:
// one object per block, keyed by the declaration (the lambda's type).
template <class T, class Site>
T& Shared(Site, const char* file, int line) {
  static_assert(std::is_trivially_default_constructible<T>::value,
                "__shared__ variables must be trivially constructible (CUDA does not run constructors for them)");
  return *static_cast<T*>(SharedAlloc(&SharedKey<Site>::key, sizeof(T), alignof(T), file, line));
}

template <class T>
inline uint64_t ToBits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T FromBits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace rlk_sim

#define threadIdx (::rlk_sim::tls_vars->thread_idx)
#define blockIdx (::rlk_sim::tls_vars->block_idx)
#define blockDim (::rlk_sim::tls_vars->block_dim)
#define gridDim (::rlk_sim::tls_vars->grid_dim)
static constexpr int warpSize = 32;

// ---- barriers and warp collectives ---------------------------------------------
// The file and line of the call (the .cu's, through #line) name the
// collective in the emulator's reports.
inline void __syncthreads(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { ::rlk_sim::SyncThreads(0, 0, f, l); }
inline int __syncthreads_count(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return ::rlk_sim::SyncThreads(1, p != 0, f, l); }
inline int __syncthreads_and(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return ::rlk_sim::SyncThreads(2, p != 0, f, l); }
inline int __syncthreads_or(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return ::rlk_sim::SyncThreads(3, p != 0, f, l); }
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ::rlk_sim::WarpCollective(::rlk_sim::kSyncWarp, mask, 0, 0, 32, f, l);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::rlk_sim::FromBits<T>(::rlk_sim::WarpCollective(::rlk_sim::kShflIdx, mask, ::rlk_sim::ToBits(v), src, width, f, l));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::rlk_sim::FromBits<T>(::rlk_sim::WarpCollective(::rlk_sim::kShflUp, mask, ::rlk_sim::ToBits(v), int(delta), width, f, l));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::rlk_sim::FromBits<T>(::rlk_sim::WarpCollective(::rlk_sim::kShflDown, mask, ::rlk_sim::ToBits(v), int(delta), width, f, l));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::rlk_sim::FromBits<T>(::rlk_sim::WarpCollective(::rlk_sim::kShflXor, mask, ::rlk_sim::ToBits(v), lane_mask, width, f, l));
}
inline int __any_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return int(::rlk_sim::WarpCollective(::rlk_sim::kVoteAny, mask, p != 0, 0, 32, f, l));
}
inline int __all_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return int(::rlk_sim::WarpCollective(::rlk_sim::kVoteAll, mask, p != 0, 0, 32, f, l));
}
inline unsigned __ballot_sync(unsigned mask, int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return unsigned(::rlk_sim::WarpCollective(::rlk_sim::kVoteBallot, mask, p != 0, 0, 32, f, l));
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return unsigned(::rlk_sim::WarpCollective(::rlk_sim::kMatchAny, mask, ::rlk_sim::ToBits(v), 0, 32, f, l));
}
inline unsigned __activemask() { return ::rlk_sim::ActiveMask(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __trap(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { ::rlk_sim::Trap("__trap()", f, l); }

// ---- atomics (every CUDA thread may run on another OS thread) ----------------------
template <class T>
inline T atomicCAS(T* p, T compare, T val) {
  static_assert(std::is_integral<T>::value, "atomicCAS on integers");
  __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
template <class T>
inline T atomicExch(T* p, T val) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_exchange_n(p, val, __ATOMIC_SEQ_CST);
  } else {
    T old;
    __atomic_exchange(p, &val, &old, __ATOMIC_SEQ_CST);
    return old;
  }
}
template <class T>
inline T atomicAdd(T* p, T val) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(p, val, __ATOMIC_SEQ_CST);
  } else {
    T old;
    __atomic_load(p, &old, __ATOMIC_SEQ_CST);
    T desired;
    do {
      desired = old + val;
    } while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
  }
}
template <class T>
inline T atomicSub(T* p, T val) { return __atomic_fetch_sub(p, val, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicOr(T* p, T val) { return __atomic_fetch_or(p, val, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicAnd(T* p, T val) { return __atomic_fetch_and(p, val, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicXor(T* p, T val) { return __atomic_fetch_xor(p, val, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicMax(T* p, T val) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < val && !__atomic_compare_exchange_n(p, &old, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T val) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old > val && !__atomic_compare_exchange_n(p, &old, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

// ---- loads, bit casts, integer and float intrinsics --------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }

inline unsigned __float_as_uint(float f) { return ::rlk_sim::FromBits<unsigned>(::rlk_sim::ToBits(f)); }
inline int __float_as_int(float f) { return ::rlk_sim::FromBits<int>(::rlk_sim::ToBits(f)); }
inline float __uint_as_float(unsigned u) { return ::rlk_sim::FromBits<float>(::rlk_sim::ToBits(u)); }
inline float __int_as_float(int i) { return ::rlk_sim::FromBits<float>(::rlk_sim::ToBits(i)); }
inline long long __double_as_longlong(double d) { return ::rlk_sim::FromBits<long long>(::rlk_sim::ToBits(d)); }
inline double __longlong_as_double(long long i) { return ::rlk_sim::FromBits<double>(::rlk_sim::ToBits(i)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __int2float_rn(int x) { return float(x); }
inline float __double2float_rn(double x) { return float(x); }
inline int __float2int_rz(float x) { return int(x); }
inline int __mul24(int a, int b) { return a * b; }
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// CUDA's global min/max overloads for device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- the C++ API of the real cuda_runtime.h, typed ------------------------------------
// The emulator needs the kernel's parameter types to call it: launches through
// `const void*` (the C API) are refused with cudaErrorNotSupported, and a
// typed pointer is valid CUDA too.
template <class... P>
inline cudaError_t cudaLaunchCooperativeKernel(void (*k)(P...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                                               cudaStream_t stream = nullptr, const char* f = __builtin_FILE(),
                                               int l = __builtin_LINE()) {
  return ::rlk_sim::LaunchArgv(true, k, grid, block, args, smem, stream, f, l, std::index_sequence_for<P...>{});
}
template <class... P>
inline cudaError_t cudaLaunchKernel(void (*k)(P...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                                    cudaStream_t stream = nullptr, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::rlk_sim::LaunchArgv(false, k, grid, block, args, smem, stream, f, l, std::index_sequence_for<P...>{});
}
template <class... P>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*k)(P...), int block_size,
                                                                 size_t smem) {
  return ::cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, reinterpret_cast<const void*>(k), block_size, smem);
}
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*k)(P...), cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(k), attr, value);
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return ::cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
template <class T>
inline cudaError_t cudaMallocHost(T** p, size_t bytes) {
  return ::cudaMallocHost(reinterpret_cast<void**>(p), bytes);
}
