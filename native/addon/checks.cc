#include "checks.h"

#include <cmath>
#include <sstream>

namespace rlk::addon {
namespace {
constexpr double kMaxSafe = 9007199254740991.0;  // 2^53 - 1
}

void ThrowTypeError(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }
void ThrowRangeError(Napi::Env env, const std::string& msg) { throw Napi::RangeError::New(env, msg); }

void SetDisposedErrorClass(Napi::Function ctor) { AddonData(ctor.Env()).disposed_ctor = Napi::Persistent(ctor); }

void ThrowDisposed(Napi::Env env, const char* fn, const char* name) {
  std::string msg = std::string(fn) + ": " + name + " was disposed";
  const Napi::FunctionReference& ctor = AddonData(env).disposed_ctor;
  if (!ctor.IsEmpty()) {
    Napi::Object err = ctor.New({Napi::String::New(env, msg)});
    throw Napi::Error(env, err);
  }
  throw Napi::Error::New(env, msg);
}

void ThrowIfError(Napi::Env env, const Status& st, const char* fn) {
  if (st.ok()) return;
  std::string msg = std::string(fn) + ": " + st.message;
  switch (st.code) {
    case Status::kInvalidArgument: case Status::kUnsupported: ThrowTypeError(env, msg);
    case Status::kOutOfRange: case Status::kOutOfMemory: ThrowRangeError(env, msg);
    default: throw Napi::Error::New(env, msg);
  }
}

std::string Describe(Napi::Value v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return v.As<Napi::Boolean>().Value() ? "true" : "false";
    case napi_number: {
      std::ostringstream os;
      os << v.As<Napi::Number>().DoubleValue();
      return os.str();
    }
    case napi_string: {
      std::string s = v.As<Napi::String>().Utf8Value();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "'" + s + "'";
    }
    case napi_bigint: return "a bigint";
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_external: return "an external";
    case napi_object:
      if (Tensor::IsTensor(v)) return "a tensor";
      if (v.IsArray()) return "an array";
      if (v.IsTypedArray()) return "a typed array";
      return "an object";
    default: return "a value";
  }
}

static Tensor* CheckTensor(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  if (!Tensor::IsTensor(v))
    ThrowTypeError(env, std::string(fn) + ": " + name + " must be a tensor, got " + Describe(v));
  Tensor* t = Tensor::Unwrap(v.As<Napi::Object>());
  if (t->disposed()) ThrowDisposed(env, fn, name);
  return t;
}

Tensor* TensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  return CheckTensor(info, i, fn, name);
}

Tensor* OptionalTensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info[i].IsUndefined() || info[i].IsNull()) return nullptr;
  return CheckTensor(info, i, fn, name);
}

double NumberArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (!info[i].IsNumber())
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a number, got " + Describe(info[i]));
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t lo, int64_t hi) {
  double v = NumberArg(info, i, fn, name);
  if (!(v == std::floor(v)) || v < double(lo) || v > double(hi)) {
    std::ostringstream os;
    os << fn << ": " << name << " must be an integer in [" << lo << ", " << hi << "], got " << Describe(info[i]);
    ThrowRangeError(info.Env(), os.str());
  }
  return int64_t(v);
}

bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (!info[i].IsBoolean())
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a boolean, got " + Describe(info[i]));
  return info[i].As<Napi::Boolean>().Value();
}

DType DTypeArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  return DType(IntegerArg(info, i, fn, name, 0, kNumDTypes - 1));
}

std::string DeviceName(int device) { return device == kCpu ? "cpu" : "cuda:" + std::to_string(device); }

int DeviceArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  int64_t d = IntegerArg(info, i, fn, name, -1, 63);
  if (d == kCpu) return kCpu;
  static const CudaInfo cuda = GetCudaInfo();
  if (!cuda.error.empty() || d >= cuda.device_count) {
    std::string found = cuda.error.empty() ? std::to_string(cuda.device_count) + " CUDA device(s)" : cuda.error;
    ThrowRangeError(info.Env(), std::string(fn) + ": " + name + " cuda:" + std::to_string(d) +
                                    " is not available: found " + found);
  }
  return int(d);
}

std::vector<int64_t> ShapeArg(Napi::Env env, Napi::Value v, const char* fn, const char* name, size_t element_size) {
  if (!v.IsArray()) ThrowTypeError(env, std::string(fn) + ": " + name + " must be an array of sizes, got " + Describe(v));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 16)
    ThrowRangeError(env, std::string(fn) + ": " + name + " must have at most 16 dimensions, got " + std::to_string(a.Length()));
  std::vector<int64_t> shape;
  double bytes = double(element_size);
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value e = a.Get(k);
    if (!e.IsNumber())
      ThrowTypeError(env, std::string(fn) + ": " + name + "[" + std::to_string(k) + "] must be a number, got " + Describe(e));
    double d = e.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != std::floor(d) || d > kMaxSafe)
      ThrowRangeError(env, std::string(fn) + ": " + name + "[" + std::to_string(k) +
                               "] must be a non-negative integer, got " + Describe(e));
    bytes *= d;
    shape.push_back(int64_t(d));
  }
  if (bytes > kMaxSafe)
    ThrowRangeError(env, std::string(fn) + ": " + name + " " + ShapeString(shape) + " is too large (" +
                             Describe(Napi::Number::New(env, bytes)) + " bytes)");
  return shape;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
  return s + "]";
}

void RequireDType(Napi::Env env, const Tensor* t, std::initializer_list<DType> allowed, const char* fn, const char* name) {
  for (DType d : allowed)
    if (t->dtype() == d) return;
  std::string expected;
  size_t k = 0;
  for (DType d : allowed) {
    expected += (k == 0 ? "" : k + 1 == allowed.size() ? " or " : ", ");
    expected += DTypeName(d);
    ++k;
  }
  ThrowTypeError(env, std::string(fn) + ": " + name + " must be " + expected + ", got " + DTypeName(t->dtype()));
}

void RequireDevice(Napi::Env env, const Tensor* t, int device, const char* fn, const char* name, const char* other) {
  if (t->device() != device)
    ThrowTypeError(env, std::string(fn) + ": " + name + " must be on " + DeviceName(device) + " like " + other +
                            ", got " + DeviceName(t->device()));
}

void RequireShape(Napi::Env env, const Tensor* t, const std::vector<int64_t>& shape, const char* fn, const char* name) {
  if (t->shape() != shape)
    ThrowRangeError(env, std::string(fn) + ": " + name + " must have shape " + ShapeString(shape) + ", got " +
                             ShapeString(t->shape()));
}

void RequireMinDim(Napi::Env env, const Tensor* t, int64_t min_dim, const char* fn, const char* name) {
  if (t->dim() < min_dim)
    ThrowRangeError(env, std::string(fn) + ": " + name + " must have at least " + std::to_string(min_dim) +
                             " dimension(s), got shape " + ShapeString(t->shape()));
}

RowTemperature RowTemperatureArgs(const Napi::CallbackInfo& info, size_t ni, size_t ti, const char* fn, int device,
                                  const char* device_of, const std::vector<int64_t>& targets_shape, int64_t rows) {
  Napi::Env env = info.Env();
  const std::string f = std::string(fn) + ": ";
  RowTemperature t;
  const double v = NumberArg(info, ni, fn, "temperature");
  if (!(v > 0) || !std::isfinite(v) || !std::isfinite(float(1.0 / v)) || !(float(1.0 / v) > 0))
    ThrowRangeError(env, f + "temperature must be a positive finite number, got " + Describe(info[ni]));
  t.inv = float(1.0 / v);
  Tensor* tt = OptionalTensorArg(info, ti, fn, "temperature");
  if (!tt) return t;
  RequireDType(env, tt, {DType::kFloat32}, fn, "temperature");
  RequireDevice(env, tt, device, fn, "temperature", device_of);
  const std::vector<int64_t> flat{rows};
  if (tt->shape() != targets_shape && tt->shape() != flat)
    ThrowRangeError(env, f + "temperature must have shape " + ShapeString(targets_shape) +
                             (targets_shape != flat ? " or " + ShapeString(flat) : std::string()) + " (one value per row), got shape " +
                             ShapeString(tt->shape()));
  t.per_row = static_cast<const float*>(tt->data());
  if (device == kCpu) {
    for (int64_t i = 0; i < rows; ++i) {
      const float x = t.per_row[i];
      if (!(x > 0) || !std::isfinite(x) || !std::isfinite(float(1.0 / double(x))))
        ThrowRangeError(env, f + "temperature[" + std::to_string(i) + "] must be a positive finite number, got " +
                                 Describe(Napi::Number::New(env, x)));
    }
  }
  return t;
}

void CheckTargetsHost(Napi::Env env, const char* fn, const Tensor* targets, int device, int64_t rows, int64_t vocab_size,
                      int64_t ignore) {
  if (device != kCpu) return;
  auto check = [&](auto* p) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t t = int64_t(p[i]);
      if (t != ignore && (t < 0 || t >= vocab_size))
        ThrowRangeError(env, std::string(fn) + ": targets[" + std::to_string(i) + "] = " + std::to_string(t) +
                                 " is outside [0, " + std::to_string(vocab_size) + ") and is not ignoreIndex (" +
                                 std::to_string(ignore) + ")");
    }
  };
  if (targets->dtype() == DType::kInt32) check(static_cast<const int32_t*>(targets->data()));
  else check(static_cast<const int64_t*>(targets->data()));
}

}  // namespace rlk::addon
