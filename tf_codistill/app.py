"""The main of every tf_codistill program: a detected mistake is one line and exit code 1.

A program (`tf_codistill/programs/`) is flags, gin and one call (as dopamine's
binaries are):

    from tf_codistill import app
    ...
    @app.one_line_errors
    def main(argv):
        ...one call into the library...

    def run():  # The console script's entry point.
        app.run(main, sys.modules[__name__])

    if __name__ == "__main__":
        run()

Whatever the library raises as `tf_codistill.errors.Error` (a bad flag, gin
file, binding, setting or input file; an exchange dir it cannot write) ends
the program with `<program>: <one line>` on stderr and exit code 1, where a
user reads it. Anything else is a bug or an environment problem TensorFlow
reports better: it keeps its traceback.

No TensorFlow import: the local launcher uses this without loading it.
"""

from __future__ import annotations

import atexit
import functools
import logging as std_logging
import os
import sys
import types
from collections.abc import Callable
from typing import Optional

from absl import app as absl_app
from absl import flags
from absl import logging

from tf_codistill import errors

__all__ = ["exit_now", "one_line_errors", "run"]

# Before TensorFlow loads (binaries import this first): its C++ INFO and
# WARNING lines (oneDNN, CUDA probing) would drown the program's own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def one_line_errors(main: Callable) -> Callable:
    """Wraps a program's `main(argv)`: a library `Error` exits with one line.

    The program's name in the message is the base name of the file `main`
    is defined in (`train.py: ...`).
    """
    program = os.path.basename(main.__code__.co_filename)

    @functools.wraps(main)
    def wrapped(argv):
        # TensorFlow's own INFO lines (checkpoint sharding...) drown the run's.
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
        try:
            return main(argv)
        except errors.Error as e:
            message = errors.one_line(e)
            logging.error("%s: %s", type(e).__name__, message)
            # The one line is the last: objects collected at exit (a
            # checkpoint half restored from a mismatched run) would warn after
            # it. At exit only: a caller that catches SystemExit (a test)
            # keeps its logging.
            atexit.register(_quiet_at_exit)
            sys.exit(f"{program}: {message}")

    return wrapped


def _quiet_at_exit() -> None:
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    logging.set_verbosity(logging.ERROR)


_HELP = {"--help": True, "-h": True, "-?": True, "--helpshort": True, "--helpfull": False}


def run(main: Callable, program: Optional[types.ModuleType] = None) -> None:
    """`absl.app.run(main)`: parses the flags, then calls `main`.

    Args:
      main: the program's main, wrapped in `one_line_errors`.
      program: the module defining the program's flags, when it is not
        `__main__` itself: a console script (`tf-codistill-train`) or a
        `binaries/*.py` shim imports it. absl's `--help` lists the flags and
        prints the docstring of `__main__` only; this makes them the
        program's.
    """
    if program is not None:
        _present_as_main(program)
    # absl exits 1 after --help; asked-for help is a success (exit 0).
    for arg in sys.argv[1:]:
        if arg in _HELP:
            absl_app.usage(shorthelp=_HELP[arg], writeto_stdout=True, exitcode=0)
        if arg == "--":
            break
    absl_app.run(main)


def exit_now(code: int = 0) -> None:
    """Ends the process at once, skipping Python's teardown; logs and output are flushed.

    For a worker of a multi-worker group whose work is done (and, after
    `train_lib.train_group`'s closing barrier, its group's too). Tearing
    TensorFlow down takes seconds, and a worker still in it when another
    worker's process has gone (the chief's hosts the coordination service)
    logs "Failed to send RPC to coordination service" errors; exiting at
    once, the workers leave together. Nothing in the library relies on exit
    handlers: files are closed when training ends.
    """
    logging.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _present_as_main(program: types.ModuleType) -> None:
    main = sys.modules["__main__"]
    if program is main:
        return
    main.__doc__ = program.__doc__
    # absl's short help lists the key flags of the module named sys.argv[0].
    for flag in flags.FLAGS.get_key_flags_for_module(program.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
