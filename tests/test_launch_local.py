"""Two groups as two processes through binaries/launch_local.py, with the baseline."""

import json
import os
import subprocess
import sys

import pytest

from tf_codistill import testing
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

BURN_IN = 10  # demo/tiny.gin


def test_two_groups_and_baseline_as_processes(tmp_path):
    launcher = os.path.join(testing.repo_root(), "binaries", "launch_local.py")
    result = subprocess.run(
        [
            sys.executable,
            launcher,
            "--gin_file=demo/tiny.gin",
            "--num_groups=2",
            f"--root_dir={tmp_path}",
            "--timeout_s=240",
            "--grace_s=5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    for prefix in ("[g0]", "[g1]", "[baseline]"):
        assert prefix in out
    # Each group reloaded its peer's checkpoints, logged with step and staleness.
    assert "[g0] " in out and "Group 0: teacher for peer 1 <- step" in out
    assert "Group 1: teacher for peer 0 <- step" in out
    assert "Final validation metrics:" in out and "Codistilled groups vs baseline" in out

    for g in (0, 1):
        group_dir = os.path.join(tmp_path, f"group_{g}")
        with open(os.path.join(group_dir, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["steps"] == 40
        assert metrics["final"]["val_distill_loss"] > 0
        assert metrics["teacher_reloads"][str(1 - g)]["loaded"] >= 1
        weights = drills.scalars(group_dir, "distill_weight")
        distill = drills.scalars(group_dir, "distill_loss")
        assert weights and all(w == 1.0 for s, w in weights if s > 2 * BURN_IN)
        assert all(d > 0 for s, d in distill if s > 2 * BURN_IN)
        assert drills.scalars(group_dir, "teacher_staleness")

    with open(os.path.join(tmp_path, "baseline", "group_0", "metrics.json")) as f:
        baseline = json.load(f)
    assert baseline["codistill"] is False and baseline["final"]["val_distill_loss"] == 0
    assert not os.path.exists(os.path.join(tmp_path, "baseline", "group_1"))
