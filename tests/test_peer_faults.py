"""Peers that lie or vanish: NaN predictions, other architectures, stale teachers."""

import numpy as np
import tensorflow as tf
import tf_keras as keras

import tf_codistill
from tf_codistill import exchange
from tf_codistill import testing


def _model(exchange_dir, **kwargs):
    kwargs.setdefault("exchange_every_n_steps", 4)
    return testing.codistill_model(exchange_dir, learning_rate=0.05, **kwargs)


def _overflowing_peer():
    """Finite weights whose predictions overflow to Inf/NaN: passes every file check."""
    peer = testing.mlp(seed=1)
    peer.set_weights([np.full_like(w, 1e30) for w in peer.get_weights()])
    return peer


class PeerFaultTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        x, y = testing.toy_classification(16 * 8)
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def test_nonfinite_teacher_is_skipped_then_dropped_until_a_new_checkpoint(self):
        publisher = exchange.Publisher(_overflowing_peer(), exchange.group_dir(self.dir, 1))
        publisher.publish(3)
        for background in (False, True):
            model = _model(self.dir, background_reload=background)
            with self.assertLogs(level="WARNING") as logs:
                history = model.fit(self.dataset, verbose=0).history
            # psi was skipped on every batch: the weight in effect was 0, the loss finite.
            self.assertEqual(history["distill_weight"], [0.0])
            self.assertTrue(np.isfinite(history["loss"][0]))
            self.assertEqual(history["nonfinite_teacher_batches"][0] > 0, True)
            self.assertTrue(any("predicted NaN or Inf" in line for line in logs.output))
            # Dropped at the first exchange, and the same checkpoint is not loaded again.
            self.assertEqual(list(model.teacher_steps), [-1])
            self.assertEqual(history["teachers_dropped"], [1.0])
            self.assertEqual(model.reload_counts[1]["loaded"], 1)
            self.assertTrue(all(np.all(np.isfinite(w)) for w in model.student.get_weights()))
        # The peer recovers and publishes a good checkpoint: it is used again.
        good = testing.mlp(seed=2)
        exchange.Publisher(good, exchange.group_dir(self.dir, 1)).publish(9)
        self.assertEqual(model.reload_teachers()[0].status, "loaded")
        history = model.fit(self.dataset, verbose=0).history
        self.assertGreater(history["distill_loss"][0], 0)
        self.assertEqual(list(model.teacher_steps), [9])

    def _sometimes_overflowing_teacher(self):
        """A loaded teacher finite on ordinary inputs, Inf/NaN on inputs of 1e10.

        Weights of 1e15: logits ~16 * 1e15 * 1e15 on N(0, 1) inputs, finite;
        ~1e40 (Inf in float32) on inputs of 1e10.
        """
        peer = testing.mlp(seed=1)
        peer.set_weights([np.full_like(w, 1e15) for w in peer.get_weights()])
        exchange.Publisher(peer, exchange.group_dir(self.dir, 1)).publish(3)
        # Learning rate 0: the student stays finite on the huge inputs too.
        model = testing.codistill_model(self.dir, learning_rate=0.0, exchange_every_n_steps=10)
        x, y = testing.toy_classification(16)
        return model, (x, y), (np.full_like(x, 1e10), y)

    def test_nonfinite_batch_late_in_an_epoch_is_not_missed(self):
        # Steps 0-14 are epoch 1, 15-29 epoch 2; exchanges at steps 10, 20, 30.
        # The teacher overflows on step 12 only. Keras resets its metrics at
        # every epoch (and evaluation), so a count kept in a metric was gone
        # by the exchange at step 20 and the teacher stayed in use.
        model, good, bad = self._sometimes_overflowing_teacher()
        batches = [bad if step == 12 else good for step in range(30)]
        dataset = tf.data.Dataset.from_tensor_slices(
            tuple(np.stack([b[i] for b in batches]) for i in (0, 1))
        )
        history = model.fit(dataset, steps_per_epoch=15, epochs=2, verbose=0).history
        self.assertEqual(history["nonfinite_teacher_batches"], [1.0, 0.0])
        self.assertEqual(history["teachers_dropped"], [0.0, 1.0])
        self.assertEqual(list(model.teacher_steps), [-1])

    def test_evaluation_batches_do_not_drop_a_teacher(self):
        # A user callback evaluates on data the teacher overflows on, between
        # two exchanges; training batches are all fine: the teacher stays.
        model, good, bad = self._sometimes_overflowing_teacher()

        class EvaluateAt(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 5:
                    result = self.model.evaluate(*bad, verbose=0, return_dict=True)
                    self.evaluated = result["nonfinite_teacher_batches"]

        evaluate = EvaluateAt()
        dataset = tf.data.Dataset.from_tensors(good).repeat(20)
        history = model.fit(dataset, verbose=0, callbacks=[evaluate]).history
        self.assertEqual(evaluate.evaluated, 1.0)  # Evaluation saw it, and says so.
        self.assertEqual(history["teachers_dropped"], [0.0])
        self.assertEqual(list(model.teacher_steps), [3])

    def test_other_architecture_at_start_is_a_clear_error(self):
        exchange.Publisher(testing.mlp(hidden=(12,)), exchange.group_dir(self.dir, 1)).publish(0)
        model = _model(self.dir)
        with self.assertRaisesRegex(
            tf_codistill.PeerMismatchError,
            r"group 0 cannot learn from group 1: ckpt-0 does not match this model's variables: "
            r"hidden_0/bias has shape \[12\], expected \[16\].*same architecture",
        ):
            model.fit(self.dataset, verbose=0)

    def test_other_architecture_mid_run_is_skipped(self):
        publisher = exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(self.dir, 1))
        publisher.publish(0)
        model = _model(self.dir)
        model.fit(self.dataset, verbose=0)
        exchange.Publisher(testing.mlp(hidden=(12,)), exchange.group_dir(self.dir, 1)).publish(50)
        history = model.fit(self.dataset, verbose=0).history  # Does not raise.
        self.assertEqual(list(model.teacher_steps), [0])
        self.assertEqual(history["peer_reload_failures"], [1.0])

    def test_stale_peer_is_left_out_and_comes_back(self):
        publisher = exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(self.dir, 1))
        publisher.publish(0)
        model = _model(self.dir, max_staleness_steps=5, exchange_every_n_steps=100)
        history = model.fit(self.dataset, epochs=2, verbose=0).history
        # Epoch 1: steps 0-7, the teacher (step 0) is too old from step 6 on.
        self.assertAllClose(history["distill_weight"], [6 / 8, 0.0])
        self.assertEqual(history["stale_peers"], [1.0, 1.0])
        self.assertEqual(history["teachers_in_use"], [0.0, 0.0])
        publisher.publish(20)  # The peer is back (ahead of us: steps 16-23).
        history = model.fit(self.dataset, verbose=0).history
        self.assertAllClose(history["distill_weight"], [1.0])
        self.assertEqual(history["teachers_in_use"], [1.0])


if __name__ == "__main__":
    tf.test.main()
