// The bridge's module entry, TorchTensor, tensor creation and reads, DLPack
// both ways, and the boxed call of any aten operator by name (the trainer's
// few tensor ops are thin TypeScript over it: src/torch.ts).
#include "bridge.h"
#include "rlk/runtime.h"

#include <ATen/DLConvertor.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/version.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "rlk/dlpack_capsule.h"

namespace rlk::torch_bridge {
namespace {
Napi::FunctionReference* g_tensor_ctor = nullptr;
Napi::FunctionReference g_disposed_ctor;
int g_construct_token = 0;
// The one External that carries g_construct_token (made once: a new External
// for every tensor handle cost an allocation and a finaliser-less GC object).
Napi::Reference<Napi::External<int>>* g_construct_arg = nullptr;
int64_t g_live_tensors = 0;
// Disposed handles the JS side hands back (torch_tensor.ts RECYCLE): a new
// handle reuses one instead of paying napi_wrap's reference and finaliser
// (a third of a DLPack conversion's cost, as for the core's tensors).
Napi::ObjectReference* g_recycle = nullptr;
// Identifies the bridge's handles without napi_instanceof's prototype walk.
const napi_type_tag kTorchTensorTag = {0x726c6b746f726368ull, 0x54656e736f720001ull};
}  // namespace

// ---- errors -------------------------------------------------------------------

void ThrowType(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }
void ThrowRange(Napi::Env env, const std::string& msg) { throw Napi::RangeError::New(env, msg); }

void ThrowDisposed(Napi::Env env, const std::string& fn, const std::string& name) {
  std::string msg = fn + ": " + name + " was disposed";
  if (!g_disposed_ctor.IsEmpty()) throw Napi::Error(env, g_disposed_ctor.New({Napi::String::New(env, msg)}));
  throw Napi::Error::New(env, msg);
}

namespace {
// c10 messages can run to pages (a TorchScript stack): keep the head.
std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  if (s.size() > 2000) s = s.substr(0, 2000) + " ...";
  return s;
}
}  // namespace

void Rethrow(Napi::Env env, const char* fn) {
  const std::string pre = std::string(fn) + ": ";
  try {
    throw;
  } catch (const c10::TypeError& e) {
    ThrowType(env, pre + Trim(e.what_without_backtrace()));
  } catch (const c10::NotImplementedError& e) {
    ThrowType(env, pre + Trim(e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    ThrowRange(env, pre + Trim(e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    ThrowRange(env, pre + "out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, pre + Trim(e.what()));
  } catch (...) {
    throw Napi::Error::New(env, pre + "unknown C++ exception");
  }
}

// ---- descriptions and parsing ---------------------------------------------------

std::string Describe(Napi::Value v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return v.As<Napi::Boolean>().Value() ? "true" : "false";
    case napi_number: {
      double d = v.As<Napi::Number>().DoubleValue();
      std::ostringstream os;
      os << d;
      return os.str();
    }
    case napi_string: {
      std::string s = v.As<Napi::String>().Utf8Value();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "\"" + s + "\"";
    }
    case napi_bigint: return "a bigint";
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_external: return "an external";
    default: break;
  }
  if (TorchTensor::Is(v)) {
    auto* t = TorchTensor::Unwrap(v.As<Napi::Object>());
    if (t->disposed()) return "a disposed TorchTensor";
    return "a " + DTypeName(t->tensor().scalar_type()) + " TorchTensor of shape " + ShapeString(t->tensor().sizes()) + " on " +
           DeviceName(t->tensor().device());
  }
  if (v.IsArray()) return "an array of length " + std::to_string(v.As<Napi::Array>().Length());
  if (v.IsTypedArray()) return "a typed array";
  return "an object";
}

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string DTypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return std::string(c10::toString(t));
  }
}

at::ScalarType ParseDType(Napi::Env env, const std::string& fn, const std::string& name, Napi::Value v) {
  static const std::pair<const char*, at::ScalarType> kNames[] = {
      {"float32", at::kFloat}, {"float64", at::kDouble}, {"bfloat16", at::kBFloat16}, {"float16", at::kHalf},
      {"int32", at::kInt},     {"int64", at::kLong},     {"int16", at::kShort},       {"int8", at::kChar},
      {"uint8", at::kByte},    {"bool", at::kBool}};
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    for (const auto& [n, t] : kNames)
      if (s == n) return t;
    ThrowRange(env, fn + ": " + name +
                        " must be one of 'float32', 'float64', 'bfloat16', 'float16', 'int32', 'int64', 'int16', 'int8', "
                        "'uint8', 'bool', got " + Describe(v));
  }
  ThrowType(env, fn + ": " + name + " must be a dtype name, got " + Describe(v));
}

std::string DeviceName(const at::Device& d) {
  if (d.is_cpu()) return "cpu";
  if (d.is_cuda()) return "cuda:" + std::to_string(d.has_index() ? d.index() : 0);
  return d.str();
}

at::Device ParseDevice(Napi::Env env, const std::string& fn, const std::string& name, Napi::Value v) {
  if (!v.IsString()) ThrowType(env, fn + ": " + name + " must be 'cpu', 'cuda' or 'cuda:N', got " + Describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "cpu") return at::Device(at::kCPU);
  int index = 0;
  if (s == "cuda") index = 0;
  else if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() <= 7 &&
           s.find_first_not_of("0123456789", 5) == std::string::npos)
    index = std::stoi(s.substr(5));
  else
    ThrowRange(env, fn + ": " + name + " must be 'cpu', 'cuda' or 'cuda:N', got " + Describe(v));
  if (!at::hasCUDA())
    ThrowType(env, fn + ": " + name + " '" + s + "' was asked for but the libtorch this bridge uses has no CUDA (a CPU build of torch, or no GPU/driver)");
  if (index >= int(at::detail::getCUDAHooks().deviceCount()))
    ThrowRange(env, fn + ": " + name + " '" + s + "' does not exist: libtorch sees " +
                        std::to_string(at::detail::getCUDAHooks().deviceCount()) + " CUDA device(s)");
  return at::Device(at::kCUDA, c10::DeviceIndex(index));
}

// ---- TorchTensor ----------------------------------------------------------------

Napi::Function TorchTensor::Define(Napi::Env env) {
  Napi::Function f = DefineClass(
      env, "NativeTorchTensor",
      {
          InstanceMethod("dispose", &TorchTensor::Dispose),
          InstanceMethod("read", &TorchTensor::Read),
          InstanceMethod("readAsync", &TorchTensor::ReadAsync),
          InstanceMethod("backward", &TorchTensor::Backward),
          InstanceMethod("detach", &TorchTensor::Detach),
          InstanceMethod("to", &TorchTensor::To),
          InstanceMethod("zeroGrad", &TorchTensor::ZeroGrad),
          InstanceMethod("dataPtr", &TorchTensor::DataPtr),
          InstanceMethod("viewKey", &TorchTensor::ViewKey),
          InstanceMethod("toDLPack", &TorchTensor::ToDLPack),
          InstanceAccessor("shape", &TorchTensor::GetShape, nullptr),
          InstanceAccessor("dtype", &TorchTensor::GetDType, nullptr),
          InstanceAccessor("device", &TorchTensor::GetDevice, nullptr),
          InstanceAccessor("disposed", &TorchTensor::GetDisposed, nullptr),
          InstanceAccessor("requiresGrad", &TorchTensor::GetRequiresGrad, &TorchTensor::SetRequiresGrad),
          InstanceAccessor("grad", &TorchTensor::GetGrad, nullptr),
          InstanceAccessor("isContiguous", &TorchTensor::GetIsContiguous, nullptr),
          InstanceAccessor("isLeaf", &TorchTensor::GetIsLeaf, nullptr),
      });
  g_tensor_ctor = new Napi::FunctionReference(Napi::Persistent(f));
  return f;
}

bool TorchTensor::Is(Napi::Value v) {
  if (!g_tensor_ctor || !v.IsObject()) return false;
  bool is = false;
  if (napi_check_object_type_tag(v.Env(), v, &kTorchTensorTag, &is) != napi_ok || !is) return false;
  void* wrapped = nullptr;
  return napi_unwrap(v.Env(), v, &wrapped) == napi_ok && wrapped != nullptr;
}

TorchTensor::TorchTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TorchTensor>(info) {
  if (info.Length() != 1 || !info[0].IsExternal() || info[0].As<Napi::External<int>>().Data() != &g_construct_token) {
    disposed_ = true;
    ThrowType(info.Env(), "NativeTorchTensor cannot be constructed directly: use the rlkernels/torch factories");
  }
  napi_type_tag_object(info.Env(), info.This(), &kTorchTensorTag);
}

Napi::Object TorchTensor::Wrap(Napi::Env env, at::Tensor t) {
  Napi::Object obj;
  TorchTensor* w = nullptr;
  if (g_recycle) {
    Napi::Array pool = g_recycle->Value().As<Napi::Array>();
    for (uint32_t n = pool.Length(); n > 0 && !w; --n) {
      Napi::Value v = pool.Get(n - 1);
      pool.Set("length", Napi::Number::New(env, n - 1));
      if (!Is(v)) continue;
      TorchTensor* c = Unwrap(v.As<Napi::Object>());
      if (c->disposed_ && !c->t_.defined()) {
        obj = v.As<Napi::Object>();
        w = c;
        w->disposed_ = false;
      }
    }
  }
  if (!w) {
    if (!g_construct_arg)
      g_construct_arg = new Napi::Reference<Napi::External<int>>(Napi::Persistent(Napi::External<int>::New(env, &g_construct_token)));
    obj = g_tensor_ctor->New({g_construct_arg->Value()});
    w = Unwrap(obj);
  }
  w->t_ = std::move(t);
  ++g_live_tensors;
  // Host memory this handle alone keeps alive is reported to V8, so that the
  // GC backstop sees the pressure of tensors nobody disposed.
  if (w->t_.defined() && w->t_.device().is_cpu() && w->t_.use_count() == 1 && w->t_.has_storage()) {
    w->external_bytes_ = int64_t(w->t_.storage().nbytes());
    Napi::MemoryManagement::AdjustExternalMemory(env, w->external_bytes_);
  }
  return obj;
}

void TorchTensor::Release() {
  if (disposed_) return;
  disposed_ = true;
  t_ = at::Tensor();
  --g_live_tensors;
  if (external_bytes_) {
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -external_bytes_);
    external_bytes_ = 0;
  }
}

TorchTensor::~TorchTensor() {
  if (!disposed_) {
    disposed_ = true;
    t_ = at::Tensor();
    --g_live_tensors;
  }
}

Napi::Value TorchTensor::Dispose(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

#define RLK_LIVE(fn)                                         \
  if (disposed_) ThrowDisposed(info.Env(), fn, "tensor");

Napi::Value TorchTensor::GetShape(const Napi::CallbackInfo& info) {
  RLK_LIVE("shape");
  auto s = t_.sizes();
  Napi::Array a = Napi::Array::New(info.Env(), s.size());
  for (size_t i = 0; i < s.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(info.Env(), double(s[i])));
  return a;
}
Napi::Value TorchTensor::GetDType(const Napi::CallbackInfo& info) {
  RLK_LIVE("dtype");
  return Napi::String::New(info.Env(), DTypeName(t_.scalar_type()));
}
Napi::Value TorchTensor::GetDevice(const Napi::CallbackInfo& info) {
  RLK_LIVE("device");
  return Napi::String::New(info.Env(), DeviceName(t_.device()));
}
Napi::Value TorchTensor::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
Napi::Value TorchTensor::GetRequiresGrad(const Napi::CallbackInfo& info) {
  RLK_LIVE("requiresGrad");
  return Napi::Boolean::New(info.Env(), t_.requires_grad());
}
void TorchTensor::SetRequiresGrad(const Napi::CallbackInfo& info, const Napi::Value& v) {
  RLK_LIVE("requiresGrad");
  if (!v.IsBoolean()) ThrowType(info.Env(), "requiresGrad: value must be a boolean, got " + Describe(v));
  RLK_TORCH_TRY
  t_.requires_grad_(v.As<Napi::Boolean>().Value());
  RLK_TORCH_CATCH(info.Env(), "requiresGrad")
}
Napi::Value TorchTensor::GetGrad(const Napi::CallbackInfo& info) {
  RLK_LIVE("grad");
  const at::Tensor& g = t_.grad();
  if (!g.defined()) return info.Env().Null();
  return Wrap(info.Env(), g);
}
Napi::Value TorchTensor::GetIsContiguous(const Napi::CallbackInfo& info) {
  RLK_LIVE("isContiguous");
  return Napi::Boolean::New(info.Env(), t_.is_contiguous());
}
Napi::Value TorchTensor::GetIsLeaf(const Napi::CallbackInfo& info) {
  RLK_LIVE("isLeaf");
  return Napi::Boolean::New(info.Env(), t_.is_leaf());
}

namespace {
// What a read hands to JS: 16-bit floats widen to float32, bool to uint8.
at::ScalarType ReadType(at::ScalarType t) {
  if (t == at::kHalf || t == at::kBFloat16) return at::kFloat;
  if (t == at::kBool) return at::kByte;
  return t;
}

// A host copy in the read dtype; no JS (runs on a worker for readAsync).
void CopyOut(const at::Tensor& t, void** out, size_t* bytes) {
  at::Tensor c = t.detach().to(at::kCPU, ReadType(t.scalar_type())).contiguous();
  *bytes = size_t(c.numel()) * c.element_size();
  *out = std::malloc(*bytes ? *bytes : 1);
  if (!*out) throw std::bad_alloc();
  if (*bytes) std::memcpy(*out, c.data_ptr(), *bytes);
}

Napi::Value MakeArrayBuffer(Napi::Env env, void* data, size_t bytes) {
  if (!bytes) {
    std::free(data);
    return Napi::ArrayBuffer::New(env, 0);
  }
  return Napi::ArrayBuffer::New(env, data, bytes, [](Napi::Env, void* p) { std::free(p); });
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, at::Tensor t)
      : Napi::AsyncWorker(env, "rlkernels.torch.read"), deferred_(Napi::Promise::Deferred::New(env)), t_(std::move(t)) {}
  ~ReadWorker() override { std::free(out_); }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      CopyOut(t_, &out_, &bytes_);
    } catch (const c10::Error& e) {
      SetError(std::string("toArray: ") + e.what_without_backtrace());
    } catch (const std::exception& e) {
      SetError(std::string("toArray: ") + e.what());
    }
  }
  void OnOK() override {
    t_ = at::Tensor();
    void* p = out_;
    out_ = nullptr;
    deferred_.Resolve(MakeArrayBuffer(Env(), p, bytes_));
  }
  void OnError(const Napi::Error& e) override {
    t_ = at::Tensor();
    deferred_.Reject(Napi::RangeError::New(Env(), e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  at::Tensor t_;
  void* out_ = nullptr;
  size_t bytes_ = 0;
};
}  // namespace

Napi::Value TorchTensor::Read(const Napi::CallbackInfo& info) {
  RLK_LIVE("toArraySync");
  void* out = nullptr;
  size_t bytes = 0;
  RLK_TORCH_TRY
  CopyOut(t_, &out, &bytes);
  RLK_TORCH_CATCH(info.Env(), "toArraySync")
  return MakeArrayBuffer(info.Env(), out, bytes);
}

Napi::Value TorchTensor::ReadAsync(const Napi::CallbackInfo& info) {
  RLK_LIVE("toArray");
  auto* w = new ReadWorker(info.Env(), t_);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// backward(gradient | null, retainGraph)
Napi::Value TorchTensor::Backward(const Napi::CallbackInfo& info) {
  const char* fn = "backward";
  RLK_LIVE(fn);
  Napi::Env env = info.Env();
  at::Tensor grad = OptionalTensorArg(info, 0, fn, "gradient");
  if (info.Length() > 1 && !info[1].IsBoolean() && !info[1].IsUndefined())
    ThrowType(env, std::string(fn) + ": retainGraph must be a boolean, got " + Describe(info[1]));
  bool retain = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  if (!t_.requires_grad())
    ThrowType(env, std::string(fn) + ": tensor does not require grad and has no grad_fn (was it computed under noGrad, or from "
                                     "inputs none of which requires grad?)");
  if (!grad.defined() && t_.numel() != 1)
    ThrowRange(env, std::string(fn) + ": gradient must be given for a tensor of shape " + ShapeString(t_.sizes()) +
                        " (only a one-element tensor has an implicit gradient of 1)");
  RLK_TORCH_TRY
  t_.backward(grad, retain);
  RLK_TORCH_CATCH(env, fn)
  return env.Undefined();
}

Napi::Value TorchTensor::Detach(const Napi::CallbackInfo& info) {
  RLK_LIVE("detach");
  RLK_TORCH_TRY
  return Wrap(info.Env(), t_.detach());
  RLK_TORCH_CATCH(info.Env(), "detach")
}

// to(dtype | null, device | null, copy)
Napi::Value TorchTensor::To(const Napi::CallbackInfo& info) {
  const char* fn = "to";
  RLK_LIVE(fn);
  Napi::Env env = info.Env();
  at::ScalarType dtype = t_.scalar_type();
  at::Device device = t_.device();
  if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined()) dtype = ParseDType(env, fn, "dtype", info[0]);
  if (info.Length() > 1 && !info[1].IsNull() && !info[1].IsUndefined()) device = ParseDevice(env, fn, "device", info[1]);
  bool copy = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  RLK_TORCH_TRY
  return Wrap(env, t_.to(device, dtype, /*non_blocking=*/false, copy));
  RLK_TORCH_CATCH(env, fn)
}

Napi::Value TorchTensor::ZeroGrad(const Napi::CallbackInfo& info) {
  RLK_LIVE("zeroGrad");
  t_.mutable_grad().reset();
  return info.Env().Undefined();
}

Napi::Value TorchTensor::DataPtr(const Napi::CallbackInfo& info) {
  RLK_LIVE("dataPtr");
  return Napi::Number::New(info.Env(), double(reinterpret_cast<uintptr_t>(t_.data_ptr())));
}

// What a core view of this tensor depends on: the address of its first
// element while it is contiguous, -1 otherwise. TypeScript keeps the core
// view it made (torch.ts) while this stays the same, so that the core-backed
// autograd functions make no DLPack capsule per call.
Napi::Value TorchTensor::ViewKey(const Napi::CallbackInfo& info) {
  RLK_LIVE("viewKey");
  if (!t_.is_contiguous() || !t_.has_storage()) return Napi::Number::New(info.Env(), -1);
  return Napi::Number::New(info.Env(), double(reinterpret_cast<uintptr_t>(t_.data_ptr())));
}

namespace {
void FinalizeCapsule(Napi::Env, DLPackCapsule* c) {
  if (c->managed) {
    auto* m = static_cast<DLManagedTensor*>(c->managed);
    if (m->deleter) m->deleter(m);
  }
  delete c;
}
}  // namespace

Napi::Value TorchTensor::ToDLPack(const Napi::CallbackInfo& info) {
  const char* fn = "toCore";
  RLK_LIVE(fn);
  Napi::Env env = info.Env();
  if (!t_.is_contiguous())
    ThrowType(env, std::string(fn) + ": tensor must be contiguous (core tensors are row-major), got shape " +
                       ShapeString(t_.sizes()) + " with strides " + ShapeString(t_.strides()) + "; call .contiguous() first");
  DLManagedTensor* m = nullptr;
  RLK_TORCH_TRY
  m = at::toDLPack(t_.detach());
  RLK_TORCH_CATCH(env, fn)
  auto ext = Napi::External<DLPackCapsule>::New(env, new DLPackCapsule{m}, FinalizeCapsule);
  napi_type_tag_object(env, ext, &kDLPackCapsuleTag);
  return ext;
}

// ---- module functions ---------------------------------------------------------

at::Tensor TensorValue(Napi::Env env, Napi::Value v, const std::string& fn, const std::string& name) {
  if (!TorchTensor::Is(v)) ThrowType(env, fn + ": " + name + " must be a TorchTensor, got " + Describe(v));
  auto* t = TorchTensor::Unwrap(v.As<Napi::Object>());
  if (t->disposed()) ThrowDisposed(env, fn, name);
  return t->tensor();
}

at::Tensor TensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  return TensorValue(info.Env(), info[i], fn, name);
}

at::Tensor OptionalTensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return at::Tensor();
  return TensorArg(info, i, fn, name);
}

namespace {

std::vector<int64_t> ShapeValue(Napi::Env env, Napi::Value v, const std::string& fn, const std::string& name) {
  if (!v.IsArray()) ThrowType(env, fn + ": " + name + " must be an array of sizes, got " + Describe(v));
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    if (!d.IsNumber()) ThrowType(env, fn + ": " + name + "[" + std::to_string(i) + "] must be a number, got " + Describe(d));
    double x = d.As<Napi::Number>().DoubleValue();
    if (!(x >= 0) || x > 9007199254740991.0 || x != std::floor(x))
      ThrowRange(env, fn + ": " + name + "[" + std::to_string(i) + "] must be a non-negative integer, got " + Describe(d));
    s.push_back(int64_t(x));
  }
  return s;
}

// fromData(shape, dtype, device, typedArray, requiresGrad): a copy of JS data.
// The typed array's own element type is what is read (TypeScript picks it);
// the conversion to dtype rounds as torch's .to() does.
Napi::Value FromData(const Napi::CallbackInfo& info) {
  const char* fn = "tensor";
  Napi::Env env = info.Env();
  std::vector<int64_t> shape = ShapeValue(env, info[0], fn, "shape");
  at::ScalarType dtype = ParseDType(env, fn, "dtype", info[1]);
  at::Device device = ParseDevice(env, fn, "device", info[2]);
  if (!info[3].IsTypedArray()) ThrowType(env, std::string(fn) + ": data must be a typed array, got " + Describe(info[3]));
  Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
  at::ScalarType src;
  switch (ta.TypedArrayType()) {
    case napi_float32_array: src = at::kFloat; break;
    case napi_float64_array: src = at::kDouble; break;
    case napi_int32_array: src = at::kInt; break;
    case napi_bigint64_array: src = at::kLong; break;
    case napi_uint8_array: src = at::kByte; break;
    case napi_int8_array: src = at::kChar; break;
    case napi_int16_array: src = at::kShort; break;
    default: ThrowType(env, std::string(fn) + ": data must be a Float32Array, Float64Array, Int32Array, BigInt64Array, Uint8Array, Int8Array or Int16Array");
  }
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (int64_t(ta.ElementLength()) != n)
    ThrowRange(env, std::string(fn) + ": shape " + ShapeString(shape) + " needs " + std::to_string(n) + " elements, data has " +
                        std::to_string(ta.ElementLength()));
  bool requires_grad = info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value();
  RLK_TORCH_TRY
  void* data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  at::Tensor t = at::from_blob(data, shape, at::TensorOptions().dtype(src)).to(device, dtype, false, /*copy=*/true);
  if (requires_grad) t.requires_grad_(true);
  return TorchTensor::Wrap(env, std::move(t));
  RLK_TORCH_CATCH(env, fn)
}

}  // namespace

at::Tensor TensorFromCapsule(Napi::Env env, Napi::Value v, const char* fn, const char* name) {
  bool tagged = false;
  if (!v.IsExternal() || napi_check_object_type_tag(env, v, &kDLPackCapsuleTag, &tagged) != napi_ok || !tagged)
    ThrowType(env, std::string(fn) + ": " + name + " must be a DLPack capsule, got " + Describe(v));
  auto* cap = v.As<Napi::External<DLPackCapsule>>().Data();
  if (!cap->managed) ThrowType(env, std::string(fn) + ": " + name + " was already consumed (a DLPack capsule is used once)");
  auto* m = static_cast<DLManagedTensor*>(cap->managed);
  at::Tensor t;
  RLK_TORCH_TRY
  // fromDLPack reads the descriptor (and may refuse it) before it takes
  // ownership: on a throw the capsule still owns the tensor.
  t = at::fromDLPack(m);
  RLK_TORCH_CATCH(env, fn)
  cap->managed = nullptr;
  return t;
}

namespace {

Napi::Value FromDLPack(const Napi::CallbackInfo& info) {
  const char* fn = "fromCore";
  Napi::Env env = info.Env();
  at::Tensor t = TensorFromCapsule(env, info.Length() < 1 ? env.Undefined() : info[0], fn, "capsule");
  return TorchTensor::Wrap(env, std::move(t));
}

// ---- boxed operator calls -----------------------------------------------------

std::unordered_map<std::string, c10::OperatorHandle>& OpCache() {
  static std::unordered_map<std::string, c10::OperatorHandle> cache;
  return cache;
}

c10::OperatorHandle FindOp(Napi::Env env, const std::string& qualified) {
  auto& cache = OpCache();
  auto it = cache.find(qualified);
  if (it != cache.end()) return it->second;
  std::string name = qualified, overload;
  size_t colons = qualified.find("::");
  size_t dot = qualified.find('.', colons == std::string::npos ? 0 : colons);
  if (dot != std::string::npos) {
    name = qualified.substr(0, dot);
    overload = qualified.substr(dot + 1);
  }
  if (colons == std::string::npos) name = "aten::" + name;
  auto op = c10::Dispatcher::singleton().findSchema({name, overload});
  if (!op) ThrowRange(env, "aten: no operator " + name + (overload.empty() ? "" : "." + overload) + " (names read like 'softmax.int')");
  cache.emplace(qualified, *op);
  return *op;
}

bool IsInteger(double d) { return std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 9007199254740991.0; }

int64_t IntValue(Napi::Env env, const std::string& where, Napi::Value v) {
  if (v.IsBigInt()) {
    bool lossless = false;
    int64_t x = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) ThrowRange(env, where + " must fit in int64");
    return x;
  }
  if (!v.IsNumber()) ThrowType(env, where + " must be an integer, got " + Describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!IsInteger(d)) ThrowRange(env, where + " must be an integer, got " + Describe(v));
  return int64_t(d);
}

double FloatValue(Napi::Env env, const std::string& where, Napi::Value v) {
  if (!v.IsNumber()) ThrowType(env, where + " must be a number, got " + Describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

c10::IValue ArgToIValue(Napi::Env env, const std::string& fn, const c10::Argument& arg, Napi::Value v) {
  const std::string where = fn + ": argument '" + arg.name() + "'";
  c10::TypePtr type = arg.type();
  if (v.IsUndefined() || v.IsNull()) {
    if (type->kind() == c10::TypeKind::OptionalType || type->kind() == c10::TypeKind::NoneType) return c10::IValue();
    ThrowType(env, where + " (" + type->str() + ") must be given, got " + Describe(v));
  }
  if (type->kind() == c10::TypeKind::OptionalType) type = type->expectRef<c10::OptionalType>().getElementType();
  switch (type->kind()) {
    case c10::TypeKind::TensorType: return TensorValue(env, v, fn, "argument '" + arg.name() + "'");
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType:
      if (v.IsString() && arg.name() == "dtype") return c10::IValue(ParseDType(env, fn, arg.name(), v));
      return c10::IValue(IntValue(env, where, v));
    case c10::TypeKind::ScalarTypeType: return c10::IValue(ParseDType(env, fn, arg.name(), v));
    case c10::TypeKind::DeviceObjType: return c10::IValue(ParseDevice(env, fn, arg.name(), v));
    case c10::TypeKind::FloatType:
    case c10::TypeKind::SymFloatType: return c10::IValue(FloatValue(env, where, v));
    case c10::TypeKind::BoolType:
    case c10::TypeKind::SymBoolType:
      if (!v.IsBoolean()) ThrowType(env, where + " must be a boolean, got " + Describe(v));
      return c10::IValue(v.As<Napi::Boolean>().Value());
    case c10::TypeKind::NumberType:
      if (v.IsBoolean()) return c10::IValue(c10::Scalar(v.As<Napi::Boolean>().Value()));
      if (v.IsBigInt()) return c10::IValue(c10::Scalar(IntValue(env, where, v)));
      if (!v.IsNumber()) ThrowType(env, where + " must be a number, got " + Describe(v));
      {
        double d = v.As<Napi::Number>().DoubleValue();
        return IsInteger(d) ? c10::IValue(c10::Scalar(int64_t(d))) : c10::IValue(c10::Scalar(d));
      }
    case c10::TypeKind::StringType:
      if (!v.IsString()) ThrowType(env, where + " must be a string, got " + Describe(v));
      return c10::IValue(v.As<Napi::String>().Utf8Value());
    case c10::TypeKind::ListType: {
      if (!v.IsArray()) ThrowType(env, where + " (" + type->str() + ") must be an array, got " + Describe(v));
      Napi::Array a = v.As<Napi::Array>();
      c10::TypePtr elem = type->containedType(0);
      const auto kind = elem->kind();
      if (kind == c10::TypeKind::IntType || kind == c10::TypeKind::SymIntType) {
        std::vector<int64_t> out;
        for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(IntValue(env, where + "[" + std::to_string(i) + "]", a.Get(i)));
        return c10::IValue(out);
      }
      if (kind == c10::TypeKind::FloatType) {
        std::vector<double> out;
        for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(FloatValue(env, where + "[" + std::to_string(i) + "]", a.Get(i)));
        return c10::IValue(out);
      }
      if (kind == c10::TypeKind::BoolType) {
        c10::List<bool> out;
        for (uint32_t i = 0; i < a.Length(); ++i) {
          Napi::Value e = a.Get(i);
          if (!e.IsBoolean()) ThrowType(env, where + "[" + std::to_string(i) + "] must be a boolean, got " + Describe(e));
          out.push_back(e.As<Napi::Boolean>().Value());
        }
        return c10::IValue(out);
      }
      if (kind == c10::TypeKind::TensorType) {
        std::vector<at::Tensor> out;
        for (uint32_t i = 0; i < a.Length(); ++i)
          out.push_back(TensorValue(env, a.Get(i), fn, "argument '" + arg.name() + "'[" + std::to_string(i) + "]"));
        return c10::IValue(out);
      }
      if (kind == c10::TypeKind::OptionalType && elem->containedType(0)->kind() == c10::TypeKind::TensorType) {
        c10::List<std::optional<at::Tensor>> out;
        for (uint32_t i = 0; i < a.Length(); ++i) {
          Napi::Value e = a.Get(i);
          if (e.IsNull() || e.IsUndefined()) out.push_back(std::nullopt);
          else out.push_back(TensorValue(env, e, fn, "argument '" + arg.name() + "'[" + std::to_string(i) + "]"));
        }
        return c10::IValue(out);
      }
      ThrowType(env, where + " has type " + type->str() + ", which the bridge does not convert");
    }
    default: ThrowType(env, where + " has type " + type->str() + ", which the bridge does not convert");
  }
}

Napi::Value IValueToJs(Napi::Env env, const std::string& fn, const c10::IValue& v) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    return t.defined() ? Napi::Value(TorchTensor::Wrap(env, t)) : env.Null();
  }
  if (v.isNone()) return env.Null();
  if (v.isDouble()) return Napi::Number::New(env, v.toDouble());
  if (v.isInt()) return Napi::Number::New(env, double(v.toInt()));
  if (v.isBool()) return Napi::Boolean::New(env, v.toBool());
  if (v.isString()) return Napi::String::New(env, v.toStringRef());
  if (v.isScalar()) return Napi::Number::New(env, v.toScalar().toDouble());
  if (v.isTensorList()) {
    auto l = v.toTensorList();
    Napi::Array a = Napi::Array::New(env, l.size());
    for (size_t i = 0; i < l.size(); ++i) a.Set(uint32_t(i), IValueToJs(env, fn, c10::IValue(l.get(i))));
    return a;
  }
  if (v.isTuple()) {
    const auto& e = v.toTupleRef().elements();
    Napi::Array a = Napi::Array::New(env, e.size());
    for (size_t i = 0; i < e.size(); ++i) a.Set(uint32_t(i), IValueToJs(env, fn, e[i]));
    return a;
  }
  if (v.isList()) {
    auto l = v.toList();
    Napi::Array a = Napi::Array::New(env, l.size());
    for (size_t i = 0; i < l.size(); ++i) a.Set(uint32_t(i), IValueToJs(env, fn, l.get(i)));
    return a;
  }
  if (v.isGenericDict()) {
    Napi::Object o = Napi::Object::New(env);
    for (const auto& kv : v.toGenericDict()) {
      if (!kv.key().isString()) ThrowType(env, fn + ": a dict result with non-string keys is not converted");
      o.Set(kv.key().toStringRef(), IValueToJs(env, fn, kv.value()));
    }
    return o;
  }
  ThrowType(env, fn + ": a result of type " + v.tagKind() + " is not converted by the bridge");
}

namespace {

// aten(name, positional[], keywords{} | undefined) -> result(s)
Napi::Value CallOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowType(env, "aten: name must be an operator name such as 'softmax.int', got " + Describe(info[0]));
  const std::string qualified = info[0].As<Napi::String>().Utf8Value();
  const std::string fn = "aten." + qualified;
  if (!info[1].IsArray()) ThrowType(env, fn + ": args must be an array, got " + Describe(info[1]));
  Napi::Array pos = info[1].As<Napi::Array>();
  Napi::Object kw;
  bool has_kw = info.Length() > 2 && info[2].IsObject() && !info[2].IsArray();
  if (has_kw) kw = info[2].As<Napi::Object>();
  c10::OperatorHandle op = FindOp(env, qualified);
  const c10::FunctionSchema& schema = op.schema();
  const auto& args = schema.arguments();
  if (pos.Length() > args.size())
    ThrowRange(env, fn + ": takes at most " + std::to_string(args.size()) + " arguments (" + c10::toString(schema) + "), got " +
                        std::to_string(pos.Length()));
  size_t used_kw = 0;
  torch::jit::Stack stack;
  stack.reserve(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::Argument& a = args[i];
    if (i < pos.Length()) {
      stack.push_back(ArgToIValue(env, fn, a, pos.Get(uint32_t(i))));
    } else if (has_kw && kw.Has(a.name())) {
      ++used_kw;
      stack.push_back(ArgToIValue(env, fn, a, kw.Get(a.name())));
    } else if (a.default_value()) {
      stack.push_back(*a.default_value());
    } else {
      ThrowType(env, fn + ": argument '" + a.name() + "' is missing (" + c10::toString(schema) + ")");
    }
  }
  if (has_kw && used_kw != kw.GetPropertyNames().Length())
    ThrowType(env, fn + ": unknown keyword argument among " + std::to_string(kw.GetPropertyNames().Length()) + " given (" +
                       c10::toString(schema) + ")");
  RLK_TORCH_TRY
  op.callBoxed(&stack);
  RLK_TORCH_CATCH(env, fn.c_str())
  if (stack.empty()) return env.Undefined();
  if (stack.size() == 1) return IValueToJs(env, fn, stack[0]);
  Napi::Array out = Napi::Array::New(env, stack.size());
  for (size_t i = 0; i < stack.size(); ++i) out.Set(uint32_t(i), IValueToJs(env, fn, stack[i]));
  return out;
}

Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  if (!info[0].IsBoolean()) ThrowType(info.Env(), "setGradEnabled: enabled must be a boolean, got " + Describe(info[0]));
  bool prev = at::GradMode::is_enabled();
  at::GradMode::set_enabled(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), prev);
}

Napi::Value IsGradEnabled(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), at::GradMode::is_enabled()); }

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  int64_t seed = IntValue(info.Env(), "manualSeed: seed", info[0]);
  RLK_TORCH_TRY
  at::manual_seed(uint64_t(seed));
  RLK_TORCH_CATCH(info.Env(), "manualSeed")
  return info.Env().Undefined();
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  int64_t n = IntValue(info.Env(), "setNumThreads: n", info[0]);
  if (n < 1 || n > 4096) ThrowRange(info.Env(), "setNumThreads: n must be an integer in [1, 4096], got " + Describe(info[0]));
  at::set_num_threads(int(n));
  // The bridge's kernels (its own copy of the core's CPU pool) follow the same
  // knob, as PyTorch's own ops do: one setting for what runs through torch.
  rlk::SetNumThreads(int(n));
  return info.Env().Undefined();
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), at::get_num_threads()); }

Napi::Value SetRecyclePool(const Napi::CallbackInfo& info) {
  if (!info[0].IsArray()) ThrowType(info.Env(), "setRecyclePool: expected an array");
  delete g_recycle;
  g_recycle = new Napi::ObjectReference(Napi::Persistent(info[0].As<Napi::Object>()));
  g_recycle->SuppressDestruct();
  return info.Env().Undefined();
}

Napi::Value SetDisposedErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) ThrowType(info.Env(), "setDisposedErrorClass: ctor must be a function");
  g_disposed_ctor = Napi::Persistent(info[0].As<Napi::Function>());
  g_disposed_ctor.SuppressDestruct();
  return info.Env().Undefined();
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("torchVersion", Napi::String::New(env, TORCH_VERSION));
#if RLK_TORCH_WITH_CUDA
  o.Set("cudaKernels", Napi::Boolean::New(env, true));
#else
  o.Set("cudaKernels", Napi::Boolean::New(env, false));
#endif
  o.Set("torchHasCuda", Napi::Boolean::New(env, at::hasCUDA()));
  o.Set("liveTensors", Napi::Number::New(env, double(g_live_tensors)));
  o.Set("threads", Napi::Number::New(env, at::get_num_threads()));
  return o;
}

// The bridge keeps its JS classes and pools in process globals (unlike the
// core addon's per-environment data), so it loads in one Node environment per
// process: a second one (a worker thread) gets an Error here rather than the
// V8 locking abort that using another thread's objects ends in.
std::atomic<bool> g_loaded{false};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  if (g_loaded.exchange(true))
    throw Napi::Error::New(env, "rlkernels/torch: the libtorch bridge loads in one Node environment per process (the main thread or one worker thread); it is already loaded in another");
  exports.Set("TorchTensor", TorchTensor::Define(env));
  exports.Set("fromData", Napi::Function::New(env, FromData, "fromData"));
  exports.Set("fromDLPack", Napi::Function::New(env, FromDLPack, "fromDLPack"));
  exports.Set("aten", Napi::Function::New(env, CallOp, "aten"));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled, "setGradEnabled"));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled, "isGradEnabled"));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed, "manualSeed"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("setDisposedErrorClass", Napi::Function::New(env, SetDisposedErrorClass, "setDisposedErrorClass"));
  exports.Set("setRecyclePool", Napi::Function::New(env, SetRecyclePool, "setRecyclePool"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  InitAutograd(env, exports);
  InitJit(env, exports);
  InitDistributed(env, exports);
  return exports;
}

}  // namespace
}  // namespace rlk::torch_bridge

static Napi::Object InitBridge(Napi::Env env, Napi::Object exports) { return rlk::torch_bridge::Init(env, exports); }
NODE_API_MODULE(rlkernels_torch, InitBridge)
