// TorchScript modules (DESIGN 7: torch.jit.load). TorchScript is deprecated in
// PyTorch 2.13; this file and native/torch/jit.cc are all that know it, so
// another saved-model format can replace it here alone.
import { existsSync } from 'node:fs';
import { checkOptions, describe, typeError } from './checks.js';
import { bridge, fromNative, TorchTensor, type NativeJitModule, type TorchDType, type TorchDevice } from './torch_tensor.js';

export interface JitLoadOptions {
  /** Where the parameters go. Defaults to where they were saved. */
  device?: TorchDevice;
}

/** A TorchScript module: `forward`, its parameters, train/eval mode, `to`, `save`. */
export class JitModule {
  #m: NativeJitModule;

  /** @internal Use `jit.load`. */
  constructor(m: NativeJitModule) {
    this.#m = m;
  }

  /**
   * Runs the module's `forward` with TorchTensors (and numbers or booleans where its signature says so).
   * Returns a TorchTensor, or an array for a tuple or list result.
   */
  forward(...args: unknown[]): TorchTensor | unknown[] {
    const a = args.map((v) => (v instanceof TorchTensor ? v.handle('forward', 'an argument') : v));
    return fromNative(this.#m.forward(a)) as TorchTensor | unknown[];
  }

  /** `[name, parameter]` pairs (leaf tensors that require grad, sharing the module's memory). */
  namedParameters(): Array<[string, TorchTensor]> {
    return this.#m.namedParameters().map(([n, t]) => [n, new TorchTensor(t)] as [string, TorchTensor]);
  }

  /** The parameters alone. */
  parameters(): TorchTensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Training mode (dropout and the like). Defaults to `true`. */
  train(mode = true): this {
    if (typeof mode !== 'boolean') throw typeError('train', `mode must be a boolean, got ${describe(mode)}`);
    this.#m.train(mode);
    return this;
  }

  eval(): this {
    this.#m.train(false);
    return this;
  }

  get training(): boolean {
    return this.#m.training;
  }

  /** Moves (and/or casts) the parameters in place; tensors from `namedParameters()` stay valid. */
  to(target: TorchDevice | { device?: TorchDevice; dtype?: TorchDType }): this {
    if (typeof target === 'string') this.#m.to(target, null);
    else {
      const o = checkOptions('to', target, ['device', 'dtype'], 'target');
      this.#m.to((o.device as string) ?? null, (o.dtype as string) ?? null);
    }
    return this;
  }

  /** Saves the module (TorchScript archive). */
  save(path: string): void {
    if (typeof path !== 'string') throw typeError('save', `path must be a string, got ${describe(path)}`);
    this.#m.save(path);
  }
}

/**
 * Loads a TorchScript module saved from Python (`torch.jit.save(torch.jit.script(model), path)`).
 * Graph-executor optimisation is off (it costs seconds per step on small models on the CPU).
 * @throws TypeError when the file is missing or is not a TorchScript archive this libtorch can load.
 */
export function load(path: string, options?: JitLoadOptions): JitModule {
  const fn = 'jit.load';
  if (typeof path !== 'string') throw typeError(fn, `path must be a string, got ${describe(path)}`);
  const o = checkOptions(fn, options, ['device']);
  if (!existsSync(path)) throw typeError(fn, `${path} does not exist`);
  const B = bridge();
  return new JitModule(new B.JitModule(path, (o.device as string) ?? null));
}
