"""`CodistillModel`: a Keras model that codistills a student with its peers.

Each group of a codistillation run wraps its own copy of the model (the
*student*) in a `CodistillModel`, which trains it on

    loss = task_loss + w(step) * psi(mean_j teacher_j(x), student(x))

where the task loss is the one given to `compile`, psi a distillation loss
(`tf_codistill.losses`), w a weight schedule (`tf_codistill.schedules`), and
the mean runs over the teachers in use. This module is the step; the teachers
live in a `teachers.TeacherPool` (a layer of this model), and publishing the
student and reloading teachers happen between steps, in an
`exchange_client.ExchangeClient` driven by the `ExchangeCallback` that `fit`
adds by itself.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from collections.abc import Sequence
from typing import Optional
from typing import Union

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import callbacks as callbacks_lib
from tf_codistill import errors
from tf_codistill import exchange_client
from tf_codistill import input_release
from tf_codistill import losses
from tf_codistill import noise_scale
from tf_codistill import peer_selection as peer_selection_lib
from tf_codistill import schedules
from tf_codistill import teachers as teachers_lib

__all__ = ["CodistillModel", "ReloadOutcome", "ExchangeWriteError", "PeerMismatchError"]

# Metric names, also used by callbacks, binaries and docs. `loss` is the task
# loss, as a plain model reports it, in training and evaluation alike (so
# `val_loss` is comparable across burn-in and with a model trained alone);
# `total_loss` is what training minimises, task + w * psi; `task_loss` is kept
# (equal to `loss`) for code that reads `val_task_loss`.
LOSS = "loss"
TOTAL_LOSS = "total_loss"
TASK_LOSS = "task_loss"
DISTILL_LOSS = "distill_loss"
DISTILL_WEIGHT = "distill_weight"
TEACHER_STALENESS = "teacher_staleness"
AGREEMENT = "agreement"
NONFINITE = teachers_lib.NONFINITE

# Kept importable from here, where they were first defined.
PeerMismatchError = errors.PeerMismatchError
ExchangeWriteError = errors.ExchangeWriteError
ReloadOutcome = teachers_lib.ReloadOutcome


class CodistillModel(input_release.InputReleasingModel):
    """Trains `student` with a distillation term against its peers' checkpoints.

    Defaults follow Anil et al. (2018): psi is the cross-entropy to the peers'
    averaged predicted distribution, weight 1, no temperature, switched on in
    one step after `burn_in_steps` (3000, the paper's ImageNet value), and
    checkpoints exchanged every 50 steps with every peer.

    Args:
      student: a built `tf_keras.Model` returning logits (one tensor,
        `[batch, classes]`, `[batch, 1]` or `[batch, time, vocab]`, or several
        outputs with `distill_output` naming the logits to distill), not
        probabilities. Create it inside the strategy scope, as you create this
        model.
      group_index: this group's index in `[0, num_groups)`.
      num_groups: number of groups in the run.
      exchange_dir: directory (local path or any `tf.io.gfile` URL) shared by
        all groups; this group publishes into `<exchange_dir>/group_<i>/`.
      distill_loss: a `tf_codistill.losses` name or `DistillationLoss`.
      distill_weight: a number, the weight after burn-in, or a
        `tf_codistill.schedules.DistillWeightSchedule`.
      burn_in_steps: train steps without distillation when `distill_weight` is
        a number (default 3000); must be None when it is a schedule.
      exchange_every_n_steps: publish and reload every this many train steps
        (the interval of the `ExchangeCallback` that `fit` adds).
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
        into a second copy of each teacher, switched to between two steps
        (twice the teachers' memory). None (default): on for single-process
        groups; multi-worker groups reload at the boundary, agreeing.
      peer_selection: which peers the teachers hold in each exchange interval:
        `all_peers` (default: one teacher per peer), `random_peer` or
        `round_robin` (one teacher for any number of peers), or a
        `tf_codistill.peer_selection.PeerSelection`.
      teacher_dtype: None (the student's precision), "bfloat16" or
        "float16": the teachers hold and run their weights in it (cheaper
        where bf16/fp16 is fast, half the teachers' memory); their logits are
        cast back for psi; peers' checkpoints are read as published.
      background_publish: write the group's checkpoints on a helper thread
        from a snapshot taken at the boundary (same files; `fit`'s end waits;
        a failed write stops `fit` after the next step). Off by default: on a
        loaded 2-core host it did not lower the p99 step (docs/benchmarks.md).
      distill_output: for a student with several outputs (auxiliary heads),
        the one psi reads: a name of `student.output_names` (or a key of a
        subclassed model's dict of outputs) or an index. The task loss covers
        every output, as `compile` configures it.
      **kwargs: passed to `tf_keras.Model`, e.g. `name`.

    Raises:
      ValueError / TypeError: for any inconsistent argument, naming it
        (`tf_codistill.errors.ConfigError` / `ConfigTypeError`).
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
        peer_selection: Union[None, str, peer_selection_lib.PeerSelection] = None,
        teacher_dtype: Optional[str] = None,
        background_publish: bool = False,
        distill_output: Union[None, int, str] = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "codistill")
        super().__init__(**kwargs)
        teachers_lib.check_student(student)
        self._distill_output = teachers_lib.resolve_distill_output(student, distill_output)
        num_groups = errors.check_int("num_groups", num_groups, minimum=1)
        group_index = errors.check_int("group_index", group_index, minimum=0)
        if group_index >= num_groups:
            raise errors.ConfigError(
                f"group_index must be < num_groups={num_groups}, got {group_index}"
            )
        self._schedule = schedules.get(distill_weight, burn_in_steps)
        self._exchange_every_n_steps = errors.check_int(
            "exchange_every_n_steps", exchange_every_n_steps, minimum=1
        )
        self._group_index, self._num_groups = group_index, num_groups
        self._exchange_dir = str(exchange_dir)
        self._distill_loss = losses.get(distill_loss)
        self.student = student
        # The teachers (a layer of this model, so mirrored and backed up with
        # it) and the client that fills them between steps. The client is
        # plain Python, not a trackable: its publisher's and staging copy's
        # variables stay out of the model's weights and backups.
        self.teacher_pool, self.exchange_client = exchange_client.create(
            student,
            teacher_builder=teacher_builder,
            group_index=group_index,
            peers=peer_selection_lib.resolve_peers(group_index, num_groups, peer_indices),
            exchange_dir=self._exchange_dir,
            selection=peer_selection_lib.get(peer_selection),
            background_reload=background_reload,
            max_staleness_steps=max_staleness_steps,
            max_to_keep=max_checkpoints_to_keep,
            own_step=self._own_step,
            teacher_dtype=teacher_dtype,
            background_publish=background_publish,
            distill_output=self._distill_output,
        )

        # train_step/test_step return metric results, the same on every
        # replica. Keras' "auto" reduction sums step outputs over replicas
        # under MultiWorkerMirroredStrategy (doubling them with 2 workers);
        # "first" is right for every strategy.
        self.distribute_reduction_method = "first"
        self._loss_tracker = keras.metrics.Mean(name=LOSS)
        self._total_loss_tracker = keras.metrics.Mean(name=TOTAL_LOSS)
        self._task_loss_tracker = keras.metrics.Mean(name=TASK_LOSS)
        self._distill_loss_tracker = keras.metrics.Mean(name=DISTILL_LOSS)
        self._weight_tracker = keras.metrics.Mean(name=DISTILL_WEIGHT)
        self._staleness_tracker = keras.metrics.Mean(name=TEACHER_STALENESS)
        self._agreement_tracker = keras.metrics.Mean(name=AGREEMENT)
        # Gradient-noise-scale statistics: None until a GradientNoiseScale
        # callback asks for them (plain Python: not part of the weights).
        self._noise_statistics: Optional[noise_scale.GradientStatistics] = None
        self.built = True
        logging.info(
            "CodistillModel group %d of %d: peers %s (%r), exchange_dir %s, distill_loss %r, "
            "distill_weight %r, exchange every %d steps, max_staleness_steps %s, publishing %s, "
            "teacher_dtype %s",
            group_index,
            num_groups,
            list(self.exchange_client.peers),
            self.exchange_client.selection,
            self._exchange_dir,
            self._distill_loss,
            self._schedule,
            self._exchange_every_n_steps,
            self.teacher_pool.max_staleness_steps,
            self.exchange_client.publishing,
            teacher_dtype or "as the student",
        )

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
        return self.exchange_client.peers

    @property
    def exchange_dir(self) -> str:
        return self._exchange_dir

    @property
    def exchange_every_n_steps(self) -> int:
        return self._exchange_every_n_steps

    @property
    def distill_loss(self) -> losses.DistillationLoss:
        return self._distill_loss

    @property
    def distill_weight_schedule(self) -> schedules.DistillWeightSchedule:
        return self._schedule

    @property
    def teachers(self) -> tuple:
        """The frozen teacher models in use, one per slot (with all peers: per peer)."""
        return self.teacher_pool.teachers

    @property
    def teacher_steps(self) -> np.ndarray:
        """Step of the checkpoint in each teacher in use (-1: none loaded yet)."""
        return self.teacher_pool.teacher_steps.numpy()

    @property
    def background_reload(self) -> bool:
        return self.exchange_client.background

    @property
    def reload_counts(self) -> dict:
        """Per peer: `{"loaded": n, "failed": m}` since the start."""
        return self.exchange_client.reload_counts

    def publish(self) -> Optional[str]:
        """Publishes the student now (see `ExchangeClient.publish`)."""
        return self.exchange_client.publish()

    def reload_teachers(self, raise_on_mismatch: bool = False) -> list[ReloadOutcome]:
        """Reloads the teachers now (see `ExchangeClient.reload`)."""
        return self.exchange_client.reload(raise_on_mismatch)

    def gradient_statistics(self, every_n_steps: int) -> noise_scale.GradientStatistics:
        """The train step's gradient-noise statistics, measured every `every_n_steps` steps.

        Created on first use (the train function is then traced again, once,
        to include the measurement); later calls only change the interval.
        Used by `callbacks.GradientNoiseScale`.
        """
        if self._noise_statistics is None:
            with self.distribute_strategy.scope():
                self._noise_statistics = noise_scale.GradientStatistics(every_n_steps)
            # Public tf_keras attribute: fit() makes a new train function when it is None.
            self.train_function = None
        else:
            self._noise_statistics.every_n_steps.assign(every_n_steps)
        return self._noise_statistics

    def _own_step(self) -> int:
        return int(self.optimizer.iterations.numpy()) if self.optimizer is not None else 0

    @property
    def metrics(self):
        trackers = [
            self._loss_tracker,
            self._total_loss_tracker,
            self._task_loss_tracker,
            self._distill_loss_tracker,
            self._weight_tracker,
            self._staleness_tracker,
            self._agreement_tracker,
        ]
        if self.teacher_pool.num_slots:
            trackers.append(self.teacher_pool.nonfinite)
        compiled = []
        if getattr(self, "compiled_metrics", None) is not None:
            compiled = list(self.compiled_metrics.metrics)
        # The compiled loss container tracks the task loss under the name
        # "loss"; ours does, the same value under any strategy.
        excluded = {id(m) for m in trackers + compiled}
        if getattr(self, "compiled_loss", None) is not None:
            excluded |= {id(m) for m in self.compiled_loss.metrics}
        rest = [m for m in super().metrics if id(m) not in excluded]
        return trackers + compiled + rest

    # ------------------------------------------------------------------
    # Steps.

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _distill_per_example(self, targets, y_pred, weights, active):
        """psi per example `[batch]` against precomputed targets; zeros when not active."""
        return tf.cond(
            active,
            lambda: losses.reduce_per_example(
                self._distill_loss.pointwise(targets, y_pred), weights
            ),
            lambda: tf.zeros(tf.shape(y_pred)[:1], tf.float32),
        )

    def _step_terms(self, x, y, outputs, sample_weight, step, tape=None):
        """Task loss, distillation terms and the weight in effect for one batch.

        Args:
          outputs: the student's outputs (all of them: the task loss's).
          tape: the train step's GradientTape (paused for the teachers), or
            None when evaluating.
        """
        training = tape is not None
        # float32 whatever the policy: under mixed precision the compiled loss
        # of a float16/bfloat16 head has the head's dtype, psi is float32.
        task_loss = tf.cast(
            self.compiled_loss(
                y, outputs, sample_weight, regularization_losses=self.student.losses
            ),
            tf.float32,
        )
        # From here on, the output psi reads.
        y_pred = teachers_lib.select_output(outputs, self._distill_output)
        teachers_lib.check_logits(y_pred, self.student.name)
        self._distill_loss.validate_logits(y_pred)
        if sample_weight is not None and not tf.is_tensor(sample_weight):
            sample_weight = teachers_lib.select_output(sample_weight, self._distill_output)
        peer_weights = self.teacher_pool.peer_weights(step)
        any_peer = tf.reduce_any(peer_weights > 0)
        weight = self._schedule(step) * tf.cast(any_peer, tf.float32)
        # Training runs the teachers only when psi counts; evaluation runs
        # them whenever one is available, to report agreement during burn-in.
        active = weight > 0 if training else any_peer
        weights = losses.position_weights(y_pred, sample_weight)
        agreement = None
        per_example = tf.zeros(tf.shape(y_pred)[:1], tf.float32)
        if self.teacher_pool.num_slots:
            with tape.stop_recording() if training else contextlib.nullcontext():
                targets, agreement, usable = self.teacher_pool.targets(
                    x, y_pred, peer_weights, active, self._distill_loss
                )
            nonfinite = tf.cast(active, tf.float32) * (peer_weights - usable)
            self.teacher_pool.count_nonfinite(nonfinite, training)
            # psi counts only with a teacher whose predictions are finite.
            any_usable = tf.reduce_any(usable > 0)
            active = tf.logical_and(active, any_usable)
            weight = weight * tf.cast(any_usable, tf.float32)
            per_example = self._distill_per_example(
                targets, y_pred, losses.keras_loss_weights(y_pred, sample_weight), active
            )
        # Scaled by the global batch: the same value and gradient under any strategy.
        distill_loss = tf.nn.compute_average_loss(per_example)
        return dict(
            task_loss=task_loss,
            distill_loss=distill_loss,
            total=task_loss + weight * distill_loss,
            per_example=per_example,
            agreement=agreement,
            weights=weights,
            weight=weight,
            peer_weights=peer_weights,
            active=active,
        )

    def _update_trackers(self, terms, step):
        # Keras' loss tracker convention: per-replica (unscaled) mean, weighted
        # by the local batch size, so that result() is the global mean.
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        batch = tf.cast(tf.shape(terms["per_example"])[0], tf.float32)
        task_loss = terms["task_loss"] * replicas
        self._loss_tracker.update_state(task_loss, sample_weight=batch)
        self._task_loss_tracker.update_state(task_loss, sample_weight=batch)
        self._total_loss_tracker.update_state(terms["total"] * replicas, sample_weight=batch)
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
        # In evaluation too: the weight and the teachers' staleness at the
        # evaluated step (what its total_loss used), and every name of
        # `metrics_names` has a value in `evaluate()`'s list.
        self._weight_tracker.update_state(terms["weight"])
        peer_weights = terms["peer_weights"]
        if self.teacher_pool.num_slots:
            staleness = self.teacher_pool.staleness(step)
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
        statistics = self._noise_statistics
        with tf.GradientTape(persistent=statistics is not None) as tape:
            y_pred = self.student(x, training=True)
            terms = self._step_terms(x, y, y_pred, sample_weight, step, tape=tape)
            if statistics is not None:
                halves = statistics.half_losses(self._task_loss_fn, y, y_pred, terms["weights"])
        variables = self.student.trainable_variables
        if statistics is not None:
            # Two extra backward passes on measurement steps only.
            tf.cond(
                statistics.due(step),
                lambda: statistics.record(tape, halves[:2], variables, halves[2]),
                lambda: tf.constant(0.0),
            )
        self.optimizer.minimize(terms["total"], variables, tape=tape)
        self._update_trackers(terms, step)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    def _task_loss_fn(self, y, y_pred, sample_weight):
        """The compiled task loss without regularisation (for the noise-scale halves)."""
        return self.compiled_loss(y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = (
            tf.convert_to_tensor(self.optimizer.iterations)
            if self.optimizer is not None
            else tf.constant(0, tf.int64)
        )
        y_pred = self.student(x, training=False)
        terms = self._step_terms(x, y, y_pred, sample_weight, step)
        self._update_trackers(terms, step)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    # ------------------------------------------------------------------
    # Keras plumbing.

    def compile(self, *args, **kwargs):
        """`tf_keras.Model.compile`; a Keras 3 (`tf.keras`) optimizer, loss or metric is refused."""
        errors.check_tf_keras([args, kwargs], "compile()")
        super().compile(*args, **kwargs)

    def fit(self, *args, **kwargs):
        """`tf_keras.Model.fit`, with an `ExchangeCallback` added if none is given."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        arguments["callbacks"] = callbacks_lib.with_exchange(
            arguments.get("callbacks"), self._exchange_every_n_steps
        )
        return super().fit(**arguments)

    def save(self, filepath, *args, **kwargs):
        """Saves the student alone (`model.student.save`): the served model.

        What `keras.callbacks.ModelCheckpoint` calls with its defaults, so it
        works as for any Keras model; the file holds no teacher and loads with
        plain `tf_keras.models.load_model`. Training state (student, teachers,
        optimizer) is what `save_weights` and `BackupAndRestore` keep.
        """
        logging.log_first_n(
            logging.INFO, "CodistillModel.save: saving the student alone to %s", 1, filepath
        )
        return self.student.save(filepath, *args, **kwargs)

    def __dir__(self):
        # tf_keras' `.weights.h5` format finds what to save by walking dir();
        # `teachers` is a view that changes with the active buffer, so a
        # file saved with the spare buffer active did not load. The pool's
        # own attributes are walked instead.
        return [name for name in super().__dir__() if name != "teachers"]

    def get_config(self):
        raise NotImplementedError(
            "CodistillModel is not serialisable as a model: model.save (and "
            "ModelCheckpoint) save the student alone, for serving; use "
            "keras.callbacks.BackupAndRestore (or save_weights) to checkpoint training state"
        )
