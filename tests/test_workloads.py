"""The Criteo and ImageNet gin files: baselines override what they say; tiny runs train.

The tiny variants run through binaries/train.py's `main` (Criteo on
testdata/criteo, ImageNet on TFDS mock data) and must write the operative
config, checkpoints, metrics.json and TensorBoard summaries.
"""

import glob
import json

import gin
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_codistill import gin_utils
from tf_codistill import testing
from tf_codistill import train_lib

ROOT = "tf_codistill.train_lib.train_group"


def bound(name):
    """The value bound to `name` in the parsed config, or None if unbound."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return None


def parsed(gin_file):
    gin.clear_config()
    gin_utils.parse([gin_file], finalize=False)
    keys = (
        f"{ROOT}.codistill",
        f"{ROOT}.data_split",
        f"{ROOT}.train_steps",
        f"{ROOT}.burn_in_steps",
        f"{ROOT}.distill_loss",
        "%BATCH",
    )
    return {key: bound(key) for key in keys}


@pytest.mark.parametrize("workload", ["criteo", "imagenet"])
def test_baselines_change_only_what_they_say(workload):
    base = parsed(f"{workload}/codistill.gin")
    assert base[f"{ROOT}.codistill"] is None  # Default True: codistillation.
    assert base[f"{ROOT}.data_split"] is None  # Default "disjoint".
    expected = {
        "sync_b": {f"{ROOT}.codistill": False},
        "sync_2b": {f"{ROOT}.codistill": False, "%BATCH": 2 * base["%BATCH"]},
        "ensemble": {f"{ROOT}.codistill": False, f"{ROOT}.data_split": "same"},
        "codistill_same_data": {f"{ROOT}.data_split": "same"},
    }
    for variant, changes in expected.items():
        assert parsed(f"{workload}/{variant}.gin") == {**base, **changes}, variant


def test_paper_settings():
    criteo = parsed("criteo/codistill.gin")
    assert criteo[f"{ROOT}.distill_loss"] == "sigmoid_cross_entropy"
    assert gin.query_parameter("keras.optimizers.Adagrad.learning_rate") == 0.001
    assert gin.query_parameter("tf_codistill.models.criteo_dnn.hidden_units") == (2560, 1024, 256)
    imagenet = parsed("imagenet/codistill.gin")
    assert imagenet["%BATCH"] == 16384 and imagenet[f"{ROOT}.burn_in_steps"] == 3000
    assert gin.query_parameter("keras.optimizers.SGD.momentum") == 0.9
    # The learning rate follows the batch: 6.4 at 16k, 12.8 at 32k (sync_2b).
    for gin_file, peak in (("imagenet/codistill.gin", 6.4), ("imagenet/sync_2b.gin", 12.8)):
        gin.clear_config()
        gin_utils.parse([gin_file], finalize=False)
        schedule = gin.get_configurable("keras.optimizers.SGD")()._learning_rate
        assert schedule.peak_learning_rate == pytest.approx(peak)


def test_evaluation_covers_the_whole_validation_split():
    # Criteo: 45,840,617 lines, every 16th held out: 2,865,038 validation
    # lines. ImageNet: 50,000 validation images.
    assert 45_840_617 // 16 == 2_865_038
    for gin_file, validation in (
        ("criteo/codistill.gin", 2_865_038),
        ("imagenet/codistill.gin", 50_000),
    ):
        gin.clear_config()
        gin_utils.parse([gin_file], finalize=False)
        batch = gin.query_parameter(f"{ROOT}.eval_batch_size")
        steps = gin.query_parameter(f"{ROOT}.eval_steps")
        assert (steps - 1) * batch < validation <= steps * batch, gin_file


def summary_tags(group_dir):
    tags = set()
    for path in glob.glob(str(group_dir / "tensorboard" / "*" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_criteo_tiny_trains_on_testdata(tmp_path):
    testing.run_train_main(
        tmp_path / "run",
        ["criteo/tiny.gin"],
        [
            f"{ROOT}.wait_for_peers_s = 0",
            f"tf_codistill.datasets.criteo_input_fn.data_dir = '{tmp_path / 'tfds'}'",
        ],
        allow_no_distillation=True,  # Alone: its peer never publishes.
    )
    group = tmp_path / "run" / "group_0"
    config = (group / "operative_config.gin").read_text()
    assert "criteo_dnn" in config and "criteo_input_fn" in config
    assert "train_steps = 20" in config and "'sigmoid_cross_entropy'" in config
    assert tf.train.latest_checkpoint(str(group)).endswith("ckpt-20")
    metrics = json.loads((group / "metrics.json").read_text())
    assert metrics["steps"] == 20 and [e["step"] for e in metrics["history"]] == [10, 20]
    final = metrics["final"]
    assert {"val_task_loss", "val_log_loss", "val_auc", "val_distill_loss"} <= set(final)
    # The compiled log loss is the task loss (both binary cross-entropy).
    assert final["val_log_loss"] == pytest.approx(final["val_task_loss"], rel=1e-4)
    assert {"task_loss", "distill_weight", "learning_rate", "auc", "log_loss"} <= summary_tags(
        group
    )
    # The dataset was generated from the fixture into the given data_dir.
    assert (tmp_path / "tfds" / "criteo_display_ads" / "1.0.0").is_dir()


def test_imagenet_tiny_trains_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=16):
        testing.run_train_main(
            tmp_path,
            ["imagenet/tiny.gin"],
            [f"{ROOT}.wait_for_peers_s = 0"],
            allow_no_distillation=True,
        )
    group = tmp_path / "group_0"
    config = (group / "operative_config.gin").read_text()
    assert "small_resnet" in config and "imagenet_input_fn" in config
    assert "GoyalSchedule" in config and "examples_per_epoch = 8" in config
    assert tf.train.latest_checkpoint(str(group)).endswith("ckpt-4")
    metrics = json.loads((group / "metrics.json").read_text())
    assert metrics["steps"] == 4 and [e["step"] for e in metrics["history"]] == [2, 4]
    assert {"val_task_loss", "val_accuracy", "val_top5_accuracy"} <= set(metrics["final"])
    assert {"task_loss", "learning_rate", "accuracy", "top5_accuracy"} <= summary_tags(group)


def test_criteo_tiny_trains_on_two_replicas(tmp_path):
    # Per-replica batches of dict features, sparse embedding gradients summed
    # over replicas, and evaluation of a distributed dataset (eval_steps).
    gin_utils.parse(
        ["criteo/tiny.gin"],
        [
            f"{ROOT}.wait_for_peers_s = 0",
            f"{ROOT}.allow_no_distillation = True",
            f"tf_codistill.datasets.criteo_input_fn.data_dir = '{tmp_path / 'tfds'}'",
        ],
    )
    # Not the default collective all-reduce: a second MirroredStrategy over
    # the same devices in one process (another test module has one) reuses
    # its collective instance keys and fails with a shape mismatch.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    results = train_lib.train_group(str(tmp_path / "run"), 0, 2, strategy=strategy)
    assert results["steps"] == 20
    # The same run on one device (same global batches, seeds and evaluation
    # data) gives the same numbers: a value summed over the 2 replicas would
    # be twice as large, a per-replica one computed on half the batch.
    alone = train_lib.train_group(str(tmp_path / "alone"), 0, 2)
    for key in ("val_log_loss", "val_loss", "val_auc"):
        assert results["final"][key] == pytest.approx(alone["final"][key], rel=1e-3), key
    assert 0 < results["final"]["val_log_loss"] < 5
