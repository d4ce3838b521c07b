// Bindings of the token log-prob family: check every argument (all before any
// allocation or write), allocate the outputs, then run the CPU launcher or
// enqueue the CUDA one on the device's stream. The TypeScript layer owns the
// defaults and has already checked; these checks are what memory safety
// depends on, repeated here so no caller can bypass them.
#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "rlk/runtime.h"
#include "rlk/token_logprobs.h"
#include "launch.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

constexpr int64_t kMaxSafeInt = 9007199254740991;  // 2^53 - 1

std::string Str(const char* fn) { return std::string(fn) + ": "; }

// What every op of the family shares: logits [..., V] and targets [...].
struct Rows {
  Tensor* logits = nullptr;
  Tensor* targets = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  int device = kCpu;
};

Rows LogitsAndTargets(const Napi::CallbackInfo& info, size_t li, size_t ti, const char* fn, const char* logits_name) {
  Napi::Env env = info.Env();
  Rows r;
  r.logits = TensorArg(info, li, fn, logits_name);
  r.targets = TensorArg(info, ti, fn, "targets");
  RequireDType(env, r.logits, {DType::kFloat32, DType::kBFloat16, DType::kFloat16}, fn, logits_name);
  RequireDType(env, r.targets, {DType::kInt32, DType::kInt64}, fn, "targets");
  RequireMinDim(env, r.logits, 1, fn, logits_name);
  r.device = r.logits->device();
  RequireDevice(env, r.targets, r.device, fn, "targets", logits_name);
  r.vocab = r.logits->size(-1);
  if (r.vocab < 1)
    ThrowRangeError(env, Str(fn) + logits_name + " must have a last dimension (the vocabulary) of at least 1, got shape " +
                             ShapeString(r.logits->shape()));
  std::vector<int64_t> lead(r.logits->shape().begin(), r.logits->shape().end() - 1);
  RequireShape(env, r.targets, lead, fn, "targets");
  r.rows = r.targets->numel();
  return r;
}

int64_t IgnoreIndexArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return IntegerArg(info, i, fn, "ignoreIndex", -kMaxSafeInt, kMaxSafeInt);
}

// An optional float32 tensor of a given shape on the op's device.
Tensor* OptionalFloatArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, const Rows& r,
                         const std::vector<int64_t>& shape) {
  Tensor* t = OptionalTensorArg(info, i, fn, name);
  if (!t) return nullptr;
  RequireDType(info.Env(), t, {DType::kFloat32}, fn, name);
  RequireDevice(info.Env(), t, r.device, fn, name, "logits");
  RequireShape(info.Env(), t, shape, fn, name);
  return t;
}

Status RunFwd(int device, const TokenLogprobsFwdParams& p) {
#if RLK_WITH_CUDA
  if (device != kCpu) return cuda::TokenLogprobsFwd(p);
#endif
  return cpu::TokenLogprobsFwd(p);
}
Status RunBwd(int device, const TokenLogprobsBwdParams& p) {
#if RLK_WITH_CUDA
  if (device != kCpu) return cuda::TokenLogprobsBwd(p);
#endif
  return cpu::TokenLogprobsBwd(p);
}
Status RunCombine(int device, const TokenLogprobsCombineParams& p) {
#if RLK_WITH_CUDA
  if (device != kCpu) return cuda::TokenLogprobsCombine(p);
#endif
  return cpu::TokenLogprobsCombine(p);
}

Napi::Value OrNull(Napi::Env env, const Output& o, bool present) { return present ? o.value : env.Null(); }

// tokenLogprobsForward(logits, targets, temperature, temperatureTensor, ignoreIndex, entropy, saveStats,
//                      outLogprobs, outEntropy, outStats) -> [logprobs, entropy | null, stats | null]
Napi::Value Forward(const Napi::CallbackInfo& info) {
  const char* fn = "tokenLogprobs";
  Napi::Env env = info.Env();
  Rows r = LogitsAndTargets(info, 0, 1, fn, "logits");
  const RowTemperature temp = RowTemperatureArgs(info, 2, 3, fn, r.device, "logits", r.targets->shape(), r.rows);
  int64_t ignore = IgnoreIndexArg(info, 4, fn);
  bool entropy = BoolArg(info, 5, fn, "entropy");
  bool save = BoolArg(info, 6, fn, "saveForBackward");
  const std::vector<int64_t>& row_shape = r.targets->shape();
  const std::vector<int64_t> stats_shape{r.rows, kTlpStatsCols};
  Tensor* out_lp = OptionalFloatArg(info, 7, fn, "out.logprobs", r, row_shape);
  Tensor* out_ent = OptionalFloatArg(info, 8, fn, "out.entropy", r, row_shape);
  Tensor* out_stats = OptionalFloatArg(info, 9, fn, "out.stats", r, stats_shape);
  if (out_ent && !entropy) ThrowTypeError(env, Str(fn) + "out.entropy was given but entropy is false");
  if (out_stats && !save) ThrowTypeError(env, Str(fn) + "out.stats was given but saveForBackward is false");
  CheckTargetsHost(env, fn, r.targets, r.device, r.rows, r.vocab, ignore);
  Queue q = DeviceQueue(env, fn, r.device);

  Output lp = MakeOutput(env, fn, out_lp, info[7], row_shape, DType::kFloat32, r.device);
  Output ent = entropy ? MakeOutput(env, fn, out_ent, info[8], row_shape, DType::kFloat32, r.device) : Output{};
  Output st = save ? MakeOutput(env, fn, out_stats, info[9], stats_shape, DType::kFloat32, r.device) : Output{};
  TokenLogprobsFwdParams p;
  p.logits = r.logits->data();
  p.logits_dtype = r.logits->dtype();
  p.targets = r.targets->data();
  p.targets_dtype = r.targets->dtype();
  p.temperature = temp.per_row;
  p.inv_temperature = temp.inv;
  p.rows = r.rows;
  p.vocab = r.vocab;
  p.vocab_start = 0;
  p.vocab_size = r.vocab;
  p.ignore_index = ignore;
  p.entropy = entropy;
  p.logprobs = static_cast<float*>(lp.data);
  p.entropy_out = static_cast<float*>(ent.data);
  p.stats = static_cast<float*>(st.data);
  p.error_word = q.error_word;
  p.device = r.device;
  p.stream = q.stream;
  ThrowIfError(env, RunFwd(r.device, p), fn);
  Napi::Array res = Napi::Array::New(env, 3);
  res.Set(0u, lp.value);
  res.Set(1u, OrNull(env, ent, entropy));
  res.Set(2u, OrNull(env, st, save));
  return res;
}

// vocabStart (>= 0) and vocabSize (>= vocabStart + V) of a shard.
void ShardRange(const Napi::CallbackInfo& info, size_t si, size_t vi, const char* fn, const Rows& r, int64_t* start,
                int64_t* size) {
  *start = IntegerArg(info, si, fn, "vocabStart", 0, kMaxSafeInt);
  *size = IntegerArg(info, vi, fn, "vocabSize", 1, kMaxSafeInt);
  if (*start > *size - r.vocab)
    ThrowRangeError(info.Env(), Str(fn) + "vocabStart + the shard's vocabulary (" + std::to_string(*start) + " + " +
                                    std::to_string(r.vocab) + ") must be <= vocabSize, got vocabSize " + std::to_string(*size));
}

// tokenLogprobsBackward(logits, targets, gradLogprobs, temperature, temperatureTensor, ignoreIndex, gradEntropy,
//                       stats, vocabStart, vocabSize, inPlace, out) -> gradient
Napi::Value Backward(const Napi::CallbackInfo& info) {
  const bool shard_fn = info.Data() != nullptr;
  const char* fn = shard_fn ? "tokenLogprobsShardBackward" : "tokenLogprobsBackward";
  Napi::Env env = info.Env();
  Rows r = LogitsAndTargets(info, 0, 1, fn, shard_fn ? "logitsShard" : "logits");
  const std::vector<int64_t>& row_shape = r.targets->shape();
  Tensor* grad_lp = TensorArg(info, 2, fn, "gradLogprobs");
  RequireDType(env, grad_lp, {DType::kFloat32}, fn, "gradLogprobs");
  RequireDevice(env, grad_lp, r.device, fn, "gradLogprobs", "logits");
  RequireShape(env, grad_lp, row_shape, fn, "gradLogprobs");
  const RowTemperature temp = RowTemperatureArgs(info, 3, 4, fn, r.device, "logits", r.targets->shape(), r.rows);
  int64_t ignore = IgnoreIndexArg(info, 5, fn);
  Tensor* grad_ent = OptionalFloatArg(info, 6, fn, "gradEntropy", r, row_shape);
  Tensor* stats = OptionalFloatArg(info, 7, fn, "stats", r, {r.rows, kTlpStatsCols});
  int64_t vocab_start = 0, vocab_size = 0;
  ShardRange(info, 8, 9, fn, r, &vocab_start, &vocab_size);
  if ((vocab_start != 0 || vocab_size != r.vocab) && !stats)
    ThrowTypeError(env, Str(fn) + "stats is required for a shard of the vocabulary (from combineTokenLogprobs)");
  bool in_place = BoolArg(info, 10, fn, "inPlace");
  Tensor* out = OptionalTensorArg(info, 11, fn, "out");
  if (out) {
    if (in_place) ThrowTypeError(env, Str(fn) + "out cannot be given with inPlace: true");
    RequireDType(env, out, {r.logits->dtype()}, fn, "out");
    RequireDevice(env, out, r.device, fn, "out", "logits");
    RequireShape(env, out, r.logits->shape(), fn, "out");
  }
  CheckTargetsHost(env, fn, r.targets, r.device, r.rows, vocab_size, ignore);
  Queue q = DeviceQueue(env, fn, r.device);

  Output g = in_place ? Output{info[0], r.logits->data()}
                      : MakeOutput(env, fn, out, info[11], r.logits->shape(), r.logits->dtype(), r.device);
  TokenLogprobsBwdParams p;
  p.logits = r.logits->data();
  p.logits_dtype = r.logits->dtype();
  p.targets = r.targets->data();
  p.targets_dtype = r.targets->dtype();
  p.temperature = temp.per_row;
  p.inv_temperature = temp.inv;
  p.grad_logprobs = static_cast<const float*>(grad_lp->data());
  p.grad_entropy = grad_ent ? static_cast<const float*>(grad_ent->data()) : nullptr;
  p.stats = stats ? static_cast<const float*>(stats->data()) : nullptr;
  p.grad_logits = g.data;
  p.rows = r.rows;
  p.vocab = r.vocab;
  p.vocab_start = vocab_start;
  p.vocab_size = vocab_size;
  p.ignore_index = ignore;
  p.error_word = q.error_word;
  p.device = r.device;
  p.stream = q.stream;
  ThrowIfError(env, RunBwd(r.device, p), fn);
  return g.value;
}

// tokenLogprobsPartials(logitsShard, targets, temperature, temperatureTensor, ignoreIndex, entropy, vocabStart,
//                       vocabSize, out) -> partials [rows, 3 | 4]
Napi::Value Partials(const Napi::CallbackInfo& info) {
  const char* fn = "tokenLogprobsPartials";
  Napi::Env env = info.Env();
  Rows r = LogitsAndTargets(info, 0, 1, fn, "logitsShard");
  const RowTemperature temp = RowTemperatureArgs(info, 2, 3, fn, r.device, "logits", r.targets->shape(), r.rows);
  int64_t ignore = IgnoreIndexArg(info, 4, fn);
  bool entropy = BoolArg(info, 5, fn, "entropy");
  int64_t vocab_start = 0, vocab_size = 0;
  ShardRange(info, 6, 7, fn, r, &vocab_start, &vocab_size);
  const int cols = entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  const std::vector<int64_t> shape{r.rows, cols};
  Tensor* out = OptionalFloatArg(info, 8, fn, "out", r, shape);
  CheckTargetsHost(env, fn, r.targets, r.device, r.rows, vocab_size, ignore);
  Queue q = DeviceQueue(env, fn, r.device);

  Output o = MakeOutput(env, fn, out, info[8], shape, DType::kFloat32, r.device);
  TokenLogprobsFwdParams p;
  p.logits = r.logits->data();
  p.logits_dtype = r.logits->dtype();
  p.targets = r.targets->data();
  p.targets_dtype = r.targets->dtype();
  p.temperature = temp.per_row;
  p.inv_temperature = temp.inv;
  p.rows = r.rows;
  p.vocab = r.vocab;
  p.vocab_start = vocab_start;
  p.vocab_size = vocab_size;
  p.ignore_index = ignore;
  p.entropy = entropy;
  p.partials = static_cast<float*>(o.data);
  p.error_word = q.error_word;
  p.device = r.device;
  p.stream = q.stream;
  ThrowIfError(env, RunFwd(r.device, p), fn);
  return o.value;
}

// combineTokenLogprobs(partials[], targets, temperature, temperatureTensor, ignoreIndex, entropy, saveStats,
//                      outLogprobs, outEntropy, outStats) -> [logprobs, entropy | null, stats | null]
Napi::Value Combine(const Napi::CallbackInfo& info) {
  const char* fn = "combineTokenLogprobs";
  Napi::Env env = info.Env();
  if (!info[0].IsArray())
    ThrowTypeError(env, Str(fn) + "partials must be an array of tensors, got " + Describe(info[0]));
  Napi::Array arr = info[0].As<Napi::Array>();
  Rows r;
  r.targets = TensorArg(info, 1, fn, "targets");
  RequireDType(env, r.targets, {DType::kInt32, DType::kInt64}, fn, "targets");
  r.device = r.targets->device();
  r.rows = r.targets->numel();
  r.vocab = 1;
  const RowTemperature temp = RowTemperatureArgs(info, 2, 3, fn, r.device, "logits", r.targets->shape(), r.rows);
  int64_t ignore = IgnoreIndexArg(info, 4, fn);
  bool entropy = BoolArg(info, 5, fn, "entropy");
  bool save = BoolArg(info, 6, fn, "saveForBackward");
  TokenLogprobsCombineParams p;
  p.cols = 0;
  if (arr.Length() == 0) ThrowRangeError(env, Str(fn) + "partials must hold at least one shard, got an empty array");
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    std::string name = "partials[" + std::to_string(k) + "]";
    Napi::Value v = arr.Get(k);
    if (!Tensor::IsTensor(v)) ThrowTypeError(env, Str(fn) + name + " must be a tensor, got " + Describe(v));
    Tensor* t = Tensor::Unwrap(v.As<Napi::Object>());
    if (t->disposed()) ThrowDisposed(env, fn, name.c_str());
    RequireDType(env, t, {DType::kFloat32}, fn, name.c_str());
    RequireDevice(env, t, r.device, fn, name.c_str(), "targets");
    const auto& s = t->shape();
    const bool stacked = s.size() == 3;
    if ((s.size() != 2 && !stacked) || s[s.size() - 2] != r.rows ||
        (s.back() != kTlpPartialCols && s.back() != kTlpPartialColsEntropy))
      ThrowRangeError(env, Str(fn) + name + " must have shape [" + std::to_string(r.rows) + ", 3 or 4] (or [shards, " +
                               std::to_string(r.rows) + ", 3 or 4]), got " + ShapeString(s));
    if (p.cols == 0) p.cols = int32_t(s.back());
    if (s.back() != p.cols)
      ThrowRangeError(env, Str(fn) + name + " has " + std::to_string(s.back()) + " columns but partials[0] has " +
                               std::to_string(p.cols) + ": compute every shard with the same entropy option");
    const int64_t count = stacked ? s[0] : 1;
    if (p.shards + count > kTlpMaxShards)
      ThrowRangeError(env, Str(fn) + "partials must hold at most " + std::to_string(kTlpMaxShards) + " shards, got more");
    for (int64_t j = 0; j < count; ++j)
      p.partials[p.shards++] = static_cast<const float*>(t->data()) + j * r.rows * p.cols;
  }
  if (p.shards == 0) ThrowRangeError(env, Str(fn) + "partials must hold at least one shard, got none");
  if (entropy && p.cols != kTlpPartialColsEntropy)
    ThrowRangeError(env, Str(fn) + "entropy: true needs partials computed with entropy: true (4 columns), got 3 columns");
  const std::vector<int64_t>& row_shape = r.targets->shape();
  const std::vector<int64_t> stats_shape{r.rows, kTlpStatsCols};
  Tensor* out_lp = OptionalFloatArg(info, 7, fn, "out.logprobs", r, row_shape);
  Tensor* out_ent = OptionalFloatArg(info, 8, fn, "out.entropy", r, row_shape);
  Tensor* out_stats = OptionalFloatArg(info, 9, fn, "out.stats", r, stats_shape);
  if (out_ent && !entropy) ThrowTypeError(env, Str(fn) + "out.entropy was given but entropy is false");
  if (out_stats && !save) ThrowTypeError(env, Str(fn) + "out.stats was given but saveForBackward is false");
  Queue q = DeviceQueue(env, fn, r.device);

  Output lp = MakeOutput(env, fn, out_lp, info[7], row_shape, DType::kFloat32, r.device);
  Output ent = entropy ? MakeOutput(env, fn, out_ent, info[8], row_shape, DType::kFloat32, r.device) : Output{};
  Output st = save ? MakeOutput(env, fn, out_stats, info[9], stats_shape, DType::kFloat32, r.device) : Output{};
  p.targets = r.targets->data();
  p.targets_dtype = r.targets->dtype();
  p.temperature = temp.per_row;
  p.inv_temperature = temp.inv;
  p.rows = r.rows;
  p.ignore_index = ignore;
  p.logprobs = static_cast<float*>(lp.data);
  p.entropy_out = static_cast<float*>(ent.data);
  p.stats = static_cast<float*>(st.data);
  p.error_word = q.error_word;
  p.device = r.device;
  p.stream = q.stream;
  ThrowIfError(env, RunCombine(r.device, p), fn);
  Napi::Array res = Napi::Array::New(env, 3);
  res.Set(0u, lp.value);
  res.Set(1u, OrNull(env, ent, entropy));
  res.Set(2u, OrNull(env, st, save));
  return res;
}

}  // namespace

void InitTokenLogprobs(Napi::Env env, Napi::Object exports) {
  exports.Set("tokenLogprobsForward", Napi::Function::New(env, Forward, "tokenLogprobsForward"));
  exports.Set("tokenLogprobsBackward", Napi::Function::New(env, Backward, "tokenLogprobsBackward"));
  exports.Set("tokenLogprobsShardBackward",
              Napi::Function::New(env, Backward, "tokenLogprobsShardBackward", reinterpret_cast<void*>(1)));
  exports.Set("tokenLogprobsPartials", Napi::Function::New(env, Partials, "tokenLogprobsPartials"));
  exports.Set("combineTokenLogprobs", Napi::Function::New(env, Combine, "combineTokenLogprobs"));
}

}  // namespace rlk::addon
