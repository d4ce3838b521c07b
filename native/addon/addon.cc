// Module entry: tensors and runtime, then one Init per kernel family.
#include <napi.h>

#include "tensor.h"

namespace rlk::addon {
// Each family's bindings live in native/addon/<family>.cc.
void InitGroupAdvantages(Napi::Env env, Napi::Object exports);
void InitTokenLogprobs(Napi::Env env, Napi::Object exports);
void InitPolicyLoss(Napi::Env env, Napi::Object exports);
void InitKlPenalty(Napi::Env env, Napi::Object exports);
void InitVocabDivergence(Napi::Env env, Napi::Object exports);
void InitDLPack(Napi::Env env, Napi::Object exports);  // dlpack.cc: zero-copy exchange with the libtorch bridge
void InitLinearLogprobs(Napi::Env env, Napi::Object exports);
}  // namespace rlk::addon

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  rlk::addon::InitTensorBindings(env, exports);
  rlk::addon::InitGroupAdvantages(env, exports);
  rlk::addon::InitTokenLogprobs(env, exports);
  rlk::addon::InitPolicyLoss(env, exports);
  rlk::addon::InitKlPenalty(env, exports);
  rlk::addon::InitVocabDivergence(env, exports);
  rlk::addon::InitDLPack(env, exports);
  rlk::addon::InitLinearLogprobs(env, exports);
  return exports;
}

NODE_API_MODULE(rlkernels, Init)
