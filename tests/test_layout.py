"""layout: the run directory's names, built and parsed in one place."""

import numpy as np
import pytest
import tensorflow as tf

from tf_codistill import errors
from tf_codistill import layout


def test_paths_of_a_group():
    group = layout.group_dir("/runs/r1/", 3)
    assert group == "/runs/r1/group_3"
    assert layout.group_dir("gs://bucket/r1", np.int64(0)) == "gs://bucket/r1/group_0"
    assert layout.checkpoint_prefix(group, 40) == "/runs/r1/group_3/ckpt-40"
    assert layout.state_path(group) == "/runs/r1/group_3/checkpoint"
    assert layout.metrics_path(group) == "/runs/r1/group_3/metrics.json"
    assert layout.operative_config_path(group) == "/runs/r1/group_3/operative_config.gin"
    assert layout.tensorboard_dir(group) == "/runs/r1/group_3/tensorboard"
    assert layout.backup_dir(group) == "/runs/r1/group_3/backup"
    assert layout.eval_dir("/runs/r1/") == "/runs/r1/eval"
    assert layout.ray_dir("gs://b/r1/") == "gs://b/r1/ray"


def test_names_are_parsed_back():
    assert layout.group_index("group_12") == 12
    assert layout.group_index("group_12/") == 12
    assert [layout.group_index(n) for n in ("group_", "group_x", "groups_1", "eval")] == [None] * 4
    assert layout.checkpoint_step("ckpt-40") == 40
    bad = ("ckpt-", "ckpt-4.index", "../ckpt-4", "model-4", "ckpt--1")
    assert [layout.checkpoint_step(n) for n in bad] == [None] * len(bad)


def test_tensorflow_reads_the_names_we_write(tmp_path):
    # The state file name and checkpoint prefix are what tf.train expects.
    group = layout.group_dir(str(tmp_path), 0)
    prefix = tf.train.Checkpoint(v=tf.Variable(1.0)).write(layout.checkpoint_prefix(group, 7))
    tf.compat.v1.train.update_checkpoint_state(group, prefix)
    assert layout.state_path(group) == str(tmp_path / "group_0" / "checkpoint")
    assert tf.train.latest_checkpoint(group) == prefix


@pytest.mark.parametrize(
    "args, error, message",
    [
        (("r", -1), errors.ConfigError, "group_index must be >= 0"),
        (("r", True), errors.ConfigTypeError, "group_index must be an int"),
        (("r", 1.0), errors.ConfigTypeError, "group_index must be an int"),
        (("", 0), errors.ConfigError, "exchange_dir must be a non-empty"),
    ],
)
def test_bad_group_dir_arguments_are_named(args, error, message):
    with pytest.raises(error, match=message):
        layout.group_dir(*args)
