// How a DLPack tensor crosses from one addon to the other (the core addon and
// the libtorch bridge are separate .node files with separate C++ runtimes'
// views of each other's types). The producer hands JS an External holding a
// DLPackCapsule, type-tagged so that no other External is mistaken for one;
// the consumer takes `managed` (a DLManagedTensor*, the unversioned DLPack
// ABI that both at::toDLPack and this package speak) and sets it to nullptr.
// The producer's finalizer calls the DLPack deleter only when nobody took it,
// so the memory is released exactly once whichever side lets go last.
#pragma once
#include <node_api.h>

#include <cstdint>

namespace rlk {

struct DLPackCapsule {
  void* managed = nullptr;  // DLManagedTensor*, owned by the capsule until taken
};

// napi type tag shared by both addons (random 128 bits).
inline const napi_type_tag kDLPackCapsuleTag = {0x7a1c5e0f93b24d61ULL, 0xb84f2c6e1d0a9357ULL};

}  // namespace rlk
