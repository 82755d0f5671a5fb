"""Ensembles of groups (the paper's upper bound), and models named on a command line.

`evaluate_ensemble` evaluates the average of several groups' latest
checkpoints (the paper's 2-way ensemble baseline, section 3.3): probabilities
are averaged (softmax heads) or the per-label probabilities (sigmoid heads),
and the `EnsembleModel` outputs the *logits of the averaged distribution*, so
the run's own compiled loss (`from_logits=True`) and metrics apply unchanged.
Results are kept like a group's (`evaluator.Results`), as
`eval_ensemble_<i>_<j>.json`.

`load_model` turns a spec (`ROOT_DIR:GROUP`, `ROOT_DIR:G1+G2`, a temporal
ensemble `ROOT_DIR:GROUP@S1,S2`, `PATH.keras`) into a model ready to predict,
for the churn tool.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Collection
from collections.abc import Sequence
from typing import Any
from typing import Optional

import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import losses
from tf_codistill import metrics as metrics_lib
from tf_codistill.evaluation import evaluator

__all__ = [
    "EnsembleModel",
    "LoadedModel",
    "ensemble_logits",
    "ensemble_name",
    "evaluate_ensemble",
    "load_model",
]


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


def evaluate_ensemble(
    runs: Sequence[evaluator.GroupRun],
    output_dir: Optional[str] = None,
    head: str = "auto",
    every_step: bool = False,
    steps: Optional[Collection[int]] = None,
) -> list[dict[str, Any]]:
    """Evaluates the ensemble of the groups' latest checkpoints, or of every step.

    The data, loss, metrics and evaluation steps are the first group's.

    Args:
      runs: two or more groups (`load_group`).
      output_dir: where results go; defaults to the first run's
        `<root_dir>/eval`.
      head: `softmax`, `sigmoid`, or `auto`: from the run's `distill_loss`
        (`sigmoid_cross_entropy` means a sigmoid head, the softmax losses a
        softmax head) or else from the output shape (one output: sigmoid).
      every_step: evaluate the ensemble at every step for which each group
        has a checkpoint on disk (the ensemble's learning curve), in step
        order, instead of the groups' latest checkpoints.
      steps: with `every_step`, only these steps (None: every one).

    Returns:
      The recorded entries: the metrics, `step` (the smallest member step)
      and `member_steps`; one entry unless `every_step`.

    Raises:
      EvaluationError: fewer than two groups, or a group without a usable
        checkpoint.
    """
    if len(runs) < 2:
        raise errors.EvaluationError(f"an ensemble needs at least two groups, got {len(runs)}")
    if every_step:
        available = [{r.step: r for r in evaluator.list_checkpoints(run.directory)} for run in runs]
        common = sorted(set.intersection(*(set(a) for a in available)))
        if steps is not None:
            common = [step for step in common if step in set(steps)]
        if not common:
            raise errors.EvaluationError(
                f"no step has a checkpoint of every group of {runs[0].root_dir}"
            )
        plan = [[a[step].prefix for a in available] for step in common]
    else:
        plan = [None]
    members, signatures = [], []
    for run in runs:
        model = run.config.build_model()
        members.append(model)
        signatures.append(exchange.ModelSignature.of_model(model))
    first = runs[0]
    if head == "auto":
        head = metrics_lib.infer_head(first.config.distill_loss, members[0].output_shape)
    ensemble = EnsembleModel(members, head)
    loss, metrics = first.config.loss_and_metrics()
    ensemble.compile(loss=loss, metrics=metrics, weighted_metrics=first.config.weighted_metrics())
    dataset = first.config.dataset(first.group_index, first.num_groups)
    name = ensemble_name([r.group_index for r in runs])
    results = evaluator.Results(
        output_dir or evaluator.default_output_dir(first.root_dir),
        name,
        {
            "kind": "ensemble",
            "root_dir": first.root_dir,
            "groups": [r.group_index for r in runs],
            "head": head,
        },
    )
    entries = []
    for prefixes in plan:
        start = time.perf_counter()
        steps = []
        for run, model, signature, prefix in zip(
            runs, members, signatures, prefixes or [None] * len(runs), strict=True
        ):
            steps.append(_restore_member(run, model, signature, prefix))
        values = evaluator.evaluate_compiled(ensemble, dataset, first.config.eval_steps)
        entries.append(
            results.record(
                min(steps),
                values,
                member_steps={r.name: s for r, s in zip(runs, steps, strict=True)},
                seconds=round(time.perf_counter() - start, 3),
                time=time.time(),
            )
        )
        logging.info(
            "%s (%s head, steps %s): %s",
            name,
            head,
            ", ".join(map(str, steps)),
            evaluator.format_values(values),
        )
    results.close()
    return entries


def _restore_member(run, model, signature, prefix: Optional[str]) -> int:
    """Restores `prefix` (None: the group's latest checkpoint) into `model`; its step."""
    if prefix is None:
        try:
            ref = exchange.latest_checkpoint(run.directory)
        except errors.CheckpointError as e:
            raise errors.EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e
        if ref is None:
            raise errors.EvaluationError(f"{run.name} has no checkpoint in {run.directory}")
        prefix = ref.prefix
    try:
        return evaluator.restore(model, prefix, signature)
    except errors.CheckpointError as e:
        raise errors.EvaluationError(f"{run.name} of {run.root_dir}: {e}") from e


@dataclasses.dataclass
class LoadedModel:
    """A model named on a command line, restored and ready to predict.

    Attributes:
      name: the spec it was loaded from.
      model: returns logits.
      run: the (first) group it comes from; None for an exported model.
      steps: the checkpoint step of each member: of each group, or of each
        of one group's checkpoints in a temporal ensemble (empty for an
        exported model).
      head: the ensemble's head, for an ensemble (of groups or of steps).
    """

    name: str
    model: keras.Model
    run: Optional[evaluator.GroupRun] = None
    steps: tuple[int, ...] = ()
    head: Optional[str] = None


_GROUPS_SPEC = re.compile(r"^(\d{1,9})(\+\d{1,9})*(@\d{1,12}(,\d{1,12})*)?$")


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
        checkpoints, an `EnsembleModel`), either with `@STEP` (the
        checkpoint of that step instead of the latest, e.g. the one
        early stopping chose; it must have been kept),
        `ROOT_DIR:GROUP@S1,S2,...` (one group's checkpoints at those steps,
        averaged like an ensemble: a temporal ensemble, which removes the
        iterate noise a constant learning rate leaves), or `PATH.keras` (an
        exported student, `model.student.save(...)`).
      gin_files: extra gin files for the runs' configs.
      gin_bindings: extra gin bindings for the runs' configs.
      head: an ensemble's head (`softmax`, `sigmoid`, `auto`).

    Raises:
      EvaluationError: the spec is malformed or names nothing usable.
    """
    if spec.endswith(".keras"):
        if not tf.io.gfile.exists(spec):
            raise errors.EvaluationError(f"model file {spec} does not exist")
        try:
            model = keras.models.load_model(spec, compile=False)
        except Exception as e:  # noqa: BLE001  Any failure to read a user's file.
            raise errors.EvaluationError(
                f"cannot load {spec}: {errors.one_line(e, with_type=True)}"
            ) from e
        return LoadedModel(spec, model)
    root_dir, _, groups_text = spec.rpartition(":")
    if not root_dir or not _GROUPS_SPEC.match(groups_text):
        raise errors.EvaluationError(
            f"model {spec!r}: expected ROOT_DIR:GROUP, ROOT_DIR:G1+G2 (an ensemble), "
            "either with @STEP, ROOT_DIR:GROUP@S1,S2 (one group's steps averaged), "
            "or a .keras file"
        )
    groups_text, _, step_text = groups_text.partition("@")
    groups = [int(g) for g in groups_text.split("+")]
    if len(set(groups)) != len(groups):
        raise errors.EvaluationError(f"model {spec!r} names a group twice")
    steps = [int(s) for s in step_text.split(",")] if step_text else []
    if len(steps) > 1 and len(groups) != 1:
        raise errors.EvaluationError(
            f"model {spec!r}: several steps (a temporal ensemble) take one group, not {groups}"
        )
    if len(set(steps)) != len(steps):
        raise errors.EvaluationError(f"model {spec!r} names a step twice")
    runs = [evaluator.load_group(root_dir, g, gin_files, gin_bindings) for g in groups]
    if len(steps) > 1:  # A temporal ensemble: one group's checkpoints at several steps.
        members = [evaluator.restored_at(runs[0], step) for step in steps]
    elif step_text:
        step = int(step_text)
        members, steps = [evaluator.restored_at(run, step) for run in runs], [step] * len(runs)
    else:
        members, steps = zip(*[evaluator.latest_restored(run) for run in runs], strict=True)
    if len(members) == 1:
        return LoadedModel(spec, members[0], runs[0], tuple(steps))
    if head == "auto":
        head = metrics_lib.infer_head(runs[0].config.distill_loss, members[0].output_shape)
    return LoadedModel(spec, EnsembleModel(members, head), runs[0], tuple(steps), head)
