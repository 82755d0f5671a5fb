"""binaries/train.py: gin files, the operative config, outputs and errors."""

import glob
import json
import os

import gin
import pytest
import tensorflow as tf

from tf_codistill import gin_utils
from tf_codistill import testing
from tf_codistill.testing import drills

GIN_DIR = os.path.join(testing.repo_root(), "gin")
# gin/reproduce/ configures the study harness, not a group: tests/test_reproduce.py
# parses those files and every group configuration they bind.
GIN_FILES = sorted(
    os.path.relpath(p, GIN_DIR)
    for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)
    if os.path.relpath(p, GIN_DIR).split(os.sep)[0] != "reproduce"
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


def _published(group_dir):
    """{file name: (inode, mtime_ns)} of a group's published checkpoints."""
    found = {}
    for path in glob.glob(os.path.join(group_dir, "ckpt-*")):
        stat = os.stat(path)
        found[os.path.basename(path)] = (stat.st_ino, stat.st_mtime_ns)
    return found


def test_rerun_after_completion_resumes_instead_of_retraining(tmp_path):
    bindings = ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"]
    testing.run_train_main(tmp_path, ["demo/tiny.gin"], bindings, allow_no_distillation=True)
    group = str(tmp_path / "group_0")
    first = json.loads((tmp_path / "group_0" / "metrics.json").read_text())
    published = _published(group)
    trained = drills.scalars(group, "task_loss")
    assert published and trained
    gin.clear_config()
    testing.run_train_main(tmp_path, ["demo/tiny.gin"], bindings, allow_no_distillation=True)
    second = json.loads((tmp_path / "group_0" / "metrics.json").read_text())
    assert second["steps"] == 40
    assert second["history"] == first["history"]
    # A retrain (which gives the same history: seeded) would log its training
    # steps again and publish its checkpoints anew (new files).
    assert drills.scalars(group, "task_loss") == trained
    assert _published(group) == published


def test_resuming_a_root_of_another_model_is_one_line(tmp_path):
    bindings = ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"]
    testing.run_train_main(
        tmp_path, ["demo/tiny.gin"], bindings, num_groups=1, allow_no_distillation=True
    )
    gin.clear_config()
    with pytest.raises(SystemExit) as exit_info:
        testing.run_train_main(
            tmp_path,
            ["demo/tiny.gin"],
            [
                *bindings,
                "tf_codistill.models.mlp_classifier.hidden_units = (8,)",
                "tf_codistill.train_lib.train_group.train_steps = 60",
            ],
            num_groups=1,
        )
    text = str(exit_info.value.code)
    assert text.startswith(
        "train.py: this root_dir holds a run of another model (its resume state in backup/ "
        "does not fit the model configured now); use a new --root_dir, or delete "
        f"{tmp_path / 'group_0'} to train this group from scratch."
    ), text
    assert "\n" not in text


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
        (
            # Adam takes **kwargs: refused when called, inside training.
            ["demo/tiny.gin"],
            ["keras.optimizers.Adam.learnin_rate = 0.1"],
            0,
            "gin binding keras.optimizers.Adam.learnin_rate: Adam has no parameter "
            "'learnin_rate'; did you mean 'learning_rate'?",
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
