"""The errors tf_codistill raises, and the one line a program prints for them.

Everything the library raises on bad input (an argument, a flag, a gin file or
binding, the data, the run directory) or on a bad peer derives from `Error`, so
a program needs one `except errors.Error` to tell "a mistake we detected, say
it in one line" from a bug (a full traceback helps more): `tf_codistill.app`
does that for every binary.

Each class also keeps the builtin base that user code may already catch: a
bad value is a `ValueError`, a bad type a `TypeError`, a missing input file a
`FileNotFoundError`, an exchange dir that cannot be written a `RuntimeError`.
The names the library exported before this module existed stay importable
from where they were (`exchange.PeerCheckpointError`,
`tf_codistill.PeerMismatchError`, `gin_utils.GinConfigError`,
`evaluation.EvaluationError`, ...).

No TensorFlow import: binaries and the local launcher use this module too.
"""

from __future__ import annotations

import re

__all__ = [
    "CheckpointContentError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotReadyError",
    "ConfigError",
    "ConfigTypeError",
    "DataNotFoundError",
    "Error",
    "EvaluationError",
    "ExchangeWriteError",
    "GinConfigError",
    "GroupOwnedError",
    "MalformedLineError",
    "NoDistillationError",
    "PeerCheckpointError",
    "PeerMismatchError",
    "RunMismatchError",
    "check_int",
    "check_tf_keras",
    "one_line",
]


class Error(Exception):
    """Base of every error tf_codistill raises for bad input or a bad peer."""


class ConfigError(Error, ValueError):
    """A bad value (argument, flag, gin binding, setting, data); the message names it."""


class ConfigTypeError(Error, TypeError):
    """A value of the wrong type; the message names it and the type expected."""


class DataNotFoundError(Error, FileNotFoundError):
    """Input data that is not where the configuration says; the message says where to get it."""


class MalformedLineError(ConfigError):
    """A line of a data file that cannot be parsed; the message names the field."""


class GinConfigError(ConfigError):
    """A gin file or binding is wrong; the message names it."""


class GroupOwnedError(ConfigError):
    """Another live process writes this group's directory (the same group started twice)."""


class RunMismatchError(ConfigError):
    """A root_dir whose saved state belongs to another model (resumed with a changed config)."""


class NoDistillationError(Error, RuntimeError):
    """A codistilling group that never distilled (and was not allowed to)."""


class PeerMismatchError(ConfigError):
    """A peer's checkpoint is of another architecture: a configuration mistake."""


class EvaluationError(ConfigError):
    """A mistake in what to evaluate (no such group, no checkpoint, bad config)."""


class CheckpointError(Error):
    """A published checkpoint that cannot be used now; the message says why.

    Missing, truncated, corrupt, deleted while read, of another architecture,
    non-finite: the reader keeps what it had and may try the next one.
    """


# The exchange's name for it: a peer's checkpoint that cannot be used.
PeerCheckpointError = CheckpointError


class CheckpointContentError(CheckpointError):
    """A checkpoint that was read and is bad: refused for good, not retried.

    Other variables, NaN or Inf, a step other than its name's, files of absurd
    size. Any other `CheckpointError` (an I/O error, files vanished or not yet
    complete) may be transient, and a reader tries again, a bounded number of
    times.
    """


class CheckpointMismatchError(CheckpointContentError):
    """A checkpoint whose variables are not this model's (names, shapes, dtypes)."""


class CheckpointNotReadyError(CheckpointError):
    """A checkpoint some of whose files cannot be seen now: the reader retries it.

    Not yet visible (an object store may list or serve a new object a little
    later than its writer finished it), or no longer (deleted by the writer's
    cleanup after a newer one was published). Unlike the other
    `CheckpointError`s, this says nothing against the checkpoint itself.
    """


class ExchangeWriteError(Error, RuntimeError):
    """A group cannot write into its directory (full or unwritable exchange dir)."""


def _is_keras3(value) -> bool:
    # Keras 3's classes live in `keras.src...`; tf_keras's in `tf_keras...`.
    return any(c.__module__.split(".")[0] == "keras" for c in type(value).__mro__)


def check_tf_keras(values, where: str) -> None:
    """Raises if any of `values` (nested in lists, tuples, dicts) is a Keras 3 object.

    Under TensorFlow 2.16+ `tf.keras` is Keras 3, another library: its
    optimizers, losses and callbacks fail deep inside a tf_keras `fit`
    ("Could not interpret optimizer identifier", "'EarlyStopping' object has
    no attribute '_implements_train_batch_hooks'").

    Raises:
      ConfigTypeError: naming the object, where it was given, and the fix.
    """
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif _is_keras3(value):
            raise ConfigTypeError(
                f"{where} got {type(value).__name__} from Keras 3 ({type(value).__module__}), "
                "which tf.keras is under TensorFlow 2.16+; tf_codistill runs on tf_keras: write "
                "`import tf_keras as keras` and use keras.*, or set TF_USE_LEGACY_KERAS=1 "
                "before importing TensorFlow"
            )


def check_int(name: str, value, minimum: int) -> int:
    """`value` as an int if it is an integer >= `minimum` (not a bool).

    Raises:
      ConfigError: naming `name`, the bound and the value.
    """
    if isinstance(value, bool) or not _is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_integer(value) -> bool:
    # numpy integers and integral floats too (gin reads `3e3` as a float).
    try:
        return int(value) == value
    except (TypeError, ValueError, OverflowError):
        return False


# What gin appends to an error raised inside a configurable it called.
_GIN_CONTEXT = "\n  In call to configurable "
# Long enough for a message of ours that names a directory or two (a run's
# root can be a long path) with its advice; TensorFlow's longest messages
# (a restore's every mismatched variable) are cut.
_LIMIT = 1000
# Of a cut message, what is kept of its end: an OS error names its reason last,
# after a path that can be long ("<path>; No space left on device").
_TAIL = 300


def one_line(error: BaseException, with_type: bool = False) -> str:
    """`error`'s message on one line, for a log line or a program's last words.

    TensorFlow's op decorations (`{{function_node ...}}`, `[Op:...]`), the
    context gin appends to errors raised inside a configurable, gin's caret
    lines and line breaks are dropped. A message longer than 1000 characters
    keeps its first 700 and its last 300 (where an OS error names its reason,
    after a path), joined by " ... ".

    Args:
      error: any exception (a `tf.errors.OpError`'s own message is used).
      with_type: start with the exception's class name (`IndexError: ...`),
        for reasons where the type says something (a failed restore).

    Returns:
      The message, never empty.
    """
    # tf.errors.OpError keeps its text in `.message`; str() adds op context.
    message = getattr(error, "message", None)
    if not isinstance(message, str):
        message = str(error)
    message = message.split(_GIN_CONTEXT)[0]
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    message = re.sub(r"\[Op:\w+\].*", "", message, flags=re.DOTALL)
    lines = [line.strip() for line in message.splitlines()]
    message = " ".join(line for line in lines if line and set(line) != {"^"})
    if len(message) > _LIMIT:
        message = message[: _LIMIT - _TAIL] + " ... " + message[-_TAIL:]
    message = message or type(error).__name__
    return f"{type(error).__name__}: {message}" if with_type else message
