import { existsSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// Without a GPU, the CUDA tests run on the emulated device of the test build
// (native/sim, `npm run build:sim`): RLK_CUDA_SIM=1 makes src/native.ts load it.
// An explicit RLK_CUDA_SIM (0 or 1) wins.
const simBinary = 'build-sim/Release/rlkernels.node';
const useSim = process.env.RLK_CUDA_SIM ?? (existsSync(simBinary) && !existsSync('/dev/nvidiactl') ? '1' : '0');

// Native addons are safest in forked workers; two match the CI machine's cores.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // The GC-backstop test needs global.gc.
    execArgv: ['--expose-gc'],
    // Every new tensor starts as 0xFF bytes (NaN): unwritten outputs fail (native/addon/tensor.cc).
    env: { RLK_POISON_ALLOC: '1', RLK_CUDA_SIM: useSim },
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
