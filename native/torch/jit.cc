// TorchScript modules and torch.optim.AdamW (DESIGN 7). TorchScript is
// deprecated in PyTorch 2.13: everything that touches it is in this file and
// in src/torch_jit.ts, so another model format can replace it there alone.
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/optim/adamw.h>

#include <fstream>
#include <memory>

#include "bridge.h"

namespace rlk::torch_bridge {
namespace {

class JitModule : public Napi::ObjectWrap<JitModule> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeJitModule",
                       {
                           InstanceMethod("forward", &JitModule::Forward),
                           InstanceMethod("namedParameters", &JitModule::NamedParameters),
                           InstanceMethod("train", &JitModule::Train),
                           InstanceMethod("to", &JitModule::To),
                           InstanceMethod("save", &JitModule::Save),
                           InstanceAccessor("training", &JitModule::GetTraining, nullptr),
                       });
  }

  // new NativeJitModule(path, device | null)
  explicit JitModule(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JitModule>(info) {
    const char* fn = "jit.load";
    Napi::Env env = info.Env();
    if (!info[0].IsString()) ThrowType(env, std::string(fn) + ": path must be a string, got " + Describe(info[0]));
    std::string path = info[0].As<Napi::String>().Utf8Value();
    std::optional<at::Device> device;
    if (info.Length() > 1 && !info[1].IsNull() && !info[1].IsUndefined()) device = ParseDevice(env, fn, "device", info[1]);
    {
      std::ifstream f(path, std::ios::binary);
      if (!f) ThrowType(env, std::string(fn) + ": cannot open " + path);
      char magic[4] = {};
      f.read(magic, 4);
      // A TorchScript archive is a zip file (PK\3\4): anything else is refused
      // before the loader sees it.
      if (f.gcount() != 4 || magic[0] != 'P' || magic[1] != 'K' || magic[2] != 3 || magic[3] != 4)
        ThrowType(env, std::string(fn) + ": " + path + " is not a TorchScript file (not a zip archive: save it with torch.jit.save)");
    }
    try {
      module_ = std::make_shared<torch::jit::Module>(torch::jit::load(path, device));
    } catch (const c10::Error& e) {
      std::string m = e.what_without_backtrace();
      if (m.size() > 600) m = m.substr(0, 600) + " ...";
      ThrowType(env, std::string(fn) + ": " + path + " is not a TorchScript module this libtorch can load: " + m);
    } catch (const std::exception& e) {
      ThrowType(env, std::string(fn) + ": " + path + " could not be loaded: " + e.what());
    }
  }

 private:
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    const char* fn = "forward";
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) ThrowType(env, std::string(fn) + ": args must be an array, got " + Describe(info[0]));
    Napi::Array args = info[0].As<Napi::Array>();
    torch::jit::Method method = module_->get_method("forward");
    const auto& schema = method.function().getSchema();
    const auto& formal = schema.arguments();  // [0] is self
    if (args.Length() + 1 > formal.size())
      ThrowRange(env, std::string(fn) + ": takes " + std::to_string(formal.size() - 1) + " arguments (" + c10::toString(schema) +
                          "), got " + std::to_string(args.Length()));
    std::vector<c10::IValue> stack;
    for (size_t i = 1; i < formal.size(); ++i) {
      if (i - 1 < args.Length()) stack.push_back(ArgToIValue(env, fn, formal[i], args.Get(uint32_t(i - 1))));
      else if (formal[i].default_value()) stack.push_back(*formal[i].default_value());
      else ThrowType(env, std::string(fn) + ": argument '" + formal[i].name() + "' is missing (" + c10::toString(schema) + ")");
    }
    c10::IValue out;
    RLK_TORCH_TRY
    out = method(std::move(stack));
    RLK_TORCH_CATCH(env, fn)
    return IValueToJs(env, fn, out);
  }

  Napi::Value NamedParameters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto params = module_->named_parameters(/*recurse=*/true);
    std::vector<std::pair<std::string, at::Tensor>> list;
    for (const auto& p : params) list.emplace_back(p.name, p.value);
    Napi::Array a = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      Napi::Array pair = Napi::Array::New(env, 2);
      pair.Set(0u, Napi::String::New(env, list[i].first));
      pair.Set(1u, TorchTensor::Wrap(env, list[i].second));
      a.Set(uint32_t(i), pair);
    }
    return a;
  }

  Napi::Value Train(const Napi::CallbackInfo& info) {
    if (!info[0].IsBoolean()) ThrowType(info.Env(), "train: mode must be a boolean, got " + Describe(info[0]));
    module_->train(info[0].As<Napi::Boolean>().Value());
    return info.Env().Undefined();
  }

  Napi::Value GetTraining(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), module_->is_training()); }

  // to(device | null, dtype | null): parameters keep their identity (set_data),
  // so tensors from namedParameters() and optimizers stay valid.
  Napi::Value To(const Napi::CallbackInfo& info) {
    const char* fn = "to";
    Napi::Env env = info.Env();
    RLK_TORCH_TRY
    const bool has_device = info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined();
    const bool has_dtype = info.Length() > 1 && !info[1].IsNull() && !info[1].IsUndefined();
    if (has_device && has_dtype)
      module_->to(ParseDevice(env, fn, "device", info[0]), ParseDType(env, fn, "dtype", info[1]));
    else if (has_device)
      module_->to(ParseDevice(env, fn, "device", info[0]));
    else if (has_dtype)
      module_->to(ParseDType(env, fn, "dtype", info[1]));
    RLK_TORCH_CATCH(env, fn)
    return env.Undefined();
  }

  Napi::Value Save(const Napi::CallbackInfo& info) {
    const char* fn = "save";
    Napi::Env env = info.Env();
    if (!info[0].IsString()) ThrowType(env, std::string(fn) + ": path must be a string, got " + Describe(info[0]));
    RLK_TORCH_TRY
    module_->save(info[0].As<Napi::String>().Utf8Value());
    RLK_TORCH_CATCH(env, fn)
    return env.Undefined();
  }

  std::shared_ptr<torch::jit::Module> module_;
};

class AdamW : public Napi::ObjectWrap<AdamW> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeAdamW",
                       {
                           InstanceMethod("step", &AdamW::Step),
                           InstanceMethod("zeroGrad", &AdamW::ZeroGrad),
                           InstanceAccessor("lr", &AdamW::GetLr, &AdamW::SetLr),
                       });
  }

  // new NativeAdamW(params[], lr, beta1, beta2, eps, weightDecay); TypeScript checked the numbers.
  explicit AdamW(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AdamW>(info) {
    const char* fn = "optim.AdamW";
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) ThrowType(env, std::string(fn) + ": params must be an array of TorchTensors, got " + Describe(info[0]));
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<at::Tensor> params;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      at::Tensor t = TensorValue(env, a.Get(i), fn, "params[" + std::to_string(i) + "]");
      if (!t.is_leaf() || !t.is_floating_point())
        ThrowType(env, std::string(fn) + ": params[" + std::to_string(i) + "] must be a floating-point leaf tensor");
      params.push_back(t);
    }
    double v[5];
    for (int k = 0; k < 5; ++k) {
      if (!info[size_t(k) + 1].IsNumber()) ThrowType(env, std::string(fn) + ": options must be numbers");
      v[k] = info[size_t(k) + 1].As<Napi::Number>().DoubleValue();
    }
    RLK_TORCH_TRY
    opt_ = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(v[0]).betas(std::make_tuple(v[1], v[2])).eps(v[3]).weight_decay(v[4]));
    RLK_TORCH_CATCH(env, fn)
  }

 private:
  Napi::Value Step(const Napi::CallbackInfo& info) {
    RLK_TORCH_TRY
    opt_->step();
    RLK_TORCH_CATCH(info.Env(), "step")
    return info.Env().Undefined();
  }
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    bool set_to_none = !(info.Length() > 0 && info[0].IsBoolean()) || info[0].As<Napi::Boolean>().Value();
    opt_->zero_grad(set_to_none);
    return info.Env().Undefined();
  }
  Napi::Value GetLr(const Napi::CallbackInfo& info) {
    auto& g = opt_->param_groups().at(0);
    return Napi::Number::New(info.Env(), static_cast<torch::optim::AdamWOptions&>(g.options()).lr());
  }
  void SetLr(const Napi::CallbackInfo& info, const Napi::Value& v) {
    if (!v.IsNumber() || !(v.As<Napi::Number>().DoubleValue() >= 0) || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
      ThrowRange(info.Env(), "lr: value must be a finite number >= 0, got " + Describe(v));
    for (auto& g : opt_->param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(v.As<Napi::Number>().DoubleValue());
  }

  std::unique_ptr<torch::optim::AdamW> opt_;
};

}  // namespace

void InitJit(Napi::Env env, Napi::Object exports) {
  // The profiling executor re-optimises a small scripted model for seconds
  // per step here (TOOLCHAIN.md); the plain interpreter is what a trainer wants.
  torch::jit::setGraphExecutorOptimize(false);
  exports.Set("JitModule", JitModule::Define(env));
  exports.Set("AdamW", AdamW::Define(env));
}

}  // namespace rlk::torch_bridge
