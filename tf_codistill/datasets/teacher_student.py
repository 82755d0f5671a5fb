"""A teacher-student task with fresh examples at every step (no data repetition).

Inputs are standard normal vectors; each label is *sampled* from the softmax
of a fixed random "oracle" network, `sharpness * tanh(x W_1) ... W_out`, so
the task has a known irreducible loss (the oracle's entropy) and, unlike the
bundled `planted` task, an unbounded training stream: every batch is new,
drawn from a stateless random generator keyed by (oracle, data seed, group,
input pipeline, batch index). That is the paper's regime (its Common Crawl
runs visited 2.3% of the data), at a size whose batch scaling can be
measured to saturation on a CPU. `sharpness` sets the label noise and
`hidden`/`depth` the oracle's complexity; together with the student's width
they set the gradient noise scale and how much an ensemble can gain.

Training batches are `(x, one_hot(sampled label))`; evaluation batches are
`(x, oracle probabilities)`, so a `CategoricalCrossentropy(from_logits=True)`
task loss reports the *expected* cross-entropy on evaluation (no label
sampling noise: two runs compared on the same evaluation set differ only by
what they learned). Subtract `bayes_loss` for the excess loss.

Groups read disjoint streams (`disjoint`, the default) or the same stream
(`same`: identical batches, the same-data control). A restarted group resumes
at exactly the batch it stopped at (the stream is indexed, not iterated).
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from tf_codistill import errors
from tf_codistill.datasets import sharding

__all__ = ["Oracle", "bayes_loss", "teacher_student_input_fn"]

# Evaluation splits: fixed draws from streams no training batch uses.
_EVAL_STREAMS = {"validation": 1, "test": 2}
_SPLITS = tuple(_EVAL_STREAMS)


class Oracle:
    """The fixed random network whose softmax labels the examples.

    Args:
      input_dim: input features.
      num_classes: classes.
      hidden: units per hidden (tanh) layer of the oracle.
      depth: hidden layers of the oracle (>= 1).
      sharpness: multiplies the oracle's logits; higher means less label noise.
      oracle_seed: which oracle (the task).
    """

    def __init__(
        self,
        input_dim: int = 32,
        num_classes: int = 10,
        hidden: int = 64,
        depth: int = 1,
        sharpness: float = 3.0,
        oracle_seed: int = 0,
    ):
        for name, value in (("input_dim", input_dim), ("num_classes", num_classes)):
            if int(value) != value or value < 1:
                raise errors.ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if num_classes < 2:
            raise errors.ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if int(hidden) != hidden or hidden < 1 or int(depth) != depth or depth < 1:
            raise errors.ConfigError(
                f"hidden and depth must be integers >= 1, got {hidden}, {depth}"
            )
        if not sharpness > 0:
            raise errors.ConfigError(f"sharpness must be > 0, got {sharpness}")
        self.input_dim, self.num_classes = int(input_dim), int(num_classes)
        self.sharpness = float(sharpness)
        self.oracle_seed = int(oracle_seed)
        rng = np.random.default_rng(self.oracle_seed)
        self._weights = []
        fan_in = self.input_dim
        for _ in range(int(depth)):
            self._weights.append(rng.normal(size=(fan_in, int(hidden))) / np.sqrt(fan_in))
            fan_in = int(hidden)
        self._weights.append(rng.normal(size=(fan_in, self.num_classes)) / np.sqrt(fan_in))
        self._weights = [w.astype(np.float32) for w in self._weights]

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        """`[batch, input_dim]` float32 -> `[batch, num_classes]` float32 oracle logits."""
        h = x
        for w in self._weights[:-1]:
            h = tf.tanh(tf.matmul(h, w))
        return self.sharpness * tf.matmul(h, self._weights[-1])

    def stream_key(self, *parts: int) -> int:
        """A 63-bit key for a stream of this oracle (stable across processes)."""
        text = ",".join(str(int(p)) for p in (self.oracle_seed, *parts))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1

    def batch(self, key: int, index: tf.Tensor, batch_size: int):
        """Batch `index` of stream `key`: x `[batch, dim]`, oracle logits, sampled labels."""
        seed = tf.stack([tf.constant(key, tf.int64), tf.cast(index, tf.int64)])
        x = tf.random.stateless_normal([batch_size, self.input_dim], seed=seed)
        logits = self.logits(x)
        labels = tf.random.stateless_categorical(
            logits, 1, seed=seed + tf.constant([0, 1 << 40], tf.int64), dtype=tf.int32
        )[:, 0]
        return x, logits, labels

    def evaluation_set(self, split: str, num_examples: int):
        """A fixed evaluation split: x and the oracle's probabilities, as numpy."""
        if split not in _EVAL_STREAMS:
            raise errors.ConfigError(f"split must be one of {_SPLITS}, got {split!r}")
        x, logits, _ = self.batch(self.stream_key(-_EVAL_STREAMS[split]), 0, int(num_examples))
        return x.numpy(), tf.nn.softmax(logits).numpy()


def bayes_loss(oracle: Oracle, split: str = "validation", num_examples: int = 32768) -> float:
    """The oracle's own expected cross-entropy on `split`: the best achievable loss."""
    x, probs = oracle.evaluation_set(split, num_examples)
    logp = tf.nn.log_softmax(oracle.logits(tf.constant(x))).numpy()
    return float(-np.mean(np.sum(probs * logp, axis=-1)))


def teacher_student_input_fn(
    context: sharding.DataContext,
    input_dim: int = 32,
    num_classes: int = 10,
    hidden: int = 64,
    depth: int = 1,
    sharpness: float = 3.0,
    oracle_seed: int = 0,
    num_eval_examples: int = 32768,
    eval_split: str = "validation",
) -> tf.data.Dataset:
    """Input function of the teacher-student task for `train_lib.train_group`.

    Args:
      context: which group, pipeline and batch size (`DataContext`).
      input_dim, num_classes, hidden, depth, sharpness, oracle_seed: the task
        (`Oracle`).
      num_eval_examples: size of the fixed evaluation split.
      eval_split: `validation` (model selection, curves) or `test` (the final
        numbers of a study are read on a split nobody tuned on).

    Returns:
      Training: an endless dataset of `(x, one-hot label)` batches, fresh at
      every step. Evaluation: `(x, oracle probabilities)` batches of the
      fixed split, every group the same.
    """
    oracle = Oracle(input_dim, num_classes, hidden, depth, sharpness, oracle_seed)
    if not context.training:
        if eval_split not in _SPLITS:
            raise errors.ConfigError(f"eval_split must be one of {_SPLITS}, got {eval_split!r}")
        x, probs = oracle.evaluation_set(eval_split, num_eval_examples)
        dataset = tf.data.Dataset.from_tensor_slices((x, probs))
        dataset = context.shard_workers(dataset)
        return dataset.batch(context.batch_size).prefetch(tf.data.AUTOTUNE)
    # Disjoint: one stream per group; same data: every group reads stream 0.
    stream = context.group_index if context.mode == sharding.DISJOINT else 0
    key = oracle.stream_key(context.seed, stream)
    # Batch i of this pipeline is batch i * num_workers + worker of the
    # group's stream, so the workers of a group split it without overlap; a
    # step consumes `replicas_per_pipeline` batches per pipeline.
    first = context.initial_step * context.replicas_per_pipeline
    workers, worker = context.num_workers, context.worker_index

    def make(i):
        x, _, labels = oracle.batch(key, i * workers + worker, context.batch_size)
        return x, tf.one_hot(labels, oracle.num_classes, dtype=tf.float32)

    dataset = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
    return dataset.map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
