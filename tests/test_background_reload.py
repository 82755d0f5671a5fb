"""Background reloads: peers' new checkpoints read on a thread, switched to between steps."""

import os
from unittest import mock

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import distribute
from tf_codistill import exchange
from tf_codistill import exchange_client
from tf_codistill import testing


def _model(exchange_dir, **kwargs):
    return testing.codistill_model(exchange_dir, exchange_every_n_steps=10, **kwargs)


class PublishAt(keras.callbacks.Callback):
    """Plays the peer: publishes new weights after a given train step."""

    def __init__(self, publisher, peer, at_step, corrupt=None):
        super().__init__()
        self.publisher, self.peer, self.at_step, self.corrupt = publisher, peer, at_step, corrupt

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at_step:
            self.peer.set_weights([w + 1.0 for w in self.peer.get_weights()])
            prefix = self.publisher.publish(1000 + self.at_step)
            if self.corrupt:
                self.corrupt(prefix)


class BackgroundReloadTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.peer = testing.mlp(seed=1)
        self.publisher = exchange.Publisher(self.peer, exchange.group_dir(self.dir, 1))
        self.publisher.publish(0)
        x, y = testing.toy_classification(16 * 40)
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def test_new_checkpoint_is_used_soon_without_retracing(self):
        model = _model(self.dir)
        self.assertTrue(model.background_reload)
        model.fit(self.dataset.take(2), verbose=0)  # Trace; loads step 0 at the start.
        traces = model.train_function.experimental_get_tracing_count()
        self.assertEqual(list(model.teacher_steps), [0])
        before = int(model.teacher_pool.active_buffer.numpy()[0])
        model.fit(self.dataset, verbose=0, callbacks=[PublishAt(self.publisher, self.peer, 12)])
        self.assertEqual(list(model.teacher_steps), [1012])
        self.assertEqual(model.train_function.experimental_get_tracing_count(), traces)
        # The teacher in use now holds the new checkpoint, bit for bit, in the spare buffer.
        self.assertEqual(list(model.teacher_pool.active_buffer.numpy()), [1 - before])
        reader = tf.train.load_checkpoint(os.path.join(self.dir, "group_1"))
        kernel = reader.get_tensor("model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
        self.assertAllEqual(model.teachers[0].get_weights()[0], kernel)
        self.assertEqual(model.reload_counts[1]["loaded"], 2)

    def test_bad_checkpoint_read_in_background_keeps_the_teacher(self):
        model = _model(self.dir)
        model.fit(self.dataset.take(2), verbose=0)
        good = [w.copy() for w in model.teachers[0].get_weights()]

        def truncate(prefix):
            (data,) = [
                f
                for f in os.listdir(self.dir + "/group_1")
                if f.startswith(os.path.basename(prefix) + ".data")
            ]
            with open(os.path.join(self.dir, "group_1", data), "r+b") as f:
                f.truncate(10)

        with self.assertLogs(level="WARNING") as logs:
            history = model.fit(
                self.dataset,
                verbose=0,
                callbacks=[PublishAt(self.publisher, self.peer, 12, truncate)],
            )
        self.assertTrue(any("ckpt-1012 holds 10 bytes of data" in line for line in logs.output))
        self.assertEqual(list(model.teacher_steps), [0])
        for a, b in zip(good, model.teachers[0].get_weights(), strict=True):
            self.assertAllEqual(a, b)
        # A failed read may be transient: read again, but not at every poll
        # (ten per exchange interval): three reads of one bad checkpoint.
        self.assertEqual(model.reload_counts[1]["failed"], exchange_client.MAX_READ_ATTEMPTS)
        self.assertEqual(exchange_client.MAX_READ_ATTEMPTS, 3)
        self.assertTrue(np.isfinite(history.history["loss"][0]))

    def test_blocking_mode_has_no_spare_teachers(self):
        model = _model(self.dir, background_reload=False)
        self.assertFalse(model.background_reload)
        # One teacher per peer, and no spare buffer.
        self.assertEqual((model.teacher_pool.num_slots, model.teacher_pool.buffers), (1, 1))
        background = _model(self.dir).teacher_pool
        self.assertEqual((background.num_slots, background.buffers), (1, 2))
        model.fit(self.dataset, verbose=0, callbacks=[PublishAt(self.publisher, self.peer, 12)])
        # Reloaded at the exchange boundary (step 20) only.
        self.assertEqual(list(model.teacher_steps), [1012])

    def test_multi_worker_groups_cannot_reload_in_background(self):
        with (
            mock.patch.object(distribute, "num_workers", return_value=2),
            mock.patch.object(distribute, "is_chief", return_value=True),
        ):
            with self.assertRaisesRegex(
                ValueError, "background_reload=True needs a single-process"
            ):
                _model(self.dir, background_reload=True)
            self.assertFalse(_model(self.dir).background_reload)


if __name__ == "__main__":
    tf.test.main()
