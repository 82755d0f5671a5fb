"""Errors raised inside a gin configurable's call, traced back to the binding.

A keyword bound to a class that takes `**kwargs` (Keras optimizers, layers,
losses) cannot be checked when gin parses the config: the class refuses it
when gin calls it, deep inside training, under a long traceback. The gin root
(`train_lib.train_group`) is decorated with `explain_binding_errors`, which
turns such an error into one `GinConfigError` naming the binding.

No TensorFlow import.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any
from typing import Optional

import gin

from tf_codistill import errors

__all__ = ["binding_error", "explain_binding_errors"]


# What gin appends to an error raised inside a configurable it called.
_IN_CALL = re.compile(r"In call to configurable '([^']+)'")


def _bindings_of(name: str) -> list[tuple[str, str, Any]]:
    """(selector, parameter, configurable) of every binding of a configurable called `name`.

    gin has no public listing of the parsed bindings or of the registered
    configurables: `gin.config._CONFIG` maps (scope, selector) to {parameter:
    value}, and `gin.config._REGISTRY` selectors to what they wrap. Where they
    are missing (another gin version), nothing is found and the error keeps
    its traceback.
    """
    config = getattr(gin.config, "_CONFIG", None) or {}
    registry = getattr(gin.config, "_REGISTRY", None)
    found = []
    for key, parameters in config.items():
        selector = key[1] if isinstance(key, tuple) else str(key)
        if selector.rsplit(".", 1)[-1] != name or registry is None:
            continue
        try:
            wrapped = registry.get_match(selector).wrapped
        except Exception:  # noqa: BLE001  Not registered (gin then refused it at parse).
            continue
        found.extend((selector, p, wrapped) for p in parameters)
    return found


def _named_parameters(target: Any) -> Optional[list[str]]:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return [
        p.name
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def binding_error(error: BaseException) -> Optional[errors.GinConfigError]:
    """The misspelled gin binding that `error`, raised in a configurable's call, is about.

    A keyword bound to a class that takes `**kwargs` (Keras optimizers,
    layers, losses) cannot be checked when gin parses: the class refuses it
    when gin calls it, deep inside training. Such an error names the
    configurable (gin's note) and the keyword (the class's own message).

    Returns:
      A `GinConfigError` naming the binding and the parameters it may have
      meant, or None when `error` is not about a keyword bound in gin that
      is not a named parameter of its configurable.
    """
    message = str(error)
    called = _IN_CALL.findall(message)
    if not called:
        return None
    name = called[0]  # The innermost call: the one that refused the keyword.
    text = message.split("In call to configurable")[0]
    for selector, parameter, wrapped in _bindings_of(name):
        named = _named_parameters(wrapped)
        if named is None or parameter in named:
            continue
        if not re.search(rf"(?<![\w.]){re.escape(parameter)}(?!\w)", text):
            continue
        close = difflib.get_close_matches(parameter, named, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(named)}"
        return errors.GinConfigError(
            f"gin binding {selector}.{parameter}: {name} has no parameter {parameter!r}{hint} "
            f"({errors.one_line(error, with_type=True)})"
        )
    return None


def explain_binding_errors(function: Callable) -> Callable:
    """Decorates a gin root: a keyword its configurables refuse becomes a `GinConfigError`.

    See `binding_error`; any other error is raised as it was.
    """

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except TypeError as e:
            # An unknown keyword is a TypeError (Keras: "Keyword argument not
            # understood", "... is not a valid argument"); a bad value of a
            # known one (often a ValueError naming it) is left as it is.
            explained = binding_error(e)
            if explained is None:
                raise
            raise explained from e

    return wrapped
