import { defineConfig } from 'vitest/config';

// Native addons are safest in forked workers; two match the CI machine's cores.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // The GC-backstop test needs global.gc.
    execArgv: ['--expose-gc'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
