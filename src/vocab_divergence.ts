// Vocabulary divergences for distillation (DESIGN 3.5): per row, a divergence
// between the teacher's and the student's softmax over the vocabulary, and its
// gradient with respect to the student's (and optionally the teacher's) logits.
import {
  checkBoolean,
  checkDTypeOf,
  checkEnum,
  checkNumber,
  checkOptionalTensor,
  checkOptions,
  checkSameDevice,
  checkShapeEquals,
  checkTensor,
  rangeError,
} from './checks.js';
import { native, type NativeTensor } from './native.js';
import { Tensor } from './tensor.js';
import { FLOAT_DTYPES, type DType } from './types.js';

/** Which divergence `vocabDivergence` computes. */
export type DivergenceKind = 'forward-kl' | 'reverse-kl' | 'jsd';

const KINDS: readonly DivergenceKind[] = ['forward-kl', 'reverse-kl', 'jsd'];
const KIND_CODES: Readonly<Record<DivergenceKind, number>> = { 'forward-kl': 0, 'reverse-kl': 1, jsd: 2 };
const DEFAULT_BETA = 0.5;
const DEFAULT_TEMPERATURE = 1;
const DEFAULT_IGNORE_INDEX = -100;
const DEFAULT_TEACHER_GRAD = false;
const DEFAULT_GRAD = true;

export interface VocabDivergenceOptions {
  /**
   * `'forward-kl'`: KL(teacher || student) = sum p_t (log p_t - log p_s).
   * `'reverse-kl'`: KL(student || teacher).
   * `'jsd'`: generalised Jensen-Shannon divergence with weight `beta`, as TRL's
   * `generalized_jsd_loss` and Liger's JSD compute it:
   * `M = beta p_t + (1 - beta) p_s`, value `beta KL(p_t || M) + (1 - beta) KL(p_s || M)`;
   * as there, `beta = 0` gives forward KL and `beta = 1` reverse KL.
   * Required.
   */
  kind: DivergenceKind;
  /** JSD weight in [0, 1] (ignored by the KL kinds, but still checked). Defaults to `0.5`. */
  beta?: number;
  /** Both distributions are `softmax(logits / temperature)`; must be > 0. Defaults to `1`. */
  temperature?: number;
  /** uint8 `[...]` (the logits' leading dimensions): rows where it is 0 give 0 and a zero gradient. */
  mask?: Tensor;
  /**
   * int32 or int64 `[...]` (the logits' leading dimensions), used only to ignore rows: rows whose
   * target equals `ignoreIndex` give 0 and a zero gradient (other values are not read).
   */
  targets?: Tensor;
  /** The target value that marks an ignored row (with `targets`). Defaults to `-100`. */
  ignoreIndex?: number;
  /** Also return the gradient with respect to the teacher's logits. Defaults to `false`. */
  teacherGrad?: boolean;
  /**
   * `false`: the values alone (an evaluation or a logged metric): no gradient is allocated or computed, which
   * saves the gradient pass and writing a tensor the size of the logits; `teacherGrad` must then be `false`.
   * Defaults to `true`.
   */
  grad?: boolean;
}

/** What `vocabDivergence` returns with `grad: false`. */
export interface VocabDivergenceValues {
  /** float32 `[...]` (the logits' leading dimensions): each row's divergence; 0 where ignored. */
  values: Tensor;
}

export interface VocabDivergenceResult {
  /** float32 `[...]` (the logits' leading dimensions): each row's divergence; 0 where ignored. */
  values: Tensor;
  /** d values[row] / d studentLogits[row, j], in the student logits' dtype (includes the 1/T factor); 0 in ignored rows. */
  gradStudent: Tensor;
  /** With `teacherGrad`: d values[row] / d teacherLogits[row, j], in the teacher logits' dtype. */
  gradTeacher?: Tensor;
}

interface VocabDivergenceNative {
  vocabDivergence(
    student: NativeTensor,
    teacher: NativeTensor,
    mask: NativeTensor | null,
    targets: NativeTensor | null,
    kind: number,
    beta: number,
    invTemperature: number,
    ignoreIndex: number,
    teacherGrad: boolean,
    grad: boolean,
  ): { values: NativeTensor; gradStudent?: NativeTensor; gradTeacher?: NativeTensor };
}

const OPTION_KEYS = ['kind', 'beta', 'temperature', 'mask', 'targets', 'ignoreIndex', 'teacherGrad', 'grad'] as const;

/**
 * Per-row divergence between `softmax(teacherLogits / T)` and `softmax(studentLogits / T)` over the last
 * dimension, with its gradient. Student and teacher may have different float dtypes (float32, bfloat16,
 * float16) but must have the same shape and device. Nothing the size of the logits is materialised beyond
 * the gradients; fp32 accumulation; deterministic.
 *
 * @throws TypeError for a non-tensor, a wrong dtype or device, an unknown option or an option of the wrong type.
 * @throws RangeError for mismatched shapes, an empty last dimension, an unknown `kind`, `beta` outside [0, 1],
 *   `temperature` <= 0 or not finite, a non-integer `ignoreIndex`.
 * @throws DisposedError for a disposed tensor.
 */
export function vocabDivergence(studentLogits: Tensor, teacherLogits: Tensor, options: VocabDivergenceOptions & { grad: false }): VocabDivergenceValues;
export function vocabDivergence(studentLogits: Tensor, teacherLogits: Tensor, options: Omit<VocabDivergenceOptions, 'grad'> & { grad?: true }): VocabDivergenceResult;
export function vocabDivergence(
  studentLogits: Tensor,
  teacherLogits: Tensor,
  options: VocabDivergenceOptions,
): VocabDivergenceResult | VocabDivergenceValues;
export function vocabDivergence(
  studentLogits: Tensor,
  teacherLogits: Tensor,
  options: VocabDivergenceOptions,
): VocabDivergenceResult | VocabDivergenceValues {
  const fn = 'vocabDivergence';
  const student = checkTensor(fn, 'studentLogits', studentLogits);
  const teacher = checkTensor(fn, 'teacherLogits', teacherLogits);
  if (options === undefined) throw new TypeError(`${fn}: options must be an object with a kind, got undefined`);
  const o = checkOptions(fn, options, OPTION_KEYS);
  const kind = checkEnum(fn, 'kind', o.kind, KINDS);
  const beta = o.beta === undefined ? DEFAULT_BETA : checkNumber(fn, 'beta', o.beta, { min: 0, max: 1 });
  const temperature = o.temperature === undefined ? DEFAULT_TEMPERATURE : checkNumber(fn, 'temperature', o.temperature, { greaterThan: 0 });
  const invTemperature = 1 / temperature;
  if (!Number.isFinite(Math.fround(invTemperature)) || Math.fround(invTemperature) === 0) {
    throw rangeError(fn, `temperature must give a finite float32 1/temperature, got ${temperature}`);
  }
  const ignoreIndex =
    o.ignoreIndex === undefined
      ? DEFAULT_IGNORE_INDEX
      : checkNumber(fn, 'ignoreIndex', o.ignoreIndex, { integer: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
  const teacherGrad = o.teacherGrad === undefined ? DEFAULT_TEACHER_GRAD : checkBoolean(fn, 'teacherGrad', o.teacherGrad);
  const grad = o.grad === undefined ? DEFAULT_GRAD : checkBoolean(fn, 'grad', o.grad);
  if (teacherGrad && !grad) throw rangeError(fn, 'teacherGrad must be false when grad is false, got true');
  const mask = checkOptionalTensor(fn, 'mask', o.mask);
  const targets = checkOptionalTensor(fn, 'targets', o.targets);

  checkDTypeOf(fn, 'studentLogits', student, FLOAT_DTYPES);
  checkDTypeOf(fn, 'teacherLogits', teacher, FLOAT_DTYPES);
  if (student.shape.length < 1) throw rangeError(fn, `studentLogits must have at least 1 dimension, got shape []`);
  checkShapeEquals(fn, 'teacherLogits', teacher, student.shape);
  const vocab = student.shape[student.shape.length - 1];
  if (vocab < 1) throw rangeError(fn, `studentLogits must have a last dimension >= 1, got shape [${student.shape.join(', ')}]`);
  const rowShape = student.shape.slice(0, -1);
  checkSameDevice(fn, ['studentLogits', student], ['teacherLogits', teacher], ['mask', mask], ['targets', targets]);
  if (mask) {
    checkDTypeOf(fn, 'mask', mask, ['uint8'] as DType[]);
    checkShapeEquals(fn, 'mask', mask, rowShape);
  }
  if (targets) {
    checkDTypeOf(fn, 'targets', targets, ['int32', 'int64'] as DType[]);
    checkShapeEquals(fn, 'targets', targets, rowShape);
  }

  const n = native as unknown as VocabDivergenceNative;
  const out = n.vocabDivergence(
    student.handle(fn, 'studentLogits'),
    teacher.handle(fn, 'teacherLogits'),
    mask ? mask.handle(fn, 'mask') : null,
    targets ? targets.handle(fn, 'targets') : null,
    KIND_CODES[kind],
    beta,
    invTemperature,
    ignoreIndex,
    teacherGrad,
    grad,
  );
  if (!out.gradStudent) return { values: new Tensor(out.values) };
  // The gradients have the logits' shapes and dtypes (values: the row shape, its own wrapper).
  const result: VocabDivergenceResult = { values: new Tensor(out.values), gradStudent: new Tensor(out.gradStudent, student, student.dtype) };
  if (out.gradTeacher) result.gradTeacher = new Tensor(out.gradTeacher, teacher, teacher.dtype);
  return result;
}
