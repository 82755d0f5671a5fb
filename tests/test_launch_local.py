"""Two groups as two processes through binaries/launch_local.py, with the baseline."""

import json
import os
import re
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
            "--timeout_s=480",
            "--grace_s=5",
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    for prefix in ("[g0]", "[g1]", "[baseline]"):
        assert prefix in out
    lines = out.splitlines()
    # Each group reloaded its peer's checkpoints (every 5 steps): the first
    # load is a line of its own, the later ones are summed up with the
    # progress lines (each at DEBUG only).
    for g in (0, 1):
        loads = [x for x in lines if f"Group {g}: " in x and "teacher for peer" in x]
        assert len(loads) == 1 and f"Group {g}: first teacher for peer {1 - g} <- step" in loads[0]
        summaries = [x for x in lines if x.startswith(f"[g{g}] ") and " | teachers | " in x]
        assert summaries and all(f"| teachers | peer {1 - g}: " in x for x in summaries), out
        counted = [
            int(re.search(r"peer \d: (\d+) reloads?, now step \d+", x)[1]) for x in summaries
        ]
        with open(os.path.join(tmp_path, f"group_{g}", "metrics.json")) as f:
            loaded = json.load(f)["teacher_reloads"][str(1 - g)]["loaded"]
        # More reloads than lines about them; none summed up twice.
        assert loaded > 1 and 1 <= sum(counted) <= loaded, (loaded, counted)
    # TensorFlow's start-up lines are left out; the run directory ends the output.
    assert not [x for x in lines if "absl::InitializeLog" in x or "I0000 00:00:" in x]
    assert "Final validation metrics:" in out and "Codistilled groups vs baseline" in out
    end = out[out.index("Codistilled groups vs baseline") :]
    assert f"Run directory: {tmp_path}\n" in end
    assert f"tensorboard --logdir {tmp_path}" in end
    assert result.stdout.splitlines()[-1].startswith("  baseline:")

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


def test_a_run_without_distillation_fails_unless_allowed(tmp_path):
    # Burn-in beyond the last step: the groups exchange but never distil.
    launcher = os.path.join(testing.repo_root(), "binaries", "launch_local.py")
    outputs = {}
    for allow in (False, True):
        root = tmp_path / ("allowed" if allow else "strict")
        result = subprocess.run(
            [
                sys.executable,
                launcher,
                "--gin_file=demo/tiny.gin",
                "--gin_bindings=tf_codistill.train_lib.train_group.burn_in_steps = 1000",
                "--num_groups=2",
                "--nobaseline",
                f"--root_dir={root}",
                "--timeout_s=480",
                "--grace_s=5",
                *(["--allow_no_distillation"] if allow else []),
            ],
            capture_output=True,
            text=True,
            timeout=540,
        )
        outputs[allow] = (result.returncode, result.stdout + result.stderr)
        for g in (0, 1):
            with open(os.path.join(root, f"group_{g}", "metrics.json")) as f:
                assert json.load(f)["distillation"]["happened"] is False
    for allow, (code, out) in outputs.items():
        assert (code == 0) == allow, out[-5000:]
        for g in (0, 1):
            assert f"group {g}: NO DISTILLATION happened: teachers were loaded" in out, out[-3000:]
    assert "train.py: group 0 never distilled: the distillation weight" in outputs[False][1]
