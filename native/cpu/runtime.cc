// Host side of the runtime: the thread pool, aligned host memory, casts.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "rlk/runtime.h"

namespace rlk {
namespace {

thread_local bool tls_in_pool = false;

// Workers wait for a parallel region by spinning for up to kSpinNs after
// their last one, then on a condition variable; the caller waits for them
// the same way. A wake-up through the condition variable (a futex, then the
// scheduler) took ~20-25 us on this project's VMs: as long as a whole
// groupAdvantages call at B = 65536 on one thread, so two threads were no
// faster than one. OpenMP runtimes spin the same way between regions
// (libgomp's GOMP_SPINCOUNT); back-to-back calls of a training step then hand
// off in well under a microsecond.
constexpr int64_t kSpinNs = 100000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() or kSpinNs have passed; whether done() became true.
// Every 64 turns it yields, so that with more threads than cores a spinning
// worker gives its core to a thread that has work.
template <class F>
bool SpinFor(F done) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (done()) return true;
    CpuRelax();
    if ((i & 63) == 0) {
      if (std::chrono::steady_clock::now() - t0 > std::chrono::nanoseconds(kSpinNs)) return done();
      std::this_thread::yield();
    }
  }
}

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(std::max(1, threads)), slots_(new Slot[size_t(threads_)]) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return threads_; }

  void Run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    int64_t max_chunks = (n + grain - 1) / grain;
    int64_t chunks = std::min<int64_t>(max_chunks, int64_t(threads_) * 4);
    if (chunks <= 1 || threads_ == 1 || tls_in_pool) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      for (int p = 0; p < threads_; ++p) slots_[p].next.store(chunks * p / threads_, std::memory_order_relaxed);
      active_.store(int(workers_.size()));
      generation_.store(generation_.load() + 1, std::memory_order_release);  // publishes the fields above
    }
    cv_.notify_all();
    tls_in_pool = true;
    Work(0);
    tls_in_pool = false;
    if (!SpinFor([this] { return active_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [this] { return active_.load() == 0; });
    }
    fn_ = nullptr;
  }

 private:
  // Participant p (0: the caller) runs the chunks of its own share first, in
  // order: the same rows every call, so what it wrote last call is still in
  // its core's caches (one counter for all handed the chunks out in a
  // different order each call, and an rloo call at B = 65536 on two threads
  // spent ~10 % moving its rows between the cores), then what is left of the
  // others' shares (a late or descheduled worker's chunks are not waited for).
  void Work(int p) {
    for (int k = 0; k < threads_; ++k) {
      const int q = (p + k) % threads_;
      const int64_t last = chunks_ * (q + 1) / threads_;
      for (;;) {
        const int64_t c = slots_[q].next.fetch_add(1, std::memory_order_relaxed);
        if (c >= last) break;
        const int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
        if (begin < end) (*fn_)(begin, end);
      }
    }
  }
  void WorkerLoop(int p) {
    tls_in_pool = true;
    uint64_t seen = 0;
    for (;;) {
      auto fresh = [&] { return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; };
      if (!SpinFor(fresh)) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, fresh);
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      Work(p);
      {
        std::lock_guard<std::mutex> lock(mu_);
        active_.fetch_sub(1, std::memory_order_release);
      }
      done_cv_.notify_one();
    }
  }

  // The next chunk of each participant's share (its own cache line: mostly
  // its owner's).
  struct alignas(64) Slot {
    std::atomic<int64_t> next{0};
  };
  int threads_;
  std::unique_ptr<Slot[]> slots_;
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  std::atomic<int> active_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

int DefaultThreads() {
  if (const char* env = std::getenv("RLK_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) return std::min(v, 1024);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

std::mutex g_pool_mu;
// The current pool, shared: ParallelFor runs on libuv worker threads too (an
// async read casts 16-bit floats with CastHost), so setNumThreads on the
// event loop must not delete a pool another thread is running in; the old
// pool goes when its last user lets go. The holder itself is never
// destroyed: worker threads must not be joined during static teardown.
std::shared_ptr<ThreadPool>* g_pool = new std::shared_ptr<ThreadPool>();

std::shared_ptr<ThreadPool> Pool() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (!*g_pool) *g_pool = std::make_shared<ThreadPool>(DefaultThreads());
  return *g_pool;
}

}  // namespace

void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  Pool()->Run(n, std::max<int64_t>(grain, 1), fn);
}

int NumThreads() { return Pool()->threads(); }

void SetNumThreads(int n) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  n = std::max(1, std::min(n, 1024));
  if (*g_pool && (*g_pool)->threads() == n) return;
  *g_pool = std::make_shared<ThreadPool>(n);
}

void* HostAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  // Large blocks: 2 MiB aligned and marked for transparent huge pages, so a
  // fresh output of hundreds of MB costs a few hundred page faults instead of
  // 10^5 (THP is often in "madvise" mode; measured 3x on a 0.5 GB gradient).
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes >= kHuge) {
    size_t rounded = (bytes + kHuge - 1) & ~(kHuge - 1);
    if (rounded < bytes) return nullptr;
    void* p = std::aligned_alloc(kHuge, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
  }
  size_t rounded = (bytes + 63) & ~size_t(63);
  if (rounded < bytes) return nullptr;
  return std::aligned_alloc(64, rounded);
}

void HostFree(void* p) { std::free(p); }

void CastHost(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, size_t(n) * ElementSize(st));
    return;
  }
  ParallelFor(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) CastElement(src, st, dst, dt, i);
  });
}

}  // namespace rlk

#include <cstdlib>
#include "rlk/cpu_simd.h"

namespace rlk::simd {
IsaKind Isa() {
  static const IsaKind kind = [] {
    IsaKind k = DetectIsa();
    if (const char* env = std::getenv("RLK_SIMD")) {
      IsaKind want = std::strcmp(env, "baseline") == 0 ? IsaKind::kBaseline
                     : std::strcmp(env, "avx2") == 0   ? IsaKind::kAvx2
                                                       : k;
      if (int(want) < int(k)) k = want;
    }
    return k;
  }();
  return kind;
}
const char* IsaName(IsaKind k) {
  return k == IsaKind::kAvx512 ? "avx512" : k == IsaKind::kAvx2 ? "avx2" : "baseline";
}
}  // namespace rlk::simd
