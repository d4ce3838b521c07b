// CUDA klPenalty: elementwise, grid-stride with int64 indices, fp32 math
// (e^x - x - 1 by the series of kl_penalty.h near 0, so no cancellation).
#include <cuda_runtime.h>

#include "rlk/kl_penalty.h"

namespace rlk::cuda {
namespace {

__global__ void KlPenaltyKernel(const float* __restrict__ logprobs,      // [n]
                                const float* __restrict__ ref_logprobs,  // [n]
                                const uint8_t* __restrict__ mask,        // [n] or nullptr
                                float* __restrict__ values,              // [n]
                                float* __restrict__ grad,                // [n]
                                int64_t n, int32_t estimator) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v = 0.f, g = 0.f;
    if (!mask || mask[i]) KlValueGrad<float>(estimator, logprobs[i] - ref_logprobs[i], &v, &g);
    values[i] = v;
    grad[i] = g;
  }
}

}  // namespace

Status KlPenalty(const KlPenaltyParams& p) {
  if (p.estimator < 0 || p.estimator >= kKlNumEstimators)
    return Status{Status::kInvalidArgument, "unknown KL estimator code"};
  if (p.n == 0) return Status::Ok();
  if (cudaSetDevice(p.device) != cudaSuccess) {
    cudaGetLastError();  // clear it, or the next op's launch check would report it as its own
    return Status{Status::kCudaError, "klPenalty: cudaSetDevice failed"};
  }
  constexpr int kThreads = 256;
  int64_t blocks = (p.n + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // grid-stride covers the rest
  KlPenaltyKernel<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(
      p.logprobs, p.ref_logprobs, p.mask, p.values, p.grad, p.n, p.estimator);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Status{Status::kCudaError, "klPenalty: kernel launch failed"};
  return Status::Ok();
}

}  // namespace rlk::cuda
