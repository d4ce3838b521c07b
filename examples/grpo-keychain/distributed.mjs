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
    rows: (mb) => [0, mb],
    groupAdvantages: async (rewards, opts) => torch.groupAdvantages(rewards, opts),
    policyLoss: async (inputs, opts) => torch.policyLoss(inputs, opts),
    reduceGradients: async () => {},
    finish: async () => {},
  };
}

function ranked(rank, world) {
  return {
    rank, world,
    /** This rank's rows [lo, hi) of each mini-batch of mb rows (contiguous, as even as mb allows). */
    rows(mb) {
      const { start, end } = D.vocabShard(mb, rank, world);
      return [start, end];
    },
    /**
     * Advantages of this rank's rows (rows [k mb + lo, k mb + hi) of each mini-batch k, in that order) from the
     * whole batch's `rewards` [B]: groups numbered globally (row / groupSize), their statistics combined across ranks.
     */
    async groupAdvantages(rewards, opts, { mb, lo, hi }) {
      const B = rewards.shape[0];
      const mine = [];
      for (let k = 0; k * mb < B; k++) for (let i = lo; i < hi; i++) mine.push(k * mb + i);
      const index = torch.tensor(BigInt64Array.from(mine.map(BigInt)));
      const { groupSize, ...rest } = opts;
      const local = { ...rest, groupIds: torch.tensor(Int32Array.from(mine, (i) => Math.floor(i / groupSize)), { dtype: 'int32' }), numGroups: B / groupSize };
      if (rest.taskIds) local.taskIds = torch.indexRows(rest.taskIds, index);
      return D.groupAdvantages(torch.indexRows(rewards, index), local);
    },
    policyLoss: (inputs, opts) => D.policyLoss(inputs, opts),
    reduceGradients: (params) => D.allReduceGradients(params),
    finish: () => D.destroy(),
  };
}
