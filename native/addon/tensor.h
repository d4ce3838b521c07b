// The core tensor: contiguous row-major storage on the host or one CUDA
// device, shared by views (reshape, no-op to()) so a child keeps its parent's
// memory alive. Metadata lives here, never trusted from JS.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <vector>

#include "rlk/common.h"
#include "rlk/runtime.h"

namespace rlk::addon {

constexpr int kCpu = -1;  // device index of host memory

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  int device = kCpu;
  Storage(void* d, size_t b, int dev);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// Allocates on `device`; throws a JS RangeError naming `fn` when the memory
// cannot be had.
std::shared_ptr<Storage> AllocStorage(Napi::Env env, const char* fn, size_t bytes, int device);

class Tensor : public Napi::ObjectWrap<Tensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<Storage> storage, std::vector<int64_t> shape, DType dtype);
  static bool IsTensor(Napi::Value v);
  static Tensor* Unwrap(Napi::Object o) { return Napi::ObjectWrap<Tensor>::Unwrap(o); }

  explicit Tensor(const Napi::CallbackInfo& info);
  ~Tensor() override;

  void* data() const { return storage_ ? storage_->data : nullptr; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const { return shape_[size_t(d < 0 ? d + dim() : d)]; }
  DType dtype() const { return dtype_; }
  int device() const { return device_; }
  bool disposed() const { return disposed_; }
  size_t nbytes() const { return size_t(numel_) * ElementSize(dtype_); }

 private:
  void Release();
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value GetShape(const Napi::CallbackInfo& info);
  Napi::Value GetDType(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value ReadAsync(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Reshape(const Napi::CallbackInfo& info);

  std::shared_ptr<Storage> storage_;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kFloat32;
  int device_ = kCpu;
  bool disposed_ = false;
  int64_t external_bytes_ = 0;  // reported to V8 so GC sees host memory pressure
};

// Live tensors and bytes, per device (slot 0 is the host, slot d + 1 device d).
struct LiveCounters {
  std::atomic<int64_t> tensors{0};
  std::atomic<int64_t> bytes{0};
};
constexpr int kMaxCounterSlots = 65;
LiveCounters& Counters(int device);

// What one Node environment (the main thread, each worker thread) holds: its
// JS objects must never be used from another environment's thread, so they
// are napi instance data, not process globals (worker threads that loaded
// the addon had aborted the process in V8's locking check).
struct EnvData {
  Napi::FunctionReference tensor_ctor;
  Napi::ObjectReference recycle;        // src/tensor.ts's array of disposed NativeTensors
  Napi::FunctionReference disposed_ctor;  // the DisposedError class
};
EnvData& AddonData(Napi::Env env);

// Tensor factories and runtime functions, registered on the addon's exports.
void InitTensorBindings(Napi::Env env, Napi::Object exports);

}  // namespace rlk::addon
