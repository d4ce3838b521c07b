// The runtime's device half for builds without nvcc: every call explains
// that this binary has no CUDA code.
#include "rlk/runtime.h"

namespace rlk {
namespace {
const Status kNoCuda{Status::kUnsupported, "this rlkernels binary was built without CUDA (a CPU-only build: nvcc was not found, or RLK_CPU_ONLY was set)"};
}

CudaInfo GetCudaInfo() {
  CudaInfo info;
  info.error = kNoCuda.message;
  return info;
}
Status DeviceAlloc(int, size_t bytes, void** out) {
  *out = nullptr;
  return bytes == 0 ? Status::Ok() : kNoCuda;
}
void DeviceFree(int, void*) {}
DeviceMemoryStats GetDeviceMemoryStats(int) { return {}; }
void DeviceEmptyCache(int) {}
Status DeviceStream(int, void**) { return kNoCuda; }
Status DeviceSynchronize(int) { return kNoCuda; }
Status CopyHostToDevice(int, void*, const void*, size_t) { return kNoCuda; }
Status CopyDeviceToHost(int, void*, const void*, size_t) { return kNoCuda; }
Status CopyDeviceToDevice(int, void*, int, const void*, size_t) { return kNoCuda; }
Status FillDevice(int, void*, const void*, size_t, int64_t) { return kNoCuda; }
Status CastDevice(int, const void*, DType, void*, DType, int64_t) { return kNoCuda; }
Status DeviceErrorWord(int, int32_t** word) {
  *word = nullptr;
  return kNoCuda;
}
Status TakeDeviceError(int, int32_t* code) {
  *code = 0;
  return kNoCuda;
}

}  // namespace rlk
