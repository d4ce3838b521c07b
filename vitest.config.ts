import { defineConfig } from 'vitest/config';

// Native addons are safest in forked workers; two match the CI machine's cores.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // The GC-backstop test needs global.gc.
    execArgv: ['--expose-gc'],
    // Every new tensor starts as 0xFF bytes (NaN): unwritten outputs fail (native/addon/tensor.cc).
    env: { RLK_POISON_ALLOC: '1' },
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
