"""gin_errors: a keyword a configurable refuses when gin calls it names its binding."""

import gin
import pytest
import tf_keras as keras

from tf_codistill import configurables  # noqa: F401  Registers keras.optimizers.Adam...
from tf_codistill import errors
from tf_codistill import gin_errors


@gin.configurable(module="test_gin_errors")
@gin_errors.explain_binding_errors
def root(optimizer=gin.REQUIRED, layer=None):
    """A gin root that calls what it is given, as train_group does."""
    return optimizer(), layer() if layer else None


def test_a_misspelled_keyword_of_a_keras_class_names_the_binding():
    gin.parse_config(
        [
            "test_gin_errors.root.optimizer = @keras.optimizers.Adam",
            "keras.optimizers.Adam.learnin_rate = 0.1",
        ]
    )
    with pytest.raises(errors.GinConfigError) as raised:
        root()
    # What a program prints (gin appends its call context to the error).
    message = errors.one_line(raised.value)
    assert message.startswith(
        "gin binding keras.optimizers.Adam.learnin_rate: Adam has no parameter "
        "'learnin_rate'; did you mean 'learning_rate'? (TypeError: learnin_rate is not"
    ), message
    assert "\n" not in message
    # Still a ValueError for code that catches one.
    assert isinstance(raised.value, ValueError)


def test_a_keras_layer_keyword_too():
    gin.external_configurable(keras.layers.Dense, module="test_gin_errors")
    gin.parse_config(
        [
            "test_gin_errors.root.optimizer = @keras.optimizers.SGD",
            "test_gin_errors.root.layer = @test_gin_errors.Dense",
            "test_gin_errors.Dense.units = 3",
            "test_gin_errors.Dense.activaton = 'relu'",
        ]
    )
    with pytest.raises(errors.GinConfigError, match="did you mean 'activation'"):
        root()


def test_a_bad_value_of_a_named_parameter_keeps_its_own_error():
    # `units` is a named parameter of Dense: its value, not its name, is wrong.
    gin.external_configurable(keras.layers.Dense, module="test_gin_errors_values")
    gin.parse_config(
        [
            "test_gin_errors.root.optimizer = @keras.optimizers.SGD",
            "test_gin_errors.root.layer = @test_gin_errors_values.Dense",
            "test_gin_errors_values.Dense.units = -1",
        ]
    )
    with pytest.raises(ValueError) as raised:
        root()
    assert not isinstance(raised.value, errors.GinConfigError)


def test_an_error_not_raised_by_a_configurable_is_left_alone():
    @gin_errors.explain_binding_errors
    def fails():
        raise TypeError("learning_rate is not a valid argument")

    with pytest.raises(TypeError) as raised:
        fails()
    assert not isinstance(raised.value, errors.GinConfigError)
    assert gin_errors.binding_error(TypeError("x")) is None
