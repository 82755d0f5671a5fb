"""Label smoothing toward uniform and unigram priors, against hand-computed numbers."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import label_smoothing

LN3 = math.log(3.0)
# Logits [0, ln 3] -> p = [1/4, 3/4]; -ln p = [1.386294, 0.287682].
LOGITS = [[0.0, LN3]]


def loss_of(loss, y, logits, sample_weight=None):
    return float(loss(tf.constant(y), tf.constant(logits, tf.float32), sample_weight))


class TestHandComputed:
    def test_uniform(self):
        # y = 1, eps = 0.1: CE(one_hot) = -ln 3/4 = 0.287682;
        # CE(uniform) = (1.386294 + 0.287682) / 2 = 0.836988;
        # loss = 0.9 * 0.287682 + 0.1 * 0.836988 = 0.258914 + 0.083699 = 0.342613.
        loss = label_smoothing.LabelSmoothingCrossEntropy(0.1)
        assert loss_of(loss, [1], LOGITS) == pytest.approx(0.342613, abs=1e-6)

    def test_unigram(self):
        # Prior [1, 4] -> [0.2, 0.8]; CE(prior) = 0.2 * 1.386294 + 0.8 * 0.287682
        #   = 0.277259 + 0.230146 = 0.507405;
        # y = 0, eps = 0.1: 0.9 * 1.386294 + 0.1 * 0.507405 = 1.247665 + 0.050741 = 1.298405.
        loss = label_smoothing.LabelSmoothingCrossEntropy(0.1, prior=[1.0, 4.0])
        assert loss_of(loss, [0], LOGITS) == pytest.approx(1.298405, abs=1e-6)
        np.testing.assert_allclose(loss.prior, [0.2, 0.8])

    def test_sequence_with_token_mask(self):
        # [batch=1, time=3, vocab=2]; eps = 0.1, uniform.
        #   t0: logits [0, ln 3], y=1 -> 0.342613 (as above)
        #   t1: logits [0, 0],    y=0 -> CE = ln 2 for both terms = 0.693147
        #   t2: masked (weight 0), huge logits that would dominate otherwise
        # Keras' reduction: sum of weighted values / positions = (0.342613 + 0.693147) / 3.
        loss = label_smoothing.LabelSmoothingCrossEntropy(0.1)
        logits = [[[0.0, LN3], [0.0, 0.0], [100.0, -100.0]]]
        value = loss_of(loss, [[1, 0, 1]], logits, tf.constant([[1.0, 1.0, 0.0]]))
        assert value == pytest.approx((0.342613 + 0.693147) / 3, abs=1e-6)

    def test_zero_prior_classes_take_no_mass_and_give_no_nan(self):
        # Prior [0, 1]: CE(prior) = -log p_1. With logits [-1e4, 1e4], p_0 underflows
        # to 0 (log p_0 = -2e4, times 0 is 0), p_1 = 1: loss = 0.9 * 0 + 0.1 * 0 = 0.
        loss = label_smoothing.LabelSmoothingCrossEntropy(0.1, prior=[0.0, 1.0])
        assert loss_of(loss, [1], [[-1e4, 1e4]]) == pytest.approx(0.0, abs=1e-6)
        # y = 0: CE(one_hot) = -log p_0 = 2e4, CE(prior) = 0 as above:
        # loss = 0.9 * 2e4 + 0.1 * 0 = 18000, finite.
        assert loss_of(loss, [0], [[-1e4, 1e4]]) == pytest.approx(18000.0, rel=1e-6)


class TestAgainstKeras:
    def test_uniform_equals_keras_label_smoothing(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(6, 5)).astype(np.float32)
        y = rng.integers(0, 5, size=6)
        ours = label_smoothing.LabelSmoothingCrossEntropy(0.2)
        theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
        assert loss_of(ours, y, logits) == pytest.approx(
            float(theirs(tf.one_hot(y, 5), logits)), rel=1e-5
        )

    def test_no_smoothing_is_plain_cross_entropy_and_labels_may_be_column(self):
        rng = np.random.default_rng(1)
        logits = rng.normal(size=(4, 3)).astype(np.float32)
        y = rng.integers(0, 3, size=(4, 1))
        plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        ours = label_smoothing.LabelSmoothingCrossEntropy(0.0, prior=[1, 1, 1])
        assert loss_of(ours, y, logits) == pytest.approx(float(plain(y, logits)), rel=1e-6)

    def test_trains_under_compile(self):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile("sgd", label_smoothing.LabelSmoothingCrossEntropy(0.1, prior=[1, 2, 1]))
        x = np.ones((8, 4), np.float32)
        history = model.fit(x, np.zeros(8, np.int64), epochs=3, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]

    def test_config_round_trip(self):
        loss = label_smoothing.LabelSmoothingCrossEntropy(0.1, prior=[1.0, 3.0])
        config = loss.get_config()
        assert config["smoothing"] == 0.1 and config["prior"] == [0.25, 0.75]
        again = label_smoothing.LabelSmoothingCrossEntropy.from_config(config)
        assert loss_of(again, [0], LOGITS) == pytest.approx(loss_of(loss, [0], LOGITS))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(smoothing=1.0), "smoothing must be in"),
        (dict(smoothing=-0.1), "smoothing must be in"),
        (dict(prior="zipf"), "prior must be 'uniform' or a vector"),
        (dict(prior=[1.0]), "vector over >= 2 classes"),
        (dict(prior=[1.0, -1.0]), "non-negative"),
        (dict(from_logits=False), "logits only"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        label_smoothing.LabelSmoothingCrossEntropy(**kwargs)


def test_prior_must_match_the_classes():
    loss = label_smoothing.LabelSmoothingCrossEntropy(0.1, prior=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="covers 3 classes but the logits have 2"):
        loss_of(loss, [0], LOGITS)
