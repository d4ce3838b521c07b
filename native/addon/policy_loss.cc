// policyLoss binding:
//   native.policyLoss(logprobs, oldLogprobs, advantages, mask | null,
//                     rolloutLogprobs | null, refLogprobs | null,
//                     entropy | null, cuSeqlens | null, config)
//   -> [loss, grad, gradEntropy | undefined, stats]
// `config` holds the codes and scalars of PolicyLossParams (src/policy_loss.ts
// fills it). Everything is checked before anything is allocated.
#include <napi.h>

#include <cmath>
#include <string>

#include "checks.h"
#include "rlk/policy_loss.h"
#include "rlk/runtime.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

constexpr const char* kFn = "policyLoss";

double ConfigNumber(Napi::Env env, Napi::Object cfg, const char* key) {
  Napi::Value v = cfg.Get(key);
  if (!v.IsNumber()) ThrowTypeError(env, std::string(kFn) + ": config." + key + " must be a number, got " + Describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) ThrowRangeError(env, std::string(kFn) + ": config." + key + " must be finite, got " + Describe(v));
  return d;
}

int32_t ConfigCode(Napi::Env env, Napi::Object cfg, const char* key, int32_t lo, int32_t hi) {
  double d = ConfigNumber(env, cfg, key);
  if (d != std::floor(d) || d < lo || d > hi)
    ThrowRangeError(env, std::string(kFn) + ": config." + key + " must be an integer in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "], got " + Describe(cfg.Get(key)));
  return int32_t(d);
}

void RequireTokens(Napi::Env env, const Tensor* t, const Tensor* logp, const char* name) {
  RequireDType(env, t, {DType::kFloat32}, kFn, name);
  RequireDevice(env, t, logp->device(), kFn, name, "logprobs");
  RequireShape(env, t, logp->shape(), kFn, name);
}

Napi::Value PolicyLossBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Tensor* logp = TensorArg(info, 0, kFn, "logprobs");
  Tensor* old = TensorArg(info, 1, kFn, "oldLogprobs");
  Tensor* adv = TensorArg(info, 2, kFn, "advantages");
  Tensor* mask = OptionalTensorArg(info, 3, kFn, "mask");
  Tensor* rollout = OptionalTensorArg(info, 4, kFn, "rolloutLogprobs");
  Tensor* ref = OptionalTensorArg(info, 5, kFn, "kl.refLogprobs");
  Tensor* ent = OptionalTensorArg(info, 6, kFn, "entropy.values");
  Tensor* cu = OptionalTensorArg(info, 7, kFn, "cuSeqlens");
  if (!info[8].IsObject()) ThrowTypeError(env, std::string(kFn) + ": config must be an object, got " + Describe(info[8]));
  Napi::Object cfg = info[8].As<Napi::Object>();

  PolicyLossParams p{};
  p.mode = ConfigCode(env, cfg, "mode", 0, 1);
  p.aggregation = ConfigCode(env, cfg, "aggregation", 0, 3);
  p.use_dual_clip = ConfigCode(env, cfg, "useDualClip", 0, 1);
  p.tis_level = ConfigCode(env, cfg, "tisLevel", 0, 3);
  p.tis_mode = ConfigCode(env, cfg, "tisMode", 0, 1);
  p.use_veto = ConfigCode(env, cfg, "useVeto", 0, 1);
  p.kl_estimator = ConfigCode(env, cfg, "klEstimator", 0, kKlNumEstimators - 1);
  p.clip_low = ConfigNumber(env, cfg, "clipLow");
  p.clip_high = ConfigNumber(env, cfg, "clipHigh");
  p.dual_clip = ConfigNumber(env, cfg, "dualClip");
  p.token_count = ConfigNumber(env, cfg, "tokenCount");
  p.sequence_count = ConfigNumber(env, cfg, "sequenceCount");
  p.loss_scale = ConfigNumber(env, cfg, "lossScale");
  p.dp_size = ConfigNumber(env, cfg, "dpSize");
  p.tis_upper = ConfigNumber(env, cfg, "tisUpper");
  p.tis_lower = ConfigNumber(env, cfg, "tisLower");
  p.log_veto = ConfigNumber(env, cfg, "logVeto");
  p.kl_coef = ConfigNumber(env, cfg, "klCoef");
  p.entropy_coef = ConfigNumber(env, cfg, "entropyCoef");

  RequireDType(env, logp, {DType::kFloat32}, kFn, "logprobs");
  RequireTokens(env, old, logp, "oldLogprobs");
  const int device = logp->device();
  const int64_t N = logp->numel();
  int64_t B = 0, T = 0;
  if (cu) {
    RequireDType(env, cu, {DType::kInt32}, kFn, "cuSeqlens");
    RequireDevice(env, cu, device, kFn, "cuSeqlens", "logprobs");
    if (logp->dim() != 1) ThrowRangeError(env, std::string(kFn) + ": logprobs must be 1-D [N] with cuSeqlens, got shape " + ShapeString(logp->shape()));
    if (cu->dim() != 1 || cu->numel() < 1)
      ThrowRangeError(env, std::string(kFn) + ": cuSeqlens must have shape [B + 1], got " + ShapeString(cu->shape()));
    B = cu->numel() - 1;
  } else {
    if (logp->dim() != 2) ThrowRangeError(env, std::string(kFn) + ": logprobs must be 2-D [B, T] without cuSeqlens, got shape " + ShapeString(logp->shape()));
    B = logp->size(0);
    T = logp->size(1);
  }
  RequireDType(env, adv, {DType::kFloat32}, kFn, "advantages");
  RequireDevice(env, adv, device, kFn, "advantages", "logprobs");
  if (adv->shape() == logp->shape()) {
    p.adv_per_sequence = 0;
  } else if (adv->dim() == 1 && adv->size(0) == B) {
    p.adv_per_sequence = 1;
  } else {
    ThrowRangeError(env, std::string(kFn) + ": advantages must have shape " + ShapeString(logp->shape()) + " or [" +
                             std::to_string(B) + "], got " + ShapeString(adv->shape()));
  }
  if (mask) {
    RequireDType(env, mask, {DType::kUInt8}, kFn, "mask");
    RequireDevice(env, mask, device, kFn, "mask", "logprobs");
    RequireShape(env, mask, logp->shape(), kFn, "mask");
  }
  if (p.tis_level != kTisNone && !rollout)
    ThrowTypeError(env, std::string(kFn) + ": rolloutLogprobs must be a tensor when tis is given, got undefined");
  if (rollout) RequireTokens(env, rollout, logp, "rolloutLogprobs");
  if (ref) RequireTokens(env, ref, logp, "kl.refLogprobs");
  if (ent) RequireTokens(env, ent, logp, "entropy.values");
#if !RLK_WITH_CUDA
  if (device != kCpu) ThrowTypeError(env, std::string(kFn) + ": this build has no CUDA kernels");
#endif

  auto loss = AllocStorage(env, kFn, sizeof(float), device);
  auto grad = AllocStorage(env, kFn, size_t(N) * sizeof(float), device);
  std::shared_ptr<Storage> grad_ent;
  if (ent) grad_ent = AllocStorage(env, kFn, size_t(N) * sizeof(float), device);
  auto stats = AllocStorage(env, kFn, kPolicyStatCount * sizeof(float), device);

  p.logprobs = static_cast<const float*>(logp->data());
  p.old_logprobs = static_cast<const float*>(old->data());
  p.advantages = static_cast<const float*>(adv->data());
  p.mask = mask ? static_cast<const uint8_t*>(mask->data()) : nullptr;
  p.rollout_logprobs = rollout ? static_cast<const float*>(rollout->data()) : nullptr;
  if (p.tis_level == kTisNone) p.rollout_logprobs = nullptr;
  p.ref_logprobs = ref ? static_cast<const float*>(ref->data()) : nullptr;
  p.entropy = ent ? static_cast<const float*>(ent->data()) : nullptr;
  p.cu_seqlens = cu ? static_cast<const int32_t*>(cu->data()) : nullptr;
  p.loss = static_cast<float*>(loss->data);
  p.grad = static_cast<float*>(grad->data);
  p.grad_entropy = grad_ent ? static_cast<float*>(grad_ent->data) : nullptr;
  p.stats = static_cast<float*>(stats->data);
  p.num_seqs = B;
  p.seq_len = T;
  p.num_tokens = N;

  Status st;
  if (device == kCpu) {
    st = cpu::PolicyLoss(p);
  } else {
#if RLK_WITH_CUDA
    p.device = device;
    st = DeviceStream(device, &p.stream);
    if (st.ok()) st = DeviceErrorWord(device, &p.error_word);
    if (st.ok()) st = cuda::PolicyLoss(p);
#endif
  }
  ThrowIfError(env, st, kFn);

  Napi::Array out = Napi::Array::New(env, 4);
  out.Set(uint32_t(0), Tensor::Wrap(env, loss, {}, DType::kFloat32));
  out.Set(uint32_t(1), Tensor::Wrap(env, grad, logp->shape(), DType::kFloat32));
  out.Set(uint32_t(2), grad_ent ? Napi::Value(Tensor::Wrap(env, grad_ent, logp->shape(), DType::kFloat32)) : env.Undefined());
  out.Set(uint32_t(3), Tensor::Wrap(env, stats, {kPolicyStatCount}, DType::kFloat32));
  return out;
}

}  // namespace

void InitPolicyLoss(Napi::Env env, Napi::Object exports) {
  exports.Set("policyLoss", Napi::Function::New(env, PolicyLossBinding, "policyLoss"));
}

}  // namespace rlk::addon
