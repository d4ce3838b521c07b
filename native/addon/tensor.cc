#include "tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <unistd.h>
#include <utility>
#include <vector>

#include "checks.h"
#include "rlk/cpu_simd.h"

namespace rlk::addon {
namespace {

// Set only while Wrap constructs: JS `new NativeTensor()` finds it false and
// throws. A flag rather than an External token argument: on Node 20 every
// napi External holds a weak reference whose finalizer the GC queues, which
// was a third of a small op's cost.
thread_local bool g_constructing = false;  // per thread: each worker constructs on its own
// EnvData::recycle: a JS array of disposed NativeTensor objects that
// src/tensor.ts hands back on dispose(): Wrap reuses one instead of
// constructing and wrapping a new object, whose napi wrap (a reference, a
// finalizer queued at GC, a hidden property) costs more than a small op. Only
// objects disposed through the TS Tensor (which drops its handle) land there.

// Below this, host blocks come from plain malloc (16-byte aligned; the CPU
// kernels use unaligned loads) and are not reported to V8 as external memory:
// aligned_alloc's split chunks and the accounting cost more than a small
// op's kernel (issue 11: a 16-element op with two outputs at <= 5 us).
constexpr size_t kSmallHostBlock = 4096;

LiveCounters g_counters[kMaxCounterSlots];

int Slot(int device) { return device + 1; }

// What a read hands to JS: 16-bit floats widen to float32 (exactly).
DType ReadDType(DType t) { return (t == DType::kBFloat16 || t == DType::kFloat16) ? DType::kFloat32 : t; }

size_t PhysicalMemory() {
  static const size_t bytes = [] {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : SIZE_MAX;
  }();
  return bytes;
}

// Recently freed large host blocks (>= 2 MiB: HostAlloc's huge-page-aligned
// ones, rounded to 2 MiB), reused for the next output of the same rounded
// size. A fresh block's first touch faults its pages in and the kernel zeroes
// them (a 2 MiB huge page a fault): 2.3 ms of system time a call for klPenalty
// k3 on 2 M tokens (two 8 MB outputs), a third of the call. A training loop
// allocates the same shapes every step, so the last few freed blocks serve
// the next ones. Bounded: RLK_HOST_CACHE_MB MiB (0 disables; default a
// sixteenth of the RAM, between 256 MiB and 1 GiB) and kCacheBlocks blocks at
// most, oldest out first; an allocation that fails empties it and tries
// again. (With 256 MiB the logits gradient of [512, 151936] float32, 311 MB,
// was never kept: a forward+backward took 65-155 ms a call against 46 ms
// with the block reused, its fresh pages faulted in the guest and, on these
// VMs, the hypervisor.)
constexpr size_t kCacheMinBlock = size_t(2) << 20;
constexpr size_t kCacheBlocks = 16;

class HostBlockCache {
 public:
  static HostBlockCache& Get() {
    static HostBlockCache* cache = new HostBlockCache();  // never destroyed: frees may come at exit
    return *cache;
  }
  static size_t Rounded(size_t bytes) { return (bytes + kCacheMinBlock - 1) & ~(kCacheMinBlock - 1); }
  void* Take(size_t bytes) {
    if (bytes < kCacheMinBlock || cap_ == 0) return nullptr;
    const size_t r = Rounded(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t k = blocks_.size(); k-- > 0;) {
      if (blocks_[k].first != r) continue;
      void* p = blocks_[k].second;
      blocks_.erase(blocks_.begin() + std::ptrdiff_t(k));
      held_ -= r;
      return p;
    }
    return nullptr;
  }
  // Keeps p (a HostAlloc block of `bytes`), or frees it.
  void Put(void* p, size_t bytes) {
    const size_t r = Rounded(bytes);
    if (bytes < kCacheMinBlock || r > cap_) {
      HostFree(p);
      return;
    }
    std::vector<void*> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (!blocks_.empty() && (held_ + r > cap_ || blocks_.size() >= kCacheBlocks)) {
        out.push_back(blocks_.front().second);
        held_ -= blocks_.front().first;
        blocks_.erase(blocks_.begin());
      }
      blocks_.emplace_back(r, p);
      held_ += r;
    }
    for (void* q : out) HostFree(q);
  }
  void Clear() {
    std::vector<std::pair<size_t, void*>> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out.swap(blocks_);
      held_ = 0;
    }
    for (auto& b : out) HostFree(b.second);
  }

 private:
  HostBlockCache() {
    const char* v = std::getenv("RLK_HOST_CACHE_MB");
    const double ram_mb = double(PhysicalMemory()) / 1048576.0;
    const double mb = v && *v ? std::atof(v) : std::min(1024.0, std::max(256.0, ram_mb / 16));
    cap_ = mb > 0 ? size_t(mb * 1048576.0) : 0;
  }
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> blocks_;  // (rounded size, block), oldest first
  size_t held_ = 0, cap_ = 0;
};

void* AllocHostOrThrow(Napi::Env env, const char* fn, size_t bytes) {
  // With overcommit a huge malloc can succeed and the first touch (zeros,
  // full) would get the process killed: refuse what cannot fit in RAM.
  if (bytes > PhysicalMemory())
    ThrowRangeError(env, std::string(fn) + ": cannot allocate " + std::to_string(bytes) +
                             " bytes of host memory: more than the machine's " + std::to_string(PhysicalMemory()) + " bytes");
  void* p = bytes == 0 ? nullptr : bytes < kSmallHostBlock ? std::malloc(bytes) : HostBlockCache::Get().Take(bytes);
  if (bytes >= kSmallHostBlock && !p) {
    p = HostAlloc(bytes);
    if (!p) {
      HostBlockCache::Get().Clear();
      p = HostAlloc(bytes);
    }
  }
  if (bytes && !p) ThrowRangeError(env, std::string(fn) + ": cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  return p;
}

struct HostBuffer {
  void* p = nullptr;
  explicit HostBuffer(void* q) : p(q) {}
  ~HostBuffer() { HostFree(p); }
  void* release() { void* q = p; p = nullptr; return q; }
};

Napi::Value MakeArrayBuffer(Napi::Env env, void* data, size_t bytes) {
  if (bytes == 0) {
    HostFree(data);
    return Napi::ArrayBuffer::New(env, 0);
  }
  return Napi::ArrayBuffer::New(env, data, bytes, [](Napi::Env, void* p) { HostFree(p); });
}

// Copies a tensor's contents to a new host buffer in its read dtype. Runs on
// the event loop (sync read) or a worker (async read): no JS here.
Status ReadToHost(const Storage& s, DType dtype, int64_t numel, void** out, size_t* out_bytes) {
  DType rt = ReadDType(dtype);
  size_t bytes = size_t(numel) * ElementSize(rt);
  *out_bytes = bytes;
  *out = HostAlloc(bytes);
  if (bytes && !*out) return Status{Status::kOutOfMemory, "cannot allocate host memory for the read"};
  if (numel == 0) return Status::Ok();
  const void* src = s.data;
  HostBuffer staging(nullptr);
  if (s.device != kCpu) {
    size_t nbytes = size_t(numel) * ElementSize(dtype);
    if (rt == dtype) {
      Status st = CopyDeviceToHost(s.device, *out, s.data, nbytes);
      if (!st.ok()) { HostFree(*out); *out = nullptr; }
      return st;
    }
    staging.p = HostAlloc(nbytes);
    if (!staging.p) { HostFree(*out); *out = nullptr; return Status{Status::kOutOfMemory, "cannot allocate host memory for the read"}; }
    Status st = CopyDeviceToHost(s.device, staging.p, s.data, nbytes);
    if (!st.ok()) { HostFree(*out); *out = nullptr; return st; }
    src = staging.p;
  }
  CastHost(src, dtype, *out, rt, numel);
  return Status::Ok();
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, std::shared_ptr<Storage> s, DType dtype, int64_t numel)
      : Napi::AsyncWorker(env, "rlkernels.read"), deferred_(Napi::Promise::Deferred::New(env)),
        storage_(std::move(s)), dtype_(dtype), numel_(numel) {}
  ~ReadWorker() override { HostFree(out_); }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    Status st = ReadToHost(*storage_, dtype_, numel_, &out_, &bytes_);
    if (!st.ok()) {
      SetError(std::string("toArray: ") + st.message);
      return;
    }
    if (storage_->device != kCpu) {
      int32_t code = 0;
      st = TakeDeviceError(storage_->device, &code);
      if (!st.ok()) SetError(std::string("toArray: ") + st.message);
      else if (code) {
        range_error_ = true;
        SetError(std::string("an op queued on ") + DeviceName(storage_->device) + " failed: " + DeviceErrorMessage(code));
      }
    }
  }
  void OnOK() override {
    storage_.reset();
    void* p = out_;
    out_ = nullptr;
    deferred_.Resolve(MakeArrayBuffer(Env(), p, bytes_));
  }
  void OnError(const Napi::Error& e) override {
    storage_.reset();
    deferred_.Reject(range_error_ ? Napi::RangeError::New(Env(), e.Message()).Value() : e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Storage> storage_;  // keeps the memory alive until the read settles
  DType dtype_;
  int64_t numel_;
  void* out_ = nullptr;
  size_t bytes_ = 0;
  bool range_error_ = false;
};

// After a sync point on a device: a kernel's bad-data report becomes a RangeError.
void ThrowIfDeviceError(Napi::Env env, int device, const char* fn) {
  if (device == kCpu) return;
  int32_t code = 0;
  ThrowIfError(env, TakeDeviceError(device, &code), fn);
  if (code)
    ThrowRangeError(env, std::string(fn) + ": an op queued on " + DeviceName(device) + " failed: " + DeviceErrorMessage(code));
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Loads element i of a JS typed array as a double (bigint64 handled apart).
double LoadTyped(const void* p, napi_typedarray_type t, size_t i) {
  switch (t) {
    case napi_int8_array: return static_cast<const int8_t*>(p)[i];
    case napi_uint8_array: case napi_uint8_clamped_array: return static_cast<const uint8_t*>(p)[i];
    case napi_int16_array: return static_cast<const int16_t*>(p)[i];
    case napi_uint16_array: return static_cast<const uint16_t*>(p)[i];
    case napi_int32_array: return static_cast<const int32_t*>(p)[i];
    case napi_uint32_array: return static_cast<const uint32_t*>(p)[i];
    case napi_float32_array: return static_cast<const float*>(p)[i];
    case napi_float64_array: return static_cast<const double*>(p)[i];
    case napi_bigint64_array: return double(static_cast<const int64_t*>(p)[i]);
    case napi_biguint64_array: return double(static_cast<const uint64_t*>(p)[i]);
    default: return 0;
  }
}

// Converts JS data into `dst` (host, `dtype`). Integer dtypes take only
// whole numbers in range: truncating 1.5 or wrapping 300 into a uint8 mask
// would hide a bug in the caller.
void ConvertFromJs(Napi::Env env, const char* fn, const void* src, napi_typedarray_type st, size_t n, void* dst, DType dtype) {
  auto bad = [&](size_t i, double v, const char* what) {
    ThrowRangeError(env, std::string(fn) + ": data[" + std::to_string(i) + "] must be " + what + " for dtype " +
                             DTypeName(dtype) + ", got " + Describe(Napi::Number::New(env, v)));
  };
  switch (dtype) {
    case DType::kFloat32:
      for (size_t i = 0; i < n; ++i) static_cast<float*>(dst)[i] = float(LoadTyped(src, st, i));
      break;
    case DType::kBFloat16:
      if (st == napi_float32_array)
        for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = FloatToBf16(static_cast<const float*>(src)[i]);
      else
        for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = DoubleToBf16(LoadTyped(src, st, i));
      break;
    case DType::kFloat16:
      if (st == napi_float32_array)
        for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = FloatToHalf(static_cast<const float*>(src)[i]);
      else
        for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = DoubleToHalf(LoadTyped(src, st, i));
      break;
    case DType::kInt64:
      if (st == napi_bigint64_array) {
        std::memcpy(dst, src, n * 8);
        break;
      }
      if (st == napi_biguint64_array) {
        for (size_t i = 0; i < n; ++i) {
          uint64_t v = static_cast<const uint64_t*>(src)[i];
          if (v > uint64_t(std::numeric_limits<int64_t>::max())) bad(i, double(v), "an integer in the int64 range");
          static_cast<int64_t*>(dst)[i] = int64_t(v);
        }
        break;
      }
      for (size_t i = 0; i < n; ++i) {
        double v = LoadTyped(src, st, i);
        if (!(v == std::floor(v)) || std::fabs(v) > 9007199254740991.0) bad(i, v, "a safe integer");
        static_cast<int64_t*>(dst)[i] = int64_t(v);
      }
      break;
    case DType::kInt32:
      for (size_t i = 0; i < n; ++i) {
        double v = LoadTyped(src, st, i);
        if (!(v == std::floor(v)) || v < -2147483648.0 || v > 2147483647.0) bad(i, v, "an integer in [-2^31, 2^31)");
        static_cast<int32_t*>(dst)[i] = int32_t(v);
      }
      break;
    case DType::kUInt8:
      for (size_t i = 0; i < n; ++i) {
        double v = LoadTyped(src, st, i);
        if (!(v == std::floor(v)) || v < 0 || v > 255) bad(i, v, "an integer in [0, 255]");
        static_cast<uint8_t*>(dst)[i] = uint8_t(v);
      }
      break;
  }
}

// fromData(shape, dtype, device, typedArray)
Napi::Value FromData(const Napi::CallbackInfo& info) {
  const char* fn = "tensor";
  Napi::Env env = info.Env();
  DType dtype = DTypeArg(info, 1, fn, "dtype");
  std::vector<int64_t> shape = ShapeArg(env, info[0], fn, "shape", ElementSize(dtype));
  int device = DeviceArg(info, 2, fn, "device");
  if (!info[3].IsTypedArray())
    ThrowTypeError(env, std::string(fn) + ": data must be a typed array, got " + Describe(info[3]));
  Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
  int64_t numel = Numel(shape);
  if (int64_t(ta.ElementLength()) != numel)
    ThrowRangeError(env, std::string(fn) + ": data has " + std::to_string(ta.ElementLength()) +
                             " elements but shape " + ShapeString(shape) + " needs " + std::to_string(numel));
  const void* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t bytes = size_t(numel) * ElementSize(dtype);
  if (device == kCpu) {
    auto storage = AllocStorage(env, fn, bytes, kCpu);
    ConvertFromJs(env, fn, src, ta.TypedArrayType(), size_t(numel), storage->data, dtype);
    return Tensor::Wrap(env, storage, shape, dtype);
  }
  HostBuffer staging(AllocHostOrThrow(env, fn, bytes));
  ConvertFromJs(env, fn, src, ta.TypedArrayType(), size_t(numel), staging.p, dtype);
  auto storage = AllocStorage(env, fn, bytes, device);
  ThrowIfError(env, CopyHostToDevice(device, storage->data, staging.p, bytes), fn);
  return Tensor::Wrap(env, storage, shape, dtype);
}

// empty(shape, dtype, device)
Napi::Value Empty(const Napi::CallbackInfo& info) {
  const char* fn = "empty";
  Napi::Env env = info.Env();
  DType dtype = DTypeArg(info, 1, fn, "dtype");
  std::vector<int64_t> shape = ShapeArg(env, info[0], fn, "shape", ElementSize(dtype));
  int device = DeviceArg(info, 2, fn, "device");
  auto storage = AllocStorage(env, fn, size_t(Numel(shape)) * ElementSize(dtype), device);
  return Tensor::Wrap(env, storage, shape, dtype);
}

// full(shape, dtype, device, value)
Napi::Value Full(const Napi::CallbackInfo& info) {
  const char* fn = "full";
  Napi::Env env = info.Env();
  DType dtype = DTypeArg(info, 1, fn, "dtype");
  std::vector<int64_t> shape = ShapeArg(env, info[0], fn, "shape", ElementSize(dtype));
  int device = DeviceArg(info, 2, fn, "device");
  double value = NumberArg(info, 3, fn, "value");
  alignas(8) uint8_t pattern[8] = {0};
  ConvertFromJs(env, fn, &value, napi_float64_array, 1, pattern, dtype);
  int64_t numel = Numel(shape);
  size_t es = ElementSize(dtype);
  auto storage = AllocStorage(env, fn, size_t(numel) * es, device);
  if (device == kCpu) {
    // One typed fill per element size: a memcpy of a runtime size an element
    // took 88 us for 65536 floats (1.3 ns an element).
    auto fill = [&](auto word) {
      using W = decltype(word);
      std::memcpy(&word, pattern, sizeof word);
      W* d = static_cast<W*>(storage->data);
      ParallelFor(numel, 1 << 16, [=](int64_t b, int64_t e) { std::fill(d + b, d + e, word); });
    };
    if (es == 1) fill(uint8_t{});
    else if (es == 2) fill(uint16_t{});
    else if (es == 4) fill(uint32_t{});
    else fill(uint64_t{});
  } else {
    ThrowIfError(env, FillDevice(device, storage->data, pattern, es, numel), fn);
  }
  return Tensor::Wrap(env, storage, shape, dtype);
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CudaInfo c = GetCudaInfo();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cudaCompiled", c.compiled);
  o.Set("cudaArchs", c.archs);
  o.Set("cudaRuntimeVersion", c.runtime_version);
  o.Set("cudaDriverVersion", c.driver_version);
  o.Set("cudaDeviceCount", c.device_count);
  o.Set("cudaError", c.error);
  Napi::Array names = Napi::Array::New(env, c.device_names.size());
  for (size_t i = 0; i < c.device_names.size(); ++i) names.Set(uint32_t(i), c.device_names[i]);
  o.Set("cudaDevices", names);
  o.Set("threads", NumThreads());
  o.Set("napiVersion", NAPI_VERSION);
  // The path the kernels take: the CPU's best, lowered by RLK_SIMD=avx2|baseline.
  o.Set("cpuSimd", simd::IsaName(simd::Isa()));
  return o;
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("tensors", double(Counters(kCpu).tensors.load()));
  cpu.Set("bytes", double(Counters(kCpu).bytes.load()));
  o.Set("cpu", cpu);
  Napi::Array cuda = Napi::Array::New(env);
  for (int d = 0; d + 1 < kMaxCounterSlots; ++d) {
    DeviceMemoryStats s = GetDeviceMemoryStats(d);
    if (Counters(d).tensors.load() == 0 && s.reserved == 0 && s.mallocs == 0) continue;
    Napi::Object e = Napi::Object::New(env);
    e.Set("device", "cuda:" + std::to_string(d));
    e.Set("tensors", double(Counters(d).tensors.load()));
    e.Set("bytes", double(Counters(d).bytes.load()));
    e.Set("allocatedBytes", double(s.allocated));
    e.Set("reservedBytes", double(s.reserved));
    e.Set("mallocs", double(s.mallocs));
    e.Set("reuses", double(s.reuses));
    cuda.Set(cuda.Length(), e);
  }
  o.Set("cuda", cuda);
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  SetNumThreads(int(IntegerArg(info, 0, "setNumThreads", "threads", 1, 1024)));
  return info.Env().Undefined();
}
Napi::Value SetRecyclePool(const Napi::CallbackInfo& info) {
  if (!info[0].IsArray()) ThrowTypeError(info.Env(), "setRecyclePool: expected an array");
  AddonData(info.Env()).recycle = Napi::Persistent(info[0].As<Napi::Object>());
  return info.Env().Undefined();
}

Napi::Value GetThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), NumThreads()); }

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  int d = DeviceArg(info, 0, "cuda.synchronize", "device");
  if (d != kCpu) {
    ThrowIfError(info.Env(), DeviceSynchronize(d), "cuda.synchronize");
    ThrowIfDeviceError(info.Env(), d, "cuda.synchronize");
  }
  return info.Env().Undefined();
}
Napi::Value CudaEmptyCache(const Napi::CallbackInfo& info) {
  int d = DeviceArg(info, 0, "cuda.emptyCache", "device");
  if (d != kCpu) DeviceEmptyCache(d);
  return info.Env().Undefined();
}
Napi::Value SetDisposedError(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) ThrowTypeError(info.Env(), "setDisposedErrorClass: expected a class");
  SetDisposedErrorClass(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

LiveCounters& Counters(int device) { return g_counters[Slot(device)]; }

Storage::Storage(void* d, size_t b, int dev) : data(d), bytes(b), device(dev) {
  Counters(device).bytes += int64_t(bytes);
}
Storage::~Storage() {
  Counters(device).bytes -= int64_t(bytes);
  if (device == kCpu) {
    // Blocks below kSmallHostBlock came from malloc: free (HostFree) suits
    // both; the cache takes only HostAlloc's large ones.
    if (data && bytes >= kCacheMinBlock) HostBlockCache::Get().Put(data, bytes);
    else HostFree(data);
  } else {
    DeviceFree(device, data);
  }
}

std::shared_ptr<Storage> AllocStorage(Napi::Env env, const char* fn, size_t bytes, int device) {
  void* p = nullptr;
  if (device == kCpu) {
    p = AllocHostOrThrow(env, fn, bytes);
  } else {
    Status st = DeviceAlloc(device, bytes, &p);
    if (st.code == Status::kOutOfMemory)
      ThrowRangeError(env, std::string(fn) + ": cannot allocate " + std::to_string(bytes) + " bytes on cuda:" +
                               std::to_string(device) + " (" + st.message + ")");
    ThrowIfError(env, st, fn);
  }
  auto storage = std::make_shared<Storage>(p, bytes, device);
  // RLK_POISON_ALLOC=1 (set by the test suite) fills every new block with
  // 0xFF bytes (NaN for the float dtypes, -1 or 255 for the integers), so an
  // op that leaves part of a freshly allocated output unwritten fails its
  // tests instead of passing on memory that happened to be zero.
  static const bool poison = [] {
    const char* v = std::getenv("RLK_POISON_ALLOC");
    return v && v[0] == '1';
  }();
  if (poison && bytes) {
    if (device == kCpu) {
      std::memset(p, 0xFF, bytes);
    } else {
      const uint8_t ff = 0xFF;
      ThrowIfError(env, FillDevice(device, p, &ff, 1, int64_t(bytes)), fn);
    }
  }
  return storage;
}

Napi::Function Tensor::Define(Napi::Env env) {
  Napi::Function f = DefineClass(env, "NativeTensor",
                                 {
                                     InstanceMethod("dispose", &Tensor::Dispose),
                                     InstanceMethod("read", &Tensor::Read),
                                     InstanceMethod("readAsync", &Tensor::ReadAsync),
                                     InstanceMethod("to", &Tensor::To),
                                     InstanceMethod("reshape", &Tensor::Reshape),
                                     InstanceAccessor("shape", &Tensor::GetShape, nullptr),
                                     InstanceAccessor("dtype", &Tensor::GetDType, nullptr),
                                     InstanceAccessor("device", &Tensor::GetDevice, nullptr),
                                     InstanceAccessor("disposed", &Tensor::GetDisposed, nullptr),
                                 });
  AddonData(env).tensor_ctor = Napi::Persistent(f);
  return f;
}

// Every NativeTensor is type-tagged at construction: one own-property check,
// which neither a prototype chain (Object.create(tensor)) nor another
// addon's object can fake, and cheaper than instanceof plus an unwrap.
const napi_type_tag kTensorTag = {0x726c6b5f74656e73ULL, 0x6f725f7461677631ULL};

bool Tensor::IsTensor(Napi::Value v) {
  if (!v.IsObject()) return false;
  bool is = false;
  if (napi_check_object_type_tag(v.Env(), v, &kTensorTag, &is) != napi_ok) {
    Napi::Env(v.Env()).GetAndClearPendingException();
    return false;
  }
  return is;
}

Tensor::Tensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tensor>(info) {
  if (g_constructing) {
    napi_type_tag_object(info.Env(), info.This(), &kTensorTag);
  } else {
    disposed_ = true;
    ThrowTypeError(info.Env(), "NativeTensor cannot be constructed directly: use rlk.tensor, rlk.empty, rlk.zeros or rlk.full");
  }
}

Napi::Object Tensor::Wrap(Napi::Env env, std::shared_ptr<Storage> storage, std::vector<int64_t> shape, DType dtype) {
  struct Constructing {
    Constructing() { g_constructing = true; }
    ~Constructing() { g_constructing = false; }
  };
  Napi::Object obj;
  Tensor* t = nullptr;
  EnvData& data = AddonData(env);
  if (!data.recycle.IsEmpty()) {
    Napi::Array pool = data.recycle.Value().As<Napi::Array>();
    for (uint32_t n = pool.Length(); n > 0 && !t; --n) {
      Napi::Value v = pool.Get(n - 1);
      pool.Set("length", Napi::Number::New(env, n - 1));
      if (!IsTensor(v)) continue;
      Tensor* c = Unwrap(v.As<Napi::Object>());
      if (c->disposed_ && !c->storage_) {
        obj = v.As<Napi::Object>();
        t = c;
        t->disposed_ = false;
      }
    }
  }
  if (!t) {
    Constructing guard;
    obj = data.tensor_ctor.New({});
    t = Unwrap(obj);
  }
  t->device_ = storage->device;
  t->storage_ = std::move(storage);
  t->numel_ = Numel(shape);
  t->shape_ = std::move(shape);
  t->dtype_ = dtype;
  Counters(t->device_).tensors++;
  if (t->device_ == kCpu && t->storage_.use_count() == 1 && t->storage_->bytes >= kSmallHostBlock) {
    t->external_bytes_ = int64_t(t->storage_->bytes);
    Napi::MemoryManagement::AdjustExternalMemory(env, t->external_bytes_);
  }
  return obj;
}

void Tensor::Release() {
  if (disposed_) return;
  disposed_ = true;
  storage_.reset();
  Counters(device_).tensors--;
  if (external_bytes_) {
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -external_bytes_);
    external_bytes_ = 0;
  }
}

Tensor::~Tensor() {
  // The GC backstop: a tensor never disposed still returns its memory.
  if (!disposed_) {
    disposed_ = true;
    storage_.reset();
    Counters(device_).tensors--;
  }
}

Napi::Value Tensor::Dispose(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

Napi::Value Tensor::GetShape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), shape_.size());
  for (size_t i = 0; i < shape_.size(); ++i) a.Set(uint32_t(i), double(shape_[i]));
  return a;
}
Napi::Value Tensor::GetDType(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), int(dtype_)); }
Napi::Value Tensor::GetDevice(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }
Napi::Value Tensor::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

Napi::Value Tensor::Read(const Napi::CallbackInfo& info) {
  if (disposed_) ThrowDisposed(info.Env(), "toArraySync", "tensor");
  void* out = nullptr;
  size_t bytes = 0;
  ThrowIfError(info.Env(), ReadToHost(*storage_, dtype_, numel_, &out, &bytes), "toArraySync");
  Napi::Value buf = MakeArrayBuffer(info.Env(), out, bytes);
  ThrowIfDeviceError(info.Env(), device_, "toArraySync");
  return buf;
}

Napi::Value Tensor::ReadAsync(const Napi::CallbackInfo& info) {
  if (disposed_) ThrowDisposed(info.Env(), "toArray", "tensor");
  auto* w = new ReadWorker(info.Env(), storage_, dtype_, numel_);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// to(dtype, device): a view when nothing changes, else a converted copy.
Napi::Value Tensor::To(const Napi::CallbackInfo& info) {
  const char* fn = "to";
  Napi::Env env = info.Env();
  if (disposed_) ThrowDisposed(env, fn, "tensor");
  DType dt = DTypeArg(info, 0, fn, "dtype");
  int dev = DeviceArg(info, 1, fn, "device");
  if (dt == dtype_ && dev == device_) return Wrap(env, storage_, shape_, dtype_);
  size_t src_bytes = nbytes();
  size_t dst_bytes = size_t(numel_) * ElementSize(dt);
  auto out = AllocStorage(env, fn, dst_bytes, dev);
  if (numel_ == 0) return Wrap(env, out, shape_, dt);
  if (device_ == kCpu && dev == kCpu) {
    CastHost(data(), dtype_, out->data, dt, numel_);
  } else if (device_ == kCpu) {
    // Cast on the host, then one copy of the target-sized data.
    if (dt == dtype_) {
      ThrowIfError(env, CopyHostToDevice(dev, out->data, data(), src_bytes), fn);
    } else {
      HostBuffer staging(AllocHostOrThrow(env, fn, dst_bytes));
      CastHost(data(), dtype_, staging.p, dt, numel_);
      ThrowIfError(env, CopyHostToDevice(dev, out->data, staging.p, dst_bytes), fn);
    }
  } else if (dev == kCpu) {
    if (dt == dtype_) {
      ThrowIfError(env, CopyDeviceToHost(device_, out->data, data(), src_bytes), fn);
    } else {
      HostBuffer staging(AllocHostOrThrow(env, fn, src_bytes));
      ThrowIfError(env, CopyDeviceToHost(device_, staging.p, data(), src_bytes), fn);
      CastHost(staging.p, dtype_, out->data, dt, numel_);
    }
    // A copy to the host is a read (runtime.h): a queued op's bad-data report
    // surfaces here, not as silently wrong values on the CPU tensor.
    ThrowIfDeviceError(env, device_, fn);
  } else if (dev == device_) {
    ThrowIfError(env, CastDevice(dev, data(), dtype_, out->data, dt, numel_), fn);
  } else if (dt == dtype_) {
    ThrowIfError(env, CopyDeviceToDevice(dev, out->data, device_, data(), src_bytes), fn);
  } else {
    auto tmp = AllocStorage(env, fn, src_bytes, dev);
    ThrowIfError(env, CopyDeviceToDevice(dev, tmp->data, device_, data(), src_bytes), fn);
    ThrowIfError(env, CastDevice(dev, tmp->data, dtype_, out->data, dt, numel_), fn);
  }
  return Wrap(env, out, shape_, dt);
}

Napi::Value Tensor::Reshape(const Napi::CallbackInfo& info) {
  const char* fn = "reshape";
  Napi::Env env = info.Env();
  if (disposed_) ThrowDisposed(env, fn, "tensor");
  std::vector<int64_t> shape = ShapeArg(env, info[0], fn, "shape", ElementSize(dtype_));
  if (Numel(shape) != numel_)
    ThrowRangeError(env, std::string(fn) + ": shape " + ShapeString(shape) + " must have " + std::to_string(numel_) +
                             " elements like " + ShapeString(shape_) + ", got " + std::to_string(Numel(shape)));
  return Wrap(env, storage_, shape, dtype_);
}

EnvData& AddonData(Napi::Env env) { return *env.GetInstanceData<EnvData>(); }

void InitTensorBindings(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new EnvData);  // deleted with the environment
  Tensor::Define(env);
  exports.Set("fromData", Napi::Function::New(env, FromData, "fromData"));
  exports.Set("empty", Napi::Function::New(env, Empty, "empty"));
  exports.Set("full", Napi::Function::New(env, Full, "full"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("memory", Napi::Function::New(env, Memory, "memory"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetThreads, "getNumThreads"));
  exports.Set("cudaSynchronize", Napi::Function::New(env, CudaSynchronize, "cudaSynchronize"));
  exports.Set("cudaEmptyCache", Napi::Function::New(env, CudaEmptyCache, "cudaEmptyCache"));
  exports.Set("setDisposedErrorClass", Napi::Function::New(env, SetDisposedError, "setDisposedErrorClass"));
  exports.Set("setRecyclePool", Napi::Function::New(env, SetRecyclePool, "setRecyclePool"));
}

}  // namespace rlk::addon
