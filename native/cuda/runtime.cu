// Device side of the runtime: device discovery, one stream per device, a
// caching allocator, copies and casts. Every CUDA call is checked.
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "rlk/runtime.h"

namespace rlk {
namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kSmallLimit = size_t(1) << 20;   // blocks up to 1 MiB round to 512 B
constexpr size_t kLargeRound = size_t(2) << 20;   // larger ones to 2 MiB

Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();  // clear the sticky-free error so later calls are not blamed
  // The message must outlive the call: keep one string per (what, err).
  static std::mutex mu;
  static std::map<std::pair<std::string, int>, std::string> messages;
  std::lock_guard<std::mutex> lock(mu);
  auto& m = messages[{what, int(err)}];
  if (m.empty()) m = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  return Status{err == cudaErrorMemoryAllocation ? Status::kOutOfMemory : Status::kCudaError, m.c_str()};
}
#define RLK_CUDA_RETURN(call, what)                      \
  do {                                                   \
    Status _s = CudaStatus((call), what);                \
    if (!_s.ok()) return _s;                             \
  } while (0)

struct DeviceState {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  int32_t* error_word = nullptr;                  // [2], see TakeErrorKernel
  std::mutex take_mu;                             // one TakeDeviceError at a time: they share word[1]
  std::multimap<size_t, void*> cached;            // size -> block
  std::unordered_map<void*, size_t> live;         // block -> size
  DeviceMemoryStats stats;
};

DeviceState& State(int device) {
  static DeviceState states[kMaxDevices];
  return states[device];
}

size_t RoundSize(size_t bytes) {
  if (bytes <= kSmallLimit) return (bytes + 511) & ~size_t(511);
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

// Each block leaves the cache as it is freed: returning on a failed cudaFree
// with the freed blocks still listed would hand them out (or free them)
// again later.
Status ReleaseCached(int device, DeviceState& s) {
  while (!s.cached.empty()) {
    auto it = s.cached.begin();
    const size_t size = it->first;
    void* block = it->second;
    s.cached.erase(it);
    s.stats.reserved -= size;
    cudaError_t err = cudaFree(block);
    if (err != cudaSuccess) return CudaStatus(err, "cudaFree");
  }
  return Status::Ok();
}

Status Bad(const char* m) { return Status{Status::kInvalidArgument, m}; }

// Takes the error word's code and clears it in one step, in stream order.
// Reading the word, synchronizing and then clearing it (three steps) lost
// an error: a kernel queued by another thread in between found the word
// still set, so its atomicCAS failed, and the clear then erased its report.
__global__ void TakeErrorKernel(int32_t* word /*[2]: the word, then the taken code*/) { word[1] = atomicExch(word, 0); }

}  // namespace

CudaInfo GetCudaInfo() {
  CudaInfo info;
  info.compiled = true;
  info.archs = RLK_CUDA_ARCHS;
  info.runtime_version = CUDART_VERSION;
  int drv = 0;
  if (cudaDriverGetVersion(&drv) == cudaSuccess) info.driver_version = drv;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    return info;
  }
  info.device_count = count > kMaxDevices ? kMaxDevices : count;
  if (count == 0) info.error = "no CUDA device found";
  for (int d = 0; d < info.device_count; ++d) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
      info.device_names.push_back(std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
                                  std::to_string(prop.minor) + ")");
    else
      info.device_names.push_back("unknown");
  }
  return info;
}

Status DeviceStream(int device, void** stream) {
  if (device < 0 || device >= kMaxDevices) return Bad("invalid device index");
  DeviceState& s = State(device);
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.stream) {
    // Stream and error word are published together: publishing the stream
    // before a failed cudaMalloc of the word left later calls with a stream
    // and a null error word, which kernels would atomicCAS into.
    RLK_CUDA_RETURN(cudaSetDevice(device), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    int32_t* word = nullptr;
    RLK_CUDA_RETURN(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    // Two int32: the word kernels set, and the slot TakeDeviceError reads.
    cudaError_t err = cudaMalloc(&word, 2 * sizeof(int32_t));
    if (err == cudaSuccess) err = cudaMemsetAsync(word, 0, 2 * sizeof(int32_t), stream);
    if (err != cudaSuccess) {
      if (word) cudaFree(word);
      cudaStreamDestroy(stream);
      return CudaStatus(err, "cudaMalloc/cudaMemsetAsync(error word)");
    }
    s.error_word = word;
    s.stream = stream;
  }
  // Every caller is about to enqueue on this stream: make its device current
  // on this thread (cudaSetDevice is per thread and cheap when unchanged), so
  // no launcher can queue work for one device while another is current.
  RLK_CUDA_RETURN(cudaSetDevice(device), "cudaSetDevice");
  *stream = s.stream;
  return Status::Ok();
}

static Status StreamOf(int device, cudaStream_t* out) {
  void* p = nullptr;
  Status st = DeviceStream(device, &p);
  *out = static_cast<cudaStream_t>(p);
  return st;
}

Status DeviceSynchronize(int device) {
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  RLK_CUDA_RETURN(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return Status::Ok();
}

Status DeviceErrorWord(int device, int32_t** word) {
  void* stream = nullptr;
  Status st = DeviceStream(device, &stream);
  *word = st.ok() ? State(device).error_word : nullptr;
  return st;
}

Status TakeDeviceError(int device, int32_t* code) {
  *code = 0;
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  std::lock_guard<std::mutex> lock(State(device).take_mu);
  int32_t* word = State(device).error_word;
  TakeErrorKernel<<<1, 1, 0, stream>>>(word);
  RLK_CUDA_RETURN(cudaGetLastError(), "error word kernel launch");
  RLK_CUDA_RETURN(cudaMemcpyAsync(code, word + 1, sizeof(int32_t), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(D2H)");
  RLK_CUDA_RETURN(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return Status::Ok();
}

Status DeviceAlloc(int device, size_t bytes, void** out) {
  *out = nullptr;
  if (bytes == 0) return Status::Ok();
  if (device < 0 || device >= kMaxDevices) return Bad("invalid device index");
  size_t size = RoundSize(bytes);
  if (size < bytes) return Status{Status::kOutOfMemory, "allocation size overflows"};
  DeviceState& s = State(device);
  std::lock_guard<std::mutex> lock(s.mu);
  // Best fit, but never hand out a block more than twice the request: a
  // small tensor must not pin a huge cached block.
  auto it = s.cached.lower_bound(size);
  if (it != s.cached.end() && it->first <= 2 * size) {
    *out = it->second;
    s.live[it->second] = it->first;
    s.stats.allocated += it->first;
    s.stats.reuses++;
    s.cached.erase(it);
    return Status::Ok();
  }
  RLK_CUDA_RETURN(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, size);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Cached blocks are free in stream order; wait for the stream so none is
    // still read by queued work, then give them back and try once more.
    if (s.stream) RLK_CUDA_RETURN(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
    Status st = ReleaseCached(device, s);
    if (!st.ok()) return st;
    err = cudaMalloc(&p, size);
  }
  RLK_CUDA_RETURN(err, "cudaMalloc");
  s.live[p] = size;
  s.stats.allocated += size;
  s.stats.reserved += size;
  s.stats.mallocs++;
  *out = p;
  return Status::Ok();
}

// All work on a device goes through its one stream, so a block freed here
// may be handed out again at once: later users queue behind earlier ones.
void DeviceFree(int device, void* p) {
  if (!p || device < 0 || device >= kMaxDevices) return;
  DeviceState& s = State(device);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  if (it == s.live.end()) return;
  s.stats.allocated -= it->second;
  s.cached.emplace(it->second, p);
  s.live.erase(it);
}

DeviceMemoryStats GetDeviceMemoryStats(int device) {
  if (device < 0 || device >= kMaxDevices) return {};
  DeviceState& s = State(device);
  std::lock_guard<std::mutex> lock(s.mu);
  return s.stats;
}

void DeviceEmptyCache(int device) {
  if (device < 0 || device >= kMaxDevices) return;
  DeviceState& s = State(device);
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.stream && cudaSetDevice(device) == cudaSuccess) cudaStreamSynchronize(s.stream);
  ReleaseCached(device, s);
}

Status CopyHostToDevice(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  // From pageable memory the copy is staged before the call returns, so the
  // caller may release `src` afterwards.
  RLK_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync(H2D)");
  return Status::Ok();
}

Status CopyDeviceToHost(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  RLK_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(D2H)");
  RLK_CUDA_RETURN(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return Status::Ok();
}

Status CopyDeviceToDevice(int dst_device, void* dst, int src_device, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  cudaStream_t dst_stream, src_stream;
  Status st = StreamOf(src_device, &src_stream);
  if (!st.ok()) return st;
  if (src_device == dst_device) {
    RLK_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, src_stream), "cudaMemcpyAsync(D2D)");
    return Status::Ok();
  }
  // Across devices: the source's queued writes must finish first.
  RLK_CUDA_RETURN(cudaStreamSynchronize(src_stream), "cudaStreamSynchronize");
  st = StreamOf(dst_device, &dst_stream);
  if (!st.ok()) return st;
  RLK_CUDA_RETURN(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, dst_stream), "cudaMemcpyPeerAsync");
  RLK_CUDA_RETURN(cudaStreamSynchronize(dst_stream), "cudaStreamSynchronize");
  return Status::Ok();
}

namespace {

template <class T>
__global__ void FillKernel(T* dst, T value, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

// Casts are not on a hot path: one generic kernel, element by element
// through the CastElement of common.h that CastHost uses too, so device and
// host casts round and saturate identically. (The kernel's own int64 bound
// was 2^63 - 1024, so values >= 2^63 gave 9223372036854774784 here and
// INT64_MAX on the host.)
__global__ void CastKernel(const void* src, DType st, void* dst, DType dt, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    CastElement(src, st, dst, dt, i);
}

unsigned GridFor(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < 4096 ? (blocks < 1 ? 1 : blocks) : 4096);  // grid-stride beyond this
}

}  // namespace

Status FillDevice(int device, void* dst, const void* pattern, size_t pattern_bytes, int64_t n) {
  if (n == 0) return Status::Ok();
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  switch (pattern_bytes) {
    case 1: FillKernel<<<GridFor(n, 256), 256, 0, stream>>>(static_cast<uint8_t*>(dst), *static_cast<const uint8_t*>(pattern), n); break;
    case 2: FillKernel<<<GridFor(n, 256), 256, 0, stream>>>(static_cast<uint16_t*>(dst), *static_cast<const uint16_t*>(pattern), n); break;
    case 4: FillKernel<<<GridFor(n, 256), 256, 0, stream>>>(static_cast<uint32_t*>(dst), *static_cast<const uint32_t*>(pattern), n); break;
    case 8: FillKernel<<<GridFor(n, 256), 256, 0, stream>>>(static_cast<uint64_t*>(dst), *static_cast<const uint64_t*>(pattern), n); break;
    default: return Bad("fill: bad element size");
  }
  RLK_CUDA_RETURN(cudaGetLastError(), "fill kernel launch");
  return Status::Ok();
}

Status CastDevice(int device, const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  if (n == 0) return Status::Ok();
  cudaStream_t stream;
  Status st = StreamOf(device, &stream);
  if (!st.ok()) return st;
  if (src_dtype == dst_dtype) {
    RLK_CUDA_RETURN(cudaMemcpyAsync(dst, src, size_t(n) * ElementSize(src_dtype), cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync(D2D)");
    return Status::Ok();
  }
  CastKernel<<<GridFor(n, 256), 256, 0, stream>>>(src, src_dtype, dst, dst_dtype, n);
  RLK_CUDA_RETURN(cudaGetLastError(), "cast kernel launch");
  return Status::Ok();
}

}  // namespace rlk
