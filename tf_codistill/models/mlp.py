"""A ReLU MLP classifier (the bundled demo's model)."""

from __future__ import annotations

from collections.abc import Sequence

import tf_keras as keras

__all__ = ["mlp_classifier"]


def mlp_classifier(
    input_dim: int = 32,
    num_classes: int = 10,
    hidden_units: Sequence[int] = (256, 256),
    dropout: float = 0.0,
    name: str = "mlp",
) -> keras.Model:
    """Functional MLP: `[batch, input_dim]` float32 -> `[batch, num_classes]` logits."""
    inputs = keras.Input((input_dim,), name="features")
    h = inputs
    for i, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, logits, name=name)
