// The emulated CUDA device (DESIGN 9): the CUDA runtime API that the .cu
// sources call, and the execution model their kernels run on.
//
// - Every CUDA thread is a fiber (Boost.Context's fcontext: a switch is a few
//   register moves, no system call). A block's fibers run one at a time on
//   one OS thread, each until its next barrier or warp collective; the last
//   to arrive completes it for all (shuffles and votes see every lane's value
//   of that one collective, so they are lockstep as on a GPU).
// - A launch's blocks are spread over a small pool of OS threads. A
//   cooperative launch runs all its blocks at once (each OS thread holds its
//   share as fibers) and grid.sync() is a barrier over all of them.
// - Misuse is reported, with the .cu file and line (#line in the generated
//   sources), block and thread, and the launch fails instead of hanging: a
//   __syncthreads not reached by the whole block or reached at two places, a
//   warp collective whose mask misses the caller, names a lane that exited or
//   that does not exist, lanes that disagree on the collective, reads from a
//   lane outside the mask, grid.sync() outside a cooperative launch, and any
//   state where no thread can go on (a deadlock).
// - Device memory is host memory, allocated at its exact size (so that
//   AddressSanitizer sees an access past the end); copies check that their
//   device side lies inside one live allocation. __shared__ variables are one
//   allocation each per block, filled with 0xFF bytes (NaN) so that reads of
//   never-written shared memory show, with a guard zone checked at block end.
// - Streams run their work synchronously, in issue order: kernels and copies
//   of every stream are serialised, which is one order a GPU may choose.
// - Under ThreadSanitizer (the sanitizer driver), each CUDA thread is a TSan
//   fiber, and the barriers (__syncthreads, __syncwarp, grid.sync) are its
//   only synchronisation, as in the CUDA memory model (a shuffle or vote
//   moves values, it does not order memory), so a race on shared memory
//   between barriers is reported.
#include <cuda_runtime.h>

#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/detail/fcontext.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define RLK_SIM_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__) && !defined(RLK_SIM_TSAN)
#define RLK_SIM_TSAN 1
#endif
#if RLK_SIM_TSAN
// The runtime itself is built without instrumentation (its bookkeeping is
// not the kernels' memory); these calls reach the TSan runtime linked into
// the sanitizer driver.
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
}
#endif
#if RLK_SIM_ASAN || RLK_SIM_TSAN
extern "C" void __sanitizer_set_death_callback(void (*callback)(void));
#endif
#if RLK_SIM_TSAN
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#define RLK_SIM_RUNTIME_SCOPE TsanIgnore rlk_sim_tsan_ignore_
#else
#define RLK_SIM_RUNTIME_SCOPE
#endif

namespace rlk_sim {

thread_local ThreadVars* tls_vars = nullptr;

namespace {

namespace bctx = boost::context::detail;

// ---- configuration ---------------------------------------------------------------

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return std::atoi(v);
}

// RLK_SIM_SMS lowers the SM count (sizes of occupancy-sized grids), so that
// small inputs still reach the grid-stride loops of cooperative kernels.
const int kSms = std::max(1, std::min(132, EnvInt("RLK_SIM_SMS", 132)));
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr size_t kSharedPerSm = 228 * 1024;
constexpr size_t kSharedPerBlockOptin = 227 * 1024;
constexpr size_t kSharedPerBlock = 48 * 1024;
constexpr size_t kGlobalMem = size_t(80) << 30;
constexpr size_t kGuard = 64;  // guard bytes after each __shared__ variable
constexpr unsigned char kGuardByte = 0xA5;

int NumDevices() {
  static const int n = std::max(1, std::min(8, EnvInt("RLK_SIM_DEVICES", 1)));
  return n;
}

size_t StackBytes() {
#if RLK_SIM_ASAN || RLK_SIM_TSAN
  static const size_t s = size_t(std::max(64, EnvInt("RLK_SIM_STACK_KB", 256))) << 10;
#else
  static const size_t s = size_t(std::max(16, EnvInt("RLK_SIM_STACK_KB", 32))) << 10;
#endif
  return s;
}

// ---- errors ---------------------------------------------------------------------------

thread_local cudaError_t tls_last_error = cudaSuccess;
thread_local int tls_device = 0;

cudaError_t Err(cudaError_t e) {
  if (e != cudaSuccess) tls_last_error = e;
  return e;
}

void Report(const std::string& msg) {
  std::fprintf(stderr, "rlk-sim: %s\n", msg.c_str());
  std::fflush(stderr);
  if (EnvInt("RLK_SIM_ABORT", 0)) std::abort();
}

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// ---- device memory ----------------------------------------------------------------------

struct Allocation {
  size_t bytes;
  int device;
};
std::mutex g_mem_mu;
std::map<uintptr_t, Allocation> g_allocs;  // base -> allocation
size_t g_live_bytes = 0;

size_t HostMemoryLimit() {
  // Device memory is host memory: refuse what the host cannot back rather
  // than let the first write of an overcommitted block kill the process.
  static const size_t limit = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    const size_t phys = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : kGlobalMem;
    return std::min(kGlobalMem, phys / 2);
  }();
  return limit;
}

// The allocation holding [p, p + bytes), or nullptr.
const Allocation* FindRange(const void* p, size_t bytes, uintptr_t* base) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  if (a < it->first || a - it->first > it->second.bytes || bytes > it->second.bytes - (a - it->first)) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

// ---- fibers -------------------------------------------------------------------------------

enum class St : uint8_t { kReady, kRunning, kBarrier, kWarp, kGrid, kExited, kAbandoned };

struct Block;
struct LaunchState;
struct Worker;

struct Fiber {
  ThreadVars vars;  // what threadIdx & co read
  Block* block = nullptr;
  int linear = 0, warp = 0, lane = 0;
  St state = St::kReady;
  const char* file = nullptr;  // where it waits
  int line = 0;
  int kind = 0;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  Fiber* waker = nullptr;
  bctx::fcontext_t ctx = nullptr;
  char* stack = nullptr;  // mmap'd, guard page at the low end
  char token = 0;         // TSan sync address of this fiber
  void* tsan = nullptr;
  void* fake_stack = nullptr;
  int ignores = 0;  // open ThreadSanitizer ignore scopes
};

struct WarpGroup {
  int kind;
  unsigned mask, arrived;
  const char* file;
  int line;
};

struct WarpState {
  std::vector<WarpGroup> pending;
  unsigned exists = 0, exited = 0;
};

struct SharedVar {
  const void* key;
  char* ptr;
  size_t bytes;
  const char* file;
  int line;
  char sync;  // TSan: the allocating thread releases, every user acquires
};

struct Block {
  uint3 idx;
  int n = 0;
  Fiber* fibers = nullptr;
  std::vector<WarpState> warps;
  int bar_arrived = 0, bar_op = 0, bar_acc = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int exited = 0;
  std::vector<SharedVar*> shared;
};

struct LaunchState {
  LaunchCfg cfg;
  bool coop = false;
  const char* name = "";
  const char* file = "";
  int line = 0;
  void (*thunk)(void*) = nullptr;
  void* closure = nullptr;
  int64_t num_blocks = 0;
  int threads_per_block = 0;
  std::atomic<int64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string error;
  // cooperative: the grid barrier over the workers
  int workers = 1;
  int grid_arrived = 0, workers_done = 0;
  uint64_t grid_generation = 0;
  std::condition_variable grid_cv;
};

struct Worker {
  bctx::fcontext_t sched = nullptr;
  std::deque<Fiber*> ready;
  LaunchState* launch = nullptr;
  Fiber* current = nullptr;
  void* tsan_self = nullptr;
  char grid_token = 0;
  char* slab = nullptr;  // fiber stacks
  size_t slab_stacks = 0, slab_guard = 0;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
};

thread_local Worker* tls_worker = nullptr;

#if RLK_SIM_TSAN
// The emulator's bookkeeping (a queue node one fiber allocates and the
// scheduler frees, say) is no data of the kernels: its allocations stay out
// of ThreadSanitizer's view, in every fiber and in the scheduler. A fiber
// counts its open scopes, which Fail closes (it never returns).
struct TsanIgnore {
  Fiber* f;
  TsanIgnore() : f(tls_worker ? tls_worker->current : nullptr) {
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    if (f) f->ignores++;
  }
  ~TsanIgnore() {
    if (f) f->ignores--;
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  }
};
#endif

Worker& ThisWorker() {
  if (!tls_worker) {
    tls_worker = new Worker();  // lives as long as its thread (pool threads never end)
#if RLK_SIM_TSAN
    tls_worker->tsan_self = __tsan_get_current_fiber();
#endif
  }
  return *tls_worker;
}

std::string Dim(uint3 d) { return Fmt("(%u,%u,%u)", d.x, d.y, d.z); }

std::string Where(const Fiber* f) {
  return Fmt("block %s, thread %s (warp %d, lane %d)", Dim(f->block->idx).c_str(), Dim(f->vars.thread_idx).c_str(),
             f->warp, f->lane);
}

const char* CollectiveName(int kind) {
  switch (kind) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kVoteAny: return "__any_sync";
    case kVoteAll: return "__all_sync";
    case kVoteBallot: return "__ballot_sync";
    case kSyncWarp: return "__syncwarp";
    case kMatchAny: return "__match_any_sync";
  }
  return "a warp collective";
}

std::string Lanes(unsigned m) {
  std::string s;
  for (int i = 0; i < 32; ++i) {
    if (!((m >> i) & 1u)) continue;
    int j = i;
    while (j + 1 < 32 && ((m >> (j + 1)) & 1u)) ++j;
    if (!s.empty()) s += ",";
    s += j > i ? Fmt("%d-%d", i, j) : Fmt("%d", i);
    i = j;
  }
  return s;
}

// Records the launch's first error (later ones are consequences).
void SetFailure(LaunchState* L, const std::string& what) {
  std::lock_guard<std::mutex> lock(L->mu);
  if (!L->failed.load()) {
    L->error = what;
    L->failed.store(true);
  }
  L->grid_cv.notify_all();
}

void SwitchToScheduler(Fiber* f, bool exiting) {
  Worker& w = *tls_worker;
#if RLK_SIM_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, w.sched_stack_bottom, w.sched_stack_size);
#endif
#if RLK_SIM_TSAN
  __tsan_switch_to_fiber(w.tsan_self, 1);
#endif
  bctx::transfer_t t = bctx::jump_fcontext(w.sched, nullptr);
  tls_worker->sched = t.fctx;
#if RLK_SIM_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
  (void)exiting;
}

// Ends the calling CUDA thread's part in a failed launch: it is never resumed.
// `culprit` (default: the caller) is the thread the report names.
[[noreturn]] void Fail(Fiber* f, const std::string& what, const char* file, int line, const Fiber* culprit = nullptr) {
  LaunchState* L = tls_worker->launch;
  SetFailure(L, Fmt("%s\n    at %s:%d, %s, in kernel %s launched at %s:%d", what.c_str(), file, line,
                    Where(culprit ? culprit : f).c_str(), L->name, L->file, L->line));
  f->state = St::kAbandoned;
#if RLK_SIM_TSAN
  while (f->ignores > 0) {
    f->ignores--;
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  }
#endif
  SwitchToScheduler(f, false);
  std::abort();  // unreachable: an abandoned fiber is never resumed
}

void Yield(Fiber* f) { SwitchToScheduler(f, false); }

void FiberMain(bctx::transfer_t t) {
  Worker& w = *tls_worker;
  w.sched = t.fctx;
  Fiber* f = static_cast<Fiber*>(t.data);
#if RLK_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
  w.launch->thunk(w.launch->closure);
  // The thread returned from the kernel.
  {
  RLK_SIM_RUNTIME_SCOPE;
  Block* b = f->block;
  WarpState& ws = b->warps[f->warp];
  const unsigned bit = 1u << f->lane;
  for (const WarpGroup& g : ws.pending) {
    if ((g.mask & bit) && !(g.arrived & bit))
      Fail(f,
           Fmt("a thread returned while lanes %s of its warp wait for it in %s at %s:%d (mask 0x%08x)",
               Lanes(g.arrived).c_str(), CollectiveName(g.kind), g.file, g.line, g.mask),
           g.file, g.line);
  }
  if (b->bar_arrived > 0)
    Fail(f,
         Fmt("__syncthreads() not reached by the whole block: a thread returned while %d threads wait at %s:%d",
             b->bar_arrived, b->bar_file, b->bar_line),
         b->bar_file, b->bar_line);
  ws.exited |= bit;
  b->exited++;
  }
#if RLK_SIM_TSAN
  __tsan_release(&f->token);
#endif
  f->state = St::kExited;
  SwitchToScheduler(f, true);
  std::abort();  // unreachable
}

// The fibers' stacks of one batch: one mapping (a mapping per stack would
// run into the kernel's limit on mappings with a few tens of thousands of
// threads), reused by the worker's next batch. A guard page below it.
char* EnsureSlab(Worker& w, size_t stacks) {
  if (w.slab && w.slab_stacks >= stacks) return w.slab;
  if (w.slab) munmap(w.slab - w.slab_guard, w.slab_stacks * StackBytes() + w.slab_guard);
  const size_t page = size_t(sysconf(_SC_PAGE_SIZE));
  const size_t want = std::max<size_t>(stacks, 1024);
  void* p = mmap(nullptr, want * StackBytes() + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    w.slab = nullptr;
    w.slab_stacks = 0;
    return nullptr;
  }
  mprotect(p, page, PROT_NONE);
  w.slab = static_cast<char*>(p) + page;
  w.slab_guard = page;
  w.slab_stacks = want;
  return w.slab;
}

// After a large cooperative batch, give the touched stack pages back.
void TrimSlab(Worker& w, bool dirty) {
#if RLK_SIM_ASAN
  // Fibers abandoned mid-kernel left their frames' redzones poisoned.
  if (dirty && w.slab) __asan_unpoison_memory_region(w.slab, w.slab_stacks * StackBytes());
#endif
  (void)dirty;
  constexpr size_t kKeep = size_t(64) << 20;
  if (w.slab && w.slab_stacks * StackBytes() > kKeep) {
    munmap(w.slab - w.slab_guard, w.slab_stacks * StackBytes() + w.slab_guard);
    w.slab = nullptr;
    w.slab_stacks = 0;
  }
}

void Resume(Worker& w, Fiber* f) {
  tls_vars = &f->vars;
  w.current = f;
  f->state = St::kRunning;
#if RLK_SIM_ASAN
  __sanitizer_start_switch_fiber(&w.sched_fake_stack, f->stack, StackBytes());
#endif
#if RLK_SIM_TSAN
  __tsan_switch_to_fiber(f->tsan, 1);
#endif
  bctx::transfer_t t = bctx::jump_fcontext(f->ctx, f);
#if RLK_SIM_ASAN
  __sanitizer_finish_switch_fiber(w.sched_fake_stack, nullptr, nullptr);
#endif
  f->ctx = t.fctx;
  w.current = nullptr;
  tls_vars = nullptr;
}

void FreeShared(Block& b) {
  for (SharedVar* v : b.shared) {
#if !RLK_SIM_ASAN
    for (size_t i = 0; i < kGuard; ++i) {
      if (static_cast<unsigned char>(v->ptr[v->bytes + i]) != kGuardByte) {
        LaunchState* L = tls_worker->launch;
        SetFailure(L, Fmt("out-of-bounds shared memory write: the __shared__ variable declared at %s:%d (%zu bytes) "
                          "was written %zu bytes past its end, in block %s of kernel %s launched at %s:%d "
                          "(the sanitizer driver names the thread)",
                          v->file, v->line, v->bytes, i, Dim(b.idx).c_str(), L->name, L->file, L->line));
        break;
      }
    }
#endif
    std::free(v->ptr);
    delete v;
  }
  b.shared.clear();
}

std::string DescribeStuck(const std::vector<Block*>& blocks) {
  std::string s;
  int shown = 0;
  for (Block* b : blocks) {
    bool stuck = false;
    for (int i = 0; i < b->n; ++i) stuck |= b->fibers[i].state != St::kExited;
    if (!stuck) continue;
    if (shown++ == 4) {
      s += "\n    ...";
      break;
    }
    s += Fmt("\n    block %s:", Dim(b->idx).c_str());
    for (int i = 0; i < b->n;) {
      const Fiber& f = b->fibers[i];
      int j = i;
      auto same = [&](const Fiber& g) {
        return g.state == f.state && g.file == f.file && g.line == f.line && g.kind == f.kind;
      };
      while (j + 1 < b->n && same(b->fibers[j + 1])) ++j;
      std::string what;
      switch (f.state) {
        case St::kExited: what = "returned"; break;
        case St::kBarrier: what = Fmt("wait in __syncthreads() at %s:%d", f.file, f.line); break;
        case St::kWarp: what = Fmt("wait in %s at %s:%d (mask 0x%08x)", CollectiveName(f.kind), f.file, f.line, f.mask); break;
        case St::kGrid: what = Fmt("wait in grid.sync() at %s:%d", f.file, f.line); break;
        default: what = "runnable"; break;
      }
      s += Fmt("\n      threads %d-%d %s", i, j, what.c_str());
      i = j + 1;
    }
  }
  return s;
}

// Cross-worker grid barrier; false when the launch failed meanwhile.
bool GridArrive(LaunchState* L) {
  std::unique_lock<std::mutex> lock(L->mu);
  if (L->failed.load()) return false;
  if (L->workers_done > 0) return false;  // the caller reports it
  const uint64_t gen = L->grid_generation;
  if (++L->grid_arrived == L->workers) {
    L->grid_arrived = 0;
    L->grid_generation++;
    L->grid_cv.notify_all();
    return true;
  }
  L->grid_cv.wait(lock, [&] { return L->grid_generation != gen || L->failed.load() || L->workers_done > 0; });
  return L->grid_generation != gen;
}

void WorkerDone(LaunchState* L) {
  std::lock_guard<std::mutex> lock(L->mu);
  L->workers_done++;
  L->grid_cv.notify_all();
}

// Runs `blocks` to completion on this OS thread: all of them at once (their
// fibers interleave), which a cooperative launch needs for grid.sync().
void RunBatch(Worker& w, LaunchState* L, const std::vector<uint3>& ids) {
  const int n = L->threads_per_block;
  const dim3 bd = L->cfg.block;
  std::vector<Block> blocks(ids.size());
  std::vector<Fiber> fibers(ids.size() * size_t(n));
  std::vector<Block*> bptr;
  char* slab = EnsureSlab(w, fibers.size());
  bool ok = slab != nullptr;
  for (size_t k = 0; k < ids.size(); ++k) {
    Block& b = blocks[k];
    bptr.push_back(&b);
    b.idx = ids[k];
    b.n = n;
    b.fibers = &fibers[k * n];
    b.warps.resize((n + 31) / 32);
    for (int i = 0; i < n; ++i) b.warps[i / 32].exists |= 1u << (i % 32);
    for (int i = 0; i < n; ++i) {
      Fiber& f = b.fibers[i];
      f.block = &b;
      f.linear = i;
      f.warp = i / 32;
      f.lane = i % 32;
      f.vars.thread_idx = uint3{unsigned(i) % bd.x, (unsigned(i) / bd.x) % bd.y, unsigned(i) / (bd.x * bd.y)};
      f.vars.block_idx = b.idx;
      f.vars.block_dim = bd;
      f.vars.grid_dim = L->cfg.grid;
      if (!ok) break;
      f.stack = slab + (k * n + i) * StackBytes();
      f.ctx = bctx::make_fcontext(f.stack + StackBytes(), StackBytes(), FiberMain);
#if RLK_SIM_TSAN
      f.tsan = __tsan_create_fiber(0);
      if (EnvInt("RLK_SIM_NAME_FIBERS", 1)) {
        const std::string name = Fmt("CUDA block %s thread %s", Dim(b.idx).c_str(), Dim(f.vars.thread_idx).c_str());
        __tsan_set_fiber_name(f.tsan, name.c_str());
      }
#endif
      w.ready.push_back(&f);
    }
    if (!ok) break;
  }
  if (!ok) {
    SetFailure(L, Fmt("out of memory for the emulator's fiber stacks (%zu KiB each; RLK_SIM_STACK_KB)", StackBytes() >> 10));
    w.ready.clear();
  }
  while (ok) {
    while (!w.ready.empty() && !L->failed.load()) {
      Fiber* f = w.ready.front();
      w.ready.pop_front();
      Resume(w, f);
    }
    if (L->failed.load()) break;
    int64_t live = 0, at_grid = 0, exited = 0;
    for (Fiber& f : fibers) {
      if (f.state == St::kExited) ++exited;
      else ++live;
      if (f.state == St::kGrid) ++at_grid;
    }
    if (live == 0) break;
    if (L->coop && at_grid == live) {
      const Fiber* first = nullptr;
      for (Fiber& f : fibers)
        if (f.state == St::kGrid) first = first ? first : &f;
      if (exited > 0) {
        SetFailure(L, Fmt("grid.sync() at %s:%d is not reached by the whole grid: some threads returned first%s\n"
                          "    in kernel %s launched at %s:%d",
                          first->file, first->line, DescribeStuck(bptr).c_str(), L->name, L->file, L->line));
        break;
      }
#if RLK_SIM_TSAN
      for (Fiber& f : fibers) __tsan_acquire(&f.token);
      __tsan_release(&w.grid_token);
#endif
      if (!GridArrive(L)) {
        if (!L->failed.load())
          SetFailure(L, Fmt("grid.sync() at %s:%d is not reached by the whole grid: every thread of other blocks "
                            "returned first, in kernel %s launched at %s:%d",
                            first->file, first->line, L->name, L->file, L->line));
        break;
      }
#if RLK_SIM_TSAN
      __tsan_acquire(&w.grid_token);  // the other workers' releases reach us through the barrier's mutex
      __tsan_release(&w.grid_token);
#endif
      for (Fiber& f : fibers) {
        if (f.state == St::kGrid) {
          f.state = St::kReady;
          f.waker = nullptr;
          w.ready.push_back(&f);
        }
      }
      continue;
    }
    SetFailure(L, Fmt("deadlock: no CUDA thread can go on in kernel %s launched at %s:%d%s", L->name, L->file, L->line,
                      DescribeStuck(bptr).c_str()));
    break;
  }
  w.ready.clear();
  bool dirty = false;
  for (Fiber& f : fibers) {
    if (!f.stack) continue;
    dirty |= f.state != St::kExited;
#if RLK_SIM_TSAN
    if (f.state == St::kExited) __tsan_acquire(&f.token);
    __tsan_destroy_fiber(f.tsan);
#endif
  }
  TrimSlab(w, dirty);
  for (Block& b : blocks) FreeShared(b);
}

uint3 BlockId(const LaunchState* L, int64_t i) {
  const dim3 g = L->cfg.grid;
  return uint3{unsigned(i % g.x), unsigned((i / g.x) % g.y), unsigned(i / (int64_t(g.x) * g.y))};
}

void RunWorker(LaunchState* L, int index) {
  RLK_SIM_RUNTIME_SCOPE;
  Worker& w = ThisWorker();
  w.launch = L;
  if (L->coop) {
    std::vector<uint3> mine;
    for (int64_t i = index; i < L->num_blocks; i += L->workers) mine.push_back(BlockId(L, i));
    RunBatch(w, L, mine);
    WorkerDone(L);
  } else {
    for (;;) {
      if (L->failed.load()) break;
      const int64_t i = L->next_block.fetch_add(1);
      if (i >= L->num_blocks) break;
      RunBatch(w, L, {BlockId(L, i)});
    }
  }
  w.launch = nullptr;
}

// A fixed pool of OS threads; the launching thread is worker 0.
class Pool {
 public:
  static Pool& Get() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive static destructors
    return *p;
  }
  int Size() const { return size_; }
  void Run(int n, const std::function<void(int)>& fn) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (int(threads_.size()) < n - 1) threads_.emplace_back([this, k = int(threads_.size()) + 1] { Loop(k); });
      job_ = &fn;
      active_ = n;
      remaining_ = n - 1;
      ++generation_;
    }
    cv_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  Pool() {
    int n = EnvInt("RLK_SIM_THREADS", 0);
    if (n <= 0) n = int(std::thread::hardware_concurrency());
    size_ = std::max(1, std::min(n, 64));
  }
  void Loop(int k) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (k >= active_) continue;
        job = job_;
      }
      (*job)(k);
      std::lock_guard<std::mutex> lock(mu_);
      if (--remaining_ == 0) done_cv_.notify_all();
    }
  }
  int size_ = 1;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

// Kernels and copies of every stream run one at a time, in issue order.
std::mutex g_exec_mu;

struct Stream {
  int device;
};
std::mutex g_streams_mu;
std::set<const void*> g_streams;

int StreamDevice(cudaStream_t s) {
  if (!s || s == cudaStreamLegacy || s == cudaStreamPerThread) return tls_device;
  std::lock_guard<std::mutex> lock(g_streams_mu);
  if (!g_streams.count(s)) return -1;
  return reinterpret_cast<const Stream*>(s)->device;
}

int OccupancyPerSm(int block_size, size_t smem) {
  if (block_size <= 0 || block_size > 1024) return 0;
  const int warps = (block_size + 31) / 32;
  int per_sm = std::min(kMaxBlocksPerSm, kMaxThreadsPerSm / (warps * 32));
  if (smem > 0) per_sm = std::min<int>(per_sm, int(kSharedPerSm / (smem + 1024)));
  return per_sm;
}

#if RLK_SIM_ASAN || RLK_SIM_TSAN
void OnSanitizerDeath() {
  Worker* w = tls_worker;
  if (w && w->current && w->launch) {
    std::fprintf(stderr, "rlk-sim: the report above came from %s, in kernel %s launched at %s:%d\n",
                 Where(w->current).c_str(), w->launch->name, w->launch->file, w->launch->line);
  }
}
#endif

}  // namespace

// ---- what the device code calls ---------------------------------------------------------

uint64_t WarpCollective(int kind, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line) {
  RLK_SIM_RUNTIME_SCOPE;
  Worker& w = *tls_worker;
  Fiber* f = w.current;
  Block* b = f->block;
  WarpState& ws = b->warps[f->warp];
  const unsigned bit = 1u << f->lane;
  const char* name = CollectiveName(kind);
  if (!(mask & bit)) Fail(f, Fmt("%s with mask 0x%08x, which does not name the calling lane %d", name, mask, f->lane), file, line);
  if (mask & ~ws.exists)
    Fail(f, Fmt("%s with mask 0x%08x names lane(s) %s, which do not exist (the block has %d threads)", name, mask,
                Lanes(mask & ~ws.exists).c_str(), b->n),
         file, line);
  if (mask & ws.exited)
    Fail(f, Fmt("%s with mask 0x%08x names lane(s) %s, which already returned from the kernel", name, mask,
                Lanes(mask & ws.exited).c_str()),
         file, line);
  if (width < 1 || width > 32 || (width & (width - 1)))
    Fail(f, Fmt("%s with width %d (must be a power of 2, at most 32)", name, width), file, line);
  WarpGroup* g = nullptr;
  for (WarpGroup& p : ws.pending) {
    if (!(p.mask & mask)) continue;
    const bool same_site = (p.file == file || (p.file && file && std::strcmp(p.file, file) == 0)) && p.line == line;
    if (p.mask != mask || p.kind != kind || (kind != kSyncWarp && !same_site))
      Fail(f,
           Fmt("lanes of warp %d disagree: lane %d calls %s (mask 0x%08x) while lanes %s wait in %s at %s:%d (mask 0x%08x)",
               f->warp, f->lane, name, mask, Lanes(p.arrived).c_str(), CollectiveName(p.kind), p.file, p.line, p.mask),
           file, line);
    g = &p;
    break;
  }
  if (!g) {
    ws.pending.push_back(WarpGroup{kind, mask, 0u, file, line});
    g = &ws.pending.back();
  }
  f->kind = kind;
  f->mask = mask;
  f->value = bits;
  f->arg = arg;
  f->width = width;
  f->file = file;
  f->line = line;
  g->arrived |= bit;
  // Only __syncwarp orders memory among the lanes (PTX: bar.warp.sync);
  // shuffles and votes exchange values, not memory order, so ThreadSanitizer
  // sees no synchronisation in them.
  [[maybe_unused]] const bool orders = kind == kSyncWarp;
#if RLK_SIM_TSAN
  if (orders) __tsan_release(&f->token);
#endif
  if (g->arrived != mask) {
    f->state = St::kWarp;
    Yield(f);
#if RLK_SIM_TSAN
    if (orders) __tsan_acquire(&f->waker->token);
#endif
    return f->result;
  }
  // The last lane to arrive completes the collective for every lane.
  Fiber* base = b->fibers + f->warp * 32;
  uint64_t any = 0, all = 1, ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const uint64_t v = base[l].value;
    any |= v != 0;
    all &= v != 0;
    if (v) ballot |= 1ull << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    Fiber& t = base[l];
#if RLK_SIM_TSAN
    if (orders) __tsan_acquire(&t.token);
#endif
    const int seg = l & ~(t.width - 1), pos = l & (t.width - 1);
    int src = l;
    switch (kind) {
      case kShflIdx: src = seg + (t.arg & (t.width - 1)); break;
      case kShflUp: src = pos >= t.arg ? l - t.arg : l; break;
      case kShflDown: src = pos + t.arg < t.width ? l + t.arg : l; break;
      case kShflXor: src = ((l ^ t.arg) & ~(t.width - 1)) == seg ? (l ^ t.arg) : l; break;
      default: break;
    }
    switch (kind) {
      case kShflIdx: case kShflUp: case kShflDown: case kShflXor:
        if (src < 0 || src > 31 || !((mask >> src) & 1u))
          Fail(f, Fmt("%s: lane %d reads lane %d, which is not in the mask 0x%08x (its value is undefined)", name, l, src, mask),
               t.file, t.line, &t);
        t.result = base[src].value;
        break;
      case kVoteAny: t.result = any; break;
      case kVoteAll: t.result = all; break;
      case kVoteBallot: t.result = ballot; break;
      case kMatchAny: {
        uint64_t m = 0;
        for (int k = 0; k < 32; ++k)
          if (((mask >> k) & 1u) && base[k].value == t.value) m |= 1ull << k;
        t.result = m;
        break;
      }
      default: t.result = 0; break;
    }
  }
#if RLK_SIM_TSAN
  if (orders) __tsan_release(&f->token);
#endif
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u) || l == f->lane) continue;
    base[l].state = St::kReady;
    base[l].waker = f;
    w.ready.push_back(&base[l]);
  }
  ws.pending.erase(ws.pending.begin() + (g - ws.pending.data()));
  return f->result;
}

unsigned ActiveMask() {
  RLK_SIM_RUNTIME_SCOPE;
  Fiber* f = tls_worker->current;
  const WarpState& ws = f->block->warps[f->warp];
  return ws.exists & ~ws.exited;
}

int SyncThreads(int op, int pred, const char* file, int line) {
  RLK_SIM_RUNTIME_SCOPE;
  Worker& w = *tls_worker;
  Fiber* f = w.current;
  Block* b = f->block;
  if (b->exited > 0)
    Fail(f, Fmt("__syncthreads() not reached by the whole block: %d of its %d threads already returned", b->exited, b->n),
         file, line);
  if (b->bar_arrived == 0) {
    b->bar_file = file;
    b->bar_line = line;
    b->bar_op = op;
    b->bar_acc = op == 2 ? 1 : 0;
  } else if (b->bar_line != line || (b->bar_file != file && std::strcmp(b->bar_file, file) != 0)) {
    Fail(f,
         Fmt("__syncthreads() reached at two different places: this thread at %s:%d while %d threads wait at %s:%d", file,
             line, b->bar_arrived, b->bar_file, b->bar_line),
         file, line);
  }
  switch (op) {
    case 1: b->bar_acc += pred; break;
    case 2: b->bar_acc &= pred; break;
    case 3: b->bar_acc |= pred; break;
    default: break;
  }
  f->file = file;
  f->line = line;
#if RLK_SIM_TSAN
  __tsan_release(&f->token);
#endif
  if (++b->bar_arrived < b->n) {
    f->state = St::kBarrier;
    Yield(f);
#if RLK_SIM_TSAN
    __tsan_acquire(&f->waker->token);
#endif
    return int(f->result);
  }
  const int result = b->bar_acc;
  b->bar_arrived = 0;
#if RLK_SIM_TSAN
  for (int i = 0; i < b->n; ++i) __tsan_acquire(&b->fibers[i].token);
  __tsan_release(&f->token);
#endif
  for (int i = 0; i < b->n; ++i) {
    Fiber& t = b->fibers[i];
    if (t.state != St::kBarrier) continue;
    t.state = St::kReady;
    t.result = uint64_t(result);
    t.waker = f;
    w.ready.push_back(&t);
  }
  return result;
}

bool InCooperativeLaunch() { return tls_worker && tls_worker->launch && tls_worker->launch->coop; }

void GridSync(const char* file, int line) {
  RLK_SIM_RUNTIME_SCOPE;
  Worker& w = *tls_worker;
  Fiber* f = w.current;
  if (!w.launch->coop)
    Fail(f, "grid.sync() outside a cooperative launch (a GPU hangs or fails here: launch with cudaLaunchCooperativeKernel)",
         file, line);
  f->file = file;
  f->line = line;
#if RLK_SIM_TSAN
  __tsan_release(&f->token);
#endif
  f->state = St::kGrid;
  Yield(f);
#if RLK_SIM_TSAN
  __tsan_acquire(&w.grid_token);
#endif
}

void* SharedAlloc(const void* key, size_t bytes, size_t align, const char* file, int line) {
  RLK_SIM_RUNTIME_SCOPE;
  Fiber* f = tls_worker->current;
  Block* b = f->block;
  for (SharedVar* v : b->shared) {
    if (v->key == key) {
#if RLK_SIM_TSAN
      __tsan_acquire(&v->sync);
#endif
      return v->ptr;
    }
  }
  size_t total = 0;
  for (SharedVar* v : b->shared) total += v->bytes;
  LaunchState* L = tls_worker->launch;
  if (total + bytes + L->cfg.smem > kSharedPerBlockOptin)
    Fail(f, Fmt("__shared__ memory of the block exceeds %zu bytes", kSharedPerBlockOptin), file, line);
  void* p = nullptr;
#if RLK_SIM_ASAN
  const size_t guard = 0;  // AddressSanitizer's redzones catch the overflow, naming the thread
#else
  const size_t guard = kGuard;
#endif
  if (posix_memalign(&p, std::max<size_t>(align, 16), bytes + guard) != 0)
    Fail(f, "out of host memory for __shared__ variables", file, line);
  SharedVar* v = new SharedVar{key, static_cast<char*>(p), bytes, file, line, 0};
  std::memset(v->ptr, 0xFF, bytes);  // never-written shared memory reads as NaN
  std::memset(v->ptr + bytes, kGuardByte, guard);
  b->shared.push_back(v);
#if RLK_SIM_TSAN
  __tsan_release(&v->sync);
#endif
  return v->ptr;
}

void* DynamicShared(const char* file, int line) {
  static const char key = 0;
  LaunchState* L = tls_worker->launch;
  if (L->cfg.smem == 0) Fail(tls_worker->current, "extern __shared__ memory used by a launch that gave it 0 bytes", file, line);
  return SharedAlloc(&key, L->cfg.smem, 16, file, line);
}

void Trap(const char* what, const char* file, int line) {
  Fail(tls_worker->current, Fmt("%s executed", what), file, line);
}

void SetLastError(cudaError_t err) { Err(err); }

bool CheckDeviceRange(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return true;
  std::lock_guard<std::mutex> lock(g_mem_mu);
  if (FindRange(p, bytes, nullptr)) return true;
  Report(Fmt("error: %s: [%p, +%zu bytes) is not inside one live device allocation", what, p, bytes));
  return false;
}

cudaError_t RunKernel(const LaunchCfg& cfg, bool coop, const char* name, const char* file, int line,
                      void (*thunk)(void*), void* closure) {
  const dim3 g = cfg.grid, b = cfg.block;
  const int64_t threads = int64_t(b.x) * b.y * b.z;
  const int64_t blocks = int64_t(g.x) * g.y * g.z;
  auto bad = [&](cudaError_t e, const std::string& why) {
    Report(Fmt("error: launch of %s at %s:%d: %s", name, file, line, why.c_str()));
    return Err(e);
  };
  if (threads <= 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return bad(cudaErrorInvalidConfiguration, Fmt("block %s is not a valid block shape", Dim(uint3{b.x, b.y, b.z}).c_str()));
  if (blocks <= 0 || g.y > 65535 || g.z > 65535 || g.x > 2147483647u)
    return bad(cudaErrorInvalidConfiguration, Fmt("grid %s is not a valid grid shape", Dim(uint3{g.x, g.y, g.z}).c_str()));
  if (cfg.smem > kSharedPerBlockOptin) return bad(cudaErrorInvalidValue, Fmt("%zu bytes of dynamic shared memory", cfg.smem));
  const int dev = StreamDevice(cfg.stream);
  if (dev < 0) return bad(cudaErrorInvalidResourceHandle, "the stream is not a live stream");
  if (dev != tls_device)
    return bad(cudaErrorInvalidResourceHandle,
               Fmt("the stream belongs to device %d but device %d is current", dev, tls_device));
  if (coop && blocks > int64_t(OccupancyPerSm(int(threads), cfg.smem)) * kSms)
    return bad(cudaErrorCooperativeLaunchTooLarge,
               Fmt("%lld blocks cannot all be resident (at most %d per SM on %d SMs)", (long long)blocks,
                   OccupancyPerSm(int(threads), cfg.smem), kSms));
  std::lock_guard<std::mutex> exec(g_exec_mu);
#if RLK_SIM_ASAN || RLK_SIM_TSAN
  static std::once_flag once;
  std::call_once(once, [] { __sanitizer_set_death_callback(OnSanitizerDeath); });
#endif
  LaunchState L;
  L.cfg = cfg;
  L.coop = coop;
  L.name = name;
  L.file = file;
  L.line = line;
  L.thunk = thunk;
  L.closure = closure;
  L.num_blocks = blocks;
  L.threads_per_block = int(threads);
  const int workers = int(std::min<int64_t>(Pool::Get().Size(), blocks));
  L.workers = workers;
  if (workers <= 1) {
    RunWorker(&L, 0);
  } else {
    std::function<void(int)> job = [&L](int k) { RunWorker(&L, k); };
    Pool::Get().Run(workers, job);
  }
  if (L.failed.load()) {
    Report("error: " + L.error);
    return Err(cudaErrorLaunchFailure);
  }
  return cudaSuccess;
}

}  // namespace rlk_sim

// ---- the CUDA runtime API (declared by the real cuda_runtime_api.h) -----------------------------

using rlk_sim::Err;
using rlk_sim::Fmt;
using rlk_sim::Report;

extern "C" {

cudaError_t cudaGetLastError(void) {
  cudaError_t e = rlk_sim::tls_last_error;
  rlk_sim::tls_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return rlk_sim::tls_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure (the emulated device printed why on stderr)";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "unknown error";
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = rlk_sim::NumDevices();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= rlk_sim::NumDevices()) return Err(cudaErrorInvalidDevice);
  rlk_sim::tls_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = rlk_sim::tls_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* p, int d) {
  if (d < 0 || d >= rlk_sim::NumDevices()) return Err(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "NVIDIA H100 (emulated on the CPU by rlkernels native/sim)");
  p->totalGlobalMem = rlk_sim::kGlobalMem;
  p->sharedMemPerBlock = rlk_sim::kSharedPerBlock;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = rlk_sim::kSms;
  p->concurrentKernels = 1;
  p->pciBusID = d;
  p->unifiedAddressing = 1;
  p->memoryBusWidth = 5120;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->maxThreadsPerMultiProcessor = rlk_sim::kMaxThreadsPerSm;
  p->sharedMemPerMultiprocessor = rlk_sim::kSharedPerSm;
  p->regsPerMultiprocessor = 65536;
  p->cooperativeLaunch = 1;
  p->sharedMemPerBlockOptin = rlk_sim::kSharedPerBlockOptin;
  p->maxBlocksPerMultiProcessor = rlk_sim::kMaxBlocksPerSm;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, enum cudaDeviceAttr attr, int d) {
  if (d < 0 || d >= rlk_sim::NumDevices()) return Err(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = rlk_sim::kSms; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = rlk_sim::kMaxThreadsPerSm; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *v = rlk_sim::kMaxBlocksPerSm; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(rlk_sim::kSharedPerBlock); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(rlk_sim::kSharedPerBlockOptin); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = int(rlk_sim::kSharedPerSm); break;
    case cudaDevAttrMaxRegistersPerBlock: *v = 65536; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = 65536; break;
    case cudaDevAttrL2CacheSize: *v = 50 * 1024 * 1024; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *v = 65535; break;
    case cudaDevAttrMaxGridDimZ: *v = 65535; break;
    case cudaDevAttrMaxBlockDimX: *v = 1024; break;
    case cudaDevAttrMaxBlockDimY: *v = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *v = 64; break;
    case cudaDevAttrConcurrentKernels: *v = 1; break;
    case cudaDevAttrUnifiedAddressing: *v = 1; break;
    default:
      Report(Fmt("error: cudaDeviceGetAttribute: attribute %d is not emulated (add it to native/sim/runtime.cc)", int(attr)));
      return Err(cudaErrorNotSupported);
  }
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int block_size, size_t smem) {
  *n = rlk_sim::OccupancyPerSm(block_size, smem);
  return block_size > 0 && block_size <= 1024 ? cudaSuccess : Err(cudaErrorInvalidValue);
}
cudaError_t cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) { return cudaSuccess; }

cudaError_t cudaLaunchKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  Report("error: cudaLaunchKernel through `const void*` cannot be emulated (the argument types are lost): pass the "
         "kernel itself, cudaLaunchKernel(Kernel, ...), the typed form of the CUDA C++ API");
  return Err(cudaErrorNotSupported);
}
cudaError_t cudaLaunchCooperativeKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  Report("error: cudaLaunchCooperativeKernel through `const void*` cannot be emulated (the argument types are lost): "
         "pass the kernel itself, cudaLaunchCooperativeKernel(Kernel, ...), the typed form of the CUDA C++ API");
  return Err(cudaErrorNotSupported);
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(rlk_sim::g_mem_mu);
  if (bytes > rlk_sim::HostMemoryLimit() - std::min(rlk_sim::g_live_bytes, rlk_sim::HostMemoryLimit()))
    return Err(cudaErrorMemoryAllocation);
  void* q = nullptr;
  // Exact size: AddressSanitizer then sees the first byte past the end.
  if (posix_memalign(&q, 256, bytes) != 0 || !q) return Err(cudaErrorMemoryAllocation);
  rlk_sim::g_allocs[reinterpret_cast<uintptr_t>(q)] = rlk_sim::Allocation{bytes, rlk_sim::tls_device};
  rlk_sim::g_live_bytes += bytes;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> exec(rlk_sim::g_exec_mu);
  std::lock_guard<std::mutex> lock(rlk_sim::g_mem_mu);
  auto it = rlk_sim::g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == rlk_sim::g_allocs.end()) {
    Report(Fmt("error: cudaFree(%p): not a live device allocation", p));
    return Err(cudaErrorInvalidValue);
  }
  rlk_sim::g_live_bytes -= it->second.bytes;
  rlk_sim::g_allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : Err(cudaErrorMemoryAllocation);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  std::lock_guard<std::mutex> lock(rlk_sim::g_mem_mu);
  *total = rlk_sim::kGlobalMem;
  *free_bytes = rlk_sim::HostMemoryLimit() - std::min(rlk_sim::g_live_bytes, rlk_sim::HostMemoryLimit());
  return cudaSuccess;
}

static cudaError_t CheckedCopy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what) {
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(rlk_sim::g_mem_mu);
    const bool dst_dev = rlk_sim::FindRange(dst, bytes, nullptr) != nullptr;
    const bool src_dev = rlk_sim::FindRange(src, bytes, nullptr) != nullptr;
    bool need_dst = false, need_src = false;
    switch (kind) {
      case cudaMemcpyHostToDevice: need_dst = true; break;
      case cudaMemcpyDeviceToHost: need_src = true; break;
      case cudaMemcpyDeviceToDevice: need_dst = need_src = true; break;
      case cudaMemcpyHostToHost: case cudaMemcpyDefault: break;
      default: return Err(cudaErrorInvalidMemcpyDirection);
    }
    if ((need_dst && !dst_dev) || (need_src && !src_dev)) {
      Report(Fmt("error: %s of %zu bytes: the %s side [%p, +%zu) is not inside one live device allocation", what, bytes,
                 need_dst && !dst_dev ? "destination" : "source", need_dst && !dst_dev ? dst : src, bytes));
      return Err(cudaErrorInvalidValue);
    }
  }
  std::lock_guard<std::mutex> exec(rlk_sim::g_exec_mu);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind) {
  return CheckedCopy(dst, src, bytes, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s) {
  if (rlk_sim::StreamDevice(s) < 0) return Err(cudaErrorInvalidResourceHandle);
  return CheckedCopy(dst, src, bytes, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpyPeer(void* dst, int, const void* src, int, size_t bytes) {
  return CheckedCopy(dst, src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpyPeer");
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int, const void* src, int, size_t bytes, cudaStream_t s) {
  if (rlk_sim::StreamDevice(s) < 0) return Err(cudaErrorInvalidResourceHandle);
  return CheckedCopy(dst, src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpyPeerAsync");
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!rlk_sim::CheckDeviceRange(p, bytes, "cudaMemset")) return Err(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> exec(rlk_sim::g_exec_mu);
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  if (rlk_sim::StreamDevice(s) < 0) return Err(cudaErrorInvalidResourceHandle);
  return cudaMemset(p, value, bytes);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  auto* st = new rlk_sim::Stream{rlk_sim::tls_device};
  std::lock_guard<std::mutex> lock(rlk_sim::g_streams_mu);
  rlk_sim::g_streams.insert(st);
  *s = reinterpret_cast<cudaStream_t>(st);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int flags, int) { return cudaStreamCreateWithFlags(s, flags); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::mutex> lock(rlk_sim::g_streams_mu);
  if (!rlk_sim::g_streams.erase(s)) return Err(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<rlk_sim::Stream*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  return rlk_sim::StreamDevice(s) < 0 ? Err(cudaErrorInvalidResourceHandle) : cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t, unsigned int) { return cudaStreamSynchronize(s); }

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new double(0));
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  *reinterpret_cast<double*>(e) =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = float(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<double*>(e);
  return cudaSuccess;
}

cudaError_t cudaDeviceCanAccessPeer(int* can, int, int) {
  *can = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int, unsigned int) { return cudaSuccess; }

}  // extern "C"
