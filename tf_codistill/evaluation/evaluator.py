"""Evaluate one group's published checkpoints: the latest, all kept, or as they come.

Checkpoints are the ones the group publishes for its peers (`exchange.py`):
`<root_dir>/group_<i>/ckpt-<step>`, a `tf.train.Checkpoint(model=student,
step=...)`; the model, data, loss and metrics come from the group's
`operative_config.gin` (`run_config.RunConfig`).

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
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from typing import Any
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import layout
from tf_codistill.evaluation import run_config

__all__ = [
    "GroupEvaluator",
    "GroupRun",
    "Results",
    "find_groups",
    "latest_restored",
    "list_checkpoints",
    "load_group",
    "restore",
]

TASK_LOSS = "task_loss"


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
    architecture is refused with the variables that differ), then restored
    with `expect_partial()`.

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


@dataclasses.dataclass
class GroupRun:
    """One group of a run: where it is and how it was configured."""

    root_dir: str
    group_index: int
    directory: str
    config: run_config.RunConfig
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
      errors.GinConfigError: the config does not parse.
    """
    directory = layout.group_dir(root_dir, group_index)
    config_path = layout.operative_config_path(directory)
    deadline = time.monotonic() + wait_s
    while not tf.io.gfile.exists(config_path):
        if time.monotonic() >= deadline:
            groups = find_groups(root_dir)
            if group_index not in groups:
                found = ", ".join(map(str, groups)) if groups else "none"
                raise errors.EvaluationError(
                    f"no group {group_index} in {root_dir} (no directory group_{group_index}; "
                    f"groups found: {found})"
                )
            raise errors.EvaluationError(
                f"{config_path} does not exist: group {group_index} has not started yet, or "
                "was not written by tf_codistill's train_group"
            )
        time.sleep(poll_interval_s)
    config = run_config.RunConfig([config_path, *gin_files], gin_bindings)
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


def evaluate_compiled(model: keras.Model, dataset: tf.data.Dataset, steps: Optional[int]) -> dict:
    """`model.evaluate`, with the compiled loss reported as `task_loss`."""
    logs = model.evaluate(dataset, steps=steps, verbose=0, return_dict=True)
    values = {TASK_LOSS if k == "loss" else k: float(np.asarray(v)) for k, v in logs.items()}
    return values


def format_values(values: dict[str, float]) -> str:
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
            raise errors.CheckpointError(f"ckpt-{ref.step} holds step {step}, not {ref.step}")
        values = evaluate_compiled(self.model, self.dataset, self.run.config.eval_steps)
        entry = self.results.record(
            step,
            values,
            checkpoint=posixpath.basename(ref.prefix),
            seconds=round(time.perf_counter() - start, 3),
            time=time.time(),
        )
        logging.info("%s step %d: %s", self.run.name, step, format_values(values))
        return entry

    def latest(self) -> dict[str, Any]:
        """Evaluates the group's latest checkpoint.

        Raises:
          EvaluationError: the group has published nothing, or its latest
            checkpoint cannot be restored.
        """
        try:
            ref = exchange.latest_checkpoint(self.run.directory)
        except errors.CheckpointError as e:
            raise errors.EvaluationError(f"{self.run.name}: {e}") from e
        if ref is None:
            raise errors.EvaluationError(
                f"{self.run.name} has no checkpoint in {self.run.directory}"
            )
        try:
            return self.evaluate_checkpoint(ref)
        except errors.CheckpointError as e:
            raise errors.EvaluationError(f"{self.run.name}: {e}") from e

    def all(self, steps: Optional[Collection[int]] = None) -> list[dict[str, Any]]:
        """Evaluates every checkpoint on disk once, in step order.

        A checkpoint that cannot be restored (e.g. deleted by the writer's
        cleanup since it was listed) is skipped, logged and recorded.

        Args:
          steps: only the checkpoints of these steps (None: all of them).

        Raises:
          EvaluationError: the group has no checkpoint at all (of `steps`).
        """
        refs = list_checkpoints(self.run.directory)
        if steps is not None:
            refs = [r for r in refs if r.step in set(steps)]
        if not refs:
            raise errors.EvaluationError(
                f"{self.run.name} has no checkpoint in {self.run.directory}"
            )
        logging.info("%s: evaluating %d checkpoints", self.run.name, len(refs))
        entries = []
        for ref in refs:
            try:
                entries.append(self.evaluate_checkpoint(ref))
            except errors.CheckpointError as e:
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
            except errors.CheckpointError as e:
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
                except errors.CheckpointError as e:
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


def restored_at(run: GroupRun, step: int) -> keras.Model:
    """A new model of the group's architecture holding its checkpoint of `step`.

    Raises:
      EvaluationError: the group kept no checkpoint of that step (the message
        names the nearest it has), or it is unusable.
    """
    refs = list_checkpoints(run.directory)
    ref = next((r for r in refs if r.step == step), None)
    if ref is None:
        if not refs:
            raise errors.EvaluationError(f"{run.name} has no checkpoint in {run.directory}")
        near = sorted(refs, key=lambda r: abs(r.step - step))[:2]
        raise errors.EvaluationError(
            f"{run.name} of {run.root_dir} kept no checkpoint of step {step} (nearest: "
            f"{', '.join(str(r.step) for r in sorted(near, key=lambda r: r.step))}; "
            f"{len(refs)} kept, steps {refs[0].step}..{refs[-1].step})"
        )
    model, restored = _restored(run, ref)
    if restored != step:
        raise errors.EvaluationError(
            f"{run.name} of {run.root_dir}: {ref.prefix} holds step {restored}, not {step}"
        )
    return model


def _restored(run: GroupRun, ref: exchange.CheckpointRef) -> tuple[keras.Model, int]:
    """A new model of the group's architecture holding `ref`, and the step it holds."""
    model = run.config.build_model()
    try:
        return model, restore(model, ref.prefix)
    except errors.CheckpointError as e:
        raise errors.EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e


def latest_restored(run: GroupRun) -> tuple[keras.Model, int]:
    """A new model of the group's architecture holding its latest checkpoint.

    Raises:
      EvaluationError: the group has no usable checkpoint.
    """
    try:
        ref = exchange.latest_checkpoint(run.directory)
    except errors.CheckpointError as e:
        raise errors.EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e
    if ref is None:
        raise errors.EvaluationError(f"{run.name} has no checkpoint in {run.directory}")
    return _restored(run, ref)
