"""benchmarks/study/temporal_ensemble.py: one group's checkpoints averaged, checked by hand."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_codistill import errors
from tf_codistill import evaluation
from tf_codistill import testing

BENCHMARKS = os.path.join(testing.repo_root(), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from study import temporal_ensemble  # noqa: E402


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities_at(group_dir, step, x):
    """The group's student at `step`, restored the documented way, on `x`."""
    (ref,) = [c for c in evaluation.list_checkpoints(group_dir) if c.step == step]
    model = testing.demo_tiny_student()
    tf.train.Checkpoint(model=model).restore(ref.prefix).expect_partial()
    return softmax(model(x).numpy().astype(np.float64))


def test_the_average_of_a_groups_checkpoints_by_hand(run_dir):
    group_dir = os.path.join(run_dir, "group_1")
    published = sorted(c.step for c in evaluation.list_checkpoints(group_dir))
    steps = published[-3:]  # Three checkpoints a few steps apart.
    row = temporal_ensemble.evaluate_group(run_dir, 1, steps)
    assert (row["group"], row["steps"]) == (1, steps)

    x, y = testing.demo_tiny_eval_data()
    probs = [probabilities_at(group_dir, s, x) for s in steps]
    picked = np.arange(len(y)), y
    single = -np.mean(np.log(probs[-1][picked]))
    mean = sum(probs) / len(probs)
    ensemble = -np.mean(np.log(mean[picked]))
    np.testing.assert_allclose(row["single"], single, rtol=1e-5)
    np.testing.assert_allclose(row["ensemble"], ensemble, rtol=1e-5)
    # Different checkpoints disagree somewhere, so averaging them changes the loss.
    assert abs(row["ensemble"] - row["single"]) > 1e-4


def test_one_step_or_a_step_never_published_is_a_clear_error(run_dir):
    published = sorted(
        c.step for c in evaluation.list_checkpoints(os.path.join(run_dir, "group_0"))
    )
    with pytest.raises(errors.EvaluationError, match="two or more steps"):
        temporal_ensemble.evaluate_group(run_dir, 0, [published[-1], published[-1]])
    with pytest.raises(errors.EvaluationError, match=r"no checkpoint at steps \[3\]"):
        temporal_ensemble.evaluate_group(run_dir, 0, [3, published[-1]])


def test_the_program_writes_every_groups_row(run_dir, tmp_path):
    published = sorted(
        c.step for c in evaluation.list_checkpoints(os.path.join(run_dir, "group_0"))
    )
    out = tmp_path / "temporal.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "study", "temporal_ensemble.py"),
            f"--steps={published[-2]},{published[-1]}",
            f"--out={out}",
            run_dir,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["runs"]
    assert [r["group"] for r in rows] == [0, 1]
    assert all(r["steps"] == published[-2:] for r in rows)
    assert "averaged" in result.stdout


def write_history(root, group, history):
    from tf_codistill import layout

    path = layout.metrics_path(layout.group_dir(str(root), group))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"history": history}, f)


def test_the_early_stopping_step_is_the_lowest_validation_loss(tmp_path):
    # Lowest at 40; the tie at 80 goes to the earlier step; entries without
    # the key (a training-only log line) are skipped.
    write_history(
        tmp_path,
        0,
        [
            {"step": 20, "val_task_loss": 0.9},
            {"step": 30, "train": {"task_loss": 0.1}},
            {"step": 40, "val_task_loss": 0.5},
            {"step": 60, "val_task_loss": 0.7},
            {"step": 80, "val_task_loss": 0.5},
        ],
    )
    assert temporal_ensemble.best_validation_step(str(tmp_path), 0) == 40
    with pytest.raises(errors.EvaluationError, match="no finite val_token_cross_entropy"):
        temporal_ensemble.best_validation_step(str(tmp_path), 0, "token_cross_entropy")
    with pytest.raises(errors.EvaluationError, match="group 1 of .* no .*metrics.json"):
        temporal_ensemble.best_validation_step(str(tmp_path), 1)
    # A diverged first evaluation (NaN) is not the best one.
    write_history(
        tmp_path, 2, [{"step": 20, "val_task_loss": math.nan}, {"step": 40, "val_task_loss": 2.0}]
    )
    assert temporal_ensemble.best_validation_step(str(tmp_path), 2) == 40


def test_the_program_takes_steps_relative_to_early_stopping(run_dir, tmp_path):
    from tf_codistill import layout

    published = sorted(
        c.step for c in evaluation.list_checkpoints(os.path.join(run_dir, "group_0"))
    )
    # A copy of the run whose validation curve bottoms out at the last
    # checkpoint but one: offsets -d, 0 must pick the two before the last.
    root = tmp_path / "run"
    for g in range(2):
        src = layout.group_dir(run_dir, g)
        dst = layout.group_dir(str(root), g)
        shutil.copytree(src, dst)
        group_published = sorted(c.step for c in evaluation.list_checkpoints(dst))
        best = group_published[-2]
        write_history(
            root, g, [{"step": s, "val_task_loss": abs(s - best) + 1.0} for s in group_published]
        )
    gap = published[-2] - published[-3]
    out = tmp_path / "temporal.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "study", "temporal_ensemble.py"),
            f"--steps=-{gap},0",
            "--relative_to_best_validation",
            f"--out={out}",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written["relative_to_best_validation"] is True
    assert written["steps"] == [-gap, 0]
    assert written["runs"][0]["steps"] == published[-3:-1]
    assert written["runs"][0]["best_validation_step"] == published[-2]
