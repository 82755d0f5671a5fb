"""`CodistillModel`: a Keras model that codistills a student with its peers.

Each group of a codistillation run wraps its own copy of the model (the
*student*) in a `CodistillModel`. The wrapper holds one frozen *teacher* per
peer group, restored from that peer's latest published checkpoint, and trains
the student on

    loss = task_loss + w(step) * psi(mean_j teacher_j(x), student(x))

where the task loss is the one given to `compile`, psi a distillation loss
(`tf_codistill.losses`), w a weight schedule (`tf_codistill.schedules`), and
the mean runs over the peers whose teachers are available. Publishing the
student and reloading teachers happen between steps, in `ExchangeCallback`,
which `fit` adds by itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import inspect
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Optional
from typing import Union

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import callbacks as callbacks_lib
from tf_codistill import distribute
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import losses
from tf_codistill import schedules

__all__ = ["CodistillModel", "ReloadOutcome", "ExchangeWriteError", "PeerMismatchError"]

# Metric names, also used by callbacks, binaries and docs.
LOSS = "loss"
TASK_LOSS = "task_loss"
DISTILL_LOSS = "distill_loss"
DISTILL_WEIGHT = "distill_weight"
TEACHER_STALENESS = "teacher_staleness"
AGREEMENT = "agreement"
NONFINITE = "nonfinite_teacher_batches"


class _PerPeerCount(keras.metrics.Metric):
    """Sums a `[num_peers]` vector over steps; reports the total over peers."""

    def __init__(self, num_peers: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.counts = self.add_weight(
            name="counts", shape=(num_peers,), initializer="zeros", dtype=tf.float32
        )

    def update_state(self, values, sample_weight=None):
        del sample_weight
        self.counts.assign_add(tf.cast(values, tf.float32))

    def result(self):
        return tf.reduce_sum(self.counts)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def per_peer(self) -> np.ndarray:
        return tf.convert_to_tensor(self.counts).numpy()


# Kept importable from here (defined in tf_codistill.errors).
PeerMismatchError = errors.PeerMismatchError
ExchangeWriteError = errors.ExchangeWriteError


@dataclasses.dataclass(frozen=True)
class ReloadOutcome:
    """What happened to one peer's teacher at one reload.

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


def _is_graph_network(model: keras.Model) -> bool:
    return isinstance(model, keras.Sequential) or bool(getattr(model, "_is_graph_network", False))


def _zeros_like_spec(spec: tf.TensorSpec) -> tf.Tensor:
    shape = [1 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def _build_like(model: keras.Model, student: keras.Model) -> None:
    """Creates `model`'s variables by calling it on zeros shaped like the student's input."""
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


class CodistillModel(keras.Model):
    """Trains `student` with a distillation term against its peers' checkpoints.

    Defaults follow Anil et al. (2018): psi is the cross-entropy to the peers'
    averaged predicted distribution, weight 1, no temperature, switched on in
    one step after `burn_in_steps` (3000, the paper's ImageNet value), and
    checkpoints exchanged every 50 steps.

    Args:
      student: a built `tf_keras.Model` returning logits (one tensor,
        `[batch, classes]`, `[batch, 1]` or `[batch, time, vocab]`). Create it
        inside the strategy scope, as you create this model.
      group_index: this group's index in `[0, num_groups)`.
      num_groups: number of groups in the run.
      exchange_dir: directory (local path or any `tf.io.gfile` URL) shared by
        all groups; this group publishes into `<exchange_dir>/group_<i>/`.
      distill_loss: a `tf_codistill.losses` name or `DistillationLoss`.
      distill_weight: a number, the weight after burn-in, or a
        `tf_codistill.schedules.DistillWeightSchedule`.
      burn_in_steps: train steps without distillation when `distill_weight` is
        a number (default 3000); must be None when it is a schedule.
      exchange_every_n_steps: publish and reload every this many train steps.
      peer_indices: groups to learn from; defaults to every other group. An
        empty sequence trains without distillation but still publishes (an
        independent baseline group).
      teacher_builder: zero-argument callable returning a new model of the
        student's architecture; needed for subclassed students, defaults to
        `tf_keras.models.clone_model(student)`.
      max_checkpoints_to_keep: published checkpoints kept on disk (>= 3
        advised so that readers do not race the cleanup).
      max_staleness_steps: if set, a teacher older than this many steps is left
        out of the average until its peer publishes again.
      background_reload: read peers' new checkpoints on a background thread
        into a second copy of each teacher and switch to it between two steps,
        so that a reload costs the train loop almost nothing (and a teacher is
        used soon after its peer publishes, not only at the next exchange).
        Doubles the teachers' memory. None (default) turns it on for
        single-process groups; multi-worker groups reload synchronously, with
        the workers agreeing on each checkpoint.
      **kwargs: passed to `tf_keras.Model`, e.g. `name`.

    Raises:
      ValueError / TypeError: for any inconsistent argument, naming it.
    """

    def __init__(
        self,
        student: keras.Model,
        *,
        group_index: int,
        num_groups: int,
        exchange_dir: str,
        distill_loss: Union[str, losses.DistillationLoss] = "softmax_cross_entropy",
        distill_weight: Union[float, schedules.DistillWeightSchedule] = 1.0,
        burn_in_steps: Optional[int] = None,
        exchange_every_n_steps: int = 50,
        peer_indices: Optional[Sequence[int]] = None,
        teacher_builder: Optional[Callable[[], keras.Model]] = None,
        max_checkpoints_to_keep: int = 5,
        max_staleness_steps: Optional[int] = None,
        background_reload: Optional[bool] = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "codistill")
        super().__init__(**kwargs)
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
        num_groups = errors.check_int("num_groups", num_groups, minimum=1)
        group_index = errors.check_int("group_index", group_index, minimum=0)
        if group_index >= num_groups:
            raise errors.ConfigError(
                f"group_index must be < num_groups={num_groups}, got {group_index}"
            )
        if peer_indices is None:
            peer_indices = [j for j in range(num_groups) if j != group_index]
        peer_indices = [errors.check_int("peer_indices entry", j, minimum=0) for j in peer_indices]
        for j in peer_indices:
            if j >= num_groups or j == group_index:
                raise errors.ConfigError(
                    f"peer_indices must name other groups in [0, {num_groups}), got {j} "
                    f"(this is group {group_index})"
                )
        if len(set(peer_indices)) != len(peer_indices):
            raise errors.ConfigError(f"peer_indices has duplicates: {peer_indices}")
        if isinstance(distill_weight, schedules.DistillWeightSchedule):
            if burn_in_steps is not None:
                raise errors.ConfigError(
                    "burn_in_steps applies to a numeric distill_weight only; "
                    f"the schedule {distill_weight!r} sets its own start"
                )
            schedule = distill_weight
        else:
            if burn_in_steps is None:
                burn_in_steps = schedules.PAPER_BURN_IN_STEPS
            schedule = schedules.get(distill_weight, burn_in_steps)
        self._exchange_every_n_steps = errors.check_int(
            "exchange_every_n_steps", exchange_every_n_steps, minimum=1
        )
        if max_staleness_steps is not None:
            max_staleness_steps = errors.check_int(
                "max_staleness_steps", max_staleness_steps, minimum=0
            )
        self._max_staleness_steps = max_staleness_steps
        self._group_index = group_index
        self._num_groups = num_groups
        self._peer_indices = tuple(peer_indices)
        self._exchange_dir = str(exchange_dir)
        self._distill_loss = losses.get(distill_loss)
        self._schedule = schedule

        self.student = student
        builder = self._resolve_builder(student, teacher_builder)
        strategy = tf.distribute.get_strategy()
        if background_reload is None:
            background_reload = distribute.num_workers(strategy) == 1
        elif background_reload and distribute.num_workers(strategy) > 1:
            raise errors.ConfigError(
                "background_reload=True needs a single-process group: the workers of a "
                "multi-worker group must agree on every teacher checkpoint, which they do "
                "between steps (leave background_reload unset or False)"
            )
        self._background_reload = bool(background_reload) and bool(self._peer_indices)
        self._teachers = [self._make_teacher(builder, j) for j in self._peer_indices]
        # With background reloads each peer has two teacher buffers: the step
        # reads the active one while the other is being written.
        self._spare_teachers = (
            [self._make_teacher(builder, j, "_b") for j in self._peer_indices]
            if self._background_reload
            else []
        )
        self._active_buffer = tf.Variable(
            tf.zeros([len(self._peer_indices)], tf.int32),
            trainable=False,
            name="active_teacher_buffer",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._teacher_steps = tf.Variable(
            tf.fill([len(self._peer_indices)], tf.constant(-1, tf.int64)),
            trainable=False,
            name="teacher_steps",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

        # train_step/test_step return metric results, the same on every
        # replica. Keras' "auto" reduction sums step outputs over replicas
        # under MultiWorkerMirroredStrategy (doubling them with 2 workers);
        # "first" is right for every strategy.
        self.distribute_reduction_method = "first"
        self._loss_tracker = keras.metrics.Mean(name=LOSS)
        self._task_loss_tracker = keras.metrics.Mean(name=TASK_LOSS)
        self._distill_loss_tracker = keras.metrics.Mean(name=DISTILL_LOSS)
        self._weight_tracker = keras.metrics.Mean(name=DISTILL_WEIGHT)
        self._staleness_tracker = keras.metrics.Mean(name=TEACHER_STALENESS)
        self._agreement_tracker = keras.metrics.Mean(name=AGREEMENT)
        self._nonfinite_tracker = _PerPeerCount(len(self._peer_indices), name=NONFINITE)

        # The exchange objects are plain Python (not tracked): they are not
        # training state and hold host-side staging copies.
        self._set_exchange(
            builder,
            errors.check_int("max_checkpoints_to_keep", max_checkpoints_to_keep, minimum=1),
        )
        self.built = True
        logging.info(
            "CodistillModel group %d of %d: peers %s, exchange_dir %s, distill_loss %r, "
            "distill_weight %r, exchange every %d steps, max_staleness_steps %s, publishing %s",
            group_index,
            num_groups,
            list(self._peer_indices),
            self._exchange_dir,
            self._distill_loss,
            self._schedule,
            self._exchange_every_n_steps,
            self._max_staleness_steps,
            self._publisher is not None,
        )

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _set_exchange(self, builder: Callable[[], keras.Model], max_to_keep: int) -> None:
        strategy = tf.distribute.get_strategy()
        self._strategy_for_exchange = strategy
        self._publisher = None
        self._publications = 0
        if distribute.is_chief(strategy):
            self._publisher = exchange.Publisher(
                self.student,
                exchange.group_dir(self._exchange_dir, self._group_index),
                max_to_keep=max_to_keep,
            )
        self._loaders: list[exchange.TeacherLoader] = []
        self._last_status = {j: None for j in self._peer_indices}
        self.reload_counts = {j: {"loaded": 0, "failed": 0} for j in self._peer_indices}
        self._prefetch: Optional[concurrent.futures.Future] = None
        self._host_mirror: Optional[tuple] = None
        # Per peer index k: a checkpoint step that was refused (failed to load,
        # or its teacher predicted NaN/Inf); not loaded again.
        self._refused_steps: dict = {}
        self._nonfinite_seen = np.zeros(len(self._peer_indices))
        self.fault_counts = {"peer_reload_failures": 0, "teachers_dropped": 0}
        if not self._peer_indices:
            return

        def make_staging():
            staging = builder()
            _build_like(staging, self.student)
            return staging, exchange.ModelSignature.of_model(staging)

        # One staging copy serves all peers: they are loaded one after another.
        staging, signature = exchange.outside_strategy(make_staging)
        lock = threading.Lock()
        self._loaders = [
            exchange.TeacherLoader(
                j, exchange.group_dir(self._exchange_dir, j), staging, signature, lock
            )
            for j in self._peer_indices
        ]

    # ------------------------------------------------------------------
    # Construction helpers.

    @staticmethod
    def _resolve_builder(student, teacher_builder):
        if teacher_builder is not None:
            if not callable(teacher_builder):
                raise errors.ConfigTypeError(
                    f"teacher_builder must be callable, got {teacher_builder!r}"
                )
            return teacher_builder
        if _is_graph_network(student):

            def clone():
                try:
                    return keras.models.clone_model(student)
                except Exception as e:
                    raise errors.ConfigError(
                        f"cannot clone student {student.name!r} to build teachers ({e}); "
                        "pass teacher_builder=<function returning a new model>"
                    ) from e

            return clone
        raise errors.ConfigError(
            f"student {student.name!r} is a subclassed model, which cannot be cloned; "
            "pass teacher_builder=<zero-argument function returning a new model of the "
            "same architecture>"
        )

    def _make_teacher(self, builder, peer: int, suffix: str = "") -> keras.Model:
        teacher = builder()
        if not isinstance(teacher, keras.Model):
            raise errors.ConfigTypeError(
                f"teacher_builder must return a tf_keras.Model, got {type(teacher)}"
            )
        if teacher is self.student:
            raise errors.ConfigError("teacher_builder must return a new model, not the student")
        _build_like(teacher, self.student)
        teacher_shapes = [tuple(w.shape) for w in teacher.weights]
        student_shapes = [tuple(w.shape) for w in self.student.weights]
        if teacher_shapes != student_shapes:
            raise errors.ConfigError(
                "teacher_builder built a model whose variables differ from the student's: "
                f"{teacher_shapes} vs {student_shapes}"
            )
        teacher.trainable = False
        teacher._name = f"teacher_{peer}{suffix}"  # pylint: disable=protected-access
        return teacher

    # ------------------------------------------------------------------
    # Public properties.

    @property
    def group_index(self) -> int:
        return self._group_index

    @property
    def num_groups(self) -> int:
        return self._num_groups

    @property
    def peer_indices(self) -> tuple:
        return self._peer_indices

    @property
    def exchange_dir(self) -> str:
        return self._exchange_dir

    @property
    def exchange_every_n_steps(self) -> int:
        return self._exchange_every_n_steps

    @property
    def teachers(self) -> tuple:
        """The frozen teacher models in use, in the order of `peer_indices`."""
        active = self._active_buffer.numpy()
        return tuple(self._buffer(k, int(active[k])) for k in range(len(self._teachers)))

    @property
    def background_reload(self) -> bool:
        return self._background_reload

    def _buffer(self, k: int, index: int) -> keras.Model:
        return self._spare_teachers[k] if index == 1 else self._teachers[k]

    @property
    def teacher_steps(self) -> np.ndarray:
        """Step of the checkpoint in each teacher in use (-1: none loaded yet)."""
        return self._teacher_steps.numpy()

    @property
    def distill_loss(self) -> losses.DistillationLoss:
        return self._distill_loss

    @property
    def distill_weight_schedule(self) -> schedules.DistillWeightSchedule:
        return self._schedule

    @property
    def metrics(self):
        trackers = [
            self._loss_tracker,
            self._task_loss_tracker,
            self._distill_loss_tracker,
            self._weight_tracker,
            self._staleness_tracker,
            self._agreement_tracker,
        ]
        if self._teachers:
            trackers.append(self._nonfinite_tracker)
        compiled = []
        if self._is_compiled and self.compiled_metrics is not None:
            compiled = list(self.compiled_metrics.metrics)
        # The compiled loss container tracks the task loss under the name
        # "loss"; ours reports the total under that name instead.
        excluded = {id(m) for m in trackers + compiled}
        if self._is_compiled and self.compiled_loss is not None:
            excluded |= {id(m) for m in self.compiled_loss.metrics}
        rest = [m for m in super().metrics if id(m) not in excluded]
        return trackers + compiled + rest

    # ------------------------------------------------------------------
    # Steps.

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _peer_weights(self, step: tf.Tensor) -> tf.Tensor:
        """`[num_peers]` float32: 1 for peers whose teacher may be used at `step`."""
        teacher_steps = tf.convert_to_tensor(self._teacher_steps)
        available = teacher_steps >= 0
        if self._max_staleness_steps is not None:
            available = tf.logical_and(available, step - teacher_steps <= self._max_staleness_steps)
        return tf.cast(available, tf.float32)

    def _position_weights(self, y_pred, sample_weight):
        """Sample weights combined with a Keras mask on the student's output."""
        mask = getattr(y_pred, "_keras_mask", None)
        weights = None if sample_weight is None else tf.cast(sample_weight, tf.float32)
        if mask is not None:
            mask = tf.cast(mask, tf.float32)
            weights = mask if weights is None else losses.broadcast_weights(weights, mask) * mask
        return weights

    def _teacher_targets(self, x, y_pred, peer_weights, active):
        """Aggregated teacher targets, agreement, and which peers were usable.

        The teachers run only when `active` (inside `tf.cond`), so burn-in
        steps and steps without any available peer cost no teacher forward
        pass; a teacher that is not available is not run either. A teacher
        whose predictions on this batch are not all finite is left out of the
        average (and counted; the group then drops it until its peer publishes
        a new checkpoint). Nothing here needs a gradient: in `train_step` it
        runs with the tape paused, so the teachers' control flow (an LSTM's
        while loop) keeps no intermediates for a backward pass.

        Returns:
          targets (float32, `y_pred`'s shape), agreement (per position), and
          usable `[num_peers]` float32 (1: available with finite predictions).
        """
        point_shape = tf.shape(y_pred)[:-1] if y_pred.shape.rank > 1 else tf.shape(y_pred)

        def compute():
            teacher_logits = []
            for j in range(len(self._teachers)):
                teacher_logits.append(
                    tf.cond(
                        peer_weights[j] > 0,
                        lambda j=j: tf.cast(self._run_teacher(j, x), y_pred.dtype),
                        lambda: tf.zeros_like(y_pred),
                    )
                )
            finite = tf.stack(
                [tf.cast(tf.reduce_all(tf.math.is_finite(t)), tf.float32) for t in teacher_logits]
            )
            usable = peer_weights * finite
            targets = self._distill_loss.aggregate(teacher_logits, usable)
            agreement = self._distill_loss.agreement(targets, y_pred)
            return tf.stop_gradient(targets), tf.reshape(agreement, point_shape), usable

        def skip():
            return (
                tf.zeros(tf.shape(y_pred), tf.float32),
                tf.zeros(point_shape, tf.float32),
                tf.zeros_like(peer_weights),
            )

        return tf.cond(active, compute, skip)

    def _run_teacher(self, k: int, x):
        """Peer k's teacher in use (the active buffer) on `x`, in inference mode."""
        if not self._spare_teachers:
            return self._teachers[k](x, training=False)
        return tf.cond(
            self._active_buffer[k] == 0,
            lambda: self._teachers[k](x, training=False),
            lambda: self._spare_teachers[k](x, training=False),
        )

    def _distill_per_example(self, targets, y_pred, weights, active):
        """psi per example `[batch]` against precomputed targets; zeros when not active."""
        return tf.cond(
            active,
            lambda: losses.reduce_per_example(
                self._distill_loss.pointwise(targets, y_pred), weights
            ),
            lambda: tf.zeros(tf.shape(y_pred)[:1], tf.float32),
        )

    def _check_output(self, y_pred):
        if not tf.is_tensor(y_pred):
            raise errors.ConfigError(
                "CodistillModel needs a student with a single logits output, got "
                f"{tf.nest.map_structure(lambda t: getattr(t, 'shape', t), y_pred)}"
            )
        self._distill_loss.validate_logits(y_pred)

    def _step_terms(self, x, y, y_pred, sample_weight, step, tape=None):
        """Task loss, distillation terms and the weight in effect for one batch.

        Args:
          tape: the train step's GradientTape (paused for the teachers), or
            None when evaluating.
        """
        training = tape is not None
        self._check_output(y_pred)
        task_loss = self.compiled_loss(
            y, y_pred, sample_weight, regularization_losses=self.student.losses
        )
        peer_weights = self._peer_weights(step)
        any_peer = tf.reduce_any(peer_weights > 0)
        weight = self._schedule(step) * tf.cast(any_peer, tf.float32)
        # Training runs the teachers only when psi counts; evaluation runs
        # them whenever one is available, to report agreement during burn-in.
        active = weight > 0 if training else any_peer
        weights = self._position_weights(y_pred, sample_weight)
        if self._teachers:
            with tape.stop_recording() if training else contextlib.nullcontext():
                targets, agreement, usable = self._teacher_targets(x, y_pred, peer_weights, active)
            nonfinite = tf.cast(active, tf.float32) * (peer_weights - usable)
            self._nonfinite_tracker.update_state(nonfinite)
            # psi counts only with a teacher whose predictions are finite.
            any_usable = tf.reduce_any(usable > 0)
            active = tf.logical_and(active, any_usable)
            if training:
                weight = weight * tf.cast(any_usable, tf.float32)
            per_example = self._distill_per_example(targets, y_pred, weights, active)
        else:
            per_example = tf.zeros(tf.shape(y_pred)[:1], tf.float32)
            agreement = None
        # Scaled by the global batch: the same value and gradient under any strategy.
        distill_loss = tf.nn.compute_average_loss(per_example)
        total = task_loss + weight * distill_loss
        return dict(
            task_loss=task_loss,
            distill_loss=distill_loss,
            total=total,
            per_example=per_example,
            agreement=agreement,
            weights=weights,
            weight=weight,
            peer_weights=peer_weights,
            active=active,
        )

    def _update_trackers(self, y_pred, terms, step, training):
        # Keras' loss tracker convention: per-replica (unscaled) mean, weighted
        # by the local batch size, so that result() is the global mean.
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        batch = tf.cast(tf.shape(y_pred)[0], tf.float32)
        self._loss_tracker.update_state(terms["total"] * replicas, sample_weight=batch)
        self._task_loss_tracker.update_state(terms["task_loss"] * replicas, sample_weight=batch)
        active = tf.cast(terms["active"], tf.float32)
        self._distill_loss_tracker.update_state(
            terms["per_example"],
            sample_weight=active * tf.ones_like(terms["per_example"]),
        )
        if terms["agreement"] is not None:
            agreement = terms["agreement"]
            position_weights = tf.ones_like(agreement)
            if terms["weights"] is not None:
                position_weights = losses.broadcast_weights(terms["weights"], agreement)
            self._agreement_tracker.update_state(agreement, sample_weight=position_weights * active)
        if training:
            self._weight_tracker.update_state(terms["weight"])
            peer_weights = terms["peer_weights"]
            if self._teachers:
                staleness = tf.cast(step - tf.convert_to_tensor(self._teacher_steps), tf.float32)
                mean_staleness = tf.math.divide_no_nan(
                    tf.reduce_sum(staleness * peer_weights), tf.reduce_sum(peer_weights)
                )
                self._staleness_tracker.update_state(
                    mean_staleness, sample_weight=tf.reduce_max(peer_weights)
                )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # Read before the update: this step's index, the schedule's argument.
        step = tf.convert_to_tensor(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            y_pred = self.student(x, training=True)
            terms = self._step_terms(x, y, y_pred, sample_weight, step, tape=tape)
        self.optimizer.minimize(terms["total"], self.student.trainable_variables, tape=tape)
        self._update_trackers(y_pred, terms, step, training=True)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = (
            tf.convert_to_tensor(self.optimizer.iterations)
            if self.optimizer is not None
            else tf.constant(0, tf.int64)
        )
        y_pred = self.student(x, training=False)
        terms = self._step_terms(x, y, y_pred, sample_weight, step)
        self._update_trackers(y_pred, terms, step, training=False)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        results = self.get_metrics_result()
        # Weight and staleness describe training; evaluation leaves them out.
        results.pop(DISTILL_WEIGHT, None)
        results.pop(TEACHER_STALENESS, None)
        return results

    # ------------------------------------------------------------------
    # Exchange (between steps, never inside them).

    def _own_step(self) -> int:
        return int(self.optimizer.iterations.numpy()) if self.optimizer is not None else 0

    def publish(self) -> Optional[str]:
        """Publishes the student as `ckpt-<step>`; a no-op on non-chief workers.

        Returns:
          The checkpoint prefix written, or None when this process does not publish.

        Raises:
          ExchangeWriteError: the exchange directory cannot be written.
        """
        if self._publisher is None:
            return None
        step = self._own_step()
        if step != self._publisher.last_published_step and self._publisher.is_published(step):
            # A restarted group going again through steps it published before.
            logging.info(
                "Group %d: step %d was published before this process started; kept as it is",
                self._group_index,
                step,
            )
            return self._publisher.publish(step)
        start = time.perf_counter()
        try:
            path = self._publisher.publish(step)
        except (tf.errors.OpError, OSError) as e:
            # One line: train.py shows it as the reason the group stopped.
            raise ExchangeWriteError(
                f"group {self._group_index} cannot publish step {step} into "
                f"{self._publisher.directory}: {errors.one_line(e)}"
            ) from e
        # The first publication at INFO, the routine ones at verbosity 1.
        logging.vlog(
            0 if self._publications == 0 else 1,
            "Group %d: published step %d to %s (%.3f s)",
            self._group_index,
            step,
            path,
            time.perf_counter() - start,
        )
        self._publications += 1
        return path

    def reload_teachers(self, raise_on_mismatch: bool = False) -> list[ReloadOutcome]:
        """Restores each peer's latest checkpoint into its teacher, now.

        Does not raise for a peer's sake: a peer without a checkpoint is left
        out, and a checkpoint that cannot be used (missing, truncated, deleted
        mid-read, mismatched, non-finite) leaves that peer's previous teacher
        in place; either way the reason is logged and returned, and that
        checkpoint is not tried again (the peer's next one will be). Under
        MultiWorkerMirroredStrategy every worker must call this at the same
        step: the workers agree on which checkpoint to load and load it only
        if all of them could read it, so that all replicas share one teacher.

        Args:
          raise_on_mismatch: raise `PeerMismatchError` if a peer from which no
            teacher was ever loaded publishes a checkpoint with other variables
            than this model (other architecture, shapes or dtypes): that is a
            configuration mistake, not a transient fault. A peer that changes
            later is only skipped, with a warning.

        Returns:
          One `ReloadOutcome` per peer, in the order of `peer_indices`.

        Raises:
          PeerMismatchError: see `raise_on_mismatch`.
        """
        if not self._loaders:
            return []
        self.wait_for_prefetch()
        strategy = self._strategy_for_exchange
        own_step = self._own_step()
        found, find_errors = [], {}
        for loader in self._loaders:
            try:
                found.append(exchange.outside_strategy(loader.latest))
            except exchange.PeerCheckpointError as e:
                found.append(None)
                find_errors[loader.peer_index] = str(e)
        agreed = distribute.agree_min([-1 if r is None else r.step for r in found], strategy)
        # Read afresh: a restore (BackupAndRestore) may have changed them.
        active_buffers, loaded_steps = (a.copy() for a in self._host_state(refresh=True))
        outcomes = []
        for k, loader in enumerate(self._loaders):
            peer, step = loader.peer_index, int(agreed[k])
            if step < 0:
                reason = find_errors.get(peer, "")
                status = "failed" if reason else "no_checkpoint"
                outcomes.append(ReloadOutcome(peer, status, reason=reason))
                continue
            if step == loaded_steps[k]:
                outcomes.append(ReloadOutcome(peer, "unchanged", step, own_step - step))
                continue
            if step == self._refused_steps.get(k):
                outcomes.append(ReloadOutcome(peer, "left_out", step, own_step - step))
                continue
            start = time.perf_counter()
            ref = exchange.CheckpointRef(exchange.checkpoint_prefix(loader.directory, step), step)
            mismatch = False
            with loader.lock:
                reason = ""
                try:
                    exchange.outside_strategy(loader.stage, ref)
                except exchange.PeerCheckpointError as e:
                    reason = str(e)
                    mismatch = isinstance(e, exchange.CheckpointMismatchError)
                all_ok = distribute.agree_min([0 if reason else 1], strategy)[0] == 1
                if all_ok:
                    # Written into the buffer not in use, then switched to.
                    spare = 1 - int(active_buffers[k]) if self._spare_teachers else 0
                    with strategy.scope():
                        loader.write(self._buffer(k, spare))
                    self._switch(k, spare, step)
            if all_ok:
                loaded_steps[k] = step
                outcomes.append(
                    ReloadOutcome(
                        peer, "loaded", step, own_step - step, seconds=time.perf_counter() - start
                    )
                )
            else:
                reason = reason or "another worker of this group could not read it"
                self._refused_steps[k] = step
                outcomes.append(ReloadOutcome(peer, "failed", step, own_step - step, reason=reason))
                if mismatch and raise_on_mismatch and loaded_steps[k] < 0:
                    self._log_outcomes(outcomes)
                    raise PeerMismatchError(
                        f"group {self._group_index} cannot learn from group {peer}: {reason}. "
                        "All groups of a run must train the same architecture (compare their "
                        "gin configs, model_fn or teacher_builder)"
                    )
        self._log_outcomes(outcomes)
        return outcomes

    def _switch(self, k: int, buffer: int, step: int) -> None:
        """Makes `buffer` peer k's teacher in use, holding checkpoint `step`."""
        active, steps = self._host_state()
        active, steps = active.copy(), steps.copy()
        active[k], steps[k] = buffer, step
        self._host_mirror = (active, steps)
        with self._strategy_for_exchange.scope():
            if self._spare_teachers:
                self._active_buffer.assign(
                    tf.tensor_scatter_nd_update(self._active_buffer, [[k]], [buffer])
                )
            self._teacher_steps.assign(
                tf.tensor_scatter_nd_update(self._teacher_steps, [[k]], [step])
            )

    def drop_nonfinite_teachers(self) -> list[int]:
        """Drops teachers that predicted NaN/Inf since the last call.

        The train step already left such a teacher out of every batch where
        its predictions were not finite; this takes it out of use until its
        peer publishes a new checkpoint (the same one is not loaded again).
        Reads one small metric from the device; under
        MultiWorkerMirroredStrategy call it on every worker at the same step.

        Returns:
          The peers whose teachers were dropped.
        """
        if not self._teachers:
            return []
        counts = self._nonfinite_tracker.per_peer()
        if np.any(counts < self._nonfinite_seen):  # The metric was reset (new epoch).
            self._nonfinite_seen = np.zeros_like(counts)
        fresh = counts - self._nonfinite_seen
        self._nonfinite_seen = counts
        dropped = []
        for k in np.flatnonzero(fresh > 0):
            self.wait_for_prefetch()
            active, steps = self._host_state()
            if steps[k] < 0:
                continue
            self._refused_steps[k] = int(steps[k])
            self._switch(k, int(active[k]), -1)
            self.fault_counts["teachers_dropped"] += 1
            dropped.append(self._peer_indices[k])
            logging.warning(
                "Group %d: the teacher for peer %d (step %d) predicted NaN or Inf on %d "
                "batch(es); left out until peer %d publishes a new checkpoint",
                self._group_index,
                self._peer_indices[k],
                steps[k],
                int(fresh[k]),
                self._peer_indices[k],
            )
        return dropped

    def exchange_logs(self, own_step: int) -> dict:
        """Host-side exchange health for logs and TensorBoard (no device reads).

        `teachers_in_use`: peers whose teacher the next step may use;
        `stale_peers`: peers left out by `max_staleness_steps`;
        `peer_reload_failures` and `teachers_dropped`: counts since start.
        """
        if not self._teachers:
            return {}
        _, steps = self._host_state()
        loaded = steps >= 0
        stale = np.zeros_like(loaded)
        if self._max_staleness_steps is not None:
            stale = loaded & (own_step - steps > self._max_staleness_steps)
        logs = {
            "teachers_in_use": float(np.sum(loaded & ~stale)),
            "stale_peers": float(np.sum(stale)),
        }
        logs.update({k: float(v) for k, v in self.fault_counts.items()})
        return logs

    # Background reloads (single-process groups).

    def prefetch_teachers(self) -> list[ReloadOutcome]:
        """Switches to teachers read in the background, and starts the next read.

        Cheap enough to call after every step: it only looks at a finished
        background job (switching a teacher is two scalar assignments) and,
        when none is running, starts one that looks for each peer's newer
        checkpoint and writes it into that peer's spare teacher buffer.

        Returns:
          The outcomes of the background job that finished since the last
          call (loaded or failed peers), empty otherwise.
        """
        if not self._background_reload:
            return []
        outcomes = []
        if self._prefetch is not None and self._prefetch.done():
            outcomes = self._harvest(self._prefetch)
            self._prefetch = None
        if self._prefetch is None:
            # Host copies: no device read per call (a sync point on GPU/TPU).
            active, steps = self._host_state()
            self._prefetch = _prefetch_executor().submit(
                self._prefetch_job, active.copy(), steps.copy()
            )
        return outcomes

    def _host_state(self, refresh: bool = False) -> tuple:
        """(active buffer, teacher steps) per peer, as numpy, cached on the host."""
        if refresh or self._host_mirror is None:
            self._host_mirror = (self._active_buffer.numpy(), self._teacher_steps.numpy())
        return self._host_mirror

    def wait_for_prefetch(self) -> list[ReloadOutcome]:
        """Finishes a running background read and switches to what it read."""
        if self._prefetch is None:
            return []
        outcomes = self._harvest(self._prefetch)
        self._prefetch = None
        return outcomes

    def _prefetch_job(self, active: np.ndarray, steps: np.ndarray) -> list:
        """Background thread: newer peer checkpoints -> spare teacher buffers."""
        results = []
        for k, loader in enumerate(self._loaders):
            start = time.perf_counter()
            try:
                ref = loader.latest()
            except exchange.PeerCheckpointError as e:
                results.append((k, -1, str(e), 0.0))
                continue
            if ref is None or ref.step in (steps[k], self._refused_steps.get(k)):
                continue
            with loader.lock:
                try:
                    loader.stage(ref)
                except exchange.PeerCheckpointError as e:
                    results.append((k, ref.step, str(e), time.perf_counter() - start))
                    continue
                with self._strategy_for_exchange.scope():
                    loader.write(self._buffer(k, 1 - int(active[k])))
            results.append((k, ref.step, "", time.perf_counter() - start))
        return results

    def _harvest(self, future: concurrent.futures.Future) -> list[ReloadOutcome]:
        own_step = self._own_step()
        outcomes = []
        for k, step, reason, seconds in future.result():
            peer = self._peer_indices[k]
            if reason:
                if step >= 0:
                    self._refused_steps[k] = step  # Not retried; the peer will publish anew.
                outcomes.append(
                    ReloadOutcome(
                        peer, "failed", step, own_step - step if step >= 0 else None, reason=reason
                    )
                )
                continue
            self._switch(k, 1 - int(self._host_state()[0][k]), step)
            outcomes.append(ReloadOutcome(peer, "loaded", step, own_step - step, seconds=seconds))
        self._log_outcomes(outcomes)
        return outcomes

    def _log_outcomes(self, outcomes: Sequence[ReloadOutcome]) -> None:
        for o in outcomes:
            previous = self._last_status.get(o.peer)
            self._last_status[o.peer] = o.status
            if o.status == "loaded":
                self.reload_counts[o.peer]["loaded"] += 1
                logging.info(
                    "Group %d: teacher for peer %d <- step %d (staleness %d steps, %.3f s)",
                    self._group_index,
                    o.peer,
                    o.step,
                    o.staleness,
                    o.seconds,
                )
            elif o.status == "failed":
                self.reload_counts[o.peer]["failed"] += 1
                self.fault_counts["peer_reload_failures"] += 1
                logging.warning(
                    "Group %d: keeping the previous teacher for peer %d (step %s): %s",
                    self._group_index,
                    o.peer,
                    o.step if o.step >= 0 else "none",
                    o.reason,
                )
            elif o.status == "no_checkpoint" and previous != "no_checkpoint":
                logging.info(
                    "Group %d: peer %d has not published yet; left out until it does",
                    self._group_index,
                    o.peer,
                )

    # ------------------------------------------------------------------
    # Keras plumbing.

    def fit(self, *args, **kwargs):
        """`tf_keras.Model.fit`, with an `ExchangeCallback` added if none is given."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        user_callbacks = list(arguments.get("callbacks") or [])
        if not any(isinstance(c, callbacks_lib.ExchangeCallback) for c in user_callbacks):
            # After BackupAndRestore (which restores the step and teachers
            # first), before the others (which then see the exchange logs).
            restores = [
                i
                for i, c in enumerate(user_callbacks)
                if isinstance(c, keras.callbacks.BackupAndRestore)
            ]
            position = restores[-1] + 1 if restores else 0
            user_callbacks.insert(position, callbacks_lib.ExchangeCallback())
        arguments["callbacks"] = user_callbacks
        return super().fit(**arguments)

    def get_config(self):
        raise NotImplementedError(
            "CodistillModel is not serialisable as a model: save `model.student` for "
            "serving, and use keras.callbacks.BackupAndRestore (or save_weights) to "
            "checkpoint training state"
        )

    def save(self, *args, **kwargs):
        raise NotImplementedError(
            "CodistillModel holds training-only state (peer teachers, exchange); call "
            "`model.student.save(...)` to export the served model, and use "
            "keras.callbacks.BackupAndRestore or `model.save_weights(...)` for training state"
        )


_PREFETCH_EXECUTOR: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _prefetch_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One background thread for teacher reads (a thread is outside any strategy scope)."""
    global _PREFETCH_EXECUTOR
    if _PREFETCH_EXECUTOR is None:
        _PREFETCH_EXECUTOR = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tf_codistill_prefetch"
        )
    return _PREFETCH_EXECUTOR
