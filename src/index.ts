export { Tensor, tensor, empty, zeros, full, scope, keep, memory } from './tensor.js';
export { buildInfo, setNumThreads, getNumThreads, cuda } from './runtime.js';
export { DisposedError, CudaUnavailableError, NativeLoadError } from './errors.js';
export type { DType, Device, ArrayFor, TensorData, TensorOptions, CreateOptions, DeviceMemory, BuildInfo } from './types.js';
export * from './group_advantages.js';
export * from './token_logprobs.js';
export * from './policy_loss.js';
export * from './kl_penalty.js';
