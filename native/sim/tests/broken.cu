// Deliberately broken kernels: each misuse the emulated device (native/sim)
// must report with this file's line, the block and the thread, without
// hanging. tests/sim.test.ts runs them through the sanitizer drivers and
// finds the expected line by its `EXPECT: <case>` tag.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

namespace rlk_sim_tests {
namespace {

namespace cg = cooperative_groups;

// Half of the block skips the barrier the other half waits at.
__global__ void SyncPartialKernel(float* out) {
  if (threadIdx.x < 16) __syncthreads();  // EXPECT: sync-partial
  out[threadIdx.x] = 1.0f;
}

// Every thread reaches a barrier, but odd and even threads different ones.
__global__ void SyncTwoPlacesKernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();  // EXPECT: sync-two-places
  }
  out[threadIdx.x] = 1.0f;
}

// Lane 0 shuffles with a mask that leaves it out.
__global__ void ShflMaskKernel(float* out) {
  float v = out[threadIdx.x];
  v += __shfl_down_sync(0xfffffffeu, v, 1);  // EXPECT: shfl-mask
  out[threadIdx.x] = v;
}

// Lane 5 has returned when the others shuffle with a full mask.
__global__ void ShflExitedKernel(float* out) {
  if (threadIdx.x == 5) return;
  float v = out[threadIdx.x];
  v += __shfl_xor_sync(0xffffffffu, v, 1);  // EXPECT: shfl-exited
  out[threadIdx.x] = v;
}

// A vote whose mask names lanes of a warp that does not exist (48 threads).
__global__ void VoteMissingLaneKernel(float* out) {
  const int any = __any_sync(0xffffffffu, out[threadIdx.x] > 0.0f);  // EXPECT: vote-missing-lane
  out[threadIdx.x] = float(any);
}

// grid.sync() in a kernel launched with <<<>>>.
__global__ void GridSyncKernel(float* out) {
  cg::grid_group grid = cg::this_grid();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
  grid.sync();  // EXPECT: grid-sync
}

// Off by one: the last thread reads and writes one element past the end.
__global__ void OobGlobalKernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = in[i] * 2.0f;  // EXPECT: oob-global
}

// 64 threads index a 32-element shared array.
__global__ void OobSharedKernel(float* out) {
  __shared__ float tile[32];
  tile[threadIdx.x] = float(threadIdx.x);  // EXPECT: oob-shared
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x % 32];
}

// Each thread reads its neighbour's slot with no barrier after the writes.
__global__ void RaceSharedKernel(float* out) {
  __shared__ float tile[64];
  tile[threadIdx.x] = float(threadIdx.x);
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 64];  // EXPECT: race-shared
}

// The same with the barrier: clean under every checker.
__global__ void FixedSharedKernel(float* out) {
  __shared__ float tile[64];
  tile[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}

// Cooperative launch of several blocks with grid.sync(): clean.
__global__ void CoopKernel(float* out, int n) {
  cg::grid_group grid = cg::this_grid();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = float(i);
  grid.sync();
  if (i == 0) {
    float s = 0.0f;
    for (int k = 0; k < n; ++k) s += out[k];
    out[n] = s;
  }
}

}  // namespace

cudaError_t RunBroken(const char* name, float* buf, float* buf2, int n) {
  const char* c = name;
  auto is = [&](const char* s) { return __builtin_strcmp(c, s) == 0; };
  if (is("sync-partial")) SyncPartialKernel<<<2, 32>>>(buf);
  else if (is("sync-two-places")) SyncTwoPlacesKernel<<<1, 64>>>(buf);
  else if (is("shfl-mask")) ShflMaskKernel<<<1, 32>>>(buf);
  else if (is("shfl-exited")) ShflExitedKernel<<<1, 32>>>(buf);
  else if (is("vote-missing-lane")) VoteMissingLaneKernel<<<1, 48>>>(buf);
  else if (is("grid-sync")) GridSyncKernel<<<2, 32>>>(buf);
  else if (is("oob-global")) OobGlobalKernel<<<(n + 63) / 64 + 1, 64>>>(buf, buf2, n);
  else if (is("oob-shared")) OobSharedKernel<<<1, 64>>>(buf);
  else if (is("race-shared")) RaceSharedKernel<<<1, 64>>>(buf);
  else if (is("fixed-shared")) FixedSharedKernel<<<1, 64>>>(buf);
  else if (is("coop")) {
    void* args[] = {&buf, &n};
    return cudaLaunchCooperativeKernel(CoopKernel, dim3(unsigned(n / 64)), dim3(64), args, 0, nullptr);
  } else {
    return cudaErrorNotSupported;
  }
  return cudaGetLastError();
}

}  // namespace rlk_sim_tests
