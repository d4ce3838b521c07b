// CPU kernels of the fused linear log-probs (DESIGN 3.2). Rows go in chunks;
// for each chunk the vocabulary is cut into fixed tiles of kLinTile entries,
// one ParallelFor task each:
//   forward:  logits^T tile [vt, chunk] = W_tile @ h_chunk^T (fp32, cache
//             blocked, vectorised), bias added, per-row tile statistics;
//             then each row merges its tiles in tile order (fp64);
//   backward: the chunk's logits^T [V, chunk] (fp32) by the same product,
//             statistics from `stats` or merged as above, then per tile the
//             gradient in place, gradBias and gradWeight rows of the tile
//             (+= dlogits_tile^T-product with h_chunk, chunks in order), and
//             gradHidden = dlogits @ W over column blocks.
// The chunk's logits are written once and read once to form the gradient,
// which is read twice more (gradWeight while cache-hot, gradHidden).
// Which thread runs a task never changes its arithmetic, and every sum runs
// in an order fixed by the shapes and the chunk: bitwise the same results
// for any thread count.
#include "rlk/linear_logprobs.h"

// GCC 12's AVX-512 headers build _mm512_undefined_ps() from a self-initialised
// variable and warn wherever the intrinsics inline (GCC PR 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "rlk/cpu_simd.h"
#include "rlk/runtime.h"

namespace rlk::cpu {
namespace {

// ---- per-ISA op sets for linear_logprobs_isa.inc ---------------------------------
namespace lin_avx512 {
using namespace ::rlk::simd::avx512;
constexpr int kMR = 8;  // 16 accumulators of 32 registers
RLK_AVX512 inline V Set1(float v) { return _mm512_set1_ps(v); }
RLK_AVX512 inline V Zero() { return _mm512_setzero_ps(); }
RLK_AVX512 inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
RLK_AVX512 inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
RLK_AVX512 inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
RLK_AVX512 inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
// max(x, m) keeping m where x is NaN (the second operand wins on NaN).
RLK_AVX512 inline V MaxKeep(V x, V m) { return _mm512_max_ps(x, m); }
RLK_AVX512 inline V MulNonZero(V a, V b) {
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_UQ), a, b);
}
RLK_AVX512 inline V And(V a, V b) { return _mm512_and_ps(a, b); }
struct W { __m512d lo, hi; };
RLK_AVX512 inline W WZero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
RLK_AVX512 inline W Widen(V v) { return {_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))}; }
RLK_AVX512 inline W WAdd(W a, W b) { return {_mm512_add_pd(a.lo, b.lo), _mm512_add_pd(a.hi, b.hi)}; }
RLK_AVX512 inline void WStore(double* p, W w) { _mm512_storeu_pd(p, w.lo); _mm512_storeu_pd(p + 8, w.hi); }
#define RLK_LIN_ATTR RLK_AVX512
#include "linear_logprobs_isa.inc"
#undef RLK_LIN_ATTR
}  // namespace lin_avx512

namespace lin_avx2 {
using namespace ::rlk::simd::avx2;
constexpr int kMR = 6;  // 12 accumulators + 2 B vectors + 1 broadcast of 16 registers
RLK_AVX2 inline V Set1(float v) { return _mm256_set1_ps(v); }
RLK_AVX2 inline V Zero() { return _mm256_setzero_ps(); }
RLK_AVX2 inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
RLK_AVX2 inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
RLK_AVX2 inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
RLK_AVX2 inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
RLK_AVX2 inline V MaxKeep(V x, V m) { return _mm256_max_ps(x, m); }
RLK_AVX2 inline V MulNonZero(V a, V b) {
  return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_NEQ_UQ), _mm256_mul_ps(a, b));
}
RLK_AVX2 inline V And(V a, V b) { return _mm256_and_ps(a, b); }
struct W { __m256d lo, hi; };
RLK_AVX2 inline W WZero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
RLK_AVX2 inline W Widen(V v) { return {_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))}; }
RLK_AVX2 inline W WAdd(W a, W b) { return {_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)}; }
RLK_AVX2 inline void WStore(double* p, W w) { _mm256_storeu_pd(p, w.lo); _mm256_storeu_pd(p + 4, w.hi); }
#define RLK_LIN_ATTR RLK_AVX2
#include "linear_logprobs_isa.inc"
#undef RLK_LIN_ATTR
}  // namespace lin_avx2

// One lane: the portable path for CPUs without AVX2 (and RLK_SIMD=baseline).
namespace lin_scalar {
constexpr int kLanes = 1;
constexpr int kMR = 4;
using V = float;
inline V Load(const float* p) { return *p; }
inline V Load(const bf16_t* p) { return ToFloat(*p); }
inline V Load(const f16_t* p) { return ToFloat(*p); }
template <class T>
inline V LoadTail(const T* p, int64_t n, float fill) { return n > 0 ? Load(p) : fill; }
inline void Store(float* p, V v) { *p = v; }
inline void StoreTail(float* p, V v, int64_t n) { if (n > 0) *p = v; }
inline V Exp(V x) { return simd::Exp(x); }
inline V Set1(float v) { return v; }
inline V Zero() { return 0.0f; }
inline V Add(V a, V b) { return a + b; }
inline V Sub(V a, V b) { return a - b; }
inline V Mul(V a, V b) { return a * b; }
inline V Fma(V a, V b, V c) { return a * b + c; }
inline V MaxKeep(V x, V m) { return x > m ? x : m; }
inline V MulNonZero(V a, V b) { return a != 0.0f ? a * b : 0.0f; }
inline V And(V a, V b) {
  uint32_t x = FloatBits(a) & FloatBits(b);
  return BitsFloat(x);
}
using W = double;
inline W WZero() { return 0.0; }
inline W Widen(V v) { return double(v); }
inline W WAdd(W a, W b) { return a + b; }
inline void WStore(double* p, W w) { *p = w; }
#define RLK_LIN_ATTR
#include "linear_logprobs_isa.inc"
#undef RLK_LIN_ATTR
}  // namespace lin_scalar

#define RLK_LIN_ISA_OPS(ns)                                                                                   \
  template <class TB>                                                                                         \
  static void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t sa_m, int64_t sa_k, const TB* B, \
                   int64_t ldb, float* C, int64_t ldc, bool acc, float* bp) {                                 \
    ns::LinGemm<TB>(M, N, K, A, sa_m, sa_k, B, ldb, C, ldc, acc, bp);                                         \
  }                                                                                                           \
  template <class TBias>                                                                                      \
  static void AddBias(float* C, int64_t vt, int64_t ncp, int64_t ldc, const TBias* b) {                      \
    ns::LinAddBias<TBias>(C, vt, ncp, ldc, b);                                                                \
  }                                                                                                           \
  template <bool E>                                                                                           \
  static void TileStats(const float* C, int64_t vt, int64_t ncp, int64_t ldc, const float* it, float* pm,    \
                        double* ps, double* pt) {                                                             \
    ns::LinTileStats<E>(C, vt, ncp, ldc, it, pm, ps, pt);                                                     \
  }                                                                                                           \
  template <bool E>                                                                                           \
  static void TileGrad(float* C, int64_t vt, int64_t ncp, int64_t ldc, const float* m, const float* it,      \
                       const float* is, const float* ng, const float* nge, const float* c, const float* k) { \
    ns::LinTileGrad<E>(C, vt, ncp, ldc, m, it, is, ng, nge, c, k);                                            \
  }                                                                                                           \
  static float Sum(const float* p, int64_t n) { return ns::LinSum(p, n); }

struct Avx512Lin { RLK_LIN_ISA_OPS(lin_avx512) };
struct Avx2Lin { RLK_LIN_ISA_OPS(lin_avx2) };
struct ScalarLin { RLK_LIN_ISA_OPS(lin_scalar) };

// ---- host scratch -------------------------------------------------------------------
template <class X>
struct Buffer {
  X* p = nullptr;
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { HostFree(p); }
  bool Alloc(int64_t n) {
    p = static_cast<X*>(HostAlloc(size_t(std::max<int64_t>(n, 1)) * sizeof(X)));
    return p != nullptr;
  }
};

// Scratch of one packed B block (kKC x kNC of the .inc).
constexpr int64_t kLinPackFloats = 256 * 256;

const Status kNoMemory{Status::kOutOfMemory, "could not allocate the chunk's scratch memory (try a smaller chunkSize)"};

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t Tiles(int64_t vocab) { return (vocab + kLinTile - 1) / kLinTile; }
inline int64_t ChunkRows(int64_t requested, int64_t vocab) { return requested > 0 ? requested : LinDefaultChunk(vocab); }

template <class Idx>
inline int64_t TargetAt(const void* t, int64_t r) { return TlpTargetAt<Idx>(t, r); }

// hT[k][n] = hidden[c0 + n][k] in fp32, zero for the padding rows n >= nc.
template <class T>
void PackHiddenT(const T* hidden, int64_t dim, int64_t c0, int64_t nc, int64_t ncp, float* hT) {
  ParallelFor(dim, 64, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k) {
      float* row = hT + k * ncp;
      for (int64_t n = 0; n < nc; ++n) row[n] = ToFloat(hidden[(c0 + n) * dim + k]);
      for (int64_t n = nc; n < ncp; ++n) row[n] = 0.0f;
    }
  });
}

// logits^T tile C[vt][ncp] = W[v0 : v0 + vt] @ hT (+ bias): the weight rows
// go through an fp32 panel of kKC columns, so 16-bit weights are converted
// once per chunk and the product's A operand is contiguous.
template <class Isa, class T, class TBias>
void TileLogits(const T* weight, const TBias* bias, int64_t dim, int64_t v0, int64_t vt, const float* hT, int64_t ncp,
                float* C, float* panel, float* bp) {
  constexpr int64_t kc_max = 256;
  for (int64_t k0 = 0; k0 < dim; k0 += kc_max) {
    const int64_t kc = std::min(kc_max, dim - k0);
    for (int64_t v = 0; v < vt; ++v) {
      const T* src = weight + (v0 + v) * dim + k0;
      float* dst = panel + v * kc;
      for (int64_t k = 0; k < kc; ++k) dst[k] = ToFloat(src[k]);
    }
    Isa::template Gemm<float>(vt, ncp, kc, panel, kc, 1, hT + k0 * ncp, ncp, C, ncp, k0 > 0, bp);
  }
  if (bias) Isa::template AddBias<TBias>(C, vt, ncp, ncp, bias + v0);
}

// Merges a row's tile statistics in tile order (fp64), as token_logprobs
// merges its lanes: the largest max, then each tile's sums moved to it.
struct Merged {
  float m;
  double s, t;
};
inline Merged MergeTiles(const float* pm, const double* ps, const double* pt, int64_t tiles, int64_t ncp, int64_t n,
                         float inv_t, bool entropy) {
  float big = -FLT_MAX;
  for (int64_t k = 0; k < tiles; ++k) big = std::max(big, pm[k * ncp + n]);
  double s = 0, t = 0;
  for (int64_t k = 0; k < tiles; ++k) {
    const double delta = (double(pm[k * ncp + n]) - double(big)) * double(inv_t);
    const double a = std::exp(delta);
    s += a * ps[k * ncp + n];
    if (entropy) t += TlpShiftEntropy(a, delta, ps[k * ncp + n], pt[k * ncp + n]);
  }
  return {big, s, t};
}

// ---- forward -------------------------------------------------------------------------
template <class Isa, class T, class TBias, class Idx>
Status Fwd(const LinearLogprobsFwdParams& p) {
  const T* hidden = static_cast<const T*>(p.hidden);
  const T* weight = static_cast<const T*>(p.weight);
  const TBias* bias = static_cast<const TBias*>(p.bias);
  const int64_t dim = p.dim, vocab = p.vocab, tiles = Tiles(vocab);
  const int64_t chunk = ChunkRows(p.chunk, vocab);
  const int64_t ncp_max = RoundUp(std::min(chunk, p.rows), kLinRowPad);
  const bool partial = p.partials != nullptr;
  const bool entropy = p.entropy || (!partial && p.stats);
  const int cols = p.entropy ? kTlpPartialColsEntropy : kTlpPartialCols;

  Buffer<float> hT, pm, inv_t, xt;
  Buffer<double> ps, pt;
  if (!hT.Alloc(dim * ncp_max) || !pm.Alloc(tiles * ncp_max) || !ps.Alloc(tiles * ncp_max) ||
      !pt.Alloc(tiles * ncp_max) || !inv_t.Alloc(ncp_max) || !xt.Alloc(ncp_max))
    return kNoMemory;
  std::atomic<bool> oom{false};

  for (int64_t c0 = 0; c0 < p.rows; c0 += chunk) {
    const int64_t nc = std::min(chunk, p.rows - c0), ncp = RoundUp(nc, kLinRowPad);
    for (int64_t n = 0; n < ncp; ++n) {
      inv_t.p[n] = n < nc ? TlpRowInvTemperature(p.temperature, p.inv_temperature, c0 + n) : 1.0f;
      xt.p[n] = 0.0f;
    }
    PackHiddenT(hidden, dim, c0, nc, ncp, hT.p);
    ParallelFor(tiles, 1, [&](int64_t tb, int64_t te) {
      Buffer<float> C, panel, bp;
      if (!C.Alloc(kLinTile * ncp) || !panel.Alloc(kLinTile * 256) || !bp.Alloc(kLinPackFloats)) {
        oom = true;
        return;
      }
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t v0 = tile * kLinTile, vt = std::min(kLinTile, vocab - v0);
        TileLogits<Isa, T, TBias>(weight, bias, dim, v0, vt, hT.p, ncp, C.p, panel.p, bp.p);
        if (entropy)
          Isa::template TileStats<true>(C.p, vt, ncp, ncp, inv_t.p, pm.p + tile * ncp, ps.p + tile * ncp, pt.p + tile * ncp);
        else
          Isa::template TileStats<false>(C.p, vt, ncp, ncp, inv_t.p, pm.p + tile * ncp, ps.p + tile * ncp, pt.p + tile * ncp);
        // The target's logit, from the one tile that holds it.
        for (int64_t n = 0; n < nc; ++n) {
          const int64_t local = TargetAt<Idx>(p.targets, c0 + n) - p.vocab_start - v0;
          if (local >= 0 && local < vt) xt.p[n] = C.p[local * ncp + n];
        }
      }
    });
    if (oom) return kNoMemory;
    ParallelFor(nc, 64, [&](int64_t nb, int64_t ne) {
      for (int64_t n = nb; n < ne; ++n) {
        const int64_t r = c0 + n;
        const int64_t tg = TargetAt<Idx>(p.targets, r);
        if (tg == p.ignore_index) {
          if (partial) {
            for (int k = 0; k < cols; ++k) p.partials[r * cols + k] = 0.0f;
          } else {
            TlpZeroRow(p.logprobs, p.entropy_out, p.stats, r);
          }
          continue;
        }
        const float it = inv_t.p[n];
        const Merged st = MergeTiles(pm.p, ps.p, pt.p, tiles, ncp, n, it, entropy);
        if (partial) {
          const int64_t local = tg - p.vocab_start;
          float* out = p.partials + r * cols;
          out[0] = st.m;
          out[1] = float(st.s);
          out[2] = local >= 0 && local < vocab ? xt.p[n] : 0.0f;
          if (p.entropy) out[3] = float(st.t);
          continue;
        }
        const double log_s = std::log(st.s);
        const double lp = TlpLogprob(double(xt.p[n]), double(st.m), double(it), log_s);
        const double h = TlpEntropy(log_s, st.t, st.s);
        p.logprobs[r] = float(lp);
        if (p.entropy_out) p.entropy_out[r] = float(h);
        if (p.stats) {
          float* out = p.stats + r * kTlpStatsCols;
          out[0] = st.m;
          out[1] = float(st.s);
          out[2] = float(h);
        }
      }
    });
  }
  return Status::Ok();
}

// ---- backward ------------------------------------------------------------------------
template <class X>
void StoreConverted(const float* src, X* dst, int64_t n) {
  ParallelFor(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = FromFloat<X>(src[i]);
  });
}

template <class Isa, class T, class TBias, class Idx>
Status Bwd(const LinearLogprobsBwdParams& p) {
  const T* hidden = static_cast<const T*>(p.hidden);
  const T* weight = static_cast<const T*>(p.weight);
  const TBias* bias = static_cast<const TBias*>(p.bias);
  const int64_t dim = p.dim, vocab = p.vocab, tiles = Tiles(vocab);
  const int64_t chunk = ChunkRows(p.chunk, vocab);
  const int64_t ncp_max = RoundUp(std::min(chunk, std::max<int64_t>(p.rows, 1)), kLinRowPad);
  const bool ent = p.grad_entropy != nullptr;
  constexpr bool kF32 = std::is_same<T, float>::value;
  constexpr bool kBiasF32 = std::is_same<TBias, float>::value;

  // gradWeight (and gradBias) accumulate in fp32 over the chunks: in place
  // for fp32, else in a scratch copy rounded once at the end.
  Buffer<float> gw_scratch, gb_scratch, gh_scratch, logits, hT, pm, row_m, row_it, row_is, row_ng, row_nge, row_c,
      row_keep, xt;
  Buffer<double> ps, pt, row_s, row_cd;
  float* gw = kF32 ? static_cast<float*>(p.grad_weight) : nullptr;
  if (!kF32 && !gw_scratch.Alloc(vocab * dim)) return kNoMemory;
  if (!kF32) gw = gw_scratch.p;
  float* gb = nullptr;
  if (p.grad_bias) {
    if (kBiasF32) {
      gb = static_cast<float*>(p.grad_bias);
    } else {
      if (!gb_scratch.Alloc(vocab)) return kNoMemory;
      gb = gb_scratch.p;
    }
  }
  if (!logits.Alloc(vocab * ncp_max) || !hT.Alloc(dim * ncp_max) || !row_m.Alloc(ncp_max) || !row_it.Alloc(ncp_max) ||
      !row_is.Alloc(ncp_max) || !row_ng.Alloc(ncp_max) || !row_nge.Alloc(ncp_max) || !row_c.Alloc(ncp_max) ||
      !row_keep.Alloc(ncp_max) || !xt.Alloc(ncp_max) || !row_s.Alloc(ncp_max) || !row_cd.Alloc(ncp_max))
    return kNoMemory;
  if (!kF32 && !gh_scratch.Alloc(std::min(chunk, p.rows) * dim)) return kNoMemory;
  if (!p.stats && (!pm.Alloc(tiles * ncp_max) || !ps.Alloc(tiles * ncp_max) || !pt.Alloc(tiles * ncp_max)))
    return kNoMemory;
  ParallelFor(vocab * dim, 1 << 16, [&](int64_t b, int64_t e) { std::memset(gw + b, 0, size_t(e - b) * sizeof(float)); });
  if (gb) std::memset(gb, 0, size_t(vocab) * sizeof(float));
  std::atomic<bool> oom{false};
  float keep_bits;
  {
    const uint32_t all = 0xFFFFFFFFu;
    std::memcpy(&keep_bits, &all, 4);
  }

  for (int64_t c0 = 0; c0 < p.rows; c0 += chunk) {
    const int64_t nc = std::min(chunk, p.rows - c0), ncp = RoundUp(nc, kLinRowPad);
    for (int64_t n = 0; n < ncp; ++n) {
      row_it.p[n] = n < nc ? TlpRowInvTemperature(p.temperature, p.inv_temperature, c0 + n) : 1.0f;
      xt.p[n] = 0.0f;
    }
    PackHiddenT(hidden, dim, c0, nc, ncp, hT.p);

    // Pass 1: the chunk's logits^T [vocab][ncp], and tile statistics when
    // the forward's were not saved.
    ParallelFor(tiles, 1, [&](int64_t tb, int64_t te) {
      Buffer<float> panel, bp;
      if (!panel.Alloc(kLinTile * 256) || !bp.Alloc(kLinPackFloats)) {
        oom = true;
        return;
      }
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t v0 = tile * kLinTile, vt = std::min(kLinTile, vocab - v0);
        float* C = logits.p + v0 * ncp;
        TileLogits<Isa, T, TBias>(weight, bias, dim, v0, vt, hT.p, ncp, C, panel.p, bp.p);
        if (!p.stats) {
          if (ent)
            Isa::template TileStats<true>(C, vt, ncp, ncp, row_it.p, pm.p + tile * ncp, ps.p + tile * ncp, pt.p + tile * ncp);
          else
            Isa::template TileStats<false>(C, vt, ncp, ncp, row_it.p, pm.p + tile * ncp, ps.p + tile * ncp, pt.p + tile * ncp);
        }
        for (int64_t n = 0; n < nc; ++n) {
          const int64_t local = TargetAt<Idx>(p.targets, c0 + n) - p.vocab_start - v0;
          if (local >= 0 && local < vt) xt.p[n] = C[local * ncp + n];
        }
      }
    });
    if (oom) return kNoMemory;

    // Per-row constants of the gradient (token_logprobs.h's formulas).
    for (int64_t n = 0; n < ncp; ++n) {
      const int64_t r = c0 + n;
      if (n >= nc || TargetAt<Idx>(p.targets, r) == p.ignore_index) {
        row_m.p[n] = row_is.p[n] = row_ng.p[n] = row_nge.p[n] = row_c.p[n] = row_keep.p[n] = 0.0f;
        row_s.p[n] = 1.0;
        row_cd.p[n] = 0.0;
        continue;
      }
      const float it = row_it.p[n];
      float m;
      double s, h;
      if (p.stats) {
        m = p.stats[r * kTlpStatsCols];
        s = p.stats[r * kTlpStatsCols + 1];
        h = p.stats[r * kTlpStatsCols + 2];
      } else {
        const Merged st = MergeTiles(pm.p, ps.p, pt.p, tiles, ncp, n, it, ent);
        m = st.m;
        s = st.s;
        h = TlpEntropy(std::log(st.s), st.t, st.s);
      }
      const double inv_s = 1.0 / s;
      const double c = h - std::log(s);
      const float g = p.grad_logprobs[r];
      const float ge = ent ? p.grad_entropy[r] : 0.0f;
      row_m.p[n] = m;
      row_is.p[n] = float(inv_s);
      row_ng.p[n] = -g * it;
      row_nge.p[n] = -ge * it;
      row_c.p[n] = float(c);
      row_keep.p[n] = keep_bits;
      row_s.p[n] = s;
      row_cd.p[n] = c;
    }

    // Pass 2, per tile: the gradient in place, the target's term, then this
    // tile's gradBias and gradWeight rows (+= over the chunk's rows in order).
    ParallelFor(tiles, 1, [&](int64_t tb, int64_t te) {
      Buffer<float> bp;
      if (!bp.Alloc(kLinPackFloats)) {
        oom = true;
        return;
      }
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t v0 = tile * kLinTile, vt = std::min(kLinTile, vocab - v0);
        float* C = logits.p + v0 * ncp;
        if (ent)
          Isa::template TileGrad<true>(C, vt, ncp, ncp, row_m.p, row_it.p, row_is.p, row_ng.p, row_nge.p, row_c.p, row_keep.p);
        else
          Isa::template TileGrad<false>(C, vt, ncp, ncp, row_m.p, row_it.p, row_is.p, row_ng.p, row_nge.p, row_c.p, row_keep.p);
        for (int64_t n = 0; n < nc; ++n) {
          if (row_keep.p[n] == 0.0f) continue;  // keep_bits is a NaN: != 0
          const int64_t local = TargetAt<Idx>(p.targets, c0 + n) - p.vocab_start - v0;
          if (local < 0 || local >= vt) continue;
          const double it = row_it.p[n];
          const double g = p.grad_logprobs[c0 + n], ge = ent ? p.grad_entropy[c0 + n] : 0.0;
          const double d = (double(xt.p[n]) - double(row_m.p[n])) * it;
          const double pt_ = std::exp(d) * (1.0 / row_s.p[n]);
          double gr = ent ? TlpGradTerm<true>(pt_, d, g, ge, row_cd.p[n]) : TlpGradTerm<false>(pt_, d, g, ge, row_cd.p[n]);
          // Dropped for a -inf target logit, whose log-prob is the constant -inf.
          if (xt.p[n] != -INFINITY) gr += g;
          C[local * ncp + n] = float(gr * it);
        }
        if (gb)
          for (int64_t v = 0; v < vt; ++v) gb[v0 + v] += Isa::Sum(C + v * ncp, ncp);
        Isa::template Gemm<T>(vt, dim, nc, C, ncp, 1, hidden + c0 * dim, dim, gw + v0 * dim, dim, true, bp.p);
      }
    });

    // Pass 3: gradHidden rows of the chunk = dlogits @ W, each element a sum
    // over the vocabulary in order, one task per block of rows and columns.
    float* gh = kF32 ? static_cast<float*>(p.grad_hidden) + c0 * dim : gh_scratch.p;
    constexpr int64_t kRowsBlk = 128, kColsBlk = 256;
    const int64_t rb = (nc + kRowsBlk - 1) / kRowsBlk, cb = (dim + kColsBlk - 1) / kColsBlk;
    ParallelFor(rb * cb, 1, [&](int64_t b, int64_t e) {
      Buffer<float> bp;
      if (!bp.Alloc(kLinPackFloats)) {
        oom = true;
        return;
      }
      for (int64_t task = b; task < e; ++task) {
        const int64_t r0 = (task / cb) * kRowsBlk, h0 = (task % cb) * kColsBlk;
        const int64_t mr = std::min(kRowsBlk, nc - r0), nr = std::min(kColsBlk, dim - h0);
        Isa::template Gemm<T>(mr, nr, vocab, logits.p + r0, 1, ncp, weight + h0, dim, gh + r0 * dim + h0, dim, false, bp.p);
      }
    });
    if (oom) return kNoMemory;
    if (!kF32) StoreConverted(gh, static_cast<T*>(p.grad_hidden) + c0 * dim, nc * dim);
  }
  if (!kF32) StoreConverted(gw, static_cast<T*>(p.grad_weight), vocab * dim);
  if (gb && !kBiasF32) StoreConverted(gb, static_cast<TBias*>(p.grad_bias), vocab);
  return Status::Ok();
}

// The bias, when given, has the weight's dtype (as torch.nn.Linear's).
template <class Fn>
Status DispatchLin(DType dtype, DType idx_dtype, const char* op, Fn&& fn) {
  auto with_isa = [&](auto t, auto i) -> Status {
    switch (simd::Isa()) {
      case simd::IsaKind::kAvx512: return fn(Avx512Lin{}, t, i);
      case simd::IsaKind::kAvx2: return fn(Avx2Lin{}, t, i);
      default: return fn(ScalarLin{}, t, i);
    }
  };
  auto with_idx = [&](auto t) -> Status {
    if (idx_dtype == DType::kInt32) return with_isa(t, int32_t{});
    if (idx_dtype == DType::kInt64) return with_isa(t, int64_t{});
    return Status{Status::kInvalidArgument, "targets must be int32 or int64"};
  };
  switch (dtype) {
    case DType::kFloat32: return with_idx(float{});
    case DType::kBFloat16: return with_idx(bf16_t{});
    case DType::kFloat16: return with_idx(f16_t{});
    default: return Status{Status::kUnsupported, op};
  }
}

}  // namespace

Status LinearLogprobsFwd(const LinearLogprobsFwdParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.bias && p.bias_dtype != p.dtype) return Status{Status::kInvalidArgument, "bias must have the weight's dtype"};
  return DispatchLin(p.dtype, p.targets_dtype, "unsupported dtype", [&](auto isa, auto t, auto i) {
    return Fwd<decltype(isa), decltype(t), decltype(t), decltype(i)>(p);
  });
}

Status LinearLogprobsBwd(const LinearLogprobsBwdParams& p) {
  if (p.bias && p.bias_dtype != p.dtype) return Status{Status::kInvalidArgument, "bias must have the weight's dtype"};
  return DispatchLin(p.dtype, p.targets_dtype, "unsupported dtype", [&](auto isa, auto t, auto i) {
    return Bwd<decltype(isa), decltype(t), decltype(t), decltype(i)>(p);
  });
}

}  // namespace rlk::cpu
