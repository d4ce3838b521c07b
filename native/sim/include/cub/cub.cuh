// Stand-in for <cub/cub.cuh> (native/sim): the parts of CUB the kernels use.
#pragma once
#include <cub/device/device_radix_sort.cuh>
