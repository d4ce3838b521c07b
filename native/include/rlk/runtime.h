// Host threads, host and device memory, streams and copies. Implemented in
// cpu/runtime.cc (host side) and cuda/runtime.cu, or cpu/no_cuda.cc when the
// build has no CUDA. Functions return a Status and never throw.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include "rlk/common.h"

namespace rlk {

// ---- threads ------------------------------------------------------------
// A fixed pool (not OpenMP: libgomp is not on every machine the prebuilt
// binary lands on). fn(begin, end) runs over disjoint slices of [0, n); the
// slices are fixed by n, grain and the thread count, so a kernel that writes
// per-slice results in slice order stays deterministic.
void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
int NumThreads();
void SetNumThreads(int n);

// ---- host memory ----------------------------------------------------------
void* HostAlloc(size_t bytes);  // 64-byte aligned; nullptr on failure
void HostFree(void* p);

// Elementwise conversion between any two dtypes on the host (16-bit floats
// rounded to nearest even; floats to integers truncate toward zero and
// saturate, NaN gives 0, as a C++ cast would if it were defined).
void CastHost(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

// ---- CUDA -------------------------------------------------------------------
struct CudaInfo {
  bool compiled = false;          // built with nvcc
  std::string archs;              // e.g. "sm_80 sm_90a compute_90"
  int runtime_version = 0;        // CUDART_VERSION it was built against
  int driver_version = 0;         // 0 when no driver
  int device_count = 0;
  std::string error;              // why no device can be used ("" when one can)
  std::vector<std::string> device_names;
};
CudaInfo GetCudaInfo();

struct DeviceMemoryStats {
  size_t allocated = 0;  // bytes handed out and not returned
  size_t reserved = 0;   // bytes held from cudaMalloc (allocated + cached)
  int64_t mallocs = 0;   // cudaMalloc calls so far
  int64_t reuses = 0;    // allocations served from the cache
};

// Caching allocator, one pool per device, blocks reused in stream order on
// the device's single stream. bytes == 0 gives nullptr.
Status DeviceAlloc(int device, size_t bytes, void** out);
void DeviceFree(int device, void* p);
DeviceMemoryStats GetDeviceMemoryStats(int device);
void DeviceEmptyCache(int device);

// The device's stream (a cudaStream_t), created on first use; also makes
// `device` current on the calling thread.
Status DeviceStream(int device, void** stream);
Status DeviceSynchronize(int device);

// Copies, ordered on the device's stream. Host pointers are pageable memory:
// H2D returns once the source may be reused; D2H returns when the data is
// on the host (call it from a worker thread, never the event loop).
Status CopyHostToDevice(int device, void* dst, const void* src, size_t bytes);
Status CopyDeviceToHost(int device, void* dst, const void* src, size_t bytes);
Status CopyDeviceToDevice(int dst_device, void* dst, int src_device, const void* src, size_t bytes);
Status FillDevice(int device, void* dst, const void* pattern, size_t pattern_bytes, int64_t n);
Status CastDevice(int device, const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

// A per-device int32 in device memory that kernels set when they find bad
// data (a target out of range): a device assert would kill the CUDA context
// for the whole process. Kernels write it with atomicCAS(word, 0, code) so
// the first error wins. The host reads and clears it at its sync points
// (reads, synchronize) and reports DeviceErrorMessage(code).
Status DeviceErrorWord(int device, int32_t** word);
Status TakeDeviceError(int device, int32_t* code);  // synchronizes the stream

}  // namespace rlk
