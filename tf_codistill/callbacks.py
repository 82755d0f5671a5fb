"""Keras callbacks for codistillation."""

from __future__ import annotations

from typing import Optional

import tf_keras as keras

__all__ = ["ExchangeCallback"]


class ExchangeCallback(keras.callbacks.Callback):
    """Publishes the group's student and reloads its teachers between steps.

    At the start of training it loads the peers' latest checkpoints (so a
    restarted group has teachers at once); then every `every_n_steps` train
    steps it publishes the student and reloads the teachers; at the end of
    training it publishes the final student. `CodistillModel.fit` adds one by
    itself; pass your own to change the interval.

    The boundary test is "a multiple of `every_n_steps` was crossed", so the
    exchange happens on the right step boundaries also when `fit` runs several
    steps per call (`steps_per_execution > 1`). Steps are counted on the host
    from the batch indices Keras passes, so the callback adds no device round
    trip per step; the optimizer's step is read once per exchange.

    Args:
      every_n_steps: exchange interval in train steps; defaults to the model's
        `exchange_every_n_steps`.
    """

    def __init__(self, every_n_steps: Optional[int] = None):
        super().__init__()
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool)
            or int(every_n_steps) != every_n_steps
            or every_n_steps < 1
        ):
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self._every_n_steps = every_n_steps
        self._step = 0
        self._last_exchange = 0
        self._batch_begin = 0

    @property
    def every_n_steps(self) -> int:
        return self._every_n_steps or self.model.exchange_every_n_steps

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore (an earlier callback) restored the step.
        self._step = self._last_exchange = int(self.model.optimizer.iterations.numpy())
        self.model.reload_teachers()

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin = batch

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last step of this execution, `_batch_begin` its first.
        self._step += batch - self._batch_begin + 1
        n = self.every_n_steps
        if self._step // n > self._last_exchange // n:
            self._step = int(self.model.optimizer.iterations.numpy())
            self.model.publish()
            self.model.reload_teachers()
            self._last_exchange = self._step

    def on_train_end(self, logs=None):
        self.model.publish()
