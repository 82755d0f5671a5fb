"""The gradient noise scale: is sync SGD at this batch size saturated?

McCandlish et al. (2018), "An empirical model of large-batch training",
model the steps a run needs at batch size B as S(B) = S_min (1 + B_noise / B):
well below the noise scale B_noise, doubling the batch halves the steps; well
above it, doubling the batch buys (almost) nothing, and extra machines are
better spent on a second codistilling group. Their *simple* noise scale

    B_simple = tr(Sigma) / |G|^2

(Sigma: the per-example gradient covariance, G: the true gradient) is
measured during training from squared gradient norms at two batch sizes
(their appendix A): with |G_b|^2 the squared norm of a gradient averaged over
b examples, E|G_b|^2 = |G|^2 + tr(Sigma) / b, so for b_small < b_big

    |G|^2     ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)

Both are smoothed over measurements before dividing.

Here the two batch sizes come from the train step's own batch: every
`every_n_steps` steps each replica splits its local batch into two halves
and takes the task loss's gradient on each (two extra backward passes;
nothing else changes in the step). With b the local batch, the halves give
|G_small|^2 (b_small = b / 2) and their mean |G_big|^2 (b_big = b). The
statistics are sums in sync-on-read variables, so no collective runs in the
step; reading them (between steps) adds them up over replicas.

Only the task loss counts (not psi, not regularisation): the noise scale is
a property of the data and model, which is what decides whether a bigger
batch would help.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = ["GradientStatistics", "Estimate", "estimate"]


class GradientStatistics:
    """Sums of squared half-batch gradient norms, accumulated by the train step.

    Create it inside the model's strategy scope. `every_n_steps` is a variable
    so that changing the interval never retraces the step. A plain Python
    object, not a trackable: its variables are measurement scratch space,
    kept out of the model's weights and of its backups.
    """

    def __init__(self, every_n_steps: int = 0):

        def summed(value_name):
            return tf.Variable(
                0.0,
                trainable=False,
                name=value_name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )

        self.every_n_steps = tf.Variable(
            int(every_n_steps),
            dtype=tf.int64,
            trainable=False,
            name="every_n_steps",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.small_sum = summed("small_sum")
        self.big_sum = summed("big_sum")
        self.count = summed("count")
        # Local batch (examples per replica) of the last measurement.
        self.local_batch = tf.Variable(
            0.0,
            trainable=False,
            name="local_batch",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )

    def due(self, step: tf.Tensor) -> tf.Tensor:
        """Whether `step` (int64 scalar) is a measurement step."""
        every = tf.convert_to_tensor(self.every_n_steps)
        return tf.logical_and(every > 0, tf.math.floormod(step, tf.maximum(every, 1)) == 0)

    @staticmethod
    def half_losses(loss_fn, y, y_pred, weights) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The task loss on each half of the local batch, and the halves' size.

        Call inside the train step's tape (it records them).

        Args:
          loss_fn: `loss_fn(y, y_pred, sample_weight)`, the compiled task loss
            (scaled for the replica as Keras scales it).
          y, y_pred: the local batch's targets and `[batch, ...]` predictions.
          weights: per-example or per-position weights (masks included), or None.

        Returns:
          (loss on the first half, loss on the second half, examples in both).
        """
        half = tf.shape(y_pred)[0] // 2

        def take(t, lo, hi):
            return None if t is None else tf.nest.map_structure(lambda v: v[lo:hi], t)

        first = loss_fn(take(y, 0, half), y_pred[:half], take(weights, 0, half))
        second = loss_fn(
            take(y, half, 2 * half), y_pred[half : 2 * half], take(weights, half, 2 * half)
        )
        return first, second, 2 * half

    def record(
        self,
        tape: tf.GradientTape,
        half_losses: tuple[tf.Tensor, tf.Tensor],
        variables: Sequence[tf.Variable],
        local_batch: tf.Tensor,
    ) -> tf.Tensor:
        """Adds one measurement (call in replica context, on measurement steps).

        Two backward passes, one per half; their squared norms and the squared
        norm of their mean are added to the sums. The losses' scale does not
        matter: B_simple is a ratio of two squared norms.

        Args:
          tape: a *persistent* tape that recorded `half_losses`.
          half_losses: the task loss (a per-replica mean) on the first and on
            the second half of the local batch.
          variables: the trainable variables.
          local_batch: examples in the two halves together (scalar).

        Returns:
          A dummy scalar (for `tf.cond`).
        """
        grads_a = tape.gradient(half_losses[0], variables)
        grads_b = tape.gradient(half_losses[1], variables)
        small = tf.constant(0.0)
        big = tf.constant(0.0)
        for a, b in zip(grads_a, grads_b, strict=True):
            if a is None or b is None:
                continue
            a, b = _dense(a), _dense(b)
            small += 0.5 * (tf.reduce_sum(tf.square(a)) + tf.reduce_sum(tf.square(b)))
            big += tf.reduce_sum(tf.square(0.5 * (a + b)))
        self.small_sum.assign_add(small)
        self.big_sum.assign_add(big)
        self.count.assign_add(1.0)
        self.local_batch.assign(tf.cast(local_batch, tf.float32))
        return tf.constant(0.0)

    def take(self) -> tuple[float, float, float, float]:
        """(mean |G_small|^2, mean |G_big|^2, measurements, local batch); resets the sums.

        Call between steps (cross-replica context): sync-on-read variables
        are added up over replicas when read.
        """
        small, big = float(_read(self.small_sum)), float(_read(self.big_sum))
        count, batch = float(_read(self.count)), float(_read(self.local_batch))
        for v in (self.small_sum, self.big_sum, self.count):
            v.assign(tf.zeros_like(v))
        if count == 0:
            return 0.0, 0.0, 0.0, batch
        return small / count, big / count, count, batch


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _read(variable):
    return tf.convert_to_tensor(variable).numpy()


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimate of the noise scale.

    Attributes:
      gradient_sq: |G|^2, the squared norm of the true gradient.
      trace: tr(Sigma), the per-example gradient variance, summed over parameters.
      noise_scale: B_simple = trace / gradient_sq, in examples (nan when
        |G|^2 is not positive: too few measurements, or at a minimum).
    """

    gradient_sq: float
    trace: float

    @property
    def noise_scale(self) -> float:
        if not self.gradient_sq > 0 or not math.isfinite(self.trace):
            return float("nan")
        return self.trace / self.gradient_sq


def estimate(small_sq: float, big_sq: float, b_small: float, b_big: float) -> Estimate:
    """|G|^2 and tr(Sigma) from mean squared gradient norms at two batch sizes.

    Args:
      small_sq: mean |G_small|^2 over measurements, gradients of `b_small` examples.
      big_sq: mean |G_big|^2, gradients of `b_big` examples.
      b_small, b_big: the two batch sizes, b_small < b_big.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return Estimate(float(gradient_sq), float(trace))


class Smoother:
    """Exponential moving averages of |G|^2 and tr(Sigma), bias-corrected.

    Args:
      decay: weight of the past at each update (0: no smoothing).
    """

    def __init__(self, decay: float = 0.9):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self._g = self._t = 0.0
        self._weight = 0.0

    def update(self, e: Estimate, count: float = 1.0) -> Estimate:
        """Folds in an estimate made of `count` measurements; returns the smoothed one."""
        keep = self.decay ** max(count, 1.0)
        self._g = keep * self._g + (1 - keep) * e.gradient_sq
        self._t = keep * self._t + (1 - keep) * e.trace
        self._weight = keep * self._weight + (1 - keep)
        return self.value()

    def value(self) -> Estimate:
        if self._weight == 0:
            return Estimate(float("nan"), float("nan"))
        return Estimate(self._g / self._weight, self._t / self._weight)


def exact(per_example_gradients: np.ndarray) -> Estimate:
    """|G|^2 and tr(Sigma) of a sample of per-example gradients `[n, params]` (for tests)."""
    g = np.asarray(per_example_gradients, np.float64)
    mean = g.mean(axis=0)
    trace = float(np.sum(g.var(axis=0)))
    return Estimate(float(np.sum(mean**2)), trace)
