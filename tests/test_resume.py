"""A stopped group restarts from its own latest state, optimizer included."""

import tensorflow as tf
import tf_keras as keras

import tf_codistill
from tf_codistill import exchange
from tf_codistill import testing

STEPS_PER_EPOCH = 4
EPOCHS = 4


class Interrupted(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises (as a crash would) before the train step with this global index runs."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise Interrupted(f"interrupted before step {self.step}")


class RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start_step = int(self.model.optimizer.iterations.numpy())


class ResumeTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        x, y = testing.toy_classification(STEPS_PER_EPOCH * 8)
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()

    def _run(self, exchange_dir, backup_dir, save_freq, extra_callbacks=(), dataset=None):
        """One process lifetime of group 0: a fresh model, fit, as after a restart."""
        model = tf_codistill.CodistillModel(
            testing.mlp(seed=0),
            group_index=0,
            num_groups=2,
            exchange_dir=exchange_dir,
            burn_in_steps=2,
            exchange_every_n_steps=3,
        )
        model.compile(
            keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        start = RecordStart()
        callbacks = [
            keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq),
            start,
            *extra_callbacks,
        ]
        model.fit(
            self.dataset if dataset is None else dataset,
            steps_per_epoch=STEPS_PER_EPOCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=callbacks,
        )
        return model, start.start_step

    def _exchange_dir(self):
        d = self.create_tempdir().full_path
        exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(d, 1)).publish(0)
        return d

    def test_restart_at_epoch_boundary_equals_uninterrupted_run(self):
        reference, _ = self._run(self._exchange_dir(), self.create_tempdir().full_path, "epoch")
        exchange_dir, backup = self._exchange_dir(), self.create_tempdir().full_path
        with self.assertRaises(Interrupted):
            self._run(exchange_dir, backup, "epoch", [InterruptAt(2 * STEPS_PER_EPOCH)])
        resumed, start = self._run(exchange_dir, backup, "epoch")
        self.assertEqual(start, 2 * STEPS_PER_EPOCH)
        self.assertEqual(int(resumed.optimizer.iterations.numpy()), EPOCHS * STEPS_PER_EPOCH)
        # Student and optimizer state (Adam moments, step) are those of the
        # uninterrupted run: nothing was lost or replayed.
        for a, b in zip(
            reference.student.get_weights(), resumed.student.get_weights(), strict=True
        ):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(reference.optimizer.variables, resumed.optimizer.variables, strict=True):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7)
        self.assertEqual(list(resumed.teacher_steps), [0])

    def test_restart_mid_epoch_loses_at_most_the_steps_since_the_last_save(self):
        exchange_dir, backup = self._exchange_dir(), self.create_tempdir().full_path
        with self.assertRaises(Interrupted):
            # Saves after steps 2, 4 and 6; dies before step 7 (index 7) runs.
            self._run(exchange_dir, backup, 2, [InterruptAt(7)])
        resumed, start = self._run(exchange_dir, backup, 2)
        self.assertEqual(start, 6)
        self.assertEqual(int(resumed.optimizer.iterations.numpy()), EPOCHS * STEPS_PER_EPOCH)
        # The uninterrupted run that the restart amounts to: steps 0-5 on the
        # data's first 6 batches (step 6 was lost, with the process), then,
        # as the restarted process reads its data from the beginning, steps
        # 6-15 on batches 0, 1, 2, ... The student and the optimizer state
        # (Adam's moments) must be that run's: a restore from an older save, a
        # lost optimizer state or a replayed step would each differ.
        reference, _ = self._run(
            self._exchange_dir(),
            self.create_tempdir().full_path,
            2,
            dataset=self.dataset.take(6).concatenate(self.dataset),
        )
        for a, b in zip(
            reference.student.get_weights(), resumed.student.get_weights(), strict=True
        ):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(reference.optimizer.variables, resumed.optimizer.variables, strict=True):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        # And not the run without the interruption: the lost step mattered.
        uninterrupted, _ = self._run(self._exchange_dir(), self.create_tempdir().full_path, 2)
        self.assertNotAllClose(
            uninterrupted.student.get_weights()[0], resumed.student.get_weights()[0], atol=1e-4
        )


if __name__ == "__main__":
    tf.test.main()
