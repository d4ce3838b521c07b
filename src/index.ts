export { Tensor, tensor, empty, zeros, full, scope, keep, memory } from './tensor.js';
export { buildInfo, setNumThreads, getNumThreads, cuda } from './runtime.js';
export { DisposedError, CudaUnavailableError, NativeLoadError } from './errors.js';
export type { DType, Device, ArrayFor, TensorData, TensorOptions, CreateOptions, DeviceMemory, BuildInfo } from './types.js';
export * from './vocab_divergence.js';
