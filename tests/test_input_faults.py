"""A malformed Criteo row in the middle of train.txt, end to end through binaries/train.py.

The parser's own cases (each kind of bad field, the skip counts per split)
are in test_criteo_dataset.py; here the whole program runs on the
criteo/tiny.gin fixture with line 24 (a training line) broken. Rows are
parsed when the TFDS dataset is generated, before the first step: with
`on_malformed="skip"` the group trains all its steps and logs what it
skipped; with `"error"` it stops at once with one line naming the file and
the line.
"""

import json
import os
import shutil
import subprocess

import pytest

from tf_codistill import testing
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

BAD_LINE = 24


def _run(tmp_path, on_malformed):
    manual = tmp_path / "manual"
    manual.mkdir()
    source = os.path.join(testing.repo_root(), "testdata", "criteo", "train.txt")
    with open(source) as f:
        lines = f.readlines()
    lines[BAD_LINE - 1] = "\t".join(lines[BAD_LINE - 1].split("\t")[:39]) + "\n"  # 39 fields.
    (manual / "train.txt").write_text("".join(lines))
    bindings = {
        "wait_for_peers_s": 0.0,
        "allow_no_distillation": True,  # Alone: its peer never publishes.
        "tf_codistill.datasets.criteo_input_fn.manual_dir": str(manual),
        "tf_codistill.datasets.criteo_input_fn.data_dir": str(tmp_path / "tfds"),
        "tf_codistill.datasets.criteo_input_fn.on_malformed": on_malformed,
    }
    command = drills.train_command(
        str(tmp_path / "run"), 0, 2, bindings, gin_file="criteo/tiny.gin"
    )
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=testing.repo_root(),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    return result, str(manual / "train.txt")


def test_malformed_row_skipped_run_completes(tmp_path):
    result, path = _run(tmp_path, "skip")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"{path}, line {BAD_LINE}: skipped: expected 40 tab-separated fields" in out
    assert f"{path}: skipped 1 malformed lines of the train split" in out
    with open(tmp_path / "run" / "group_0" / "metrics.json") as f:
        assert json.load(f)["steps"] == 20  # criteo/tiny.gin's train_steps.
    shutil.rmtree(tmp_path / "tfds")


def test_malformed_row_with_error_stops_with_one_line(tmp_path):
    result, path = _run(tmp_path, "error")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: {path}, line {BAD_LINE}: expected 40 tab-separated"), last
    assert "got 39" in last and "on_malformed='skip'" in last
    assert not os.path.exists(tmp_path / "run" / "group_0" / "metrics.json")
