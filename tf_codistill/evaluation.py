"""Evaluate a run's published checkpoints, one group or an ensemble of groups.

An evaluator learns everything about the model and the data from the run
itself: every group writes `<root_dir>/group_<i>/operative_config.gin`, and
`RunConfig` reads `tf_codistill.train_lib.train_group`'s `model_fn`,
`eval_input_fn` (or `input_fn`), `loss`, `metrics`, `eval_batch_size` (or
`global_batch_size`), `eval_steps` and `distill_loss` back from it (extra gin
files and bindings may override them). Checkpoints are the ones the group
publishes for its peers (`exchange.py`): `<root_dir>/group_<i>/ckpt-<step>`,
a `tf.train.Checkpoint(model=student, step=...)`.

Three ways to evaluate a group (`GroupEvaluator`):

* `latest()`: its latest checkpoint;
* `all()`: every checkpoint still on disk, each step once, in step order;
* `sidecar()`: next to a group that is still training: poll for its latest
  checkpoint, evaluate each new one once, and stop when a final step has been
  evaluated or no new checkpoint came for `timeout_s`. A checkpoint that cannot
  be read (deleted by the writer's cleanup while we read it, half written on a
  filesystem without atomic renames, corrupt) is skipped with the reason
  logged and tried again at the next poll, as tf_keras' `SidecarEvaluator`
  does, until `max_attempts` reads of it have failed.

`evaluate_ensemble` evaluates the average of several groups' latest
checkpoints (the paper's 2-way ensemble baseline, section 3.3): probabilities
are averaged (softmax heads) or the per-label probabilities (sigmoid heads),
and the `EnsembleModel` outputs the *logits of the averaged distribution*, so
the run's own compiled loss (`from_logits=True`) and metrics apply unchanged.

Results go to `<output_dir>/eval_<name>.json` (`name` is `group_<i>` or
`ensemble_<i>_<j>...`) and to TensorBoard under
`<output_dir>/tensorboard/<name>/`, under the tags the training job uses for
its own evaluations (`task_loss`, `accuracy`, ...). The JSON file is

    {"name": "group_0", "root_dir": ..., "groups": [0], "kind": "group",
     "evaluations": [{"step": 40, "checkpoint": "ckpt-40", "task_loss": ...,
                      "accuracy": ..., "seconds": 0.2, "time": 1.7e9}, ...],
     "skipped": [{"step": 45, "checkpoint": "ckpt-45", "reason": ...,
                  "attempts": 3}]}

with one evaluation per step (re-evaluating a step replaces it); ensembles add
`head` and, per evaluation, `member_steps`. `task_loss` is the compiled loss,
the number the training job logs as `val_task_loss`.

Everything here replaces the process's gin config while it reads a run's
config, and leaves it cleared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import posixpath
import re
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Optional

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill import layout
from tf_codistill import losses
from tf_codistill import metrics as metrics_lib
from tf_codistill import train_lib
from tf_codistill.datasets import sharding

__all__ = [
    "CheckpointError",
    "EnsembleModel",
    "EvaluationError",
    "GroupEvaluator",
    "Results",
    "RunConfig",
    "LoadedModel",
    "evaluate_ensemble",
    "find_groups",
    "list_checkpoints",
    "load_group",
    "load_model",
    "restore",
]

TRAIN_GROUP = "tf_codistill.train_lib.train_group"
TASK_LOSS = "task_loss"
DEFAULT_OUTPUT_SUBDIR = layout.EVAL_DIR

_TRAIN_GROUP_PARAMS = inspect.signature(train_lib.train_group).parameters


# The errors this module raises (defined in tf_codistill.errors).
EvaluationError = errors.EvaluationError
CheckpointError = errors.CheckpointError


def find_groups(root_dir: str) -> list[int]:
    """Indices of the `group_<i>` directories in `root_dir`, sorted."""
    if not tf.io.gfile.isdir(root_dir):
        return []
    indices = (layout.group_index(name) for name in tf.io.gfile.listdir(root_dir))
    return sorted(i for i in indices if i is not None)


def list_checkpoints(directory: str) -> list[exchange.CheckpointRef]:
    """Every checkpoint in a group directory (by its index file), in step order."""
    refs = []
    if not tf.io.gfile.isdir(directory):
        return refs
    for name in tf.io.gfile.listdir(directory):
        step = layout.checkpoint_step(name[: -len(".index")]) if name.endswith(".index") else None
        if step is not None:
            refs.append(exchange.CheckpointRef(layout.checkpoint_prefix(directory, step), step))
    return sorted(refs, key=lambda r: r.step)


def restore(
    model: keras.Model,
    prefix: str,
    signature: Optional[exchange.ModelSignature] = None,
) -> int:
    """Restores a published checkpoint into `model`; returns the step it holds.

    `exchange.restore_validated` without a peer's defences: the index is
    checked against the model's variables first (a checkpoint of another
    architecture is refused with the variables that differ instead of being
    half restored), then restored with `expect_partial()` (a compiled
    student's checkpoint may also hold its optimizer).

    Args:
      model: a built model of the run's architecture.
      prefix: checkpoint prefix, `<group dir>/ckpt-<step>`.
      signature: `exchange.ModelSignature.of_model(model)`, computed once by
        callers that restore repeatedly.

    Returns:
      The step stored in the checkpoint (the step in its name if it holds
      none).

    Raises:
      CheckpointError: the checkpoint is missing, unreadable, corrupt or of
        another architecture. The model may then hold a mix of old and new
        values; restore a good checkpoint before using it.
    """
    name_step = layout.checkpoint_step(posixpath.basename(prefix))
    ref = exchange.CheckpointRef(prefix, 0 if name_step is None else name_step)
    signature = signature or exchange.ModelSignature.of_model(model)
    return exchange.restore_validated(model, ref, signature, defensive=False)


def _unset_to_none(value: Any) -> Any:
    return None if value is gin.REQUIRED else value


class RunConfig:
    """A run's gin configuration, read back to rebuild its model and data.

    The config is re-parsed (a few milliseconds) each time something is built
    from it, because gin configurables read their bindings when they are
    called: a model builder called after the config was replaced would
    silently build the default model.

    Args:
      gin_files: the run's `operative_config.gin` (or any gin files that bind
        `tf_codistill.train_lib.train_group`), then extra files.
      gin_bindings: extra bindings, applied last.

    Raises:
      gin_utils.GinConfigError: a file is missing or does not parse, or it
        sets no batch size. (A missing `model_fn`, input function or loss is
        reported by the method that needs it, as an `EvaluationError`: the
        churn tool reads only the data from a config.)
    """

    def __init__(self, gin_files: Sequence[str], gin_bindings: Sequence[str] = ()):
        self.gin_files = list(gin_files)
        self.gin_bindings = list(gin_bindings)
        with self.active():
            self.eval_batch_size = _unset_to_none(
                self.value("eval_batch_size") or self.value("global_batch_size")
            )
            self.eval_steps = self.value("eval_steps")
            self.train_steps = _unset_to_none(self.value("train_steps"))
            self.data_split = self.value("data_split")
            self.data_seed = self.value("data_seed")
            self.distill_loss = losses.get(self.value("distill_loss"))
            self.has_model = self.value("model_fn") is not gin.REQUIRED
            self.has_input = (self.value("eval_input_fn") or self.value("input_fn")) not in (
                None,
                gin.REQUIRED,
            )
            if self.eval_batch_size is None:
                raise gin_utils.GinConfigError(
                    f"neither {TRAIN_GROUP}.eval_batch_size nor .global_batch_size is set"
                )
        logging.info(
            "Run config %s: eval batch %s, eval steps %s, train steps %s, distill loss %r",
            self.gin_files[0] if self.gin_files else "(bindings only)",
            self.eval_batch_size,
            self.eval_steps,
            self.train_steps,
            self.distill_loss,
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Makes this the process's gin config for the duration of the block."""
        gin.clear_config()
        try:
            gin_utils.parse(self.gin_files, self.gin_bindings, finalize=False)
            yield
        finally:
            gin.clear_config()

    @staticmethod
    def value(parameter: str) -> Any:
        """`train_group`'s `parameter` in the active config, or its default."""
        return gin_utils.query(
            f"{TRAIN_GROUP}.{parameter}", default=_TRAIN_GROUP_PARAMS[parameter].default
        )

    def build_model(self) -> keras.Model:
        """A new student from the run's `model_fn` (random weights: restore one)."""
        if not self.has_model:
            raise EvaluationError(f"the config binds no {TRAIN_GROUP}.model_fn")
        with self.active():
            model = self.value("model_fn")()
        if not isinstance(model, keras.Model):
            raise EvaluationError(
                f"model_fn must return a tf_keras.Model, got {type(model).__module__}."
                f"{type(model).__name__}"
            )
        return model

    def dataset(
        self,
        group_index: int = 0,
        num_groups: int = 1,
        batch_size: Optional[int] = None,
    ) -> tf.data.Dataset:
        """The run's evaluation data, batched, as group `group_index` reads it.

        Built like the training job builds it (`DataContext(training=False)`,
        the same for every group of the run), for one replica.

        Args:
          group_index: the group whose view to build.
          num_groups: groups in the run (at least `group_index + 1`).
          batch_size: examples per batch; defaults to the run's
            `eval_batch_size` (else `global_batch_size`).
        """
        if not self.has_input:
            raise EvaluationError(f"the config binds no {TRAIN_GROUP}.eval_input_fn or input_fn")
        context = sharding.DataContext(
            training=False,
            batch_size=int(batch_size or self.eval_batch_size),
            group_index=group_index,
            num_groups=max(num_groups, group_index + 1),
            mode=self.data_split,
            seed=self.data_seed,
        )
        with self.active():
            input_fn = self.value("eval_input_fn") or self.value("input_fn")
            dataset = input_fn(context)
        if not isinstance(dataset, tf.data.Dataset):
            raise EvaluationError(f"the input function returned {type(dataset)}, not a Dataset")
        return dataset

    def loss_and_metrics(self) -> tuple[Any, list]:
        """New instances of the run's compiled task loss and metrics."""
        with self.active():
            loss = self.value("loss")
            if loss is gin.REQUIRED:
                raise EvaluationError(f"the config binds no {TRAIN_GROUP}.loss")
            metrics = [m if isinstance(m, str) else m() for m in self.value("metrics")]
        return loss, metrics

    def weighted_metrics(self) -> list:
        """New instances of the run's weighted metrics (e.g. the LM's per-token cross-entropy)."""
        with self.active():
            weighted = self.value("weighted_metrics") or []
            return [m if isinstance(m, str) else m() for m in weighted]


@dataclasses.dataclass
class GroupRun:
    """One group of a run: where it is and how it was configured."""

    root_dir: str
    group_index: int
    directory: str
    config: RunConfig
    num_groups: int

    @property
    def name(self) -> str:
        return f"group_{self.group_index}"


def load_group(
    root_dir: str,
    group_index: int,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    wait_s: float = 0.0,
    poll_interval_s: float = 1.0,
) -> GroupRun:
    """Reads group `group_index` of the run in `root_dir`.

    Args:
      root_dir: the run's directory.
      group_index: the group.
      gin_files: extra gin files applied after the group's operative config.
      gin_bindings: extra bindings, applied last.
      wait_s: wait up to this long for the group's operative config (a
        sidecar started with the training job may come first).
      poll_interval_s: how often to look for it while waiting.

    Raises:
      EvaluationError: no such group, or it has no operative config.
      gin_utils.GinConfigError: the config does not parse.
    """
    directory = layout.group_dir(root_dir, group_index)
    config_path = layout.operative_config_path(directory)
    deadline = time.monotonic() + wait_s
    while not tf.io.gfile.exists(config_path):
        if time.monotonic() >= deadline:
            groups = find_groups(root_dir)
            if group_index not in groups:
                found = ", ".join(map(str, groups)) if groups else "none"
                raise EvaluationError(
                    f"no group {group_index} in {root_dir} (no directory group_{group_index}; "
                    f"groups found: {found})"
                )
            raise EvaluationError(
                f"{config_path} does not exist: group {group_index} has not started yet, or "
                "was not written by tf_codistill's train_group"
            )
        time.sleep(poll_interval_s)
    config = RunConfig([config_path, *gin_files], gin_bindings)
    num_groups = max([group_index + 1, *[g + 1 for g in find_groups(root_dir)]])
    return GroupRun(root_dir, group_index, directory, config, num_groups)


class Results:
    """Evaluations of one model, kept in a JSON file and in TensorBoard.

    Earlier results in the same file are kept (one per step), so re-running
    an evaluation adds to its history.

    Args:
      output_dir: directory of `eval_<name>.json` and `tensorboard/<name>/`.
      name: `group_<i>` or `ensemble_<i>_<j>`.
      info: fields written at the top of the JSON file.
    """

    def __init__(self, output_dir: str, name: str, info: Optional[dict[str, Any]] = None):
        self.path = posixpath.join(output_dir, f"eval_{name}.json")
        self.tensorboard_dir = posixpath.join(output_dir, "tensorboard", name)
        self.data: dict[str, Any] = {"name": name, "evaluations": [], "skipped": []}
        tf.io.gfile.makedirs(output_dir)
        if tf.io.gfile.exists(self.path):
            try:
                with tf.io.gfile.GFile(self.path) as f:
                    earlier = json.load(f)
                self.data["evaluations"] = list(earlier.get("evaluations", []))
                self.data["skipped"] = list(earlier.get("skipped", []))
            except (ValueError, tf.errors.OpError) as e:
                logging.warning("Starting a new %s; the old one is unreadable: %s", self.path, e)
        self.data.update(info or {})
        self._writer = None

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return self.data["evaluations"]

    def record(self, step: int, values: dict[str, float], **extra) -> dict[str, Any]:
        """Adds (or replaces) the evaluation at `step`; returns the entry."""
        entry = {"step": int(step), **{k: float(v) for k, v in values.items()}, **extra}
        self.data["evaluations"] = sorted(
            [e for e in self.evaluations if e["step"] != step] + [entry], key=lambda e: e["step"]
        )
        self.data["skipped"] = [s for s in self.data["skipped"] if s["step"] != step]
        self._write_json()
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
        with self._writer.as_default(step=int(step)):
            for key, value in values.items():
                tf.summary.scalar(key, float(value))
        self._writer.flush()
        return entry

    def skip(self, step: int, checkpoint: str, reason: str, attempts: int) -> None:
        """Records a checkpoint given up on."""
        self.data["skipped"] = [s for s in self.data["skipped"] if s["step"] != step] + [
            {"step": int(step), "checkpoint": checkpoint, "reason": reason, "attempts": attempts}
        ]
        self._write_json()

    def _write_json(self) -> None:
        tmp = self.path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
        tf.io.gfile.rename(tmp, self.path, overwrite=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _evaluate(model: keras.Model, dataset: tf.data.Dataset, steps: Optional[int]) -> dict:
    """`model.evaluate`, with the compiled loss reported as `task_loss`."""
    logs = model.evaluate(dataset, steps=steps, verbose=0, return_dict=True)
    values = {TASK_LOSS if k == "loss" else k: float(np.asarray(v)) for k, v in logs.items()}
    return values


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.6g}" for k, v in values.items())


default_output_dir = layout.eval_dir


class GroupEvaluator:
    """Evaluates one group's published checkpoints on the run's evaluation data.

    Args:
      run: the group (`load_group`).
      output_dir: where results go; defaults to `<root_dir>/eval`.
    """

    def __init__(self, run: GroupRun, output_dir: Optional[str] = None):
        self.run = run
        self.model = run.config.build_model()
        self.signature = exchange.ModelSignature.of_model(self.model)
        self.dataset = run.config.dataset(run.group_index, run.num_groups)
        loss, metrics = run.config.loss_and_metrics()
        self.model.compile(
            loss=loss, metrics=metrics, weighted_metrics=run.config.weighted_metrics()
        )
        self.results = Results(
            output_dir or default_output_dir(run.root_dir),
            run.name,
            {"kind": "group", "root_dir": run.root_dir, "groups": [run.group_index]},
        )

    def evaluate_checkpoint(self, ref: exchange.CheckpointRef) -> dict[str, Any]:
        """Restores and evaluates one checkpoint and records the result.

        Raises:
          CheckpointError: it cannot be restored (nothing is recorded).
        """
        start = time.perf_counter()
        step = restore(self.model, ref.prefix, self.signature)
        if step != ref.step:
            raise CheckpointError(f"ckpt-{ref.step} holds step {step}, not {ref.step}")
        values = _evaluate(self.model, self.dataset, self.run.config.eval_steps)
        entry = self.results.record(
            step,
            values,
            checkpoint=posixpath.basename(ref.prefix),
            seconds=round(time.perf_counter() - start, 3),
            time=time.time(),
        )
        logging.info("%s step %d: %s", self.run.name, step, _format(values))
        return entry

    def latest(self) -> dict[str, Any]:
        """Evaluates the group's latest checkpoint.

        Raises:
          EvaluationError: the group has published nothing, or its latest
            checkpoint cannot be restored.
        """
        try:
            ref = exchange.latest_checkpoint(self.run.directory)
        except exchange.PeerCheckpointError as e:
            raise EvaluationError(f"{self.run.name}: {e}") from e
        if ref is None:
            raise EvaluationError(f"{self.run.name} has no checkpoint in {self.run.directory}")
        try:
            return self.evaluate_checkpoint(ref)
        except CheckpointError as e:
            raise EvaluationError(f"{self.run.name}: {e}") from e

    def all(self) -> list[dict[str, Any]]:
        """Evaluates every checkpoint on disk once, in step order.

        A checkpoint that cannot be restored (e.g. deleted by the writer's
        cleanup since it was listed) is skipped, logged and recorded.

        Raises:
          EvaluationError: the group has no checkpoint at all.
        """
        refs = list_checkpoints(self.run.directory)
        if not refs:
            raise EvaluationError(f"{self.run.name} has no checkpoint in {self.run.directory}")
        logging.info("%s: evaluating %d checkpoints", self.run.name, len(refs))
        entries = []
        for ref in refs:
            try:
                entries.append(self.evaluate_checkpoint(ref))
            except CheckpointError as e:
                logging.warning("%s: skipping ckpt-%d: %s", self.run.name, ref.step, e)
                self.results.skip(ref.step, posixpath.basename(ref.prefix), str(e), 1)
        return entries

    def sidecar(
        self,
        final_step: Optional[int] = None,
        timeout_s: float = 3600.0,
        poll_interval_s: float = 10.0,
        max_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[dict[str, Any]]:
        """Evaluates the group's new checkpoints while it trains.

        Every `poll_interval_s` the group's latest checkpoint is looked up; a
        step not evaluated yet is evaluated. Checkpoints published and
        replaced between two polls are not evaluated (the newest wins, as in
        tf_keras' `SidecarEvaluator`); use `all()` afterwards for every kept
        one.

        Args:
          final_step: stop after evaluating a checkpoint of this step or later
            (typically the run's `train_steps`); None: only the timeout stops.
          timeout_s: stop when no new checkpoint has been evaluated for this
            long (seconds).
          poll_interval_s: seconds between looks at the group's directory.
          max_attempts: reads of one checkpoint before giving up on it.
          sleep: the sleeping function (tests pass a fake one).

        Returns:
          The evaluations made, in order.
        """
        if max_attempts < 1:
            raise errors.ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        logging.info(
            "%s: sidecar on %s until step %s (timeout %.0f s without a new checkpoint)",
            self.run.name,
            self.run.directory,
            final_step,
            timeout_s,
        )
        entries: list[dict[str, Any]] = []
        evaluated: set[int] = set()
        failures: dict[int, int] = {}
        last_news = time.monotonic()
        last_wait_reason = None
        while True:
            ref = None
            try:
                ref = exchange.latest_checkpoint(self.run.directory)
            except exchange.PeerCheckpointError as e:
                # E.g. the state file names a checkpoint the cleanup just deleted.
                if str(e) != last_wait_reason:
                    logging.info("%s: no usable checkpoint yet: %s", self.run.name, e)
                last_wait_reason = str(e)
            if (
                ref is not None
                and ref.step not in evaluated
                and failures.get(ref.step, 0) < max_attempts
            ):
                try:
                    entries.append(self.evaluate_checkpoint(ref))
                    evaluated.add(ref.step)
                    last_news = time.monotonic()
                    if final_step is not None and ref.step >= final_step:
                        logging.info(
                            "%s: evaluated step %d >= final step %d; done",
                            self.run.name,
                            ref.step,
                            final_step,
                        )
                        return entries
                except CheckpointError as e:
                    # The writer may still be writing it, or have deleted it
                    # (max_to_keep) while we read: try again at the next poll.
                    attempts = failures[ref.step] = failures.get(ref.step, 0) + 1
                    name = posixpath.basename(ref.prefix)
                    if attempts < max_attempts:
                        logging.warning(
                            "%s: cannot evaluate %s now (attempt %d of %d), retrying later: %s",
                            self.run.name,
                            name,
                            attempts,
                            max_attempts,
                            e,
                        )
                    else:
                        logging.warning(
                            "%s: skipping %s after %d failed attempts: %s",
                            self.run.name,
                            name,
                            attempts,
                            e,
                        )
                        self.results.skip(ref.step, name, str(e), attempts)
            waited = time.monotonic() - last_news
            if waited >= timeout_s:
                logging.warning(
                    "%s: no new checkpoint for %.0f s (timeout_s=%g); stopping the sidecar%s",
                    self.run.name,
                    waited,
                    timeout_s,
                    "" if final_step is None else f" before the final step {final_step}",
                )
                return entries
            sleep(poll_interval_s)

    def close(self) -> None:
        self.results.close()


class EnsembleModel(keras.Model):
    """Averages its members' predicted probabilities; outputs their logits.

    * `softmax` head: the output is `log(mean_j softmax(z_j))`, a valid logits
      vector whose softmax is the averaged distribution;
    * `sigmoid` head (binary or multi-label): the output is
      `logit(mean_j sigmoid(z_j))` per label, whose sigmoid is the averaged
      probability.

    Both are computed in log space (log-sum-exp), so they stay finite where
    the probabilities underflow. A loss or metric with `from_logits=True`
    therefore sees the ensemble's averaged prediction.

    Args:
      members: models returning logits of one shape, e.g. `[batch, classes]`
        or `[batch, time, vocab]`; run with `training=False`.
      head: `softmax` or `sigmoid`.
    """

    def __init__(self, members: Sequence[keras.Model], head: str, **kwargs):
        kwargs.setdefault("name", "ensemble")
        super().__init__(**kwargs)
        if len(members) < 1:
            raise errors.ConfigError("an ensemble needs at least one member")
        if head not in metrics_lib.HEADS:
            raise errors.ConfigError(f"head must be one of {metrics_lib.HEADS}, got {head!r}")
        self.members = list(members)
        for member in self.members:
            member.trainable = False
        self.head = head

    def call(self, inputs, training=None):
        del training  # Members always predict in inference mode.
        logits = [tf.cast(m(inputs, training=False), tf.float32) for m in self.members]
        return ensemble_logits(logits, self.head)


def ensemble_logits(logits: Sequence[tf.Tensor], head: str) -> tf.Tensor:
    """Logits of the members' averaged probabilities (see `EnsembleModel`).

    Args:
      logits: one `[batch, ...]` float logits tensor per member, same shapes.
      head: `softmax` (average over the last axis' distribution) or `sigmoid`
        (average each label's probability).

    Returns:
      `[batch, ...]` float32 logits of the averaged prediction.
    """
    logits = [tf.cast(z, tf.float32) for z in logits]
    if head == metrics_lib.SOFTMAX:
        return losses.average_log_probs(logits, tf.ones([len(logits)], tf.float32))
    if head == metrics_lib.SIGMOID:
        stacked = tf.stack(logits, axis=0)
        log_k = math.log(len(logits))
        # log mean p and log mean (1 - p), with 1 - sigmoid(z) = sigmoid(-z).
        log_p = tf.reduce_logsumexp(tf.math.log_sigmoid(stacked), axis=0) - log_k
        log_not_p = tf.reduce_logsumexp(tf.math.log_sigmoid(-stacked), axis=0) - log_k
        return log_p - log_not_p
    raise errors.ConfigError(f"head must be one of {metrics_lib.HEADS}, got {head!r}")


def ensemble_name(group_indices: Sequence[int]) -> str:
    return "ensemble_" + "_".join(str(g) for g in group_indices)


def latest_restored(run: GroupRun) -> tuple[keras.Model, int]:
    """A new model of the group's architecture holding its latest checkpoint.

    Raises:
      EvaluationError: the group has no usable checkpoint.
    """
    try:
        ref = exchange.latest_checkpoint(run.directory)
    except exchange.PeerCheckpointError as e:
        raise EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e
    if ref is None:
        raise EvaluationError(f"{run.name} has no checkpoint in {run.directory}")
    model = run.config.build_model()
    try:
        step = restore(model, ref.prefix)
    except CheckpointError as e:
        raise EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e
    return model, step


def evaluate_ensemble(
    runs: Sequence[GroupRun],
    output_dir: Optional[str] = None,
    head: str = "auto",
) -> dict[str, Any]:
    """Evaluates the ensemble of the groups' latest checkpoints.

    The data, loss, metrics and evaluation steps are the first group's.

    Args:
      runs: two or more groups (`load_group`).
      output_dir: where results go; defaults to the first run's
        `<root_dir>/eval`.
      head: `softmax`, `sigmoid`, or `auto`: from the run's `distill_loss`
        (`sigmoid_cross_entropy` means a sigmoid head, the softmax losses a
        softmax head) or else from the output shape (one output: sigmoid).

    Returns:
      The recorded entry: the metrics, `step` (the smallest member step) and
      `member_steps`.

    Raises:
      EvaluationError: fewer than two groups, or a group without a usable
        checkpoint.
    """
    if len(runs) < 2:
        raise EvaluationError(f"an ensemble needs at least two groups, got {len(runs)}")
    start = time.perf_counter()
    members, steps = [], []
    for run in runs:
        model, step = latest_restored(run)
        members.append(model)
        steps.append(step)
    first = runs[0]
    if head == "auto":
        head = metrics_lib.infer_head(first.config.distill_loss, members[0].output_shape)
    ensemble = EnsembleModel(members, head)
    loss, metrics = first.config.loss_and_metrics()
    ensemble.compile(loss=loss, metrics=metrics, weighted_metrics=first.config.weighted_metrics())
    dataset = first.config.dataset(first.group_index, first.num_groups)
    values = _evaluate(ensemble, dataset, first.config.eval_steps)
    name = ensemble_name([r.group_index for r in runs])
    results = Results(
        output_dir or default_output_dir(first.root_dir),
        name,
        {
            "kind": "ensemble",
            "root_dir": first.root_dir,
            "groups": [r.group_index for r in runs],
            "head": head,
        },
    )
    entry = results.record(
        min(steps),
        values,
        member_steps={r.name: s for r, s in zip(runs, steps, strict=True)},
        seconds=round(time.perf_counter() - start, 3),
        time=time.time(),
    )
    results.close()
    logging.info(
        "%s (%s head, steps %s): %s", name, head, ", ".join(map(str, steps)), _format(values)
    )
    return entry


@dataclasses.dataclass
class LoadedModel:
    """A model named on a command line, restored and ready to predict.

    Attributes:
      name: the spec it was loaded from.
      model: returns logits.
      run: the (first) group it comes from; None for an exported model.
      steps: the checkpoint step of each group (empty for an exported model).
      head: the ensemble's head, for an ensemble of groups.
    """

    name: str
    model: keras.Model
    run: Optional[GroupRun] = None
    steps: tuple[int, ...] = ()
    head: Optional[str] = None


_GROUPS_SPEC = re.compile(r"^(\d{1,9})(\+\d{1,9})*$")


def load_model(
    spec: str,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    head: str = "auto",
) -> LoadedModel:
    """Loads a model named by `spec`.

    Args:
      spec: `ROOT_DIR:GROUP` (the group's latest checkpoint),
        `ROOT_DIR:G1+G2+...` (the ensemble of those groups' latest
        checkpoints, an `EnsembleModel`) or `PATH.keras` (an exported
        student, `model.student.save(...)`).
      gin_files: extra gin files for the runs' configs.
      gin_bindings: extra gin bindings for the runs' configs.
      head: an ensemble's head (`softmax`, `sigmoid`, `auto`).

    Raises:
      EvaluationError: the spec is malformed or names nothing usable.
    """
    if spec.endswith(".keras"):
        if not tf.io.gfile.exists(spec):
            raise EvaluationError(f"model file {spec} does not exist")
        try:
            model = keras.models.load_model(spec, compile=False)
        except Exception as e:  # noqa: BLE001  Any failure to read a user's file.
            raise EvaluationError(
                f"cannot load {spec}: {errors.one_line(e, with_type=True)}"
            ) from e
        return LoadedModel(spec, model)
    root_dir, _, groups_text = spec.rpartition(":")
    if not root_dir or not _GROUPS_SPEC.match(groups_text):
        raise EvaluationError(
            f"model {spec!r}: expected ROOT_DIR:GROUP, ROOT_DIR:G1+G2 (an ensemble) "
            "or a .keras file"
        )
    groups = [int(g) for g in groups_text.split("+")]
    if len(set(groups)) != len(groups):
        raise EvaluationError(f"model {spec!r} names a group twice")
    runs = [load_group(root_dir, g, gin_files, gin_bindings) for g in groups]
    members, steps = zip(*[latest_restored(run) for run in runs], strict=True)
    if len(runs) == 1:
        return LoadedModel(spec, members[0], runs[0], tuple(steps))
    if head == "auto":
        head = metrics_lib.infer_head(runs[0].config.distill_loss, members[0].output_shape)
    return LoadedModel(spec, EnsembleModel(members, head), runs[0], tuple(steps), head)
