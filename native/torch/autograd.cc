// The kernels as autograd functions on at::Tensors (DESIGN 7).
//
// tokenLogprobs runs the CPU launchers of native/cpu/token_logprobs.cc on the
// tensors' memory: the forward saves the row statistics (max, sum of exp,
// entropy) and the backward reads the logits once more and writes their
// gradient, as the core's saveForBackward/stats path does.
//
// linearLogprobs runs the CPU launchers of native/cpu/linear_logprobs.cc the
// same way: the forward saves the row statistics, the backward recomputes the
// chunk's logits from hidden, weight (and bias) and writes the gradients of
// all three, as the core's linearLogprobsBackward with `stats` does.
//
// The loss families (policyLoss, klPenalty, vocabDivergence) return their
// gradient with the value (DESIGN 3): the TypeScript layer runs the core
// kernel on zero-copy DLPack views, so every option and mode of the core
// flows through unchanged, and attachGrad() gives the value a grad_fn whose
// backward scales the precomputed gradient by the upstream one (a scalar for
// a loss, elementwise for per-token values, per row for per-row values).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <cmath>

#include "bridge.h"
#include "rlk/linear_logprobs.h"
#include "rlk/runtime.h"
#include "rlk/token_logprobs.h"

namespace rlk::torch_bridge {

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

// What memory safety needs of a row function's side inputs once their dtype
// and device are checked: a per-row temperature tensor (one positive finite
// value with a finite inverse per row, contiguous) and targets in [0, vocab)
// or ignoreIndex. `pre` is "fn: ".
void CheckRowValues(Napi::Env env, const std::string& pre, const at::Tensor& targets, const at::Tensor& temperature,
                    int64_t ignore_index, int64_t vocab) {
  const int64_t rows = targets.numel();
  if (temperature.defined()) {
    const at::Tensor& t = temperature;
    if (t.numel() != rows || !t.is_contiguous())
      ThrowRange(env, pre + "temperature must be a contiguous tensor of one value per row (" + std::to_string(rows) + "), got shape " +
                          ShapeString(t.sizes()));
    const float* v = t.data_ptr<float>();
    for (int64_t i = 0; i < rows; ++i)
      if (!(v[i] > 0) || !std::isfinite(v[i]) || !std::isfinite(float(1.0 / double(v[i]))))
        ThrowRange(env, pre + "temperature[" + std::to_string(i) + "] must be a positive finite number, got " + std::to_string(v[i]));
  }
  auto check = [&](auto* p) {
    for (int64_t i = 0; i < rows; ++i) {
      int64_t x = int64_t(p[i]);
      if (x != ignore_index && (x < 0 || x >= vocab))
        ThrowRange(env, pre + "targets[" + std::to_string(i) + "] = " + std::to_string(x) + " is outside [0, " + std::to_string(vocab) +
                            ") and is not ignoreIndex (" + std::to_string(ignore_index) + ")");
    }
  };
  if (targets.scalar_type() == at::kInt) check(targets.data_ptr<int32_t>());
  else check(targets.data_ptr<int64_t>());
}


namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    SaveRowContext(ctx, a.targets, a.temperature, stats, a.inv_temperature, a.ignore_index, 0, vocab);
    // An unused output's gradient stays undefined rather than a tensor of
    // zeros, so an unused entropy costs nothing in the backward.
    ctx->set_materialize_grads(false);
    if (a.entropy) return {lp, ent};
    return {lp};
  }

  // d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T (token_logprobs.h).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {TokenLogprobsGrad(ctx, grads, "tokenLogprobs.backward"), at::Tensor()};
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
  const int64_t vocab = logits.size(-1);
  if (a.temperature.defined()) {
    const at::Tensor& t = a.temperature;
    if (t.scalar_type() != at::kFloat) ThrowType(env, fn + "temperature must be float32, got " + DTypeName(t.scalar_type()));
    if (t.device() != logits.device())
      ThrowType(env, fn + "temperature must be on " + DeviceName(logits.device()) + " like logits, got " + DeviceName(t.device()));
  }
  CheckRowValues(env, fn, a.targets, a.temperature, a.ignore_index, vocab);
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

// Everything linearLogprobs needs besides hidden, weight and bias.
struct LinArgs {
  at::Tensor targets;      // [rows], int32 or int64
  at::Tensor temperature;  // float32 [rows] or undefined
  float inv_temperature = 1.0f;
  int64_t ignore_index = -100;
  int64_t chunk = 0;
  bool entropy = false;
};

struct LinearLogprobsFunction : public torch::autograd::Function<LinearLogprobsFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const LinArgs& a) {
    const int64_t rows = a.targets.numel();
    auto f32 = hidden.options().dtype(at::kFloat);
    at::Tensor lp = at::empty(a.targets.sizes(), f32);
    at::Tensor ent = a.entropy ? at::empty(a.targets.sizes(), f32) : at::Tensor();
    at::Tensor stats = at::empty({rows, kTlpStatsCols}, f32);
    LinearLogprobsFwdParams p;
    p.hidden = hidden.data_ptr();
    p.weight = weight.data_ptr();
    p.bias = bias ? bias->data_ptr() : nullptr;
    p.dtype = KernelDType(hidden.scalar_type());
    p.bias_dtype = bias ? KernelDType(bias->scalar_type()) : p.dtype;
    p.targets = a.targets.data_ptr();
    p.targets_dtype = KernelDType(a.targets.scalar_type());
    p.temperature = a.temperature.defined() ? a.temperature.data_ptr<float>() : nullptr;
    p.inv_temperature = a.inv_temperature;
    p.rows = rows;
    p.dim = hidden.size(-1);
    p.vocab = weight.size(0);
    p.vocab_start = 0;
    p.vocab_size = weight.size(0);
    p.ignore_index = a.ignore_index;
    p.chunk = a.chunk;
    p.entropy = a.entropy;
    p.logprobs = lp.data_ptr<float>();
    p.entropy_out = a.entropy ? ent.data_ptr<float>() : nullptr;
    p.stats = stats.data_ptr<float>();
    Check(cpu::LinearLogprobsFwd(p), "linearLogprobs");
    ctx->save_for_backward({hidden, weight, bias ? *bias : at::Tensor()});
    SaveRowContext(ctx, a.targets, a.temperature, stats, a.inv_temperature, a.ignore_index, 0, weight.size(0));
    ctx->saved_data["chunk"] = a.chunk;
    ctx->set_materialize_grads(false);
    if (a.entropy) return {lp, ent};
    return {lp};
  }

  // gradHidden = dlogits @ W, gradWeight = dlogits^T @ hidden, gradBias = sum of dlogits (linear_logprobs.h).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = LinearLogprobsGrads(ctx, grads, "linearLogprobs.backward");
    if (g.empty()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    return {g[0], g[1], g[2], at::Tensor()};
  }
};

// The checks of the core binding (native/addon/linear_logprobs.cc) on at::Tensors.
void CheckLinearLogprobs(Napi::Env env, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                         const LinArgs& a) {
  const std::string fn = "linearLogprobs: ";
  auto st = hidden.scalar_type();
  if (st != at::kFloat && st != at::kBFloat16 && st != at::kHalf)
    ThrowType(env, fn + "hidden must be float32, bfloat16 or float16, got " + DTypeName(st));
  if (hidden.dim() < 1 || hidden.size(-1) < 1)
    ThrowRange(env, fn + "hidden must have a last dimension (the model width) of at least 1, got shape " + ShapeString(hidden.sizes()));
  auto cpu_contig = [&](const at::Tensor& t, const char* name) {
    if (!t.device().is_cpu())
      ThrowType(env, fn + name + " must be on the CPU: this bridge was built without CUDA kernels, got " + DeviceName(t.device()));
    if (!t.is_contiguous())
      ThrowType(env, fn + name + " must be contiguous, got shape " + ShapeString(t.sizes()) + " with strides " +
                         ShapeString(t.strides()) + "; call .contiguous() first");
  };
  cpu_contig(hidden, "hidden");
  if (weight.scalar_type() != st) ThrowType(env, fn + "weight must be " + DTypeName(st) + " like hidden, got " + DTypeName(weight.scalar_type()));
  cpu_contig(weight, "weight");
  const int64_t dim = hidden.size(-1);
  if (weight.dim() != 2 || weight.size(1) != dim || weight.size(0) < 1)
    ThrowRange(env, fn + "weight must have shape [V, " + std::to_string(dim) + "] with V >= 1, got " + ShapeString(weight.sizes()));
  const int64_t vocab = weight.size(0);
  if (bias.defined()) {
    if (bias.scalar_type() != st) ThrowType(env, fn + "bias must be " + DTypeName(st) + " like weight, got " + DTypeName(bias.scalar_type()));
    cpu_contig(bias, "bias");
    if (bias.dim() != 1 || bias.size(0) != vocab)
      ThrowRange(env, fn + "bias must have shape [" + std::to_string(vocab) + "], got " + ShapeString(bias.sizes()));
  }
  auto tt = a.targets.scalar_type();
  if (tt != at::kInt && tt != at::kLong) ThrowType(env, fn + "targets must be int32 or int64, got " + DTypeName(tt));
  if (!a.targets.device().is_cpu()) ThrowType(env, fn + "targets must be on cpu like hidden, got " + DeviceName(a.targets.device()));
  if (a.targets.sizes() != hidden.sizes().slice(0, hidden.dim() - 1))
    ThrowRange(env, fn + "targets must have shape " + ShapeString(hidden.sizes().slice(0, hidden.dim() - 1)) + ", got " +
                        ShapeString(a.targets.sizes()));
  if (!a.targets.is_contiguous()) ThrowType(env, fn + "targets must be contiguous; call .contiguous() first");
  if (a.temperature.defined()) {
    const at::Tensor& t = a.temperature;
    if (t.scalar_type() != at::kFloat) ThrowType(env, fn + "temperature must be float32, got " + DTypeName(t.scalar_type()));
    if (!t.device().is_cpu()) ThrowType(env, fn + "temperature must be on cpu like hidden, got " + DeviceName(t.device()));
  }
  CheckRowValues(env, fn, a.targets, a.temperature, a.ignore_index, vocab);
}

// linearLogprobs(hidden, weight, bias | null, targets, temperature, temperatureTensor | null, ignoreIndex, entropy, chunkSize)
//   -> [logprobs, entropy | null]
Napi::Value LinearLogprobs(const Napi::CallbackInfo& info) {
  const char* fn = "linearLogprobs";
  Napi::Env env = info.Env();
  at::Tensor hidden = TensorArg(info, 0, fn, "hidden");
  at::Tensor weight = TensorArg(info, 1, fn, "weight");
  at::Tensor bias = OptionalTensorArg(info, 2, fn, "bias");
  LinArgs a;
  a.targets = TensorArg(info, 3, fn, "targets");
  if (!info[4].IsNumber()) ThrowType(env, std::string(fn) + ": temperature must be a number, got " + Describe(info[4]));
  double temp = info[4].As<Napi::Number>().DoubleValue();
  if (!(temp > 0) || !std::isfinite(temp) || !std::isfinite(float(1.0 / temp)) || !(float(1.0 / temp) > 0))
    ThrowRange(env, std::string(fn) + ": temperature must be a positive finite number, got " + Describe(info[4]));
  a.inv_temperature = float(1.0 / temp);
  a.temperature = OptionalTensorArg(info, 5, fn, "temperature");
  if (!info[6].IsNumber()) ThrowType(env, std::string(fn) + ": ignoreIndex must be an integer, got " + Describe(info[6]));
  double ig = info[6].As<Napi::Number>().DoubleValue();
  if (ig != std::floor(ig) || std::fabs(ig) > 9007199254740991.0)
    ThrowRange(env, std::string(fn) + ": ignoreIndex must be an integer, got " + Describe(info[6]));
  a.ignore_index = int64_t(ig);
  if (!info[7].IsBoolean()) ThrowType(env, std::string(fn) + ": entropy must be a boolean, got " + Describe(info[7]));
  a.entropy = info[7].As<Napi::Boolean>().Value();
  if (!info[8].IsNumber()) ThrowType(env, std::string(fn) + ": chunkSize must be an integer, got " + Describe(info[8]));
  double ch = info[8].As<Napi::Number>().DoubleValue();
  if (ch != std::floor(ch) || ch < 0 || ch > double(int64_t(1) << 30))
    ThrowRange(env, std::string(fn) + ": chunkSize must be an integer in [0, 2^30], got " + Describe(info[8]));
  a.chunk = int64_t(ch);
  CheckLinearLogprobs(env, hidden, weight, bias, a);
  variable_list out;
  RLK_TORCH_TRY
  out = LinearLogprobsFunction::apply(hidden, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt, a);
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

// A bare autograd Node (no torch::autograd::Function: no context, no saved
// map, no output wrapping), as libtorch's generated backward nodes are made:
// the value gets it as grad_fn, its next edges are the inputs'.
struct PrecomputedGradNode : public torch::autograd::Node {
  explicit PrecomputedGradNode(torch::autograd::edge_list&& next) : Node(std::move(next)) {}
  std::string name() const override { return "rlkernels::PrecomputedGradBackward"; }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& up = grads[0];
    if (!up.defined()) return {at::Tensor(), at::Tensor()};
    return {Scale(grad0, up, kind), Scale(grad1, up, kind)};
  }
  at::Tensor grad0, grad1;
  int64_t kind = kScalar;
};

// attachGrad(kind, value, input0, grad0, input1 | null, grad1 | null) -> value with a grad_fn.
// `value` may be the core result's DLPack capsule itself: one handle fewer per call.
Napi::Value AttachGrad(const Napi::CallbackInfo& info) {
  const char* fn = "attachGrad";
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) ThrowType(env, std::string(fn) + ": kind must be 0, 1 or 2");
  Precomputed p;
  p.kind = int64_t(info[0].As<Napi::Number>().DoubleValue());
  if (p.kind < kScalar || p.kind > kPerRow) ThrowRange(env, std::string(fn) + ": kind must be 0, 1 or 2");
  p.value = info[1].IsExternal() ? TensorFromCapsule(env, info[1], fn, "value") : TensorArg(info, 1, fn, "value");
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
  // A handle may already have a history: the node goes on a view of it.
  at::Tensor out = info[1].IsExternal() ? p.value : p.value.detach();
  RLK_TORCH_TRY
  if (torch::autograd::compute_requires_grad(in0, in1)) {
    auto node = c10::make_intrusive<PrecomputedGradNode>(torch::autograd::collect_next_edges(in0, in1));
    node->grad0 = std::move(p.grad0);
    node->grad1 = std::move(p.grad1);
    node->kind = p.kind;
    torch::autograd::set_history(out, node);
  }
  RLK_TORCH_CATCH(env, fn)
  return TorchTensor::Wrap(env, std::move(out));
}

}  // namespace

void InitAutograd(Napi::Env env, Napi::Object exports) {
  exports.Set("tokenLogprobs", Napi::Function::New(env, TokenLogprobs, "tokenLogprobs"));
  exports.Set("linearLogprobs", Napi::Function::New(env, LinearLogprobs, "linearLogprobs"));
  exports.Set("attachGrad", Napi::Function::New(env, AttachGrad, "attachGrad"));
}

// ---- the backward kernels from a saved context (shared with distributed.cc) ----

// The upstream gradients of (log-probs, entropy) as contiguous float32, a
// missing log-prob gradient as zeros; false when neither reaches the outputs.
static bool Upstream(const std::vector<at::Tensor>& grads, const at::Tensor& targets, at::Tensor* g, at::Tensor* ge) {
  *g = grads[0];
  *ge = grads.size() > 1 ? grads[1] : at::Tensor();
  if (!g->defined() && !ge->defined()) return false;
  *g = g->defined() ? g->to(at::kFloat).contiguous() : at::zeros(targets.sizes(), targets.options().dtype(at::kFloat));
  if (ge->defined()) *ge = ge->to(at::kFloat).contiguous();
  return true;
}

void SaveRowContext(AutogradContext* ctx, const at::Tensor& targets, const at::Tensor& temperature, const at::Tensor& stats,
                    float inv_temperature, int64_t ignore_index, int64_t vocab_start, int64_t vocab_size) {
  ctx->saved_data["targets"] = targets;
  ctx->saved_data["temperature"] = temperature;
  ctx->saved_data["stats"] = stats;
  ctx->saved_data["inv"] = double(inv_temperature);
  ctx->saved_data["ignore"] = ignore_index;
  ctx->saved_data["start"] = vocab_start;
  ctx->saved_data["size"] = vocab_size;
}

// The row fields the token and linear backward params share, from the context SaveRowContext wrote.
template <class P>
static void FillRowBwd(AutogradContext* ctx, const at::Tensor& targets, const at::Tensor& g, const at::Tensor& ge, P* p) {
  const at::Tensor temperature = ctx->saved_data["temperature"].toTensor();
  const at::Tensor stats = ctx->saved_data["stats"].toTensor();
  p->targets = targets.data_ptr();
  p->targets_dtype = KernelDType(targets.scalar_type());
  // The context keeps temperature and stats alive: their pointers outlive these locals.
  p->temperature = temperature.defined() ? temperature.data_ptr<float>() : nullptr;
  p->inv_temperature = float(ctx->saved_data["inv"].toDouble());
  p->grad_logprobs = g.data_ptr<float>();
  p->grad_entropy = ge.defined() ? ge.data_ptr<float>() : nullptr;
  p->stats = stats.data_ptr<float>();
  p->rows = targets.numel();
  p->vocab_start = ctx->saved_data["start"].toInt();
  p->vocab_size = ctx->saved_data["size"].toInt();
  p->ignore_index = ctx->saved_data["ignore"].toInt();
}

// d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T (token_logprobs.h).
at::Tensor TokenLogprobsGrad(AutogradContext* ctx, const std::vector<at::Tensor>& grads, const char* fn) {
  at::Tensor logits = ctx->get_saved_variables()[0];
  at::Tensor targets = ctx->saved_data["targets"].toTensor();
  at::Tensor g, ge;
  if (!Upstream(grads, targets, &g, &ge)) return at::Tensor();
  at::Tensor grad_logits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  TokenLogprobsBwdParams p;
  p.logits = logits.data_ptr();
  p.logits_dtype = KernelDType(logits.scalar_type());
  FillRowBwd(ctx, targets, g, ge, &p);
  p.grad_logits = grad_logits.data_ptr();
  p.vocab = logits.size(-1);
  Check(cpu::TokenLogprobsBwd(p), fn);
  return grad_logits;
}

// gradHidden = dlogits @ W, gradWeight = dlogits^T @ hidden, gradBias = sum of dlogits (linear_logprobs.h).
std::vector<at::Tensor> LinearLogprobsGrads(AutogradContext* ctx, const std::vector<at::Tensor>& grads, const char* fn) {
  auto saved = ctx->get_saved_variables();
  const at::Tensor& hidden = saved[0];
  const at::Tensor& weight = saved[1];
  const at::Tensor& bias = saved[2];
  at::Tensor targets = ctx->saved_data["targets"].toTensor();
  at::Tensor g, ge;
  if (!Upstream(grads, targets, &g, &ge)) return {};
  at::Tensor grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = at::empty_like(weight, at::MemoryFormat::Contiguous);
  at::Tensor grad_bias = bias.defined() ? at::empty_like(bias, at::MemoryFormat::Contiguous) : at::Tensor();
  LinearLogprobsBwdParams p;
  p.hidden = hidden.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.dtype = KernelDType(hidden.scalar_type());
  p.bias_dtype = bias.defined() ? KernelDType(bias.scalar_type()) : p.dtype;
  FillRowBwd(ctx, targets, g, ge, &p);
  p.dim = hidden.size(-1);
  p.vocab = weight.size(0);
  p.chunk = ctx->saved_data["chunk"].toInt();
  p.grad_hidden = grad_hidden.data_ptr();
  p.grad_weight = grad_weight.data_ptr();
  p.grad_bias = grad_bias.defined() ? grad_bias.data_ptr() : nullptr;
  Check(cpu::LinearLogprobsBwd(p), fn);
  return {grad_hidden, grad_weight, grad_bias};
}

}  // namespace rlk::torch_bridge
