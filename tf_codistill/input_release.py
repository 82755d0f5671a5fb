"""`fit` and `evaluate` that do not wait for TensorFlow to free their input pipeline.

Freeing a `tf.data` iterator can block for up to a minute or two:
TensorFlow's autotuning thread of each of its pipelines (the dataset's, and
under a distribution strategy the per-device one the strategy adds, which no
`tf.data.Options` of ours reaches) sleeps between optimisations for up to
60 s, and the iterator's destructor waits for it. Cancelling wakes it, but
TensorFlow marks the cancellation as done only after the wake-up, and a
woken thread that checks before that sleeps out its period: on a busy host
that happened most times (docs/cluster.md). Keras frees the iterator as
`fit` (or `evaluate`) returns, on the caller's thread; for a worker of a
multi-worker group that wait held up the group (its other workers wait at
the closing barrier).

`InputReleasingModel` keeps the iterator its train and test functions were
last called with (`KeepsIterator`) and frees it on a helper thread when
`fit` or `evaluate` returns (TensorFlow releases the GIL while it waits). If
they raise, the traceback holds the iterator and the caller frees it as
before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import tf_keras as keras

# The helper threads' names start with this (tests find them by it).
THREAD_PREFIX = "tf_codistill_free_"


class KeepsIterator:
    """A Keras train or test function that keeps the iterator it was last called with.

    Calls go to the Keras function; its public attributes
    (`experimental_get_tracing_count`, ...) are the Keras function's.
    """

    def __init__(self, function: Callable):
        self.function = function
        self.iterator = None

    def __call__(self, iterator, *args, **kwargs):
        self.iterator = iterator
        return self.function(iterator, *args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.function, name)


def release_in_background(function, what: str) -> None:
    """Frees the iterator `function` (a `KeepsIterator`) holds, on a daemon thread.

    The thread holds the last reference; dropping it there runs TensorFlow's
    teardown of the input pipeline off the caller's thread. A process that
    ends first (a launcher's worker exits at once) never waits for it.
    """
    if not isinstance(function, KeepsIterator) or function.iterator is None:
        return
    kept = [function.iterator]
    function.iterator = None

    def release():
        kept.clear()  # The last reference: the pipeline is torn down here.

    threading.Thread(target=release, name=f"{THREAD_PREFIX}{what}_input", daemon=True).start()


class InputReleasingModel(keras.Model):
    """A `tf_keras.Model` whose `fit` and `evaluate` free their input iterator on a thread."""

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:
            release_in_background(self.train_function, "training")

    def evaluate(self, *args, **kwargs):
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            release_in_background(self.test_function, "evaluation")

    def make_train_function(self, force=False):
        """`tf_keras.Model.make_train_function`, keeping the input iterator."""
        function = super().make_train_function(force)
        if not isinstance(function, KeepsIterator):
            function = self.train_function = KeepsIterator(function)
        return function

    def make_test_function(self, force=False):
        """`tf_keras.Model.make_test_function`, keeping the input iterator."""
        function = super().make_test_function(force)
        if not isinstance(function, KeepsIterator):
            function = self.test_function = KeepsIterator(function)
        return function
