"""tf_codistill.models.resnet: ResNet-50's size, logits, weight decay and zero-init gammas."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill.models import resnet


def test_resnet50_paper_size_logits_and_goyal_options():
    # Built once (a few seconds): the options do not change the parameters.
    model = resnet.resnet50(weight_decay=1e-4, zero_init_residual=True)
    # ResNet-50 with 1000 classes has 25,557,032 parameters (He et al. 2016,
    # as counted by Goyal et al.'s and torchvision's models). tf_keras'
    # ResNet50 also gives every convolution a bias (redundant before its
    # BatchNorm, which subtracts the mean): 26,560, one per BN channel; and
    # count_params() includes BN's moving mean and variance (non-trainable):
    # 2 x 26,560 = 53,120. 25,557,032 + 26,560 + 53,120 = 25,636,712.
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    conv_biases = sum(int(layer.bias.shape[0]) for layer in convs)
    bn_channels = sum(int(layer.gamma.shape[0]) for layer in bns)
    assert conv_biases == bn_channels == 26_560
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable - conv_biases == 25_557_032
    assert model.count_params() == 25_636_712
    assert model.output_shape == (None, 1000)
    assert model.layers[-1].activation is keras.activations.linear  # Logits, no softmax.
    # A kernel penalty per convolution (stem 1 + 16 blocks x 3 + 4 projection
    # shortcuts = 53) and for the dense layer: 54.
    assert len(model.losses) == 54
    # 16 bottleneck blocks (3 + 4 + 6 + 3), each with its last BN gamma at 0.
    last_bns = [layer for layer in model.layers if layer.name.endswith("_3_bn")]
    assert len(last_bns) == 16
    assert all(not np.any(layer.gamma.numpy()) for layer in last_bns)
    assert np.all(model.get_layer("conv2_block1_0_bn").gamma.numpy() == 1)
    assert np.all(model.get_layer("conv2_block1_2_bn").gamma.numpy() == 1)


def test_defaults_have_no_penalty_and_unit_gammas():
    model = resnet.small_resnet()
    assert model.losses == []
    assert all(
        np.all(layer.gamma.numpy() == 1)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_small_resnet_shapes_and_count():
    model = resnet.small_resnet(num_classes=10, input_shape=(16, 16, 3), filters=(2,), blocks=(1,))
    # stem conv 3x3x3x8 + 8 = 224, BN 4 x 8 = 32;
    # block: shortcut 1x1 8->8 (+8) = 72, BN 32; 1x1 8->2 (+2) = 18, BN 8;
    #        3x3 2->2 (+2) = 38, BN 8; 1x1 2->8 (+8) = 24, BN 32;
    # dense 8 x 10 + 10 = 90.  Total 224+32+72+32+18+8+38+8+24+32+90 = 578.
    assert model.count_params() == 578
    logits = model(tf.zeros([2, 16, 16, 3]))
    assert logits.shape == (2, 10)


def test_weight_decay_is_half_lambda_squared_norm_of_kernels():
    model = resnet.small_resnet(num_classes=3, input_shape=(8, 8, 3), weight_decay=0.01)
    kernels = [
        layer.kernel
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(model.losses) == len(kernels) == 1 + 2 * 4 + 1  # stem, 2 blocks x 4, dense
    expected = 0.5 * 0.01 * sum(float(tf.reduce_sum(k**2)) for k in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)
    # The gradient of the penalty is lambda * w (Goyal et al.'s update).
    # The gradient of the penalty is lambda * w (Goyal et al.'s update);
    # BatchNorm parameters and biases are not penalised.
    others = [model.get_layer("conv1_bn").gamma, model.get_layer("conv1_conv").bias]
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grads = tape.gradient(penalty, kernels + others)
    for kernel, grad in zip(kernels, grads[: len(kernels)], strict=True):
        np.testing.assert_allclose(grad, 0.01 * kernel.numpy(), rtol=1e-5)
    assert grads[len(kernels) :] == [None, None]


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = resnet.small_resnet(
        num_classes=3, input_shape=(8, 8, 3), filters=(4,), blocks=(2,), zero_init_residual=True
    )
    # The second block has an identity shortcut: its output is relu(input).
    block_in = model.get_layer("conv2_block1_out").output
    block_out = model.get_layer("conv2_block2_out").output
    probe = keras.Model(model.input, [block_in, block_out])
    x, y = probe(tf.random.normal([2, 8, 8, 3]), training=False)
    np.testing.assert_allclose(y, tf.nn.relu(x), atol=1e-6)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        resnet.add_weight_decay(model, -1.0)
