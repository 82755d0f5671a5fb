"""datasets.mnist1d: generated once by the mnist1d package, cached, sharded per group."""

import os

import numpy as np
import pytest

from tf_codistill import errors
from tf_codistill.datasets import mnist1d
from tf_codistill.datasets import sharding

pytest.importorskip("mnist1d", reason="the MNIST-1D workload needs `pip install mnist1d`")


def test_the_package_generates_signals_and_labels_offline(tmp_path):
    x, y = mnist1d.load("train", 120, str(tmp_path), chunk_size=60)
    assert x.shape == (120, mnist1d.SIGNAL_LENGTH) and x.dtype == np.float32
    assert y.shape == (120,) and set(np.unique(y)) <= set(range(10))
    # Two chunks with their own seeds, both cached.
    assert sorted(os.listdir(tmp_path)) == ["mnist1d-60-seed1.npz", "mnist1d-60-seed2.npz"]
    assert not np.allclose(x[:60], x[60:])


def test_cached_chunks_are_read_back_not_generated_again(tmp_path, monkeypatch):
    first = mnist1d.load("validation", 50, str(tmp_path), chunk_size=50)

    def fail(*args):
        raise AssertionError("generated again")

    monkeypatch.setattr(mnist1d, "_generate", fail)
    again = mnist1d.load("validation", 50, str(tmp_path), chunk_size=50)
    np.testing.assert_array_equal(first[0], again[0])


def test_splits_are_different_draws(tmp_path):
    train = mnist1d.load("train", 40, str(tmp_path), chunk_size=40)[0]
    validation = mnist1d.load("validation", 40, str(tmp_path), chunk_size=40)[0]
    test = mnist1d.load("test", 40, str(tmp_path), chunk_size=40)[0]
    assert not np.allclose(train, validation) and not np.allclose(validation, test)


def test_groups_read_disjoint_shards_or_all_of_it(tmp_path):
    def examples(group, mode):
        context = sharding.DataContext(
            training=True, batch_size=10, group_index=group, num_groups=2, mode=mode
        )
        dataset = mnist1d.mnist1d_input_fn(
            context, data_dir=str(tmp_path), num_train_examples=40, chunk_size=40
        )
        seen = set()
        for x, _ in dataset.take(4):  # 40 examples: one pass over a shard of 20, twice
            seen |= {tuple(np.round(row, 5)) for row in x.numpy()}
        return seen

    a, b = examples(0, "disjoint"), examples(1, "disjoint")
    assert len(a) == len(b) == 20 and not a & b
    assert len(examples(0, "same")) > 20


def test_evaluation_reads_the_chosen_split_in_order(tmp_path):
    context = sharding.DataContext(training=False, batch_size=25)
    dataset = mnist1d.mnist1d_input_fn(
        context, data_dir=str(tmp_path), num_eval_examples=50, eval_split="test", chunk_size=50
    )
    x = np.concatenate([b[0].numpy() for b in dataset])
    np.testing.assert_array_equal(x, mnist1d.load("test", 50, str(tmp_path), chunk_size=50)[0])


def test_unknown_split_is_named(tmp_path):
    with pytest.raises(errors.ConfigError, match="split must be train, validation or test"):
        mnist1d.load("dev", 10, str(tmp_path))
