// Data-parallel mode of train.mjs (`--world-size N`), on rlkernels/torch's
// torch.distributed (Gloo over a TCPStore on the loopback).
//
// The launcher (the process the user started) spawns N ranks of the same
// script with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), forwards rank 0's output and exits with the first failure
// (killing the other ranks). A script started by torchrun-like tooling with
// that environment already set is a rank itself.
//
// Each rank samples the whole batch (the policy is the same on every rank,
// and so is torch's generator: the rollouts are identical, which is what
// makes the reward curve that of one process), then trains on its own rows:
// cross-rank group advantages (groups may straddle ranks), the policy loss
// with the global token and sequence counts and dpSize = N, and gradients
// averaged over the ranks before the optimizer step.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import * as torch from 'rlkernels/torch';

const D = torch.distributed;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Spawns `world` ranks of `script` with `argv`; resolves with the exit code. */
async function launch(script, argv, world) {
  const port = await freePort();
  const children = [];
  const killAll = () => children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'));
  process.on('SIGINT', () => { killAll(); process.exit(130); });
  const codes = await Promise.all(Array.from({ length: world }, (_, rank) => new Promise((resolve) => {
    const c = spawn(process.execPath, [script, ...argv], {
      env: { ...process.env, RANK: String(rank), WORLD_SIZE: String(world), LOCAL_RANK: String(rank), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) },
      stdio: ['ignore', rank === 0 ? 'inherit' : 'ignore', 'inherit'],
    });
    children.push(c);
    c.on('close', (code) => {
      if (code !== 0) killAll();
      resolve(code ?? 1);
    });
  })));
  return codes.find((c) => c !== 0) ?? 0;
}

/**
 * The data-parallel context of this process for `worldSize` (the --world-size option): `{ launcher: exitCode }`
 * in the process that spawned the ranks (it has nothing more to do), else the rank's hooks (identity hooks for
 * one process).
 */
export async function setupDataParallel(worldSize, script, argv) {
  const envWorld = Number(process.env.WORLD_SIZE ?? 0);
  if (!(worldSize > 1) && !(envWorld > 1)) return single();
  if (process.env.RANK === undefined) return { launcher: await launch(script, argv, worldSize) };
  await D.init({ backend: 'gloo', timeoutMs: 120_000 });
  return ranked(D.rank(), D.worldSize());
}

function single() {
  return {
    rank: 0, world: 1,
    rows: (B) => [0, B],
    local: (t) => t,
    groupAdvantages: async (rewards, { numRows, ...opts }) => torch.groupAdvantages(rewards, opts),
    policyLoss: async (inputs, opts) => torch.policyLoss(inputs, opts),
    reduceGradients: async () => {},
    finish: async () => {},
  };
}

function ranked(rank, world) {
  let lo = 0, hi = 0;
  return {
    rank, world,
    /** This rank's rows [lo, hi) of a batch of B (contiguous, as even as B allows). */
    rows(B) {
      ({ start: lo, end: hi } = D.vocabShard(B, rank, world));
      return [lo, hi];
    },
    /** This rank's rows of a [B, ...] tensor (a view). */
    local: (t) => torch.slice(t, 0, lo, hi),
    /** Advantages of this rank's rows: groups numbered globally (row / groupSize), combined across ranks. */
    async groupAdvantages(rewards, opts) {
      const n = hi - lo;
      const groupIds = torch.tensor(Int32Array.from({ length: n }, (_, i) => Math.floor((lo + i) / opts.groupSize)), { dtype: 'int32' });
      const numGroups = Math.ceil(opts.numRows / opts.groupSize);
      const { groupSize, numRows, ...rest } = opts;
      const local = { ...rest, groupIds, numGroups };
      if (rest.taskIds) local.taskIds = torch.slice(rest.taskIds, 0, lo, hi).contiguous();
      return D.groupAdvantages(torch.slice(rewards, 0, lo, hi).contiguous(), local);
    },
    policyLoss: (inputs, opts) => D.policyLoss(inputs, opts),
    reduceGradients: (params) => D.allReduceGradients(params),
    finish: () => D.destroy(),
  };
}
