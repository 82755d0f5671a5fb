"""Which examples a group, and a worker of a group, reads.

Codistillation's groups train on different data: by default each group gets its
own disjoint shard of the training set (the paper's setup, section 2.1), and a
*same-data* mode (every group reads all the data, each in its own order) exists
for the paper's control experiment (Figure 2b). Inside a group, the workers of a
multi-worker job split the group's shard between them.

Everything here is deterministic from the group index, the number of groups and
a seed, so a restarted group reads the same shard again.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_codistill import errors

__all__ = ["DataContext", "DISJOINT", "SAME", "batched"]

DISJOINT = "disjoint"
SAME = "same"
_MODES = (DISJOINT, SAME)


@dataclasses.dataclass(frozen=True)
class DataContext:
    """What an input function needs to know to build its part of the data.

    Attributes:
      training: True for the training split (sharded between groups, shuffled,
        repeated); False for evaluation (every group sees all of it, in order).
      batch_size: examples per batch this pipeline must produce (per replica
        when built through `strategy.distribute_datasets_from_function`).
      group_index: this group.
      num_groups: groups in the run.
      mode: `disjoint` (each group its own shard) or `same` (all groups all
        the data, in a group-specific order).
      seed: data seed of the run.
      worker_index: this input pipeline among the group's pipelines.
      num_workers: number of input pipelines of the group.
      shuffle_buffer: examples in the shuffle buffer.
      initial_step: train steps the group has already run (a restarted
        group): training data resumes where those steps left it (see
        `skip_consumed`).
      replicas_per_pipeline: replicas fed by this pipeline. Under
        MirroredStrategy one pipeline feeds all local replicas, its
        consecutive batches going to the replicas in turn; an input that must
        give each replica a continuation of its own previous batch (carried
        RNN state) needs to know this.
    """

    training: bool = True
    batch_size: int = 32
    group_index: int = 0
    num_groups: int = 1
    mode: str = DISJOINT
    seed: int = 0
    worker_index: int = 0
    num_workers: int = 1
    shuffle_buffer: int = 10_000
    initial_step: int = 0
    replicas_per_pipeline: int = 1

    def __post_init__(self):
        if self.mode not in _MODES:
            raise errors.ConfigError(f"data split mode must be one of {_MODES}, got {self.mode!r}")
        if not 0 <= self.group_index < self.num_groups:
            raise errors.ConfigError(
                f"group_index must be in [0, {self.num_groups}), got {self.group_index}"
            )
        if not 0 <= self.worker_index < self.num_workers:
            raise errors.ConfigError(
                f"worker_index must be in [0, {self.num_workers}), got {self.worker_index}"
            )
        if self.batch_size < 1:
            raise errors.ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.replicas_per_pipeline < 1:
            raise errors.ConfigError(
                f"replicas_per_pipeline must be >= 1, got {self.replicas_per_pipeline}"
            )

    @property
    def shuffle_seed(self) -> int:
        """Differs between groups (same-data mode: same data, another order)."""
        return self.seed * 1009 + self.group_index

    @property
    def group_shard(self) -> Optional[tuple]:
        """`(index, count)` of this group's shard of the training data, or None."""
        if self.training and self.mode == DISJOINT and self.num_groups > 1:
            return self.group_index, self.num_groups
        return None

    def tfds_split(self, split: str) -> str:
        """A TFDS split string restricted to this group's shard (by percent).

        Used for TFDS datasets so a group reads only its files' share:
        `train` becomes e.g. `train[50%:100%]` for group 1 of 2. Percent
        boundaries follow `tfds.even_splits`.
        """
        shard = self.group_shard
        if shard is None:
            return split
        index, count = shard
        lo, hi = 100 * index // count, 100 * (index + 1) // count
        return f"{split}[{lo}%:{hi}%]"

    def shard_examples(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Keeps this group's and this worker's examples (round robin).

        For datasets that are not already split by `tfds_split`; apply it
        before any shuffling so the shards are disjoint and stable.
        """
        shard = self.group_shard
        if shard is not None:
            dataset = dataset.shard(shard[1], shard[0])
        return self.shard_workers(dataset)

    def skip_consumed(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Skips the examples a restarted group already trained on.

        Apply to the shuffled, repeated stream of examples, before batching
        (and before expensive decoding, if possible): with seeded shuffles the
        stream is the same after a restart, so skipping what `initial_step`
        steps consumed puts the group where it stopped: a step takes one batch
        per replica this pipeline feeds (`replicas_per_pipeline` batches of
        `batch_size`). It costs reading those examples once; evaluation data is
        never skipped.
        """
        if self.training and self.initial_step > 0:
            consumed = self.initial_step * self.batch_size * self.replicas_per_pipeline
            dataset = dataset.skip(consumed)
        return dataset

    def shard_workers(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Keeps this worker's share of the group's examples."""
        if self.num_workers > 1:
            dataset = dataset.shard(self.num_workers, self.worker_index)
        return dataset


def batched(dataset: tf.data.Dataset, context: DataContext, cache: bool = False) -> tf.data.Dataset:
    """Shuffles, repeats (training only), batches and prefetches a sharded dataset.

    Training batches drop the remainder so that every step has the same shape
    (static shapes for XLA/TPU); evaluation keeps every example.
    """
    if cache:
        dataset = dataset.cache()
    if context.training:
        dataset = dataset.shuffle(
            context.shuffle_buffer, seed=context.shuffle_seed, reshuffle_each_iteration=True
        ).repeat()
        dataset = context.skip_consumed(dataset)
    dataset = dataset.batch(context.batch_size, drop_remainder=context.training)
    return dataset.prefetch(tf.data.AUTOTUNE)
