"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package.

MNIST-1D is a procedurally generated 10-class dataset of 40-sample 1-D
signals: each digit's template is padded, scaled, translated, sheared and
covered with correlated and i.i.d. noise. The `mnist1d` package
(`pip install mnist1d`, or `pip install "tf_codistill[mnist1d]"`) generates it
locally with numpy and scipy, so any number of examples is available with no
download; this module never calls its download path.

Examples are generated in chunks (`make_dataset` with a chunk seed, its
`train_split` set to 1) and cached as `.npz` files under `data_dir`, so a
study generates them once (about 2,500 examples per second per core). The
training pool, validation split and test split use disjoint chunk seeds.
Groups read disjoint shards of the training pool (or all of it, `same`), in
a seeded order, repeated only when a run asks for more examples than its
shard holds: size the pool to the run to study the no-repetition regime.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf

from tf_codistill import errors
from tf_codistill.datasets import sharding

__all__ = ["load", "mnist1d_input_fn", "NUM_CLASSES", "SIGNAL_LENGTH"]

NUM_CLASSES = 10
SIGNAL_LENGTH = 40
# Chunk seeds of each split: the training pool uses 1, 2, 3, ...; the
# evaluation splits seeds far from them.
_EVAL_SEEDS = {"validation": 1_000_001, "test": 2_000_001}


def _generate(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d import data as mnist1d_data
    except ImportError as e:
        raise errors.ConfigError(
            "the MNIST-1D workload needs the mnist1d package: pip install mnist1d "
            '(or pip install "tf_codistill[mnist1d]")'
        ) from e
    args = mnist1d_data.get_dataset_args()
    args.num_samples = int(num_examples)
    args.seed = int(seed)
    args.train_split = 1.0
    dataset = mnist1d_data.make_dataset(args)
    return dataset["x"].astype(np.float32), dataset["y"].astype(np.int64)


def _chunk(data_dir: str, num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One generated chunk, read from `data_dir` or generated and cached there."""
    path = os.path.join(data_dir, f"mnist1d-{num_examples}-seed{seed}.npz")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as f:
            arrays = np.load(io.BytesIO(f.read()))
            return arrays["x"], arrays["y"]
    # make_dataset makes num_samples // 10 examples of each digit.
    x, y = _generate(-(-num_examples // NUM_CLASSES) * NUM_CLASSES, seed)
    x, y = x[:num_examples], y[:num_examples]
    if x.shape != (num_examples, SIGNAL_LENGTH):
        raise errors.ConfigError(
            f"mnist1d generated x of shape {x.shape}, expected ({num_examples}, 40)"
        )
    tf.io.gfile.makedirs(data_dir)
    tmp = f"{path}.tmp-{os.getpid()}"
    buffer = io.BytesIO()  # np.savez seeks, which a gfile being written cannot do.
    np.savez(buffer, x=x, y=y)
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)  # Never a half-written cache file.
    return x, y


def load(
    split: str,
    num_examples: int,
    data_dir: str,
    chunk_size: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """`num_examples` examples of `split`: `x` `[n, 40]` float32, `y` `[n]` int64.

    Args:
      split: `train`, `validation` or `test`.
      num_examples: how many.
      data_dir: cache directory of the generated chunks.
      chunk_size: examples per generated chunk (the train pool is chunks 1, 2, ...).
    """
    if num_examples < 1 or chunk_size < 1:
        raise errors.ConfigError(f"num_examples and chunk_size must be >= 1, got {num_examples}")
    if split == "train":
        seeds = range(1, 1 + -(-num_examples // chunk_size))
    elif split in _EVAL_SEEDS:
        seeds = [_EVAL_SEEDS[split] + k for k in range(-(-num_examples // chunk_size))]
    else:
        raise errors.ConfigError(f"split must be train, validation or test, got {split!r}")
    xs, ys = [], []
    for seed in seeds:
        n = min(chunk_size, num_examples - sum(len(y) for y in ys))
        size = chunk_size if split == "train" or n == chunk_size else n
        x, y = _chunk(data_dir, size, seed)
        xs.append(x[:n])
        ys.append(y[:n])
    return np.concatenate(xs), np.concatenate(ys)


def mnist1d_input_fn(
    context: sharding.DataContext,
    data_dir: str = "~/.cache/tf_codistill/mnist1d",
    num_train_examples: int = 100_000,
    num_eval_examples: int = 10_000,
    eval_split: str = "validation",
    chunk_size: int = 100_000,
) -> tf.data.Dataset:
    """Input function of MNIST-1D for `train_lib.train_group`.

    Args:
      context: which group, pipeline and batch size (`DataContext`).
      data_dir: cache of the generated examples.
      num_train_examples: the training pool, before sharding between groups.
      num_eval_examples: size of the evaluation split.
      eval_split: `validation` (curves, model selection) or `test` (final numbers).
      chunk_size: examples per generated chunk.

    Returns:
      `(x [batch, 40] float32, y [batch] int64)` batches: training shuffled and
      repeated, evaluation in order.
    """
    data_dir = os.path.expanduser(data_dir)
    if context.training:
        x, y = load("train", num_train_examples, data_dir, chunk_size)
    else:
        x, y = load(eval_split, num_eval_examples, data_dir, chunk_size)
    dataset = context.shard_examples(tf.data.Dataset.from_tensor_slices((x, y)))
    return sharding.batched(dataset, context, cache=True)
