"""Results do not depend on the strategy; strategies are chosen by name."""

import os
from unittest import mock

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

import tf_codistill
from tf_codistill import distribute
from tf_codistill import exchange
from tf_codistill import losses
from tf_codistill import testing

BATCH = 8
VOCAB, LENGTH = 7, 5


def sequence_model(seed):
    """[batch, time] tokens -> [batch, time, vocab] logits."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 6, embeddings_initializer=init)(inputs)
    return keras.Model(inputs, keras.layers.Dense(VOCAB, kernel_initializer=init)(h))


def multilabel_model(seed, outputs=3):
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=init)(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs, kernel_initializer=init)(h))


def _data(kind):
    rng = np.random.default_rng(0)
    if kind == "sequence":
        x = rng.integers(0, VOCAB, size=(BATCH, LENGTH)).astype("int32")
        y = rng.integers(0, VOCAB, size=(BATCH, LENGTH))
        # Per-token masks: row i keeps its first (i % LENGTH) + 1 tokens.
        w = (np.arange(LENGTH)[None, :] <= (np.arange(BATCH) % LENGTH)[:, None]).astype("float32")
        return x, y, w
    x = rng.normal(size=(BATCH, 6)).astype("float32")
    w = rng.uniform(0.5, 2.0, size=(BATCH,)).astype("float32")  # per-example weights
    if kind == "multilabel":
        return x, rng.integers(0, 2, size=(BATCH, 3)).astype("float32"), w
    return x, rng.integers(0, 4, size=(BATCH,)), w


CASES = [
    # (name, psi, data kind, model builder, task loss)
    (
        "softmax_ce_masked_tokens",
        losses.SoftmaxCrossEntropy(),
        "sequence",
        sequence_model,
        lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ),
    (
        "kl_t2_masked_tokens",
        losses.KLDivergence(temperature=2.0),
        "sequence",
        sequence_model,
        lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ),
    (
        "sigmoid_multilabel_weighted",
        losses.SigmoidCrossEntropy(),
        "multilabel",
        multilabel_model,
        lambda: keras.losses.BinaryCrossentropy(from_logits=True),
    ),
    (
        "logit_mse_weighted",
        losses.LogitMSE(),
        "classes",
        lambda seed: multilabel_model(seed, outputs=4),
        lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ),
]


class StrategyEquivalenceTest(parameterized.TestCase, tf.test.TestCase):
    """One SGD step at the same global batch: one device vs 2 mirrored CPUs."""

    def _one_step(self, strategy, psi, kind, build, task_loss):
        d = self.create_tempdir().full_path
        exchange.Publisher(build(1), exchange.group_dir(d, 1)).publish(0)
        x, y, w = _data(kind)
        with strategy.scope():
            model = tf_codistill.CodistillModel(
                build(0),
                group_index=0,
                num_groups=2,
                exchange_dir=d,
                distill_loss=psi,
                burn_in_steps=0,
            )
            model.compile(keras.optimizers.SGD(0.5), loss=task_loss())
        history = model.fit(
            x, y, sample_weight=w, batch_size=BATCH, shuffle=False, verbose=0
        ).history
        return [v.numpy() for v in model.student.trainable_variables], history

    @parameterized.named_parameters(*CASES)
    def test_same_weights_and_metrics(self, psi, kind, build, task_loss):
        single_w, single_h = self._one_step(
            tf.distribute.get_strategy(), psi, kind, build, task_loss
        )
        mirrored = testing.mirrored_strategy()
        self.assertEqual(mirrored.num_replicas_in_sync, 2)
        mirrored_w, mirrored_h = self._one_step(mirrored, psi, kind, build, task_loss)
        initial = [v.numpy() for v in build(0).trainable_variables]
        for a, b, init in zip(single_w, mirrored_w, initial, strict=True):
            self.assertGreater(np.abs(a - init).max(), 1e-4)  # the step did something
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        for key in ("loss", "task_loss", "distill_loss", "agreement", "distill_weight"):
            self.assertAllClose(single_h[key], mirrored_h[key], rtol=1e-5, atol=1e-6, msg=key)
        self.assertGreater(single_h["distill_loss"][0], 0.0)


class MakeStrategyTest(tf.test.TestCase):
    def test_default_and_mirrored(self):
        self.assertIs(distribute.make_strategy("default"), tf.distribute.get_strategy())
        with mock.patch.object(tf.distribute, "MirroredStrategy", return_value="mirrored"):
            self.assertEqual(distribute.make_strategy("mirrored"), "mirrored")

    def test_bad_combinations_are_named(self):
        with self.assertRaisesRegex(ValueError, "strategy must be one of"):
            distribute.make_strategy("horovod")
        with self.assertRaisesRegex(ValueError, "only meaningful with strategy 'tpu'"):
            distribute.make_strategy("mirrored", tpu="grpc://10.0.0.2:8470")
        with self.assertRaisesRegex(ValueError, "needs a TPU address"):
            distribute.make_strategy("tpu")

    def test_tpu_path_is_wired_in_order(self):
        # No TPU here: check the calls the TPU path makes, with TF's classes mocked.
        calls = []
        resolver = mock.Mock(name="resolver")
        with (
            mock.patch.object(
                tf.distribute.cluster_resolver,
                "TPUClusterResolver",
                side_effect=lambda tpu: calls.append(("resolver", tpu)) or resolver,
            ),
            mock.patch.object(
                tf.config,
                "experimental_connect_to_cluster",
                side_effect=lambda r: calls.append(("connect", r)),
            ),
            mock.patch.object(
                tf.tpu.experimental,
                "initialize_tpu_system",
                side_effect=lambda r: calls.append(("initialize", r)),
            ),
            mock.patch.object(
                tf.distribute,
                "TPUStrategy",
                side_effect=lambda r: calls.append(("strategy", r)) or "tpu-strategy",
            ),
        ):
            self.assertEqual(
                distribute.make_strategy("tpu", tpu="grpc://10.0.0.2:8470"), "tpu-strategy"
            )
        self.assertEqual(
            calls,
            [
                ("resolver", "grpc://10.0.0.2:8470"),
                ("connect", resolver),
                ("initialize", resolver),
                ("strategy", resolver),
            ],
        )


class ChiefTest(tf.test.TestCase):
    def test_default_strategy_is_told_apart(self):
        self.assertTrue(distribute.is_default(tf.distribute.get_strategy()))
        self.assertFalse(distribute.is_default(testing.mirrored_strategy()))

    def test_single_process_strategies_are_chief(self):
        self.assertTrue(distribute.is_chief(tf.distribute.get_strategy()))
        self.assertTrue(distribute.is_chief(testing.mirrored_strategy()))
        self.assertEqual(distribute.num_workers(), 1)

    def test_agree_min_is_identity_for_one_worker(self):
        self.assertAllEqual(distribute.agree_min([3, -1, 7]), [3, -1, 7])

    def test_chief_rules_of_a_multi_worker_cluster(self):
        def strategy(task_type, task_id, cluster):
            s = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
            s.cluster_resolver.task_type, s.cluster_resolver.task_id = task_type, task_id
            s.cluster_resolver.cluster_spec.return_value.as_dict.return_value = cluster
            return s

        workers = {"worker": ["a:1", "b:2"]}
        self.assertEqual(distribute.num_workers(strategy("worker", 1, workers)), 2)
        self.assertEqual(distribute.num_workers(strategy("worker", 0, {})), 1)
        self.assertTrue(distribute.is_chief(strategy("worker", 0, workers)))
        self.assertFalse(distribute.is_chief(strategy("worker", 1, workers)))
        with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
        self.assertTrue(distribute.is_chief(strategy("chief", 0, with_chief)))
        self.assertFalse(distribute.is_chief(strategy("worker", 0, with_chief)))


def test_barrier_is_a_no_op_in_a_single_process_group():
    assert distribute.barrier(tf.distribute.get_strategy()) is None
    assert distribute.barrier(testing.mirrored_strategy()) is None


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf.test.main()
