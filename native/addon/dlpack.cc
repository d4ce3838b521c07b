// Zero-copy exchange of core tensors with other frameworks through DLPack
// (DESIGN 7: `torch.fromCore(t)` and `t.toCore()`), kept out of tensor.cc.
//   toDLPack(tensor) -> External (a DLPackCapsule, see rlk/dlpack_capsule.h)
//   fromDLPack(external) -> tensor sharing the producer's memory
// A core tensor exported keeps its storage alive through the DLPack context;
// an imported one holds the producer's DLManagedTensor until its storage goes.
#include <napi.h>

#include <algorithm>
#include <string>
#include <vector>

#include "checks.h"
#include "rlk/dlpack_capsule.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

// The DLPack ABI (dlpack.h v0.8, unversioned DLManagedTensor), the subset used.
namespace dl {
enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kBool = 6 };
struct Device { int32_t device_type; int32_t device_id; };
struct DataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};
}  // namespace dl

bool ToDLType(DType t, dl::DataType* out) {
  switch (t) {
    case DType::kFloat32: *out = {dl::kFloat, 32, 1}; return true;
    case DType::kBFloat16: *out = {dl::kBfloat, 16, 1}; return true;
    case DType::kFloat16: *out = {dl::kFloat, 16, 1}; return true;
    case DType::kInt32: *out = {dl::kInt, 32, 1}; return true;
    case DType::kInt64: *out = {dl::kInt, 64, 1}; return true;
    case DType::kUInt8: *out = {dl::kUInt, 8, 1}; return true;
  }
  return false;
}

bool FromDLType(dl::DataType d, DType* out) {
  if (d.lanes != 1) return false;
  if (d.code == dl::kFloat && d.bits == 32) *out = DType::kFloat32;
  else if (d.code == dl::kBfloat && d.bits == 16) *out = DType::kBFloat16;
  else if (d.code == dl::kFloat && d.bits == 16) *out = DType::kFloat16;
  else if (d.code == dl::kInt && d.bits == 32) *out = DType::kInt32;
  else if (d.code == dl::kInt && d.bits == 64) *out = DType::kInt64;
  else if (d.code == dl::kUInt && d.bits == 8) *out = DType::kUInt8;
  else return false;
  return true;
}

std::string DLTypeName(dl::DataType d) {
  const char* k = d.code == dl::kInt ? "int" : d.code == dl::kUInt ? "uint" : d.code == dl::kFloat ? "float"
                : d.code == dl::kBfloat ? "bfloat" : d.code == dl::kBool ? "bool" : "code";
  std::string s = std::string(k) + std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

// What an exported tensor's DLManagedTensor owns.
struct ExportContext {
  dl::ManagedTensor managed{};
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape, strides;
};

void DeleteExport(dl::ManagedTensor* m) { delete static_cast<ExportContext*>(m->manager_ctx); }

Napi::Value ToDLPack(const Napi::CallbackInfo& info) {
  const char* fn = "toDLPack";
  Napi::Env env = info.Env();
  Tensor* t = TensorArg(info, 0, fn, "tensor");
  auto* ctx = new ExportContext();
  ctx->storage = t->storage();
  ctx->shape = t->shape();
  ctx->strides.assign(ctx->shape.size(), 1);
  for (int64_t d = int64_t(ctx->shape.size()) - 2; d >= 0; --d)
    ctx->strides[size_t(d)] = ctx->strides[size_t(d) + 1] * std::max<int64_t>(ctx->shape[size_t(d) + 1], 1);
  dl::Tensor& x = ctx->managed.dl_tensor;
  x.data = t->data();
  x.device = t->device() == kCpu ? dl::Device{dl::kCPU, 0} : dl::Device{dl::kCUDA, t->device()};
  x.ndim = int32_t(ctx->shape.size());
  ToDLType(t->dtype(), &x.dtype);
  x.shape = ctx->shape.data();
  x.strides = ctx->strides.data();
  x.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = DeleteExport;
  auto* cap = new DLPackCapsule{&ctx->managed};
  auto ext = Napi::External<DLPackCapsule>::New(env, cap, [](Napi::Env, DLPackCapsule* c) {
    if (c->managed) {
      auto* m = static_cast<dl::ManagedTensor*>(c->managed);
      if (m->deleter) m->deleter(m);
    }
    delete c;
  });
  napi_type_tag_object(env, ext, &kDLPackCapsuleTag);
  return ext;
}

// A storage over memory someone else owns: releasing it calls their deleter
// instead of freeing (Storage's destructor frees nothing once data is null).
std::shared_ptr<Storage> ForeignStorage(dl::ManagedTensor* m, void* data, size_t bytes, int device) {
  return std::shared_ptr<Storage>(new Storage(data, bytes, device), [m](Storage* s) {
    s->data = nullptr;
    delete s;
    if (m->deleter) m->deleter(m);
  });
}

Napi::Value FromDLPack(const Napi::CallbackInfo& info) {
  const char* fn = "fromDLPack";
  Napi::Env env = info.Env();
  bool tagged = false;
  if (info.Length() < 1 || !info[0].IsExternal() ||
      napi_check_object_type_tag(env, info[0], &kDLPackCapsuleTag, &tagged) != napi_ok || !tagged)
    ThrowTypeError(env, std::string(fn) + ": capsule must be a DLPack capsule from toDLPack, got " + Describe(info[0]));
  auto* cap = info[0].As<Napi::External<DLPackCapsule>>().Data();
  if (!cap->managed) ThrowTypeError(env, std::string(fn) + ": capsule was already consumed (a DLPack capsule is used once)");
  auto* m = static_cast<dl::ManagedTensor*>(cap->managed);
  const dl::Tensor& x = m->dl_tensor;
  // Every check before taking ownership: a refused capsule stays with its producer.
  int device = kCpu;
  if (x.device.device_type == dl::kCUDA) device = x.device.device_id;
  else if (x.device.device_type != dl::kCPU)
    ThrowTypeError(env, std::string(fn) + ": tensor must be on the CPU or a CUDA device, got DLPack device type " +
                            std::to_string(x.device.device_type));
#if !RLK_WITH_CUDA
  if (device != kCpu) ThrowTypeError(env, std::string(fn) + ": tensor is on cuda:" + std::to_string(device) + " but this build has no CUDA kernels");
#endif
  DType dtype;
  if (!FromDLType(x.dtype, &dtype))
    ThrowTypeError(env, std::string(fn) + ": tensor dtype must be float32, bfloat16, float16, int32, int64 or uint8, got " +
                            DLTypeName(x.dtype) + (x.dtype.code == dl::kBool ? " (convert masks to uint8)" : ""));
  if (x.ndim < 0 || x.ndim > 16) ThrowRangeError(env, std::string(fn) + ": tensor must have at most 16 dimensions, got " + std::to_string(x.ndim));
  std::vector<int64_t> shape(x.shape, x.shape + x.ndim);
  int64_t numel = 1, expect = 1;
  for (int64_t d : shape) {
    if (d < 0) ThrowRangeError(env, std::string(fn) + ": tensor has a negative size");
    numel *= d;
  }
  if (x.strides && numel > 1) {
    for (int32_t d = x.ndim - 1; d >= 0; --d) {
      if (shape[size_t(d)] != 1 && x.strides[d] != expect)
        ThrowTypeError(env, std::string(fn) + ": tensor must be contiguous (row-major), got shape " + ShapeString(shape) +
                                " with strides that are not; call .contiguous() first");
      expect *= shape[size_t(d)];
    }
  }
  void* data = static_cast<char*>(x.data) + x.byte_offset;
  cap->managed = nullptr;
  auto storage = ForeignStorage(m, data, size_t(numel) * ElementSize(dtype), device);
  return Tensor::Wrap(env, std::move(storage), std::move(shape), dtype);
}

}  // namespace

void InitDLPack(Napi::Env env, Napi::Object exports) {
  exports.Set("toDLPack", Napi::Function::New(env, ToDLPack, "toDLPack"));
  exports.Set("fromDLPack", Napi::Function::New(env, FromDLPack, "fromDLPack"));
}

}  // namespace rlk::addon
