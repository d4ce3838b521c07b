// Every argument check of the addon lives in checks.cc. A binding checks all
// of its arguments before it allocates or writes anything; a failed check
// throws a TypeError (wrong kind: type, dtype, device, layout), a RangeError
// (wrong value: size, index, option value) or a DisposedError, each message
// shaped "fn: name must be <expected>, got <received>".
#pragma once
#include <napi.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "rlk/common.h"
#include "tensor.h"

namespace rlk::addon {

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& msg);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& msg);
[[noreturn]] void ThrowDisposed(Napi::Env env, const char* fn, const char* name);
// Maps a launcher's Status to a JS error naming the op.
void ThrowIfError(Napi::Env env, const Status& st, const char* fn);

// Describes what a JS value is, for "got ..." in messages.
std::string Describe(Napi::Value v);

// Registers the DisposedError class that the TypeScript layer defines.
void SetDisposedErrorClass(Napi::Function ctor);

Tensor* TensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// nullptr for undefined or null; otherwise as TensorArg.
Tensor* OptionalTensorArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
double NumberArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// A whole number in [lo, hi].
int64_t IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t lo, int64_t hi);
bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
DType DTypeArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// -1 for the host, else a CUDA ordinal that exists; explains a missing GPU.
int DeviceArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
// Non-negative safe integers whose product, times `element_size`, fits in
// 2^53 bytes.
std::vector<int64_t> ShapeArg(Napi::Env env, Napi::Value v, const char* fn, const char* name, size_t element_size);

std::string ShapeString(const std::vector<int64_t>& shape);
void RequireDType(Napi::Env env, const Tensor* t, std::initializer_list<DType> allowed, const char* fn, const char* name);
void RequireDevice(Napi::Env env, const Tensor* t, int device, const char* fn, const char* name, const char* other);
void RequireShape(Napi::Env env, const Tensor* t, const std::vector<int64_t>& shape, const char* fn, const char* name);
void RequireMinDim(Napi::Env env, const Tensor* t, int64_t min_dim, const char* fn, const char* name);

std::string DeviceName(int device);

// The temperature of a row op (tokenLogprobs, linearLogprobs and their shard
// forms): the number at info[ni] and, at info[ti], an optional float32 tensor
// of one value per row (shape `targets_shape` or [rows]) on `device`. The
// kernels multiply by the float32 inverse, so it must be finite: a T below
// ~3e-39 has a finite double inverse that rounds to +inf in float32, and
// (x - max) * inf is NaN at the row's maximum. Host rows are checked here;
// the CUDA kernels report a bad row through their error word.
struct RowTemperature {
  float inv = 1.0f;
  const float* per_row = nullptr;
};
RowTemperature RowTemperatureArgs(const Napi::CallbackInfo& info, size_t ni, size_t ti, const char* fn, int device,
                                  const char* device_of, const std::vector<int64_t>& targets_shape, int64_t rows);
// Host targets in [0, vocab_size) or equal to `ignore`, checked before
// anything is written; device targets by the kernels through the error word.
void CheckTargetsHost(Napi::Env env, const char* fn, const Tensor* targets, int device, int64_t rows, int64_t vocab_size,
                      int64_t ignore);

}  // namespace rlk::addon
