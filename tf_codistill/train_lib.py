"""Train one codistillation group end to end: the single gin root.

`train_group` is what `binaries/train.py` runs. Flags give the process its
identity (root directory, group index, number of groups, strategy); gin gives
everything else (model, data, optimiser, codistillation settings). The group
writes into `<root_dir>/group_<i>/` (`layout.py`): its published checkpoints,
`operative_config.gin`, `metrics.json`, `tensorboard/` and `backup/`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Optional
from typing import Union

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import callbacks as callbacks_lib
from tf_codistill import codistill_model
from tf_codistill import distribute
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import gin_errors
from tf_codistill import layout
from tf_codistill import losses
from tf_codistill import ownership
from tf_codistill import peer_selection as peer_selection_lib
from tf_codistill import schedules
from tf_codistill.datasets import sharding

__all__ = ["METRICS_FILE", "resumed_step", "train_group"]

METRICS_FILE = layout.METRICS_FILE


def _metric(spec: Union[str, Callable]) -> Any:
    """A metric name (kept as is for compile) or factory (called in scope)."""
    return spec if isinstance(spec, str) else spec()


def _writable_dir(path: str, chief: bool) -> str:
    """`path` on the chief; a throw-away directory on other workers."""
    if chief:
        with exchange.writing("the group's directory", path):
            tf.io.gfile.makedirs(path)
        return path
    return tempfile.mkdtemp(prefix="tf_codistill_worker_")


def _write_operative_config(group_dir: str) -> None:
    """The gin parameters this group actually used, next to its checkpoints."""
    with exchange.writing("the operative config", group_dir):
        tf.io.gfile.makedirs(group_dir)
        with tf.io.gfile.GFile(layout.operative_config_path(group_dir), "w") as f:
            f.write(gin.operative_config_str())


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose failed writes stop training with one clear error.

    Keras lets a failed backup's `tf.errors.OpError` out of the callback; an
    `OutOfRangeError` (EFBIG: a file size limit) would then be taken by `fit`
    for the end of the data and end the epoch without a word.

    Also records the *last* batch of an execution as the one backed up: Keras
    records the first (`on_train_batch_begin`), so with `steps_per_execution`
    > 1 a restarted group repeated all but one of that execution's batches,
    training more steps than asked and shifting its evaluations.
    """

    def on_train_begin(self, logs=None):
        # Restores the backup, if any. A backup of another model (the same
        # root_dir resumed with a changed model) fails there with a
        # shape or structure error deep inside fit().
        try:
            super().on_train_begin(logs)
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            # Keras keeps the chief's backup in <backup_dir>/chief/.
            if not tf.io.gfile.glob(os.path.join(self.backup_dir, "*", "*.index")):
                raise
            group_dir = os.path.dirname(os.path.normpath(self.backup_dir))
            raise errors.RunMismatchError(
                f"this root_dir holds a run of another model (its resume state in backup/ "
                f"does not fit the model configured now); use a new --root_dir, or delete "
                f"{group_dir} to train this group from scratch. "
                f"{errors.one_line(e, with_type=True)}"
            ) from e

    def on_train_batch_end(self, batch, logs=None):
        _record_saved_batch(self, batch)
        with exchange.writing("the resume state", self.backup_dir):
            super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        with exchange.writing("the resume state", self.backup_dir):
            super().on_epoch_end(epoch, logs)


def _record_saved_batch(backup: keras.callbacks.BackupAndRestore, batch: int) -> None:
    """Makes `backup`'s next save record `batch` as the batch it was made after.

    tf_keras has no public way: BackupAndRestore keeps the batch in its
    training state's `_ckpt_saved_batch` variable, which it assigns in
    `on_train_batch_begin`. If tf_keras renames it, this raises at the first
    batch (tests/test_train_lib.py, with steps_per_execution > 1).
    """
    backup._training_state._ckpt_saved_batch.assign(batch)  # pylint: disable=protected-access


def resumed_step(backup_dir: str) -> int:
    """The step a restarted group's BackupAndRestore state holds (0 if none).

    Read before the input pipeline is built, so the training data can resume
    where it stopped; BackupAndRestore itself restores the model in `fit`.
    """
    key = "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
    for directory in (os.path.join(backup_dir, "chief"), backup_dir):
        path = tf.train.latest_checkpoint(directory)
        if path:
            try:
                return int(tf.train.load_checkpoint(path).get_tensor(key))
            except (tf.errors.OpError, ValueError) as e:
                logging.warning("Cannot read the step of %s (%s); data restarts", path, e)
    return 0


def _input(
    strategy: tf.distribute.Strategy,
    input_fn: Callable[[sharding.DataContext], tf.data.Dataset],
    training: bool,
    global_batch_size: int,
    group_index: int,
    num_groups: int,
    data_split: str,
    data_seed: int,
    initial_step: int = 0,
):
    """The group's dataset, distributed over its workers and replicas."""

    def make(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        context = sharding.DataContext(
            training=training,
            batch_size=input_context.get_per_replica_batch_size(global_batch_size),
            group_index=group_index,
            num_groups=num_groups,
            mode=data_split,
            seed=data_seed,
            worker_index=input_context.input_pipeline_id,
            num_workers=input_context.num_input_pipelines,
            initial_step=initial_step,
            replicas_per_pipeline=max(
                1, input_context.num_replicas_in_sync // input_context.num_input_pipelines
            ),
        )
        return input_fn(context)

    return strategy.distribute_datasets_from_function(make)


def _distributed_eval_steps(
    strategy: tf.distribute.Strategy,
    input_fn: Callable[[sharding.DataContext], tf.data.Dataset],
    global_batch_size: int,
    group_index: int,
    num_groups: int,
    data_split: str,
    data_seed: int,
) -> int:
    """Evaluation steps for a group under a distribution strategy.

    Keras needs a step count to evaluate a distributed dataset, and the workers
    of a multi-worker group must run the same number of steps (each step is a
    collective). Each worker counts its own batches (the dataset's
    cardinality, known for sharded TFDS and in-memory data), divides by its
    replicas (a step takes one batch per replica), and the workers take the
    minimum.
    """
    workers = distribute.num_workers(strategy)
    replicas_per_worker = max(1, strategy.num_replicas_in_sync // workers)
    context = sharding.DataContext(
        training=False,
        batch_size=max(1, global_batch_size // strategy.num_replicas_in_sync),
        group_index=group_index,
        num_groups=num_groups,
        mode=data_split,
        seed=data_seed,
        worker_index=distribute.worker_index(strategy),
        num_workers=workers,
    )
    local = int(input_fn(context).cardinality().numpy())
    steps = int(distribute.agree_min([local // replicas_per_worker], strategy)[0])
    if local < 0 or steps <= 0:
        raise errors.ConfigError(
            "a distributed group needs the number of evaluation steps: the evaluation "
            f"dataset's size is unknown here (cardinality {local}); set "
            "tf_codistill.train_lib.train_group.eval_steps"
        )
    return steps


@gin.configurable(
    module="tf_codistill.train_lib",
    denylist=["root_dir", "group_index", "num_groups", "strategy"],
)
@gin_errors.explain_binding_errors
def train_group(
    root_dir: str,
    group_index: int = 0,
    num_groups: int = 1,
    strategy: Optional[tf.distribute.Strategy] = None,
    *,
    # Model and data.
    model_fn: Callable[[], keras.Model] = gin.REQUIRED,
    input_fn: Callable[[sharding.DataContext], tf.data.Dataset] = gin.REQUIRED,
    eval_input_fn: Optional[Callable[[sharding.DataContext], tf.data.Dataset]] = None,
    global_batch_size: int = gin.REQUIRED,
    eval_batch_size: Optional[int] = None,
    data_split: str = sharding.DISJOINT,
    data_seed: int = 0,
    model_seed: int = 0,
    # Optimisation.
    optimizer: Callable[[], keras.optimizers.Optimizer] = gin.REQUIRED,
    loss: Union[str, keras.losses.Loss] = gin.REQUIRED,
    metrics: Sequence[Union[str, Callable]] = (),
    weighted_metrics: Sequence[Union[str, Callable]] = (),
    train_steps: int = gin.REQUIRED,
    steps_per_loop: int = 1000,
    eval_steps: Optional[int] = None,
    steps_per_execution: int = 1,
    jit_compile: bool = False,
    # Codistillation.
    codistill: bool = True,
    distill_loss: Union[str, losses.DistillationLoss] = "softmax_cross_entropy",
    distill_output: Union[None, int, str] = None,
    distill_weight: Union[float, schedules.DistillWeightSchedule] = 1.0,
    burn_in_steps: Optional[int] = None,
    exchange_every_n_steps: int = 50,
    peer_selection: Union[None, str, peer_selection_lib.PeerSelection] = None,
    teacher_dtype: Optional[str] = None,
    background_publish: bool = False,
    max_staleness_steps: Optional[int] = None,
    checkpoints_to_keep: int = 5,
    wait_for_peers_s: float = 0.0,
    allow_no_distillation: bool = False,
    # Bookkeeping.
    backup_every_n_steps: Optional[int] = None,
    log_every_n_steps: int = 100,
    noise_scale_every_n_steps: Optional[int] = None,
    callbacks: Sequence[Callable[[], keras.callbacks.Callback]] = (),
) -> dict[str, Any]:
    """Trains group `group_index` of a codistillation run; returns its results.

    Args:
      root_dir: the run's directory, shared by all its groups (the exchange dir).
      group_index: this group, in `[0, num_groups)`.
      num_groups: groups in the run (1: a plain single-group run).
      strategy: the group's strategy; defaults to the current one.
      model_fn: returns a new, built `tf_keras.Model` producing logits; called
        inside the strategy scope, also to build the teachers.
      input_fn: `fn(DataContext) -> tf.data.Dataset` of batches for one
        replica; used for training (`context.training=True`) and evaluation.
      eval_input_fn: a separate input function for evaluation, if any.
      global_batch_size: examples per step over all replicas of the group.
      eval_batch_size: global evaluation batch; defaults to `global_batch_size`.
      data_split: `disjoint` (each group its own shard, the paper's setup) or
        `same` (every group all the data, in its own order: the control).
      data_seed: seed of the data order.
      model_seed: initialisation seed; group i uses `model_seed + i`.
      optimizer: a zero-argument factory of a tf_keras optimizer (in gin,
        `@keras.optimizers.Adam`, configured separately); called in scope.
      loss: the task loss for `compile`.
      metrics: metric names or zero-argument factories.
      weighted_metrics: the same, for metrics that must use the batches'
        sample weights (per-token masks of sequence data: Keras applies
        sample weights to `weighted_metrics` only).
      train_steps: total train steps of the group.
      steps_per_loop: train steps between evaluations (one Keras epoch).
      eval_steps: batches per evaluation; None for the whole evaluation set.
      steps_per_execution: train steps per `tf.function` call.
      jit_compile: compile the train step with XLA.
      codistill: False trains an independent group (no distillation; it still
        publishes, e.g. for an ensemble baseline).
      distill_loss: psi, by name or object.
      distill_output: for a model with several outputs, the (logits) output
        psi reads, by name or index (`CodistillModel`).
      distill_weight: weight after burn-in, or a schedule.
      burn_in_steps: steps without distillation, for a numeric
        `distill_weight` (None: the paper's 3000).
      exchange_every_n_steps: checkpoint exchange interval, in train steps.
      peer_selection: which peers the teachers hold in each exchange
        interval: `all_peers` (None, the paper), `random_peer`, `round_robin`
        or a `tf_codistill.peer_selection.PeerSelection` (in gin,
        `@tf_codistill.peer_selection.RandomPeer()`).
      teacher_dtype: None (the student's precision), "bfloat16" or "float16":
        the precision the teachers run in (`CodistillModel`'s argument).
      background_publish: write the group's checkpoints on a helper thread
        from a snapshot taken at the exchange (`CodistillModel`'s argument).
      max_staleness_steps: teachers older than this are left out.
      checkpoints_to_keep: published checkpoints kept.
      wait_for_peers_s: start barrier: wait up to this long for every peer's
        first checkpoint before the first step (0: no barrier).
      allow_no_distillation: accept a codistilling group that never distilled
        (no peer checkpoint ever loaded, every one refused, or a weight of 0
        throughout); otherwise that ends in `NoDistillationError` after the
        results are written. Groups without peers (`codistill=False`, one
        group) are never such a case.
      backup_every_n_steps: interval of the resume state, in train steps
        (whole executions of `steps_per_execution` steps, rounded down);
        defaults to `steps_per_loop`.
      log_every_n_steps: interval of the progress lines.
      noise_scale_every_n_steps: if set, measure the gradient noise scale
        (`callbacks.GradientNoiseScale`) every this many steps; it is logged
        as `gradient_noise_scale` (progress lines, TensorBoard, metrics.json).
      callbacks: zero-argument factories of extra Keras callbacks (in gin,
        `[@tf_codistill.models.CarriedStateCallback]`), run after the built-in
        ones, in `fit` and in the final evaluation.

    Returns:
      A dict with the last evaluation (`final`), every evaluation (`history`),
      the best evaluation task loss and its step (`best`), whether the group
      distilled and what became of each peer's checkpoints (`distillation`),
      and timings; also written to `<root_dir>/group_<i>/metrics.json`.

    Raises:
      ValueError: an inconsistent setting, naming it.
      ExchangeWriteError: the group's directory cannot be written (full or
        unwritable); what was published before stays complete and readable.
      GroupOwnedError: another live process trains this group.
      NoDistillationError: see `allow_no_distillation`.
    """
    start_time = time.time()
    strategy = strategy or tf.distribute.get_strategy()
    global_batch_size = errors.check_int("global_batch_size", global_batch_size, minimum=1)
    train_steps = errors.check_int("train_steps", train_steps, minimum=1)
    steps_per_loop = errors.check_int("steps_per_loop", steps_per_loop, minimum=1)
    log_every_n_steps = errors.check_int("log_every_n_steps", log_every_n_steps, minimum=1)
    if train_steps % steps_per_loop:
        raise errors.ConfigError(
            f"train_steps ({train_steps}) must be a multiple of steps_per_loop ({steps_per_loop})"
        )
    backup_every_n_steps = errors.check_int(
        "backup_every_n_steps", backup_every_n_steps or steps_per_loop, minimum=1
    )
    chief = distribute.is_chief(strategy)
    group_dir = layout.group_dir(root_dir, group_index)
    # The chief owns the group's directory before it writes anything there: a
    # second process started as this group is refused here (ownership.py).
    with ownership.owning(group_dir, f"group {group_index}", chief):
        # TensorBoard output of non-chief workers goes to a throw-away directory.
        summary_dir = layout.tensorboard_dir(_writable_dir(group_dir, chief))
        prefix = f"group {group_index}" if codistill else f"group {group_index} (no distillation)"
        logging.info(
            "%s: %d steps of %d examples on %s (%d replicas, %d workers), data %s, root %s",
            prefix,
            train_steps,
            global_batch_size,
            type(strategy).__name__,
            strategy.num_replicas_in_sync,
            distribute.num_workers(strategy),
            data_split,
            root_dir,
        )

        keras.utils.set_random_seed(model_seed + group_index)
        with strategy.scope():
            student = model_fn()
            model = codistill_model.CodistillModel(
                student,
                group_index=group_index,
                num_groups=num_groups,
                exchange_dir=root_dir,
                distill_loss=distill_loss,
                distill_output=distill_output,
                distill_weight=distill_weight,
                burn_in_steps=burn_in_steps,
                exchange_every_n_steps=exchange_every_n_steps,
                peer_selection=peer_selection,
                teacher_dtype=teacher_dtype,
                background_publish=background_publish,
                peer_indices=None if codistill else [],
                teacher_builder=model_fn,
                max_checkpoints_to_keep=checkpoints_to_keep,
                max_staleness_steps=max_staleness_steps,
            )
            model.compile(
                optimizer=optimizer(),
                loss=loss,
                metrics=[_metric(m) for m in metrics],
                weighted_metrics=[_metric(m) for m in weighted_metrics] or None,
                steps_per_execution=steps_per_execution,
                jit_compile=jit_compile,
            )
        logging.info(
            "%s: student %s has %d parameters", prefix, student.name, student.count_params()
        )

        backup_dir = layout.backup_dir(group_dir)
        initial_step = resumed_step(backup_dir)
        if initial_step:
            logging.info(
                "%s: resuming at step %d; the training data continues there", prefix, initial_step
            )
        train_data = _input(
            strategy,
            input_fn,
            True,
            global_batch_size,
            group_index,
            num_groups,
            data_split,
            data_seed,
            initial_step,
        )
        eval_data = _input(
            strategy,
            eval_input_fn or input_fn,
            False,
            eval_batch_size or global_batch_size,
            group_index,
            num_groups,
            data_split,
            data_seed,
        )
        if eval_steps is None and not distribute.is_default(strategy):
            eval_steps = _distributed_eval_steps(
                strategy,
                eval_input_fn or input_fn,
                eval_batch_size or global_batch_size,
                group_index,
                num_groups,
                data_split,
                data_seed,
            )
            logging.info("%s: %d evaluation steps", prefix, eval_steps)
        if chief:
            _write_operative_config(group_dir)
        history = _History(
            layout.metrics_path(group_dir), chief, model.exchange_client.distillation
        )
        fit_callbacks = [
            _BackupAndRestore(
                # The same directory on every worker: Keras lets only the chief
                # write there, and a restarted non-chief worker reads it back.
                backup_dir,
                # Keras counts executions (of steps_per_execution steps), not steps.
                save_freq=max(1, backup_every_n_steps // steps_per_execution),
                delete_checkpoint=False,
            ),
            callbacks_lib.ExchangeCallback(
                exchange_every_n_steps, wait_for_peers_s=wait_for_peers_s if codistill else 0.0
            ),
        ]
        if noise_scale_every_n_steps:
            # Before the history and the writers, which then see its estimate.
            fit_callbacks.append(
                callbacks_lib.GradientNoiseScale(
                    noise_scale_every_n_steps,
                    read_every_n_steps=min(log_every_n_steps, steps_per_loop),
                )
            )
        fit_callbacks += [
            history,
            callbacks_lib.ProgressLogger(log_every_n_steps, train_steps, prefix),
            callbacks_lib.SummaryWriter(summary_dir, log_every_n_steps),
        ]
        extra_callbacks = [c if isinstance(c, keras.callbacks.Callback) else c() for c in callbacks]
        fit_callbacks += extra_callbacks
        model.fit(
            train_data,
            epochs=train_steps // steps_per_loop,
            steps_per_epoch=steps_per_loop,
            validation_data=eval_data,
            validation_steps=eval_steps,
            callbacks=fit_callbacks,
            verbose=0,
        )
        if not history.evaluations:  # Resumed after the last epoch: evaluate once.
            logs = model.evaluate(
                eval_data, steps=eval_steps, verbose=0, return_dict=True, callbacks=extra_callbacks
            )
            history.record(
                int(model.optimizer.iterations.numpy()), {f"val_{k}": v for k, v in logs.items()}
            )
        history.extra = dict(
            group_index=group_index,
            num_groups=num_groups,
            codistill=codistill,
            data_split=data_split,
            steps=int(model.optimizer.iterations.numpy()),
            wall_seconds=time.time() - start_time,
            teacher_reloads={str(k): v for k, v in model.reload_counts.items()},
        )
        history.write()
        results = history.results()
        if chief:
            _write_operative_config(group_dir)
        # The workers of a group leave together. A worker that exits while
        # another still works is, to TensorFlow's coordination service, a
        # crashed task: ten seconds later the others log "The tasks have
        # crashed" (a CoordinationServiceError) and fail their next
        # collective. The chief is the last to finish (it writes the group's
        # files), so the others wait for it here; a worker that really
        # crashed makes this fail.
        distribute.barrier(strategy)
        final = results["final"]
        logging.info(
            "%s: done, %d steps in %.0f s; final %s",
            prefix,
            results["steps"],
            results["wall_seconds"],
            callbacks_lib.format_logs({k: v for k, v in final.items() if k != "train"}),
        )
        _check_distillation(model, results, train_steps, prefix, allow_no_distillation)
        return results


def _check_distillation(model, results, train_steps, prefix, allow: bool) -> None:
    """Says so, and raises unless `allow`, when a codistilling group never distilled.

    Raises:
      errors.NoDistillationError: with the reason, peer by peer.
    """
    report = results["distillation"]
    if not model.peer_indices:  # An independent group: nothing to distil from.
        return
    if report["never_loaded"] and report["happened"]:
        logging.warning(
            "%s: no teacher was ever loaded from peers %s", prefix, report["never_loaded"]
        )
    if report["happened"]:
        return
    why = report["why_not"]
    last_weight = float(model.distill_weight_schedule(tf.constant(train_steps - 1, tf.int64)))
    if last_weight <= 0:
        why = (
            f"the distillation weight ({model.distill_weight_schedule!r}) is 0 up to the "
            f"last step, {train_steps - 1}; {why}"
        )
    message = f"{prefix} never distilled: {why}"
    logging.warning("%s", message)
    if not allow:
        raise errors.NoDistillationError(
            f"{message}. Its model and metrics are written; pass --allow_no_distillation "
            "(train_group.allow_no_distillation = True) to accept a run without distillation"
        )


class _History(keras.callbacks.Callback):
    """Evaluations per step, kept in `metrics.json` as training goes.

    The file is rewritten after every evaluation, so the launcher (or a
    person) can read progress, and a restarted group keeps the evaluations
    it made before it stopped.
    """

    def __init__(self, path: str, write: bool, distillation: Callable[[], dict[str, Any]]):
        super().__init__()
        self.path = path
        self._writes = write
        self._distillation = distillation
        self.evaluations = []
        self.extra: dict[str, Any] = {}
        # An earlier process of this run (before a restart) distilled.
        self._distilled_before = False

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step and tf.io.gfile.exists(self.path):  # A restarted group's.
            try:
                with tf.io.gfile.GFile(self.path) as f:
                    earlier = json.load(f)
                self.evaluations = [
                    e for e in earlier.get("history", []) if e.get("step", step + 1) <= step
                ]
                self._distilled_before = bool(
                    (earlier.get("distillation") or {}).get("happened", False)
                )
            except (ValueError, tf.errors.OpError) as e:
                logging.warning("Ignoring unreadable %s: %s", self.path, e)

    def record(self, step: int, logs: dict[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in logs.items() if k.startswith("val_")}
        if values:
            # The epoch's training means next to the evaluation: what the
            # schedule, the teachers' age and the noise scale were.
            values["train"] = {
                k: float(np.asarray(v))
                for k, v in logs.items()
                if not k.startswith("val_") and np.size(v) == 1
            }
            self.evaluations = [e for e in self.evaluations if e["step"] != step]
            self.evaluations.append({"step": step, **values})
            self.write()

    def on_epoch_end(self, epoch, logs=None):
        self.record(int(self.model.optimizer.iterations.numpy()), logs or {})

    def results(self) -> dict[str, Any]:
        final = dict(self.evaluations[-1]) if self.evaluations else {}
        best = None
        if self.evaluations and "val_task_loss" in self.evaluations[0]:
            best_eval = min(self.evaluations, key=lambda e: e["val_task_loss"])
            best = {"step": best_eval["step"], "val_task_loss": best_eval["val_task_loss"]}
        distillation = self._distillation()
        if self._distilled_before and not distillation["happened"]:
            distillation.update(happened=True, why_not="", note="in an earlier process")
        return {
            "final": final,
            "history": self.evaluations,
            "best": best,
            "distillation": distillation,
            **self.extra,
        }

    def write(self) -> None:
        if not self._writes:
            return
        tmp = self.path + ".tmp"
        # Written whole, then renamed: a reader never sees half a file.
        with exchange.writing("the metrics", os.path.dirname(self.path)):
            with tf.io.gfile.GFile(tmp, "w") as f:
                json.dump(self.results(), f, indent=2, sort_keys=True)
            tf.io.gfile.rename(tmp, self.path, overwrite=True)
