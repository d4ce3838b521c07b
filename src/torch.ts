// The libtorch bridge (`rlkernels/torch`): a second addon, built only where
// libtorch is found, running the same kernels on at::Tensors. This entry
// point loads it by path (node-gyp-build would pick the core addon instead)
// and says how to build it when it is missing.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { NativeLoadError } from './errors.js';
import { PACKAGE_ROOT } from './native.js';

const require = createRequire(import.meta.url);
const BRIDGE_PATH = join(PACKAGE_ROOT, 'build-torch', 'Release', 'rlkernels_torch.node');

/** True when the libtorch bridge binary is present. */
export function isAvailable(): boolean {
  return existsSync(BRIDGE_PATH);
}

/**
 * Loads the libtorch bridge.
 * @throws NativeLoadError when it was not built, saying how to build it.
 */
export function load(): unknown {
  if (!isAvailable()) {
    throw new NativeLoadError(
      `rlkernels/torch: the libtorch bridge is not built (looked for ${BRIDGE_PATH}). ` +
        `It is not part of the prebuilt package yet; the core API ('rlkernels') runs without it.`,
    );
  }
  return require(BRIDGE_PATH);
}
