"""The paper's language model: word-piece embeddings, stacked LSTMs, softmax.

Anil et al. (2018), section 3.1 (PAPER.md 2.1): 2 LSTM layers of 1024 units
with layer normalisation, 256-dimensional input embeddings, a vocabulary of
24006 word pieces, sequences of 32 tokens from B documents at a time, and the
hidden state carried across batches, never reset.

Choices where the paper is silent (UNKNOWN) or tf_keras lacks a piece:

* **Softmax**: a plain dense layer over the whole vocabulary with a bias, not
  tied to the embeddings, no sampled or adaptive softmax.
* **Layer normalisation**: tf_keras has no layer-normalised LSTM cell, so
  `LayerNormalization` is applied to each LSTM layer's output sequence (the
  input of the next layer and of the softmax). The LSTMs themselves are plain
  `keras.layers.LSTM`, which keeps the fused cuDNN kernel on GPUs.
* **Carried state** (`carry_state=True`): each LSTM keeps its final `(h, c)`
  in variables and starts the next batch from them, so row i of batch k+1
  continues row i of batch k (the streams of
  `tf_codistill.datasets.text.lm_input_fn`). The state variables need a fixed
  number of rows, `batch_size`, the *per-replica* batch (global batch /
  replicas in sync). Under a `tf.distribute` strategy they are sync-on-read:
  each replica carries its own rows. They are not model weights: they are not
  in `model.weights`, checkpoints, the exchange between groups, or saved
  models. A checkpoint of a carried-state model therefore restores into a
  model of any batch size, with or without `carry_state`. Gradients do not
  flow into the previous batch (truncated backpropagation over 32 steps).

Teachers are separate instances (`teacher_builder=model_fn`, or
`keras.models.clone_model`, which works: `CarriedLSTM` has a config); each
carries its own state over the batches it is run on (the student's batches,
after burn-in). `CarriedStateCallback` keeps evaluation from disturbing the
training state of all of them.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tf_codistill import callbacks as callbacks_lib
from tf_codistill import distribute
from tf_codistill import errors

__all__ = ["CarriedLSTM", "CarriedStateCallback", "carried_lstm_layers", "lstm_lm"]


class _StateVariables:
    """Holds the state variables out of sight of Keras and checkpoint tracking."""

    def __init__(self, current: list, saved: list):
        self.current = current
        self.saved = saved


@keras.utils.register_keras_serializable(package="tf_codistill")
class CarriedLSTM(keras.layers.Layer):
    """An LSTM returning its output sequence, optionally carrying its state.

    Args:
      units: LSTM units.
      carry_state: start each call from the final `(h, c)` of the previous call
        (per replica) instead of zeros.
      batch_size: rows of every call when `carry_state` (per replica).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Call arguments:
      inputs: `[batch, time, features]` float sequence.
      training: passed to the LSTM.

    Returns:
      `[batch, time, units]` outputs.
    """

    def __init__(
        self, units: int, carry_state: bool = False, batch_size: Optional[int] = None, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise errors.ConfigError(f"units must be a positive integer, got {units!r}")
        if carry_state and (not isinstance(batch_size, int) or batch_size < 1):
            raise errors.ConfigError(
                "carry_state=True needs batch_size, the number of rows (streams) per "
                f"replica, as a positive integer; got {batch_size!r}"
            )
        self.units = units
        self.carry_state = bool(carry_state)
        self.batch_size = batch_size
        self.lstm = keras.layers.LSTM(units, return_sequences=True, return_state=True, name="lstm")
        self.stateful = self.carry_state  # So that Model.reset_states() reaches it.
        self._state = None

    def build(self, input_shape):
        if self.carry_state:

            def variable(name):
                # Sync-on-read: in a replica context each replica reads and
                # writes its own copy (its own streams).
                return tf.Variable(
                    tf.zeros([self.batch_size, self.units], self.compute_dtype),
                    trainable=False,
                    name=f"{self.name}_{name}",
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )

            self._state = _StateVariables(
                [variable("h"), variable("c")], [variable("saved_h"), variable("saved_c")]
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not self.carry_state:
            outputs, _, _ = self.lstm(inputs, training=training)
            return outputs
        rows = inputs.shape[0]
        if rows is not None and rows != self.batch_size:
            raise errors.ConfigError(
                f"{self.name} carries the state of {self.batch_size} streams per replica but got "
                f"a batch of {rows}: set batch_size (e.g. tf_codistill.models.lstm_lm.batch_size) "
                "to the per-replica batch, global_batch_size / replicas in sync, and evaluate "
                "with the same per-replica batch"
            )
        h, c = self._state.current
        outputs, new_h, new_c = self.lstm(
            inputs, initial_state=[tf.identity(h), tf.identity(c)], training=training
        )
        h.assign(tf.cast(new_h, h.dtype))
        c.assign(tf.cast(new_c, c.dtype))
        return outputs

    @property
    def state_variables(self) -> tuple:
        """The carried `(h, c)` variables, `[batch_size, units]` each (empty if none)."""
        return tuple(self._state.current) if self._state else ()

    def reset_states(self):
        """Sets the carried state of every replica to zeros."""
        if self._state:
            for v in distribute.components(self._state.current):
                v.assign(tf.zeros_like(v))

    def stash_states(self):
        """Copies every replica's carried state aside (see `restore_states`)."""
        if self._state:
            for saved, current in zip(
                distribute.components(self._state.saved),
                distribute.components(self._state.current),
                strict=True,
            ):
                saved.assign(current)

    def restore_states(self):
        """Puts back the state copied by the last `stash_states`."""
        if self._state:
            for current, saved in zip(
                distribute.components(self._state.current),
                distribute.components(self._state.saved),
                strict=True,
            ):
                current.assign(saved)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "carry_state": self.carry_state,
            "batch_size": self.batch_size,
        }


def carried_lstm_layers(model: tf.Module) -> list:
    """Every `CarriedLSTM` with `carry_state` inside `model` (teachers included)."""
    found = [model] if isinstance(model, CarriedLSTM) else []
    found += [m for m in model.submodules if isinstance(m, CarriedLSTM)]
    return [m for m in found if m.carry_state]


class CarriedStateCallback(callbacks_lib.StepCounting):
    """Keeps evaluation from disturbing carried LSTM state; resets it on request.

    With `isolate_evaluation` (the default), before each evaluation every
    carried state of the model (the student's and each teacher's) is copied
    aside and set to zeros, so evaluation reads its streams from the start
    like a fresh model; after the evaluation the training state is put back,
    and training continues its streams as if evaluation had not happened.
    `fit` calls this for the evaluations it runs on `validation_data`; pass the
    callback to a standalone `evaluate` too.

    Args:
      isolate_evaluation: stash, zero and restore the states around evaluation.
      reset_every_n_steps: also set the training state to zeros every this
        many train steps (None: never, as in the paper).
      reset_on_train_begin: set the training state to zeros when `fit` starts.
    """

    def __init__(
        self,
        isolate_evaluation: bool = True,
        reset_every_n_steps: Optional[int] = None,
        reset_on_train_begin: bool = False,
    ):
        super().__init__()
        if reset_every_n_steps is not None:
            errors.check_int("reset_every_n_steps", reset_every_n_steps, minimum=1)
        self.isolate_evaluation = isolate_evaluation
        self.reset_every_n_steps = reset_every_n_steps
        self.reset_on_train_begin = reset_on_train_begin
        self.resets = 0

    def _layers(self) -> list:
        return carried_lstm_layers(self.model)

    def reset(self) -> None:
        for layer in self._layers():
            layer.reset_states()
        self.resets += 1

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.reset_on_train_begin:
            self.reset()

    def on_steps(self, previous_step, logs):
        if self.reset_every_n_steps and self.crossed(
            previous_step, self.step, self.reset_every_n_steps
        ):
            self.reset()

    def on_test_begin(self, logs=None):
        if self.isolate_evaluation:
            for layer in self._layers():
                layer.stash_states()
                layer.reset_states()

    def on_test_end(self, logs=None):
        if self.isolate_evaluation:
            for layer in self._layers():
                layer.restore_states()


def lstm_lm(
    vocab_size: int,
    embedding_dim: int = 256,
    units: int = 1024,
    num_layers: int = 2,
    layer_norm: bool = True,
    carry_state: bool = False,
    batch_size: Optional[int] = None,
    dropout: float = 0.0,
    name: str = "lstm_lm",
) -> keras.Model:
    """Builds the LSTM language model: `[batch, time]` ids -> `[batch, time, vocab]` logits.

    Defaults are the paper's sizes except the vocabulary (24006 in the paper;
    take it from the tokenizer, e.g. `tf_codistill.datasets.text.corpus_vocab_size`).

    Args:
      vocab_size: token ids (PAD and EOD included); size of the embedding
        table and of the softmax.
      embedding_dim: input embedding size.
      units: units of each LSTM layer.
      num_layers: stacked LSTM layers.
      layer_norm: `LayerNormalization` on each LSTM layer's outputs.
      carry_state: carry the LSTM state across batches (see `CarriedLSTM`).
      batch_size: streams per replica; required with `carry_state`.
      dropout: dropout rate on the embeddings and on each LSTM layer's outputs
        (0: none; the paper mentions none, and its data is never revisited).
      name: model name.

    Returns:
      A built functional `tf_keras.Model` taking `[batch, time]` int32 ids and
      returning float logits `[batch, time, vocab_size]`.

    Raises:
      ValueError: a size is not a positive integer, or `carry_state` without
        `batch_size`.
    """
    for arg, value in (
        ("vocab_size", vocab_size),
        ("embedding_dim", embedding_dim),
        ("units", units),
        ("num_layers", num_layers),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise errors.ConfigError(f"lstm_lm: {arg} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise errors.ConfigError(f"lstm_lm: dropout must be in [0, 1), got {dropout!r}")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(tokens)
    if dropout:
        h = keras.layers.Dropout(dropout, name="embedding_dropout")(h)
    for i in range(num_layers):
        h = CarriedLSTM(units, carry_state=carry_state, batch_size=batch_size, name=f"lstm_{i}")(h)
        if layer_norm:
            h = keras.layers.LayerNormalization(name=f"layer_norm_{i}")(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    logits = keras.layers.Dense(vocab_size, name="logits")(h)
    return keras.Model(tokens, logits, name=name)
