// Stand-in for CUB's DeviceRadixSort (native/sim): the same calling
// convention (a size query with d_temp_storage == nullptr, then the sort),
// a stable sort by the key bits [begin_bit, end_bit), run in stream order
// (every stream of the emulated device runs synchronously).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

namespace rlk_sim {
// Validates and orders work like a launch; false when the pointers are bad.
bool CheckDeviceRange(const void* p, size_t bytes, const char* what);
void SetLastError(cudaError_t err);
template <class K>
inline unsigned long long RadixKey(K k, int begin_bit, int end_bit) {
  static_assert(std::is_integral<K>::value || std::is_floating_point<K>::value, "radix sort keys are numbers");
  unsigned long long u = 0;
  std::memcpy(&u, &k, sizeof(K));
  if constexpr (std::is_floating_point<K>::value) {
    const unsigned long long sign = 1ull << (sizeof(K) * 8 - 1);
    u = (u & sign) ? ~u : (u | sign);  // CUB's twiddle: negative floats flip all bits
  } else if constexpr (std::is_signed<K>::value) {
    u ^= 1ull << (sizeof(K) * 8 - 1);
  }
  if (sizeof(K) < 8) u &= (1ull << (sizeof(K) * 8)) - 1;
  const int width = end_bit - begin_bit;
  u >>= begin_bit;
  if (width < 64) u &= (1ull << width) - 1;
  return u;
}
}  // namespace rlk_sim

namespace cub {

struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                               const V* d_values_in, V* d_values_out, N num_items, int begin_bit = 0,
                               int end_bit = int(sizeof(K) * 8), cudaStream_t stream = 0, bool = false) {
    (void)stream;
    const size_t n = num_items > 0 ? size_t(num_items) : 0;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = n * (sizeof(K) + sizeof(V)) + 256;
      return cudaSuccess;
    }
    if (!::rlk_sim::CheckDeviceRange(d_temp_storage, temp_storage_bytes, "cub::DeviceRadixSort::SortPairs temp storage") ||
        !::rlk_sim::CheckDeviceRange(d_keys_in, n * sizeof(K), "cub::DeviceRadixSort::SortPairs keys in") ||
        !::rlk_sim::CheckDeviceRange(d_keys_out, n * sizeof(K), "cub::DeviceRadixSort::SortPairs keys out") ||
        !::rlk_sim::CheckDeviceRange(d_values_in, n * sizeof(V), "cub::DeviceRadixSort::SortPairs values in") ||
        !::rlk_sim::CheckDeviceRange(d_values_out, n * sizeof(V), "cub::DeviceRadixSort::SortPairs values out")) {
      ::rlk_sim::SetLastError(cudaErrorInvalidValue);
      return cudaErrorInvalidValue;
    }
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t(0));
    std::vector<unsigned long long> keys(n);
    for (size_t i = 0; i < n; ++i) keys[i] = ::rlk_sim::RadixKey(d_keys_in[i], begin_bit, end_bit);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
    std::vector<K> ko(n);
    std::vector<V> vo(n);
    for (size_t i = 0; i < n; ++i) {
      ko[i] = d_keys_in[order[i]];
      vo[i] = d_values_in[order[i]];
    }
    std::copy(ko.begin(), ko.end(), d_keys_out);
    std::copy(vo.begin(), vo.end(), d_values_out);
    return cudaSuccess;
  }

  template <class K, class N>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                              N num_items, int begin_bit = 0, int end_bit = int(sizeof(K) * 8), cudaStream_t stream = 0,
                              bool = false) {
    (void)stream;
    const size_t n = num_items > 0 ? size_t(num_items) : 0;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = n * sizeof(K) + 256;
      return cudaSuccess;
    }
    std::vector<K> ko(d_keys_in, d_keys_in + n);
    std::stable_sort(ko.begin(), ko.end(), [&](K a, K b) {
      return ::rlk_sim::RadixKey(a, begin_bit, end_bit) < ::rlk_sim::RadixKey(b, begin_bit, end_bit);
    });
    std::copy(ko.begin(), ko.end(), d_keys_out);
    return cudaSuccess;
  }
};

}  // namespace cub
