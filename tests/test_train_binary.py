"""binaries/train.py: gin files, the operative config, outputs and errors."""

import glob
import json
import os

import gin
import pytest
import tensorflow as tf

from tf_codistill import gin_utils
from tf_codistill import testing

GIN_DIR = os.path.join(testing.repo_root(), "gin")
GIN_FILES = sorted(
    os.path.relpath(p, GIN_DIR)
    for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)
)


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_shipped_gin_file_parses(gin_file):
    gin_utils.parse([gin_file], finalize=False)
    assert gin.query_parameter("tf_codistill.train_lib.train_group.train_steps") > 0


def test_tiny_demo_writes_config_checkpoints_summaries(tmp_path):
    # Alone: its peer, group 1, never publishes.
    testing.run_train_main(
        tmp_path,
        ["demo/tiny.gin"],
        ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"],
        allow_no_distillation=True,
    )
    group = tmp_path / "group_0"
    config = (group / "operative_config.gin").read_text()
    assert "train_steps = 40" in config and "mlp_classifier" in config
    assert tf.train.latest_checkpoint(str(group)).endswith("ckpt-40")
    metrics = json.loads((group / "metrics.json").read_text())
    assert metrics["steps"] == 40 and [e["step"] for e in metrics["history"]] == [20, 40]
    assert {"val_task_loss", "val_accuracy", "val_distill_loss"} <= set(metrics["final"])
    tags = set()
    for path in glob.glob(str(group / "tensorboard" / "*" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {
        "task_loss",
        "distill_loss",
        "distill_weight",
        "teacher_staleness",
        "agreement",
        "learning_rate",
        "accuracy",
    } <= tags


def test_rerun_after_completion_resumes_instead_of_retraining(tmp_path):
    bindings = ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"]
    testing.run_train_main(tmp_path, ["demo/tiny.gin"], bindings, allow_no_distillation=True)
    first = json.loads((tmp_path / "group_0" / "metrics.json").read_text())
    gin.clear_config()
    testing.run_train_main(tmp_path, ["demo/tiny.gin"], bindings, allow_no_distillation=True)
    second = json.loads((tmp_path / "group_0" / "metrics.json").read_text())
    assert second["steps"] == 40
    assert second["history"] == first["history"]


@pytest.mark.parametrize(
    "gin_files, bindings, group_index, message",
    [
        (
            ["demo/tiny.gin"],
            ["tf_codistill.train_lib.train_group.trian_steps = 5"],
            0,
            "trian_steps",
        ),
        (
            ["demo/tiny.gin"],
            ["tf_codistill.models.mlp_clasifier.input_dim = 5"],
            0,
            "mlp_clasifier",
        ),
        (
            ["demo/tiny.gin"],
            ["tf_codistill.train_lib.train_group.train_steps = (("],
            0,
            "train_steps",
        ),
        (["demo/nonexistent.gin"], [], 0, "gin file 'demo/nonexistent.gin' not found"),
        (["demo/tiny.gin"], [], 2, "--group_index must be in"),
        ([], [], 0, "give at least one --gin_file"),
        (
            ["demo/tiny.gin"],
            ["tf_codistill.train_lib.train_group.steps_per_loop = 7"],
            0,
            "must be a multiple of steps_per_loop",
        ),
    ],
)
def test_mistakes_give_one_clear_message(tmp_path, gin_files, bindings, group_index, message):
    with pytest.raises(SystemExit) as exit_info:
        testing.run_train_main(tmp_path, gin_files, bindings, group_index=group_index)
    text = str(exit_info.value.code)
    assert text.startswith("train.py: ") and message in text, text
    assert "Traceback" not in text
