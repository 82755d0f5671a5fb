"""datasets.synthetic: the planted task is a pure function of its seeds, and learnable."""

import numpy as np
import pytest

from tf_codistill import errors
from tf_codistill.datasets import sharding
from tf_codistill.datasets import synthetic


def test_examples_are_a_function_of_the_seeds():
    x, y = synthetic.planted_classification("train", 100)
    again_x, again_y = synthetic.planted_classification("train", 100)
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(y, again_y)
    assert x.shape == (100, 32) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) <= set(range(10))
    other, _ = synthetic.planted_classification("validation", 100)
    assert not np.array_equal(x, other)
    with pytest.raises(errors.ConfigError, match="split must be one of"):
        synthetic.planted_classification("test", 10)


def test_labels_are_noisy_but_the_oracle_beats_chance():
    # Chance is ln 10 = 2.30; sharper oracles leave less label noise.
    noisy = synthetic.oracle_loss(sharpness=1.0, num_examples=2000)
    sharp = synthetic.oracle_loss(sharpness=6.0, num_examples=2000)
    assert 0.0 < sharp < noisy < np.log(10)


def test_input_fn_shards_the_training_set_between_groups():
    def examples(group):
        context = sharding.DataContext(
            training=True, batch_size=8, group_index=group, num_groups=2, mode="disjoint"
        )
        dataset = synthetic.planted_input_fn(context, num_train_examples=64)
        return {tuple(row) for x, _ in dataset.take(4) for row in np.round(x.numpy(), 5)}

    zero, one = examples(0), examples(1)
    assert len(zero) == len(one) == 32 and not zero & one
