"""Label smoothing toward a prior: the paper's label-smoothing baselines.

Anil et al. (2018), section 3.3 (PAPER.md 2.3) compare codistillation with
"label smoothing toward the uniform distribution" and "toward the unigram
distribution": the distillation term is replaced by one that pulls the model
toward a fixed distribution instead of toward a peer. With sparse labels y,
logits z and p = softmax(z):

    loss = (1 - eps) * CE(one_hot(y), p) + eps * CE(prior, p)
         = CE((1 - eps) * one_hot(y) + eps * prior, p),   CE(q, p) = -sum_c q_c log p_c

With a uniform prior this is Keras' `label_smoothing=eps`.

**Parametrisation of the paper's legend** (UNKNOWN in the paper): the curves
are labelled "Label smoothing 0.99" (uniform) and "Label smoothing 0.9 -
unigram". We read the number as the weight left on the true label, 1 - eps:
eps = 0.01 toward uniform and eps = 0.1 toward the unigram distribution (the
other reading, 99% of the target on the uniform distribution, would leave
almost nothing to learn from). `gin/lm/label_smoothing_*.gin` use these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors

__all__ = ["LabelSmoothingCrossEntropy", "UNIFORM"]

UNIFORM = "uniform"


class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy of sparse labels smoothed toward a prior.

    Per position: `(1 - smoothing) * CE(one_hot(y), p) + smoothing * CE(prior, p)`.
    Reduced like Keras' own losses: `sample_weight` (`[batch]` per example or
    `[batch, time]` per-token masks) multiplies the per-position loss, and the
    default reduction divides the sum by the number of positions (masked
    positions included), as `SparseCategoricalCrossentropy` does.

    Args:
      smoothing: eps in [0, 1): the weight moved from the true label to the
        prior.
      prior: `"uniform"`, or a `[num_classes]` vector of non-negative weights
        (normalised here to sum to 1), e.g. unigram frequencies from
        `tf_codistill.datasets.text.unigram_distribution`.
      from_logits: must be True: the loss takes logits (the models here
        return logits).
      reduction: a `keras.losses.Reduction`.
      name: loss name.

    Call arguments:
      y_true: int labels `[batch]`, `[batch, 1]` or `[batch, time]`.
      y_pred: logits `[batch, num_classes]` or `[batch, time, num_classes]`.

    Raises:
      ValueError: bad smoothing, prior or shapes, naming them.
    """

    def __init__(
        self,
        smoothing: float = 0.1,
        prior: Union[str, Sequence[float], np.ndarray] = UNIFORM,
        from_logits: bool = True,
        reduction: str = keras.losses.Reduction.AUTO,
        name: str = "label_smoothing_cross_entropy",
    ):
        super().__init__(reduction=reduction, name=name)
        if isinstance(smoothing, bool) or not 0.0 <= float(smoothing) < 1.0:
            raise errors.ConfigError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if not from_logits:
            raise errors.ConfigError(
                "LabelSmoothingCrossEntropy takes logits only (from_logits=True); "
                "the models of tf_codistill return logits"
            )
        self.smoothing = float(smoothing)
        self.from_logits = True
        if isinstance(prior, str):
            if prior != UNIFORM:
                raise errors.ConfigError(f"prior must be {UNIFORM!r} or a vector, got {prior!r}")
            self._prior = None
        else:
            vector = np.asarray(prior, np.float64)
            if vector.ndim != 1 or vector.size < 2:
                raise errors.ConfigError(
                    f"prior must be a vector over >= 2 classes, got shape {vector.shape}"
                )
            if not np.all(np.isfinite(vector)) or np.any(vector < 0) or vector.sum() <= 0:
                raise errors.ConfigError("prior must be finite, non-negative and not all zero")
            self._prior = (vector / vector.sum()).astype(np.float32)

    @property
    def prior(self) -> Union[str, np.ndarray]:
        """`"uniform"` or the normalised `[num_classes]` prior."""
        return UNIFORM if self._prior is None else self._prior

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        num_classes = logits.shape[-1]
        if logits.shape.rank is not None and logits.shape.rank < 2:
            raise errors.ConfigError(
                f"logits must be [batch, ..., classes], got shape {logits.shape}"
            )
        if self._prior is not None and num_classes is not None:
            if num_classes != self._prior.shape[0]:
                raise errors.ConfigError(
                    f"the prior covers {self._prior.shape[0]} classes but the logits have "
                    f"{num_classes}"
                )
        labels = tf.cast(y_true, tf.int32)
        # Keras passes [batch, 1] labels for [batch, classes] logits.
        if labels.shape.rank is not None and labels.shape.rank == logits.shape.rank:
            labels = tf.squeeze(labels, axis=-1)
        log_p = tf.nn.log_softmax(logits, axis=-1)
        label_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if self._prior is None:
            prior_ce = -tf.reduce_mean(log_p, axis=-1)
        else:
            # 0 * log p = 0 for classes the prior never gives mass to.
            prior_ce = -tf.reduce_sum(
                tf.math.multiply_no_nan(log_p, tf.constant(self._prior)), axis=-1
            )
        return (1.0 - self.smoothing) * label_ce + self.smoothing * prior_ce

    def get_config(self):
        prior = UNIFORM if self._prior is None else self._prior.tolist()
        return {**super().get_config(), "smoothing": self.smoothing, "prior": prior}
