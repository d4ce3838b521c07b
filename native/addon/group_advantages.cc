// Bindings of the group-advantages family: check every argument, allocate the
// outputs, then run (CPU) or enqueue (CUDA). The TypeScript layer owns the
// defaults and option names; what memory safety depends on (dtypes, shapes,
// devices, id ranges on the host) is checked again here.
#include <napi.h>

#include <cmath>
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
  int device = kCpu;
};

int64_t LoadId(const Tensor* t, int64_t i) {
  return t->dtype() == DType::kInt64 ? static_cast<const int64_t*>(t->data())[i]
                                     : int64_t(static_cast<const int32_t*>(t->data())[i]);
}

double FiniteArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, double lo, double hi) {
  double v = NumberArg(info, i, fn, name);
  if (!std::isfinite(v) || v < lo || v > hi)
    ThrowRangeError(info.Env(), std::string(fn) + ": " + name + " must be a finite number in [" +
                                    Describe(Napi::Number::New(info.Env(), lo)) + ", " +
                                    Describe(Napi::Number::New(info.Env(), hi)) + "], got " + Describe(info[i]));
  return v;
}

void CheckIndexTensor(Napi::Env env, const Tensor* t, const Tensor* rewards, const char* fn, const char* name) {
  RequireDType(env, t, {DType::kInt32, DType::kInt64}, fn, name);
  RequireDevice(env, t, rewards->device(), fn, name, "rewards");
  RequireShape(env, t, {rewards->numel()}, fn, name);
}

// Arguments [base, base + 12): rewards, groupIds|null, groupSize, numGroups
// (-1: max id + 1, host tensors only), taskIds|null, method, mask|null,
// tokenCounts|null, eps, alpha, gamma, reweight.
Batch ParseBatch(const Napi::CallbackInfo& info, size_t base, const char* fn) {
  Napi::Env env = info.Env();
  Batch b;
  GroupAdvantagesParams& p = b.p;
  Tensor* rewards = TensorArg(info, base + 0, fn, "rewards");
  RequireDType(env, rewards, {DType::kFloat32}, fn, "rewards");
  if (rewards->dim() != 1)
    ThrowRangeError(env, std::string(fn) + ": rewards must have shape [B], got " + ShapeString(rewards->shape()));
  b.device = rewards->device();
  p.batch = rewards->numel();
  p.rewards = static_cast<const float*>(rewards->data());

  Tensor* ids = OptionalTensorArg(info, base + 1, fn, "groupIds");
  int64_t group_size = IntegerArg(info, base + 2, fn, "groupSize", 0, int64_t(1) << 53);
  int64_t num_groups = IntegerArg(info, base + 3, fn, "numGroups", -1, kMaxGroups);
  if ((ids == nullptr) == (group_size == 0))
    ThrowTypeError(env, std::string(fn) + ": exactly one of groupIds and groupSize must be given");
  if (ids) {
    CheckIndexTensor(env, ids, rewards, fn, "groupIds");
    p.group_ids = ids->data();
    p.group_ids_dtype = ids->dtype();
    if (num_groups < 0) {
      if (b.device != kCpu)
        ThrowTypeError(env, std::string(fn) + ": numGroups is required when groupIds is on " + DeviceName(b.device) +
                                " (reading the ids would need a host round trip)");
      int64_t max_id = -1;
      for (int64_t i = 0; i < p.batch; ++i) {
        int64_t g = LoadId(ids, i);
        if (g < 0)
          ThrowRangeError(env, std::string(fn) + ": groupIds must be >= 0, got " + std::to_string(g) + " at index " +
                                   std::to_string(i));
        max_id = std::max(max_id, g);
      }
      if (max_id >= p.batch)
        ThrowRangeError(env, std::string(fn) + ": groupIds must be < B = " + std::to_string(p.batch) +
                                 " unless numGroups is given, got " + std::to_string(max_id));
      num_groups = max_id + 1;
    } else if (b.device == kCpu) {
      for (int64_t i = 0; i < p.batch; ++i) {
        int64_t g = LoadId(ids, i);
        if (g < 0 || g >= num_groups)
          ThrowRangeError(env, std::string(fn) + ": groupIds must be in [0, numGroups = " + std::to_string(num_groups) +
                                   "), got " + std::to_string(g) + " at index " + std::to_string(i));
      }
    }
  } else {
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

  p.method = AdvantageMethod(IntegerArg(info, base + 5, fn, "method", 0, 4));
  Tensor* tasks = OptionalTensorArg(info, base + 4, fn, "taskIds");
  if (tasks) {
    if (p.method != AdvantageMethod::kTmnReweight)
      ThrowTypeError(env, std::string(fn) + ": taskIds applies only to method 'tmn-reweight'");
    CheckIndexTensor(env, tasks, rewards, fn, "taskIds");
    p.task_ids = tasks->data();
    p.task_ids_dtype = tasks->dtype();
  }
  Tensor* mask = OptionalTensorArg(info, base + 6, fn, "mask");
  Tensor* counts = OptionalTensorArg(info, base + 7, fn, "tokenCounts");
  if (p.method == AdvantageMethod::kReinforcePP) {
    if ((mask == nullptr) == (counts == nullptr))
      ThrowTypeError(env, std::string(fn) + ": method 'reinforce++' needs exactly one of mask and tokenCounts");
  } else if (mask || counts) {
    ThrowTypeError(env, std::string(fn) + ": " + (mask ? "mask" : "tokenCounts") + " applies only to method 'reinforce++'");
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
    CheckIndexTensor(env, counts, rewards, fn, "tokenCounts");
    p.token_counts = counts->data();
    p.token_counts_dtype = counts->dtype();
  }
  p.eps = FiniteArg(info, base + 8, fn, "eps", 0, 1e30);
  p.alpha = FiniteArg(info, base + 9, fn, "alpha", 0, 1);
  p.gamma = FiniteArg(info, base + 10, fn, "gamma", 0, 1e30);
  p.reweight = BoolArg(info, base + 11, fn, "reweight");
  return b;
}

const Tensor* StatsArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, const Batch& b,
                       int64_t rows) {
  Tensor* t = TensorArg(info, i, fn, name);
  Napi::Env env = info.Env();
  RequireDType(env, t, {DType::kFloat32}, fn, name);
  RequireDevice(env, t, b.device, fn, name, "rewards");
  RequireShape(env, t, {rows, kGroupStatCols}, fn, name);
  return t;
}

struct Outputs {
  std::shared_ptr<Storage> adv, inf;
};

Outputs AllocOutputs(Napi::Env env, const char* fn, Batch* b) {
  Outputs o;
  o.adv = AllocStorage(env, fn, size_t(b->p.batch) * sizeof(float), b->device);
  o.inf = AllocStorage(env, fn, size_t(b->p.num_groups), b->device);
  b->p.advantages = static_cast<float*>(o.adv->data);
  b->p.informative = static_cast<uint8_t*>(o.inf->data);
  return o;
}

Napi::Value ResultPair(Napi::Env env, const Outputs& o, const Batch& b) {
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t(0), Tensor::Wrap(env, o.adv, {b.p.batch}, DType::kFloat32));
  out.Set(uint32_t(1), Tensor::Wrap(env, o.inf, {b.p.num_groups}, DType::kUInt8));
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

// groupAdvantages(batch...) -> [advantages, informative]
Napi::Value GroupAdvantagesBinding(const Napi::CallbackInfo& info) {
  const char* fn = "groupAdvantages";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, 0, fn);
  Outputs o = AllocOutputs(env, fn, &b);
  if (b.device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesFwd(b.p), fn);
  } else {
#if RLK_WITH_CUDA
    int32_t* word = PrepareCuda(env, fn, &b);
    ThrowIfError(env, cuda::GroupAdvantagesFwd(b.p, b.device, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return ResultPair(env, o, b);
}

// groupAdvantagesPartials(batch..., stats1|null) -> [K, 7]
Napi::Value PartialsBinding(const Napi::CallbackInfo& info) {
  const char* fn = "groupAdvantagesPartials";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, 0, fn);
  const Tensor* s1 = nullptr;
  int64_t rows = b.p.num_groups;
  if (!info[12].IsUndefined() && !info[12].IsNull()) {
    if (!AdvantageNeedsRound2(b.p.method, b.p.reweight))
      ThrowTypeError(env, std::string(fn) + ": this method has no second round");
    s1 = StatsArg(info, 12, fn, "stats", b, b.p.num_groups);
    rows = AdvantageRound2Rows(b.p.method, b.p.num_groups);
  }
  auto out = AllocStorage(env, fn, size_t(rows) * kGroupStatCols * sizeof(float), b.device);
  const float* s1p = s1 ? static_cast<const float*>(s1->data()) : nullptr;
  float* outp = static_cast<float*>(out->data);
  if (b.device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesPartials(b.p, s1p, outp), fn);
  } else {
#if RLK_WITH_CUDA
    int32_t* word = PrepareCuda(env, fn, &b);
    ThrowIfError(env, cuda::GroupAdvantagesPartials(b.p, s1p, outp, b.device, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return Tensor::Wrap(env, out, {rows, kGroupStatCols}, DType::kFloat32);
}

// groupAdvantagesFinalize(batch..., stats1, stats2|null) -> [advantages, informative]
Napi::Value FinalizeBinding(const Napi::CallbackInfo& info) {
  const char* fn = "finalizeGroupAdvantages";
  Napi::Env env = info.Env();
  Batch b = ParseBatch(info, 0, fn);
  const Tensor* s1 = StatsArg(info, 12, fn, "stats", b, b.p.num_groups);
  const Tensor* s2 = nullptr;
  if (AdvantageNeedsRound2(b.p.method, b.p.reweight))
    s2 = StatsArg(info, 13, fn, "stats2", b, AdvantageRound2Rows(b.p.method, b.p.num_groups));
  else if (!info[13].IsUndefined() && !info[13].IsNull())
    ThrowTypeError(env, std::string(fn) + ": stats2 must be omitted: this method has no second round");
  const float* s1p = static_cast<const float*>(s1->data());
  const float* s2p = s2 ? static_cast<const float*>(s2->data()) : nullptr;
  Outputs o = AllocOutputs(env, fn, &b);
  if (b.device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesFinalize(b.p, s1p, s2p), fn);
  } else {
#if RLK_WITH_CUDA
    int32_t* word = PrepareCuda(env, fn, &b);
    ThrowIfError(env, cuda::GroupAdvantagesFinalize(b.p, s1p, s2p, b.device, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return ResultPair(env, o, b);
}

// combineGroupAdvantagesPartials(parts: Tensor[]) where every part is [K, 7]
// or one part is [R, K, 7] (an all-gather's output) -> [K, 7]
Napi::Value CombineBinding(const Napi::CallbackInfo& info) {
  const char* fn = "combineGroupAdvantagesPartials";
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowTypeError(env, std::string(fn) + ": partials must be an array of tensors, got " + Describe(info[0]));
  Napi::Array arr = info[0].As<Napi::Array>();
  if (arr.Length() == 0) ThrowRangeError(env, std::string(fn) + ": partials must hold at least one tensor, got none");
  std::vector<const float*> parts;
  std::vector<int64_t> shape;
  int device = kCpu;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    std::string name = "partials[" + std::to_string(k) + "]";
    Napi::Value v = arr.Get(k);
    if (!Tensor::IsTensor(v)) ThrowTypeError(env, std::string(fn) + ": " + name + " must be a tensor, got " + Describe(v));
    Tensor* t = Tensor::Unwrap(v.As<Napi::Object>());
    if (t->disposed()) ThrowDisposed(env, fn, name.c_str());
    RequireDType(env, t, {DType::kFloat32}, fn, name.c_str());
    if (k == 0) {
      device = t->device();
      bool stacked = arr.Length() == 1 && t->dim() == 3;
      if (!((t->dim() == 2 || stacked) && t->size(-1) == kGroupStatCols))
        ThrowRangeError(env, std::string(fn) + ": " + name + " must have shape [K, 7] or [R, K, 7], got " + ShapeString(t->shape()));
      shape = t->shape();
      if (stacked) {
        int64_t step = t->size(1) * kGroupStatCols;
        for (int64_t r = 0; r < t->size(0); ++r) parts.push_back(static_cast<const float*>(t->data()) + r * step);
        if (parts.empty()) ThrowRangeError(env, std::string(fn) + ": " + name + " holds no rank (R = 0)");
        shape = {t->size(1), kGroupStatCols};
        continue;
      }
    } else {
      RequireDevice(env, t, device, fn, name.c_str(), "partials[0]");
      RequireShape(env, t, shape, fn, name.c_str());
    }
    parts.push_back(static_cast<const float*>(t->data()));
  }
  int64_t rows = shape[0];
  auto out = AllocStorage(env, fn, size_t(rows) * kGroupStatCols * sizeof(float), device);
  float* outp = static_cast<float*>(out->data);
  if (device == kCpu) {
    ThrowIfError(env, cpu::GroupAdvantagesCombine(parts.data(), int64_t(parts.size()), rows, outp), fn);
  } else {
#if RLK_WITH_CUDA
    void* stream = nullptr;
    int32_t* word = nullptr;
    ThrowIfError(env, DeviceStream(device, &stream), fn);
    ThrowIfError(env, DeviceErrorWord(device, &word), fn);
    ThrowIfError(env, cuda::GroupAdvantagesCombine(parts.data(), int64_t(parts.size()), rows, outp, device, stream, word), fn);
#else
    NoCuda(env, fn);
#endif
  }
  return Tensor::Wrap(env, out, {rows, kGroupStatCols}, DType::kFloat32);
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
