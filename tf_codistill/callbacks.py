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

__all__ = ["ExchangeCallback", "ProgressLogger", "SummaryWriter"]


def _check_interval(name: str, value) -> None:
    if value is not None:
        errors.check_int(name, value, minimum=1)


class _StepCounting(keras.callbacks.Callback):
    """Keeps the global train step on the host, with no device round trip per step.

    Keras passes the first step of each execution to `on_train_batch_begin`
    and the last to `on_train_batch_end`, so the count stays right when `fit`
    runs several steps per call (`steps_per_execution > 1`). The optimizer's
    step is read once at the start of training (after BackupAndRestore).
    """

    def __init__(self):
        super().__init__()
        # The logs are not read per step; don't make Keras convert them.
        self._supports_tf_logs = True
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


class ExchangeCallback(_StepCounting):
    """Publishes the group's student and reloads its teachers between steps.

    At the start of training it loads the peers' latest checkpoints (so a
    restarted group has teachers at once); then whenever the step count
    crosses a multiple of `every_n_steps` it publishes the student; at the end
    of training it publishes the final student. Teachers are reloaded at the
    same boundaries (multi-worker groups, whose workers must agree on each
    checkpoint), or, with the model's `background_reload`, read on a
    background thread as soon as a peer publishes (looked for ten times per
    interval) and switched to between two steps.
    `CodistillModel.fit` adds one by itself; pass your own to change the
    interval.

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

    @property
    def every_n_steps(self) -> int:
        return self._every_n_steps or self.model.exchange_every_n_steps

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore (an earlier callback) restored the step.
        super().on_train_begin(logs)
        if self.wait_for_peers_s > 0 and self.model.peer_indices:
            self._wait_for_peers()
        else:
            # A peer of another architecture at the start is a configuration
            # mistake: stop with its message rather than train without it.
            self.model.reload_teachers(raise_on_mismatch=True)

    def _wait_for_peers(self) -> None:
        from tf_codistill import distribute  # Avoids a cycle at import time.

        self.model.publish()
        deadline = time.time() + self.wait_for_peers_s
        while True:
            outcomes = self.model.reload_teachers(raise_on_mismatch=True)
            all_loaded = all(o.status in ("loaded", "unchanged") for o in outcomes)
            done = all_loaded or time.time() >= deadline
            # Every worker of a group must run the same number of reloads
            # (they are collectives): stop only when all of them are done.
            if distribute.agree_min([int(done)])[0]:
                break
            time.sleep(self.poll_s)
        if not all_loaded:
            missing = [o.peer for o in outcomes if o.status not in ("loaded", "unchanged")]
            logging.warning(
                "Peers %s did not publish within %.0f s; starting without them",
                missing,
                self.wait_for_peers_s,
            )

    def on_steps(self, previous_step, logs):
        n = self.every_n_steps
        if self.crossed(previous_step, self.step, n):
            self._read_step()  # Exact, once per exchange.
            self.model.publish()
            self.model.drop_nonfinite_teachers()
            if not self.model.background_reload:
                self.model.reload_teachers()
        if self.model.background_reload and self.crossed(previous_step, self.step, max(1, n // 10)):
            # Looks for new peer checkpoints ten times per exchange interval;
            # reading them happens on a background thread.
            self.model.prefetch_teachers()
        if logs is not None:
            # Later callbacks (progress lines, TensorBoard) see these too.
            logs.update(self.model.exchange_logs(self.step))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.model.exchange_logs(self.step))

    def on_train_end(self, logs=None):
        self.model.wait_for_prefetch()
        self.model.publish()


def format_logs(logs, prefix: str = "") -> str:
    parts = []
    for key, value in (logs or {}).items():
        if key.startswith(prefix):
            value = _scalar(value) if np.size(value) == 1 else value
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)


class ProgressLogger(_StepCounting):
    """One log line every `every_n_steps` train steps, and one per evaluation.

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
    if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "_primary"):
        # Distributed variables have no __array__; reading them gives a tensor.
        value = tf.convert_to_tensor(value).numpy()
    return float(np.asarray(value))


class SummaryWriter(_StepCounting):
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
