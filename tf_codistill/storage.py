"""How the exchange writes files, given the store a path is on.

Two kinds of store hold a run directory:

* **filesystems** (local disk, NFS, Lustre, ...) rename atomically: a file is
  written under a temporary name and renamed into place, so a reader sees the
  old file or the new one, never half of one;
* **object stores** (`gs://`, `s3://`) have no rename (TensorFlow's GCS
  filesystem emulates one by copying, then deleting), but an object appears
  whole when its upload completes. Writes to one object are rate-limited
  (GCS: about one per second), and a listing or a read may briefly show an
  object's previous version, or none.

`Store` is the exchange's writing side for either kind: `write` puts a whole
file (a temporary file then a rename on a filesystem, one upload on an
object store), `upload` copies a local file there the same way, and
`min_write_interval_s` says how often one object may be written. Readers use
`tf.io.gfile` and TensorFlow's checkpoint reader directly: what they must
tolerate (an older state file, a checkpoint not yet or no longer visible) is
handled where they read (`exchange.py`).

`store_for(path)` picks the store by the path's scheme; `register` puts
another one in front of a directory (tests put an object-store emulator,
`tf_codistill.testing.object_store`, in front of a local one).
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from typing import Optional

import tensorflow as tf

__all__ = [
    "OBJECT_STORE_SCHEMES",
    "Store",
    "register",
    "store_for",
]

# Schemes whose stores have no atomic rename and rate-limit writes per object.
OBJECT_STORE_SCHEMES = ("gs", "s3")
# GCS: "There is a limit on writes to the same object name of once per second."
OBJECT_WRITE_INTERVAL_S = 1.0


class Store:
    """Whole-file writes on the store under a directory (a filesystem by default).

    Args:
      atomic_rename: the store renames atomically (a filesystem). Without it
        (an object store) files are written in one piece under their final
        name and never renamed.
      min_write_interval_s: writes to one object at most this often (0: no limit).
      clock: monotonic seconds, against which writers keep to that interval.
    """

    def __init__(
        self,
        atomic_rename: bool = True,
        min_write_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.atomic_rename = atomic_rename
        self.min_write_interval_s = min_write_interval_s
        self.clock = clock

    def write(self, path: str, data: bytes) -> None:
        """Writes `path` whole: readers see the previous content or this one.

        Raises:
          tf.errors.OpError: the store refused the write.
        """
        if not self.atomic_rename:
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(data)
            return
        temporary = f"{path}.tmp{uuid.uuid4().hex}"
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(temporary, path, overwrite=True)

    def upload(self, source: str, path: str) -> None:
        """Copies the file `source` (any `tf.io.gfile` path) to `path`, whole."""
        if not self.atomic_rename:
            tf.io.gfile.copy(source, path, overwrite=True)
            return
        temporary = f"{path}.tmp{uuid.uuid4().hex}"
        tf.io.gfile.copy(source, temporary, overwrite=True)
        tf.io.gfile.rename(temporary, path, overwrite=True)

    def remove(self, path: str) -> None:
        """Deletes `path`; one already gone is no error."""
        try:
            tf.io.gfile.remove(path)
        except tf.errors.NotFoundError:
            pass

    def makedirs(self, path: str) -> None:
        tf.io.gfile.makedirs(path)


_FILESYSTEM = Store(atomic_rename=True)
_OBJECT_STORE = Store(atomic_rename=False, min_write_interval_s=OBJECT_WRITE_INTERVAL_S)
_registered: dict[str, Store] = {}
_registered_lock = threading.Lock()


def _scheme(path: str) -> Optional[str]:
    head, sep, _ = str(path).partition("://")
    return head.lower() if sep else None


def _normalized(path: str) -> str:
    return str(path).rstrip("/") if "://" in str(path) else posixpath.normpath(str(path))


def store_for(path: str) -> Store:
    """The store under `path`: a registered one, else by scheme."""
    path = _normalized(path)
    with _registered_lock:
        for prefix in sorted(_registered, key=len, reverse=True):
            if path == prefix or path.startswith(prefix + "/"):
                return _registered[prefix]
    return _OBJECT_STORE if _scheme(path) in OBJECT_STORE_SCHEMES else _FILESYSTEM


@contextlib.contextmanager
def register(directory: str, store: Store):
    """Within the block, `store_for` returns `store` for `directory` and below it."""
    prefix = _normalized(directory)
    with _registered_lock:
        previous = _registered.get(prefix)
        _registered[prefix] = store
    try:
        yield store
    finally:
        with _registered_lock:
            if previous is None:
                _registered.pop(prefix, None)
            else:
                _registered[prefix] = previous
