"""Criteo Display Advertising Challenge (Kaggle, 2014): TFDS builder and input function.

The paper's click-prediction workload (Anil et al. 2018, section 3.4). TFDS'
own `criteo` is another dataset (Criteo *uplift* modelling), so this one is
registered as `criteo_display_ads`. It is generated once from the challenge's
`train.txt`, which the user downloads (see `MANUAL_DOWNLOAD_INSTRUCTIONS`).

Format of `train.txt`: one example per line, 40 tab-separated fields:

    <label> <I1> ... <I13> <C1> ... <C26>

the click label (0 or 1), 13 integer (mostly count) features and 26 categorical
features (32-bit hashes written as 8 hex digits). Any feature may be empty
(missing). The lines are in chronological order over 7 days (45,840,617 lines).

What is stored (lossless; no vocabulary, hashing or transform is baked in):
`label`, `integer` (int64 `[13]`, 0 where missing), `integer_missing`
(bool `[13]`), `categorical` (string `[26]`, "" where missing) and `line` (the
1-based line number in `train.txt`, for tracing an example back).

Split (the paper does not give one): line `n` (1-based) is *validation* when
`n % 16 == 0`, else *train*. That holds out 2,865,038 lines (6.25%, spread
evenly over the 7 days) and leaves 42,975,579 training examples, the "about
43M examples" of the paper. TFDS stores the examples of each split in an order
shuffled by line number, so percent slices (`train[0%:50%]`, how groups get
disjoint shards) are random subsets rather than days.

Features (`preprocess`, applied by `criteo_input_fn` at read time, so the
number of buckets can change without generating the data again):
- counts: `log(1 + max(x, 0))` (a few features have small negative values;
  they become 0), missing -> 0, plus a 0/1 missing indicator per feature
  (several features are often missing, which is not the same as a count of 0);
- categorical values: `tf.strings.to_hash_bucket_fast(value, num_buckets)`
  (FarmHash Fingerprint64 modulo `num_buckets`, which TensorFlow documents
  as never changing: the same buckets on every run and machine), one hash
  space per feature; a missing value is hashed like any other string ("");
- label: float32 `[1]`, matching the model's `[batch, 1]` logit.

Malformed lines (a field count other than 40, a label other than 0/1, a count
that is not an integer in int64 range): with `on_malformed="error"` (default)
generation stops with a `ValueError` naming the file and line; with
`on_malformed="skip"` they are left out, counted per split, logged, and the
counts are kept in the dataset's metadata (`builder.info.metadata`).
"""

from __future__ import annotations

import re
from typing import Any
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from tf_codistill import errors
from tf_codistill.datasets import sharding
from tf_codistill.datasets import shipped
from tf_codistill.datasets import tfds_utils

__all__ = [
    "CriteoDisplayAds",
    "NUM_INTEGER_FEATURES",
    "NUM_CATEGORICAL_FEATURES",
    "VALIDATION_EVERY_N_LINES",
    "DEFAULT_NUM_HASH_BUCKETS",
    "parse_line",
    "is_validation_line",
    "preprocess",
    "load_builder",
    "criteo_input_fn",
]

NUM_INTEGER_FEATURES = 13
NUM_CATEGORICAL_FEATURES = 26
NUM_FIELDS = 1 + NUM_INTEGER_FEATURES + NUM_CATEGORICAL_FEATURES
VALIDATION_EVERY_N_LINES = 16
DEFAULT_NUM_HASH_BUCKETS = 100_000
TRAIN_FILE = "train.txt"
ON_MALFORMED = ("error", "skip")

_INTEGER = re.compile(r"-?[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Criteo Display Advertising Challenge (Kaggle 2014) data, accepting
Criteo's terms, from
  https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz
(about 4.3 GB; also on https://www.kaggle.com/c/criteo-display-ad-challenge/data),
extract it (tar -xzf ...), and put its train.txt (about 11 GB, 45,840,617 lines)
into the manual directory: by default <data_dir>/downloads/manual/, or the one
given as `manual_dir` (gin: tf_codistill.datasets.criteo_input_fn.manual_dir).
test.txt (no labels) is not used. The first use generates the TFDS dataset; for
a run of several groups, generate it once beforehand:
  python -c "from tf_codistill.datasets import criteo as c; c.load_builder('DATA', 'MANUAL')"
"""


# A line of `train.txt` is not in the challenge's format (defined in tf_codistill.errors).
MalformedLineError = errors.MalformedLineError


def parse_line(line: str) -> dict[str, Any]:
    """Parses one line of `train.txt` into the stored features.

    Args:
      line: the line, with or without its line ending.

    Returns:
      A dict with `label` (int), `integer` (int64 `[13]`, 0 where missing),
      `integer_missing` (bool `[13]`) and `categorical` (str `[26]`).

    Raises:
      MalformedLineError: what is wrong with the line.
    """
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != NUM_FIELDS:
        raise MalformedLineError(
            f"expected {NUM_FIELDS} tab-separated fields (label, "
            f"{NUM_INTEGER_FEATURES} integer, {NUM_CATEGORICAL_FEATURES} categorical), "
            f"got {len(fields)}"
        )
    label = fields[0]
    if label not in ("0", "1"):
        raise MalformedLineError(f"label must be 0 or 1, got {label!r}")
    integer = np.zeros(NUM_INTEGER_FEATURES, np.int64)
    missing = np.zeros(NUM_INTEGER_FEATURES, np.bool_)
    for i, text in enumerate(fields[1 : 1 + NUM_INTEGER_FEATURES]):
        if not text:
            missing[i] = True
            continue
        if not _INTEGER.fullmatch(text):
            raise MalformedLineError(f"integer feature I{i + 1} is not an integer: {text!r}")
        value = int(text)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise MalformedLineError(f"integer feature I{i + 1} is out of int64 range: {text}")
        integer[i] = value
    categorical = np.array(fields[1 + NUM_INTEGER_FEATURES :], dtype=np.object_)
    return dict(label=int(label), integer=integer, integer_missing=missing, categorical=categorical)


def is_validation_line(line_number: int) -> bool:
    """Whether line `line_number` (1-based) of `train.txt` is in the validation split."""
    return line_number % VALIDATION_EVERY_N_LINES == 0


class CriteoDisplayAds(tfds.core.GeneratorBasedBuilder):
    """Criteo Display Advertising Challenge clicks, from a manually downloaded train.txt."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train and validation (every 16th line)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, on_malformed: str = "error", **kwargs):
        """Creates the builder.

        Args:
          on_malformed: `error` stops generation at the first malformed line
            (naming file and line); `skip` leaves such lines out and counts them.
          **kwargs: for `tfds.core.GeneratorBasedBuilder` (e.g. `data_dir`).

        Raises:
          ValueError: an unknown `on_malformed`.
        """
        if on_malformed not in ON_MALFORMED:
            raise errors.ConfigError(
                f"on_malformed must be one of {ON_MALFORMED}, got {on_malformed!r}"
            )
        self._on_malformed = on_malformed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n", 1)[0],
            features=tfds.features.FeaturesDict(
                {
                    "label": tfds.features.ClassLabel(names=["no_click", "click"]),
                    "integer": tfds.features.Tensor(shape=(NUM_INTEGER_FEATURES,), dtype=np.int64),
                    "integer_missing": tfds.features.Tensor(
                        shape=(NUM_INTEGER_FEATURES,), dtype=np.bool_
                    ),
                    "categorical": tfds.features.Tensor(
                        shape=(NUM_CATEGORICAL_FEATURES,), dtype=np.str_
                    ),
                    "line": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=None,
            homepage="https://www.kaggle.com/c/criteo-display-ad-challenge",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = dl_manager.manual_dir / TRAIN_FILE
        if not path.exists():
            raise errors.DataNotFoundError(
                f"{self.name}: {path} not found.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return {
            "train": self._generate_examples(path, validation=False),
            "validation": self._generate_examples(path, validation=True),
        }

    def _generate_examples(self, path: epath.Path, validation: bool):
        split = "validation" if validation else "train"
        skipped = 0
        with epath.Path(path).open("r") as f:
            for number, line in enumerate(f, start=1):
                if is_validation_line(number) != validation:
                    continue
                try:
                    example = parse_line(line)
                except MalformedLineError as e:
                    if self._on_malformed == "error":
                        raise MalformedLineError(
                            f"{path}, line {number}: {e} (set on_malformed='skip' to "
                            "leave malformed lines out)"
                        ) from None
                    skipped += 1
                    if skipped <= 10:
                        logging.warning("%s, line %d: skipped: %s", path, number, e)
                    continue
                example["line"] = number
                yield number, example
        if skipped:
            logging.warning("%s: skipped %d malformed lines of the %s split", path, skipped, split)
        self.info.metadata.setdefault("malformed_lines_skipped", {})[split] = skipped


def preprocess(
    example: dict[str, tf.Tensor],
    num_hash_buckets: int = DEFAULT_NUM_HASH_BUCKETS,
    missing_indicators: bool = True,
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Model features and label from stored examples (one or a batch).

    Args:
      example: a stored example or a batch of them (leading dims `[...]`).
      num_hash_buckets: buckets of each categorical feature's hash space.
      missing_indicators: also return `dense_missing`.

    Returns:
      `(features, label)`: `dense` float32 `[..., 13]` (`log(1 + max(x, 0))`,
      0 where missing), `dense_missing` float32 `[..., 13]` (1 where missing;
      if asked), `categorical` int64 `[..., 26]` in `[0, num_hash_buckets)`;
      label float32 `[..., 1]`.
    """
    counts = tf.cast(example["integer"], tf.float32)
    features = {
        "dense": tf.math.log1p(tf.maximum(counts, 0.0)),
        "categorical": tf.strings.to_hash_bucket_fast(example["categorical"], num_hash_buckets),
    }
    if missing_indicators:
        features["dense_missing"] = tf.cast(example["integer_missing"], tf.float32)
    label = tf.cast(example["label"], tf.float32)[..., tf.newaxis]
    return features, label


def load_builder(
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    on_malformed: str = "error",
) -> CriteoDisplayAds:
    """The prepared `criteo_display_ads` builder, generated first if needed.

    Args:
      data_dir: TFDS data directory; None for TFDS' default.
      manual_dir: directory holding `train.txt`; None for
        `<data_dir>/downloads/manual`.
      on_malformed: `error` or `skip` (see the module docstring).

    Raises:
      FileNotFoundError: not prepared and `train.txt` is not in the manual
        directory; the message says where to get it and where to put it.
      MalformedLineError: a malformed line with `on_malformed="error"`.
    """
    builder = CriteoDisplayAds(data_dir=data_dir, on_malformed=on_malformed)
    if manual_dir and not builder.is_prepared():
        # `testdata/criteo` (criteo/tiny.gin) is found from any directory.
        manual_dir = shipped.resolve(manual_dir, "criteo_input_fn.manual_dir")
    return tfds_utils.prepared(builder, manual_dir, [TRAIN_FILE], MANUAL_DOWNLOAD_INSTRUCTIONS)


def _check_buckets(num_hash_buckets: int) -> int:
    return errors.check_int("num_hash_buckets", num_hash_buckets, minimum=1)


def criteo_input_fn(
    context: sharding.DataContext,
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    num_hash_buckets: int = DEFAULT_NUM_HASH_BUCKETS,
    missing_indicators: bool = True,
    on_malformed: str = "error",
    shuffle_buffer: Optional[int] = None,
) -> tf.data.Dataset:
    """Criteo batches for `train_lib.train_group`: `(features, label)`.

    Training reads this group's shard of `train` (`context.tfds_split`), this
    worker's share of it, shuffled (seed `context.shuffle_seed`), repeated, in
    full batches. Evaluation reads the whole `validation` split in order
    (each worker its share), the last batch possibly smaller.

    Args:
      context: which group, worker, batch size and split.
      data_dir: TFDS data directory; None for TFDS' default.
      manual_dir: directory holding `train.txt`, used only if the dataset
        must be generated; None for `<data_dir>/downloads/manual`.
      num_hash_buckets: hash buckets per categorical feature; must equal the
        model's (`criteo_dnn.num_hash_buckets`).
      missing_indicators: add `dense_missing` to the features; must match
        the model's.
      on_malformed: `error` or `skip`, for generating the dataset.
      shuffle_buffer: examples in the shuffle buffer; None for the
        context's.

    Returns:
      A dataset of `(features, label)` with `dense` float32 `[batch, 13]`,
      `dense_missing` float32 `[batch, 13]` (if asked), `categorical` int64
      `[batch, 26]` and label float32 `[batch, 1]`.
    """
    num_hash_buckets = _check_buckets(num_hash_buckets)
    builder = load_builder(data_dir, manual_dir, on_malformed)
    if context.training:
        dataset = builder.as_dataset(
            split=context.tfds_split("train"),
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=context.shuffle_seed),
        )
        dataset = context.shard_workers(dataset)
        dataset = dataset.shuffle(
            shuffle_buffer or context.shuffle_buffer,
            seed=context.shuffle_seed,
            reshuffle_each_iteration=True,
        ).repeat()
        dataset = context.skip_consumed(dataset)
    else:
        dataset = context.shard_workers(builder.as_dataset(split="validation", shuffle_files=False))
    # Hashing a whole batch at once is much cheaper than example by example.
    dataset = dataset.batch(context.batch_size, drop_remainder=context.training)
    dataset = dataset.map(
        lambda batch: preprocess(batch, num_hash_buckets, missing_indicators),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
