"""The gradient noise scale meter against a model whose per-example gradients are known.

Softmax regression, logits = x W: the gradient of one example's cross-entropy
with respect to W is the outer product x (p - e_y)^T, so the exact true
gradient G and tr(Sigma) of a large sample are computed in numpy, with no
estimator, and B_simple = tr(Sigma) / |G|^2 compared with what the callback
reports. With a learning rate of 0 the weights (hence G and Sigma) stay put
while the meter averages many measurements.
"""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import callbacks
from tf_codistill import codistill_model
from tf_codistill import errors
from tf_codistill import noise_scale
from tf_codistill import testing

DIM, CLASSES = 8, 4


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    oracle = rng.normal(size=(DIM, CLASSES)) * 1.5
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    logits = x @ oracle
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1).astype(np.int64)
    return x, y


def _student(weights):
    student = keras.Sequential(
        [keras.Input((DIM,)), keras.layers.Dense(CLASSES, use_bias=False, name="w")]
    )
    student.layers[0].kernel.assign(weights)
    return student


def _exact(weights, x, y):
    logits = x @ weights
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(CLASSES)[y]
    per_example = (x[:, :, None] * residual[:, None, :]).reshape(len(x), -1)
    return noise_scale.exact(per_example)


def _model(weights, root, learning_rate=0.0):
    model = codistill_model.CodistillModel(
        _student(weights), group_index=0, num_groups=1, exchange_dir=root
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class EstimatorTest(tf.test.TestCase):
    def test_two_batch_sizes_recover_gradient_and_trace(self):
        # E|G_b|^2 = |G|^2 + tr/b: with |G|^2 = 2 and tr = 64, b = 8 and 16
        # give 10 and 6; the estimator inverts exactly.
        e = noise_scale.estimate(10.0, 6.0, 8, 16)
        self.assertAllClose([e.gradient_sq, e.trace, e.noise_scale], [2.0, 64.0, 32.0])

    def test_undefined_without_a_positive_gradient(self):
        self.assertTrue(np.isnan(noise_scale.Estimate(0.0, 1.0).noise_scale))
        with self.assertRaisesRegex(ValueError, "b_small < b_big"):
            noise_scale.estimate(1.0, 1.0, 16, 8)

    def test_smoother_weights_by_measurements(self):
        s = noise_scale.Smoother(decay=0.5)
        s.update(noise_scale.Estimate(2.0, 10.0), count=1)
        out = s.update(noise_scale.Estimate(4.0, 30.0), count=1)
        # Bias-corrected EMA: (0.5*0.5*2 + 0.5*4) / (0.25 + 0.5) = 3.333; trace 23.333.
        self.assertAllClose([out.gradient_sq, out.trace], [10 / 3, 70 / 3])


class MeterTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(7)
        self.weights = (rng.normal(size=(DIM, CLASSES)) * 0.1).astype(np.float32)
        self.x, self.y = _data(102_400)
        self.expected = _exact(self.weights, self.x, self.y).noise_scale

    def _measure(self, strategy=None):
        strategy = strategy or tf.distribute.get_strategy()
        with strategy.scope():
            model = _model(self.weights, self.create_tempdir().full_path)
        meter = callbacks.GradientNoiseScale(every_n_steps=1, read_every_n_steps=100)
        history = model.fit(
            self.x, self.y, batch_size=256, epochs=2, callbacks=[meter], verbose=0, shuffle=False
        )
        return meter, history

    def test_agrees_with_the_exact_noise_scale(self):
        meter, history = self._measure()
        # The exact value for this model and data is about 26 examples.
        self.assertGreater(self.expected, 5.0)
        self.assertBetween(meter.value / self.expected, 1 / 1.5, 1.5)
        self.assertLen(history.history[callbacks.GradientNoiseScale.KEY], 2)
        self.assertAllClose(history.history[callbacks.GradientNoiseScale.KEY][-1], meter.value)

    def test_agrees_under_mirrored_strategy(self):
        # Two replicas: each splits its 128 examples into halves of 64.
        # The process-wide one: a second strategy would reuse its collective keys.
        strategy = testing.mirrored_strategy()
        meter, _ = self._measure(strategy)
        self.assertBetween(meter.value / self.expected, 1 / 1.5, 1.5)

    def test_training_is_unchanged_by_the_measurement(self):
        root = self.create_tempdir().full_path
        x, y = self.x[:4096], self.y[:4096]
        plain = _model(self.weights, root + "/a", learning_rate=0.1)
        plain.fit(x, y, batch_size=256, epochs=1, verbose=0, shuffle=False)
        measured = _model(self.weights, root + "/b", learning_rate=0.1)
        measured.fit(
            x,
            y,
            batch_size=256,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[callbacks.GradientNoiseScale(every_n_steps=2)],
        )
        self.assertAllEqual(plain.student.get_weights()[0], measured.student.get_weights()[0])

    def test_interval_changes_without_retracing(self):
        model = _model(self.weights, self.create_tempdir().full_path)
        x, y = self.x[:2048], self.y[:2048]
        model.fit(x, y, batch_size=256, callbacks=[callbacks.GradientNoiseScale(4)], verbose=0)
        traced = model.train_function.experimental_get_tracing_count()
        function = model.train_function
        model.fit(x, y, batch_size=256, callbacks=[callbacks.GradientNoiseScale(2)], verbose=0)
        self.assertIs(model.train_function, function)
        self.assertEqual(model.train_function.experimental_get_tracing_count(), traced)

    def test_needs_a_codistill_model(self):
        student = _student(self.weights)
        student.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        with self.assertRaisesRegex(errors.ConfigTypeError, "needs a tf_codistill.CodistillModel"):
            student.fit(self.x[:64], self.y[:64], callbacks=[callbacks.GradientNoiseScale()])


if __name__ == "__main__":
    tf.test.main()
