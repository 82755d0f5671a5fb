"""The teacher pool: frozen copies of peers' students that the train step reads.

A `TeacherPool` holds the group's teachers in *slots*. Each slot is a frozen
model of the student's architecture (a clone, or `teacher_builder()`), with
a second buffer when teachers are reloaded in the background; how many slots
there are and which peer each holds is decided by a `peer_selection` rule
(today's "every peer" has one slot per peer). The pool is a Keras layer of
the `CodistillModel`, so its teachers are created in the strategy scope
(mirrored like the student), checkpointed by `BackupAndRestore` with the rest
of the model, and never trainable.

What each slot holds is data, in three small variables: the checkpoint step
(`teacher_steps`, -1 for none), the peer it came from (`teacher_peers`) and
the buffer in use (`active_buffer`). Loading a teacher changes values, never
the graph, so the train function is not retraced. The step reads them in
`peer_weights` and `logits`; between steps `switch` changes them, and the
host keeps a copy so that it needs no device read to know what is loaded.

Filling the slots (finding, validating and writing peers' checkpoints) is the
exchange client's job (`exchange_client.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Optional
from typing import Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import distribute
from tf_codistill import errors

__all__ = [
    "NONFINITE",
    "ReloadOutcome",
    "TEACHER_DTYPES",
    "TeacherPool",
    "build_like",
    "carried_state",
    "check_logits",
    "check_student",
    "check_teacher_dtype",
    "resolve_builder",
    "resolve_distill_output",
    "select_output",
]

# The precisions a teacher may run in besides the student's own (None).
TEACHER_DTYPES = ("bfloat16", "float16")

# The metric counting batches on which a teacher predicted NaN or Inf.
NONFINITE = "nonfinite_teacher_batches"


@dataclasses.dataclass(frozen=True)
class ReloadOutcome:
    """What happened to one teacher slot's peer at one reload.

    Attributes:
      peer: the peer group index.
      status: `loaded` (new checkpoint now in the teacher), `unchanged` (the
        teacher already holds the peer's latest), `no_checkpoint` (the peer has
        not published yet), `failed` (see `reason`; the previous teacher, if
        any, is kept), or `left_out` (the peer's latest checkpoint was refused
        before; waiting for its next one).
      step: the step of the checkpoint concerned (-1 if none).
      staleness: own step minus `step` at the reload (None if no checkpoint).
      reason: why a reload failed.
      seconds: time spent restoring.
    """

    peer: int
    status: str
    step: int = -1
    staleness: Optional[int] = None
    reason: str = ""
    seconds: float = 0.0


class _PerSlotCount(keras.metrics.Metric):
    """Sums a `[num_slots]` vector over steps; reports the total over slots."""

    def __init__(self, num_slots: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.counts = self.add_weight(
            name="counts", shape=(num_slots,), initializer="zeros", dtype=tf.float32
        )

    def update_state(self, values, sample_weight=None):
        del sample_weight
        self.counts.assign_add(tf.cast(values, tf.float32))

    def result(self):
        return tf.reduce_sum(self.counts)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))


def _is_graph_network(model: keras.Model) -> bool:
    """Whether `model` is Sequential or functional, which `clone_model` can copy.

    tf_keras has no public test for a functional model; `_is_graph_network`
    is the attribute `clone_model` itself checks (tests/test_teachers.py fails
    if it goes away).
    """
    return isinstance(model, keras.Sequential) or bool(getattr(model, "_is_graph_network", False))


def _zeros_like_spec(spec: tf.TensorSpec) -> tf.Tensor:
    shape = [1 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def build_like(model: keras.Model, student: keras.Model) -> None:
    """Creates `model`'s variables by calling it on zeros shaped like the student's input.

    Raises:
      errors.ConfigError: `model` is unbuilt and the student's input shape is unknown.
    """
    if model.built and model.weights:
        return
    spec = student.save_spec(dynamic_batch=True)
    if spec is None:
        raise errors.ConfigError(
            "teacher_builder returned an unbuilt model and the student's input shape is "
            "unknown; build both (call them on a batch) before wrapping the student"
        )
    args, kwargs = tf.nest.map_structure(
        lambda s: _zeros_like_spec(s) if isinstance(s, tf.TensorSpec) else s, spec
    )
    model(*args, **kwargs, training=False)


def check_student(student) -> None:
    """Raises unless `student` is a built tf_keras model (what a group trains).

    Raises:
      errors.ConfigTypeError: not a `tf_keras.Model` (a Keras 3 model, say).
      errors.ConfigError: a model without variables yet.
    """
    if not isinstance(student, keras.Model):
        raise errors.ConfigTypeError(
            f"student must be a tf_keras.Model (import tf_keras as keras), got "
            f"{type(student).__module__}.{type(student).__name__}"
        )
    if not (student.built and student.weights):
        raise errors.ConfigError(
            f"student {student.name!r} has no variables yet; give it an input shape "
            "(keras.Input) or call it on a batch before wrapping it"
        )


def check_teacher_dtype(teacher_dtype) -> Optional[str]:
    """`teacher_dtype` as a dtype name: None, "bfloat16" or "float16".

    Raises:
      errors.ConfigError: any other value.
    """
    if teacher_dtype is None:
        return None
    name = getattr(teacher_dtype, "name", teacher_dtype)
    if name not in TEACHER_DTYPES:
        raise errors.ConfigError(
            f"teacher_dtype must be None (the student's precision), 'bfloat16' or 'float16', "
            f"got {teacher_dtype!r}"
        )
    return name


OutputChoice = Union[None, int, str]


def resolve_distill_output(student: keras.Model, distill_output: OutputChoice) -> OutputChoice:
    """Which of the student's outputs psi reads; checked now when the model says.

    For a functional or Sequential student the outputs are known at
    construction: several outputs need `distill_output` (a name of
    `student.output_names`, or an index), and the chosen output must be
    logits, not probabilities. A subclassed student is checked when its step
    is traced (`select_output`, `check_logits`).

    Returns:
      None (the single output), an index, or a key of a subclassed model's
      dict of outputs.

    Raises:
      errors.ConfigError: several outputs and no choice, an unknown output,
        or a softmax/sigmoid output.
      errors.ConfigTypeError: `distill_output` is neither a name nor an index.
    """
    if distill_output is not None and (
        isinstance(distill_output, bool) or not isinstance(distill_output, (int, str))
    ):
        raise errors.ConfigTypeError(
            f"distill_output must be an output's name or index, got {distill_output!r}"
        )
    if not _is_graph_network(student):
        _trace_output(student, distill_output)
        return distill_output
    names = list(student.output_names)
    if distill_output is None:
        if len(names) > 1:
            raise errors.ConfigError(
                f"student {student.name!r} has {len(names)} outputs {names}: name the one "
                f"to distill, e.g. distill_output={names[0]!r} (it must be logits)"
            )
        index = 0
    elif isinstance(distill_output, str):
        if distill_output not in names:
            raise errors.ConfigError(
                f"distill_output={distill_output!r} is not an output of student "
                f"{student.name!r}; its outputs are {names}"
            )
        index = names.index(distill_output)
    else:
        if not 0 <= distill_output < len(names):
            raise errors.ConfigError(
                f"distill_output={distill_output} is out of range: student {student.name!r} "
                f"has {len(names)} output(s) {names}"
            )
        index = distill_output
    try:
        layer = student.get_layer(names[index])
    except ValueError:  # An output not named after its layer: checked in the step.
        layer = None
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax) or activation in _PROBABILITIES:
        kind = "softmax" if isinstance(layer, keras.layers.Softmax) else activation.__name__
        raise errors.ConfigError(_probabilities_message(student.name, names[index], kind))
    return None if distill_output is None else index


def _trace_output(student: keras.Model, distill_output: OutputChoice) -> None:
    """Checks a subclassed student's output by tracing it once (nothing runs).

    Its outputs are known only from a trace; done here, a mistake is one
    error at construction instead of one wrapped in Keras' train function.
    Without autograph, so that the error keeps its type.
    """
    spec = student.save_spec(dynamic_batch=True)
    if spec is None:  # Never called: checked when the step is traced.
        return
    args, kwargs = spec

    def trace(*args, **kwargs):
        output = select_output(student(*args, **kwargs, training=False), distill_output)
        check_logits(output, student.name)
        return output

    tf.function(trace, autograph=False).get_concrete_function(*args, **kwargs)


# Activations whose outputs are probabilities, not logits.
_PROBABILITIES = (keras.activations.softmax, keras.activations.sigmoid)


def _probabilities_message(model: str, output: Optional[str], kind: str) -> str:
    what = f"{model!r}'s output {output!r} is" if output else f"{model!r} outputs"
    return (
        f"student {what} {kind} probabilities, but distillation needs logits: end the "
        "model with activation=None (compile the task loss with from_logits=True), or name "
        "a logits output with distill_output="
    )


def select_output(outputs, choice: OutputChoice, model: str = "student"):
    """The output psi reads, from a model's outputs (a tensor, list or dict).

    Raises:
      errors.ConfigError: several outputs and no `choice`, or no such output.
    """
    if choice is None:
        if tf.is_tensor(outputs):
            return outputs
        raise errors.ConfigError(
            f"{model} returns several outputs "
            f"{tf.nest.map_structure(lambda t: getattr(t, 'shape', t), outputs)}: name the "
            "one to distill with distill_output= (its key or index; it must be logits)"
        )
    if isinstance(outputs, dict) and isinstance(choice, str):
        if choice not in outputs:
            raise errors.ConfigError(
                f"distill_output={choice!r} is not an output of {model}: {sorted(outputs)}"
            )
        return outputs[choice]
    flat = tf.nest.flatten(outputs)
    if isinstance(choice, str) or not 0 <= choice < len(flat):
        raise errors.ConfigError(
            f"distill_output={choice!r} does not name one of {model}'s {len(flat)} output(s)"
        )
    return flat[choice]


def check_logits(output: tf.Tensor, model: str = "student") -> None:
    """Raises if `output` comes straight from a softmax or sigmoid (probabilities).

    In a traced step: tf_keras marks the outputs of its softmax and sigmoid
    activations with their logits (`_keras_logits`, what its own losses read,
    private), and the op itself is a `Softmax` or `Sigmoid`.

    Raises:
      errors.ConfigError: naming the fix.
    """
    op = getattr(output, "op", None) if not tf.executing_eagerly() else None
    kind = op.type.lower() if op is not None and op.type in ("Softmax", "Sigmoid") else None
    if kind is None and hasattr(output, "_keras_logits"):
        kind = "softmax or sigmoid"
    if kind:
        raise errors.ConfigError(_probabilities_message(model, None, kind))


def resolve_builder(
    student: keras.Model,
    teacher_builder: Optional[Callable[[], keras.Model]],
    dtype: Optional[str] = None,
) -> Callable[[], keras.Model]:
    """The function that builds teachers (and staging copies) for `student`.

    Args:
      student: the built student.
      teacher_builder: builds a model of the student's architecture, or None
        to clone a functional/Sequential student.
      dtype: None, or "bfloat16"/"float16" (`check_teacher_dtype`): the built
        models compute *and keep their variables* in that precision (Keras
        dtype policy of that name), whatever the student's. A clone gets it
        layer by layer; a `teacher_builder` is called with it as the global
        dtype policy, so its layers must not fix their own dtype.

    Raises:
      errors.ConfigTypeError: `teacher_builder` is not callable.
      errors.ConfigError: no builder for a subclassed student, which cannot be
        cloned; or (when called) a model with layers not in `dtype`.
    """
    if teacher_builder is not None:
        if not callable(teacher_builder):
            raise errors.ConfigTypeError(
                f"teacher_builder must be callable, got {teacher_builder!r}"
            )
        return teacher_builder if dtype is None else _in_precision(teacher_builder, dtype)
    if _is_graph_network(student):

        def clone_function(layer):
            # clone_model's own default, with the layer's dtype policy replaced.
            config = layer.get_config()
            if dtype is not None and not isinstance(layer, keras.Model):
                config["dtype"] = dtype
                # A teacher's initial values are never used (a slot is used
                # only once a checkpoint was loaded into it), and some
                # initializers have no half-precision kernel (Orthogonal's QR).
                for key in config:
                    if key.endswith("_initializer"):
                        config[key] = "zeros"
            return layer.__class__.from_config(config)

        def clone():
            try:
                return keras.models.clone_model(student, clone_function=clone_function)
            except Exception as e:
                raise errors.ConfigError(
                    f"cannot clone student {student.name!r} to build teachers ({e}); "
                    "pass teacher_builder=<function returning a new model>"
                ) from e

        return clone if dtype is None else _in_precision(clone, dtype)
    raise errors.ConfigError(
        f"student {student.name!r} is a subclassed model, which cannot be cloned; "
        "pass teacher_builder=<zero-argument function returning a new model of the "
        "same architecture>"
    )


def _in_precision(build: Callable[[], keras.Model], dtype: str) -> Callable[[], keras.Model]:
    """`build` called with Keras' global dtype policy set to `dtype`, checked.

    The global policy is process-wide: models are built on the thread that
    creates the `CodistillModel`, one at a time.
    """

    def build_in_precision():
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(dtype)
        try:
            model = build()
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            raise errors.ConfigError(
                f"cannot build the teachers in {dtype} ({errors.one_line(e)}); an "
                "initializer without a kernel for it? Build them without teacher_builder "
                "(a clone), or with initializers that support it"
            ) from e
        finally:
            keras.mixed_precision.set_global_policy(previous)
        if isinstance(model, keras.Model):
            other = sorted(
                {
                    f"{layer.name} ({layer.compute_dtype})"
                    for layer in model.submodules
                    if isinstance(layer, keras.layers.Layer)
                    and not isinstance(layer, (keras.Model, keras.layers.InputLayer))
                    and layer.weights
                    and layer.compute_dtype != dtype
                }
            )
            if other:
                raise errors.ConfigError(
                    f"teacher_dtype={dtype!r}: the teacher's layers {', '.join(other[:5])} "
                    "do not compute in it (a layer created with an explicit dtype, or a "
                    "nested model clone_model keeps as it is); pass a teacher_builder whose "
                    "layers take the global dtype policy"
                )
        return model

    return build_in_precision


def carried_state(model: tf.Module) -> list:
    """The variables `model` carries from one batch to the next (not its weights).

    Those of stateful Keras RNN layers (`states`) and of any layer that
    carries its own and lists it as `state_variables` (as
    `tf_codistill.models.lstm_lm.CarriedLSTM` does).
    """
    found = []
    for module in [model, *model.submodules]:
        if not getattr(module, "stateful", False):
            continue
        if hasattr(module, "state_variables"):
            found += list(module.state_variables)
        elif isinstance(module, keras.layers.RNN) and module.states[0] is not None:
            found += list(module.states)
    return found


def _mirrored_vector(values, dtype, name: str) -> tf.Variable:
    # The same on every replica; written between steps, outside replica context.
    return tf.Variable(
        tf.constant(values, dtype),
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class TeacherPool(keras.layers.Layer):
    """The group's teacher slots, their buffers, and what each slot holds.

    Create it inside the strategy scope (the `CodistillModel` does).

    Args:
      student: the built student; teachers are built like it.
      builder: returns a new model of the student's architecture.
      slot_peers: the peer each slot is assigned at the start (its teacher is
        loaded at the first reload).
      buffers: 1, or 2 for background reloads (a teacher is written into the
        buffer not in use, then switched to).
      max_staleness_steps: a teacher older than this many steps is left out.
      distill_output: which output of a teacher psi reads
        (`resolve_distill_output`); None for a single output.
    """

    def __init__(
        self,
        student: keras.Model,
        builder: Callable[[], keras.Model],
        slot_peers: Sequence[int],
        buffers: int = 1,
        max_staleness_steps: Optional[int] = None,
        name: str = "teacher_pool",
        distill_output: OutputChoice = None,
    ):
        super().__init__(name=name, trainable=False)
        if buffers not in (1, 2):
            raise errors.ConfigError(f"buffers must be 1 or 2, got {buffers}")
        num_slots = len(slot_peers)
        self.max_staleness_steps = max_staleness_steps
        self.distill_output = distill_output
        self._strategy = tf.distribute.get_strategy()
        self._teachers = [self._make_teacher(builder, student) for _ in range(num_slots)]
        self._spare_teachers = (
            [self._make_teacher(builder, student) for _ in range(num_slots)] if buffers == 2 else []
        )
        self.active_buffer = _mirrored_vector([0] * num_slots, tf.int32, "active_teacher_buffer")
        self.teacher_steps = _mirrored_vector([-1] * num_slots, tf.int64, "teacher_steps")
        self.teacher_peers = _mirrored_vector(list(slot_peers), tf.int64, "teacher_peers")
        self.nonfinite = _PerSlotCount(num_slots, name=NONFINITE)
        # What the host reads to drop a teacher: training batches only, never
        # reset. (The metric above is reset by Keras every epoch and every
        # evaluation, and counts evaluation batches too.) Summed over replicas.
        self._nonfinite_total = self.add_weight(
            name="nonfinite_training_batches",
            shape=(num_slots,),
            initializer="zeros",
            dtype=tf.float32,
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )
        self._host: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    @staticmethod
    def _make_teacher(builder, student) -> keras.Model:
        teacher = builder()
        if not isinstance(teacher, keras.Model):
            raise errors.ConfigTypeError(
                f"teacher_builder must return a tf_keras.Model, got {type(teacher)}"
            )
        if teacher is student:
            raise errors.ConfigError("teacher_builder must return a new model, not the student")
        build_like(teacher, student)
        teacher_shapes = [tuple(w.shape) for w in teacher.weights]
        student_shapes = [tuple(w.shape) for w in student.weights]
        if teacher_shapes != student_shapes:
            raise errors.ConfigError(
                "teacher_builder built a model whose variables differ from the student's: "
                f"{teacher_shapes} vs {student_shapes}"
            )
        teacher.trainable = False
        return teacher

    @property
    def num_slots(self) -> int:
        return len(self._teachers)

    @property
    def buffers(self) -> int:
        return 2 if self._spare_teachers else 1

    def buffer(self, slot: int, index: int) -> keras.Model:
        """The teacher model of buffer `index` (0 or 1) of `slot`."""
        return self._spare_teachers[slot] if index == 1 else self._teachers[slot]

    @property
    def teachers(self) -> tuple:
        """The teacher in use in each slot."""
        active = self.active_buffer.numpy()
        return tuple(self.buffer(k, int(active[k])) for k in range(self.num_slots))

    def __dir__(self):
        # Keep the `teachers` view (it changes with the active buffers) out of
        # the walk of tf_keras' `.weights.h5` saving (see CodistillModel).
        return [name for name in super().__dir__() if name != "teachers"]

    @property
    def stateful(self) -> bool:
        return any(getattr(t, "stateful", False) for t in self._teachers + self._spare_teachers)

    def reset_states(self) -> None:
        """Resets stateful teachers (`CodistillModel.reset_states` reaches them through this)."""
        for teacher in self._teachers + self._spare_teachers:
            if getattr(teacher, "stateful", False):
                teacher.reset_states()

    @staticmethod
    def _carry_state(source: keras.Model, target: keras.Model) -> None:
        for to, value in zip(
            distribute.components(carried_state(target)),
            distribute.components(carried_state(source)),
            strict=True,
        ):
            to.assign(value)

    # In the step (graph).

    def peer_weights(self, step: tf.Tensor) -> tf.Tensor:
        """`[num_slots]` float32: 1 for slots whose teacher may be used at `step`."""
        teacher_steps = tf.convert_to_tensor(self.teacher_steps)
        available = teacher_steps >= 0
        if self.max_staleness_steps is not None:
            available = tf.logical_and(available, step - teacher_steps <= self.max_staleness_steps)
        return tf.cast(available, tf.float32)

    def staleness(self, step: tf.Tensor) -> tf.Tensor:
        """`[num_slots]` float32: `step` minus the step of each slot's checkpoint."""
        return tf.cast(step - tf.convert_to_tensor(self.teacher_steps), tf.float32)

    def targets(self, x, y_pred, peer_weights, active, distill_loss):
        """The teachers' aggregated targets for a batch, agreement, and usable slots.

        The teachers run only when `active` (inside `tf.cond`), so burn-in
        steps and steps without any available teacher cost no teacher forward
        pass; a teacher that is not available is not run either. A teacher
        whose predictions on this batch are not all finite is left out of the
        average (and counted by the caller; the group then drops it until its
        peer publishes a new checkpoint). Nothing here needs a gradient: the
        train step runs it with the tape paused, so the teachers' control flow
        (an LSTM's while loop) keeps no intermediates for a backward pass.

        Args:
          x: the batch's features.
          y_pred: the student's logits.
          peer_weights: `peer_weights(step)`.
          active: scalar bool; False skips the teachers.
          distill_loss: psi, which aggregates the teachers' predictions and
            measures agreement.

        Returns:
          targets (float32, `y_pred`'s shape), agreement (per position), and
          usable `[num_slots]` float32 (1: available with finite predictions).
        """
        point_shape = tf.shape(y_pred)[:-1] if y_pred.shape.rank > 1 else tf.shape(y_pred)

        def compute():
            teacher_logits = self.logits(x, y_pred, peer_weights)
            finite = tf.stack(
                [tf.cast(tf.reduce_all(tf.math.is_finite(t)), tf.float32) for t in teacher_logits]
            )
            usable = peer_weights * finite
            targets = distill_loss.aggregate(teacher_logits, usable)
            agreement = distill_loss.agreement(targets, y_pred)
            return tf.stop_gradient(targets), tf.reshape(agreement, point_shape), usable

        def skip():
            return (
                tf.zeros(tf.shape(y_pred), tf.float32),
                tf.zeros(point_shape, tf.float32),
                tf.zeros_like(peer_weights),
            )

        return tf.cond(active, compute, skip)

    def logits(self, x, like: tf.Tensor, peer_weights: tf.Tensor) -> list[tf.Tensor]:
        """Each slot's teacher on `x` (inference mode), zeros for a slot not in use.

        A teacher whose weight is 0 is not run (`tf.cond`).

        Args:
          x: the batch's features.
          like: the student's logits; the teachers' are cast to its dtype.
          peer_weights: `peer_weights(step)`.
        """
        return [
            tf.cond(
                peer_weights[k] > 0,
                lambda k=k: tf.cast(self._run(k, x), like.dtype),
                lambda: tf.zeros_like(like),
            )
            for k in range(self.num_slots)
        ]

    def _run(self, k: int, x):
        def run(teacher):
            return select_output(teacher(x, training=False), self.distill_output, "a teacher")

        if not self._spare_teachers:
            return run(self._teachers[k])
        return tf.cond(
            self.active_buffer[k] == 0,
            lambda: run(self._teachers[k]),
            lambda: run(self._spare_teachers[k]),
        )

    def count_nonfinite(self, values: tf.Tensor, training: bool) -> None:
        """Counts `[num_slots]` batches whose teachers predicted NaN/Inf (in the step)."""
        self.nonfinite.update_state(values)
        if training:
            self._nonfinite_total.assign_add(tf.cast(values, tf.float32))

    # Between steps (host).

    def nonfinite_training_batches(self) -> np.ndarray:
        """Per slot: training batches with a non-finite teacher, since the start.

        Never reset (not a Keras metric), and backed up with the model.
        """
        return tf.convert_to_tensor(self._nonfinite_total).numpy()

    def holding(self, refresh: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(active buffer, checkpoint step, peer) per slot, as numpy copies.

        Kept on the host, so that asking costs no device read (a sync point on
        GPU/TPU); `refresh` reads the variables again (after a restore by
        `BackupAndRestore`).
        """
        if refresh or self._host is None:
            self._host = (
                self.active_buffer.numpy(),
                self.teacher_steps.numpy(),
                self.teacher_peers.numpy(),
            )
        return tuple(a.copy() for a in self._host)

    def switch(self, slot: int, buffer: int, step: int, peer: Optional[int] = None) -> None:
        """Makes `buffer` the teacher in use in `slot`, holding `peer`'s checkpoint `step`.

        A stateful teacher switched to gets the carried state (`carried_state`)
        of the one it replaces, so it continues the same streams.

        `step=-1` takes the slot out of use. `peer=None` keeps the slot's peer.
        """
        active, steps, peers = self.holding()
        if buffer != active[slot] and self.stateful:
            # The teacher switched to continues the streams of the one in use.
            self._carry_state(self.buffer(slot, int(active[slot])), self.buffer(slot, buffer))
        active[slot], steps[slot] = buffer, step
        peer_changed = peer is not None and peer != peers[slot]
        if peer_changed:
            peers[slot] = peer
        self._host = (active, steps, peers)
        with self._strategy.scope():
            if self._spare_teachers:
                self.active_buffer.assign(
                    tf.tensor_scatter_nd_update(self.active_buffer, [[slot]], [buffer])
                )
            self.teacher_steps.assign(
                tf.tensor_scatter_nd_update(self.teacher_steps, [[slot]], [step])
            )
            if peer_changed:
                self.teacher_peers.assign(
                    tf.tensor_scatter_nd_update(self.teacher_peers, [[slot]], [peer])
                )
