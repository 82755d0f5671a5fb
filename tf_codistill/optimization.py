"""Learning-rate schedules of the paper's workloads.

`GoyalSchedule` is the large-batch ImageNet recipe of Goyal et al. (2017),
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", which the paper
follows for its ImageNet runs (Anil et al. 2018, section 3.3.1):

- linear scaling: the peak rate is `base_learning_rate * global_batch_size /
  base_batch_size` (0.1 per 256 examples: 6.4 at the paper's 16,384);
- gradual warm-up: from `base_learning_rate` (the small-batch rate) the rate
  grows by the same amount every step and reaches the peak after
  `warmup_epochs` (5);
- step decay: multiplied by `decay_factor` (0.1) at epochs 30, 60 and 80.

Epochs become steps with `steps_per_epoch`, or with `examples_per_epoch`
(1,281,167 for ImageNet) divided by the global batch; warm-up and decays can
also be given directly in steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors

__all__ = ["GoyalSchedule", "IMAGENET_TRAIN_EXAMPLES"]

# Examples in ImageNet-1k's training set (TFDS imagenet2012 `train`).
IMAGENET_TRAIN_EXAMPLES = 1_281_167


class GoyalSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear scaling, gradual warm-up and step decay (Goyal et al. 2017).

    The rate at step `s` (the value of `optimizer.iterations`: updates already
    applied) is, with `peak = base_learning_rate * global_batch_size /
    base_batch_size` and `start = min(base_learning_rate, peak)` unless
    `warmup_start_learning_rate` is given:

        s <  warmup_steps:  start + (peak - start) * s / warmup_steps
        s >= warmup_steps:  peak * decay_factor ** (number of boundaries <= s)

    Boundaries given in epochs are `epoch * steps_per_epoch` and may fall
    between steps (the decay then applies from the next whole step).
    """

    def __init__(
        self,
        global_batch_size: int,
        base_learning_rate: float = 0.1,
        base_batch_size: int = 256,
        warmup_epochs: float = 5,
        decay_epochs: Sequence[float] = (30, 60, 80),
        decay_factor: float = 0.1,
        steps_per_epoch: Optional[float] = None,
        examples_per_epoch: Optional[int] = None,
        warmup_steps: Optional[float] = None,
        decay_steps: Optional[Sequence[float]] = None,
        warmup_start_learning_rate: Optional[float] = None,
        name: str = "GoyalSchedule",
    ):
        """Creates the schedule.

        Args:
          global_batch_size: examples per step over all replicas of the group.
          base_learning_rate: rate for `base_batch_size` examples (Goyal: 0.1).
          base_batch_size: the batch `base_learning_rate` is for (256).
          warmup_epochs: length of the warm-up, in epochs (5); 0 for none.
          decay_epochs: epochs at which the rate is multiplied by
            `decay_factor` (30, 60, 80).
          decay_factor: the multiplier at each boundary (0.1).
          steps_per_epoch: steps in one epoch, to convert epochs to steps.
          examples_per_epoch: examples in one epoch (instead of
            `steps_per_epoch`: `steps_per_epoch = examples_per_epoch /
            global_batch_size`).
          warmup_steps: the warm-up in steps; replaces `warmup_epochs`.
          decay_steps: the boundaries in steps; replace `decay_epochs`.
          warmup_start_learning_rate: the rate at step 0; default
            `min(base_learning_rate, peak)`.
          name: name scope of the ops.

        Raises:
          ValueError: a value out of range, or epochs used without
            `steps_per_epoch` or `examples_per_epoch` (exactly one).
        """
        super().__init__()
        if isinstance(global_batch_size, bool) or int(global_batch_size) != global_batch_size:
            raise errors.ConfigError(
                f"global_batch_size must be an integer, got {global_batch_size!r}"
            )
        for label, value in (
            ("global_batch_size", global_batch_size),
            ("base_batch_size", base_batch_size),
            ("base_learning_rate", base_learning_rate),
        ):
            if not value > 0:
                raise errors.ConfigError(f"{label} must be > 0, got {value}")
        if not 0 < decay_factor <= 1:
            raise errors.ConfigError(f"decay_factor must be in (0, 1], got {decay_factor}")
        self.global_batch_size = int(global_batch_size)
        self.base_learning_rate = float(base_learning_rate)
        self.base_batch_size = int(base_batch_size)
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = tuple(float(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.steps_per_epoch = steps_per_epoch
        self.examples_per_epoch = examples_per_epoch
        self.warmup_start_learning_rate = warmup_start_learning_rate
        self.name = name

        needs_epochs = (warmup_steps is None and self.warmup_epochs > 0) or (
            decay_steps is None and self.decay_epochs
        )
        epoch_steps = self._epoch_steps(steps_per_epoch, examples_per_epoch, needs_epochs)
        self.warmup_steps = float(
            warmup_steps if warmup_steps is not None else self.warmup_epochs * (epoch_steps or 0)
        )
        self.decay_steps = tuple(
            float(s)
            for s in (
                decay_steps if decay_steps is not None else [e * epoch_steps for e in decay_epochs]
            )
        )
        if self.warmup_steps < 0:
            raise errors.ConfigError(f"warmup must be >= 0 steps, got {self.warmup_steps}")
        if any(b <= 0 for b in self.decay_steps) or list(self.decay_steps) != sorted(
            set(self.decay_steps)
        ):
            raise errors.ConfigError(
                f"decay boundaries must be > 0 and increasing, got {self.decay_steps} steps"
            )
        self.peak_learning_rate = (
            self.base_learning_rate * self.global_batch_size / self.base_batch_size
        )
        self.start_learning_rate = (
            float(warmup_start_learning_rate)
            if warmup_start_learning_rate is not None
            else min(self.base_learning_rate, self.peak_learning_rate)
        )

    def _epoch_steps(self, steps_per_epoch, examples_per_epoch, needed) -> Optional[float]:
        if steps_per_epoch is not None and examples_per_epoch is not None:
            raise errors.ConfigError(
                "give steps_per_epoch or examples_per_epoch, not both "
                f"(got {steps_per_epoch} and {examples_per_epoch})"
            )
        if examples_per_epoch is not None:
            if not examples_per_epoch > 0:
                raise errors.ConfigError(
                    f"examples_per_epoch must be > 0, got {examples_per_epoch}"
                )
            return examples_per_epoch / self.global_batch_size
        if steps_per_epoch is not None:
            if not steps_per_epoch > 0:
                raise errors.ConfigError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
            return float(steps_per_epoch)
        if needed:
            raise errors.ConfigError(
                "the warm-up or decays are in epochs: give steps_per_epoch or "
                "examples_per_epoch (or warmup_steps and decay_steps)"
            )
        return None

    def __call__(self, step) -> tf.Tensor:
        with tf.name_scope(self.name):
            step = tf.cast(step, tf.float32)
            decays = tf.zeros([], tf.float32)
            for boundary in self.decay_steps:
                decays += tf.cast(step >= boundary, tf.float32)
            rate = self.peak_learning_rate * tf.pow(self.decay_factor, decays)
            if self.warmup_steps > 0:
                progress = step / self.warmup_steps
                warm = self.start_learning_rate + (
                    self.peak_learning_rate - self.start_learning_rate
                ) * tf.minimum(progress, 1.0)
                rate = tf.where(step < self.warmup_steps, warm, rate)
            return rate

    def get_config(self) -> dict[str, Any]:
        return dict(
            global_batch_size=self.global_batch_size,
            base_learning_rate=self.base_learning_rate,
            base_batch_size=self.base_batch_size,
            warmup_epochs=self.warmup_epochs,
            decay_epochs=self.decay_epochs,
            decay_factor=self.decay_factor,
            steps_per_epoch=self.steps_per_epoch,
            examples_per_epoch=self.examples_per_epoch,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
            warmup_start_learning_rate=self.warmup_start_learning_rate,
            name=self.name,
        )
