"""What the evaluation binaries do, without their flags.

`evaluate_run` is `binaries/evaluate.py` (groups or an ensemble of a run);
`churn` is `binaries/churn.py` (prediction churn between trained models).
The binaries parse flags and call these; tests call them directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any
from typing import Optional

import tensorflow as tf
from absl import logging

from tf_codistill import errors
from tf_codistill import metrics
from tf_codistill.evaluation import ensembles
from tf_codistill.evaluation import evaluator
from tf_codistill.evaluation import run_config

__all__ = ["MODES", "churn", "evaluate_run"]

MODES = ("latest", "all", "sidecar")


def evaluate_run(
    root_dir: str,
    groups: Sequence[int] = (),
    mode: str = "latest",
    ensemble: bool = False,
    ensemble_head: str = "auto",
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    output_dir: Optional[str] = None,
    final_step: Optional[int] = None,
    timeout_s: float = 3600.0,
    poll_interval_s: float = 10.0,
    max_attempts: int = 3,
    steps: Optional[Sequence[int]] = None,
) -> None:
    """What `binaries/evaluate.py` does: evaluate groups of a run, or their ensemble.

    Args:
      root_dir: the run's directory.
      groups: the groups; default every group of the run.
      mode: `latest`, `all` or `sidecar` (see `GroupEvaluator`).
      ensemble: evaluate the ensemble of the groups: of their latest
        checkpoints (`latest`) or at every step all of them published (`all`).
      ensemble_head: `auto`, `softmax` or `sigmoid` (see `evaluate_ensemble`).
      gin_files: extra gin files, applied after each group's config.
      gin_bindings: extra bindings, applied last.
      output_dir: where results go; default `<root_dir>/eval`.
      final_step: sidecar: stop after this step; default the run's train_steps.
      timeout_s: sidecar: stop when no new checkpoint came for this long
        (also how long to wait for the group's config to appear).
      poll_interval_s: sidecar: seconds between looks for a new checkpoint.
      max_attempts: sidecar: failed reads of a checkpoint before skipping it.
      steps: `all`: only the checkpoints of these steps (None: every one).

    Raises:
      errors.EvaluationError: a mistake in what to evaluate, naming it.
    """
    groups = list(groups) or evaluator.find_groups(root_dir)
    if not groups:
        raise errors.EvaluationError(f"no group_<i> directory in --root_dir={root_dir}")
    if mode not in MODES:
        raise errors.EvaluationError(f"mode must be one of {MODES}, got {mode!r}")
    if ensemble and mode == "sidecar":
        raise errors.EvaluationError(
            "--ensemble evaluates the latest checkpoints (--mode=latest) or every step all "
            "groups published (--mode=all), not --mode=sidecar"
        )
    if mode == "sidecar" and len(groups) != 1:
        raise errors.EvaluationError(f"--mode=sidecar follows one group; got groups {groups}")
    wait_s = timeout_s if mode == "sidecar" else 0.0
    runs = [
        evaluator.load_group(root_dir, g, gin_files, gin_bindings, wait_s, poll_interval_s)
        for g in groups
    ]
    if ensemble:
        ensembles.evaluate_ensemble(
            runs, output_dir, ensemble_head, every_step=mode == "all", steps=steps
        )
        return
    for run in runs:
        group = evaluator.GroupEvaluator(run, output_dir)
        try:
            if mode == "latest":
                group.latest()
            elif mode == "all":
                group.all(steps)
            else:
                group.sidecar(
                    final_step=run.config.train_steps if final_step is None else final_step,
                    timeout_s=timeout_s,
                    poll_interval_s=poll_interval_s,
                    max_attempts=max_attempts,
                )
        finally:
            group.close()
        logging.info("%s: results in %s", run.name, group.results.path)


def churn(
    specs: Sequence[str],
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    head: str = "auto",
    output_json: Optional[str] = None,
) -> metrics.ChurnReport:
    """What `binaries/churn.py` does: prediction churn between two or more models.

    Args:
      specs: `ROOT_DIR:GROUP`, `ROOT_DIR:G1+G2` (an ensemble), either with
        `@STEP`, `ROOT_DIR:GROUP@S1,S2` (a temporal ensemble) or `PATH.keras`.
      gin_files: extra gin files for the runs' configs, or the data config
        when only `.keras` models are given.
      gin_bindings: extra gin bindings, applied last.
      head: `softmax`, `sigmoid` or `auto` (from the run's distill_loss, else
        from the output shape).
      output_json: also write the report here as JSON.

    Returns:
      The report (its `format()` is what the binary prints).

    Raises:
      errors.Error: a mistake in what to compare, naming it.
    """
    if len(specs) < 2:
        raise errors.ConfigError(f"give at least two --model, got {len(specs)}")
    loaded = [ensembles.load_model(spec, gin_files, gin_bindings, head) for spec in specs]
    first_run = next((m.run for m in loaded if m.run is not None), None)
    if first_run is not None:
        config = first_run.config
        dataset = config.dataset(first_run.group_index, first_run.num_groups)
        data_source = first_run.config.gin_files[0]
    elif gin_files:
        config = run_config.RunConfig(gin_files, gin_bindings)
        dataset = config.dataset()
        data_source = gin_files[0]
    else:
        raise errors.ConfigError(
            "only .keras models were given: name the data with --gin_file (a config that "
            "sets tf_codistill.train_lib.train_group's input_fn, e.g. demo/tiny.gin)"
        )
    if head == "auto" and loaded[0].head:  # an ensemble: its members' head
        head = loaded[0].head
    if head == "auto":
        head = metrics.infer_head(
            config.distill_loss if first_run is not None else None,
            loaded[0].model.output_shape,
        )
    logging.info(
        "Churn of %d models (%s head) on the evaluation data of %s",
        len(loaded),
        head,
        data_source,
    )
    report = metrics.prediction_churn(
        [m.model for m in loaded],
        dataset,
        head,
        names=[m.name for m in loaded],
        steps=config.eval_steps,
    )
    if output_json:
        result: dict[str, Any] = report.to_dict()
        result["data"] = data_source
        result["steps"] = {m.name: list(m.steps) for m in loaded}
        if os.path.dirname(output_json):
            tf.io.gfile.makedirs(os.path.dirname(output_json))
        with tf.io.gfile.GFile(output_json, "w") as f:
            json.dump(result, f, indent=2)
        logging.info("Report written to %s", output_json)
    return report
