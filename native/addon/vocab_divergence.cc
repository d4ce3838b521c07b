// Binding of vocabDivergence: check every argument (all before anything is
// allocated or written), allocate the outputs, then run the CPU kernel
// synchronously or queue the CUDA kernels on the device's stream.
//
// native.vocabDivergence(student, teacher, mask | null, targets | null, kind,
//                        beta, invTemperature, ignoreIndex, teacherGrad, grad?)
//   -> { values, gradStudent?, gradTeacher? }
// grad (default true) false: the values alone, no gradient allocated or
// computed (then teacherGrad must be false).
#include <napi.h>

#include <string>
#include <vector>

#include "checks.h"
#include "rlk/runtime.h"
#include "rlk/vocab_divergence.h"
#include "tensor.h"

namespace rlk::addon {
namespace {

Napi::Value VocabDivergenceBinding(const Napi::CallbackInfo& info) {
  const char* fn = "vocabDivergence";
  Napi::Env env = info.Env();
  Tensor* student = TensorArg(info, 0, fn, "studentLogits");
  Tensor* teacher = TensorArg(info, 1, fn, "teacherLogits");
  Tensor* mask = OptionalTensorArg(info, 2, fn, "mask");
  Tensor* targets = OptionalTensorArg(info, 3, fn, "targets");
  const int64_t kind = IntegerArg(info, 4, fn, "kind", 0, 2);
  const double beta = NumberArg(info, 5, fn, "beta");
  const double inv_t = NumberArg(info, 6, fn, "invTemperature");
  const int64_t ignore_index = IntegerArg(info, 7, fn, "ignoreIndex", -9007199254740991LL, 9007199254740991LL);
  const bool teacher_grad = BoolArg(info, 8, fn, "teacherGrad");
  const bool grad = info.Length() > 9 && !info[9].IsUndefined() ? BoolArg(info, 9, fn, "grad") : true;

  RequireDType(env, student, {DType::kFloat32, DType::kBFloat16, DType::kFloat16}, fn, "studentLogits");
  RequireDType(env, teacher, {DType::kFloat32, DType::kBFloat16, DType::kFloat16}, fn, "teacherLogits");
  RequireMinDim(env, student, 1, fn, "studentLogits");
  RequireShape(env, teacher, student->shape(), fn, "teacherLogits");
  RequireDevice(env, teacher, student->device(), fn, "teacherLogits", "studentLogits");
  const int64_t vocab = student->size(-1);
  if (vocab < 1) ThrowRangeError(env, std::string(fn) + ": studentLogits must have a last dimension >= 1, got shape " + ShapeString(student->shape()));
  std::vector<int64_t> row_shape(student->shape().begin(), student->shape().end() - 1);
  const int64_t rows = student->numel() / vocab;
  if (mask) {
    RequireDType(env, mask, {DType::kUInt8}, fn, "mask");
    RequireShape(env, mask, row_shape, fn, "mask");
    RequireDevice(env, mask, student->device(), fn, "mask", "studentLogits");
  }
  if (targets) {
    RequireDType(env, targets, {DType::kInt32, DType::kInt64}, fn, "targets");
    RequireShape(env, targets, row_shape, fn, "targets");
    RequireDevice(env, targets, student->device(), fn, "targets", "studentLogits");
  }
  if (!(beta >= 0.0 && beta <= 1.0))
    ThrowRangeError(env, std::string(fn) + ": beta must be in [0, 1], got " + Describe(info[5]));
  if (!(inv_t > 0.0) || !std::isfinite(float(inv_t)))
    ThrowRangeError(env, std::string(fn) + ": invTemperature must be a finite number > 0, got " + Describe(info[6]));
  if (teacher_grad && !grad) ThrowRangeError(env, std::string(fn) + ": teacherGrad must be false when grad is false, got true");

  const int device = student->device();
#if !RLK_WITH_CUDA
  if (device != kCpu)
    ThrowTypeError(env, std::string(fn) + ": this build has no CUDA kernels; studentLogits is on " + DeviceName(device));
#endif
  auto values = AllocStorage(env, fn, size_t(rows) * sizeof(float), device);
  std::shared_ptr<Storage> grad_s;
  if (grad) grad_s = AllocStorage(env, fn, student->nbytes(), device);
  std::shared_ptr<Storage> grad_t;
  if (teacher_grad) grad_t = AllocStorage(env, fn, teacher->nbytes(), device);

  VocabDivergenceParams p;
  p.student = student->data();
  p.teacher = teacher->data();
  p.mask = mask ? static_cast<const uint8_t*>(mask->data()) : nullptr;
  p.targets = targets ? targets->data() : nullptr;
  p.targets_dtype = targets ? targets->dtype() : DType::kInt64;
  p.values = static_cast<float*>(values->data);
  p.grad_student = grad_s ? grad_s->data : nullptr;
  p.grad_teacher = grad_t ? grad_t->data : nullptr;
  p.student_dtype = student->dtype();
  p.teacher_dtype = teacher->dtype();
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  p.kind = DivergenceKind(kind);
  p.beta = float(beta);
  p.inv_temperature = float(inv_t);
  p.inv_temperature_lo = float(inv_t - double(p.inv_temperature));
  p.device = device < 0 ? 0 : device;
  if (device == kCpu) {
    ThrowIfError(env, cpu::VocabDivergence(p), fn);
  } else {
#if RLK_WITH_CUDA
    ThrowIfError(env, DeviceStream(device, &p.stream), fn);
    ThrowIfError(env, cuda::VocabDivergence(p), fn);
#endif
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("values", Tensor::Wrap(env, values, row_shape, DType::kFloat32));
  if (grad_s) out.Set("gradStudent", Tensor::Wrap(env, grad_s, student->shape(), student->dtype()));
  if (grad_t) out.Set("gradTeacher", Tensor::Wrap(env, grad_t, teacher->shape(), teacher->dtype()));
  return out;
}

}  // namespace

void InitVocabDivergence(Napi::Env env, Napi::Object exports) {
  exports.Set("vocabDivergence", Napi::Function::New(env, VocabDivergenceBinding, "vocabDivergence"));
}

}  // namespace rlk::addon
