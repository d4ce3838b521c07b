// The kernels as autograd functions on at::Tensors (DESIGN 7).
//
// tokenLogprobs runs the CPU launchers of native/cpu/token_logprobs.cc on the
// tensors' memory: the forward saves the row statistics (max, sum of exp,
// entropy) and the backward reads the logits once more and writes their
// gradient, as the core's saveForBackward/stats path does.
//
// The loss families (policyLoss, klPenalty, vocabDivergence) return their
// gradient with the value (DESIGN 3): the TypeScript layer runs the core
// kernel on zero-copy DLPack views, so every option and mode of the core
// flows through unchanged, and attachGrad() gives the value a grad_fn whose
// backward scales the precomputed gradient by the upstream one (a scalar for
// a loss, elementwise for per-token values, per row for per-row values).
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "bridge.h"
#include "rlk/runtime.h"
#include "rlk/token_logprobs.h"

namespace rlk::torch_bridge {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

DType KernelDType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    case at::kInt: return DType::kInt32;
    default: return DType::kInt64;
  }
}

void Check(const Status& st, const char* fn) {
  TORCH_CHECK_VALUE(st.ok(), fn, ": ", st.message);
}

// Everything tokenLogprobs needs besides the logits (not differentiable).
struct TlpArgs {
  at::Tensor targets;      // [rows], int32 or int64
  at::Tensor temperature;  // float32 [rows] or undefined
  float inv_temperature = 1.0f;
  int64_t ignore_index = -100;
  bool entropy = false;
};

struct TokenLogprobsFunction : public torch::autograd::Function<TokenLogprobsFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const TlpArgs& a) {
    const int64_t vocab = logits.size(-1);
    const int64_t rows = a.targets.numel();
    auto f32 = logits.options().dtype(at::kFloat);
    at::Tensor lp = at::empty(a.targets.sizes(), f32);
    at::Tensor ent = a.entropy ? at::empty(a.targets.sizes(), f32) : at::Tensor();
    at::Tensor stats = at::empty({rows, kTlpStatsCols}, f32);
    TokenLogprobsFwdParams p;
    p.logits = logits.data_ptr();
    p.logits_dtype = KernelDType(logits.scalar_type());
    p.targets = a.targets.data_ptr();
    p.targets_dtype = KernelDType(a.targets.scalar_type());
    p.temperature = a.temperature.defined() ? a.temperature.data_ptr<float>() : nullptr;
    p.inv_temperature = a.inv_temperature;
    p.rows = rows;
    p.vocab = vocab;
    p.vocab_start = 0;
    p.vocab_size = vocab;
    p.ignore_index = a.ignore_index;
    p.entropy = a.entropy;
    p.logprobs = lp.data_ptr<float>();
    p.entropy_out = a.entropy ? ent.data_ptr<float>() : nullptr;
    p.stats = stats.data_ptr<float>();
    Check(cpu::TokenLogprobsFwd(p), "tokenLogprobs");
    ctx->save_for_backward({logits});
    ctx->saved_data["targets"] = a.targets;
    ctx->saved_data["temperature"] = a.temperature;
    ctx->saved_data["stats"] = stats;
    ctx->saved_data["inv"] = double(a.inv_temperature);
    ctx->saved_data["ignore"] = a.ignore_index;
    // An unused output's gradient stays undefined rather than a tensor of
    // zeros, so an unused entropy costs nothing in the backward.
    ctx->set_materialize_grads(false);
    if (a.entropy) return {lp, ent};
    return {lp};
  }

  // d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T (token_logprobs.h).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor logits = ctx->get_saved_variables()[0];
    at::Tensor targets = ctx->saved_data["targets"].toTensor();
    at::Tensor temperature = ctx->saved_data["temperature"].toTensor();
    at::Tensor stats = ctx->saved_data["stats"].toTensor();
    at::Tensor g = grads[0];
    at::Tensor ge = grads.size() > 1 ? grads[1] : at::Tensor();
    if (!g.defined() && !ge.defined()) return {at::Tensor(), at::Tensor()};
    if (!g.defined()) g = at::zeros(targets.sizes(), logits.options().dtype(at::kFloat));
    g = g.to(at::kFloat).contiguous();
    if (ge.defined()) ge = ge.to(at::kFloat).contiguous();
    at::Tensor grad_logits = at::empty_like(logits, at::MemoryFormat::Contiguous);
    const int64_t vocab = logits.size(-1);
    TokenLogprobsBwdParams p;
    p.logits = logits.data_ptr();
    p.logits_dtype = KernelDType(logits.scalar_type());
    p.targets = targets.data_ptr();
    p.targets_dtype = KernelDType(targets.scalar_type());
    p.temperature = temperature.defined() ? temperature.data_ptr<float>() : nullptr;
    p.inv_temperature = float(ctx->saved_data["inv"].toDouble());
    p.grad_logprobs = g.data_ptr<float>();
    p.grad_entropy = ge.defined() ? ge.data_ptr<float>() : nullptr;
    p.stats = stats.data_ptr<float>();
    p.grad_logits = grad_logits.data_ptr();
    p.rows = targets.numel();
    p.vocab = vocab;
    p.vocab_start = 0;
    p.vocab_size = vocab;
    p.ignore_index = ctx->saved_data["ignore"].toInt();
    Check(cpu::TokenLogprobsBwd(p), "tokenLogprobs.backward");
    return {grad_logits, at::Tensor()};
  }
};

// The same checks the core binding makes (native/addon/token_logprobs.cc),
// on at::Tensors: what memory safety depends on, whatever TypeScript did.
void CheckTokenLogprobs(Napi::Env env, const at::Tensor& logits, const TlpArgs& a) {
  const std::string fn = "tokenLogprobs: ";
  auto st = logits.scalar_type();
  if (st != at::kFloat && st != at::kBFloat16 && st != at::kHalf)
    ThrowType(env, fn + "logits must be float32, bfloat16 or float16, got " + DTypeName(st));
  if (logits.dim() < 1 || logits.size(-1) < 1)
    ThrowRange(env, fn + "logits must have a last dimension (the vocabulary) of at least 1, got shape " + ShapeString(logits.sizes()));
  if (!logits.device().is_cpu())
    ThrowType(env, fn + "logits must be on the CPU: this bridge was built without CUDA kernels, got " + DeviceName(logits.device()));
  if (!logits.is_contiguous())
    ThrowType(env, fn + "logits must be contiguous, got shape " + ShapeString(logits.sizes()) + " with strides " +
                       ShapeString(logits.strides()) + "; call .contiguous() first");
  auto tt = a.targets.scalar_type();
  if (tt != at::kInt && tt != at::kLong) ThrowType(env, fn + "targets must be int32 or int64, got " + DTypeName(tt));
  if (a.targets.device() != logits.device())
    ThrowType(env, fn + "targets must be on " + DeviceName(logits.device()) + " like logits, got " + DeviceName(a.targets.device()));
  if (a.targets.sizes() != logits.sizes().slice(0, logits.dim() - 1))
    ThrowRange(env, fn + "targets must have shape " + ShapeString(logits.sizes().slice(0, logits.dim() - 1)) + ", got " +
                        ShapeString(a.targets.sizes()));
  if (!a.targets.is_contiguous()) ThrowType(env, fn + "targets must be contiguous; call .contiguous() first");
  const int64_t rows = a.targets.numel(), vocab = logits.size(-1);
  if (a.temperature.defined()) {
    const at::Tensor& t = a.temperature;
    if (t.scalar_type() != at::kFloat) ThrowType(env, fn + "temperature must be float32, got " + DTypeName(t.scalar_type()));
    if (t.device() != logits.device())
      ThrowType(env, fn + "temperature must be on " + DeviceName(logits.device()) + " like logits, got " + DeviceName(t.device()));
    if (t.numel() != rows || !t.is_contiguous())
      ThrowRange(env, fn + "temperature must be a contiguous tensor of one value per row (" + std::to_string(rows) + "), got shape " +
                          ShapeString(t.sizes()));
    const float* v = t.data_ptr<float>();
    for (int64_t i = 0; i < rows; ++i)
      if (!(v[i] > 0) || !std::isfinite(v[i]) || !std::isfinite(float(1.0 / double(v[i]))))
        ThrowRange(env, fn + "temperature[" + std::to_string(i) + "] must be a positive finite number, got " + std::to_string(v[i]));
  }
  auto check = [&](auto* p) {
    for (int64_t i = 0; i < rows; ++i) {
      int64_t x = int64_t(p[i]);
      if (x != a.ignore_index && (x < 0 || x >= vocab))
        ThrowRange(env, fn + "targets[" + std::to_string(i) + "] = " + std::to_string(x) + " is outside [0, " + std::to_string(vocab) +
                            ") and is not ignoreIndex (" + std::to_string(a.ignore_index) + ")");
    }
  };
  if (tt == at::kInt) check(a.targets.data_ptr<int32_t>());
  else check(a.targets.data_ptr<int64_t>());
}

// tokenLogprobs(logits, targets, temperature, temperatureTensor | null, ignoreIndex, entropy) -> [logprobs, entropy | null]
Napi::Value TokenLogprobs(const Napi::CallbackInfo& info) {
  const char* fn = "tokenLogprobs";
  Napi::Env env = info.Env();
  at::Tensor logits = TensorArg(info, 0, fn, "logits");
  TlpArgs a;
  a.targets = TensorArg(info, 1, fn, "targets");
  if (!info[2].IsNumber()) ThrowType(env, std::string(fn) + ": temperature must be a number, got " + Describe(info[2]));
  double temp = info[2].As<Napi::Number>().DoubleValue();
  if (!(temp > 0) || !std::isfinite(temp) || !std::isfinite(float(1.0 / temp)) || !(float(1.0 / temp) > 0))
    ThrowRange(env, std::string(fn) + ": temperature must be a positive finite number, got " + Describe(info[2]));
  a.inv_temperature = float(1.0 / temp);
  a.temperature = OptionalTensorArg(info, 3, fn, "temperature");
  if (!info[4].IsNumber()) ThrowType(env, std::string(fn) + ": ignoreIndex must be an integer, got " + Describe(info[4]));
  double ig = info[4].As<Napi::Number>().DoubleValue();
  if (ig != std::floor(ig) || std::fabs(ig) > 9007199254740991.0)
    ThrowRange(env, std::string(fn) + ": ignoreIndex must be an integer, got " + Describe(info[4]));
  a.ignore_index = int64_t(ig);
  if (!info[5].IsBoolean()) ThrowType(env, std::string(fn) + ": entropy must be a boolean, got " + Describe(info[5]));
  a.entropy = info[5].As<Napi::Boolean>().Value();
  CheckTokenLogprobs(env, logits, a);
  variable_list out;
  RLK_TORCH_TRY
  out = TokenLogprobsFunction::apply(logits, a);
  RLK_TORCH_CATCH(env, fn)
  Napi::Array res = Napi::Array::New(env, 2);
  res.Set(0u, TorchTensor::Wrap(env, out[0]));
  res.Set(1u, out.size() > 1 ? Napi::Value(TorchTensor::Wrap(env, out[1])) : env.Null());
  return res;
}

// How an output's upstream gradient scales a precomputed input gradient.
enum GradKind : int64_t { kScalar = 0, kElementwise = 1, kPerRow = 2 };

struct Precomputed {
  at::Tensor value;
  at::Tensor grad0, grad1;
  int64_t kind = kScalar;
};

at::Tensor Scale(const at::Tensor& g, const at::Tensor& up, int64_t kind) {
  if (!g.defined()) return at::Tensor();
  if (kind == kPerRow) return g * up.unsqueeze(-1).to(g.scalar_type());
  return g * up.to(g.scalar_type());
}

struct PrecomputedGradFunction : public torch::autograd::Function<PrecomputedGradFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& in0, const std::optional<at::Tensor>& in1,
                               const Precomputed& p) {
    ctx->saved_data["g0"] = p.grad0;
    ctx->saved_data["g1"] = p.grad1;
    ctx->saved_data["kind"] = p.kind;
    ctx->set_materialize_grads(false);
    return {p.value};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& up = grads[0];
    if (!up.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const int64_t kind = ctx->saved_data["kind"].toInt();
    return {Scale(ctx->saved_data["g0"].toTensor(), up, kind), Scale(ctx->saved_data["g1"].toTensor(), up, kind), at::Tensor()};
  }
};

// attachGrad(kind, value, input0, grad0, input1 | null, grad1 | null) -> value with a grad_fn
Napi::Value AttachGrad(const Napi::CallbackInfo& info) {
  const char* fn = "attachGrad";
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) ThrowType(env, std::string(fn) + ": kind must be 0, 1 or 2");
  Precomputed p;
  p.kind = int64_t(info[0].As<Napi::Number>().DoubleValue());
  if (p.kind < kScalar || p.kind > kPerRow) ThrowRange(env, std::string(fn) + ": kind must be 0, 1 or 2");
  p.value = TensorArg(info, 1, fn, "value");
  at::Tensor in0 = TensorArg(info, 2, fn, "input0");
  p.grad0 = TensorArg(info, 3, fn, "grad0");
  at::Tensor in1 = OptionalTensorArg(info, 4, fn, "input1");
  p.grad1 = OptionalTensorArg(info, 5, fn, "grad1");
  if (in1.defined() != p.grad1.defined()) ThrowType(env, std::string(fn) + ": input1 and grad1 go together");
  auto expect = [&](const at::Tensor& in, const at::Tensor& g, const char* name) {
    if (!in.defined()) return;
    const bool ok = p.kind == kScalar ? (p.value.numel() == 1 && g.sizes() == in.sizes())
                  : p.kind == kElementwise ? (g.sizes() == in.sizes() && p.value.sizes() == in.sizes())
                  : (g.sizes() == in.sizes() && in.dim() >= 1 && p.value.sizes() == in.sizes().slice(0, in.dim() - 1));
    if (!ok)
      ThrowRange(env, std::string(fn) + ": " + name + " of shape " + ShapeString(g.sizes()) + " does not fit input " +
                          ShapeString(in.sizes()) + " and value " + ShapeString(p.value.sizes()));
  };
  expect(in0, p.grad0, "grad0");
  expect(in1, p.grad1, "grad1");
  variable_list out;
  RLK_TORCH_TRY
  out = PrecomputedGradFunction::apply(in0, in1.defined() ? std::optional<at::Tensor>(in1) : std::nullopt, p);
  RLK_TORCH_CATCH(env, fn)
  return TorchTensor::Wrap(env, out[0]);
}

}  // namespace

void InitAutograd(Napi::Env env, Napi::Object exports) {
  exports.Set("tokenLogprobs", Napi::Function::New(env, TokenLogprobs, "tokenLogprobs"));
  exports.Set("attachGrad", Napi::Function::New(env, AttachGrad, "attachGrad"));
}

}  // namespace rlk::torch_bridge
