// Bindings of the group-advantages family: check every argument, allocate the
// outputs, then run (CPU) or enqueue (CUDA). The TypeScript layer owns the
// defaults and option names; what memory safety depends on (dtypes, shapes,
// devices, id ranges on the host) is checked again here.
#include <napi.h>

#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "rlk/group_advantages.h"
#include "rlk/runtime.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

constexpr int64_t kMaxGroups = std::numeric_limits<int32_t>::max();

struct Batch {
  GroupAdvantagesParams p;
  std::vector<double> weights;  // gdpo's rewardWeights (p points here)
  int device = kCpu;
};

double FiniteArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double lo, double hi) {
  double v = NumberArg(info, i, fn, name);
  if (!std::isfinite(v) || v < lo || v > hi)
    ThrowRangeError(info.Env(), std::string(fn) + ": " + name + " must be a finite number in [" +
                                    Describe(Napi::Number::New(info.Env(), lo)) + ", " +
                                    Describe(Napi::Number::New(info.Env(), hi)) + "], got " + Describe(info[i]));
  return v;
}

// Arguments [0, kBatchArgs): rewards, groupIds|null, groupSize, numGroups
// (-1: the groups found on the CPU, B on CUDA), taskIds|null, method,
// mask|null, tokenCounts|null, eps, alpha, gamma, reweight, scale,
// rewardWeights (Float64Array)|null, baselineRewards|null, rank.
constexpr size_t kBatchArgs = 16;

Batch ParseBatch(const Napi::CallbackInfo& info, const char* fn, bool cross_rank) {
  Napi::Env env = info.Env();
  Batch b;
  GroupAdvantagesParams& p = b.p;
  p.method = AdvantageMethod(IntegerArg(info, 5, fn, "method", 0, kNumAdvantageMethods - 1));
  const bool gdpo = p.method == AdvantageMethod::kGdpo;
  Tensor* rewards = TensorArg(info, 0, fn, "rewards");
  RequireDType(env, rewards, {DType::kFloat32}, fn, "rewards");
  if (gdpo ? rewards->dim() != 2 || rewards->size(1) < 1 : rewards->dim() != 1)
    ThrowRangeError(env, std::string(fn) + ": rewards must have shape " + (gdpo ? "[B, K] (K >= 1)" : "[B]") + ", got " +
                             ShapeString(rewards->shape()));
  b.device = rewards->device();
  p.batch = rewards->size(0);
  p.cols = gdpo ? rewards->size(1) : 1;
  p.rewards = static_cast<const float*>(rewards->data());
  const std::vector<int64_t> row_shape{p.batch};

  Tensor* ids = OptionalTensorArg(info, 1, fn, "groupIds");
  int64_t group_size = IntegerArg(info, 2, fn, "groupSize", 0, int64_t(1) << 53);
  int64_t num_groups = IntegerArg(info, 3, fn, "numGroups", -1, kMaxGroups);
  if ((ids == nullptr) == (group_size == 0))
    ThrowTypeError(env, std::string(fn) + ": exactly one of groupIds and groupSize must be given");
  if (ids) {
    RequireDType(env, ids, {DType::kInt32, DType::kInt64}, fn, "groupIds");
    RequireDevice(env, ids, b.device, fn, "groupIds", "rewards");
    RequireShape(env, ids, row_shape, fn, "groupIds");
    p.group_ids = ids->data();
    p.group_ids_dtype = ids->dtype();
    if (num_groups < 0 && cross_rank)
      ThrowTypeError(env, std::string(fn) + ": numGroups is required in the cross-rank form");
    // On CUDA the count of distinct ids is not known on the host: B bounds it.
    if (num_groups < 0 && b.device != kCpu) num_groups = p.batch;
  } else {
    if (cross_rank) ThrowTypeError(env, std::string(fn) + ": groupSize is not supported in the cross-rank form");
    if (p.batch % group_size != 0)
      ThrowRangeError(env, std::string(fn) + ": groupSize " + std::to_string(group_size) +
                               " must divide the batch size B = " + std::to_string(p.batch));
    int64_t g = p.batch / group_size;
    if (num_groups >= 0 && num_groups != g)
      ThrowRangeError(env, std::string(fn) + ": numGroups must be B / groupSize = " + std::to_string(g) + ", got " +
                               std::to_string(num_groups));
    num_groups = g;
    p.group_size = group_size;
  }
  p.num_groups = num_groups;

  Tensor* tasks = OptionalTensorArg(info, 4, fn, "taskIds");
  if (tasks) {
    if (p.method != AdvantageMethod::kTmnReweight)
      ThrowTypeError(env, std::string(fn) + ": taskIds applies only to method 'tmn-reweight'");
    RequireDType(env, tasks, {DType::kInt32, DType::kInt64}, fn, "taskIds");
    RequireDevice(env, tasks, b.device, fn, "taskIds", "rewards");
    RequireShape(env, tasks, row_shape, fn, "taskIds");
    p.task_ids = tasks->data();
    p.task_ids_dtype = tasks->dtype();
  }
  Tensor* mask = OptionalTensorArg(info, 6, fn, "mask");
  Tensor* counts = OptionalTensorArg(info, 7, fn, "tokenCounts");
  if (mask && counts) ThrowTypeError(env, std::string(fn) + ": give at most one of mask and tokenCounts");
  if (AdvantageUsesTokens(p.method)) {
    if (!mask && !counts && !gdpo)
      ThrowTypeError(env, std::string(fn) + ": this method needs one of mask and tokenCounts");
  } else if (mask || counts) {
    ThrowTypeError(env, std::string(fn) + ": " + (mask ? "mask" : "tokenCounts") + " applies only to methods 'reinforce++', 'gdpo' and 'opo'");
  }
  if (mask) {
    RequireDType(env, mask, {DType::kUInt8}, fn, "mask");
    RequireDevice(env, mask, b.device, fn, "mask", "rewards");
    if (mask->dim() != 2 || mask->size(0) != p.batch)
      ThrowRangeError(env, std::string(fn) + ": mask must have shape [B = " + std::to_string(p.batch) + ", T], got " +
                               ShapeString(mask->shape()));
    p.mask = static_cast<const uint8_t*>(mask->data());
    p.seq_len = mask->size(1);
  }
  if (counts) {
    RequireDType(env, counts, {DType::kInt32, DType::kInt64}, fn, "tokenCounts");
    RequireDevice(env, counts, b.device, fn, "tokenCounts", "rewards");
    RequireShape(env, counts, row_shape, fn, "tokenCounts");
    p.token_counts = counts->data();
    p.token_counts_dtype = counts->dtype();
  }
  p.eps = FiniteArg(info, 8, fn, "eps", 0, 1e30);
  p.alpha = FiniteArg(info, 9, fn, "alpha", 0, 1);
  p.gamma = FiniteArg(info, 10, fn, "gamma", 0, 1e30);
  p.reweight = BoolArg(info, 11, fn, "reweight");
  p.scale = AdvantageScale(IntegerArg(info, 12, fn, "scale", 0, 2));
  if (p.scale != AdvantageScale::kGroup && p.method != AdvantageMethod::kGrpo &&
      !(p.method == AdvantageMethod::kGrpoPassk && p.scale == AdvantageScale::kNone))
    ThrowRangeError(env, std::string(fn) + ": scale applies only to methods 'grpo' and 'grpo-passk' (group or none)");
  if (!info[13].IsNull() && !info[13].IsUndefined()) {
    if (!gdpo) ThrowTypeError(env, std::string(fn) + ": rewardWeights applies only to method 'gdpo'");
    if (!info[13].IsTypedArray() || info[13].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      ThrowTypeError(env, std::string(fn) + ": rewardWeights must be a Float64Array, got " + Describe(info[13]));
    Napi::Float64Array w = info[13].As<Napi::Float64Array>();
    if (int64_t(w.ElementLength()) != p.cols)
      ThrowRangeError(env, std::string(fn) + ": rewardWeights must have length K = " + std::to_string(p.cols) + ", got " +
                               std::to_string(w.ElementLength()));
    b.weights.assign(w.Data(), w.Data() + w.ElementLength());
    for (double v : b.weights)
      if (!std::isfinite(v)) ThrowRangeError(env, std::string(fn) + ": rewardWeights must be finite numbers");
    p.reward_weights = b.weights.data();
  }
  Tensor* base = OptionalTensorArg(info, 14, fn, "baselineRewards");
  if ((p.method == AdvantageMethod::kRemax) != (base != nullptr))
    ThrowTypeError(env, std::string(fn) + ": baselineRewards " +
                            (base ? "applies only to method 'remax'" : "is required for method 'remax'"));
  if (base) {
    RequireDType(env, base, {DType::kFloat32}, fn, "baselineRewards");
    RequireDevice(env, base, b.device, fn, "baselineRewards", "rewards");
    RequireShape(env, base, row_shape, fn, "baselineRewards");
    p.baseline = static_cast<const float*>(base->data());
  }
  p.rank = IntegerArg(info, 15, fn, "rank", 0, kMaxGroups);
  return b;
}

const Tensor* StatsArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, const Batch& b,
                       int64_t rows, int64_t cols) {
  Tensor* t = TensorArg(info, i, fn, name);
  Napi::Env env = info.Env();
  RequireDType(env, t, {DType::kInt64}, fn, name);
  RequireDevice(env, t, b.device, fn, name, "rewards");
  RequireShape(env, t, {rows, PartialWidth(cols)}, fn, name);
  return t;
}

struct Outputs {
  std::shared_ptr<Storage> adv, inf;
  int64_t groups = 0;
};

Outputs AllocOutputs(Napi::Env env, const char* fn, Batch* b, bool informative) {
  Outputs o;
  o.adv = AllocStorage(env, fn, size_t(b->p.batch) * sizeof(float), b->device);
  b->p.advantages = static_cast<float*>(o.adv->data);
  if (informative) {
    o.groups = b->p.num_groups;
    o.inf = AllocStorage(env, fn, size_t(o.groups), b->device);
    b->p.informative = static_cast<uint8_t*>(o.inf->data);
  }
  return o;
}

Napi::Value ResultPair(Napi::Env env, const Outputs& o, const Batch& b) {
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t(0), Tensor::Wrap(env, o.adv, {b.p.batch}, DType::kFloat32));
  out.Set(uint32_t(1), Tensor::Wrap(env, o.inf, {o.groups}, DType::kUInt8));
  return out;
}

#if RLK_WITH_CUDA
int32_t* PrepareCuda(Napi::Env env, const char* fn, Batch* b) {
  int32_t* word = nullptr;
  ThrowIfError(env, DeviceStream(b->device, &b->p.stream), fn);
  ThrowIfError(env, DeviceErrorWord(b->device, &word), fn);
  return word;
}
#else
[[noreturn]] void NoCuda(Napi::Env env, const char* fn) {
  ThrowTypeError(env, std::string(fn) + ": this binary was built without CUDA");
}
#endif

// informative's buffer once the CPU numbering knows G (numGroups not given).
struct InformativeCtx {
  Napi::Env env;
  const char* fn;
  Outputs* out;
  std::exception_ptr error;
};
uint8_t* AllocInformative(int64_t groups, void* ctx) {
  auto* c = static_cast<InformativeCtx*>(ctx);
  try {
    c->out->groups = groups;
    c->out->inf = AllocStorage(c->env, c->fn, size_t(groups), kCpu);
    return static_cast<uint8_t*>(c->out->inf->data);
  } catch (...) {
    c->error = std::current_exception();
    return nullptr;
  }
}

// groupAdvantages(batch...) -> [advantages, informative]
Napi::Value GroupAdvantagesBinding(const Napi::CallbackInfo& info) {
  const char* fn = "groupAdvantages";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, fn, false);
  if (b.device == kCpu) {
    Outputs o = AllocOutputs(env, fn, &b, b.p.num_groups >= 0);
    InformativeCtx ctx{env, fn, &o, nullptr};
    Status st = cpu::GroupAdvantagesFwd(b.p, AllocInformative, &ctx);
    if (ctx.error) std::rethrow_exception(ctx.error);
    ThrowIfError(env, st, fn);
    return ResultPair(env, o, b);
  }
#if RLK_WITH_CUDA
  Outputs o = AllocOutputs(env, fn, &b, true);
  int32_t* word = PrepareCuda(env, fn, &b);
  ThrowIfError(env, cuda::GroupAdvantagesFwd(b.p, b.device, word), fn);
  return ResultPair(env, o, b);
#else
  NoCuda(env, fn);
#endif
}

// groupAdvantagesPartials(batch..., stats1|null) -> int64 [numGroups, W] or round 2
Napi::Value PartialsBinding(const Napi::CallbackInfo& info) {
  const char* fn = "groupAdvantagesPartials";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, fn, true);
  const Tensor* s1 = nullptr;
  int64_t rows = b.p.num_groups, cols = b.p.cols;
  if (!info[kBatchArgs].IsUndefined() && !info[kBatchArgs].IsNull()) {
    if (!AdvantageNeedsRound2(b.p.method, b.p.reweight))
      ThrowTypeError(env, std::string(fn) + ": this method has no second round");
    s1 = StatsArg(info, kBatchArgs, fn, "stats", b, b.p.num_groups, b.p.cols);
    rows = AdvantageRound2Rows(b.p.method, b.p.num_groups);
    cols = 1;
  }
  const int64_t width = PartialWidth(cols);
  auto out = AllocStorage(env, fn, size_t(rows * width) * sizeof(int64_t), b.device);
  const int64_t* s1p = s1 ? static_cast<const int64_t*>(s1->data()) : nullptr;
  int64_t* outp = static_cast<int64_t*>(out->data);
  if (b.device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesPartials(b.p, s1p, b.p.num_groups, outp), fn);
  } else {
#if RLK_WITH_CUDA
    int32_t* word = PrepareCuda(env, fn, &b);
    ThrowIfError(env, cuda::GroupAdvantagesPartials(b.p, s1p, b.p.num_groups, outp, b.device, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return Tensor::Wrap(env, out, {rows, width}, DType::kInt64);
}

// finalizeGroupAdvantages(batch..., stats1, stats2|null) -> [advantages, informative]
Napi::Value FinalizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "finalizeGroupAdvantages";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, fn, true);
  const Tensor* s1 = StatsArg(info, kBatchArgs, fn, "stats", b, b.p.num_groups, b.p.cols);
  const Tensor* s2 = nullptr;
  if (AdvantageNeedsRound2(b.p.method, b.p.reweight))
    s2 = StatsArg(info, kBatchArgs + 1, fn, "stats2", b, AdvantageRound2Rows(b.p.method, b.p.num_groups), 1);
  else if (!info[kBatchArgs + 1].IsUndefined() && !info[kBatchArgs + 1].IsNull())
    ThrowTypeError(env, std::string(fn) + ": stats2 must be omitted: this method has no second round");
  const int64_t* s1p = static_cast<const int64_t*>(s1->data());
  const int64_t* s2p = s2 ? static_cast<const int64_t*>(s2->data()) : nullptr;
  Outputs o = AllocOutputs(env, fn, &b, true);
  if (b.device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesFinalize(b.p, s1p, b.p.num_groups, s2p), fn);
  } else {
#if RLK_WITH_CUDA
    int32_t* word = PrepareCuda(env, fn, &b);
    ThrowIfError(env, cuda::GroupAdvantagesFinalize(b.p, s1p, b.p.num_groups, s2p, b.device, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return ResultPair(env, o, b);
}

// combineGroupAdvantagesPartials(parts: Tensor[]) where every part is int64
// [K, W] or one part is [R, K, W] (an all-gather's output) -> [K, W]
Napi::Value CombineBinding(const Napi::CallbackInfo& info) {
  const char* fn = "combineGroupAdvantagesPartials";
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowTypeError(env, std::string(fn) + ": partials must be an array of tensors, got " + Describe(info[0]));
  Napi::Array arr = info[0].As<Napi::Array>();
  if (arr.Length() == 0) ThrowRangeError(env, std::string(fn) + ": partials must hold at least one tensor, got none");
  std::vector<const int64_t*> parts;
  std::vector<int64_t> shape;
  int device = kCpu;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    std::string name = "partials[" + std::to_string(k) + "]";
    Napi::Value v = arr.Get(k);
    if (!Tensor::IsTensor(v)) ThrowTypeError(env, std::string(fn) + ": " + name + " must be a tensor, got " + Describe(v));
    Tensor* t = Tensor::Unwrap(v.As<Napi::Object>());
    if (t->disposed()) ThrowDisposed(env, fn, name.c_str());
    RequireDType(env, t, {DType::kInt64}, fn, name.c_str());
    if (k == 0) {
      device = t->device();
      bool stacked = arr.Length() == 1 && t->dim() == 3;
      const int64_t w = t->dim() >= 2 ? t->size(-1) : 0;
      if (!((t->dim() == 2 || stacked) && w > kPartialHead && (w - kPartialHead) % kPartialPerCol == 0))
        ThrowRangeError(env, std::string(fn) + ": " + name + " must have shape [K, W] or [R, K, W] with W = " +
                                 std::to_string(kPartialHead) + " + " + std::to_string(kPartialPerCol) +
                                 " x columns, got " + ShapeString(t->shape()));
      shape = t->shape();
      if (stacked) {
        int64_t step = t->size(1) * w;
        for (int64_t r = 0; r < t->size(0); ++r) parts.push_back(static_cast<const int64_t*>(t->data()) + r * step);
        if (parts.empty()) ThrowRangeError(env, std::string(fn) + ": " + name + " holds no rank (R = 0)");
        shape = {t->size(1), w};
        continue;
      }
    } else {
      RequireDevice(env, t, device, fn, name.c_str(), "partials[0]");
      RequireShape(env, t, shape, fn, name.c_str());
    }
    parts.push_back(static_cast<const int64_t*>(t->data()));
  }
  const int64_t rows = shape[0], width = shape[1];
  auto out = AllocStorage(env, fn, size_t(rows * width) * sizeof(int64_t), device);
  int64_t* outp = static_cast<int64_t*>(out->data);
  if (device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesCombine(parts.data(), int64_t(parts.size()), rows, width, outp), fn);
  } else {
#if RLK_WITH_CUDA
    void* stream = nullptr;
    int32_t* word = nullptr;
    ThrowIfError(env, DeviceStream(device, &stream), fn);
    ThrowIfError(env, DeviceErrorWord(device, &word), fn);
    ThrowIfError(env, cuda::GroupAdvantagesCombine(parts.data(), int64_t(parts.size()), rows, width, outp, device, stream, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return Tensor::Wrap(env, out, {rows, width}, DType::kInt64);
}

// broadcastAdvantages(advantages [B], mask [B, T]) -> [B, T]
Napi::Value BroadcastBinding(const Napi::CallbackInfo& info) {
  const char* fn = "broadcastAdvantages";
  Napi::Env env = info.Env();
  Tensor* adv = TensorArg(info, 0, fn, "advantages");
  Tensor* mask = TensorArg(info, 1, fn, "mask");
  RequireDType(env, adv, {DType::kFloat32}, fn, "advantages");
  RequireDType(env, mask, {DType::kUInt8}, fn, "mask");
  RequireDevice(env, mask, adv->device(), fn, "mask", "advantages");
  if (adv->dim() != 1)
    ThrowRangeError(env, std::string(fn) + ": advantages must have shape [B], got " + ShapeString(adv->shape()));
  if (mask->dim() != 2 || mask->size(0) != adv->numel())
    ThrowRangeError(env, std::string(fn) + ": mask must have shape [B = " + std::to_string(adv->numel()) + ", T], got " +
                             ShapeString(mask->shape()));
  BroadcastAdvantagesParams p;
  p.batch = mask->size(0);
  p.seq_len = mask->size(1);
  p.advantages = static_cast<const float*>(adv->data());
  p.mask = static_cast<const uint8_t*>(mask->data());
  auto out = AllocStorage(env, fn, size_t(p.batch * p.seq_len) * sizeof(float), adv->device());
  p.out = static_cast<float*>(out->data);
  if (adv->device() == kCpu) {
    ThrowIfError(env, cpu::BroadcastAdvantages(p), fn);
  } else {
#if RLK_WITH_CUDA
    p.device = adv->device();
    ThrowIfError(env, DeviceStream(adv->device(), &p.stream), fn);
    ThrowIfError(env, cuda::BroadcastAdvantages(p), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return Tensor::Wrap(env, out, {p.batch, p.seq_len}, DType::kFloat32);
}

}  // namespace

void InitGroupAdvantages(Napi::Env env, Napi::Object exports) {
  exports.Set("groupAdvantages", Napi::Function::New(env, GroupAdvantagesBinding, "groupAdvantages"));
  exports.Set("groupAdvantagesPartials", Napi::Function::New(env, PartialsBinding, "groupAdvantagesPartials"));
  exports.Set("finalizeGroupAdvantages", Napi::Function::New(env, FinalizeBinding, "finalizeGroupAdvantages"));
  exports.Set("combineGroupAdvantagesPartials", Napi::Function::New(env, CombineBinding, "combineGroupAdvantagesPartials"));
  exports.Set("broadcastAdvantages", Napi::Function::New(env, BroadcastBinding, "broadcastAdvantages"));
}

}  // namespace rlk::addon
