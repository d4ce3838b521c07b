// The libtorch bridge (DESIGN 7): a second, thin Node-API binding that runs
// the package's kernels on at::Tensors. Only this folder includes torch
// headers; the kernels come from native/include/rlk and native/cpu, never a
// second copy of the math. Every entry point converts C++ exceptions (c10
// errors above all) into JS errors naming the function: an exception that
// escaped would abort the process.
#pragma once
#include <napi.h>

#include <ATen/ATen.h>
#include <ATen/core/function_schema.h>

#include <optional>
#include <string>
#include <vector>

#include "rlk/common.h"

namespace torch::autograd {
struct AutogradContext;
}

namespace rlk::torch_bridge {

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg);
[[noreturn]] void ThrowRange(Napi::Env env, const std::string& msg);
[[noreturn]] void ThrowDisposed(Napi::Env env, const std::string& fn, const std::string& name);
// Inside a catch: rethrows the current exception as a JS error prefixed by
// `fn: ` (TypeError for c10::TypeError/NotImplementedError, RangeError for the
// other c10 errors and bad_alloc, Error otherwise).
[[noreturn]] void Rethrow(Napi::Env env, const char* fn);

#define RLK_TORCH_TRY try {
#define RLK_TORCH_CATCH(env, fn)              \
  }                                           \
  catch (const Napi::Error&) {                \
    throw;                                    \
  }                                           \
  catch (...) {                               \
    ::rlk::torch_bridge::Rethrow((env), (fn)); \
  }

std::string Describe(Napi::Value v);
std::string ShapeString(at::IntArrayRef shape);
std::string DTypeName(at::ScalarType t);
at::ScalarType ParseDType(Napi::Env env, const std::string& fn, const std::string& name, Napi::Value v);
std::string DeviceName(const at::Device& d);
at::Device ParseDevice(Napi::Env env, const std::string& fn, const std::string& name, Napi::Value v);

// The JS handle of an at::Tensor.
class TorchTensor : public Napi::ObjectWrap<TorchTensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, at::Tensor t);
  static bool Is(Napi::Value v);
  explicit TorchTensor(const Napi::CallbackInfo& info);
  ~TorchTensor() override;
  const at::Tensor& tensor() const { return t_; }
  bool disposed() const { return disposed_; }

 private:
  void Release();
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value GetShape(const Napi::CallbackInfo& info);
  Napi::Value GetDType(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value GetRequiresGrad(const Napi::CallbackInfo& info);
  void SetRequiresGrad(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value GetGrad(const Napi::CallbackInfo& info);
  Napi::Value GetIsContiguous(const Napi::CallbackInfo& info);
  Napi::Value GetIsLeaf(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value ReadAsync(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value Detach(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info);
  Napi::Value DataPtr(const Napi::CallbackInfo& info);
  Napi::Value ViewKey(const Napi::CallbackInfo& info);
  Napi::Value ToDLPack(const Napi::CallbackInfo& info);

  at::Tensor t_;
  bool disposed_ = false;
  int64_t external_bytes_ = 0;
};

// Argument i as a live TorchTensor: TypeError when it is not one,
// DisposedError when it was disposed.
at::Tensor TensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
at::Tensor TensorValue(Napi::Env env, Napi::Value v, const std::string& fn, const std::string& name);
// A DLPack capsule (the core's toDLPack) as an at::Tensor sharing its memory;
// the capsule is consumed. TypeError for anything else.
at::Tensor TensorFromCapsule(Napi::Env env, Napi::Value v, const char* fn, const char* name);
// undefined/null give an undefined tensor.
at::Tensor OptionalTensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);

// A JS value as the IValue a schema argument wants (ops and TorchScript
// methods), and an IValue result as a JS value.
c10::IValue ArgToIValue(Napi::Env env, const std::string& fn, const c10::Argument& arg, Napi::Value v);
Napi::Value IValueToJs(Napi::Env env, const std::string& fn, const c10::IValue& v);

// The kernels' dtype of a tensor's, and a kernel Status as a c10 error (autograd.cc).
DType KernelDType(at::ScalarType t);
void Check(const Status& st, const char* fn);
void CheckRowValues(Napi::Env env, const std::string& pre, const at::Tensor& targets, const at::Tensor& temperature,
                    int64_t ignore_index, int64_t vocab);

// The backward of the token and linear log-prob autograd functions (whole or
// vocabulary-sharded), from the context their forwards save: the tensors
// (logits | hidden, weight, bias) and "targets", "temperature", "stats",
// "inv", "ignore", "start", "size" (and "chunk"). TokenLogprobsGrad gives the
// logits' gradient; LinearLogprobsGrads {gradHidden, gradWeight, gradBias};
// both nothing (undefined, empty) when no gradient reaches the outputs.
void SaveRowContext(torch::autograd::AutogradContext* ctx, const at::Tensor& targets, const at::Tensor& temperature,
                    const at::Tensor& stats, float inv_temperature, int64_t ignore_index, int64_t vocab_start, int64_t vocab_size);
at::Tensor TokenLogprobsGrad(torch::autograd::AutogradContext* ctx, const std::vector<at::Tensor>& grads, const char* fn);
std::vector<at::Tensor> LinearLogprobsGrads(torch::autograd::AutogradContext* ctx, const std::vector<at::Tensor>& grads,
                                            const char* fn);

void InitAutograd(Napi::Env env, Napi::Object exports);  // autograd.cc
void InitJit(Napi::Env env, Napi::Object exports);       // jit.cc
void InitDistributed(Napi::Env env, Napi::Object exports);  // distributed.cc

}  // namespace rlk::torch_bridge
