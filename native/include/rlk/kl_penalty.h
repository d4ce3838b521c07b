// KL penalties between a policy's and a reference policy's token log-probs
// (DESIGN 3.4), elementwise: the value of each token's estimator and its
// derivative with respect to the policy log-prob. Shared by the klPenalty op
// and the KL term of the policy loss (policy_loss.h), host and device.
#pragma once
#include <cstdint>

#include "rlk/common.h"

namespace rlk {

// Estimator codes; src/kl_penalty.ts maps the option names onto them.
enum KlEstimator : int32_t {
  kKlK1 = 0,        // logp - ref
  kKlAbs = 1,       // |logp - ref|
  kKlK2 = 2,        // 0.5 (logp - ref)^2
  kKlK3 = 3,        // e^x - x - 1, x = clamp(ref - logp, -20, 20), value clamped to [-10, 10]
  kKlK1Plus = 4,    // value of k1, gradient of k2 (straight-through)
  kKlK3Plus = 5,    // value of k3, gradient of k2
};
constexpr int32_t kKlNumEstimators = 6;

namespace kl_detail {
#if defined(__CUDACC__)
RLK_HD float ExpM1(float x) { return expm1f(x); }
RLK_HD double ExpM1(double x) { return ::expm1(x); }
#else
inline float ExpM1(float x) { return std::expm1(x); }
inline double ExpM1(double x) { return std::expm1(x); }
#endif

// e^x - x - 1 without cancellation. Near 0 both expm1(x) - x and e^x - x - 1
// lose the x^2/2 leading term to rounding (relative error ~ 2 eps / |x|), so
// |x| < 1 uses the Taylor series x^2 sum_{n>=2} x^(n-2)/n!, truncated after
// 1/17! (below double epsilon relative to the sum on |x| < 1); elsewhere
// expm1(x) - x loses at most ~2 bits.
template <class F>
RLK_HD F ExpMinusXMinus1(F x) {
  if (x > F(-1) && x < F(1)) {
    F p = F(2.8114572543455207e-15);                  // 1/17!
    p = p * x + F(4.7794773323873853e-14);            // 1/16!
    p = p * x + F(7.6471637318198164e-13);            // 1/15!
    p = p * x + F(1.1470745597729725e-11);            // 1/14!
    p = p * x + F(1.6059043836821613e-10);            // 1/13!
    p = p * x + F(2.0876756987868099e-09);            // 1/12!
    p = p * x + F(2.5052108385441720e-08);            // 1/11!
    p = p * x + F(2.7557319223985891e-07);            // 1/10!
    p = p * x + F(2.7557319223985893e-06);            // 1/9!
    p = p * x + F(2.4801587301587302e-05);            // 1/8!
    p = p * x + F(1.9841269841269841e-04);            // 1/7!
    p = p * x + F(1.3888888888888889e-03);            // 1/6!
    p = p * x + F(8.3333333333333333e-03);            // 1/5!
    p = p * x + F(4.1666666666666667e-02);            // 1/4!
    p = p * x + F(1.6666666666666667e-01);            // 1/3!
    p = p * x + F(0.5);                               // 1/2!
    return x * x * p;
  }
  return ExpM1(x) - x;
}
}  // namespace kl_detail

// Value and d value / d logp of one token's estimator. `d` is logp - ref,
// computed by the caller in F (exact in double for float inputs). The
// gradients follow torch's autograd of verl's kl_penalty_forward: clamp
// passes the gradient where its input lies within the bounds (inclusive) and
// zero outside; |x| has gradient 0 at 0.
template <class F>
RLK_HD void KlValueGrad(int32_t estimator, F d, F* value, F* grad) {
  switch (estimator) {
    case kKlK1: *value = d; *grad = F(1); return;
    case kKlAbs: *value = d < F(0) ? -d : d; *grad = d > F(0) ? F(1) : (d < F(0) ? F(-1) : F(0)); return;
    case kKlK2: *value = F(0.5) * d * d; *grad = d; return;
    case kKlK1Plus: *value = d; *grad = d; return;
    default: break;  // k3, k3+
  }
  F x = -d;  // ref - logp
  bool x_clamped = x < F(-20) || x > F(20);
  x = x < F(-20) ? F(-20) : (x > F(20) ? F(20) : x);
  F k = kl_detail::ExpMinusXMinus1(x);
  bool v_clamped = k > F(10);  // k >= 0: the lower clamp at -10 never acts
  *value = v_clamped ? F(10) : k;
  if (estimator == kKlK3Plus) {
    *grad = d;
  } else {
    // d/dlogp (e^x - x - 1) with x = ref - logp is -(e^x - 1).
    *grad = (x_clamped || v_clamped) ? F(0) : -kl_detail::ExpM1(x);
  }
}

// klPenalty op: values and gradient of every element, zero where masked.
struct KlPenaltyParams {
  const float* logprobs;      // [n]
  const float* ref_logprobs;  // [n]
  const uint8_t* mask;        // [n], nullptr: every element counts
  float* values;              // [n]
  float* grad;                // [n]
  int64_t n;
  int32_t estimator;          // KlEstimator
  int32_t device;             // CUDA ordinal (CUDA only)
  void* stream;               // cudaStream_t (CUDA only)
};

namespace cpu {
Status KlPenalty(const KlPenaltyParams& p);
}  // namespace cpu
namespace cuda {
Status KlPenalty(const KlPenaltyParams& p);
}  // namespace cuda

}  // namespace rlk
