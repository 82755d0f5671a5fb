"""A run's configuration, read back from its `operative_config.gin`.

Every group of a run writes `<root_dir>/group_<i>/operative_config.gin`; an
evaluator (or the churn tool) rebuilds the run's model and evaluation data
from it: `RunConfig` reads `tf_codistill.train_lib.train_group`'s `model_fn`,
`eval_input_fn` (or `input_fn`), `loss`, `metrics`, `weighted_metrics`,
`eval_batch_size` (or `global_batch_size`), `eval_steps`, `train_steps`,
`data_split`, `data_seed` and `distill_loss` back from it (extra gin files
and bindings may override them). The parameters read and their defaults are
listed in `TRAIN_GROUP_DEFAULTS` (tests/test_run_config.py checks them
against `train_group`'s signature).

Everything here replaces the process's gin config while it reads a run's
config, and leaves it cleared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Optional

import gin
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import errors
from tf_codistill import gin_utils
from tf_codistill import losses
from tf_codistill.datasets import sharding

__all__ = ["RunConfig", "TRAIN_GROUP", "TRAIN_GROUP_DEFAULTS"]

TRAIN_GROUP = "tf_codistill.train_lib.train_group"

# The train_group parameters an evaluator reads, with train_group's defaults.
TRAIN_GROUP_DEFAULTS: dict[str, Any] = {
    "model_fn": gin.REQUIRED,
    "input_fn": gin.REQUIRED,
    "eval_input_fn": None,
    "global_batch_size": gin.REQUIRED,
    "eval_batch_size": None,
    "data_split": sharding.DISJOINT,
    "data_seed": 0,
    "loss": gin.REQUIRED,
    "metrics": (),
    "weighted_metrics": (),
    "train_steps": gin.REQUIRED,
    "eval_steps": None,
    "distill_loss": "softmax_cross_entropy",
}


def _unset_to_none(value: Any) -> Any:
    return None if value is gin.REQUIRED else value


class RunConfig:
    """A run's gin configuration, read back to rebuild its model and data.

    The config is re-parsed (a few milliseconds) each time something is built
    from it, because gin configurables read their bindings when they are
    called: a model builder called after the config was replaced would
    silently build the default model.

    Args:
      gin_files: the run's `operative_config.gin` (or any gin files that bind
        `tf_codistill.train_lib.train_group`), then extra files.
      gin_bindings: extra bindings, applied last.

    Raises:
      errors.GinConfigError: a file is missing or does not parse, or it
        sets no batch size. (A missing `model_fn`, input function or loss is
        reported by the method that needs it, as an `EvaluationError`: the
        churn tool reads only the data from a config.)
    """

    def __init__(self, gin_files: Sequence[str], gin_bindings: Sequence[str] = ()):
        self.gin_files = list(gin_files)
        self.gin_bindings = list(gin_bindings)
        with self.active():
            self.eval_batch_size = _unset_to_none(
                self.value("eval_batch_size") or self.value("global_batch_size")
            )
            self.eval_steps = self.value("eval_steps")
            self.train_steps = _unset_to_none(self.value("train_steps"))
            self.data_split = self.value("data_split")
            self.data_seed = self.value("data_seed")
            self.distill_loss = losses.get(self.value("distill_loss"))
            self.has_model = self.value("model_fn") is not gin.REQUIRED
            self.has_input = (self.value("eval_input_fn") or self.value("input_fn")) not in (
                None,
                gin.REQUIRED,
            )
            if self.eval_batch_size is None:
                raise errors.GinConfigError(
                    f"neither {TRAIN_GROUP}.eval_batch_size nor .global_batch_size is set"
                )
        logging.info(
            "Run config %s: eval batch %s, eval steps %s, train steps %s, distill loss %r",
            self.gin_files[0] if self.gin_files else "(bindings only)",
            self.eval_batch_size,
            self.eval_steps,
            self.train_steps,
            self.distill_loss,
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Makes this the process's gin config for the duration of the block."""
        gin.clear_config()
        try:
            gin_utils.parse(self.gin_files, self.gin_bindings, finalize=False)
            yield
        finally:
            gin.clear_config()

    @staticmethod
    def value(parameter: str) -> Any:
        """`train_group`'s `parameter` in the active config, or its default."""
        return gin_utils.query(
            f"{TRAIN_GROUP}.{parameter}", default=TRAIN_GROUP_DEFAULTS[parameter]
        )

    def build_model(self) -> keras.Model:
        """A new student from the run's `model_fn` (random weights: restore one)."""
        if not self.has_model:
            raise errors.EvaluationError(f"the config binds no {TRAIN_GROUP}.model_fn")
        with self.active():
            model = self.value("model_fn")()
        if not isinstance(model, keras.Model):
            raise errors.EvaluationError(
                f"model_fn must return a tf_keras.Model, got {type(model).__module__}."
                f"{type(model).__name__}"
            )
        return model

    def dataset(
        self,
        group_index: int = 0,
        num_groups: int = 1,
        batch_size: Optional[int] = None,
    ) -> tf.data.Dataset:
        """The run's evaluation data, batched, as group `group_index` reads it.

        Built like the training job builds it (`DataContext(training=False)`,
        the same for every group of the run), for one replica.

        Args:
          group_index: the group whose view to build.
          num_groups: groups in the run (at least `group_index + 1`).
          batch_size: examples per batch; defaults to the run's
            `eval_batch_size` (else `global_batch_size`).
        """
        if not self.has_input:
            raise errors.EvaluationError(
                f"the config binds no {TRAIN_GROUP}.eval_input_fn or input_fn"
            )
        context = sharding.DataContext(
            training=False,
            batch_size=int(batch_size or self.eval_batch_size),
            group_index=group_index,
            num_groups=max(num_groups, group_index + 1),
            mode=self.data_split,
            seed=self.data_seed,
        )
        with self.active():
            input_fn = self.value("eval_input_fn") or self.value("input_fn")
            dataset = input_fn(context)
        if not isinstance(dataset, tf.data.Dataset):
            raise errors.EvaluationError(
                f"the input function returned {type(dataset)}, not a Dataset"
            )
        return dataset

    def loss_and_metrics(self) -> tuple[Any, list]:
        """New instances of the run's compiled task loss and metrics."""
        with self.active():
            loss = self.value("loss")
            if loss is gin.REQUIRED:
                raise errors.EvaluationError(f"the config binds no {TRAIN_GROUP}.loss")
            metrics = [m if isinstance(m, str) else m() for m in self.value("metrics")]
        return loss, metrics

    def weighted_metrics(self) -> list:
        """New instances of the run's weighted metrics (e.g. the LM's per-token cross-entropy)."""
        with self.active():
            weighted = self.value("weighted_metrics") or []
            return [m if isinstance(m, str) else m() for m in weighted]
