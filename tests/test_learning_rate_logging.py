"""callbacks.current_learning_rate: the value logged as `learning_rate`."""

import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import callbacks


def test_constant_rate_of_a_mirrored_optimizer():
    # Under MirroredStrategy the rate is a MirroredVariable, which NumPy
    # cannot convert in the strategy's scope, where Keras runs callbacks
    # (every --strategy=mirrored run failed at its first summary).
    # (No collective all-reduce: it could clash with another test's strategy.)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        optimizer = keras.optimizers.Adagrad(learning_rate=0.001)
        optimizer.build([tf.Variable([1.0])])
        assert callbacks.current_learning_rate(optimizer) == pytest.approx(0.001)


def test_schedule_gives_the_rate_of_the_last_update():
    # tf_keras' `optimizer.learning_rate` is then the rate it last applied.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [1], [1.0, 0.5]
    )  # 0.5 after step 1.
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    variable = tf.Variable([1.0])
    for _ in range(3):  # Updates at steps 0, 1, 2: the last one at rate 0.5.
        optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    assert callbacks.current_learning_rate(optimizer) == 0.5
