"""Distillation losses against numbers worked out by hand."""

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from tf_codistill import losses

LN2 = math.log(2.0)
LN3 = math.log(3.0)
LN9 = math.log(9.0)


def _t(x, dtype=tf.float32):
    return tf.constant(x, dtype)


class SoftmaxLossTest(tf.test.TestCase):
    def test_cross_entropy_one_teacher(self):
        # Teacher logits [0, ln 3] -> q = [1/4, 3/4]; student [0, 0] -> p = [1/2, 1/2].
        # CE = -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2.
        loss = losses.SoftmaxCrossEntropy()
        out = loss([_t([[0.0, LN3]])], _t([[0.0, 0.0]]))
        self.assertAllClose(out, [LN2])

    def test_kl_one_teacher(self):
        # KL = sum q log q - sum q log p = -H(q) + ln 2
        # H(q) = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335; KL = 0.130812.
        out = losses.KLDivergence()([_t([[0.0, LN3]])], _t([[0.0, 0.0]]))
        self.assertAllClose(out, [0.130812], atol=1e-6)

    def test_teachers_averaged_in_probability_space(self):
        # Peers: [0, ln 9] -> [0.1, 0.9] and [0, 0] -> [0.5, 0.5]; mean q = [0.3, 0.7].
        # (Averaging logits instead would give [0, ln 3] -> [0.25, 0.75].)
        # Student [0, ln 3] -> p = [0.25, 0.75].
        # CE = -(0.3 ln 0.25 + 0.7 ln 0.75) = 0.415888 + 0.201378 = 0.617266.
        teachers = [_t([[0.0, LN9]]), _t([[0.0, 0.0]])]
        out = losses.SoftmaxCrossEntropy()(teachers, _t([[0.0, LN3]]))
        self.assertAllClose(out, [0.617266], atol=1e-6)
        # KL = CE - H([0.3, 0.7]) = 0.617266 - 0.610864 = 0.006402.
        out = losses.KLDivergence()(teachers, _t([[0.0, LN3]]))
        self.assertAllClose(out, [0.006402], atol=1e-6)

    def test_teachers_averaged_in_logit_space(self):
        # Peers [0, ln 9] and [0, 0]: mean logits [0, ln 3] -> q = [0.25, 0.75].
        # Student [0, 0] -> p = [1/2, 1/2]: CE = ln 2 (the one-teacher case above).
        teachers = [_t([[0.0, LN9]]), _t([[0.0, 0.0]])]
        out = losses.SoftmaxCrossEntropy(average="logits")(teachers, _t([[0.0, 0.0]]))
        self.assertAllClose(out, [LN2])
        # With one peer the two averages agree.
        one = [_t([[0.3, -1.2, 2.0]])]
        student = _t([[0.5, 0.1, -0.4]])
        self.assertAllClose(
            losses.KLDivergence(average="logits")(one, student),
            losses.KLDivergence()(one, student),
        )

    def test_logit_average_leaves_out_peers_with_weight_zero(self):
        # Peer 2 is NaN and left out: the mean logits are peer 1's, [0, ln 3].
        teachers = [_t([[0.0, LN3]]), _t([[float("nan"), float("nan")]])]
        loss = losses.SoftmaxCrossEntropy(average="logits")
        out = loss(teachers, _t([[0.0, 0.0]]), peer_weights=_t([1.0, 0.0]))
        self.assertAllClose(out, [LN2])

    def test_unknown_average_rejected(self):
        with self.assertRaisesRegex(ValueError, "average must be one of"):
            losses.SoftmaxCrossEntropy(average="median")

    def test_reverse_kl_one_teacher(self):
        # Teacher q = [1/4, 3/4]; student p = [1/2, 1/2].
        # KL(p || q) = 1/2 ln(2) + 1/2 ln(2/3) = 0.5 * 0.693147 - 0.5 * 0.405465 = 0.143841.
        out = losses.ReverseKL()([_t([[0.0, LN3]])], _t([[0.0, 0.0]]))
        self.assertAllClose(out, [0.143841], atol=1e-6)
        # Zero when the student matches the teacher, and T^2-scaled with a temperature:
        # T = 2 on teacher [0, 2 ln 3] gives the same q, so 4 * 0.143841.
        self.assertAllClose(losses.ReverseKL()([_t([[0.0, LN3]])], _t([[0.0, LN3]])), [0.0])
        self.assertAllClose(
            losses.ReverseKL(temperature=2.0)([_t([[0.0, 2 * LN3]])], _t([[0.0, 0.0]])),
            [4 * 0.143841],
            atol=1e-5,
        )

    def test_reverse_kl_gradient_points_toward_the_teacher(self):
        teacher = [_t([[0.0, LN3]])]
        student = tf.Variable([[0.0, 0.0]])
        with tf.GradientTape() as tape:
            out = losses.ReverseKL()(teacher, student)
        grad = tape.gradient(out, student).numpy()
        # Descending the gradient raises the logit of the class the teacher prefers.
        self.assertLess(grad[0, 1], 0.0)
        self.assertGreater(grad[0, 0], 0.0)

    def test_peer_left_out_even_if_nan(self):
        # Peer 2 has weight 0 (and NaN logits); q = [0.1, 0.9] from peer 1 alone.
        # CE = -(0.1 ln 0.25 + 0.9 ln 0.75) = 0.138629 + 0.258914 = 0.397543.
        teachers = [_t([[0.0, LN9]]), _t([[float("nan"), float("nan")]])]
        out = losses.SoftmaxCrossEntropy()(teachers, _t([[0.0, LN3]]), peer_weights=_t([1.0, 0.0]))
        self.assertAllClose(out, [0.397543], atol=1e-6)
        # KL = 0.1 ln(0.1 / 0.25) + 0.9 ln(0.9 / 0.75) = -0.091629 + 0.164090 = 0.072460.
        out = losses.KLDivergence()(teachers, _t([[0.0, LN3]]), peer_weights=_t([1.0, 0.0]))
        self.assertAllClose(out, [0.072460], atol=1e-6)

    def test_temperature_and_t_squared(self):
        # T = 2: teacher [0, 2 ln 3] / 2 = [0, ln 3] -> [0.25, 0.75]; student uniform.
        # KL = 0.130812 (as above) * T^2 = 0.523248; CE = ln 2 * 4 = 2.772589.
        teacher, student = [_t([[0.0, 2 * LN3]])], _t([[0.0, 0.0]])
        self.assertAllClose(losses.KLDivergence(temperature=2.0)(teacher, student), [0.523248])
        self.assertAllClose(
            losses.SoftmaxCrossEntropy(temperature=2.0)(teacher, student), [4 * LN2]
        )

    def test_sequence_mask_mean_over_full_length(self):
        # [batch=1, time=3, vocab=2]; token CEs: ln 2, 0.836988, (masked, huge).
        # Per example: (0.693147 + 0.836988 + 0) / 3 = 0.510045.
        teacher = _t([[[0.0, LN3], [0.0, 0.0], [100.0, -100.0]]])
        student = _t([[[0.0, 0.0], [0.0, LN3], [-100.0, 100.0]]])
        out = losses.SoftmaxCrossEntropy()([teacher], student, sample_weight=_t([[1.0, 1.0, 0.0]]))
        self.assertAllClose(out, [0.510045], atol=1e-6)

    def test_per_example_sample_weight(self):
        # Two examples, both CE = ln 2; weights [2, 0] -> [2 ln 2, 0]. [batch, 1] also works.
        teacher = _t([[0.0, LN3], [0.0, LN3]])
        student = _t([[0.0, 0.0], [0.0, 0.0]])
        loss = losses.SoftmaxCrossEntropy()
        self.assertAllClose(loss([teacher], student, sample_weight=_t([2.0, 0.0])), [2 * LN2, 0.0])
        self.assertAllClose(
            loss([teacher], student, sample_weight=_t([[2.0], [0.0]])), [2 * LN2, 0.0]
        )

    def test_extreme_logits_are_finite(self):
        # CE = -log softmax(student)[0] = 2e4 exactly; no overflow.
        teacher, student = [_t([[1e4, -1e4]])], _t([[-1e4, 1e4]])
        self.assertAllClose(losses.SoftmaxCrossEntropy()(teacher, student), [2e4])
        self.assertAllClose(losses.KLDivergence()(teacher, student), [2e4])

    def test_float16_logits_computed_in_float32(self):
        out = losses.KLDivergence()([_t([[0.0, LN3]], tf.float16)], _t([[0.0, 0.0]], tf.bfloat16))
        self.assertEqual(out.dtype, tf.float32)
        self.assertAllClose(out, [0.130812], atol=2e-3)

    def test_agreement_is_argmax(self):
        loss = losses.SoftmaxCrossEntropy()
        targets = loss.aggregate([_t([[0.0, 1.0], [2.0, 0.0]])], _t([1.0]))
        self.assertAllEqual(loss.agreement(targets, _t([[0.0, 3.0], [0.0, 3.0]])), [1.0, 0.0])

    def test_gradient_is_softmax_minus_averaged_teachers(self):
        # d psi / d s = T (softmax(s / T) - q) with q the peers' mean distribution,
        # for one and for two peers (the fused kernel's gradient, by hand).
        rng = np.random.default_rng(0)
        student = tf.constant(rng.normal(size=(3, 4, 5)), tf.float32)
        teachers = [tf.constant(rng.normal(size=(3, 4, 5)), tf.float32) for _ in range(2)]
        cases = [
            (cls, peers, t)
            for cls in (losses.SoftmaxCrossEntropy, losses.KLDivergence)
            for peers, t in ((teachers[:1], 1.0), (teachers, 2.0))
        ]
        for cls, peers, temperature in cases:
            loss = cls(temperature)
            with tf.GradientTape() as tape:
                tape.watch(student)
                total = tf.reduce_sum(loss(peers, student))
            q = np.mean([tf.nn.softmax(t / temperature).numpy() for t in peers], axis=0)
            expected = temperature * (tf.nn.softmax(student / temperature).numpy() - q) / 4
            self.assertAllClose(tape.gradient(total, student), expected, atol=1e-6)

    def test_gradient_is_exact_for_targets_that_do_not_sum_to_one(self):
        # A custom aggregate may return unnormalised targets (here q / 2 and
        # q = 1 per class): d/ds -sum q log softmax(s) = sum(q) softmax(s) - q.
        student = _t([[0.5, -1.0, 2.0]])
        q = np.array([[0.1, 0.3, 0.6]])
        for scale in (0.5, 2.0, 3.0):
            targets = tf.constant(np.log(q * scale), tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(student)
                total = tf.reduce_sum(losses.SoftmaxCrossEntropy().pointwise(targets, student))
            p = tf.nn.softmax(student).numpy()
            expected = (q * scale).sum() * p - q * scale
            self.assertAllClose(tape.gradient(total, student), expected, atol=1e-6)

    def test_every_peer_left_out_gives_no_loss_and_no_gradient(self):
        # q = 0 everywhere: the fused kernel's own gradient would be softmax(s).
        student = _t([[0.0, 3.0], [1.0, -1.0]])
        for loss in (losses.SoftmaxCrossEntropy(), losses.KLDivergence()):
            for teachers in ([_t([[0.0, LN3], [1.0, 0.0]])], [_t([[0.0, LN3], [1.0, 0.0]])] * 2):
                with tf.GradientTape() as tape:
                    tape.watch(student)
                    out = loss(teachers, student, tf.zeros([len(teachers)]))
                    total = tf.reduce_sum(out)
                self.assertAllEqual(out, [0.0, 0.0])
                self.assertAllEqual(tape.gradient(total, student), tf.zeros([2, 2]))

    def test_single_class_head_rejected(self):
        with self.assertRaisesRegex(ValueError, "sigmoid_cross_entropy"):
            losses.SoftmaxCrossEntropy()([_t([[0.0]])], _t([[0.0]]))
        with self.assertRaisesRegex(ValueError, "temperature"):
            losses.KLDivergence(temperature=0.0)


class SigmoidLossTest(tf.test.TestCase):
    def test_binary_soft_label(self):
        # Teacher logit ln 3 -> q = 0.75; student 0 -> p = 0.5; BCE = ln 2.
        loss = losses.SigmoidCrossEntropy()
        self.assertAllClose(loss([_t([[LN3]])], _t([[0.0]])), [LN2])
        # Rank-1 logits are one label per example too.
        self.assertAllClose(loss([_t([LN3])], _t([0.0])), [LN2])

    def test_two_peers_and_multilabel_mean(self):
        # Peers ln 3 and -ln 3 -> q = (0.75 + 0.25) / 2 = 0.5; student ln 3 -> p = 0.75.
        # BCE = -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.836988.
        # Second label: q = 0.75, p = 0.5 -> ln 2. Mean over labels = 0.765068.
        teachers = [_t([[LN3, LN3]]), _t([[-LN3, LN3]])]
        out = losses.SigmoidCrossEntropy()(teachers, _t([[LN3, 0.0]]))
        self.assertAllClose(out, [(0.836988 + LN2) / 2], atol=1e-6)

    def test_agreement(self):
        loss = losses.SigmoidCrossEntropy()
        targets = loss.aggregate([_t([[2.0], [-2.0]])], _t([1.0]))
        self.assertAllEqual(loss.agreement(targets, _t([[1.0], [1.0]])), [1.0, 0.0])


class LogitMSETest(tf.test.TestCase):
    def test_mean_of_teacher_logits(self):
        # Teachers [1, 3], [3, 5] -> mean [2, 4]; student [0, 0] -> (4 + 16) / 2 = 10.
        out = losses.LogitMSE()([_t([[1.0, 3.0]]), _t([[3.0, 5.0]])], _t([[0.0, 0.0]]))
        self.assertAllClose(out, [10.0])


class RegistryTest(parameterized.TestCase):
    @parameterized.parameters(
        ("softmax_cross_entropy", losses.SoftmaxCrossEntropy),
        ("cross_entropy", losses.SoftmaxCrossEntropy),
        ("KL_divergence", losses.KLDivergence),
        ("reverse_kl", losses.ReverseKL),
        ("logistic", losses.SigmoidCrossEntropy),
        ("mse", losses.LogitMSE),
    )
    def test_get_by_name(self, name, cls):
        self.assertIsInstance(losses.get(name), cls)

    def test_get_passes_objects_through(self):
        loss = losses.KLDivergence(temperature=3.0)
        self.assertIs(losses.get(loss), loss)

    def test_unknown_name(self):
        with self.assertRaisesRegex(ValueError, "Unknown distillation loss 'softmax_xent'"):
            losses.get("softmax_xent")
        with self.assertRaisesRegex(TypeError, "distill_loss must be"):
            losses.get(3)


if __name__ == "__main__":
    tf.test.main()


def test_position_weights_combine_sample_weights_and_the_keras_mask():
    inputs = keras.Input((4,), dtype="int32")
    hidden = keras.layers.Embedding(5, 3, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    logits = model(np.array([[1, 2, 0, 0], [3, 0, 0, 0]], np.int32))
    # tf_keras still hands the mask on as the output's `_keras_mask` (private).
    assert losses._keras_mask(logits) is not None  # pylint: disable=protected-access
    weights = losses.position_weights(logits, np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(weights, [[1, 1, 0, 0], [2, 0, 0, 0]])
    assert losses.position_weights(tf.zeros([2, 2])) is None


def test_keras_loss_weights_divide_by_the_valid_positions_like_keras():
    # 3 valid positions of 8: masked weights times 8 / 3, so that the mean over
    # all 8 positions is the mean over the 3 valid ones (tf_keras' reduction).
    inputs = keras.Input((4,), dtype="int32")
    hidden = keras.layers.Embedding(5, 3, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    logits = model(np.array([[1, 2, 0, 0], [3, 0, 0, 0]], np.int32))
    weights = losses.keras_loss_weights(logits, np.array([1.0, 2.0], np.float32))
    np.testing.assert_allclose(weights, np.array([[1, 1, 0, 0], [2, 0, 0, 0]]) * 8 / 3, rtol=1e-6)
    # Without a mask: the sample weights as they are.
    np.testing.assert_array_equal(
        losses.keras_loss_weights(tf.zeros([2, 2]), np.array([1.0, 2.0], np.float32)), [1.0, 2.0]
    )
