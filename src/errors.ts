/** Thrown on any use of a tensor after `dispose()`. */
export class DisposedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DisposedError';
  }
}

/** Thrown when `cuda` is asked for and no usable GPU is found: says what was found and what is needed. */
export class CudaUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CudaUnavailableError';
  }
}

/** Thrown when no native binary can be loaded: lists what was tried and how to fix it. */
export class NativeLoadError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NativeLoadError';
  }
}
