"""Prediction churn between trained models: how much retrains disagree.

Two definitions are kept apart (PAPER.md sections 4 and 5.6):

* **mean absolute difference** (`mean_abs_diff`), the paper's "prediction
  difference" between retrains (Anil et al. 2018, Table 1): for a binary
  head, the mean over examples of `|p_a - p_b|`, the difference of the
  predicted positive-class probabilities. For a softmax head we use the
  **total-variation distance** `0.5 * sum_c |p_a,c - p_b,c|` per example,
  which for a two-class softmax *is* `|p_a - p_b|` of either class, so the
  binary definition is the special case, and which lies in [0, 1] like it.
  For a multi-label sigmoid head it is the mean over labels of
  `|p_a,k - p_b,k|`.
* **top-1 disagreement** (`disagreement`), later work's churn (Bhojanapalli
  et al. 2021; Jiang et al. 2022): the fraction of examples whose top-1
  prediction differs (arg-max class for a softmax head; the `p > 0.5`
  decision, i.e. `logit > 0`, for a sigmoid head, averaged over labels for a
  multi-label head).

Both are computed per *position*: an example for `[batch, classes]` outputs,
each token for `[batch, time, vocab]` outputs, weighted by the dataset's
sample weights (e.g. padding masks) when it yields them. Models output
logits, as every model of this library does.

With more than two models every pair is reported, then the mean over pairs
with its spread (min, max and half the range, the paper's "±"). The
computation is streaming: per batch, only sums per pair are kept, so the
evaluation set can be as large as the input pipeline allows.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any
from typing import Optional
from typing import Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors
from tf_codistill import losses

__all__ = [
    "HEADS",
    "SIGMOID",
    "SOFTMAX",
    "ChurnAccumulator",
    "ChurnReport",
    "PairChurn",
    "PredictionChurn",
    "Spread",
    "infer_head",
    "pointwise_churn",
    "prediction_churn",
]

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
HEADS = (SOFTMAX, SIGMOID)

MEAN_ABS_DIFF = "mean_abs_diff"
DISAGREEMENT = "disagreement"
DEFINITIONS = (MEAN_ABS_DIFF, DISAGREEMENT)


def infer_head(
    distill_loss: Optional[Union[str, losses.DistillationLoss]],
    output_shape: Any,
) -> str:
    """Whether a model's logits feed a softmax or per-label sigmoids.

    Args:
      distill_loss: the run's distillation loss, if known: the sigmoid loss
        means a sigmoid head (the paper's Criteo case, also multi-label); the
        softmax losses mean a softmax head.
      output_shape: the model's output shape (`model.output_shape`), used when
        the loss does not decide (`logit_mse`, custom, unknown): one output
        (`[batch]` or `[batch, 1]`) means a binary sigmoid head, more mean a
        softmax. A multi-label sigmoid head must then be named explicitly.

    Returns:
      `softmax` or `sigmoid`.
    """
    if distill_loss is not None:
        loss = losses.get(distill_loss)
        if isinstance(loss, losses.SigmoidCrossEntropy):
            return SIGMOID
        if isinstance(loss, (losses.SoftmaxCrossEntropy, losses.KLDivergence)):
            return SOFTMAX
    shape = tuple(tf.TensorShape(output_shape).as_list()) if output_shape is not None else ()
    if len(shape) <= 1 or shape[-1] == 1:
        return SIGMOID
    return SOFTMAX


def _check_head(head: str) -> str:
    if head not in HEADS:
        raise errors.ConfigError(f"head must be one of {HEADS}, got {head!r}")
    return head


def pointwise_churn(
    logits_a: tf.Tensor, logits_b: tf.Tensor, head: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """Both churn values at every position, for one pair of predictions.

    Args:
      logits_a: `[batch, ..., classes]` logits of one model (`[batch]` or
        `[batch, 1]` for a binary sigmoid head).
      logits_b: the other model's logits, same shape.
      head: `softmax` or `sigmoid`.

    Returns:
      `(abs_diff, disagree)`, float32 tensors of the positions' shape (the
      logits' shape without the last axis; `[batch]` for a rank-1 binary
      output): the total-variation distance (softmax) or mean per-label
      `|p_a - p_b|` (sigmoid), and 1.0 where the top-1 decisions differ
      (softmax) or the share of labels whose `p > 0.5` decisions differ
      (sigmoid).
    """
    _check_head(head)
    a = tf.cast(logits_a, tf.float32)
    b = tf.cast(logits_b, tf.float32)
    if not a.shape.is_compatible_with(b.shape):
        raise errors.ConfigError(f"the models' outputs differ in shape: {a.shape} vs {b.shape}")
    if head == SOFTMAX:
        if a.shape.rank is not None and (a.shape.rank < 2 or a.shape[-1] == 1):
            raise errors.ConfigError(
                f"a softmax head needs logits over >= 2 classes on the last axis, got shape "
                f"{a.shape}; use the sigmoid head for a single-logit binary output"
            )
        diff = tf.abs(tf.nn.softmax(a, axis=-1) - tf.nn.softmax(b, axis=-1))
        abs_diff = 0.5 * tf.reduce_sum(diff, axis=-1)
        disagree = tf.cast(tf.not_equal(tf.argmax(a, axis=-1), tf.argmax(b, axis=-1)), tf.float32)
        return abs_diff, disagree
    if a.shape.rank == 1:
        a, b = a[:, tf.newaxis], b[:, tf.newaxis]
    abs_diff = tf.reduce_mean(tf.abs(tf.sigmoid(a) - tf.sigmoid(b)), axis=-1)
    # p > 0.5 exactly when logit > 0 (comparing logits avoids float32
    # rounding of sigmoid(tiny logit) to 0.5).
    disagree = tf.reduce_mean(tf.cast(tf.not_equal(a > 0, b > 0), tf.float32), axis=-1)
    return abs_diff, disagree


@dataclasses.dataclass(frozen=True)
class Spread:
    """A value over pairs: mean, min, max and half the range (max - min) / 2."""

    mean: float
    min: float
    max: float
    half_range: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = np.asarray(values, np.float64)
        low, high = float(values.min()), float(values.max())
        return cls(float(values.mean()), low, high, (high - low) / 2)


@dataclasses.dataclass(frozen=True)
class PairChurn:
    """Churn between models `a` and `b` (indices into the report's names)."""

    a: int
    b: int
    mean_abs_diff: float
    disagreement: float


@dataclasses.dataclass(frozen=True)
class ChurnReport:
    """Churn between every pair of models, and its spread over the pairs.

    Attributes:
      names: the models, as given.
      head: `softmax` or `sigmoid`.
      num_examples: examples seen (rows of the batches).
      num_positions: positions seen (examples, or tokens of sequence outputs).
      total_weight: sum of the positions' weights (`num_positions` without
        sample weights); the denominator of both means.
      pairs: one `PairChurn` per pair `a < b`.
      mean_abs_diff: `Spread` of the pairs' mean absolute differences.
      disagreement: `Spread` of the pairs' top-1 disagreements.
    """

    names: tuple[str, ...]
    head: str
    num_examples: int
    num_positions: int
    total_weight: float
    pairs: tuple[PairChurn, ...]
    mean_abs_diff: Spread
    disagreement: Spread

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (pairs by model name)."""
        return {
            "models": list(self.names),
            "head": self.head,
            "num_examples": self.num_examples,
            "num_positions": self.num_positions,
            "total_weight": self.total_weight,
            "pairs": [
                {
                    "a": self.names[p.a],
                    "b": self.names[p.b],
                    MEAN_ABS_DIFF: p.mean_abs_diff,
                    DISAGREEMENT: p.disagreement,
                }
                for p in self.pairs
            ],
            MEAN_ABS_DIFF: dataclasses.asdict(self.mean_abs_diff),
            DISAGREEMENT: dataclasses.asdict(self.disagreement),
        }

    def format(self) -> str:
        """A readable table: one row per pair, then the mean, half-range, min and max."""
        abs_title = "mean |p_a - p_b|" if self.head == SIGMOID else "mean TV distance"
        rows = [
            (f"{self.names[p.a]}  vs  {self.names[p.b]}", p.mean_abs_diff, p.disagreement)
            for p in self.pairs
        ]
        if len(self.pairs) > 1:
            for field in ("mean", "half_range", "min", "max"):
                label = f"{field.replace('_', '-')} over {len(self.pairs)} pairs"
                rows.append(
                    (label, getattr(self.mean_abs_diff, field), getattr(self.disagreement, field))
                )
        width = max(len(r[0]) for r in rows)
        lines = [
            f"Prediction churn of {len(self.names)} models ({self.head} head) over "
            f"{self.num_examples} examples ({self.num_positions} positions):",
            f"{'':<{width}}  {abs_title:>18}  {'top-1 disagreement':>18}",
        ]
        lines += [f"{label:<{width}}  {a:>18.6f}  {b:>18.6f}" for label, a, b in rows]
        return "\n".join(lines)


class ChurnAccumulator:
    """Streaming churn: add the models' logits batch by batch, then `result()`.

    Only per-pair sums are kept (in float64), never the predictions.

    Args:
      num_models: how many models are compared (>= 2).
      head: `softmax` or `sigmoid`.
    """

    def __init__(self, num_models: int, head: str):
        if num_models < 2:
            raise errors.ConfigError(f"churn needs at least two models, got {num_models}")
        self.head = _check_head(head)
        self.num_models = num_models
        self.pairs = list(itertools.combinations(range(num_models), 2))
        self._abs_diff = np.zeros(len(self.pairs), np.float64)
        self._disagree = np.zeros(len(self.pairs), np.float64)
        self._weight = 0.0
        self._examples = 0
        self._positions = 0

    def update(
        self,
        logits: Sequence[Union[tf.Tensor, np.ndarray]],
        sample_weight: Optional[Union[tf.Tensor, np.ndarray]] = None,
    ) -> None:
        """Adds one batch.

        Args:
          logits: one `[batch, ...]` logits array per model, same shapes.
          sample_weight: optional `[batch]` or `[batch, time]` weights of the
            positions (0 leaves a position out, e.g. padding).
        """
        if len(logits) != self.num_models:
            raise errors.ConfigError(
                f"expected logits of {self.num_models} models, got {len(logits)}"
            )
        weights = None
        for k, (i, j) in enumerate(self.pairs):
            abs_diff, disagree = pointwise_churn(logits[i], logits[j], self.head)
            if weights is None:
                weights = self._weights(sample_weight, abs_diff)
            self._abs_diff[k] += float(np.sum(abs_diff.numpy().astype(np.float64) * weights))
            self._disagree[k] += float(np.sum(disagree.numpy().astype(np.float64) * weights))
        self._weight += float(weights.sum())
        self._examples += int(np.shape(logits[0])[0])
        self._positions += int(weights.size)

    @staticmethod
    def _weights(sample_weight, positions: tf.Tensor) -> np.ndarray:
        if sample_weight is None:
            return np.ones(positions.shape, np.float64)
        weights = tf.cast(sample_weight, tf.float32)
        weights = losses.broadcast_weights(weights, positions)
        return weights.numpy().astype(np.float64)

    def result(self, names: Optional[Sequence[str]] = None) -> ChurnReport:
        """The report so far.

        Raises:
          ValueError: nothing (or only zero weight) was added.
        """
        if self._weight <= 0:
            raise errors.ConfigError(
                "no examples with a non-zero weight were seen; churn is undefined"
            )
        names = tuple(names or [f"model_{i}" for i in range(self.num_models)])
        if len(names) != self.num_models:
            raise errors.ConfigError(f"expected {self.num_models} names, got {len(names)}")
        abs_diff = self._abs_diff / self._weight
        disagree = self._disagree / self._weight
        pairs = tuple(
            PairChurn(i, j, float(abs_diff[k]), float(disagree[k]))
            for k, (i, j) in enumerate(self.pairs)
        )
        return ChurnReport(
            names=names,
            head=self.head,
            num_examples=self._examples,
            num_positions=self._positions,
            total_weight=self._weight,
            pairs=pairs,
            mean_abs_diff=Spread.of(abs_diff),
            disagreement=Spread.of(disagree),
        )


def _features_and_weights(element):
    """`(x, sample_weight)` of a dataset element `x`, `(x, y)` or `(x, y, w)`."""
    if isinstance(element, (tuple, list)):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(element))
        return x, sample_weight
    return element, None


def prediction_churn(
    models: Sequence[keras.Model],
    dataset: tf.data.Dataset,
    head: str,
    names: Optional[Sequence[str]] = None,
    steps: Optional[int] = None,
) -> ChurnReport:
    """Churn between `models` on `dataset`, streaming over its batches.

    Args:
      models: two or more models returning logits of the same shape; run
        with `training=False`.
      dataset: batches of `x`, `(x, y)` or `(x, y, sample_weight)`; labels
        are not used; sample weights weight the positions.
      head: `softmax` or `sigmoid` (see `infer_head`).
      names: the models' names in the report.
      steps: stop after this many batches (None: the whole dataset).

    Returns:
      A `ChurnReport`.
    """
    accumulator = ChurnAccumulator(len(models), head)

    @tf.function(reduce_retracing=True)
    def predict(x):
        return [m(x, training=False) for m in models]

    for n, element in enumerate(dataset):
        if steps is not None and n >= steps:
            break
        x, sample_weight = _features_and_weights(element)
        accumulator.update(predict(x), sample_weight)
    return accumulator.result(names)


class PredictionChurn(keras.metrics.Mean):
    """Churn of a model against reference predictions, as a Keras metric.

    `y_true` holds the *reference model's logits* for the batch (not labels)
    and `y_pred` the evaluated model's logits; e.g. evaluate a new version on
    `dataset.map(lambda x, y: (x, reference(x, training=False)))`.

    Args:
      head: `softmax` or `sigmoid`.
      definition: `mean_abs_diff` (the paper's) or `disagreement` (top-1).
      name: the metric's name; defaults to `definition`.
    """

    def __init__(
        self,
        head: str = SOFTMAX,
        definition: str = DISAGREEMENT,
        name: Optional[str] = None,
        dtype=None,
    ):
        if definition not in DEFINITIONS:
            raise errors.ConfigError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
        super().__init__(name=name or definition, dtype=dtype)
        self.head = _check_head(head)
        self.definition = definition

    def update_state(self, y_true, y_pred, sample_weight=None):
        abs_diff, disagree = pointwise_churn(y_true, y_pred, self.head)
        values = abs_diff if self.definition == MEAN_ABS_DIFF else disagree
        if sample_weight is not None:
            sample_weight = losses.broadcast_weights(sample_weight, values)
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(head=self.head, definition=self.definition)
        return config
