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
  p.mode = ConfigCode(env, cfg, "mode", 0, kPolicyNumModes - 1);
  p.aggregation = ConfigCode(env, cfg, "aggregation", 0, kAggTokenSum);
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
  p.kl_bias_correction = ConfigCode(env, cfg, "klBiasCorrection", 0, 1);
  p.rollout_source = ConfigCode(env, cfg, "rolloutSource", 0, 1);
  p.is_normalize = ConfigCode(env, cfg, "isNormalize", 0, 1);
  p.is_has_lower = ConfigCode(env, cfg, "isHasLower", 0, 1);
  p.off_policy = ConfigCode(env, cfg, "offPolicy", 0, 1);
  p.off_policy_delta = ConfigNumber(env, cfg, "offPolicyDelta");
  p.ratio_cap = ConfigNumber(env, cfg, "ratioCap");
  p.tau_pos = ConfigNumber(env, cfg, "tauPos");
  p.tau_neg = ConfigNumber(env, cfg, "tauNeg");
  p.beta = ConfigNumber(env, cfg, "beta");
  p.cov_ratio = ConfigNumber(env, cfg, "covRatio");
  p.cov_lb = ConfigNumber(env, cfg, "covLb");
  p.cov_ub = ConfigNumber(env, cfg, "covUb");
  p.cov_seed = ConfigNumber(env, cfg, "covSeed");
  if (p.cov_seed != std::floor(p.cov_seed) || p.cov_seed < 0 || p.cov_seed >= 4294967296.0)
    ThrowRangeError(env, std::string(kFn) + ": seed must be an integer in [0, 2^32), got " + Describe(cfg.Get("covSeed")));
  p.kl_cov_coef = ConfigNumber(env, cfg, "klCovCoef");
  p.k_pos = ConfigNumber(env, cfg, "kPos");
  p.lambda_pos = ConfigNumber(env, cfg, "lambdaPos");
  p.k_neg = ConfigNumber(env, cfg, "kNeg");
  p.lambda_neg = ConfigNumber(env, cfg, "lambdaNeg");
  // Rejection criteria: flat [estimator, agg, lo, hi] quadruples; lo / hi may be +-inf.
  {
    Napi::Value cv = cfg.Get("criteria");
    if (!cv.IsArray()) ThrowTypeError(env, std::string(kFn) + ": config.criteria must be an array, got " + Describe(cv));
    Napi::Array ca = cv.As<Napi::Array>();
    if (ca.Length() % 4 != 0 || ca.Length() / 4 > uint32_t(kMaxRejectCriteria))
      ThrowRangeError(env, std::string(kFn) + ": rolloutCorrection.reject must hold at most " + std::to_string(kMaxRejectCriteria) +
                               " criteria, got " + std::to_string(ca.Length() / 4));
    p.num_criteria = int32_t(ca.Length() / 4);
    for (int32_t c = 0; c < p.num_criteria; ++c) {
      Napi::Value e = ca.Get(uint32_t(4 * c)), a = ca.Get(uint32_t(4 * c + 1)), lo = ca.Get(uint32_t(4 * c + 2)), hi = ca.Get(uint32_t(4 * c + 3));
      if (!e.IsNumber() || !a.IsNumber() || !lo.IsNumber() || !hi.IsNumber())
        ThrowTypeError(env, std::string(kFn) + ": config.criteria must hold numbers");
      const double ed = e.As<Napi::Number>().DoubleValue(), ad = a.As<Napi::Number>().DoubleValue();
      if (!(ed == 1 || ed == 2 || ed == 3) || !(ad == 0 || ad == 1 || ad == 2 || ad == 3))
        ThrowRangeError(env, std::string(kFn) + ": config.criteria holds an unknown criterion code");
      p.crit_estimator[c] = int32_t(ed);
      p.crit_agg[c] = int32_t(ad);
      p.crit_lo[c] = lo.As<Napi::Number>().DoubleValue();
      p.crit_hi[c] = hi.As<Napi::Number>().DoubleValue();
      if (std::isnan(p.crit_lo[c]) || std::isnan(p.crit_hi[c]))
        ThrowRangeError(env, std::string(kFn) + ": config.criteria bounds must not be NaN");
    }
  }

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
  if ((p.mode == kPolicyKlCov || p.mode == kPolicyClipCov) && N >= (int64_t(1) << 32))
    ThrowRangeError(env, std::string(kFn) + ": logprobs must hold fewer than 2^32 tokens in the covariance modes, got " + std::to_string(N));
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
  const bool needs_rollout = (p.tis_level != kTisNone || p.num_criteria > 0) && p.mode != kPolicyReinforce;
  if (needs_rollout && !rollout)
    ThrowTypeError(env, std::string(kFn) + ": rolloutLogprobs must be a tensor when tis or rolloutCorrection is given, got undefined");
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
  if (!needs_rollout && !p.off_policy) p.rollout_logprobs = nullptr;
  if (p.mode == kPolicyReinforce) p.rollout_logprobs = nullptr;
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
