"""Two groups x two workers (MultiWorkerMirroredStrategy) as real processes on 127.0.0.1."""

import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import testing
from tf_codistill.datasets import synthetic
from tf_codistill.models import mlp
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

# ProgressLogger's line of the teachers loaded since its previous line.
TEACHERS = re.compile(r"^\[(g\d)(w\d)\] .*: (step \d+/\d+ \| teachers \| .*)$")
BUILT = re.compile(r"^\[(g\d)(w\d)\] .*CodistillModel group \d of \d: .*publishing (True|False)")


def test_two_groups_of_two_workers(tmp_path):
    launcher = os.path.join(testing.repo_root(), "binaries", "launch_local.py")
    result = subprocess.run(
        [
            sys.executable,
            launcher,
            "--gin_file=demo/tiny.gin",
            "--num_groups=2",
            "--workers_per_group=2",
            "--nobaseline",
            f"--root_dir={tmp_path}",
            "--timeout_s=400",
            "--grace_s=5",
        ],
        capture_output=True,
        text=True,
        timeout=480,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    lines = out.splitlines()

    # Only the chiefs (worker 0) publish.
    publishing = {(m[1], m[2]): m[3] for m in map(BUILT.match, lines) if m}
    assert publishing == {
        ("g0", "w0"): "True",
        ("g0", "w1"): "False",
        ("g1", "w0"): "True",
        ("g1", "w1"): "False",
    }
    for g in (0, 1):
        entries = set(os.listdir(tmp_path / f"group_{g}"))
        names = {e for e in entries if not re.fullmatch(r"ckpt-\d+\.(index|data-\d+-of-\d+)", e)}
        assert names == {
            "checkpoint",
            "metrics.json",
            "operative_config.gin",
            "tensorboard",
            "backup",
        }, names
        assert os.listdir(tmp_path / f"group_{g}" / "backup") == ["chief"]

    # Every worker of a group loaded the same teacher checkpoints at the same
    # steps: the same number of reloads, the same latest checkpoint and
    # staleness, line after line.
    reloads = collections.defaultdict(list)
    for m in filter(None, map(TEACHERS.match, lines)):
        reloads[(m[1], m[2])].append(m[3])
    for g in ("g0", "g1"):
        assert len(reloads[(g, "w0")]) >= 2, out[-3000:]
        assert reloads[(g, "w0")] == reloads[(g, "w1")]

    x, y = synthetic.planted_classification("validation", 128, sharpness=4.0)
    for g in (0, 1):
        group_dir = str(tmp_path / f"group_{g}")
        with open(os.path.join(group_dir, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["steps"] == 40
        # Distillation was on after burn-in (10 steps) ...
        assert all(w == 1.0 for s, w in drills.scalars(group_dir, "distill_weight") if s >= 30)
        assert metrics["final"]["val_distill_loss"] > 0
        # ... and the reported evaluation is the true value, not a sum over workers.
        student = mlp.mlp_classifier(hidden_units=(16,))
        tf.train.Checkpoint(model=student).restore(
            os.path.join(group_dir, "ckpt-40")
        ).expect_partial()
        loss = keras.losses.sparse_categorical_crossentropy(y, student(x), from_logits=True)
        np.testing.assert_allclose(
            metrics["final"]["val_task_loss"], float(np.mean(loss)), rtol=1e-4
        )
