"""The paper's Criteo click model: embeddings + ReLU MLP 2560-1024-256 -> 1 logit.

Anil et al. (2018, section 3.4) give the hidden layers and the logistic output,
not the input side. Here each of the 26 categorical features has its own
table of `num_hash_buckets` rows of `embedding_dim` = 16 (the embedding size
of DLRM's Criteo Kaggle configuration; the paper gives none), all held in one
variable so that one gather serves them all. The 26 embeddings, the 13
log-transformed counts and (by default) their 13 missing indicators are
concatenated and fed to the MLP.

With the defaults (100,000 buckets, 16 dimensions, indicators) the model has
41,600,000 embedding and 4,019,201 MLP parameters (45,619,201 in all); see
tests/test_criteo_model.py for the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors

__all__ = ["HashedEmbeddings", "criteo_dnn"]

# The same values as in tf_codistill.datasets.criteo (checked by the tests);
# repeated so that building the model does not import tensorflow_datasets.
NUM_INTEGER_FEATURES = 13
NUM_CATEGORICAL_FEATURES = 26
DEFAULT_NUM_HASH_BUCKETS = 100_000


class HashedEmbeddings(keras.layers.Layer):
    """One embedding table per categorical feature, stored as one variable.

    Feature `i`'s bucket `b` is row `i * num_buckets + b` of `embeddings`
    (`[num_features * num_buckets, dim]`), so all features are looked up
    with one gather, whose gradient is sparse (`tf.IndexedSlices`).

    Input: int `[batch, num_features]` bucket ids in `[0, num_buckets)`.
    Output: float32 `[batch, num_features * dim]`.
    """

    def __init__(self, num_features: int, num_buckets: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_features", num_features), ("num_buckets", num_buckets)):
            if value < 1:
                raise errors.ConfigError(f"{name} must be >= 1, got {value}")
        if dim < 1:
            raise errors.ConfigError(f"embedding dim must be >= 1, got {dim}")
        self.num_features = int(num_features)
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_features:
            raise errors.ConfigError(
                f"{self.name}: expected [batch, {self.num_features}] bucket ids, got {input_shape}"
            )
        # The uniform(-0.05, 0.05) initialisation of keras.layers.Embedding.
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_features * self.num_buckets, self.dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )
        super().build(input_shape)

    def call(self, ids):
        offsets = tf.range(self.num_features, dtype=tf.int64) * self.num_buckets
        rows = tf.cast(ids, tf.int64) + offsets
        vectors = tf.gather(self.embeddings, rows)
        return tf.reshape(vectors, [-1, self.num_features * self.dim])

    def get_config(self):
        config = super().get_config()
        config.update(num_features=self.num_features, num_buckets=self.num_buckets, dim=self.dim)
        return config


def criteo_dnn(
    num_hash_buckets: int = DEFAULT_NUM_HASH_BUCKETS,
    embedding_dim: int = 16,
    hidden_units: Sequence[int] = (2560, 1024, 256),
    missing_indicators: bool = True,
    name: str = "criteo_dnn",
) -> keras.Model:
    """The Criteo DNN, taking the features of `criteo.preprocess`.

    Args:
      num_hash_buckets: rows of each categorical feature's table; must equal
        the input function's `num_hash_buckets`.
      embedding_dim: size of each categorical embedding.
      hidden_units: ReLU layers (the paper: 2560, 1024, 256).
      missing_indicators: take `dense_missing` too (must match the input
        function's setting).
      name: the model's name.

    Returns:
      A functional model: inputs `dense` float32 `[batch, 13]`,
      `dense_missing` float32 `[batch, 13]` (if used) and `categorical` int64
      `[batch, 26]`; output `[batch, 1]` float32 click logits.
    """
    dense = keras.Input((NUM_INTEGER_FEATURES,), name="dense")
    categorical = keras.Input((NUM_CATEGORICAL_FEATURES,), dtype=tf.int64, name="categorical")
    inputs = {"dense": dense, "categorical": categorical}
    parts = [dense]
    if missing_indicators:
        inputs["dense_missing"] = keras.Input((NUM_INTEGER_FEATURES,), name="dense_missing")
        parts.append(inputs["dense_missing"])
    embedded = HashedEmbeddings(
        NUM_CATEGORICAL_FEATURES, num_hash_buckets, embedding_dim, name="embeddings"
    )(categorical)
    h = keras.layers.Concatenate(name="concat")(parts + [embedded])
    for i, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(h)
    logit = keras.layers.Dense(1, name="logit")(h)
    return keras.Model(inputs, logit, name=name)
