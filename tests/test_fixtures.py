"""testing.fixtures: the tiny models, data and helpers the tests share."""

import os

import numpy as np
import tensorflow as tf

from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.evaluation import run_config


def test_toy_data_and_models_are_deterministic():
    x, y = testing.toy_classification(16, seed=3)
    again, _ = testing.toy_classification(16, seed=3)
    np.testing.assert_array_equal(x, again)
    assert x.shape == (16, 8) and set(np.unique(y)) <= set(range(4))
    a, b = testing.mlp(seed=1), testing.mlp(seed=1)
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)
    subclassed = testing.SubclassedMLP()
    assert subclassed(x).shape == (16, 4)


def test_one_mirrored_strategy_over_two_cpus():
    strategy = testing.mirrored_strategy()
    assert strategy is testing.mirrored_strategy() and strategy.num_replicas_in_sync == 2
    assert testing.use_virtual_cpus(2)


def test_binaries_are_loaded_once_from_this_checkout():
    assert os.path.isdir(os.path.join(testing.repo_root(), "gin", "demo"))
    train = testing.load_binary("train")
    assert testing.load_binary("train") is train and callable(train.main)


def test_demo_tiny_helpers_match_the_gin_file():
    built = run_config.RunConfig(["demo/tiny.gin"]).build_model()
    ours = testing.demo_tiny_student()
    assert [w.shape for w in ours.weights] == [w.shape for w in built.weights]
    x, y = testing.demo_tiny_eval_data()
    assert x.shape == (128, 32) and y.shape == (128,)


def test_restore_latest_and_event_scalars(tmp_path):
    group_dir = exchange.group_dir(str(tmp_path), 0)
    published = testing.mlp(seed=5)
    exchange.Publisher(published, group_dir).publish(3)
    restored = testing.restore_latest(testing.mlp(seed=6), group_dir)
    for a, b in zip(restored.get_weights(), published.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    with writer.as_default():
        for step, value in ((2, 0.5), (1, 1.5)):
            tf.summary.scalar("loss", value, step=step)
    writer.close()
    assert testing.event_scalars(str(tmp_path / "tb"), "loss") == [(1, 1.5), (2, 0.5)]
    assert set(testing.event_scalars(str(tmp_path / "tb"))) == {"loss"}
    # A killed writer's truncated last record is skipped, not an error.
    (path,) = [p for p in os.listdir(tmp_path / "tb")]
    with open(tmp_path / "tb" / path, "ab") as f:
        f.write(b"\x00\x01")
    assert testing.event_scalars(str(tmp_path / "tb"), "loss") == [(1, 1.5), (2, 0.5)]
