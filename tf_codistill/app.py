"""The main of every tf_codistill program: a detected mistake is one line and exit code 1.

A binary is flags, gin and one call (as dopamine's are):

    from tf_codistill import app
    ...
    @app.one_line_errors
    def main(argv):
        ...one call into the library...

    if __name__ == "__main__":
        app.run(main)

Whatever the library raises as `tf_codistill.errors.Error` (a bad flag, gin
file, binding, setting or input file; an exchange dir it cannot write) ends
the program with `<program>: <one line>` on stderr and exit code 1, where a
user reads it. Anything else is a bug or an environment problem TensorFlow
reports better: it keeps its traceback.

No TensorFlow import: the local launcher uses this without loading it.
"""

from __future__ import annotations

import functools
import logging as std_logging
import os
import sys
from collections.abc import Callable

from absl import app as absl_app
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
            sys.exit(f"{program}: {message}")

    return wrapped


def run(main: Callable) -> None:
    """`absl.app.run(main)`: parses the flags, then calls `main`."""
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
