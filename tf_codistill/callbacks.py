"""Keras callbacks for codistillation: the checkpoint exchange and progress lines."""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import noise_scale

__all__ = [
    "ExchangeCallback",
    "GradientNoiseScale",
    "ProgressLogger",
    "StepCounting",
    "SummaryWriter",
    "with_exchange",
]


def _check_interval(name: str, value) -> None:
    if value is not None:
        errors.check_int(name, value, minimum=1)


class StepCounting(keras.callbacks.Callback):
    """Keeps the global train step on the host, with no device round trip per step.

    Keras passes the first step of each execution to `on_train_batch_begin`
    and the last to `on_train_batch_end`, so the count stays right when `fit`
    runs several steps per call (`steps_per_execution > 1`). The optimizer's
    step is read once at the start of training (after BackupAndRestore).
    Subclasses act in `on_steps`.
    """

    def __init__(self):
        super().__init__()
        _take_tf_logs(self)
        self.step = 0
        self._batch_begin = 0

    def _read_step(self) -> int:
        self.step = int(self.model.optimizer.iterations.numpy())
        return self.step

    def on_train_begin(self, logs=None):
        self._read_step()

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin = batch

    def on_train_batch_end(self, batch, logs=None):
        previous = self.step
        self.step += batch - self._batch_begin + 1
        self.on_steps(previous, logs)

    def on_steps(self, previous_step: int, logs) -> None:
        """Called after each execution; `self.step` steps are done in all."""

    @staticmethod
    def crossed(previous: int, current: int, every: int) -> bool:
        """Whether a multiple of `every` lies in (previous, current]."""
        return current // every > previous // every


def _take_tf_logs(callback: keras.callbacks.Callback) -> None:
    """Lets Keras pass a callback its logs as tensors, unconverted.

    Converting the logs to numpy is a device read per step; these callbacks do
    not read them per step. tf_keras has no public switch for it: this is the
    attribute its own callbacks set (tests/test_callbacks.py fails if it goes).
    """
    callback._supports_tf_logs = True  # pylint: disable=protected-access


class ExchangeCallback(StepCounting):
    """Publishes the group's student and reloads its teachers between steps.

    At the start of training it loads the peers' latest checkpoints (so a
    restarted group has teachers at once); then whenever the step count
    crosses a multiple of `every_n_steps` it publishes the student; at the end
    of training it publishes the final student. Teachers are reloaded at the
    same boundaries (multi-worker groups, whose workers must agree on each
    checkpoint), or, with the model's `background_reload`, read on a
    background thread as soon as a peer publishes (looked for ten times per
    interval) and switched to between two steps.
    `CodistillModel.fit` adds one by itself, with the model's
    `exchange_every_n_steps`; pass your own to change the interval.

    The callback talks to the model's `exchange_client` only (an
    `exchange_client.ExchangeClient`: `start`, `exchange`, `poll`, `logs`,
    `note_distill_weight`, `finish`, `background`).

    Args:
      every_n_steps: exchange interval in train steps; defaults to the model's
        `exchange_every_n_steps`.
      wait_for_peers_s: if > 0, a start barrier: the group publishes its
        current student first, then waits up to this long for every peer's
        first checkpoint before its first step. For experiments whose groups
        should start together (bounded staleness from the first exchange);
        production groups need no barrier, as distillation stays off until a
        peer is there.
      poll_s: polling interval of the barrier.
    """

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        wait_for_peers_s: float = 0.0,
        poll_s: float = 0.5,
    ):
        super().__init__()
        _check_interval("every_n_steps", every_n_steps)
        if wait_for_peers_s < 0:
            raise errors.ConfigError(f"wait_for_peers_s must be >= 0, got {wait_for_peers_s}")
        self._every_n_steps = every_n_steps
        self.wait_for_peers_s = wait_for_peers_s
        self.poll_s = poll_s
        self.client = None

    def set_model(self, model):
        super().set_model(model)
        self.client = getattr(model, "exchange_client", None)
        if self.client is None:
            raise errors.ConfigError(
                f"ExchangeCallback needs a tf_codistill.CodistillModel, got {type(model).__name__}"
            )

    @property
    def every_n_steps(self) -> int:
        return self._every_n_steps or self.model.exchange_every_n_steps

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore (an earlier callback) restored the step.
        super().on_train_begin(logs)
        self.client.start(self.step // self.every_n_steps, self.wait_for_peers_s, self.poll_s)

    def on_steps(self, previous_step, logs):
        # A checkpoint written in the background that failed stops training
        # here, one step after its exchange, with the error a blocking write gives.
        self.client.check_publish()
        n = self.every_n_steps
        if self.crossed(previous_step, self.step, n):
            self._read_step()  # Exact, once per exchange.
            self.client.exchange(self.step // n)
        if self.client.background and self.crossed(previous_step, self.step, max(1, n // 10)):
            # Looks for new peer checkpoints ten times per exchange interval;
            # reading them happens on a background thread.
            self.client.poll()
        if logs is not None:
            # Later callbacks (progress lines, TensorBoard) see these too.
            logs.update(self.client.logs(self.step))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # The epoch's mean weight in effect: > 0 if any step used psi.
            self.client.note_distill_weight(logs.get("distill_weight"))
            logs.update(self.client.logs(self.step))

    def on_train_end(self, logs=None):
        self.client.finish()


def with_exchange(callbacks, every_n_steps: int) -> list:
    """`callbacks` with an `ExchangeCallback(every_n_steps)` added if there is none.

    It goes after `BackupAndRestore` (which restores the step and teachers
    first) and before the others (which then see the exchange logs).

    Raises:
      errors.ConfigTypeError: a Keras 3 (`tf.keras`) callback among them.
    """
    callbacks = list(callbacks or [])
    errors.check_tf_keras(callbacks, "fit(callbacks=...)")
    if any(isinstance(c, ExchangeCallback) for c in callbacks):
        return callbacks
    restores = [
        i for i, c in enumerate(callbacks) if isinstance(c, keras.callbacks.BackupAndRestore)
    ]
    callbacks.insert(restores[-1] + 1 if restores else 0, ExchangeCallback(every_n_steps))
    return callbacks


def format_logs(logs, prefix: str = "") -> str:
    parts = []
    for key, value in (logs or {}).items():
        if key.startswith(prefix):
            value = _scalar(value) if np.size(value) == 1 else value
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)


class ProgressLogger(StepCounting):
    """One log line every `every_n_steps` train steps, and one per evaluation.

    With a `CodistillModel`, each training line is followed by one saying
    which teachers were reloaded since the previous one.

    Meant for processes whose output is interleaved with others' (the local
    launcher), where Keras' progress bar would be unreadable.

    Args:
      every_n_steps: interval of the training lines, in train steps.
      total_steps: shown as `step n/total` when given.
      prefix: put at the start of every line (e.g. `group 0`).
    """

    def __init__(self, every_n_steps: int = 100, total_steps: Optional[int] = None, prefix=""):
        super().__init__()
        _check_interval("every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self.total_steps = total_steps
        self.prefix = f"{prefix}: " if prefix else ""
        self._last_time = self._last_step = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._last_time, self._last_step = time.perf_counter(), self.step
        # After BackupAndRestore: a restarted process says where it resumed.
        logging.info("%sstarting at %s", self.prefix, self._where())

    def _where(self) -> str:
        return f"step {self.step}" + (f"/{self.total_steps}" if self.total_steps else "")

    def on_steps(self, previous_step, logs):
        if not self.crossed(previous_step, self.step, self.every_n_steps):
            return
        now = time.perf_counter()
        rate = (self.step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, self.step
        logs = {k: v for k, v in (logs or {}).items()}
        logging.info(
            "%s%s | %s | %.1f steps/s", self.prefix, self._where(), format_logs(logs), rate
        )
        # A CodistillModel's teacher reloads since the last line (each one is
        # logged at DEBUG only).
        client = getattr(self.model, "exchange_client", None)
        reloads = client.reload_summary() if client is not None else ""
        if reloads:
            logging.info("%s%s | teachers | %s", self.prefix, self._where(), reloads)

    def on_epoch_end(self, epoch, logs=None):
        evaluation = format_logs(logs, prefix="val_")
        if evaluation:
            logging.info("%s%s | eval | %s", self.prefix, self._where(), evaluation)


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate at its current step (schedules evaluated)."""
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    return _scalar(lr)


def _scalar(value) -> float:
    """A Python float from a number, numpy value, tensor or (distributed) variable."""
    if isinstance(value, (tf.Tensor, tf.Variable, tf.distribute.DistributedValues)):
        # Distributed variables have no __array__; reading them gives a tensor.
        value = tf.convert_to_tensor(value).numpy()
    return float(np.asarray(value))


class SummaryWriter(StepCounting):
    """TensorBoard scalars: the training logs every `every_n_steps` steps, each
    evaluation, and the learning rate.

    Keras' own `TensorBoard` callback calls `tf.summary.scalar` for every
    metric on every batch (recording only every `update_freq`), which on a
    small model costs more than the train step itself; this one does nothing
    between its steps. Summaries go to `log_dir/train` and `log_dir/validation`
    under the same tags as the Keras logs (`task_loss`, `distill_weight`,
    `teacher_staleness`, ...; validation without the `val_` prefix).

    Args:
      log_dir: TensorBoard directory.
      every_n_steps: interval of the training summaries, in train steps.
    """

    def __init__(self, log_dir: str, every_n_steps: int = 100):
        super().__init__()
        _check_interval("every_n_steps", every_n_steps)
        self.log_dir = log_dir
        self.every_n_steps = every_n_steps
        self._writers = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def _write(self, name: str, logs, strip: str = "") -> None:
        # A full or unwritable directory stops training with one clear error.
        with exchange.writing("TensorBoard summaries", self.log_dir):
            with self._writer(name).as_default(step=self.step):
                for key, value in logs.items():
                    if key.startswith(strip) and np.size(value) == 1:
                        tf.summary.scalar(key[len(strip) :], _scalar(value))
                if name == "train":
                    tf.summary.scalar("learning_rate", current_learning_rate(self.model.optimizer))

    def on_steps(self, previous_step, logs):
        if self.crossed(previous_step, self.step, self.every_n_steps):
            self._write(
                "train", {k: v for k, v in (logs or {}).items() if not k.startswith("val_")}
            )

    def on_epoch_end(self, epoch, logs=None):
        evaluation = {k: v for k, v in (logs or {}).items() if k.startswith("val_")}
        if evaluation:
            self._write("validation", evaluation, strip="val_")

    def on_train_end(self, logs=None):
        writers, self._writers = self._writers, {}
        with exchange.writing("TensorBoard summaries", self.log_dir):
            for writer in writers.values():
                writer.close()


class GradientNoiseScale(StepCounting):
    """Measures the gradient noise scale B_simple during `fit` (McCandlish et al. 2018).

    Tells whether sync SGD at this batch size is saturated: well below the
    noise scale, doubling the batch halves the steps a run needs; well above
    it, doubling buys little, and a second codistilling group is the better
    use of extra machines (docs/when_it_pays.md). Pass it to `fit` of a
    `CodistillModel`; no data argument: the train step itself, every
    `every_n_steps` steps, splits each replica's batch in two and takes the
    task loss's gradient on each half (two extra backward passes on those
    steps only; `noise_scale.py` has the estimator). Every
    `read_every_n_steps` steps the statistics are read, smoothed, and the
    estimate (in examples) goes into the logs as `gradient_noise_scale`: the
    progress lines and TensorBoard (through `SummaryWriter`, which must come
    after this callback) show it, and `fit`'s history has it for each epoch.

    Args:
      every_n_steps: measurement interval, in train steps.
      read_every_n_steps: how often the statistics are read and the estimate
        updated, in train steps (default: every 10 measurements).
      smoothing: weight of the past in the exponential moving averages of
        |G|^2 and tr(Sigma), per measurement (0: none).

    Raises:
      errors.ConfigTypeError: the model is not a `CodistillModel`.
    """

    KEY = "gradient_noise_scale"

    def __init__(
        self,
        every_n_steps: int = 100,
        read_every_n_steps: Optional[int] = None,
        smoothing: float = 0.9,
    ):
        super().__init__()
        _check_interval("every_n_steps", every_n_steps)
        _check_interval("read_every_n_steps", read_every_n_steps)
        self.every_n_steps = every_n_steps
        self.read_every_n_steps = read_every_n_steps or 10 * every_n_steps
        self.smoother = noise_scale.Smoother(smoothing)
        self.estimate: Optional[noise_scale.Estimate] = None
        self._statistics = None

    def set_model(self, model):
        super().set_model(model)
        if not hasattr(model, "gradient_statistics"):
            raise errors.ConfigTypeError(
                "GradientNoiseScale needs a tf_codistill.CodistillModel (its train step "
                f"supplies the gradient statistics), got {type(model).__name__}"
            )
        self._statistics = model.gradient_statistics(self.every_n_steps)

    @property
    def value(self) -> float:
        """The latest smoothed B_simple, in examples (nan before the first reading)."""
        return float("nan") if self.estimate is None else self.estimate.noise_scale

    def _read(self) -> None:
        small, big, count, batch = self._statistics.take()
        if count > 0 and batch >= 2:
            measured = noise_scale.estimate(small, big, batch / 2, batch)
            self.estimate = self.smoother.update(measured, count)

    def on_steps(self, previous_step, logs):
        if self.crossed(previous_step, self.step, self.read_every_n_steps):
            self._read()
        if logs is not None and self.estimate is not None:
            logs[self.KEY] = self.value

    def on_epoch_end(self, epoch, logs=None):
        self._read()
        if logs is not None:
            logs[self.KEY] = self.value
