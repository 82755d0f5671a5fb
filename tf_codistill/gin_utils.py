"""gin plumbing: register tf_keras with gin, parse files and bindings with
clear errors, find the shipped gin files, write the operative config.

gin's own TensorFlow registrations (`gin.tf.external_configurables`) refer to
`tf.keras`, which under TF >= 2.16 is Keras 3, a different library; this module
registers the tf_keras classes a config needs under the names `keras.*`:

    train_group.optimizer = @keras.optimizers.Adam
    keras.optimizers.Adam.learning_rate = 3e-4
    train_group.loss = @keras.losses.SparseCategoricalCrossentropy()
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any
from typing import Optional

import gin
import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors
from tf_codistill import layout

__all__ = [
    "GinConfigError",
    "gin_search_paths",
    "parse",
    "query",
    "register_keras",
    "resolve_gin_file",
    "write_operative_config",
]

OPERATIVE_CONFIG = layout.OPERATIVE_CONFIG

_KERAS_MODULES = {
    "keras.optimizers": (
        keras.optimizers,
        ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adafactor", "Nadam", "Adamax", "Ftrl"],
    ),
    "keras.optimizers.schedules": (
        keras.optimizers.schedules,
        ["PiecewiseConstantDecay", "ExponentialDecay", "CosineDecay", "PolynomialDecay"],
    ),
    "keras.losses": (
        keras.losses,
        [
            "SparseCategoricalCrossentropy",
            "CategoricalCrossentropy",
            "BinaryCrossentropy",
            "MeanSquaredError",
        ],
    ),
    "keras.metrics": (
        keras.metrics,
        [
            "SparseCategoricalAccuracy",
            "SparseTopKCategoricalAccuracy",
            "SparseCategoricalCrossentropy",
            "BinaryAccuracy",
            "BinaryCrossentropy",
            "AUC",
            "Mean",
        ],
    ),
    "keras.initializers": (keras.initializers, ["GlorotUniform", "HeNormal", "RandomNormal"]),
}

_registered = False


class _QuietGinIncludes(logging.Filter):
    """Drops gin's "Path not found" ERROR for includes it then finds on the search path.

    gin first tries an include such as 'demo/codistill.gin' as a file inside a
    Python package named `demo`, logging an ERROR when there is none, before
    looking in the search paths where it is found.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and str(record.msg).startswith("Path not found")
        )


logging.getLogger().addFilter(_QuietGinIncludes())


# Kept importable from here (defined in tf_codistill.errors).
GinConfigError = errors.GinConfigError


def register_keras() -> None:
    """Registers tf_keras optimizers, schedules, losses and metrics with gin (once)."""
    global _registered
    if _registered:
        return
    for module_name, (module, names) in _KERAS_MODULES.items():
        for name in names:
            gin.external_configurable(getattr(module, name), module=module_name)
    _registered = True


def gin_search_paths() -> list[str]:
    """Where shipped gin files are looked up, in order.

    A source checkout or editable install finds the repository's `gin/`
    directory next to the package; a regular pip install finds the copy that
    `setup.py` installs under `<prefix>/share/tf_codistill/gin`.
    """
    package_dir = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(os.path.dirname(package_dir), "gin"),
        os.path.join(sys.prefix, "share", "tf_codistill", "gin"),
    ]
    return [c for c in candidates if os.path.isdir(c)]


def resolve_gin_file(path: str) -> str:
    """`path` itself if it exists, else the shipped gin file of that name.

    Raises:
      GinConfigError: no such file here or among the shipped gin files.
    """
    if tf.io.gfile.exists(path):
        return path
    relative = path[len("gin/") :] if path.startswith("gin/") else path
    for root in gin_search_paths():
        candidate = os.path.join(root, relative)
        if os.path.exists(candidate):
            return candidate
    shipped = ", ".join(gin_search_paths()) or "none found"
    raise errors.GinConfigError(f"gin file {path!r} not found (shipped gin files: {shipped})")


def parse(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str] = (),
    finalize: bool = True,
) -> None:
    """Parses gin files then bindings; any mistake becomes one `GinConfigError`.

    Args:
      gin_files: paths, or names of shipped files (e.g. `demo/codistill.gin`).
      gin_bindings: extra `name.param = value` lines, applied last.
      finalize: lock the config afterwards.

    Raises:
      GinConfigError: a file is missing or unparsable, a binding names an
        unknown configurable or parameter, or a value does not parse. The
        message says which file or binding.
    """
    register_keras()
    import tf_codistill.train_lib  # noqa: F401  Registers the configurables.

    for root in gin_search_paths():
        gin.add_config_file_search_path(root)
    files = [resolve_gin_file(f) for f in gin_files]
    for path in files:
        # Any error of gin's parser (ValueError, KeyError, tokenize.TokenError,
        # ImportError...) is a mistake in the user's text: report it as one.
        try:
            gin.parse_config_file(path)
        except Exception as e:  # noqa: BLE001
            raise errors.GinConfigError(f"in gin file {path}: {errors.one_line(e)}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:  # noqa: BLE001
            raise errors.GinConfigError(
                f"in --gin_bindings={binding!r}: {errors.one_line(e)}"
            ) from e
    if finalize:
        gin.finalize()


_REQUIRED = object()


def query(binding_key: str, default: Any = _REQUIRED) -> Any:
    """The value bound to `binding_key`, with references resolved as gin would.

    `gin.query_parameter` returns `@name` references as `ConfigurableReference`
    objects; this resolves them the way gin does when it calls the
    configurable (gin deep-copies the bound value, and a reference's deep copy
    is its target): `@f` becomes the configurable `f` itself and `@f()` a new
    result of calling `f` now. References nested in lists, tuples and dicts
    are resolved too. A configurable obtained from `@f` reads *its own*
    bindings when it is called, so call it while this config is still the
    active one.

    Args:
      binding_key: `module.configurable.parameter`, e.g.
        `tf_codistill.train_lib.train_group.model_fn`.
      default: returned when nothing is bound to `binding_key` (gin does not
        record a configurable's defaults as bindings unless they were used).

    Returns:
      The resolved value.

    Raises:
      GinConfigError: nothing is bound and no default was given, or the value
        names a configurable that is not registered.
    """
    try:
        value = gin.query_parameter(binding_key)
    except ValueError as e:
        if default is not _REQUIRED:
            return default
        raise errors.GinConfigError(f"{binding_key} is not set: {errors.one_line(e)}") from e
    try:
        return copy.deepcopy(value)
    except Exception as e:  # noqa: BLE001  An unknown @reference, or its call failing.
        raise errors.GinConfigError(
            f"cannot resolve {binding_key} = {value!r}: {errors.one_line(e)}"
        ) from e


def write_operative_config(directory: str, filename: str = OPERATIVE_CONFIG) -> Optional[str]:
    """Writes the parameters actually used so far into `directory/filename`."""
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, filename)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(gin.operative_config_str())
    return path
