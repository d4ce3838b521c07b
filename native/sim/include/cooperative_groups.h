// Stand-in for <cooperative_groups.h> (native/sim): the grid and block groups
// the kernels use. grid.sync() outside a cooperative launch is reported.
#pragma once
#include <cuda_runtime.h>

namespace cooperative_groups {

class grid_group {
 public:
  void sync(const char* f = __builtin_FILE(), int l = __builtin_LINE()) const { ::rlk_sim::GridSync(f, l); }
  bool is_valid() const { return ::rlk_sim::InCooperativeLaunch(); }
  unsigned long long size() const { return num_threads(); }
  unsigned long long num_threads() const {
    return (unsigned long long)gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y * blockDim.z;
  }
  unsigned long long thread_rank() const {
    const unsigned long long block = (blockIdx.z * (unsigned long long)gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    return block * blockDim.x * blockDim.y * blockDim.z +
           (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  }
  unsigned long long num_blocks() const { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z; }
  unsigned long long block_rank() const {
    return (blockIdx.z * (unsigned long long)gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  }
};

class thread_block {
 public:
  void sync(const char* f = __builtin_FILE(), int l = __builtin_LINE()) const { __syncthreads(f, l); }
  unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
  unsigned num_threads() const { return size(); }
  unsigned thread_rank() const { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
  dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
};

inline grid_group this_grid() { return grid_group(); }
inline thread_block this_thread_block() { return thread_block(); }
inline void sync(const grid_group& g, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { g.sync(f, l); }
inline void sync(const thread_block& b, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { b.sync(f, l); }

}  // namespace cooperative_groups
