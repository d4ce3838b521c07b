// klPenalty binding: native.klPenalty(logprobs, refLogprobs, mask | null,
// estimatorCode) -> [values, grad]. Checks everything before allocating.
#include <napi.h>

#include "checks.h"
#include "rlk/kl_penalty.h"
#include "rlk/runtime.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

constexpr const char* kFn = "klPenalty";

Napi::Value KlPenaltyBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Tensor* logp = TensorArg(info, 0, kFn, "logprobs");
  Tensor* ref = TensorArg(info, 1, kFn, "refLogprobs");
  Tensor* mask = OptionalTensorArg(info, 2, kFn, "mask");
  int32_t estimator = int32_t(IntegerArg(info, 3, kFn, "estimator", 0, kKlNumEstimators - 1));
  RequireDType(env, logp, {DType::kFloat32}, kFn, "logprobs");
  RequireDType(env, ref, {DType::kFloat32}, kFn, "refLogprobs");
  RequireDevice(env, ref, logp->device(), kFn, "refLogprobs", "logprobs");
  RequireShape(env, ref, logp->shape(), kFn, "refLogprobs");
  if (mask) {
    RequireDType(env, mask, {DType::kUInt8}, kFn, "mask");
    RequireDevice(env, mask, logp->device(), kFn, "mask", "logprobs");
    RequireShape(env, mask, logp->shape(), kFn, "mask");
  }
  const int device = logp->device();
#if !RLK_WITH_CUDA
  if (device != kCpu) ThrowTypeError(env, std::string(kFn) + ": this build has no CUDA kernels");
#endif
  const size_t bytes = size_t(logp->numel()) * sizeof(float);
  auto values = AllocStorage(env, kFn, bytes, device);
  auto grad = AllocStorage(env, kFn, bytes, device);
  KlPenaltyParams p{};
  p.logprobs = static_cast<const float*>(logp->data());
  p.ref_logprobs = static_cast<const float*>(ref->data());
  p.mask = mask ? static_cast<const uint8_t*>(mask->data()) : nullptr;
  p.values = static_cast<float*>(values->data);
  p.grad = static_cast<float*>(grad->data);
  p.n = logp->numel();
  p.estimator = estimator;
  Status st;
  if (device == kCpu) {
    st = cpu::KlPenalty(p);
  } else {
#if RLK_WITH_CUDA
    p.device = device;
    st = DeviceStream(device, &p.stream);
    if (st.ok()) st = cuda::KlPenalty(p);
#endif
  }
  ThrowIfError(env, st, kFn);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t(0), Tensor::Wrap(env, values, logp->shape(), DType::kFloat32));
  out.Set(uint32_t(1), Tensor::Wrap(env, grad, logp->shape(), DType::kFloat32));
  return out;
}

}  // namespace

void InitKlPenalty(Napi::Env env, Napi::Object exports) {
  exports.Set("klPenalty", Napi::Function::New(env, KlPenaltyBinding, "klPenalty"));
}

}  // namespace rlk::addon
