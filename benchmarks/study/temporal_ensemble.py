r"""Temporal ensembles: one group's own checkpoints at several steps, averaged.

  python benchmarks/study/temporal_ensemble.py --steps=500,600 \
      --binding='tf_codistill.datasets.text.lm_input_fn.eval_split = "test"' \
      --out=temporal.json ROOT [ROOT ...]

A diagnostic for the study's ensembles: how much of a 2-way ensemble's gain
over one group could that group have had *alone*, by averaging its own
recent checkpoints? With a constant learning rate the weights keep moving
around the minimum they approach (iterate noise); averaging predictions of
checkpoints a few dozen steps apart removes part of that noise, as a
decaying learning rate or a weight average would. What a temporal ensemble
gains is a part of the 2-way ensemble's gain that does not need a second
group, and that codistillation (which also pulls a group's predictions
towards an average) may be capturing rather than the peer's knowledge.

With `--relative_to_best_validation`, `--steps` are offsets (for example
`-40,-20,0`) from each group's early-stopping step: the step of its lowest
validation loss (`val_<loss_key>` in its metrics.json), as the study's
tables read a group that overfits its data.

For each run directory and each group: the loss of its checkpoint at the
last of `--steps`, and of the ensemble (average of the members'
probabilities) of its checkpoints at every step of `--steps` (the library's
temporal-ensemble spec `ROOT_DIR:GROUP@S1,S2`, `evaluation.load_model`),
each evaluated with the run's own model, data, loss and metrics on the split
`--binding` selects. Writes `--out`:
`{"runs": [{"root", "group", "steps", "single", "ensemble"}], ...}`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined when run as a program only: tests import evaluate_group into a
    # process whose absl flags other modules define.
    flags.DEFINE_list(
        "steps", ["500", "600"], "The checkpoints' steps averaged (the last alone too)."
    )
    flags.DEFINE_multi_string("binding", [], "gin bindings for the evaluation (the test split).")
    flags.DEFINE_string("loss_key", "task_loss", "The metric reported.")
    flags.DEFINE_string("out", None, "Where the JSON results go.", required=True)
    flags.DEFINE_bool(
        "relative_to_best_validation",
        False,
        "--steps are offsets from each group's step of lowest validation loss.",
    )


def best_validation_step(root: str, group: int, loss_key: str = "task_loss") -> int:
    """The step of the group's lowest finite `val_<loss_key>` (the earliest if tied).

    The rule of the study's tables (`study.runner.at_best_validation`).

    Raises:
      EvaluationError: the group wrote no metrics.json, or no finite
        `val_<loss_key>`.
    """
    from tf_codistill import errors
    from tf_codistill import layout
    from tf_codistill import local_cluster

    metrics = local_cluster.read_metrics(root, group)
    if metrics is None:
        path = layout.metrics_path(layout.group_dir(root, group))
        raise errors.EvaluationError(f"group {group} of {root} has no {path}")
    key = f"val_{loss_key}"
    curve = [
        (e[key], e["step"])
        for e in metrics.get("history", [])
        if key in e and math.isfinite(e[key])
    ]
    if not curve:
        raise errors.EvaluationError(
            f"group {group} of {root} has no finite {key} in its metrics.json history "
            "(no validation curve to pick the early-stopping step from)"
        )
    return int(min(curve)[1])


def evaluate_group(
    root: str,
    group: int,
    steps: Sequence[int],
    bindings: Sequence[str] = (),
    loss_key: str = "task_loss",
) -> dict[str, Any]:
    """One group's checkpoint at `max(steps)` alone, and its checkpoints at `steps` averaged.

    Args:
      root: a run directory (`train_group`'s `root_dir`).
      group: the group.
      steps: two or more steps the group published a checkpoint at.
      bindings: gin bindings applied to the group's config (the split).
      loss_key: the metric returned for both.

    Returns:
      `{"root", "group", "steps", "single", "ensemble"}`: the metric of the
      last step's checkpoint alone and of the ensemble.

    Raises:
      EvaluationError: fewer than two distinct steps, or a step without a
        checkpoint of that group.
    """
    from tf_codistill import errors
    from tf_codistill import evaluation
    from tf_codistill.evaluation import evaluator

    steps = sorted({int(s) for s in steps})
    if len(steps) < 2:
        raise errors.EvaluationError(f"a temporal ensemble needs two or more steps, got {steps}")
    run = evaluation.load_group(root, group, gin_bindings=bindings)
    published = {c.step for c in evaluation.list_checkpoints(run.directory)}
    missing = [s for s in steps if s not in published]
    if missing:
        raise errors.EvaluationError(
            f"group {group} of {root} has no checkpoint at steps {missing} "
            f"(published: {sorted(published)})"
        )
    dataset = run.config.dataset(run.group_index, run.num_groups)
    ensemble = evaluation.load_model(
        f"{root}:{group}@{','.join(map(str, steps))}", gin_bindings=bindings
    ).model
    values = {}
    for name, model in (("single", ensemble.members[-1]), ("ensemble", ensemble)):
        loss, metrics = run.config.loss_and_metrics()
        model.compile(loss=loss, metrics=metrics, weighted_metrics=run.config.weighted_metrics())
        values[name] = evaluator.evaluate_compiled(model, dataset, run.config.eval_steps)[loss_key]
    return {"root": root, "group": group, "steps": steps, **values}


def main(argv):
    from tf_codistill import evaluation

    if FLAGS.relative_to_best_validation and not FLAGS["steps"].present:
        raise app.UsageError("--relative_to_best_validation needs --steps offsets, e.g. -40,-20,0")
    given = [int(s) for s in FLAGS.steps]
    rows = []
    for root in argv[1:]:
        for group in evaluation.find_groups(root):
            steps, best = given, None
            if FLAGS.relative_to_best_validation:
                best = best_validation_step(root, group, FLAGS.loss_key)
                steps = [best + s for s in given]
            row = evaluate_group(root, group, steps, FLAGS.binding, FLAGS.loss_key)
            if best is not None:
                row["best_validation_step"] = best
            print(
                f"{root} group {group}: step {row['steps'][-1]} alone {row['single']:.4f}, "
                f"steps {row['steps']} averaged {row['ensemble']:.4f}",
                flush=True,
            )
            rows.append(row)
    tmp = FLAGS.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            {
                "loss_key": FLAGS.loss_key,
                "bindings": FLAGS.binding,
                "relative_to_best_validation": FLAGS.relative_to_best_validation,
                "steps": given,
                "runs": rows,
            },
            f,
            indent=1,
        )
    os.replace(tmp, FLAGS.out)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
