"""Distillation losses psi(teacher targets, student prediction).

A distillation loss compares a student's logits with the *aggregate* of its
teachers' predictions on the same batch. Following Anil et al. (2018),
Algorithm 1, the teachers' predictions are averaged first (in probability space
for the probabilistic losses) and psi is applied once to the average:

    psi( (1 / |P|) sum_{j in P} F(theta_j, x),  F(theta_i, x) )

Every loss here:

* takes logits (never probabilities) and computes in float32, whatever the
  model's compute dtype, with log-sum-exp style numerics;
* accepts outputs of shape `[batch, ...]`, e.g. `[batch, classes]` or
  `[batch, time, vocab]` for sequence models, and reduces every axis but the
  batch axis *per example*: the class axis by the loss itself, the remaining
  axes (time) by a weighted mean with the full length as denominator, which is
  how Keras reduces a task loss given a `[batch, time]` `sample_weight` (with
  a Keras mask Keras divides by the valid positions instead:
  `keras_loss_weights` gives the weights that match), so `distill_weight=1`
  weighs psi and the task loss alike;
* returns the per-example loss `[batch]`; the caller scales it by the *global*
  batch size (`tf.nn.compute_average_loss`) so the value and its gradient are
  the same under any `tf.distribute` strategy.

Losses are selected by name with `get` or passed as objects. A custom psi
subclasses `DistillationLoss` and implements `aggregate`, `pointwise` and
`agreement`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any
from typing import Optional
from typing import Union

import tensorflow as tf

from tf_codistill import errors

__all__ = [
    "DistillationLoss",
    "SoftmaxCrossEntropy",
    "KLDivergence",
    "ReverseKL",
    "SigmoidCrossEntropy",
    "LogitMSE",
    "get",
    "reduce_per_example",
    "broadcast_weights",
    "average_log_probs",
    "position_weights",
    "keras_loss_weights",
]


def _as_float32(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _normalized_peer_weights(peer_weights: tf.Tensor) -> tf.Tensor:
    """`[num_peers]` weights summing to 1 (all zero if every weight is 0)."""
    peer_weights = _as_float32(peer_weights)
    return tf.math.divide_no_nan(peer_weights, tf.reduce_sum(peer_weights))


def _select(teacher_values: Sequence[tf.Tensor], peer_weights: tf.Tensor, fill: float):
    """Replaces the values of peers with weight 0 by `fill`.

    A left-out teacher may hold anything, NaN included (a peer whose
    predictions blew up is left out precisely because of that), so it is
    removed with `tf.where`, never by multiplying with a zero weight
    (0 * NaN = NaN).
    """
    out = []
    for j, value in enumerate(teacher_values):
        out.append(tf.where(peer_weights[j] > 0, value, tf.fill(tf.shape(value), fill)))
    return out


def average_log_probs(
    teacher_logits: Sequence[tf.Tensor],
    peer_weights: tf.Tensor,
    temperature: float = 1.0,
) -> tf.Tensor:
    """Log of the peer-averaged softmax distribution, computed stably.

    log q = log sum_j w_j softmax(t_j / T) = logsumexp_j(log_softmax(t_j / T) + log w_j)

    Args:
      teacher_logits: one `[batch, ..., classes]` logits tensor per peer.
      peer_weights: `[num_peers]` non-negative weights; peers with weight 0 are
        left out and the rest are renormalised to sum to 1.
      temperature: softmax temperature T > 0.

    Returns:
      `[batch, ..., classes]` float32 log-probabilities of the averaged
      distribution.
    """
    weights = _normalized_peer_weights(peer_weights)
    log_probs = [tf.nn.log_softmax(_as_float32(t) / temperature, axis=-1) for t in teacher_logits]
    log_probs = _select(log_probs, weights, fill=float("-inf"))
    if len(log_probs) == 1:
        # One peer: its own distribution (all -inf if it is left out); the
        # stack and logsumexp below would be two more passes over the logits.
        return log_probs[0]
    # log(0) = -inf for left-out peers; logsumexp over the peer axis ignores them.
    log_w = tf.math.log(weights)
    stacked = tf.stack(log_probs, axis=0)  # [num_peers, batch, ..., classes]
    log_w = tf.reshape(log_w, [-1] + [1] * (stacked.shape.rank - 1))
    return tf.reduce_logsumexp(stacked + log_w, axis=0)


def _average(teacher_values: Sequence[tf.Tensor], peer_weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean over peers of `[batch, ...]` tensors (left-out peers ignored)."""
    weights = _normalized_peer_weights(peer_weights)
    values = _select([_as_float32(v) for v in teacher_values], weights, fill=0.0)
    stacked = tf.stack(values, axis=0)
    w = tf.reshape(weights, [-1] + [1] * (stacked.shape.rank - 1))
    return tf.reduce_sum(stacked * w, axis=0)


def reduce_per_example(
    pointwise: tf.Tensor,
    sample_weight: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """Reduces a `[batch, d1, ...]` loss to `[batch]` by a weighted mean.

    The mean runs over all non-batch axes with the *full* size as denominator
    (masked positions count as zero, not as absent), the convention Keras uses
    for a task loss with a `[batch, time]` sample weight.

    Args:
      pointwise: `[batch]` or `[batch, d1, ...]` float32 loss values.
      sample_weight: optional weights broadcastable to `pointwise` after
        trailing unit axes are added: `[batch]` per-example weights or
        `[batch, time]` per-token masks/weights.

    Returns:
      `[batch]` float32 per-example losses.
    """
    if sample_weight is not None:
        pointwise = pointwise * broadcast_weights(sample_weight, pointwise)
    if pointwise.shape.rank > 1:
        pointwise = tf.reduce_mean(pointwise, axis=list(range(1, pointwise.shape.rank)))
    return pointwise


def broadcast_weights(weights: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """Broadcasts `[batch]`, `[batch, 1]` or `[batch, time]` weights to `values`.

    Trailing unit axes beyond the rank of `values` are dropped (Keras passes
    per-example weights as `[batch, 1]`), then unit axes are appended until the
    ranks match.

    Args:
      weights: sample weights or masks with a leading batch axis.
      values: `[batch, ...]` tensor the weights apply to.

    Returns:
      float32 weights with the shape of `values`.
    """
    weights = _as_float32(weights)
    while weights.shape.rank > values.shape.rank and weights.shape[-1] == 1:
        weights = tf.squeeze(weights, axis=-1)
    if weights.shape.rank > values.shape.rank:
        raise errors.ConfigError(
            f"sample_weight of shape {weights.shape} does not fit values of shape {values.shape}"
        )
    while weights.shape.rank < values.shape.rank:
        weights = weights[..., tf.newaxis]
    return tf.broadcast_to(weights, tf.shape(values))


def _keras_mask(tensor: tf.Tensor) -> Optional[tf.Tensor]:
    """The mask Keras attached to a layer's output, if any.

    tf_keras propagates masks (e.g. from `Embedding(mask_zero=True)`) as a
    `_keras_mask` attribute of the output tensor, which its own compiled
    losses read the same way; there is no public accessor (tests/test_losses.py
    checks that it is still there).
    """
    return getattr(tensor, "_keras_mask", None)


def position_weights(
    logits: tf.Tensor, sample_weight: Optional[tf.Tensor] = None
) -> Optional[tf.Tensor]:
    """Sample weights combined with the Keras mask of the student's output.

    Args:
      logits: the student's output, `[batch, ...]`; may carry a Keras mask
        (e.g. `[batch, time]` from an `Embedding(mask_zero=True)`).
      sample_weight: `[batch]` or `[batch, time]` weights, or None.

    Returns:
      float32 weights per position (None when there are neither).
    """
    mask = _keras_mask(logits)
    weights = None if sample_weight is None else tf.cast(sample_weight, tf.float32)
    if mask is not None:
        mask = tf.cast(mask, tf.float32)
        weights = mask if weights is None else broadcast_weights(weights, mask) * mask
    return weights


def keras_loss_weights(
    logits: tf.Tensor, sample_weight: Optional[tf.Tensor] = None
) -> Optional[tf.Tensor]:
    """Position weights that make psi's reduction the one tf_keras gives the task loss.

    tf_keras divides a loss by the number of positions (`[batch, time]`
    sample weights count masked positions as zeros, not as absent), except
    when the prediction carries a Keras mask: then it divides by the number
    of valid positions (`losses_utils.apply_valid_mask`), whatever the sample
    weights. `position_weights` rescaled by positions / valid positions
    there, reduced by `reduce_per_example` and `tf.nn.compute_average_loss`,
    give psi that same denominator, so `distill_weight=1` weighs psi and the
    task loss alike with masks, sample weights or both.

    Args:
      logits: the student's output, `[batch, ...]`, maybe with a Keras mask.
      sample_weight: `[batch]` or `[batch, time]` weights, or None.

    Returns:
      float32 weights per position (None when there are neither).
    """
    weights = position_weights(logits, sample_weight)
    mask = _keras_mask(logits)
    if mask is None:
        return weights
    mask = tf.cast(mask, tf.float32)
    # No valid position: weights 0 (Keras itself would divide by zero).
    return weights * tf.math.divide_no_nan(tf.cast(tf.size(mask), tf.float32), tf.reduce_sum(mask))


class DistillationLoss(abc.ABC):
    """Base class: aggregate the teachers, then compare with the student.

    Subclasses implement three pure functions of tensors:

    * `aggregate(teacher_logits, peer_weights)` turns the peers' logits into
      one target tensor (e.g. averaged probabilities);
    * `pointwise(targets, student_logits)` gives the loss before reduction over
      the non-class axes: `[batch, ...]` with the class axis reduced;
    * `agreement(targets, student_logits)` gives 1.0 where the student's
      decision equals the aggregated teachers', same shape as `pointwise`.

    Calling the object returns the per-example loss `[batch]`.
    """

    name: str = "distillation_loss"

    @abc.abstractmethod
    def aggregate(self, teacher_logits: Sequence[tf.Tensor], peer_weights: tf.Tensor) -> tf.Tensor:
        """Aggregates `[batch, ..., classes]` teacher logits into targets."""

    @abc.abstractmethod
    def pointwise(self, targets: tf.Tensor, student_logits: tf.Tensor) -> tf.Tensor:
        """Loss per position `[batch, ...]` (class axis reduced), float32."""

    @abc.abstractmethod
    def agreement(self, targets: tf.Tensor, student_logits: tf.Tensor) -> tf.Tensor:
        """1.0 where student and targets make the same decision, else 0.0."""

    def validate_logits(self, student_logits: tf.Tensor) -> None:
        """Raises ValueError if the student's output cannot feed this loss."""
        if student_logits.shape.rank is not None and student_logits.shape.rank < 1:
            raise errors.ConfigError(
                f"{self.name}: student logits must have a batch axis, got shape "
                f"{student_logits.shape}"
            )

    def __call__(
        self,
        teacher_logits: Sequence[tf.Tensor],
        student_logits: tf.Tensor,
        peer_weights: Optional[tf.Tensor] = None,
        sample_weight: Optional[tf.Tensor] = None,
    ) -> tf.Tensor:
        """Per-example distillation loss.

        Args:
          teacher_logits: a non-empty sequence with one `[batch, ...]` logits
            tensor per peer, same shape as `student_logits`.
          student_logits: `[batch, ...]` logits of the student.
          peer_weights: optional `[num_peers]` weights; 0 leaves a peer out of
            the average. Defaults to all ones.
          sample_weight: optional `[batch]` weights or `[batch, time]` masks.

        Returns:
          `[batch]` float32 per-example loss.
        """
        if not teacher_logits:
            raise errors.ConfigError(f"{self.name}: needs at least one teacher, got none")
        self.validate_logits(student_logits)
        if peer_weights is None:
            peer_weights = tf.ones([len(teacher_logits)], tf.float32)
        targets = self.aggregate(teacher_logits, peer_weights)
        return reduce_per_example(self.pointwise(targets, student_logits), sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


_AVERAGES = ("probabilities", "logits")


class _SoftmaxLoss(DistillationLoss):
    """Shared parts of the losses over a softmax distribution.

    Args:
      temperature: softmax temperature T > 0 of teachers and student.
      average: how the peers' predictions are combined: `probabilities` (the
        paper's Algorithm 1: the mean of the peers' distributions) or
        `logits` (the softmax of the peers' mean logits, a normalised
        geometric mean of their distributions). The two agree for one peer.
    """

    def __init__(self, temperature: float = 1.0, average: str = "probabilities"):
        if not temperature > 0:
            raise errors.ConfigError(f"{self.name}: temperature must be > 0, got {temperature}")
        if average not in _AVERAGES:
            raise errors.ConfigError(
                f"{self.name}: average must be one of {_AVERAGES}, got {average!r}"
            )
        self.temperature = float(temperature)
        self.average = average

    def validate_logits(self, student_logits: tf.Tensor) -> None:
        super().validate_logits(student_logits)
        num_classes = student_logits.shape[-1] if student_logits.shape.rank else None
        if student_logits.shape.rank == 1 or num_classes == 1:
            raise errors.ConfigError(
                f"{self.name} needs logits over >= 2 classes on the last axis, got shape "
                f"{student_logits.shape}; for a single-logit binary head use "
                "'sigmoid_cross_entropy'"
            )

    def aggregate(self, teacher_logits, peer_weights):
        # Targets are log-probabilities of the combined teacher distribution.
        if self.average == "logits":
            mean = _average(teacher_logits, peer_weights)
            return tf.nn.log_softmax(mean / self.temperature, axis=-1)
        return average_log_probs(teacher_logits, peer_weights, self.temperature)

    def agreement(self, targets, student_logits):
        same = tf.equal(tf.argmax(targets, axis=-1), tf.argmax(student_logits, axis=-1))
        return tf.cast(same, tf.float32)

    def get_config(self):
        config = {"temperature": self.temperature}
        if self.average != "probabilities":
            config["average"] = self.average
        return config


def _fused_cross_entropy(q: tf.Tensor, student_logits: tf.Tensor, temperature: float):
    """T^2 * -sum_c q_c log softmax(s / T)_c per position; q: the targets' probabilities.

    One fused kernel (`softmax_cross_entropy_with_logits`) computes the loss
    and its gradient, in place of a log_softmax, a product and a sum and their
    gradients: 1-4% of a one-peer step of the conv byte LM at B = 512
    (docs/benchmarks.md). The kernel's gradient, softmax - labels, holds only
    for labels that sum to 1, so it gets q / m and the loss is scaled back by
    m = sum_c q_c: the gradient m softmax - q is exact for any q >= 0,
    including targets that are not normalised and q = 0 where every peer is
    left out (loss and gradient 0).
    """
    mass = tf.reduce_sum(q, axis=-1, keepdims=True)
    logits = _as_float32(student_logits) / temperature
    cross = tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.math.divide_no_nan(q, mass), logits=logits, axis=-1
    )
    return cross * tf.squeeze(mass, -1) * temperature**2


class SoftmaxCrossEntropy(_SoftmaxLoss):
    """Soft-target cross-entropy, the paper's psi (the default).

    psi = -T^2 * sum_c q_c log softmax(s / T)_c, with q = mean_j softmax(t_j / T).

    With T = 1 (the paper) this is the cross-entropy to the peers' averaged
    predictive distribution. It differs from `KLDivergence` by the teachers'
    entropy, a constant for the student, so both give the same gradients.
    """

    name = "softmax_cross_entropy"

    def pointwise(self, targets, student_logits):
        return _fused_cross_entropy(tf.exp(targets), student_logits, self.temperature)


class KLDivergence(_SoftmaxLoss):
    """KL(teacher || student) with temperature and Hinton et al.'s T^2 factor.

    psi = T^2 * sum_c q_c (log q_c - log softmax(s / T)_c), q as in
    `SoftmaxCrossEntropy`. It is 0 when the student matches the teachers.
    """

    name = "kl_divergence"

    def pointwise(self, targets, student_logits):
        q = tf.exp(targets)
        # q * log q with 0 * log 0 = 0 (targets may be -inf where q underflows):
        # the teachers' negative entropy, a constant for the student.
        q_log_q = tf.reduce_sum(tf.where(q > 0, q * targets, tf.zeros_like(q)), axis=-1)
        cross = _fused_cross_entropy(q, student_logits, self.temperature)
        return cross + q_log_q * self.temperature**2


class ReverseKL(_SoftmaxLoss):
    """KL(student || teacher), with temperature and the T^2 factor.

    psi = T^2 * sum_c p_c (log p_c - log q_c), p = softmax(s / T), q the
    peers' combined distribution. Mode-seeking where `KLDivergence` is
    mass-covering: the student is pushed away from classes the teachers rule
    out, not toward every class they allow. The default of PFN's
    codistillation code (SC20, PAPER.md section 5.5).
    """

    name = "reverse_kl"

    def pointwise(self, targets, student_logits):
        log_p = tf.nn.log_softmax(_as_float32(student_logits) / self.temperature, axis=-1)
        p = tf.exp(log_p)
        # A class a teacher gives probability 0 (log q = -inf) costs p * inf;
        # keep it finite: q underflows only far below any p the student has.
        log_q = tf.maximum(targets, tf.float32.min)
        return tf.reduce_sum(p * (log_p - log_q), axis=-1) * self.temperature**2


class SigmoidCrossEntropy(DistillationLoss):
    """Logistic soft-label cross-entropy for binary and multi-label heads.

    psi = mean_k [ -q_k log sigmoid(s_k) - (1 - q_k) log(1 - sigmoid(s_k)) ],
    q_k = mean_j sigmoid(t_jk): the paper's Criteo loss, the teacher's click
    probability as a soft label. The mean over the last (label) axis matches
    Keras' `BinaryCrossentropy`. A `[batch]` output is treated as one label.
    """

    name = "sigmoid_cross_entropy"

    def aggregate(self, teacher_logits, peer_weights):
        return _average([tf.sigmoid(_as_float32(t)) for t in teacher_logits], peer_weights)

    def pointwise(self, targets, student_logits):
        logits = _as_float32(student_logits)
        if logits.shape.rank == 1:
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        return tf.reduce_mean(per_label, axis=-1)

    def agreement(self, targets, student_logits):
        same = tf.cast(tf.equal(targets > 0.5, student_logits > 0), tf.float32)
        return same if same.shape.rank == 1 else tf.reduce_mean(same, axis=-1)


class LogitMSE(DistillationLoss):
    """Mean squared error between the student's and the averaged teacher logits.

    psi = mean_k (s_k - mean_j t_jk)^2, the "squared error between logits" the
    paper lists as an alternative. Agreement is on the arg-max class (or on the
    sign for a single output).
    """

    name = "logit_mse"

    def aggregate(self, teacher_logits, peer_weights):
        return _average(teacher_logits, peer_weights)

    def pointwise(self, targets, student_logits):
        sq = tf.square(_as_float32(student_logits) - targets)
        return sq if sq.shape.rank == 1 else tf.reduce_mean(sq, axis=-1)

    def agreement(self, targets, student_logits):
        student_logits = _as_float32(student_logits)
        if student_logits.shape.rank == 1 or student_logits.shape[-1] == 1:
            same = tf.equal(targets > 0, student_logits > 0)
            same = tf.cast(same, tf.float32)
            return same if same.shape.rank == 1 else tf.reduce_mean(same, axis=-1)
        same = tf.equal(tf.argmax(targets, axis=-1), tf.argmax(student_logits, axis=-1))
        return tf.cast(same, tf.float32)


_REGISTRY = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "kl_divergence": KLDivergence,
    "kl": KLDivergence,
    "reverse_kl": ReverseKL,
    "sigmoid_cross_entropy": SigmoidCrossEntropy,
    "logistic": SigmoidCrossEntropy,
    "logit_mse": LogitMSE,
    "mse": LogitMSE,
}


def get(identifier: Union[str, DistillationLoss]) -> DistillationLoss:
    """Returns a `DistillationLoss` from a name or an instance.

    Names: `softmax_cross_entropy` (alias `cross_entropy`; the paper's default),
    `kl_divergence` (`kl`), `sigmoid_cross_entropy` (`logistic`), `logit_mse`
    (`mse`). Named losses use their default arguments; construct the class to
    set a temperature.
    """
    if isinstance(identifier, DistillationLoss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise errors.ConfigError(
            f"Unknown distillation loss {identifier!r}; expected one of "
            f"{sorted(_REGISTRY)} or a tf_codistill.losses.DistillationLoss"
        )
    raise errors.ConfigTypeError(
        "distill_loss must be a name or a tf_codistill.losses.DistillationLoss, got "
        f"{type(identifier).__name__}: {identifier!r}"
    )
