"""Bundled data: a planted classification task, generated on the fly.

Inputs are standard normal vectors; labels are *sampled* from the softmax of a
fixed random two-layer "oracle" network, so the task has irreducible label
noise (the oracle's own loss is the best achievable) and a model trained on a
few thousand examples overfits. That is the regime where a second group's
knowledge of other data helps, so it shows codistillation's effect in seconds
on a CPU, with no download. The data is a pure function of the seeds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_codistill import errors
from tf_codistill.datasets import sharding

__all__ = ["planted_classification", "planted_input_fn", "oracle_loss"]

_SPLIT_SEEDS = {"train": 1, "validation": 2}


def _oracle(input_dim: int, num_classes: int, hidden: int, oracle_seed: int):
    rng = np.random.default_rng(oracle_seed)
    w1 = rng.normal(size=(input_dim, hidden)) / np.sqrt(input_dim)
    w2 = rng.normal(size=(hidden, num_classes)) / np.sqrt(hidden)
    return w1, w2


def _oracle_logits(x, w1, w2, sharpness):
    return sharpness * np.tanh(x @ w1) @ w2


def planted_classification(
    split: str,
    num_examples: int,
    input_dim: int = 32,
    num_classes: int = 10,
    hidden: int = 64,
    sharpness: float = 3.0,
    oracle_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Examples of the planted task.

    Args:
      split: `train` or `validation` (independent draws from one distribution).
      num_examples: how many examples.
      input_dim: input features.
      num_classes: classes.
      hidden: hidden units of the oracle.
      sharpness: scales the oracle's logits; lower means noisier labels.
      oracle_seed: which oracle (the task); fixed across splits.

    Returns:
      `x` `[num_examples, input_dim]` float32 and `y` `[num_examples]` int64.
    """
    if split not in _SPLIT_SEEDS:
        raise errors.ConfigError(f"split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
    w1, w2 = _oracle(input_dim, num_classes, hidden, oracle_seed)
    rng = np.random.default_rng([oracle_seed, _SPLIT_SEEDS[split]])
    x = rng.normal(size=(num_examples, input_dim))
    logits = _oracle_logits(x, w1, w2, sharpness)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    y = (probs.cumsum(axis=1) > rng.random((num_examples, 1))).argmax(axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def oracle_loss(split: str = "validation", num_examples: int = 4000, **kwargs) -> float:
    """Cross-entropy of the oracle itself on `split`: the best achievable loss."""
    keys = ("input_dim", "num_classes", "hidden", "sharpness", "oracle_seed")
    config: dict = {k: kwargs[k] for k in keys if k in kwargs}
    x, y = planted_classification(split, num_examples, **config)
    w1, w2 = _oracle(
        config.get("input_dim", 32),
        config.get("num_classes", 10),
        config.get("hidden", 64),
        config.get("oracle_seed", 0),
    )
    logits = _oracle_logits(x.astype(np.float64), w1, w2, config.get("sharpness", 3.0))
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float(np.mean(logz - logits[np.arange(len(y)), y]))


def planted_input_fn(
    context: sharding.DataContext,
    num_train_examples: int = 8000,
    num_eval_examples: int = 4000,
    input_dim: int = 32,
    num_classes: int = 10,
    hidden: int = 64,
    sharpness: float = 3.0,
    oracle_seed: int = 0,
) -> tf.data.Dataset:
    """Input function of the planted task for `train_lib.train_group`.

    The training set (`num_train_examples`, before sharding between groups)
    and the validation set are fixed draws; each group reads its shard.
    """
    split = "train" if context.training else "validation"
    num_examples = num_train_examples if context.training else num_eval_examples
    x, y = planted_classification(
        split, num_examples, input_dim, num_classes, hidden, sharpness, oracle_seed
    )
    dataset = context.shard_examples(tf.data.Dataset.from_tensor_slices((x, y)))
    return sharding.batched(dataset, context, cache=True)
