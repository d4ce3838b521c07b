// What every kernel binding does around a launch: make its outputs and find
// the device's stream and error word. One copy for all bindings.
#pragma once
#include <napi.h>

#include <vector>

#include "checks.h"
#include "rlk/runtime.h"
#include "tensor.h"

namespace rlk::addon {

// An output tensor and its memory: `out` when the caller gave one (already
// checked), else a new tensor on `device`.
struct Output {
  Napi::Value value;
  void* data = nullptr;
};
inline Output MakeOutput(Napi::Env env, const char* fn, Tensor* out, Napi::Value out_value, const std::vector<int64_t>& shape,
                         DType dtype, int device) {
  if (out) return {out_value, out->data()};
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto storage = AllocStorage(env, fn, size_t(n) * ElementSize(dtype), device);
  void* data = storage->data;
  return {Tensor::Wrap(env, storage, shape, dtype), data};
}
inline Output NewOutput(Napi::Env env, const char* fn, const std::vector<int64_t>& shape, DType dtype, int device) {
  return MakeOutput(env, fn, nullptr, Napi::Value(), shape, dtype, device);
}

// The stream and error word of a CUDA device (null for the CPU).
struct Queue {
  int32_t* error_word = nullptr;
  void* stream = nullptr;
};
inline Queue DeviceQueue(Napi::Env env, const char* fn, int device) {
  Queue q;
  if (device == kCpu) return q;
#if RLK_WITH_CUDA
  ThrowIfError(env, DeviceStream(device, &q.stream), fn);
  ThrowIfError(env, DeviceErrorWord(device, &q.error_word), fn);
#else
  ThrowTypeError(env, std::string(fn) + ": this build has no CUDA kernels");
#endif
  return q;
}

}  // namespace rlk::addon
