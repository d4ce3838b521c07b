// The machine's floors for the CPU kernels (bench/RESULTS.md, "Where the
// time goes"): read bandwidth (an AVX-512 sum over 512 MB a thread, larger
// than the L3, 1 or N threads at once) and the throughput of the kernels'
// vector exps (Exp, ExpNeg, Exp2Neg of cpu_simd.h, AVX-512 and AVX2, on
// registers), and the bytes of the policy loss's token pass (64 x 32768
// tokens: read logp, old, A, ref and the mask, write the gradient; 21 bytes
// a token), 1 and N threads.
//   g++ -O2 -std=c++17 -Inative/include bench/floor_probe.cc -o /tmp/floor_probe -lpthread && /tmp/floor_probe 2
#include <immintrin.h>
#include <pthread.h>
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>
#include <thread>
#include "rlk/cpu_simd.h"
using namespace rlk::simd;
static double cpu_now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double wall_now() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
RLK_AVX512 float SumRead(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i)); a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32)); a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
// Throughput of one exp form on registers, kKind 0: Exp, 1: ExpNeg (clamped,
// the log-prob kernels' old pass 2), 2: Exp2Neg (clamped, on arguments
// already in base 2: the same caller multiply).
template <int kKind>
RLK_AVX512 __m512 Exp512(__m512 x) {
  __m512 c;
  if constexpr (kKind == 0) return avx512::Exp(x);
  else if constexpr (kKind == 1) return avx512::ExpNeg(x, &c);
  else return avx512::Exp2Neg(x, &c);
}
template <int kKind>
RLK_AVX2 __m256 Exp256(__m256 x) {
  __m256 c;
  if constexpr (kKind == 0) return avx2::Exp(x);
  else if constexpr (kKind == 1) return avx2::ExpNeg(x, &c);
  else return avx2::Exp2Neg(x, &c);
}
template <int kKind>
RLK_AVX512 float ExpLoop(size_t n) {
  __m512 x0 = _mm512_set1_ps(-1.0f), x1 = _mm512_set1_ps(-2.0f), x2 = _mm512_set1_ps(-3.f), x3 = _mm512_set1_ps(-4.f);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, d = _mm512_set1_ps(1e-7f);
  for (size_t i = 0; i < n; i += 64) {
    s0 = _mm512_add_ps(s0, Exp512<kKind>(x0)); s1 = _mm512_add_ps(s1, Exp512<kKind>(x1));
    s2 = _mm512_add_ps(s2, Exp512<kKind>(x2)); s3 = _mm512_add_ps(s3, Exp512<kKind>(x3));
    x0 = _mm512_sub_ps(x0, d); x1 = _mm512_sub_ps(x1, d); x2 = _mm512_sub_ps(x2, d); x3 = _mm512_sub_ps(x3, d);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
template <int kKind>
RLK_AVX2 float ExpLoop2(size_t n) {
  __m256 x0 = _mm256_set1_ps(-1.0f), x1 = _mm256_set1_ps(-2.0f), x2 = _mm256_set1_ps(-3.f), x3 = _mm256_set1_ps(-4.f);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, d = _mm256_set1_ps(1e-7f);
  for (size_t i = 0; i < n; i += 32) {
    s0 = _mm256_add_ps(s0, Exp256<kKind>(x0)); s1 = _mm256_add_ps(s1, Exp256<kKind>(x1));
    s2 = _mm256_add_ps(s2, Exp256<kKind>(x2)); s3 = _mm256_add_ps(s3, Exp256<kKind>(x3));
    x0 = _mm256_sub_ps(x0, d); x1 = _mm256_sub_ps(x1, d); x2 = _mm256_sub_ps(x2, d); x3 = _mm256_sub_ps(x3, d);
  }
  return avx2::ReduceAdd(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
// The policy loss's bytes with next to no arithmetic (AVX2: 8 tokens a step).
RLK_AVX2 float PolicyBytes(const float* a, const float* b, const float* c, const float* d, const unsigned char* m, float* g,
                           size_t lo, size_t hi) {
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    const __m256 v = _mm256_sub_ps(_mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(c + i), _mm256_loadu_ps(b + i)),
                                   _mm256_loadu_ps(d + i));
    const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + i)));
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_setzero_si256()));
    _mm256_storeu_ps(g + i, _mm256_and_ps(v, keep));
  }
  for (; i < hi; ++i) g[i] = m[i] ? a[i] * c[i] + b[i] - d[i] : 0.f;
  return hi > lo ? g[lo] : 0.f;
}
int main(int argc, char** argv) {
  const size_t n = size_t(1) << 27;  // 512 MB a thread
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  std::vector<float*> bufs(threads);
  for (int t = 0; t < threads; ++t) { bufs[t] = (float*)aligned_alloc(64, n * 4); memset(bufs[t], 0, n * 4); }
  volatile float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> cpu(threads), gbs(threads);
    double w0 = wall_now();
    std::vector<std::thread> th;
    for (int t = 0; t < threads; ++t) th.emplace_back([&, t] { double c0 = cpu_now(), a = wall_now(); sink = SumRead(bufs[t], n); cpu[t] = cpu_now() - c0; gbs[t] = n * 4 / (wall_now() - a) / 1e9; });
    for (auto& x : th) x.join();
    double w = wall_now() - w0;
    printf("read %d thr: total %.1f GB/s wall; per thread GB/s:", threads, threads * n * 4 / w / 1e9);
    for (int t = 0; t < threads; ++t) printf(" %.1f (cpu %.3f s)", gbs[t], cpu[t]);
    printf("\n");
  }
  {
    const size_t nt = size_t(64) * 32768;
    std::vector<float> a(nt, -1.f), b(nt, -1.1f), c(nt, 0.5f), d(nt, -0.9f), g(nt);
    std::vector<unsigned char> m(nt, 1);
    for (int thr : {1, threads}) {
      std::vector<double> ts;
      for (int rep = 0; rep < 21; ++rep) {
        double w0 = wall_now();
        std::vector<std::thread> th;
        for (int t = 0; t < thr; ++t) th.emplace_back([&, t] {
          sink = PolicyBytes(a.data(), b.data(), c.data(), d.data(), m.data(), g.data(), nt * t / thr, nt * (t + 1) / thr);
        });
        for (auto& x : th) x.join();
        ts.push_back(wall_now() - w0);
      }
      std::sort(ts.begin(), ts.end());
      printf("policy-loss bytes, 64 x 32768, %d thr: median %.2f ms (%.1f GB/s)\n", thr, ts[10] * 1e3, nt * 21.0 / ts[10] / 1e9);
    }
  }
  const size_t ne = size_t(1) << 30;
  const char* names[] = {"Exp", "ExpNeg", "Exp2Neg"};
  float (*loops512[])(size_t) = {ExpLoop<0>, ExpLoop<1>, ExpLoop<2>};
  float (*loops256[])(size_t) = {ExpLoop2<0>, ExpLoop2<1>, ExpLoop2<2>};
  for (int rep = 0; rep < 2; ++rep) {
    for (int k = 0; k < 3; ++k) {
      double c0 = cpu_now(); sink = loops512[k](ne); double c = cpu_now() - c0;
      printf("avx512 %s: %.3f ns/elem cpu (%.2f Gexp/s)\n", names[k], c / ne * 1e9, ne / c / 1e9);
      c0 = cpu_now(); sink = loops256[k](ne / 2); c = cpu_now() - c0;
      printf("avx2 %s: %.3f ns/elem cpu (%.2f Gexp/s)\n", names[k], c / (ne / 2) * 1e9, (ne / 2) / c / 1e9);
    }
  }
}
