"""Which data each group and each worker reads."""

import numpy as np
import tensorflow as tf

from tf_codistill.datasets import sharding


def _ids(dataset):
    return [int(x) for x in dataset.as_numpy_iterator()]


def _context(**kwargs):
    kwargs.setdefault("batch_size", 1)
    return sharding.DataContext(**kwargs)


class ShardingTest(tf.test.TestCase):
    N = 103  # Not a multiple of the group or worker counts.

    def test_disjoint_shards_are_disjoint_and_cover_the_data(self):
        for num_groups in (2, 3):
            shards = [
                _ids(
                    _context(group_index=g, num_groups=num_groups).shard_examples(
                        tf.data.Dataset.range(self.N)
                    )
                )
                for g in range(num_groups)
            ]
            flat = [i for shard in shards for i in shard]
            self.assertLen(flat, self.N)
            self.assertEqual(set(flat), set(range(self.N)))
            # Deterministic: the same group gets the same shard again.
            again = _context(group_index=1, num_groups=num_groups).shard_examples(
                tf.data.Dataset.range(self.N)
            )
            self.assertEqual(_ids(again), shards[1])

    def test_workers_split_their_groups_shard(self):
        group = set(
            _ids(
                _context(group_index=1, num_groups=2).shard_examples(tf.data.Dataset.range(self.N))
            )
        )
        workers = [
            set(
                _ids(
                    _context(
                        group_index=1, num_groups=2, worker_index=w, num_workers=2
                    ).shard_examples(tf.data.Dataset.range(self.N))
                )
            )
            for w in range(2)
        ]
        self.assertEmpty(workers[0] & workers[1])
        self.assertEqual(workers[0] | workers[1], group)

    def test_same_data_mode_is_all_the_data_in_another_order(self):
        orders = []
        for g in range(2):
            context = _context(
                group_index=g,
                num_groups=2,
                mode=sharding.SAME,
                batch_size=self.N,
                shuffle_buffer=self.N,
            )
            dataset = sharding.batched(
                context.shard_examples(tf.data.Dataset.range(self.N)), context
            )
            orders.append(next(iter(dataset)).numpy().tolist())
        self.assertEqual(sorted(orders[0]), list(range(self.N)))
        self.assertEqual(sorted(orders[1]), list(range(self.N)))
        self.assertNotEqual(orders[0], orders[1])

    def test_evaluation_is_never_split_between_groups(self):
        context = _context(training=False, group_index=1, num_groups=2)
        self.assertEqual(_ids(context.shard_examples(tf.data.Dataset.range(10))), list(range(10)))
        self.assertEqual(context.tfds_split("validation"), "validation")

    def test_tfds_split_strings(self):
        self.assertEqual(
            [_context(group_index=g, num_groups=3).tfds_split("train") for g in range(3)],
            ["train[0%:33%]", "train[33%:66%]", "train[66%:100%]"],
        )
        self.assertEqual(_context(mode=sharding.SAME, num_groups=2).tfds_split("train"), "train")

    def test_training_batches_have_a_static_shape(self):
        context = _context(batch_size=4)
        dataset = sharding.batched(tf.data.Dataset.range(10), context)
        self.assertEqual(dataset.element_spec.shape.as_list(), [4])

    def test_bad_contexts_are_named(self):
        with self.assertRaisesRegex(ValueError, "data split mode must be one of"):
            _context(mode="random")
        with self.assertRaisesRegex(ValueError, "group_index must be in"):
            _context(group_index=2, num_groups=2)
        with self.assertRaisesRegex(ValueError, "worker_index must be in"):
            _context(worker_index=1, num_workers=1)
        np.testing.assert_raises(ValueError, _context, batch_size=0)


if __name__ == "__main__":
    tf.test.main()
