// Shared by every kernel family, host and device: dtypes, half-precision
// conversions, status codes. No Node, no torch, no allocation here.
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>
#include <climits>

#if defined(__CUDACC__)
#define RLK_HD __host__ __device__ __forceinline__
#else
#define RLK_HD inline
#endif

namespace rlk {

// The numbering is shared with src/types.ts (DTYPE_CODES): keep them in step.
enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kInt32 = 3, kInt64 = 4, kUInt8 = 5 };
constexpr int kNumDTypes = 6;

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

inline size_t ElementSize(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kBFloat16: case DType::kFloat16: return 2;
    case DType::kInt64: return 8;
    case DType::kUInt8: return 1;
  }
  return 0;
}

// Launchers return a Status and never throw: the binding turns it into a JS
// error naming the op. `message` points at static storage.
struct Status {
  enum Code : int32_t { kOk = 0, kInvalidArgument = 1, kOutOfRange = 2, kOutOfMemory = 3, kCudaError = 4, kUnsupported = 5 };
  Code code = kOk;
  const char* message = "";
  bool ok() const { return code == kOk; }
  static Status Ok() { return {}; }
};

// Codes a kernel puts in the device error word (runtime.h). Families add
// theirs here, with a message.
enum DeviceErrorCode : int32_t {
  kDeviceErrorNone = 0,
  kDeviceErrorTargetOutOfRange = 1,
  kDeviceErrorIndexOutOfRange = 2,
  // group_advantages
  kDeviceErrorTaskIdInvalid = 30,
  kDeviceErrorNegativeTokenCount = 31,
  kDeviceErrorBadPartials = 32,
  kDeviceErrorTooManyGroups = 33,
  kDeviceErrorPasskGroupOfOne = 34,
  kDeviceErrorGdpoTokens = 35,
  kDeviceErrorUnknownGroup = 36,
  kDeviceErrorBadTemperature = 3,
};
inline const char* DeviceErrorMessage(int32_t code) {
  switch (code) {
    case kDeviceErrorTargetOutOfRange: return "a target index was outside [0, V) and not ignoreIndex";
    case kDeviceErrorIndexOutOfRange: return "an index (group id, sequence offset) was out of range";
    case kDeviceErrorTaskIdInvalid: return "taskIds must be constant within a group";
    case kDeviceErrorNegativeTokenCount: return "tokenCounts must be >= 0";
    case kDeviceErrorBadPartials: return "group-advantage partials held an invalid record or disagreed on a group's task";
    case kDeviceErrorTooManyGroups: return "groupIds hold more distinct values than numGroups (or partials more groups than rows)";
    case kDeviceErrorPasskGroupOfOne: return "grpo-passk needs groups of at least 2 rows, got a group of one";
    case kDeviceErrorGdpoTokens: return "gdpo needs at least 2 tokens in the batch";
    case kDeviceErrorUnknownGroup: return "groupIds hold an id that no record of stats has";
    case kDeviceErrorBadTemperature: return "a per-row temperature was not a positive finite number";
    default: return "a kernel reported an unknown error";
  }
}

// Storage types for the 16-bit floats: plain bits, so host code needs no
// compiler support for _Float16/__bf16 and device code can reinterpret them
// as __nv_bfloat16/__half.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

RLK_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
RLK_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

RLK_HD float Bf16ToFloat(uint16_t h) { return BitsFloat(uint32_t(h) << 16); }

// Round to nearest, ties to even; NaN stays NaN (quietened), inf stays inf.
RLK_HD uint16_t FloatToBf16(float f) {
  uint32_t x = FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

RLK_HD float HalfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    // Subnormal: man * 2^-24, exact in float.
    float v = float(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return BitsFloat(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest, ties to even, including into the subnormal range.
RLK_HD uint16_t FloatToHalf(float f) {
  uint32_t x = FloatBits(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x477FF000u) return uint16_t(sign | 0x7C00u);   // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                    // below 2^-14: subnormal half
    if (ax <= 0x33000000u) return sign;                      // <= 2^-25 (the tie) goes to 0
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e;                               // 14..24
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  uint32_t r = ax - 0x38000000u;
  r += 0xFFFu + ((r >> 13) & 1u);
  return uint16_t(sign | (r >> 13));
}

// Rounding a double to float and then to a 16-bit float can round twice
// (a tie created by the first rounding). Rounding the first step to odd
// keeps the sticky information, and float's 24 bits are at least p + 2 for
// both 16-bit formats, so the second step is then correctly rounded.
RLK_HD float DoubleToFloatRoundOdd(double d) {
  float f = float(d);
  if (double(f) != d && d == d) {
    uint32_t b = FloatBits(f);
    if (fabs(double(f)) > fabs(d)) b -= 1u;
    b |= 1u;
    f = BitsFloat(b);
  }
  return f;
}
RLK_HD uint16_t DoubleToBf16(double d) { return FloatToBf16(DoubleToFloatRoundOdd(d)); }
RLK_HD uint16_t DoubleToHalf(double d) { return FloatToHalf(DoubleToFloatRoundOdd(d)); }

// Element loads and stores in fp32 for the kernels' accumulation.
RLK_HD float ToFloat(float v) { return v; }
RLK_HD float ToFloat(bf16_t v) { return Bf16ToFloat(v.bits); }
RLK_HD float ToFloat(f16_t v) { return HalfToFloat(v.bits); }
template <class T> RLK_HD T FromFloat(float v);
template <> RLK_HD float FromFloat<float>(float v) { return v; }
template <> RLK_HD bf16_t FromFloat<bf16_t>(float v) { return bf16_t{FloatToBf16(v)}; }
template <> RLK_HD f16_t FromFloat<f16_t>(float v) { return f16_t{FloatToHalf(v)}; }

// ---- elementwise dtype conversion -----------------------------------------
// One element of CastHost (cpu/runtime.cc) and of the device cast kernel
// (cuda/runtime.cu), so both round and saturate identically: through double,
// 16-bit floats rounded to nearest even, floats to integers truncated toward
// zero and saturated (NaN gives 0); int64 to int32 and small integers to
// int64 go direct, since int64 does not fit through double (2^53).
RLK_HD double LoadAsDouble(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kBFloat16: return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kFloat16: return HalfToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kInt32: return static_cast<const int32_t*>(p)[i];
    case DType::kInt64: return double(static_cast<const int64_t*>(p)[i]);
    case DType::kUInt8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

// v truncated to an integer in [ilo, ihi], where lo = double(ilo) and hi =
// double(ihi) (rounded: 2^63 for int64's max, so v >= 2^63 gives ihi and
// every v strictly between converts exactly).
RLK_HD int64_t SaturateToInt(double v, double lo, double hi, int64_t ilo, int64_t ihi) {
  if (v != v) return 0;
  if (v <= lo) return ilo;
  if (v >= hi) return ihi;
  return int64_t(v);
}

// dst[i] = src[i] converted from `st` to `dt` (st != dt; equal dtypes are a copy).
RLK_HD void CastElement(const void* src, DType st, void* dst, DType dt, int64_t i) {
  if (st == DType::kInt64 && dt == DType::kInt32) {
    const int64_t v = static_cast<const int64_t*>(src)[i];
    static_cast<int32_t*>(dst)[i] = int32_t(v < INT32_MIN ? int64_t(INT32_MIN) : (v > INT32_MAX ? int64_t(INT32_MAX) : v));
    return;
  }
  if (dt == DType::kInt64 && (st == DType::kInt32 || st == DType::kUInt8)) {
    static_cast<int64_t*>(dst)[i] = st == DType::kInt32 ? int64_t(static_cast<const int32_t*>(src)[i])
                                                        : int64_t(static_cast<const uint8_t*>(src)[i]);
    return;
  }
  const double v = LoadAsDouble(src, st, i);
  switch (dt) {
    case DType::kFloat32: static_cast<float*>(dst)[i] = float(v); break;
    case DType::kBFloat16: static_cast<uint16_t*>(dst)[i] = DoubleToBf16(v); break;
    case DType::kFloat16: static_cast<uint16_t*>(dst)[i] = DoubleToHalf(v); break;
    case DType::kInt32:
      static_cast<int32_t*>(dst)[i] = int32_t(SaturateToInt(v, -2147483648.0, 2147483647.0, INT32_MIN, INT32_MAX));
      break;
    case DType::kInt64:
      static_cast<int64_t*>(dst)[i] = SaturateToInt(v, -9223372036854775808.0, 9223372036854775808.0, INT64_MIN, INT64_MAX);
      break;
    case DType::kUInt8: static_cast<uint8_t*>(dst)[i] = uint8_t(SaturateToInt(v, 0.0, 255.0, 0, 255)); break;
  }
}

}  // namespace rlk

// Dtype dispatch for the floating-point kernels: `T` is bound to the storage
// type inside the body; a dtype without a case names the op in the status.
#define RLK_DISPATCH_FLOATING(dtype, op_name, ...)                              \
  [&]() -> ::rlk::Status {                                                      \
    switch (dtype) {                                                            \
      case ::rlk::DType::kFloat32: { using T = float; return __VA_ARGS__(); }   \
      case ::rlk::DType::kBFloat16: { using T = ::rlk::bf16_t; return __VA_ARGS__(); } \
      case ::rlk::DType::kFloat16: { using T = ::rlk::f16_t; return __VA_ARGS__(); }   \
      default: return ::rlk::Status{::rlk::Status::kUnsupported, op_name ": unsupported dtype"}; \
    }                                                                           \
  }()
