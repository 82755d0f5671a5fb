"""gin plumbing: parse files and bindings with clear errors, find the shipped
gin files, read bound values back.

What a config can name is registered in `configurables.py`, which `parse`
imports: a config needs nothing else.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf

from tf_codistill import configurables  # noqa: F401  What a config can name.
from tf_codistill import errors
from tf_codistill import gin_quiet

__all__ = [
    "GinConfigError",
    "gin_search_paths",
    "parse",
    "query",
    "resolve_gin_file",
]


logging.getLogger().addFilter(gin_quiet.QuietGinIncludes())


# Kept importable from here (defined in tf_codistill.errors).
GinConfigError = errors.GinConfigError


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
