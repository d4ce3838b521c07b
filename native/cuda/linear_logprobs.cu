// CUDA side of the fused linear log-probs: not built yet; the launchers say so.
#include "rlk/linear_logprobs.h"

namespace rlk::cuda {
const char* LinearLogprobsCudaStatus() { return "the CUDA linear log-probs are not built yet"; }
Status LinearLogprobsFwd(const LinearLogprobsFwdParams&) {
  return Status{Status::kUnsupported, "the CUDA linear log-probs are not built yet (use CPU tensors)"};
}
Status LinearLogprobsBwd(const LinearLogprobsBwdParams&) {
  return Status{Status::kUnsupported, "the CUDA linear log-probs are not built yet (use CPU tensors)"};
}
}  // namespace rlk::cuda
