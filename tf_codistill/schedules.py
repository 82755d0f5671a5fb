"""Distillation-weight schedules w(step).

The weight multiplies psi in the group's loss: `task + w(step) * psi`. `step`
is the number of optimizer updates already applied when the step runs (the
value of `optimizer.iterations`), so with `BurnIn(burn_in_steps=n)` the first
`n` updates train on the task loss alone, as in Algorithm 1 of Anil et al.
(2018). Schedules are plain callables of a scalar int64 tensor that return a
scalar float32 tensor, usable inside `train_step` (graph, XLA) and eagerly.
"""

from __future__ import annotations

import abc
from typing import Any
from typing import Optional
from typing import Union

import tensorflow as tf

from tf_codistill import errors

__all__ = [
    "DistillWeightSchedule",
    "BurnIn",
    "LinearRamp",
    "get",
    "PAPER_BURN_IN_STEPS",
]

# The only burn-in the paper reports (ImageNet, section 3.3.1).
PAPER_BURN_IN_STEPS = 3000


class DistillWeightSchedule(abc.ABC):
    """A distillation weight as a function of the training step."""

    @abc.abstractmethod
    def __call__(self, step) -> tf.Tensor:
        """Returns the scalar float32 weight for `step` (int, in train steps)."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for logging and serialisation."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def _check_weight(weight: float) -> float:
    weight = float(weight)
    if not weight >= 0:
        raise errors.ConfigError(f"distill_weight must be a finite number >= 0, got {weight}")
    return weight


class BurnIn(DistillWeightSchedule):
    """The paper's hard switch: 0 for the first `burn_in_steps` steps, then `weight`.

    Args:
      weight: the distillation weight after burn-in (the paper uses 1).
      burn_in_steps: number of initial train steps without distillation.
    """

    def __init__(self, weight: float = 1.0, burn_in_steps: int = PAPER_BURN_IN_STEPS):
        self.weight = _check_weight(weight)
        self.burn_in_steps = errors.check_int("burn_in_steps", burn_in_steps, minimum=0)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        on = step >= self.burn_in_steps
        return tf.where(on, tf.constant(self.weight, tf.float32), tf.constant(0.0, tf.float32))

    def get_config(self):
        return {"weight": self.weight, "burn_in_steps": self.burn_in_steps}


class LinearRamp(DistillWeightSchedule):
    """0 before `start_step`, then rising linearly to `weight` over `ramp_steps`.

    w(step) = weight * clip((step - start_step + 1) / ramp_steps, 0, 1), so the
    step at `start_step` already gets `weight / ramp_steps` and the step at
    `start_step + ramp_steps - 1` gets the full weight.

    Args:
      weight: the final distillation weight.
      start_step: first step with a non-zero weight (the burn-in length).
      ramp_steps: number of steps the ramp takes, >= 1.
    """

    def __init__(self, weight: float = 1.0, start_step: int = 0, ramp_steps: int = 1000):
        self.weight = _check_weight(weight)
        self.start_step = errors.check_int("start_step", start_step, minimum=0)
        self.ramp_steps = errors.check_int("ramp_steps", ramp_steps, minimum=1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        frac = (step - float(self.start_step) + 1.0) / float(self.ramp_steps)
        return self.weight * tf.clip_by_value(frac, 0.0, 1.0)

    def get_config(self):
        return {
            "weight": self.weight,
            "start_step": self.start_step,
            "ramp_steps": self.ramp_steps,
        }


def get(
    distill_weight: Union[float, DistillWeightSchedule],
    burn_in_steps: Optional[int] = None,
) -> DistillWeightSchedule:
    """The schedule for `distill_weight` and `burn_in_steps`: the one place of the burn-in rule.

    Args:
      distill_weight: a schedule, or a number: the weight after burn-in.
      burn_in_steps: train steps without distillation for a numeric weight
        (None: the paper's 3000); must be None with a schedule, which sets
        its own start.

    Raises:
      errors.ConfigError: `burn_in_steps` given with a schedule.
      errors.ConfigTypeError: `distill_weight` is neither.
    """
    if isinstance(distill_weight, DistillWeightSchedule):
        if burn_in_steps is not None:
            raise errors.ConfigError(
                "burn_in_steps applies to a numeric distill_weight only; "
                f"the schedule {distill_weight!r} sets its own start"
            )
        return distill_weight
    if isinstance(distill_weight, (int, float)) and not isinstance(distill_weight, bool):
        if burn_in_steps is None:
            burn_in_steps = PAPER_BURN_IN_STEPS
        return BurnIn(distill_weight, burn_in_steps)
    raise errors.ConfigTypeError(
        "distill_weight must be a number or a tf_codistill.schedules.DistillWeightSchedule, "
        f"got {type(distill_weight).__name__}: {distill_weight!r}"
    )
