"""Two groups exchanging real checkpoints on disk, in one process, one after the other."""

import os

import tensorflow as tf
import tf_keras as keras

import tf_codistill
from tf_codistill import testing

INTERVAL = 4
BURN_IN = 8
ROUNDS = 5


class TwoGroupsTest(tf.test.TestCase):
    def test_groups_codistill_through_the_exchange_dir(self):
        exchange_dir = self.create_tempdir().full_path
        x, y = testing.toy_classification(256)
        models, datasets = [], []
        for g in range(2):
            model = tf_codistill.CodistillModel(
                testing.mlp(seed=g),
                group_index=g,
                num_groups=2,
                exchange_dir=exchange_dir,
                burn_in_steps=BURN_IN,
                exchange_every_n_steps=INTERVAL,
            )
            model.compile(
                keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            models.append(model)
            # Disjoint halves of the data, one per group.
            datasets.append(
                tf.data.Dataset.from_tensor_slices((x[g::2], y[g::2])).batch(16).repeat()
            )
        histories = [[], []]
        for r in range(ROUNDS):
            for g in range(2):
                h = models[g].fit(
                    datasets[g],
                    steps_per_epoch=INTERVAL,
                    epochs=r + 1,
                    initial_epoch=r,
                    verbose=0,
                )
                histories[g].append({k: v[0] for k, v in h.history.items()})
        for g in range(2):
            # Steps 0..7 are burn-in (rounds 0 and 1); from round 2 on, psi is on.
            for r, logs in enumerate(histories[g]):
                if r * INTERVAL >= BURN_IN:
                    self.assertAllClose(logs["distill_weight"], 1.0)
                    self.assertGreater(logs["distill_loss"], 0.0)
                    self.assertLessEqual(abs(logs["teacher_staleness"]), INTERVAL)
                else:
                    self.assertEqual(logs["distill_weight"], 0.0)
            # Group 0 last reloaded before group 1 finished its final round.
            self.assertEqual(list(models[g].teacher_steps), [(ROUNDS - 1 + g) * INTERVAL])
            self.assertGreaterEqual(models[g].reload_counts[1 - g]["loaded"], ROUNDS - 1)
            published = tf.train.latest_checkpoint(os.path.join(exchange_dir, f"group_{g}"))
            self.assertTrue(published.endswith(f"ckpt-{ROUNDS * INTERVAL}"))


if __name__ == "__main__":
    tf.test.main()
