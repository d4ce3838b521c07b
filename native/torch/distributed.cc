// torch.distributed (DESIGN 8): one c10d process group per process over a
// TCPStore, Gloo on the CPU, NCCL where the torch build has CUDA; and the
// vocabulary-parallel log-probs whose backward needs no communication.
//
// Blocking never happens on the Node thread. The store connection and the
// process group's rendezvous (init) run on a libuv worker; a collective is
// *issued* on the Node thread, so every rank issues its collectives in its
// program order (c10d matches them by order), and only the wait for the
// c10d Work runs on a worker. Gloo issues by queueing onto its own threads,
// which never blocks. Every wait is bounded by the group's timeout: a peer
// that dies closes its sockets (the Work fails at once), a peer that never
// arrives lets the store or Gloo time out.
#include <torch/csrc/autograd/custom_function.h>
// Backend, Work and the option structs are named here directly: without Gloo
// (no libgloo-dev) nothing else brings them in.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef RLK_TORCH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef RLK_TORCH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "bridge.h"
#include "rlk/linear_logprobs.h"
#include "rlk/runtime.h"
#include "rlk/token_logprobs.h"

namespace rlk::torch_bridge {
namespace {

using Ms = std::chrono::milliseconds;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::string backend_name;
  int rank = 0;
  int size = 1;
  Ms timeout{0};
};

// The process's group: set when init resolves, cleared by destroy.
std::shared_ptr<Group> g_group;
bool g_initializing = false;
// Counts the groups made, so that a backward can tell that the group its
// forward ran in was destroyed (and perhaps replaced) since.
int64_t g_generation = 0;

std::string Msg(const std::string& fn, const std::string& what) { return "distributed." + fn + ": " + what; }

// ---- init -----------------------------------------------------------------------

struct InitArgs {
  std::string backend, host, gloo_interface, gloo_hostname;
  int rank = 0, size = 1, port = 0, threads = 2;
  Ms timeout{0};
  bool is_server = false;
  bool use_libuv = false;
};

[[maybe_unused]] bool IsLoopback(const std::string& h) {
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

std::shared_ptr<Group> Connect(const InitArgs& a) {
  auto g = std::make_shared<Group>();
  g->backend_name = a.backend;
  g->rank = a.rank;
  g->size = a.size;
  g->timeout = a.timeout;
  c10d::TCPStoreOptions so;
  so.port = uint16_t(a.port);
  so.isServer = a.is_server;
  so.numWorkers = size_t(a.size);
  so.waitWorkers = true;
  so.timeout = a.timeout;
  so.useLibUV = a.use_libuv;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(a.host, so);
  g->store = c10::make_intrusive<c10d::PrefixStore>("rlkernels/default_pg/" + a.backend, tcp);
#ifdef RLK_TORCH_GLOO
  if (a.backend == "gloo") {
    auto o = c10d::ProcessGroupGloo::Options::create(a.timeout);
    o->threads = a.threads;
    if (!a.gloo_interface.empty()) {
      std::stringstream ss(a.gloo_interface);
      std::string name;
      while (std::getline(ss, name, ','))
        if (!name.empty()) o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    } else if (!a.gloo_hostname.empty()) {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(a.gloo_hostname));
    } else if (IsLoopback(a.host)) {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, a.rank, a.size, o);
    return g;
  }
#endif
#ifdef RLK_TORCH_NCCL
  if (a.backend == "nccl") {
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = a.timeout;
    g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, a.rank, a.size, o);
    return g;
  }
#endif
  throw std::runtime_error("backend '" + a.backend + "' is not compiled into this bridge");
}

class InitWorker : public Napi::AsyncWorker {
 public:
  InitWorker(Napi::Env env, InitArgs a)
      : Napi::AsyncWorker(env, "rlkernels.torch.distributed.init"), deferred_(Napi::Promise::Deferred::New(env)), a_(std::move(a)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      group_ = Connect(a_);
    } catch (const c10::Error& e) {
      SetError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("unknown C++ exception");
    }
  }
  void OnOK() override {
    g_initializing = false;
    g_group = std::move(group_);
    ++g_generation;
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    g_initializing = false;
    deferred_.Reject(Napi::Error::New(Env(), Msg("init", "rank " + std::to_string(a_.rank) + " of " + std::to_string(a_.size) +
                                                             " could not join the group at " + a_.host + ":" +
                                                             std::to_string(a_.port) + ": " + e.Message()))
                         .Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  InitArgs a_;
  std::shared_ptr<Group> group_;
};

std::string StringOpt(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
}

// A whole number in [lo, hi] (what the TypeScript layer passes; checked again here).
int64_t IntIn(Napi::Env env, const std::string& fn, const std::string& name, Napi::Value v, double lo, double hi) {
  if (!v.IsNumber()) ThrowType(env, Msg(fn, name + " must be a number, got " + Describe(v)));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= lo && d <= hi) || d != std::floor(d))
    ThrowRange(env, Msg(fn, name + " must be an integer in [" + std::to_string(int64_t(lo)) + ", " + std::to_string(int64_t(hi)) + "], got " + Describe(v)));
  return int64_t(d);
}
int64_t NumberOpt(Napi::Object o, const char* key, double lo, double hi) { return IntIn(o.Env(), "init", key, o.Get(key), lo, hi); }

// init({ backend, rank, size, host, port, timeoutMs, isServer, useLibUV, threads, glooInterface, glooHostname }):
// TypeScript has checked and defaulted every field.
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g_group) ThrowType(env, Msg("init", "the process group is already initialized (rank " + std::to_string(g_group->rank) +
                                              " of " + std::to_string(g_group->size) + "): call destroy() first"));
  if (g_initializing) ThrowType(env, Msg("init", "init is already in progress: await it"));
  if (!info[0].IsObject()) ThrowType(env, Msg("init", "options must be an object"));
  Napi::Object o = info[0].As<Napi::Object>();
  InitArgs a;
  a.backend = StringOpt(o, "backend");
  a.host = StringOpt(o, "host");
  a.gloo_interface = StringOpt(o, "glooInterface");
  a.gloo_hostname = StringOpt(o, "glooHostname");
  if (a.backend != "gloo" && a.backend != "nccl") ThrowRange(env, Msg("init", "backend must be 'gloo' or 'nccl'"));
  if (a.host.empty()) ThrowType(env, Msg("init", "host must be a non-empty string"));
  a.size = int(NumberOpt(o, "worldSize", 1, 65535));
  a.rank = int(NumberOpt(o, "rank", 0, a.size - 1));
  a.port = int(NumberOpt(o, "port", 0, 65535));
  a.threads = int(NumberOpt(o, "threads", 1, 64));
  a.timeout = Ms(NumberOpt(o, "timeoutMs", 1, 2147483647.0));
  a.is_server = o.Get("isServer").ToBoolean().Value();
  a.use_libuv = o.Get("useLibUV").ToBoolean().Value();
#ifndef RLK_TORCH_GLOO
  if (a.backend == "gloo")
    ThrowType(env, Msg("init", "backend 'gloo' was not compiled into this bridge (no Gloo headers at build time: apt-get install "
                               "libgloo-dev, then npx rlkernels build-torch)"));
#endif
#ifndef RLK_TORCH_NCCL
  if (a.backend == "nccl")
    ThrowType(env, Msg("init", "backend 'nccl' needs a bridge built against a CUDA build of torch with NCCL; this one has none"));
#endif
  g_initializing = true;
  auto* w = new InitWorker(env, std::move(a));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---- collectives ------------------------------------------------------------------

enum class Op { kAllReduce, kAllGather, kBroadcast, kBarrier };

// Waits for one issued Work off the Node thread; keeps the tensors (and the
// group) alive until it settles.
class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, std::string fn, std::shared_ptr<Group> g, c10::intrusive_ptr<c10d::Work> work, at::Tensor result,
             double divide, bool returns_tensor)
      : Napi::AsyncWorker(env, "rlkernels.torch.distributed.wait"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fn_(std::move(fn)),
        group_(std::move(g)),
        work_(std::move(work)),
        result_(std::move(result)),
        divide_(divide),
        returns_tensor_(returns_tensor) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      // The backend's own timeout ends a stuck collective; the wait's bound
      // is a second guard, a little later, so that nothing waits forever.
      if (!work_->wait(group_->timeout + Ms(5000))) throw std::runtime_error("timed out");
      if (divide_ != 1.0) result_.div_(divide_);
    } catch (const c10::Error& e) {
      SetError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("unknown C++ exception");
    }
  }
  void OnOK() override {
    work_.reset();
    if (returns_tensor_) deferred_.Resolve(TorchTensor::Wrap(Env(), result_));
    else deferred_.Resolve(Env().Undefined());
    result_ = at::Tensor();
  }
  void OnError(const Napi::Error& e) override {
    work_.reset();
    result_ = at::Tensor();
    deferred_.Reject(Napi::Error::New(Env(), Msg(fn_, "rank " + std::to_string(group_->rank) + " of " + std::to_string(group_->size) +
                                                          " (" + group_->backend_name + "): " + e.Message() +
                                                          " (a peer died, or did not issue the same collective within " +
                                                          std::to_string(group_->timeout.count()) + " ms)"))
                         .Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string fn_;
  std::shared_ptr<Group> group_;
  c10::intrusive_ptr<c10d::Work> work_;
  at::Tensor result_;
  double divide_;
  bool returns_tensor_;
};

std::shared_ptr<Group> Live(Napi::Env env, const std::string& fn) {
  if (!g_group) {
    if (g_initializing) ThrowType(env, Msg(fn, "init is still in progress: await torch.distributed.init(...) first"));
    ThrowType(env, Msg(fn, "the process group is not initialized: await torch.distributed.init(...) first"));
  }
  return g_group;
}

void CheckCommTensor(Napi::Env env, const Group& g, const std::string& fn, const at::Tensor& t) {
  const bool cuda = g.backend_name == "nccl";
  if (cuda ? !t.device().is_cuda() : !t.device().is_cpu())
    ThrowType(env, Msg(fn, "tensor must be on " + std::string(cuda ? "a CUDA device" : "the CPU") + " for the '" + g.backend_name +
                               "' backend, got " + DeviceName(t.device())));
  if (!t.is_contiguous())
    ThrowType(env, Msg(fn, "tensor must be contiguous, got shape " + ShapeString(t.sizes()) + " with strides " +
                               ShapeString(t.strides()) + "; call .contiguous() first"));
  if (t.is_complex() || t.scalar_type() == at::kBool)
    ThrowType(env, Msg(fn, "tensor must be of a real numeric dtype, got " + DTypeName(t.scalar_type())));
}

Napi::Value Issue(const Napi::CallbackInfo& info, Op op, const std::string& fn, std::shared_ptr<Group> g,
                  c10::intrusive_ptr<c10d::Work> work, at::Tensor result, double divide, bool returns_tensor) {
  auto* w = new WaitWorker(info.Env(), fn, std::move(g), std::move(work), std::move(result), divide, returns_tensor);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// allReduce(tensor, op): in place; op is 'sum' | 'avg' | 'product' | 'min' | 'max' (checked in TS).
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  const std::string fn = "allReduce";
  Napi::Env env = info.Env();
  auto g = Live(env, fn);
  at::Tensor t = TensorArg(info, 0, "distributed.allReduce", "tensor");
  CheckCommTensor(env, *g, fn, t);
  std::string name = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "sum";
  c10d::AllreduceOptions o;
  double divide = 1.0;
  if (name == "sum") o.reduceOp = c10d::ReduceOp::SUM;
  else if (name == "product") o.reduceOp = c10d::ReduceOp::PRODUCT;
  else if (name == "min") o.reduceOp = c10d::ReduceOp::MIN;
  else if (name == "max") o.reduceOp = c10d::ReduceOp::MAX;
  else if (name == "avg") {
    // Gloo has no AVG: a sum, divided once it is complete.
    if (!at::isFloatingType(t.scalar_type()))
      ThrowType(env, Msg(fn, "op 'avg' needs a floating-point tensor, got " + DTypeName(t.scalar_type())));
    o.reduceOp = c10d::ReduceOp::SUM;
    divide = double(g->size);
  } else
    ThrowRange(env, Msg(fn, "op must be 'sum', 'avg', 'product', 'min' or 'max', got " + Describe(info[1])));
  std::vector<at::Tensor> v{t};
  c10::intrusive_ptr<c10d::Work> work;
  RLK_TORCH_TRY
  work = g->backend->allreduce(v, o);
  RLK_TORCH_CATCH(env, "distributed.allReduce")
  return Issue(info, Op::kAllReduce, fn, g, work, t, divide, true);
}

// allGather(tensor) -> a new [worldSize, ...tensor.shape] tensor, rank r's tensor at [r].
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  const std::string fn = "allGather";
  Napi::Env env = info.Env();
  auto g = Live(env, fn);
  at::Tensor t = TensorArg(info, 0, "distributed.allGather", "tensor");
  CheckCommTensor(env, *g, fn, t);
  std::vector<int64_t> shape{int64_t(g->size)};
  for (int64_t d : t.sizes()) shape.push_back(d);
  c10::intrusive_ptr<c10d::Work> work;
  at::Tensor out;
  RLK_TORCH_TRY
  out = at::empty(shape, t.options().requires_grad(false));
  std::vector<std::vector<at::Tensor>> outs(1);
  for (int r = 0; r < g->size; ++r) outs[0].push_back(out.select(0, r));
  std::vector<at::Tensor> in{t.detach()};
  work = g->backend->allgather(outs, in, c10d::AllgatherOptions());
  RLK_TORCH_CATCH(env, "distributed.allGather")
  return Issue(info, Op::kAllGather, fn, g, work, out, 1.0, true);
}

// broadcast(tensor, src): in place.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  const std::string fn = "broadcast";
  Napi::Env env = info.Env();
  auto g = Live(env, fn);
  at::Tensor t = TensorArg(info, 0, "distributed.broadcast", "tensor");
  CheckCommTensor(env, *g, fn, t);
  double src = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  if (!(src >= 0 && src < g->size) || src != std::floor(src))
    ThrowRange(env, Msg(fn, "src must be an integer rank in [0, " + std::to_string(g->size) + "), got " + Describe(info[1])));
  c10d::BroadcastOptions o;
  o.rootRank = int64_t(src);
  std::vector<at::Tensor> v{t};
  c10::intrusive_ptr<c10d::Work> work;
  RLK_TORCH_TRY
  work = g->backend->broadcast(v, o);
  RLK_TORCH_CATCH(env, "distributed.broadcast")
  return Issue(info, Op::kBroadcast, fn, g, work, t, 1.0, true);
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  const std::string fn = "barrier";
  Napi::Env env = info.Env();
  auto g = Live(env, fn);
  c10::intrusive_ptr<c10d::Work> work;
  RLK_TORCH_TRY
  work = g->backend->barrier(c10d::BarrierOptions());
  RLK_TORCH_CATCH(env, "distributed.barrier")
  return Issue(info, Op::kBarrier, fn, g, work, at::Tensor(), 1.0, false);
}

// Releases the group off the Node thread: the Gloo destructor joins its
// threads, which finish the Work already queued (each bounded by the timeout).
class DestroyWorker : public Napi::AsyncWorker {
 public:
  DestroyWorker(Napi::Env env, std::shared_ptr<Group> g)
      : Napi::AsyncWorker(env, "rlkernels.torch.distributed.destroy"), deferred_(Napi::Promise::Deferred::New(env)), g_(std::move(g)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      g_.reset();
    } catch (...) {
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Group> g_;
};

Napi::Value Destroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g_initializing) ThrowType(env, Msg("destroy", "init is still in progress: await it first"));
  auto* w = new DestroyWorker(env, std::move(g_group));
  g_group.reset();
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value State(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("initialized", Napi::Boolean::New(env, bool(g_group)));
  o.Set("initializing", Napi::Boolean::New(env, g_initializing));
  if (g_group) {
    o.Set("rank", Napi::Number::New(env, g_group->rank));
    o.Set("worldSize", Napi::Number::New(env, g_group->size));
    o.Set("backend", Napi::String::New(env, g_group->backend_name));
    o.Set("timeoutMs", Napi::Number::New(env, double(g_group->timeout.count())));
  }
  Napi::Array b = Napi::Array::New(env);
  [[maybe_unused]] uint32_t n = 0;  // unused when neither backend was compiled in
#ifdef RLK_TORCH_GLOO
  b.Set(n++, Napi::String::New(env, "gloo"));
#endif
#ifdef RLK_TORCH_NCCL
  b.Set(n++, Napi::String::New(env, "nccl"));
#endif
  o.Set("backends", b);
  return o;
}

// ---- vocabulary-parallel token log-probs -------------------------------------------

struct ShardArgs {
  at::Tensor targets;      // [rows]
  at::Tensor temperature;  // float32 [rows] or undefined
  float inv_temperature = 1.0f;
  int64_t ignore_index = -100;
  int64_t vocab_start = 0, vocab_size = 0;
  bool entropy = false;
};

// Reads the arguments after the tensors (targets, temperature,
// temperatureTensor | null, ignoreIndex, entropy, vocabStart, vocabSize) from
// index `k` (targets) on.
ShardArgs ReadRowArgs(const Napi::CallbackInfo& info, const char* fn, size_t k) {
  Napi::Env env = info.Env();
  const std::string pre = std::string(fn) + ": ";
  ShardArgs a;
  a.targets = TensorArg(info, k, fn, "targets");
  if (!info[k + 1].IsNumber()) ThrowType(env, pre + "temperature must be a number, got " + Describe(info[k + 1]));
  double temp = info[k + 1].As<Napi::Number>().DoubleValue();
  if (!(temp > 0) || !std::isfinite(temp) || !std::isfinite(float(1.0 / temp)) || !(float(1.0 / temp) > 0))
    ThrowRange(env, pre + "temperature must be a positive finite number, got " + Describe(info[k + 1]));
  a.inv_temperature = float(1.0 / temp);
  a.temperature = OptionalTensorArg(info, k + 2, fn, "temperature");
  const std::string short_fn = std::string(fn).substr(std::string("distributed.").size());
  a.ignore_index = IntIn(env, short_fn, "ignoreIndex", info[k + 3], -9007199254740991.0, 9007199254740991.0);
  a.entropy = info[k + 4].ToBoolean().Value();
  a.vocab_size = IntIn(env, short_fn, "vocabSize", info[k + 6], 1, 9007199254740991.0);
  a.vocab_start = IntIn(env, short_fn, "vocabStart", info[k + 5], 0, double(a.vocab_size - 1));
  return a;
}

// What memory safety depends on, once the shard's rows `lead` (the leading
// shape targets must have) and its vocabulary columns `vshard` are known:
// the shard inside the vocabulary, targets and per-row temperatures.
void CheckRowArgs(Napi::Env env, const char* fn, const ShardArgs& a, at::IntArrayRef lead, int64_t vshard, const char* like) {
  const std::string pre = std::string(fn) + ": ";
  if (a.vocab_start < 0 || a.vocab_start + vshard > a.vocab_size)
    ThrowRange(env, pre + "the shard's columns [" + std::to_string(a.vocab_start) + ", " + std::to_string(a.vocab_start + vshard) +
                        ") must lie in [0, vocabSize = " + std::to_string(a.vocab_size) + ")");
  auto tt = a.targets.scalar_type();
  if (tt != at::kInt && tt != at::kLong) ThrowType(env, pre + "targets must be int32 or int64, got " + DTypeName(tt));
  if (!a.targets.device().is_cpu()) ThrowType(env, pre + "targets must be on the CPU like " + like + ", got " + DeviceName(a.targets.device()));
  if (a.targets.sizes() != lead)
    ThrowRange(env, pre + "targets must have shape " + ShapeString(lead) + ", got " + ShapeString(a.targets.sizes()));
  if (!a.targets.is_contiguous()) ThrowType(env, pre + "targets must be contiguous; call .contiguous() first");
  if (a.temperature.defined()) {
    const at::Tensor& t = a.temperature;
    if (t.scalar_type() != at::kFloat || !t.device().is_cpu())
      ThrowType(env, pre + "temperature must be a float32 CPU tensor, got " + DTypeName(t.scalar_type()) + " on " + DeviceName(t.device()));
  }
  CheckRowValues(env, pre, a.targets, a.temperature, a.ignore_index, a.vocab_size);
}

// Reads the JS arguments (shard, targets, temperature, temperatureTensor | null,
// ignoreIndex, entropy, vocabStart, vocabSize) and checks what memory safety
// depends on (TypeScript checked the rest).
ShardArgs ReadShardArgs(const Napi::CallbackInfo& info, const char* fn, at::Tensor* shard) {
  Napi::Env env = info.Env();
  const std::string pre = std::string(fn) + ": ";
  *shard = TensorArg(info, 0, fn, "logitsShard");
  ShardArgs a = ReadRowArgs(info, fn, 1);
  const at::Tensor& l = *shard;
  auto st = l.scalar_type();
  if (st != at::kFloat && st != at::kBFloat16 && st != at::kHalf)
    ThrowType(env, pre + "logitsShard must be float32, bfloat16 or float16, got " + DTypeName(st));
  if (!l.device().is_cpu())
    ThrowType(env, pre + "logitsShard must be on the CPU (this bridge has no CUDA kernels), got " + DeviceName(l.device()));
  if (l.dim() < 1 || l.size(-1) < 1)
    ThrowRange(env, pre + "logitsShard must have a last dimension of at least 1, got shape " + ShapeString(l.sizes()));
  if (!l.is_contiguous()) ThrowType(env, pre + "logitsShard must be contiguous; call .contiguous() first");
  CheckRowArgs(env, fn, a, l.sizes().slice(0, l.dim() - 1), l.size(-1), "logitsShard");
  return a;
}

// shardPartials(...8 shard args) -> float32 [rows, 3 | 4]: what this rank sends.
Napi::Value ShardPartials(const Napi::CallbackInfo& info) {
  const char* fn = "distributed.tokenLogprobs";
  Napi::Env env = info.Env();
  at::Tensor shard;
  ShardArgs a = ReadShardArgs(info, fn, &shard);
  RLK_TORCH_TRY
  const int64_t rows = a.targets.numel();
  at::Tensor parts = at::empty({rows, a.entropy ? kTlpPartialColsEntropy : kTlpPartialCols}, shard.options().dtype(at::kFloat).requires_grad(false));
  TokenLogprobsFwdParams p;
  p.logits = shard.data_ptr();
  p.logits_dtype = KernelDType(shard.scalar_type());
  p.targets = a.targets.data_ptr();
  p.targets_dtype = KernelDType(a.targets.scalar_type());
  p.temperature = a.temperature.defined() ? a.temperature.data_ptr<float>() : nullptr;
  p.inv_temperature = a.inv_temperature;
  p.rows = rows;
  p.vocab = shard.size(-1);
  p.vocab_start = a.vocab_start;
  p.vocab_size = a.vocab_size;
  p.ignore_index = a.ignore_index;
  p.entropy = a.entropy;
  p.partials = parts.data_ptr<float>();
  Check(cpu::TokenLogprobsFwd(p), fn);
  return TorchTensor::Wrap(env, parts);
  RLK_TORCH_CATCH(env, fn)
}

struct ShardSaved {
  ShardArgs a;
  at::Tensor logprobs, entropy, stats;
};

// Argument i: every rank's partials, all-gathered ([shards, rows, cols] float32).
at::Tensor GatheredArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const ShardArgs& a) {
  at::Tensor gathered = TensorArg(info, i, fn, "partials");
  const int64_t rows = a.targets.numel();
  const int64_t cols = a.entropy ? kTlpPartialColsEntropy : kTlpPartialCols;
  if (gathered.scalar_type() != at::kFloat || !gathered.device().is_cpu() || !gathered.is_contiguous() || gathered.dim() != 3 ||
      gathered.size(1) != rows || gathered.size(2) != cols || gathered.size(0) < 1 || gathered.size(0) > kTlpMaxShards)
    ThrowRange(info.Env(), std::string(fn) + ": partials must be a contiguous float32 CPU tensor [shards, " + std::to_string(rows) +
                               ", " + std::to_string(cols) + "], got " + Describe(info[i]));
  return gathered;
}

// DESIGN 3.1's combine of the gathered partials into s's log-probs, entropy and stats.
void CombinePartials(const at::Tensor& gathered, ShardSaved& s, const char* fn) {
  const int64_t rows = s.a.targets.numel();
  const int64_t cols = gathered.size(2);
  auto f32 = gathered.options().requires_grad(false);
  s.logprobs = at::empty(s.a.targets.sizes(), f32);
  if (s.a.entropy) s.entropy = at::empty(s.a.targets.sizes(), f32);
  s.stats = at::empty({rows, kTlpStatsCols}, f32);
  TokenLogprobsCombineParams p;
  p.shards = int32_t(gathered.size(0));
  for (int32_t k = 0; k < p.shards; ++k) p.partials[k] = gathered.data_ptr<float>() + k * rows * cols;
  p.cols = int32_t(cols);
  p.targets = s.a.targets.data_ptr();
  p.targets_dtype = KernelDType(s.a.targets.scalar_type());
  p.temperature = s.a.temperature.defined() ? s.a.temperature.data_ptr<float>() : nullptr;
  p.inv_temperature = s.a.inv_temperature;
  p.rows = rows;
  p.ignore_index = s.a.ignore_index;
  p.logprobs = s.logprobs.data_ptr<float>();
  p.entropy_out = s.a.entropy ? s.entropy.data_ptr<float>() : nullptr;
  p.stats = s.stats.data_ptr<float>();
  Check(cpu::TokenLogprobsCombine(p), fn);
}

// Values combined from every rank's partials; the backward is local: the
// combined stats (global max, sum of exp, entropy) give p_j on this shard,
// and d logits_j = [g (1[j = target] - p_j) - gE p_j (log p_j + H)] / T.
struct ShardLogprobsFunction : public torch::autograd::Function<ShardLogprobsFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& shard, const ShardSaved& s) {
    ctx->save_for_backward({shard});
    SaveRowContext(ctx, s.a.targets, s.a.temperature, s.stats, s.a.inv_temperature, s.a.ignore_index, s.a.vocab_start, s.a.vocab_size);
    ctx->set_materialize_grads(false);
    if (s.entropy.defined()) return {s.logprobs, s.entropy};
    return {s.logprobs};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    return {TokenLogprobsGrad(ctx, grads, "distributed.tokenLogprobs.backward"), at::Tensor()};
  }
};

// shardCombine(...8 shard args, gathered [shards, rows, cols]) -> [logprobs, entropy | null]
// with a grad_fn reaching logitsShard.
Napi::Value ShardCombine(const Napi::CallbackInfo& info) {
  const char* fn = "distributed.tokenLogprobs";
  Napi::Env env = info.Env();
  at::Tensor shard;
  ShardSaved s;
  s.a = ReadShardArgs(info, fn, &shard);
  at::Tensor gathered = GatheredArg(info, 8, fn, s.a);
  torch::autograd::variable_list out;
  RLK_TORCH_TRY
  CombinePartials(gathered, s, fn);
  out = ShardLogprobsFunction::apply(shard, s);
  RLK_TORCH_CATCH(env, fn)
  Napi::Array res = Napi::Array::New(env, 2);
  res.Set(0u, TorchTensor::Wrap(env, out[0]));
  res.Set(1u, out.size() > 1 ? Napi::Value(TorchTensor::Wrap(env, out[1])) : env.Null());
  return res;
}

// ---- vocabulary-parallel linear log-probs (a sharded LM head) ----------------------

struct LinShard {
  at::Tensor hidden, weight, bias;  // bias undefined without one
  ShardArgs a;
  int64_t chunk = 0;
};

// Reads (hidden, weightShard, bias | null, targets, temperature,
// temperatureTensor | null, ignoreIndex, entropy, vocabStart, vocabSize,
// chunkSize) and checks what memory safety depends on.
LinShard ReadLinShard(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  const std::string pre = std::string(fn) + ": ";
  LinShard s;
  s.hidden = TensorArg(info, 0, fn, "hidden");
  s.weight = TensorArg(info, 1, fn, "weightShard");
  s.bias = OptionalTensorArg(info, 2, fn, "bias");
  s.a = ReadRowArgs(info, fn, 3);
  s.chunk = IntIn(env, "linearLogprobs", "chunkSize", info[10], 0, double(int64_t(1) << 30));
  const at::Tensor& h = s.hidden;
  auto st = h.scalar_type();
  if (st != at::kFloat && st != at::kBFloat16 && st != at::kHalf)
    ThrowType(env, pre + "hidden must be float32, bfloat16 or float16, got " + DTypeName(st));
  auto cpu_contig = [&](const at::Tensor& t, const char* name) {
    if (!t.device().is_cpu()) ThrowType(env, pre + name + " must be on the CPU (this bridge has no CUDA kernels), got " + DeviceName(t.device()));
    if (!t.is_contiguous()) ThrowType(env, pre + name + " must be contiguous; call .contiguous() first");
  };
  cpu_contig(h, "hidden");
  if (h.dim() < 1 || h.size(-1) < 1)
    ThrowRange(env, pre + "hidden must have a last dimension (the model width) of at least 1, got shape " + ShapeString(h.sizes()));
  const int64_t dim = h.size(-1);
  if (s.weight.scalar_type() != st)
    ThrowType(env, pre + "weightShard must be " + DTypeName(st) + " like hidden, got " + DTypeName(s.weight.scalar_type()));
  cpu_contig(s.weight, "weightShard");
  if (s.weight.dim() != 2 || s.weight.size(1) != dim || s.weight.size(0) < 1)
    ThrowRange(env, pre + "weightShard must have shape [V_shard, " + std::to_string(dim) + "] (H of hidden) with V_shard >= 1, got " +
                        ShapeString(s.weight.sizes()));
  const int64_t vshard = s.weight.size(0);
  if (s.bias.defined()) {
    if (s.bias.scalar_type() != st) ThrowType(env, pre + "bias must be " + DTypeName(st) + " like weightShard, got " + DTypeName(s.bias.scalar_type()));
    cpu_contig(s.bias, "bias");
    if (s.bias.dim() != 1 || s.bias.size(0) != vshard)
      ThrowRange(env, pre + "bias must have shape [" + std::to_string(vshard) + "] (the shard's rows), got " + ShapeString(s.bias.sizes()));
  }
  CheckRowArgs(env, fn, s.a, h.sizes().slice(0, h.dim() - 1), vshard, "hidden");
  return s;
}

LinearLogprobsFwdParams LinFwdParams(const LinShard& s) {
  LinearLogprobsFwdParams p;
  p.hidden = s.hidden.data_ptr();
  p.weight = s.weight.data_ptr();
  p.bias = s.bias.defined() ? s.bias.data_ptr() : nullptr;
  p.dtype = KernelDType(s.hidden.scalar_type());
  p.bias_dtype = s.bias.defined() ? KernelDType(s.bias.scalar_type()) : p.dtype;
  p.targets = s.a.targets.data_ptr();
  p.targets_dtype = KernelDType(s.a.targets.scalar_type());
  p.temperature = s.a.temperature.defined() ? s.a.temperature.data_ptr<float>() : nullptr;
  p.inv_temperature = s.a.inv_temperature;
  p.rows = s.a.targets.numel();
  p.dim = s.hidden.size(-1);
  p.vocab = s.weight.size(0);
  p.vocab_start = s.a.vocab_start;
  p.vocab_size = s.a.vocab_size;
  p.ignore_index = s.a.ignore_index;
  p.chunk = s.chunk;
  p.entropy = s.a.entropy;
  return p;
}

// linearShardPartials(...11 args) -> float32 [rows, 3 | 4]: what this rank sends.
Napi::Value LinearShardPartials(const Napi::CallbackInfo& info) {
  const char* fn = "distributed.linearLogprobs";
  Napi::Env env = info.Env();
  LinShard s = ReadLinShard(info, fn);
  RLK_TORCH_TRY
  const int64_t rows = s.a.targets.numel();
  at::Tensor parts = at::empty({rows, s.a.entropy ? kTlpPartialColsEntropy : kTlpPartialCols},
                               s.hidden.options().dtype(at::kFloat).requires_grad(false));
  LinearLogprobsFwdParams p = LinFwdParams(s);
  p.partials = parts.data_ptr<float>();
  Check(cpu::LinearLogprobsFwd(p), fn);
  return TorchTensor::Wrap(env, parts);
  RLK_TORCH_CATCH(env, fn)
}

struct LinSaved : ShardSaved {
  int64_t chunk = 0;
};

// The combined values as a function of hidden, weightShard (and bias). The
// backward is the core's shard backward from the combined stats: gradWeight
// and gradBias are this shard's and exact; gradHidden = dlogits @ W_shard is
// this shard's part of a sum over the ranks, so the backward all-reduces it
// (Megatron's copy-to-tensor-parallel-region backward) before autograd
// accumulates it. That all-reduce runs inside backward(), on the calling
// thread, which waits for it (bounded by the group's timeout): every rank must
// reach this backward, in the same order relative to its other collectives.
struct ShardLinearLogprobsFunction : public torch::autograd::Function<ShardLinearLogprobsFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, const LinSaved& s) {
    ctx->save_for_backward({hidden, weight, bias ? *bias : at::Tensor()});
    SaveRowContext(ctx, s.a.targets, s.a.temperature, s.stats, s.a.inv_temperature, s.a.ignore_index, s.a.vocab_start, s.a.vocab_size);
    ctx->saved_data["chunk"] = s.chunk;
    ctx->saved_data["generation"] = g_generation;
    ctx->set_materialize_grads(false);
    if (s.entropy.defined()) return {s.logprobs, s.entropy};
    return {s.logprobs};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const char* fn = "distributed.linearLogprobs.backward";
    const bool any = grads[0].defined() || (grads.size() > 1 && grads[1].defined());
    if (!any) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    // Checked before any work: the all-reduce below needs the forward's group.
    const bool reduce = ctx->needs_input_grad(0);
    TORCH_CHECK(!reduce || (g_group && ctx->saved_data["generation"].toInt() == g_generation), fn,
                ": the process group of the forward was destroyed before backward(); the gradient of hidden is a sum over its "
                "ranks");
    std::vector<at::Tensor> g = LinearLogprobsGrads(ctx, grads, fn);
    if (reduce) {
      std::shared_ptr<Group> grp = g_group;
      std::vector<at::Tensor> v{g[0]};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      auto work = grp->backend->allreduce(v, o);
      // Gloo's own timeout ends a stuck all-reduce; this bound is a second guard.
      TORCH_CHECK(work->wait(grp->timeout + Ms(5000)), fn, ": the all-reduce of the gradient of hidden timed out");
    }
    return {reduce ? g[0] : at::Tensor(), g[1], g[2], at::Tensor()};
  }
};

// linearShardCombine(...11 args, gathered [shards, rows, cols]) -> [logprobs, entropy | null]
// with a grad_fn reaching hidden, weightShard and bias.
Napi::Value LinearShardCombine(const Napi::CallbackInfo& info) {
  const char* fn = "distributed.linearLogprobs";
  Napi::Env env = info.Env();
  LinShard in = ReadLinShard(info, fn);
  LinSaved s;
  s.a = in.a;
  s.chunk = in.chunk;
  at::Tensor gathered = GatheredArg(info, 11, fn, s.a);
  torch::autograd::variable_list out;
  RLK_TORCH_TRY
  CombinePartials(gathered, s, fn);
  out = ShardLinearLogprobsFunction::apply(in.hidden, in.weight, in.bias.defined() ? std::optional<at::Tensor>(in.bias) : std::nullopt, s);
  RLK_TORCH_CATCH(env, fn)
  Napi::Array res = Napi::Array::New(env, 2);
  res.Set(0u, TorchTensor::Wrap(env, out[0]));
  res.Set(1u, out.size() > 1 ? Napi::Value(TorchTensor::Wrap(env, out[1])) : env.Null());
  return res;
}

}  // namespace

void InitDistributed(Napi::Env env, Napi::Object exports) {
  Napi::Object d = Napi::Object::New(env);
  d.Set("init", Napi::Function::New(env, Init, "init"));
  d.Set("allReduce", Napi::Function::New(env, AllReduce, "allReduce"));
  d.Set("allGather", Napi::Function::New(env, AllGather, "allGather"));
  d.Set("broadcast", Napi::Function::New(env, Broadcast, "broadcast"));
  d.Set("barrier", Napi::Function::New(env, Barrier, "barrier"));
  d.Set("destroy", Napi::Function::New(env, Destroy, "destroy"));
  d.Set("state", Napi::Function::New(env, State, "state"));
  d.Set("shardPartials", Napi::Function::New(env, ShardPartials, "shardPartials"));
  d.Set("shardCombine", Napi::Function::New(env, ShardCombine, "shardCombine"));
  d.Set("linearShardPartials", Napi::Function::New(env, LinearShardPartials, "linearShardPartials"));
  d.Set("linearShardCombine", Napi::Function::New(env, LinearShardCombine, "linearShardCombine"));
  exports.Set("distributed", d);
}

}  // namespace rlk::torch_bridge
