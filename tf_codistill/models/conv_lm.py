"""A causal convolutional language model: the k-token MLP LM, cheap on a CPU.

Each position's next-token distribution is a function of the previous
`context` tokens only: embeddings, a causal `Conv1D` of kernel `context` over
them (one dense layer over the concatenated k embeddings, applied at every
position), more dense ReLU layers, then the softmax layer. It carries no state
between batches, so a batch's rows need not continue the previous batch's
(`lm_input_fn`'s streams still work: each window is read on its own) and
teachers are plain clones.

Position i of a `[batch, time]` window depends on tokens `i - context + 1 ..
i` of that window; positions before the window's start are zero vectors (the
causal padding), so the first `context - 1` positions of every window see a
shorter context, in training and evaluation alike. Per token, a step costs
about `context * embedding_dim * hidden_units[0] + sum(hidden_units[j] *
hidden_units[j + 1]) + hidden_units[-1] * vocab_size` multiply-adds forward,
against the LSTM's `8 * units^2` per layer: with bytes (258 ids) and a
context of 16, one or two orders of magnitude less than the paper's LSTM.

This is the "k-token MLP LM" of the study's notes (SCIENCE.md: P3 and the
real-text workload): a model whose batch scaling can be measured to
saturation on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import tf_keras as keras

from tf_codistill import errors

__all__ = ["conv_lm"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigError(f"conv_lm: {name} must be a positive integer, got {value!r}")
    return value


def conv_lm(
    vocab_size: int,
    embedding_dim: int = 32,
    context: int = 16,
    hidden_units: Sequence[int] = (256, 256),
    name: str = "conv_lm",
) -> keras.Model:
    """Builds the causal convolutional LM: `[batch, time]` ids -> `[batch, time, vocab]` logits.

    Args:
      vocab_size: token ids (PAD and EOD included); size of the embedding
        table and of the softmax (e.g.
        `tf_codistill.datasets.text.corpus_vocab_size`; 258 for bytes).
      embedding_dim: input embedding size.
      context: k, the tokens each position sees (itself and the k - 1 before
        it): the causal convolution's kernel width.
      hidden_units: widths of the ReLU layers: the first is the causal
        convolution's filters, each next one a dense layer at every position.
      name: model name.

    Returns:
      A built functional `tf_keras.Model` taking `[batch, time]` int32 ids and
      returning float32 logits `[batch, time, vocab_size]`.

    Raises:
      ValueError: a size is not a positive integer, or `hidden_units` is empty.
    """
    _positive_int("vocab_size", vocab_size)
    _positive_int("embedding_dim", embedding_dim)
    _positive_int("context", context)
    hidden_units = tuple(hidden_units)
    if not hidden_units:
        raise errors.ConfigError("conv_lm: hidden_units needs at least one width (the convolution)")
    for units in hidden_units:
        _positive_int("hidden_units", units)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(tokens)
    # "causal" pads k - 1 zero vectors on the left: position i sees inputs
    # i - k + 1 .. i and nothing after i.
    h = keras.layers.Conv1D(
        hidden_units[0], context, padding="causal", activation="relu", name="context"
    )(h)
    for i, units in enumerate(hidden_units[1:]):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i + 1}")(h)
    logits = keras.layers.Dense(vocab_size, name="logits")(h)
    return keras.Model(tokens, logits, name=name)
