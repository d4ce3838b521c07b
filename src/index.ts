// The public API: tensors and runtime, then one module per kernel family.
// Named exports only, so a family's internal helpers and defaults stay private.
export { Tensor, tensor, empty, zeros, full, scope, keep, memory } from './tensor.js';
export { buildInfo, setNumThreads, getNumThreads, cuda } from './runtime.js';
export { DisposedError, CudaUnavailableError, NativeLoadError } from './errors.js';
export type { DType, Device, ArrayFor, TensorData, TensorOptions, CreateOptions, DeviceMemory, BuildInfo } from './types.js';

export { tokenLogprobs, tokenLogprobsBackward, tokenLogprobsPartials, combineTokenLogprobs, tokenLogprobsShardBackward } from './token_logprobs.js';
export type {
  Temperature,
  TokenLogprobsOptions,
  TokenLogprobsResult,
  TokenLogprobsBackwardOptions,
  TokenLogprobsPartialsOptions,
  CombineTokenLogprobsOptions,
  TokenLogprobsShardBackwardOptions,
} from './token_logprobs.js';

export { linearLogprobs, linearLogprobsBackward, linearLogprobsPartials, linearLogprobsShardBackward } from './linear_logprobs.js';
export type {
  LinearLogprobsOptions,
  LinearLogprobsResult,
  LinearLogprobsBackwardOptions,
  LinearLogprobsBackwardResult,
  LinearLogprobsPartialsOptions,
  LinearLogprobsShardBackwardOptions,
} from './linear_logprobs.js';

export { vocabDivergence } from './vocab_divergence.js';
export type { DivergenceKind, VocabDivergenceOptions, VocabDivergenceResult, VocabDivergenceValues } from './vocab_divergence.js';

export { policyLoss } from './policy_loss.js';
export type {
  PolicyLossMode,
  PolicyLossAggregation,
  RolloutCorrectionLevel,
  RolloutCorrectionMode,
  PolicyLossInputs,
  RolloutCorrectionOptions,
  RolloutCorrectionOptions2,
  RolloutIsOptions,
  RejectionCriterion,
  RejectionCriterionOptions,
  PolicyLossKlOptions,
  PolicyLossEntropyOptions,
  PolicyLossOptions,
  PolicyLossStats,
  PolicyLossResult,
} from './policy_loss.js';

export { klPenalty, KL_ESTIMATORS } from './kl_penalty.js';
export type { KlEstimator, KlPenaltyOptions, KlPenaltyResult } from './kl_penalty.js';

export {
  groupAdvantages,
  groupAdvantagesRounds,
  groupAdvantagesPartials,
  combineGroupAdvantagesPartials,
  finalizeGroupAdvantages,
  broadcastAdvantages,
  ADVANTAGE_METHODS,
  ADVANTAGE_SCALES,
} from './group_advantages.js';
export type { AdvantageMethod, AdvantageScale, GroupAdvantagesOptions, GroupAdvantagesResult } from './group_advantages.js';
