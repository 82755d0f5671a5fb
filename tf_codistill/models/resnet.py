"""ResNet-50 for ImageNet, returning logits, with Goyal et al.'s (2017) training details.

The paper's ImageNet runs follow Goyal et al. (2017) "as closely as possible";
its model is ResNet-50, here `tf_keras.applications.ResNet50`: He et al.'s
25,557,032 parameters with 1000 classes, plus a bias in every convolution
(26,560, redundant before BatchNorm; He et al. have none), so
`count_params()` is 25,636,712 with BatchNorm's moving statistics. Two
details of Goyal et al. that are not part of the Keras model are options here:

- `weight_decay` (Goyal: 1e-4, not on BatchNorm's gamma and beta): added as
  an L2 penalty `weight_decay / 2 * sum(w ** 2)` on every convolution and
  dense kernel, through `layer.add_loss`, so that the gradient gains
  `weight_decay * w` exactly as in Goyal's update rule. It then goes through
  the momentum like Goyal's, which the optimizers' decoupled `weight_decay`
  argument would not, and is scaled by the learning rate (warm-up and decays
  included). `train_lib` adds `model.losses` to the task loss.
- `zero_init_residual` (Goyal section 5.1): the gamma of the last
  BatchNorm of each residual block (`*_3_bn`) starts at 0, so each block
  starts as the identity.

`small_resnet` builds the same bottleneck blocks with a few narrow stages, for
tests and tiny runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors

__all__ = ["resnet50", "small_resnet", "add_weight_decay", "zero_init_residual_gammas"]

# The last BatchNorm of a bottleneck block, in tf_keras.applications' names.
_LAST_BN = re.compile(r"conv\d+_block\d+_3_bn")
_BN_EPSILON = 1.001e-5  # As tf_keras.applications' ResNets.


def add_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Adds `weight_decay / 2 * sum(kernel ** 2)` to `model.losses` per conv/dense layer.

    Biases and BatchNorm parameters are left alone (Goyal et al. 2017).

    Returns:
      The number of kernels penalised.
    """
    if weight_decay < 0:
        raise errors.ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if not weight_decay:
        return 0
    count = 0
    for layer in model.submodules:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = layer.kernel
            layer.add_loss(lambda k=kernel: 0.5 * weight_decay * tf.reduce_sum(tf.square(k)))
            count += 1
    return count


def zero_init_residual_gammas(model: keras.Model) -> int:
    """Sets gamma of each residual block's last BatchNorm to 0; returns how many."""
    count = 0
    for layer in model.submodules:
        if isinstance(layer, keras.layers.BatchNormalization) and _LAST_BN.fullmatch(layer.name):
            layer.gamma.assign(tf.zeros_like(layer.gamma))
            count += 1
    return count


def _goyal_options(model: keras.Model, weight_decay: float, zero_init_residual: bool):
    add_weight_decay(model, weight_decay)
    if zero_init_residual:
        zero_init_residual_gammas(model)
    return model


def resnet50(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (224, 224, 3),
    weight_decay: float = 0.0,
    zero_init_residual: bool = False,
) -> keras.Model:
    """`tf_keras.applications.ResNet50`, randomly initialised, returning logits.

    Args:
      num_classes: classes of the output layer.
      input_shape: `(height, width, 3)`, at least 32 x 32.
      weight_decay: Goyal et al.'s lambda (1e-4 in the ImageNet gin file);
        0 for none.
      zero_init_residual: start each residual block's last BN gamma at 0.

    Returns:
      A model `[batch, *input_shape]` float32 -> `[batch, num_classes]` logits.
    """
    model = keras.applications.ResNet50(
        weights=None,
        input_shape=tuple(input_shape),
        classes=num_classes,
        classifier_activation=None,
    )
    return _goyal_options(model, weight_decay, zero_init_residual)


def _bottleneck(x, filters: int, stride: int, conv_shortcut: bool, name: str):
    """tf_keras.applications' `block1` (ResNet v1 bottleneck), same layer names."""
    shortcut = x
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=name + "_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name + "_0_bn")(
            shortcut
        )
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=name + "_1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name + "_1_bn")(x)
    x = keras.layers.Activation("relu", name=name + "_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", name=name + "_2_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name + "_2_bn")(x)
    x = keras.layers.Activation("relu", name=name + "_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=name + "_3_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name + "_3_bn")(x)
    x = keras.layers.Add(name=name + "_add")([shortcut, x])
    return keras.layers.Activation("relu", name=name + "_out")(x)


def small_resnet(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (32, 32, 3),
    filters: Sequence[int] = (8, 16),
    blocks: Sequence[int] = (1, 1),
    stem_filters: int = 8,
    weight_decay: float = 0.0,
    zero_init_residual: bool = False,
    name: str = "small_resnet",
) -> keras.Model:
    """A narrow, shallow ResNet v1 of ResNet-50's bottleneck blocks, for tests.

    Stem: 3x3 conv (`stem_filters`) + BN + ReLU (no pooling, for small
    images); then one stage per entry of `filters`/`blocks` (stride 2 from the
    second stage on), global average pooling and a dense logits layer.

    Returns:
      A model `[batch, *input_shape]` float32 -> `[batch, num_classes]` logits.
    """
    if len(filters) != len(blocks) or not filters:
        raise errors.ConfigError(
            f"filters and blocks must be non-empty and of equal length, got {filters}, {blocks}"
        )
    inputs = keras.Input(tuple(input_shape), name="image")
    x = keras.layers.Conv2D(stem_filters, 3, padding="same", name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    for stage, (width, count) in enumerate(zip(filters, blocks, strict=True)):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            # As tf_keras' `stack1`: a projection shortcut opens every stage.
            x = _bottleneck(
                x, width, stride, conv_shortcut=block == 0, name=f"conv{stage + 2}_block{block + 1}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(num_classes, name="predictions")(x)
    model = keras.Model(inputs, logits, name=name)
    return _goyal_options(model, weight_decay, zero_init_residual)
