// CPU klPenalty: elementwise, in double (the difference logp - ref of two
// floats is exact in double, and e^x - x - 1 near 0 goes through the series
// of kl_penalty.h), written as float. Threads over fixed slices; each
// element is independent, so the result does not depend on the thread count.
#include "rlk/kl_penalty.h"
#include "rlk/runtime.h"

namespace rlk::cpu {

Status KlPenalty(const KlPenaltyParams& p) {
  if (p.estimator < 0 || p.estimator >= kKlNumEstimators)
    return Status{Status::kInvalidArgument, "unknown KL estimator code"};
  ParallelFor(p.n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (p.mask && !p.mask[i]) {
        p.values[i] = 0.f;
        p.grad[i] = 0.f;
        continue;
      }
      double v, g;
      KlValueGrad<double>(p.estimator, double(p.logprobs[i]) - double(p.ref_logprobs[i]), &v, &g);
      p.values[i] = float(v);
      p.grad[i] = float(g);
    }
  });
  return Status::Ok();
}

}  // namespace rlk::cpu
