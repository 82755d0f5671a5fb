"""An offline object store (GCS-like) in front of a local directory, for tests.

`ObjectStoreEmulator` is a `storage.Store` with the behaviours of `gs://`
that the exchange must survive, and nothing else:

* **whole objects, no rename**: a write replaces a whole object under its
  final name; `rename` raises (the store has none; TensorFlow's GCS
  filesystem fakes one by copy, then delete);
* **rate limit**: a second write to one object within
  `min_write_interval_s` (GCS: about one per second) raises
  `tf.errors.ResourceExhaustedError`, as GCS answers 429;
* **late visibility**: a write or a delete shows after `lag_s` (a number,
  or a function of the object's path); until then readers see the object's
  previous version, or none. `hold(pattern)` keeps matching writes invisible
  until `release()`, for a test to choose what a reader sees.

The directory holds what readers see: they read it with `tf.io.gfile` and
TensorFlow's checkpoint reader as they would read `gs://`, and every object
appears there whole (moved into place with `os.replace`). Writes must come
through the emulator: register it with `storage.register(directory, store)`.
Every write is recorded (`writes`, `write_counts`), so a test can check
what the writer did.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Optional
from typing import Union

import tensorflow as tf

from tf_codistill import storage

__all__ = ["ObjectStoreEmulator"]


class ObjectStoreEmulator(storage.Store):
    """Object-store semantics for writes under a local `directory`.

    Args:
      directory: the local directory readers read (created if missing).
      lag_s: seconds before a write or delete is visible: a number, or a
        function of the object's path relative to `directory`.
      min_write_interval_s: the per-object write rate limit.
      clock: monotonic seconds (the rate limit and lags use it).
    """

    def __init__(
        self,
        directory: str,
        lag_s: Union[float, Callable[[str], float]] = 0.0,
        min_write_interval_s: float = storage.OBJECT_WRITE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(
            atomic_rename=False, min_write_interval_s=min_write_interval_s, clock=clock
        )
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._lag = lag_s if callable(lag_s) else (lambda _: float(lag_s))
        # Beside the directory: objects are moved into place with os.replace.
        self._pending_dir = tempfile.mkdtemp(
            prefix=".object_store_pending_", dir=os.path.dirname(self.directory)
        )
        self._lock = threading.Lock()
        # (due time or None while held, relpath, staged file or None for a delete).
        self._pending: list[list] = []
        self._held: list[str] = []
        self._last_write: dict[str, float] = {}
        self.writes: list[str] = []
        self.rate_limited: list[str] = []
        self._stop = threading.Event()
        self._applier = threading.Thread(target=self._apply_loop, daemon=True)
        self._applier.start()

    # What the exchange calls (storage.Store).

    def write(self, path: str, data: bytes) -> None:
        relpath = self._relpath(path)
        with self._lock:
            now = self.clock()
            last = self._last_write.get(relpath)
            if last is not None and now - last < self.min_write_interval_s:
                self.rate_limited.append(relpath)
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"429 rate limit exceeded for object {relpath}"
                )
            self._last_write[relpath] = now
            self.writes.append(relpath)
            staged = os.path.join(self._pending_dir, f"{len(self.writes)}")
            with open(staged, "wb") as f:
                f.write(data)
            self._pending.append([self._due(relpath, now), relpath, staged])
        self._apply_due()

    def upload(self, source: str, path: str) -> None:
        with tf.io.gfile.GFile(source, "rb") as f:
            self.write(path, f.read())

    def remove(self, path: str) -> None:
        relpath = self._relpath(path)
        with self._lock:
            self._pending.append([self._due(relpath, self.clock()), relpath, None])
        self._apply_due()

    def makedirs(self, path: str) -> None:
        os.makedirs(os.path.join(self.directory, self._relpath(path)), exist_ok=True)

    @staticmethod
    def rename(source: str, target: str) -> None:
        """An object store has no rename."""
        raise tf.errors.UnimplementedError(None, None, f"no rename on an object store: {source}")

    # What tests call.

    @property
    def write_counts(self) -> dict[str, int]:
        """Writes per object (relative path)."""
        counts: dict[str, int] = {}
        for relpath in self.writes:
            counts[relpath] = counts.get(relpath, 0) + 1
        return counts

    def hold(self, pattern: str) -> None:
        """Changes to objects matching `pattern` (fnmatch) stay invisible until `release`."""
        with self._lock:
            self._held.append(pattern)

    def release(self) -> None:
        """Makes every held write visible, in the order they were made."""
        with self._lock:
            self._held.clear()
            for change in self._pending:
                if change[0] is None:
                    change[0] = -float("inf")
        self._apply_due()

    def settle(self, timeout_s: float = 10.0) -> None:
        """Waits until every write not held is visible."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not any(c[0] is not None for c in self._pending):
                    return
            self._apply_due()
            time.sleep(0.005)
        raise TimeoutError(f"writes still invisible after {timeout_s} s")

    def pending(self) -> list[str]:
        """Objects written or deleted but not visible yet, oldest first."""
        with self._lock:
            return [c[1] for c in self._pending]

    def close(self) -> None:
        self._stop.set()
        self._applier.join(timeout=5)
        shutil.rmtree(self._pending_dir, ignore_errors=True)

    def __enter__(self) -> ObjectStoreEmulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Internals.

    def _relpath(self, path: str) -> str:
        path = os.path.abspath(str(path))
        if not (path == self.directory or path.startswith(self.directory + os.sep)):
            raise ValueError(f"{path} is not under the emulated store {self.directory}")
        return os.path.relpath(path, self.directory)

    def _due(self, relpath: str, now: float) -> Optional[float]:
        if any(fnmatch.fnmatch(relpath, p) for p in self._held):
            return None
        return now + self._lag(relpath)

    def _apply_due(self) -> None:
        """Makes visible the changes whose time has come, in order per object."""
        with self._lock:
            now = self.clock()
            waiting = set()  # Objects with an earlier change not visible yet.
            for change in list(self._pending):
                due, relpath, staged = change
                if due is None or due > now or relpath in waiting:
                    waiting.add(relpath)
                    continue
                self._pending.remove(change)
                target = os.path.join(self.directory, relpath)
                if staged is None:
                    if os.path.exists(target):
                        os.remove(target)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(staged, target)

    def _apply_loop(self) -> None:
        while not self._stop.wait(0.005):
            self._apply_due()
