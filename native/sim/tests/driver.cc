// Sanitizer driver of the emulated CUDA device (native/sim): the real
// kernels and the deliberately broken ones (broken.cu) in a plain
// executable, built twice, with AddressSanitizer (build-sim/sim/rlk_sim_asan:
// out-of-bounds global and shared accesses; device memory is allocated at
// its exact size) and with ThreadSanitizer (rlk_sim_tsan: every CUDA thread
// a TSan fiber, barriers and warp collectives its only synchronisation, so
// shared-memory races between barriers show). tests/sim.test.ts runs it.
//
//   rlk_sim_{asan,tsan} kernels       every kernel family on small shapes; exit 0 when clean
//   rlk_sim_{asan,tsan} <broken case> one broken kernel (see broken.cu)
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "rlk/group_advantages.h"
#include "rlk/kl_penalty.h"
#include "rlk/linear_logprobs.h"
#include "rlk/policy_loss.h"
#include "rlk/runtime.h"
#include "rlk/token_logprobs.h"
#include "rlk/vocab_divergence.h"

namespace rlk_sim_tests {
cudaError_t RunBroken(const char* name, float* buf, float* buf2, int n);
}

namespace {

int failures = 0;

void Check(const rlk::Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "driver: %s failed: %s\n", what, st.message);
  ++failures;
}

template <class T>
T* Device(const std::vector<T>& host) {
  void* p = nullptr;
  if (cudaMalloc(&p, host.size() * sizeof(T)) != cudaSuccess) std::abort();
  cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}
template <class T>
T* DeviceOut(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) std::abort();
  cudaMemset(p, 0xFF, n * sizeof(T));
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> Host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

std::mt19937 rng(1234);
std::vector<float> Randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void ExpectFinite(const std::vector<float>& v, const char* what) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      std::fprintf(stderr, "driver: %s[%zu] = %g is not finite\n", what, i, v[i]);
      ++failures;
      return;
    }
  }
}

void TokenLogprobs(int64_t rows, int64_t vocab) {
  void* stream = nullptr;
  int32_t* word = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  Check(rlk::DeviceErrorWord(0, &word), "DeviceErrorWord");
  const std::vector<float> x = Randn(size_t(rows * vocab), 2.0f);
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) t[r] = int32_t((r * 7919) % vocab);
  if (rows > 2) t[1] = -100;  // an ignored row
  float* dx = Device(x);
  int32_t* dt = Device(t);
  float* lp = DeviceOut<float>(rows);
  float* ent = DeviceOut<float>(rows);
  float* stats = DeviceOut<float>(size_t(rows) * rlk::kTlpStatsCols);
  rlk::TokenLogprobsFwdParams f;
  f.logits = dx;
  f.targets = dt;
  f.targets_dtype = rlk::DType::kInt32;
  f.rows = rows;
  f.vocab = f.vocab_size = vocab;
  f.entropy = true;
  f.inv_temperature = 1.0f / 0.7f;
  f.logprobs = lp;
  f.entropy_out = ent;
  f.stats = stats;
  f.error_word = word;
  f.stream = stream;
  Check(rlk::cuda::TokenLogprobsFwd(f), "TokenLogprobsFwd");
  ExpectFinite(Host(lp, rows), "logprobs");
  ExpectFinite(Host(ent, rows), "entropy");
  float* g = Device(Randn(rows));
  float* dz = DeviceOut<float>(size_t(rows * vocab));
  rlk::TokenLogprobsBwdParams b;
  b.logits = dx;
  b.targets = dt;
  b.targets_dtype = rlk::DType::kInt32;
  b.inv_temperature = f.inv_temperature;
  b.grad_logprobs = g;
  b.grad_entropy = g;
  b.grad_logits = dz;
  b.rows = rows;
  b.vocab = b.vocab_size = vocab;
  b.error_word = word;
  b.stream = stream;
  Check(rlk::cuda::TokenLogprobsBwd(b), "TokenLogprobsBwd (recomputed)");
  b.stats = stats;
  Check(rlk::cuda::TokenLogprobsBwd(b), "TokenLogprobsBwd (stats)");
  ExpectFinite(Host(dz, size_t(rows * vocab)), "grad logits");
  for (void* p : {(void*)dx, (void*)dt, (void*)lp, (void*)ent, (void*)stats, (void*)g, (void*)dz}) cudaFree(p);
}

// Fused linear log-probs: the row kernels, the bias kernel and the portable
// GEMM over chunks that do not divide the rows.
void LinearLogprobs(int64_t rows, int64_t dim, int64_t vocab, int64_t chunk) {
  void* stream = nullptr;
  int32_t* word = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  Check(rlk::DeviceErrorWord(0, &word), "DeviceErrorWord");
  float* h = Device(Randn(size_t(rows * dim)));
  float* w = Device(Randn(size_t(vocab * dim), 0.3f));
  float* bias = Device(Randn(size_t(vocab)));
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) t[r] = int32_t((r * 7919) % vocab);
  if (rows > 2) t[1] = -100;
  int32_t* dt = Device(t);
  float* lp = DeviceOut<float>(rows);
  float* ent = DeviceOut<float>(rows);
  float* stats = DeviceOut<float>(size_t(rows) * rlk::kTlpStatsCols);
  rlk::LinearLogprobsFwdParams f;
  f.hidden = h;
  f.weight = w;
  f.bias = bias;
  f.targets = dt;
  f.targets_dtype = rlk::DType::kInt32;
  f.inv_temperature = 1.0f / 0.7f;
  f.rows = rows;
  f.dim = dim;
  f.vocab = f.vocab_size = vocab;
  f.chunk = chunk;
  f.entropy = true;
  f.logprobs = lp;
  f.entropy_out = ent;
  f.stats = stats;
  f.error_word = word;
  f.stream = stream;
  Check(rlk::cuda::LinearLogprobsFwd(f), "LinearLogprobsFwd");
  ExpectFinite(Host(lp, rows), "linear logprobs");
  ExpectFinite(Host(ent, rows), "linear entropy");
  float* g = Device(Randn(rows));
  float* gh = DeviceOut<float>(size_t(rows * dim));
  float* gw = DeviceOut<float>(size_t(vocab * dim));
  float* gb = DeviceOut<float>(size_t(vocab));
  rlk::LinearLogprobsBwdParams b;
  b.hidden = h;
  b.weight = w;
  b.bias = bias;
  b.targets = dt;
  b.targets_dtype = rlk::DType::kInt32;
  b.inv_temperature = f.inv_temperature;
  b.grad_logprobs = g;
  b.grad_entropy = g;
  b.rows = rows;
  b.dim = dim;
  b.vocab = b.vocab_size = vocab;
  b.chunk = chunk;
  b.grad_hidden = gh;
  b.grad_weight = gw;
  b.grad_bias = gb;
  b.error_word = word;
  b.stream = stream;
  Check(rlk::cuda::LinearLogprobsBwd(b), "LinearLogprobsBwd (recomputed)");
  b.stats = stats;
  Check(rlk::cuda::LinearLogprobsBwd(b), "LinearLogprobsBwd (stats)");
  ExpectFinite(Host(gh, size_t(rows * dim)), "linear grad hidden");
  ExpectFinite(Host(gw, size_t(vocab * dim)), "linear grad weight");
  ExpectFinite(Host(gb, size_t(vocab)), "linear grad bias");
  for (void* p : {(void*)h, (void*)w, (void*)bias, (void*)dt, (void*)lp, (void*)ent, (void*)stats, (void*)g, (void*)gh,
                  (void*)gw, (void*)gb})
    cudaFree(p);
}

void VocabDivergence(int64_t rows, int64_t vocab, rlk::DivergenceKind kind) {
  void* stream = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  float* s = Device(Randn(size_t(rows * vocab)));
  float* t = Device(Randn(size_t(rows * vocab)));
  float* v = DeviceOut<float>(rows);
  float* gs = DeviceOut<float>(size_t(rows * vocab));
  float* gt = DeviceOut<float>(size_t(rows * vocab));
  rlk::VocabDivergenceParams p{};
  p.student = s;
  p.teacher = t;
  p.mask = nullptr;
  p.targets = nullptr;
  p.values = v;
  p.grad_student = gs;
  p.grad_teacher = gt;
  p.rows = rows;
  p.vocab = vocab;
  p.kind = kind;
  p.beta = 0.3f;
  p.stream = stream;
  Check(rlk::cuda::VocabDivergence(p), "VocabDivergence");
  ExpectFinite(Host(v, rows), "divergence values");
  ExpectFinite(Host(gs, size_t(rows * vocab)), "divergence grad");
  for (void* q : {(void*)s, (void*)t, (void*)v, (void*)gs, (void*)gt}) cudaFree(q);
}

void PolicyLoss(int64_t B, int64_t T, bool packed) {
  void* stream = nullptr;
  int32_t* word = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  Check(rlk::DeviceErrorWord(0, &word), "DeviceErrorWord");
  const int64_t N = B * T;
  std::vector<uint8_t> mask(N);
  for (int64_t i = 0; i < N; ++i) mask[i] = (i * 2654435761u) % 7 != 0;
  std::vector<float> old = Randn(N, 0.5f), lp = old;
  const std::vector<float> noise = Randn(N, 0.3f);
  for (int64_t i = 0; i < N; ++i) lp[i] += noise[i];
  std::vector<int32_t> cu(B + 1);
  for (int64_t i = 0; i <= B; ++i) cu[i] = int32_t(i * T);
  rlk::PolicyLossParams p{};
  p.logprobs = Device(lp);
  p.old_logprobs = Device(old);
  p.advantages = Device(Randn(N));
  p.mask = Device(mask);
  p.rollout_logprobs = Device(old);
  p.ref_logprobs = Device(Randn(N, 0.5f));
  p.entropy = Device(Randn(N));
  p.cu_seqlens = packed ? Device(cu) : nullptr;
  p.loss = DeviceOut<float>(1);
  p.grad = DeviceOut<float>(N);
  p.grad_entropy = DeviceOut<float>(N);
  p.stats = DeviceOut<float>(rlk::kPolicyStatCount);
  p.num_seqs = B;
  p.seq_len = T;
  p.num_tokens = N;
  p.mode = rlk::kPolicyVanilla;
  p.aggregation = rlk::kAggSeqMeanTokenMean;
  p.use_dual_clip = 1;
  p.tis_level = rlk::kTisGeometric;
  p.tis_mode = rlk::kTisTruncate;
  p.kl_estimator = 3;
  p.clip_low = 0.2;
  p.clip_high = 0.28;
  p.dual_clip = 3;
  p.dp_size = 1;
  p.tis_upper = 2;
  p.tis_lower = 0.5;
  p.kl_coef = 0.01;
  p.entropy_coef = 0.01;
  p.stream = stream;
  p.error_word = word;
  Check(rlk::cuda::PolicyLoss(p), "PolicyLoss");
  ExpectFinite(Host(p.grad, N), "policy grad");
  ExpectFinite(Host(p.loss, 1), "policy loss");
  p.mode = rlk::kPolicyGspo;
  Check(rlk::cuda::PolicyLoss(p), "PolicyLoss (gspo)");
}

void KlPenalty(int64_t n) {
  void* stream = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  rlk::KlPenaltyParams p{};
  p.logprobs = Device(Randn(n));
  p.ref_logprobs = Device(Randn(n));
  p.values = DeviceOut<float>(n);
  p.grad = DeviceOut<float>(n);
  p.n = n;
  p.estimator = 3;
  p.stream = stream;
  Check(rlk::cuda::KlPenalty(p), "KlPenalty");
  ExpectFinite(Host(p.values, n), "kl values");
}

void GroupAdvantages(int64_t B, int64_t G, rlk::AdvantageMethod method) {
  void* stream = nullptr;
  int32_t* word = nullptr;
  Check(rlk::DeviceStream(0, &stream), "DeviceStream");
  Check(rlk::DeviceErrorWord(0, &word), "DeviceErrorWord");
  std::vector<int32_t> ids(B);
  for (int64_t i = 0; i < B; ++i) ids[i] = int32_t((i * 40503) % G);
  const int64_t T = 9;
  std::vector<uint8_t> mask(B * T);
  for (int64_t i = 0; i < B * T; ++i) mask[i] = (i % 5) != 0;
  rlk::GroupAdvantagesParams p;
  p.rewards = Device(Randn(B));
  p.group_ids = Device(ids);
  p.group_ids_dtype = rlk::DType::kInt32;
  p.batch = B;
  p.num_groups = G;
  p.method = method;
  if (method == rlk::AdvantageMethod::kReinforcePP) {
    p.mask = Device(mask);
    p.seq_len = T;
  }
  p.advantages = DeviceOut<float>(B);
  p.informative = DeviceOut<uint8_t>(G);
  p.stream = stream;
  Check(rlk::cuda::GroupAdvantagesFwd(p, 0, word), "GroupAdvantagesFwd");
  ExpectFinite(Host(p.advantages, B), "advantages");
}

int RunKernels() {
  // Small shapes (every CUDA thread is a fiber, and a TSan thread) that
  // still reach every path. Cooperative grids are sized for RLK_SIM_SMS=1:
  // at most 8 blocks of 256 threads, so 2100 tokens take the grid-stride loop.
  TokenLogprobs(19, 301);    // warp per row, odd V, several blocks
  TokenLogprobs(2, 2053);    // block per row, odd V
  VocabDivergence(3, 777, rlk::DivergenceKind::kJsd);
  VocabDivergence(2, 2049, rlk::DivergenceKind::kForwardKl);
  PolicyLoss(3, 700, false);  // cooperative, 8 blocks, grid-stride
  PolicyLoss(4, 333, true);
  KlPenalty(1000);
  LinearLogprobs(5, 6, 300, 2);  // chunks of 2 rows, V across 2 row-kernel strides
  GroupAdvantages(100, 13, rlk::AdvantageMethod::kGrpo);
  GroupAdvantages(24, 8, rlk::AdvantageMethod::kReinforcePP);
  if (cudaGetLastError() != cudaSuccess) ++failures;
  std::printf("driver: kernels %s\n", failures ? "FAILED" : "clean");
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s kernels | <broken case>\n", argv[0]);
    return 2;
  }
  if (std::strcmp(argv[1], "kernels") == 0) return RunKernels();
  const int n = 256;
  float* a = nullptr;
  float* b = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&a), (n + 1) * sizeof(float));  // + 1: the cooperative case's sum
  cudaMalloc(reinterpret_cast<void**>(&b), n * sizeof(float));
  std::vector<float> init(n + 1, 1.0f);
  cudaMemcpy(a, init.data(), init.size() * sizeof(float), cudaMemcpyHostToDevice);
  const cudaError_t err = rlk_sim_tests::RunBroken(argv[1], a, b, n);
  std::printf("driver: %s -> %s\n", argv[1], cudaGetErrorName(err));
  return err == cudaSuccess ? 0 : 1;
}
