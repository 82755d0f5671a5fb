"""Prediction churn (tf_codistill.metrics) against hand-computed numbers.

The models are one Dense layer without bias fed one-hot inputs, so example i's
logits are row i of the kernel: each model's predictions are set by hand.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import losses
from tf_codistill import metrics

LN3, LN9 = math.log(3.0), math.log(9.0)

# Binary heads (one logit), 4 examples. sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75,
# sigmoid(-ln 3) = 0.25, sigmoid(ln 9) = 0.9, sigmoid(-ln 9) = 0.1.
BINARY_LOGITS = {
    "a": [0.0, LN3, -LN3, LN9],  # p = 0.5,  0.75, 0.25, 0.9   decisions F T F T
    "b": [LN3, LN3, LN3, -LN9],  # p = 0.75, 0.75, 0.75, 0.1   decisions T T T F
    "c": [-LN3, 0.0, -LN9, LN9],  # p = 0.25, 0.5,  0.1,  0.9   decisions F F F T
}
# |p_a - p_b| = .25 0 .5 .8 -> 1.55 / 4 = 0.3875; decisions differ 1 0 1 1 -> 0.75
# |p_a - p_c| = .25 .25 .15 0 -> 0.65 / 4 = 0.1625; decisions differ 0 1 0 0 -> 0.25
# |p_b - p_c| = .5 .25 .65 .8 -> 2.2 / 4 = 0.55;    decisions differ 1 1 1 1 -> 1.0
BINARY_PAIRS = {(0, 1): (0.3875, 0.75), (0, 2): (0.1625, 0.25), (1, 2): (0.55, 1.0)}

# Softmax heads (3 classes), 2 examples; logits are log-probabilities.
SOFTMAX_PROBS = {
    "a": [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],  # top-1: 0, 1
    "b": [[0.2, 0.3, 0.5], [0.1, 0.5, 0.4]],  # top-1: 2, 1
    "c": [[0.45, 0.35, 0.2], [0.3, 0.3, 0.4]],  # top-1: 0, 2
}
# TV(a, b) = .5 (.3 + 0 + .3) = .3 and .5 (0 + .1 + .1) = .1 -> 0.2;  top-1 differ 1 0 -> 0.5
# TV(a, c) = .5 (.05 + .05 + 0) = .05 and .5 (.2 + .3 + .1) = .3 -> 0.175; differ 0 1 -> 0.5
# TV(b, c) = .5 (.25 + .05 + .3) = .3 and .5 (.2 + .2 + 0) = .2 -> 0.25; differ 1 1 -> 1.0
SOFTMAX_PAIRS = {(0, 1): (0.2, 0.5), (0, 2): (0.175, 0.5), (1, 2): (0.25, 1.0)}


def lookup_model(logits, name):
    """Example i (one-hot input) gets logits[i]."""
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 1:
        logits = logits[:, None]
    num_examples, num_outputs = logits.shape
    inputs = keras.Input((num_examples,))
    layer = keras.layers.Dense(num_outputs, use_bias=False, name="lookup")
    model = keras.Model(inputs, layer(inputs), name=name)
    layer.set_weights([logits])
    return model


def binary_models():
    return [lookup_model(v, k) for k, v in BINARY_LOGITS.items()]


def softmax_models():
    return [lookup_model(np.log(v), k) for k, v in SOFTMAX_PROBS.items()]


def one_hot_dataset(num_examples, batch_size, weights=None):
    x = np.eye(num_examples, dtype=np.float32)
    y = np.zeros(num_examples, np.int64)  # Labels are not used by churn.
    data = (x, y) if weights is None else (x, y, np.asarray(weights, np.float32))
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


def assert_pairs(report, expected):
    assert [(p.a, p.b) for p in report.pairs] == sorted(expected)
    for p in report.pairs:
        np.testing.assert_allclose(
            (p.mean_abs_diff, p.disagreement), expected[(p.a, p.b)], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_binary_three_models_hand_computed_and_same_for_any_batch_size(batch_size):
    report = metrics.prediction_churn(
        binary_models(), one_hot_dataset(4, batch_size), metrics.SIGMOID, names=["a", "b", "c"]
    )
    assert_pairs(report, BINARY_PAIRS)
    assert (report.num_examples, report.num_positions, report.total_weight) == (4, 4, 4.0)
    # Over pairs: mean (0.3875 + 0.1625 + 0.55) / 3 = 1.1 / 3; half-range (0.55 - 0.1625) / 2.
    np.testing.assert_allclose(
        [report.mean_abs_diff.mean, report.mean_abs_diff.min, report.mean_abs_diff.max],
        [1.1 / 3, 0.1625, 0.55],
        rtol=1e-5,
    )
    np.testing.assert_allclose(report.mean_abs_diff.half_range, 0.19375, rtol=1e-5)
    # Disagreement: (0.75 + 0.25 + 1) / 3 = 2/3, min 0.25, max 1, half-range 0.375.
    np.testing.assert_allclose(
        dataclass_values(report.disagreement), [2 / 3, 0.25, 1.0, 0.375], rtol=1e-6
    )
    as_dict = report.to_dict()
    assert as_dict["pairs"][0]["a"] == "a" and as_dict["pairs"][0]["b"] == "b"
    assert as_dict["disagreement"]["half_range"] == pytest.approx(0.375)


def dataclass_values(spread):
    return [spread.mean, spread.min, spread.max, spread.half_range]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_softmax_total_variation_and_top1(batch_size):
    report = metrics.prediction_churn(
        softmax_models(), one_hot_dataset(2, batch_size), metrics.SOFTMAX
    )
    assert_pairs(report, SOFTMAX_PAIRS)
    assert report.names == ("model_0", "model_1", "model_2")
    # mean (0.2 + 0.175 + 0.25) / 3 = 0.2083..; half-range (0.25 - 0.175) / 2 = 0.0375.
    np.testing.assert_allclose(
        dataclass_values(report.mean_abs_diff), [0.625 / 3, 0.175, 0.25, 0.0375], rtol=1e-5
    )
    assert "mean TV distance" in report.format() and "half-range over 3 pairs" in report.format()


def test_two_class_softmax_is_the_binary_definition():
    # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: TV equals |delta p| of the positive class.
    z_a, z_b = np.array([[0.3], [-2.0], [4.0]]), np.array([[1.0], [0.5], [-1.0]])
    two_class = [np.concatenate([np.zeros_like(z), z], axis=1) for z in (z_a, z_b)]
    soft, soft_flip = metrics.pointwise_churn(*two_class, metrics.SOFTMAX)
    sig, sig_flip = metrics.pointwise_churn(z_a, z_b, metrics.SIGMOID)
    expected = np.abs(1 / (1 + np.exp(-z_a)) - 1 / (1 + np.exp(-z_b)))[:, 0]
    np.testing.assert_allclose(soft.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(sig.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(soft_flip.numpy(), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(sig_flip.numpy(), [0.0, 1.0, 1.0])


def test_multi_label_sigmoid_averages_over_labels():
    # Example 0: p = (0.5, 0.75) vs (0.75, 0.75): |dp| mean (0.25 + 0) / 2; decisions F T vs T T.
    a = np.array([[0.0, LN3]], np.float32)
    b = np.array([[LN3, LN3]], np.float32)
    abs_diff, disagree = metrics.pointwise_churn(a, b, metrics.SIGMOID)
    np.testing.assert_allclose(abs_diff.numpy(), [0.125], rtol=1e-5)
    np.testing.assert_allclose(disagree.numpy(), [0.5])


def test_sample_weights_leave_positions_out():
    # Weight 0 on examples 2 and 3: only examples 0 and 1 count.
    # a vs b: |dp| (0.25 + 0) / 2 = 0.125, decisions differ (1 + 0) / 2 = 0.5.
    report = metrics.prediction_churn(
        binary_models()[:2], one_hot_dataset(4, 3, weights=[1, 1, 0, 0]), metrics.SIGMOID
    )
    assert report.total_weight == 2.0 and report.num_positions == 4
    np.testing.assert_allclose(
        (report.pairs[0].mean_abs_diff, report.pairs[0].disagreement), (0.125, 0.5), rtol=1e-5
    )


def test_sequence_outputs_count_every_token_with_its_mask():
    # [batch=1, time=2, classes=2]: token 0 differs (TV 0.5, top-1 flips), token 1 is equal.
    a = np.log([[[0.75, 0.25], [0.5, 0.5]]])
    b = np.log([[[0.25, 0.75], [0.5, 0.5]]])
    accumulator = metrics.ChurnAccumulator(2, metrics.SOFTMAX)
    accumulator.update([a, b])
    report = accumulator.result()
    assert report.num_positions == 2
    np.testing.assert_allclose(
        (report.pairs[0].mean_abs_diff, report.pairs[0].disagreement), (0.25, 0.5)
    )
    masked = metrics.ChurnAccumulator(2, metrics.SOFTMAX)
    masked.update([a, b], sample_weight=np.array([[1.0, 0.0]]))  # Token 1 is padding.
    np.testing.assert_allclose(masked.result().pairs[0].disagreement, 1.0)


def test_keras_metric_against_reference_logits():
    a, b = binary_models()[:2]
    x = np.eye(4, dtype=np.float32)
    for definition, expected in [("mean_abs_diff", 0.3875), ("disagreement", 0.75)]:
        metric = metrics.PredictionChurn(metrics.SIGMOID, definition)
        metric.update_state(a(x), b(x))
        np.testing.assert_allclose(metric.result().numpy(), expected, rtol=1e-5)
    # Inside a compiled evaluation (graph mode), batch by batch.
    b.compile(
        loss="mse",
        metrics=[metrics.PredictionChurn(metrics.SIGMOID, "disagreement", name="churn")],
    )
    logs = b.evaluate(x, a(x).numpy(), batch_size=1, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["churn"], 0.75)


@pytest.mark.parametrize(
    "distill_loss, shape, head",
    [
        ("sigmoid_cross_entropy", (None, 5), "sigmoid"),
        ("softmax_cross_entropy", (None, 5), "softmax"),
        (losses.KLDivergence(2.0), (None, 7, 5), "softmax"),
        ("logit_mse", (None, 1), "sigmoid"),
        ("logit_mse", (None, 5), "softmax"),
        (None, (None,), "sigmoid"),
        (None, (None, 3), "softmax"),
    ],
)
def test_infer_head(distill_loss, shape, head):
    assert metrics.infer_head(distill_loss, shape) == head


def test_mistakes_are_named():
    with pytest.raises(ValueError, match="at least two models"):
        metrics.ChurnAccumulator(1, metrics.SOFTMAX)
    with pytest.raises(ValueError, match="head must be one of"):
        metrics.ChurnAccumulator(2, "softmx")
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.pointwise_churn(np.zeros((2, 3)), np.zeros((2, 4)), metrics.SOFTMAX)
    with pytest.raises(ValueError, match="sigmoid head for a single-logit"):
        metrics.pointwise_churn(np.zeros((2, 1)), np.zeros((2, 1)), metrics.SOFTMAX)
    with pytest.raises(ValueError, match="no examples with a non-zero weight"):
        metrics.ChurnAccumulator(2, metrics.SIGMOID).result()
    with pytest.raises(ValueError, match="definition must be one of"):
        metrics.PredictionChurn(metrics.SIGMOID, "flips")
