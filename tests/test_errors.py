"""errors: one base class with the builtin bases kept, one one-line formatter."""

import pytest
import tensorflow as tf

import tf_codistill
from tf_codistill import errors
from tf_codistill import evaluation
from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill.datasets import criteo


@pytest.mark.parametrize(
    "error, builtin",
    [
        (errors.ConfigError, ValueError),
        (errors.ConfigTypeError, TypeError),
        (errors.DataNotFoundError, FileNotFoundError),
        (errors.MalformedLineError, ValueError),
        (errors.GinConfigError, ValueError),
        (errors.PeerMismatchError, ValueError),
        (errors.EvaluationError, ValueError),
        (errors.ExchangeWriteError, RuntimeError),
        (errors.CheckpointError, Exception),
        (errors.CheckpointMismatchError, errors.CheckpointError),
    ],
)
def test_every_error_is_a_library_error_and_keeps_its_builtin_base(error, builtin):
    assert issubclass(error, errors.Error) and issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("x")


def test_the_old_names_are_the_same_classes():
    assert exchange.PeerCheckpointError is errors.CheckpointError
    assert exchange.CheckpointMismatchError is errors.CheckpointMismatchError
    assert exchange.ExchangeWriteError is errors.ExchangeWriteError
    assert tf_codistill.ExchangeWriteError is errors.ExchangeWriteError
    assert tf_codistill.PeerMismatchError is errors.PeerMismatchError
    assert gin_utils.GinConfigError is errors.GinConfigError
    assert evaluation.EvaluationError is errors.EvaluationError
    assert evaluation.CheckpointError is errors.CheckpointError
    assert criteo.MalformedLineError is errors.MalformedLineError


def test_one_line_drops_tensorflow_op_decorations():
    error = tf.errors.ResourceExhaustedError(
        None,
        None,
        "{{function_node __wrapped__CreateSummaryFileWriter_device_/job:localhost}} "
        "/r/events.v2; No space left on device\n\tFailed to flush 1 events "
        "[Op:CreateSummaryFileWriter] name: ",
    )
    assert (
        errors.one_line(error) == "/r/events.v2; No space left on device Failed to flush 1 events"
    )


def test_one_line_drops_gin_context_and_carets_and_can_name_the_type():
    error = ValueError(
        "No configurable matching 'trian_steps'.\n  In bindings string line 1\n"
        "    train_group.trian_steps = 5\n                ^\n"
        "  In call to configurable 'train_group' (<function train_group at 0x1>)"
    )
    assert errors.one_line(error) == (
        "No configurable matching 'trian_steps'. In bindings string line 1 "
        "train_group.trian_steps = 5"
    )
    assert errors.one_line(IndexError("read less"), with_type=True) == "IndexError: read less"
    assert errors.one_line(KeyError()) == "KeyError"


def test_one_line_cuts_long_messages_in_the_middle_keeping_the_reason():
    text = errors.one_line(ValueError("x" * 3000))
    assert text == "x" * 700 + " ... " + "x" * 300
    # An OS error as TensorFlow words it: a very long path, then the reason.
    path = "/tmp/" + "/".join(["a_long_directory_name"] * 60) + "/ckpt-105_temp/part-0.tempstate1"
    text = errors.one_line(OSError(f"{path}; No space left on device"))
    assert text.startswith("/tmp/a_long_directory_name/") and " ... " in text
    assert text.endswith("; No space left on device") and len(text) == 1005
    # Ours, naming a run directory under a deep temporary path, stay whole.
    message = (
        f"group 0's directory {path[:300]} is in use by pid 7: two processes must not train it"
    )
    assert errors.one_line(RuntimeError(message)) == message


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), (tf.constant(2).numpy(), 2)])
def test_check_int_accepts_integers(value, expected):
    assert errors.check_int("n", value, minimum=1) == expected and type(expected) is int


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "3", None])
def test_check_int_names_the_value(value):
    with pytest.raises(errors.ConfigError, match=rf"n must be an integer >= 1, got {value!r}"):
        errors.check_int("n", value, minimum=1)
