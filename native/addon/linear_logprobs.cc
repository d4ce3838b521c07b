// Bindings of the fused linear log-probs: check every argument (all before any
// allocation or write), allocate the outputs, run the CPU launcher or enqueue
// the CUDA one. The TypeScript layer owns the defaults and has checked
// already; these checks are what memory safety depends on.
#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "rlk/linear_logprobs.h"
#include "rlk/runtime.h"
#include "launch.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

constexpr int64_t kMaxSafeInt = 9007199254740991;  // 2^53 - 1

std::string Str(const char* fn) { return std::string(fn) + ": "; }

struct Args {
  Tensor* hidden = nullptr;
  Tensor* weight = nullptr;
  Tensor* targets = nullptr;
  Tensor* bias = nullptr;
  int64_t rows = 0, dim = 0, vocab = 0;
  int device = kCpu;
};

// hidden [N, H], weight [V, H] of one float dtype, targets [N], bias [V].
Args HiddenWeightTargets(const Napi::CallbackInfo& info, size_t hi, size_t wi, size_t ti, size_t bi, const char* fn,
                         const char* weight_name) {
  Napi::Env env = info.Env();
  Args a;
  a.hidden = TensorArg(info, hi, fn, "hidden");
  a.weight = TensorArg(info, wi, fn, weight_name);
  a.targets = TensorArg(info, ti, fn, "targets");
  RequireDType(env, a.hidden, {DType::kFloat32, DType::kBFloat16, DType::kFloat16}, fn, "hidden");
  RequireDType(env, a.weight, {a.hidden->dtype()}, fn, weight_name);
  RequireDType(env, a.targets, {DType::kInt32, DType::kInt64}, fn, "targets");
  if (a.hidden->dim() != 2)
    ThrowRangeError(env, Str(fn) + "hidden must have shape [N, H], got " + ShapeString(a.hidden->shape()));
  if (a.weight->dim() != 2)
    ThrowRangeError(env, Str(fn) + weight_name + " must have shape [V, H], got " + ShapeString(a.weight->shape()));
  a.device = a.hidden->device();
  RequireDevice(env, a.weight, a.device, fn, weight_name, "hidden");
  RequireDevice(env, a.targets, a.device, fn, "targets", "hidden");
  a.rows = a.hidden->size(0);
  a.dim = a.hidden->size(1);
  a.vocab = a.weight->size(0);
  if (a.dim < 1) ThrowRangeError(env, Str(fn) + "hidden must have H >= 1, got shape " + ShapeString(a.hidden->shape()));
  if (a.vocab < 1)
    ThrowRangeError(env, Str(fn) + weight_name + " must have V >= 1, got shape " + ShapeString(a.weight->shape()));
  if (a.weight->size(1) != a.dim)
    ThrowRangeError(env, Str(fn) + weight_name + " must have shape [V, " + std::to_string(a.dim) +
                             "] (H of hidden), got " + ShapeString(a.weight->shape()));
  RequireShape(env, a.targets, {a.rows}, fn, "targets");
  a.bias = OptionalTensorArg(info, bi, fn, "bias");
  if (a.bias) {
    RequireDType(env, a.bias, {a.weight->dtype()}, fn, "bias");
    RequireDevice(env, a.bias, a.device, fn, "bias", "hidden");
    RequireShape(env, a.bias, {a.vocab}, fn, "bias");
  }
  return a;
}

int64_t ChunkArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return IntegerArg(info, i, fn, "chunkSize", 0, int64_t(1) << 30);
}

void ShardRange(const Napi::CallbackInfo& info, size_t si, size_t vi, const char* fn, const Args& a, int64_t* start,
                int64_t* size) {
  *start = IntegerArg(info, si, fn, "vocabStart", 0, kMaxSafeInt);
  *size = IntegerArg(info, vi, fn, "vocabSize", 1, kMaxSafeInt);
  if (*start > *size - a.vocab)
    ThrowRangeError(info.Env(), Str(fn) + "vocabStart + the shard's vocabulary (" + std::to_string(*start) + " + " +
                                    std::to_string(a.vocab) + ") must be <= vocabSize, got vocabSize " +
                                    std::to_string(*size));
}

Status RunFwd(int device, const LinearLogprobsFwdParams& p) {
#if RLK_WITH_CUDA
  if (device != kCpu) return cuda::LinearLogprobsFwd(p);
#endif
  return cpu::LinearLogprobsFwd(p);
}
Status RunBwd(int device, const LinearLogprobsBwdParams& p) {
#if RLK_WITH_CUDA
  if (device != kCpu) return cuda::LinearLogprobsBwd(p);
#endif
  return cpu::LinearLogprobsBwd(p);
}

void FillCommon(LinearLogprobsFwdParams& p, const Args& a, const RowTemperature& t, int64_t ignore, int64_t chunk,
                const Queue& q) {
  p.hidden = a.hidden->data();
  p.weight = a.weight->data();
  p.bias = a.bias ? a.bias->data() : nullptr;
  p.dtype = a.hidden->dtype();
  p.bias_dtype = a.bias ? a.bias->dtype() : p.dtype;
  p.targets = a.targets->data();
  p.targets_dtype = a.targets->dtype();
  p.temperature = t.per_row;
  p.inv_temperature = t.inv;
  p.rows = a.rows;
  p.dim = a.dim;
  p.vocab = a.vocab;
  p.ignore_index = ignore;
  p.chunk = chunk;
  p.error_word = q.error_word;
  p.device = a.device;
  p.stream = q.stream;
}

// linearLogprobsForward(hidden, weight, targets, temperature, temperatureTensor, ignoreIndex, entropy, saveStats,
//                       bias, chunkSize) -> [logprobs, entropy | null, stats | null]
Napi::Value Forward(const Napi::CallbackInfo& info) {
  const char* fn = "linearLogprobs";
  Napi::Env env = info.Env();
  Args a = HiddenWeightTargets(info, 0, 1, 2, 8, fn, "weight");
  const RowTemperature temp = RowTemperatureArgs(info, 3, 4, fn, a.device, "hidden", a.targets->shape(), a.rows);
  int64_t ignore = IntegerArg(info, 5, fn, "ignoreIndex", -kMaxSafeInt, kMaxSafeInt);
  bool entropy = BoolArg(info, 6, fn, "entropy");
  bool save = BoolArg(info, 7, fn, "saveForBackward");
  int64_t chunk = ChunkArg(info, 9, fn);
  CheckTargetsHost(env, fn, a.targets, a.device, a.rows, a.vocab, ignore);
  Queue q = DeviceQueue(env, fn, a.device);

  Output lp = NewOutput(env, fn, {a.rows}, DType::kFloat32, a.device);
  Output ent = entropy ? NewOutput(env, fn, {a.rows}, DType::kFloat32, a.device) : Output{};
  Output st = save ? NewOutput(env, fn, {a.rows, kTlpStatsCols}, DType::kFloat32, a.device) : Output{};
  LinearLogprobsFwdParams p;
  FillCommon(p, a, temp, ignore, chunk, q);
  p.vocab_start = 0;
  p.vocab_size = a.vocab;
  p.entropy = entropy;
  p.logprobs = static_cast<float*>(lp.data);
  p.entropy_out = static_cast<float*>(ent.data);
  p.stats = static_cast<float*>(st.data);
  ThrowIfError(env, RunFwd(a.device, p), fn);
  Napi::Array res = Napi::Array::New(env, 3);
  res.Set(0u, lp.value);
  res.Set(1u, entropy ? ent.value : env.Null());
  res.Set(2u, save ? st.value : env.Null());
  return res;
}

// linearLogprobsPartials(hidden, weightShard, targets, temperature, temperatureTensor, ignoreIndex, entropy,
//                        vocabStart, vocabSize, bias, chunkSize) -> partials [N, 3 | 4]
Napi::Value Partials(const Napi::CallbackInfo& info) {
  const char* fn = "linearLogprobsPartials";
  Napi::Env env = info.Env();
  Args a = HiddenWeightTargets(info, 0, 1, 2, 9, fn, "weightShard");
  const RowTemperature temp = RowTemperatureArgs(info, 3, 4, fn, a.device, "hidden", a.targets->shape(), a.rows);
  int64_t ignore = IntegerArg(info, 5, fn, "ignoreIndex", -kMaxSafeInt, kMaxSafeInt);
  bool entropy = BoolArg(info, 6, fn, "entropy");
  int64_t vocab_start = 0, vocab_size = 0;
  ShardRange(info, 7, 8, fn, a, &vocab_start, &vocab_size);
  int64_t chunk = ChunkArg(info, 10, fn);
  CheckTargetsHost(env, fn, a.targets, a.device, a.rows, vocab_size, ignore);
  Queue q = DeviceQueue(env, fn, a.device);

  const int cols = entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  Output o = NewOutput(env, fn, {a.rows, cols}, DType::kFloat32, a.device);
  LinearLogprobsFwdParams p;
  FillCommon(p, a, temp, ignore, chunk, q);
  p.vocab_start = vocab_start;
  p.vocab_size = vocab_size;
  p.entropy = entropy;
  p.partials = static_cast<float*>(o.data);
  ThrowIfError(env, RunFwd(a.device, p), fn);
  return o.value;
}

// linearLogprobsBackward(hidden, weight, targets, gradLogprobs, temperature, temperatureTensor, ignoreIndex,
//                        gradEntropy, stats, vocabStart, vocabSize, bias, chunkSize)
//   -> [gradHidden, gradWeight, gradBias | null]
Napi::Value Backward(const Napi::CallbackInfo& info) {
  const bool shard_fn = info.Data() != nullptr;
  const char* fn = shard_fn ? "linearLogprobsShardBackward" : "linearLogprobsBackward";
  Napi::Env env = info.Env();
  Args a = HiddenWeightTargets(info, 0, 1, 2, 11, fn, shard_fn ? "weightShard" : "weight");
  Tensor* grad_lp = TensorArg(info, 3, fn, "gradLogprobs");
  RequireDType(env, grad_lp, {DType::kFloat32}, fn, "gradLogprobs");
  RequireDevice(env, grad_lp, a.device, fn, "gradLogprobs", "hidden");
  RequireShape(env, grad_lp, {a.rows}, fn, "gradLogprobs");
  const RowTemperature temp = RowTemperatureArgs(info, 4, 5, fn, a.device, "hidden", a.targets->shape(), a.rows);
  int64_t ignore = IntegerArg(info, 6, fn, "ignoreIndex", -kMaxSafeInt, kMaxSafeInt);
  auto float_arg = [&](size_t i, const char* name, const std::vector<int64_t>& shape) -> Tensor* {
    Tensor* t = OptionalTensorArg(info, i, fn, name);
    if (!t) return nullptr;
    RequireDType(env, t, {DType::kFloat32}, fn, name);
    RequireDevice(env, t, a.device, fn, name, "hidden");
    RequireShape(env, t, shape, fn, name);
    return t;
  };
  Tensor* grad_ent = float_arg(7, "gradEntropy", {a.rows});
  Tensor* stats = float_arg(8, "stats", {a.rows, kTlpStatsCols});
  int64_t vocab_start = 0, vocab_size = 0;
  ShardRange(info, 9, 10, fn, a, &vocab_start, &vocab_size);
  if ((vocab_start != 0 || vocab_size != a.vocab) && !stats)
    ThrowTypeError(env, Str(fn) + "stats is required for a shard of the vocabulary (from combineTokenLogprobs)");
  int64_t chunk = ChunkArg(info, 12, fn);
  CheckTargetsHost(env, fn, a.targets, a.device, a.rows, vocab_size, ignore);
  Queue q = DeviceQueue(env, fn, a.device);

  Output gh = NewOutput(env, fn, a.hidden->shape(), a.hidden->dtype(), a.device);
  Output gw = NewOutput(env, fn, a.weight->shape(), a.weight->dtype(), a.device);
  Output gb = a.bias ? NewOutput(env, fn, a.bias->shape(), a.bias->dtype(), a.device) : Output{};
  LinearLogprobsBwdParams p;
  p.hidden = a.hidden->data();
  p.weight = a.weight->data();
  p.bias = a.bias ? a.bias->data() : nullptr;
  p.dtype = a.hidden->dtype();
  p.bias_dtype = a.bias ? a.bias->dtype() : p.dtype;
  p.targets = a.targets->data();
  p.targets_dtype = a.targets->dtype();
  p.temperature = temp.per_row;
  p.inv_temperature = temp.inv;
  p.grad_logprobs = static_cast<const float*>(grad_lp->data());
  p.grad_entropy = grad_ent ? static_cast<const float*>(grad_ent->data()) : nullptr;
  p.stats = stats ? static_cast<const float*>(stats->data()) : nullptr;
  p.rows = a.rows;
  p.dim = a.dim;
  p.vocab = a.vocab;
  p.vocab_start = vocab_start;
  p.vocab_size = vocab_size;
  p.ignore_index = ignore;
  p.chunk = chunk;
  p.grad_hidden = gh.data;
  p.grad_weight = gw.data;
  p.grad_bias = gb.data;
  p.error_word = q.error_word;
  p.device = a.device;
  p.stream = q.stream;
  ThrowIfError(env, RunBwd(a.device, p), fn);
  Napi::Array res = Napi::Array::New(env, 3);
  res.Set(0u, gh.value);
  res.Set(1u, gw.value);
  res.Set(2u, a.bias ? gb.value : env.Null());
  return res;
}

// linearLogprobsCudaStatus() -> "" when the CUDA path can run, else why not.
Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
#if RLK_WITH_CUDA
  return Napi::String::New(info.Env(), cuda::LinearLogprobsCudaStatus());
#else
  return Napi::String::New(info.Env(), "this build has no CUDA kernels");
#endif
}

}  // namespace

void InitLinearLogprobs(Napi::Env env, Napi::Object exports) {
  exports.Set("linearLogprobsForward", Napi::Function::New(env, Forward, "linearLogprobsForward"));
  exports.Set("linearLogprobsPartials", Napi::Function::New(env, Partials, "linearLogprobsPartials"));
  exports.Set("linearLogprobsBackward", Napi::Function::New(env, Backward, "linearLogprobsBackward"));
  exports.Set("linearLogprobsCudaStatus", Napi::Function::New(env, CudaStatus, "linearLogprobsCudaStatus"));
  exports.Set("linearLogprobsShardBackward",
              Napi::Function::New(env, Backward, "linearLogprobsShardBackward", reinterpret_cast<void*>(1)));
}

}  // namespace rlk::addon
