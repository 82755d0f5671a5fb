"""Checkpoint exchange between codistilling groups.

Groups talk only through checkpoints in a shared directory (any
`tf.io.gfile` path: local, NFS, `gs://`):

    <exchange_dir>/group_<i>/checkpoint        state file (TensorFlow's format)
    <exchange_dir>/group_<i>/ckpt-<step>.index
    <exchange_dir>/group_<i>/ckpt-<step>.data-00000-of-00001

(names owned by `layout.py`).

Each published checkpoint is a `tf.train.Checkpoint(model=student, step=step)`
holding the student's variables only (no optimizer, no teachers), numbered by
the group's train step. Anyone can restore one with

    tf.train.Checkpoint(model=m).restore(tf.train.latest_checkpoint(d)).expect_partial()

Reading a peer is defensive, because the writer is another job that may be
saving, cleaning up, crashing or misconfigured while we read:

1. the peer's `checkpoint` state file is parsed for the *name* of its latest
   checkpoint only; the path is rebuilt from our own directory name, so
   nothing in a peer's files can point us elsewhere;
2. the checkpoint's index (no tensor data) is checked against the signature
   of our own model (every variable present, same shapes and dtypes, nothing
   extra), so a mismatched or absurdly large checkpoint is refused before any
   tensor is read;
3. the tensors are restored into a *staging* copy of the model that lives
   outside any distribution strategy, and checked to be finite;
4. only then does `TeacherLoader.write` copy the staging values into the teacher.

A failure at any stage raises `PeerCheckpointError` with the reason and leaves
the teacher exactly as it was. A checkpoint whose files cannot be seen now
(not visible yet on an object store, or deleted by the writer's cleanup)
raises its subclass `CheckpointNotReadyError`: the reader keeps its teacher
and tries again later, where other failures refuse that checkpoint for good.
Peers' checkpoints are read as tensors only: nothing is unpickled,
deserialised as a Keras model or executed. Steps 2-3 are `restore_validated`,
which evaluation uses too (without the checks a peer's files need and a run's
own do not: sizes, finiteness, the step).

This module is the exchange *medium*: `Publisher` writes a group's
checkpoints, `latest_checkpoint` and `TeacherLoader` read a peer's. The same
medium works on a filesystem and on an object store (`gs://`): `storage.py`
says how each writes, and docs/fault_tolerance.md what a reader may see on
each. Another medium (a parameter service) would provide the same three and
be chosen in `exchange_client.ExchangeClient`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging as std_logging
import math
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_codistill import errors
from tf_codistill import layout
from tf_codistill import storage

__all__ = [
    "BackgroundPublisher",
    "CHECKPOINT_NAME",
    "CheckpointMismatchError",
    "CheckpointNotReadyError",
    "CheckpointRef",
    "ExchangeWriteError",
    "ModelSignature",
    "PeerCheckpointError",
    "PublishFailed",
    "Publisher",
    "TeacherLoader",
    "checkpoint_prefix",
    "group_dir",
    "latest_checkpoint",
    "outside_strategy",
    "restore_validated",
    "writing",
]

# The exchange's public names for what layout.py and errors.py own.
CHECKPOINT_NAME = layout.CHECKPOINT_NAME
group_dir = layout.group_dir
checkpoint_prefix = layout.checkpoint_prefix
PeerCheckpointError = errors.PeerCheckpointError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointNotReadyError = errors.CheckpointNotReadyError
ExchangeWriteError = errors.ExchangeWriteError

_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)
# A CheckpointManager state file is a few hundred bytes; anything this large
# is not one.
_MAX_STATE_FILE_BYTES = 1 << 20
# An index lists names, shapes and offsets: small. Bigger is not an index of ours.
_MAX_INDEX_BYTES = 64 << 20
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_MODEL_PREFIX = "model/"
# Variables a compiled student's checkpoint may carry besides its weights.
_IGNORED_MODEL_PREFIXES = ("model/optimizer/",)


class _DropShardingNoise(std_logging.Filter):
    """Drops TensorFlow's per-save "Sharding callback duration" INFO line.

    TF logs it through absl on every checkpoint write; a group publishes every
    few dozen steps, so it would be most of a run's log.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Sharding callback duration")


absl_logging.get_absl_logger().addFilter(_DropShardingNoise())


@contextlib.contextmanager
def writing(what: str, directory: str):
    """Turns a failed write of `what` into `directory` into one `ExchangeWriteError`.

    A full or unwritable exchange dir fails the group's writes with
    `tf.errors.OpError`s of several types, depending on errno: ENOSPC and
    EDQUOT give `ResourceExhaustedError`, EACCES and EROFS
    `PermissionDeniedError`, a file in the way of a directory
    `FailedPreconditionError`, and EFBIG (a file size limit) gives
    `OutOfRangeError`, which Keras' `fit` takes for the end of the training
    data when a callback raises it and then silently stops the epoch. All of
    them become one error that names the directory, with the reason on one line.

    Args:
      what: what was being written, for the message (e.g. "the resume state").
      directory: where.

    Raises:
      ExchangeWriteError: a write inside the block failed.
    """
    try:
        yield
    except (tf.errors.OpError, OSError) as e:
        raise ExchangeWriteError(
            f"cannot write {what} into {directory}: {errors.one_line(e)}"
        ) from e


_outside_executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
_outside_lock = threading.Lock()


def outside_strategy(fn: Callable, *args, **kwargs):
    """Runs `fn` on a helper thread, outside any `tf.distribute` scope.

    A strategy scope is thread-local, so variables created on another thread
    are plain, unreplicated host variables even while the caller is inside
    `strategy.scope()`. Staging copies live there: restoring into them costs
    one copy rather than one per replica, and under MultiWorkerMirroredStrategy
    creating them needs no collective with the other workers (which would hang
    when only the chief creates one). All exchange I/O runs on this one thread,
    one call at a time.
    """
    global _outside_executor
    with _outside_lock:
        if _outside_executor is None:
            _outside_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tf_codistill_exchange"
            )
    return _outside_executor.submit(fn, *args, **kwargs).result()


def _short_key(key: str) -> str:
    key = key[len(_MODEL_PREFIX) :] if key.startswith(_MODEL_PREFIX) else key
    return key[: -len(_VALUE_SUFFIX)] if key.endswith(_VALUE_SUFFIX) else key


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One published checkpoint of a peer.

    Attributes:
      prefix: checkpoint prefix (`<dir>/ckpt-<step>`), built from our own
        directory name and the validated checkpoint name.
      step: the step in its name (the writer's train step when it saved).
      version: the index file's modification time in ns, to notice a
        checkpoint rewritten under the same name (a restarted writer).
    """

    prefix: str
    step: int
    version: int = 0


def latest_checkpoint(directory: str) -> Optional[CheckpointRef]:
    """The latest checkpoint a group has published in `directory`.

    Returns:
      None when the group has not published yet (no directory or no state
      file); otherwise the `CheckpointRef` the state file names.

    Raises:
      PeerCheckpointError: the state file is unreadable, malformed or names a
        checkpoint whose index is gone (e.g. deleted by the writer's cleanup).
    """
    state_path = layout.state_path(directory)
    try:
        if not tf.io.gfile.exists(state_path):
            return None
        size = tf.io.gfile.stat(state_path).length
        if size > _MAX_STATE_FILE_BYTES:
            raise PeerCheckpointError(
                f"state file {state_path} is {size} bytes, not a checkpoint state file"
            )
        with tf.io.gfile.GFile(state_path, "rb") as f:
            content = f.read().decode("utf-8", errors="replace")
    except tf.errors.OpError as e:
        raise PeerCheckpointError(f"cannot read {state_path}: {e.message}") from e
    match = _STATE_LINE.search(content)
    if not match:
        raise PeerCheckpointError(f"{state_path} names no model_checkpoint_path")
    # Only the base name is trusted, and only in the form we write.
    name = posixpath.basename(match.group(1).replace("\\", "/"))
    step = layout.checkpoint_step(name)
    if step is None:
        raise PeerCheckpointError(
            f"{state_path} names {match.group(1)!r}, expected '{CHECKPOINT_NAME}-<step>'"
        )
    prefix = layout.checkpoint_prefix(directory, step)
    try:
        version = tf.io.gfile.stat(prefix + ".index").mtime_nsec
    except tf.errors.NotFoundError as e:
        raise CheckpointNotReadyError(
            f"{state_path} names {name} but {name}.index is missing "
            "(deleted by the writer's cleanup, or not visible yet)"
        ) from e
    except tf.errors.OpError as e:
        raise PeerCheckpointError(f"cannot stat {prefix}.index: {e.message}") from e
    return CheckpointRef(prefix=prefix, step=step, version=version)


def _variable_names(reader) -> dict[str, str]:
    """Checkpoint key -> the variable's own name (`hidden_0/kernel`), for messages.

    TensorFlow has no public API for it: a checkpoint keeps the names in its
    object graph, a proto stored under `_CHECKPOINTABLE_OBJECT_GRAPH`, which
    TensorFlow's own checkpoint tools read the same way. Only messages depend
    on it (tests/test_exchange.py checks that they still name the variable).
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {
        a.checkpoint_key: a.full_name
        for node in graph.nodes
        for a in node.attributes
        if a.full_name
    }


class ModelSignature:
    """The variables a `Checkpoint(model=m)` of a model holds: key -> (shape, dtype).

    Computed once by writing the model to TensorFlow's in-memory filesystem
    and reading the index back, so the keys are exactly the ones TensorFlow
    writes, with no reimplementation of its naming. The variables' own names
    (`hidden_0/kernel`) are kept from the same write for readable messages.
    """

    def __init__(
        self,
        expected: dict[str, tuple[tuple[int, ...], tf.DType]],
        names: Optional[dict[str, str]] = None,
    ):
        self.expected = dict(expected)
        self.names = dict(names or {})
        self.num_bytes = sum(
            int(np.prod(shape, dtype=np.int64)) * dtype.size for shape, dtype in expected.values()
        )

    @classmethod
    def of_model(cls, model: tf.Module) -> ModelSignature:
        directory = f"ram://tf_codistill_signature/{uuid.uuid4().hex}"
        path = tf.train.Checkpoint(model=model).write(posixpath.join(directory, "ref"))
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(path)
            return cls(cls._read_expected(reader), _variable_names(reader))
        finally:
            tf.io.gfile.rmtree(directory)

    @staticmethod
    def _read_expected(reader) -> dict[str, tuple[tuple[int, ...], tf.DType]]:
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
        return {
            k: (tuple(shapes[k]), dtypes[k])
            for k in shapes
            if k.startswith(_MODEL_PREFIX) and not k.startswith(_IGNORED_MODEL_PREFIXES)
        }

    def describe(self, key: str) -> str:
        """`hidden_0/kernel` for a key of this model, the short key otherwise."""
        return self.names.get(key) or _short_key(key)

    def mismatches(self, reader, limit: int = 5) -> list[str]:
        """What differs between this signature and a checkpoint's index.

        Args:
          reader: a `CheckpointReader` of the peer checkpoint (index only is read).
          limit: at most this many differences are listed, then a count.

        Returns:
          Human-readable differences; empty when the checkpoint matches.
        """
        other = self._read_expected(reader)
        problems = []
        for key, (shape, dtype) in sorted(self.expected.items()):
            if key not in other:
                problems.append(f"{self.describe(key)} is missing")
                continue
            other_shape, other_dtype = other[key]
            if other_shape != shape:
                problems.append(
                    f"{self.describe(key)} has shape {list(other_shape)}, expected {list(shape)}"
                )
            elif other_dtype != dtype:
                problems.append(
                    f"{self.describe(key)} has dtype {other_dtype.name}, expected {dtype.name}"
                )
        for key in sorted(set(other) - set(self.expected)):
            problems.append(f"{_short_key(key)} is not in this model")
        if len(problems) > limit:
            problems = problems[:limit] + [f"and {len(problems) - limit} more"]
        return problems


class Publisher:
    """Publishes a group's student as numbered, student-only checkpoints.

    Public TensorFlow APIs only: `tf.train.Checkpoint.write` writes each
    checkpoint, and the state file is TensorFlow's own format
    (`tf.compat.v1.train.generate_checkpoint_state_proto`), so
    `tf.train.latest_checkpoint` and `tf.train.get_checkpoint_state` read it.
    Every publication writes the state file exactly once, last, listing the
    kept checkpoints by their relative names: it names only checkpoints whose
    files are all written.

    How files are written depends on the store (`storage.store_for`). On a
    filesystem, `Checkpoint.write` writes the checkpoint in place (temporary
    names, then renamed) and the state file is written to a temporary name,
    then renamed: a reader never sees half of either. An object store has no
    rename (TensorFlow's GCS filesystem copies, then deletes), so there the
    checkpoint is written to TensorFlow's in-memory filesystem and each file
    uploaded once under its final name, data before index, and the state file
    is uploaded whole, once; every object is written once per publication.
    Writes to one object are rate-limited there (GCS: about one per second),
    so a publication less than `min_write_interval_s` after the previous one
    is skipped (peers take the next one) unless asked to wait.

    Args:
      model: the student.
      directory: `layout.group_dir(exchange_dir, group_index)`.
      max_to_keep: checkpoints kept; older ones are deleted. Keep >= 3 so that
        a peer reading "latest" is not racing the cleanup of the file it reads.
    """

    def __init__(self, model: tf.Module, directory: str, max_to_keep: int = 5):
        self.directory = directory
        self._max_to_keep = errors.check_int("max_to_keep", max_to_keep, minimum=1)

        def make():
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="published_step")
            checkpoint = tf.train.Checkpoint(model=model, step=step)
            # Created by reading it: checkpoints keep holding `save_counter`,
            # as CheckpointManager's did, so a reader that restores into a
            # fresh tf.train.Checkpoint and asserts that every object matched
            # keeps working.
            checkpoint.save_counter  # noqa: B018
            return step, checkpoint

        self._step, self._checkpoint = outside_strategy(make)
        self._store = storage.store_for(directory)
        # (step, timestamp) of the kept checkpoints, oldest first.
        self._kept: list[tuple[int, float]] = self._read_kept()
        self._started = time.time()
        self._last_published: Optional[int] = None
        self._last_state_write = -math.inf  # On the store's clock.

    def _read_kept(self) -> list[tuple[int, float]]:
        """The checkpoints of this directory its state file lists (a restarted group's).

        Only this directory's own `ckpt-<step>` files count: a state file
        edited by someone else must not make this group delete files
        elsewhere (docs/SECURITY.md).
        """
        try:
            state = tf.train.get_checkpoint_state(self.directory)
        except (tf.errors.OpError, ValueError) as e:  # An unparsable state file.
            absl_logging.warning("Ignoring %s: %s", layout.state_path(self.directory), e)
            return []
        if state is None:
            return []
        timestamps = list(state.all_model_checkpoint_timestamps)
        own = posixpath.normpath(self.directory)
        kept = []
        for i, path in enumerate(state.all_model_checkpoint_paths):
            step = layout.checkpoint_step(posixpath.basename(path))
            if step is None or posixpath.normpath(posixpath.dirname(path)) != own:
                absl_logging.warning(
                    "%s lists %r, not a checkpoint of this directory: it will "
                    "not be deleted by this group's cleanup",
                    layout.state_path(self.directory),
                    path,
                )
                continue
            kept.append((step, timestamps[i] if i < len(timestamps) else 0.0))
        return kept

    @property
    def last_published_step(self) -> Optional[int]:
        return self._last_published

    def is_published(self, step: int) -> bool:
        """Whether `ckpt-<step>` is one of the checkpoints the state file lists."""
        return any(s == int(step) for s, _ in self._kept)

    def publish(self, step: int, wait: bool = False) -> Optional[str]:
        """Saves the model as `ckpt-<step>`; a published step is never saved again.

        A group restarted from its backup trains again through steps it had
        already published before it was stopped. Those checkpoints stay as
        they are: saving one again would rewrite its index in place, and a
        peer reading it at that moment (or after this process is killed
        midway) would find it half-written. Readers go on seeing the earlier
        ones until the group publishes a step it has not published before.

        Old checkpoints beyond `max_to_keep` are unlisted first (the state
        file is written without them) and deleted after, so a reader can lose
        a checkpoint it was reading (retried, like any checkpoint not visible)
        but never finds one listed that is gone, even if this process is
        killed in between. (TensorFlow's `CheckpointManager` deletes first.)

        Args:
          step: the group's train step.
          wait: on a store that rate-limits writes, wait until the state file
            may be written again rather than skip this publication (the last
            one of training).

        Returns:
          The checkpoint's prefix; None when the publication was skipped
          (less than `min_write_interval_s` after the previous one).

        Raises:
          tf.errors.OpError: the directory cannot be written.
        """
        step = int(step)
        prefix = layout.checkpoint_prefix(self.directory, step)
        if step == self._last_published or self.is_published(step):
            self._last_published = step
            return prefix
        wait_s = self._store.min_write_interval_s - (self._store.clock() - self._last_state_write)
        if wait_s > 0:
            if not wait:
                return None
            time.sleep(wait_s)

        def save():
            self._step.assign(step)
            self._checkpoint.save_counter.assign_add(1)
            if self._store.atomic_rename:
                return self._checkpoint.write(prefix)
            return self._upload(prefix)

        path = outside_strategy(save)
        self._last_published = step
        kept = self._kept + [(step, time.time())]
        doomed, kept = kept[: -self._max_to_keep], kept[-self._max_to_keep :]
        self._write_state(kept)
        self._kept = kept
        for old_step, _ in doomed:
            self._delete(layout.checkpoint_prefix(self.directory, old_step))
        return path

    def _upload(self, prefix: str) -> str:
        """Writes the checkpoint in memory, then uploads its files: data first, index last.

        For stores without rename. `Checkpoint.write` would write temporary
        names and rename them (on GCS: copy every byte again, then delete).
        """
        staging = f"ram://tf_codistill_publish/{uuid.uuid4().hex}"
        written = self._checkpoint.write(posixpath.join(staging, posixpath.basename(prefix)))
        try:
            data = sorted(tf.io.gfile.glob(written + ".data-*"))
            for source in [*data, written + ".index"]:
                self._store.upload(source, prefix + source[len(written) :])
        finally:
            tf.io.gfile.rmtree(staging)
        return prefix

    def _write_state(self, kept: list[tuple[int, float]]) -> None:
        """Writes the state file listing `kept` (latest last): once, whole."""
        names = [posixpath.basename(layout.checkpoint_prefix("", s)) for s, _ in kept]
        state = tf.compat.v1.train.generate_checkpoint_state_proto(
            self.directory,
            names[-1],
            all_model_checkpoint_paths=names,
            all_model_checkpoint_timestamps=[t for _, t in kept],
            last_preserved_timestamp=self._started,
        )
        self._store.write(layout.state_path(self.directory), str(state).encode("utf-8"))
        self._last_state_write = self._store.clock()

    def _delete(self, prefix: str) -> None:
        for path in tf.io.gfile.glob(prefix + ".data-?????-of-?????") + [prefix + ".index"]:
            self._store.remove(path)


class PublishFailed(Exception):
    """A background write of `ckpt-<step>` failed; the cause is `__cause__`.

    Attributes:
      step: the step whose checkpoint was being written.
    """

    def __init__(self, step: int, cause: BaseException):
        super().__init__(f"publishing step {step} failed: {errors.one_line(cause)}")
        self.step = step
        self.cause = cause


class BackgroundPublisher:
    """A `Publisher` whose writes run on a helper thread, off the training step.

    `publish(step)` copies the student's variables into a *snapshot* (a model
    of the same architecture with plain host variables: one copy per
    variable, between two steps) and hands the snapshot to a `Publisher` on a
    helper thread. Everything on disk is the `Publisher`'s: the same files,
    keys and state file (the snapshot's checkpoint keys are checked to equal
    the student's), a published step never written again, old checkpoints
    unlisted before they are deleted, and a checkpoint listed in the state
    file only after it is completely written, so a process killed mid-write
    leaves nothing a reader loads.

    At most one write is in flight: `publish` first waits for the previous
    one (with an exchange every few dozen steps it is long finished).

    Args:
      model: the student.
      snapshot: a model of the student's architecture with plain (host)
        variables, created outside any strategy (`outside_strategy`).
      directory: `layout.group_dir(exchange_dir, group_index)`.
      max_to_keep: as for `Publisher`.

    Raises:
      errors.ConfigError: `snapshot` would not write the student's keys.
    """

    def __init__(self, model: tf.Module, snapshot: tf.Module, directory: str, max_to_keep: int = 5):
        expected = outside_strategy(lambda: ModelSignature.of_model(model).expected)
        got = outside_strategy(lambda: ModelSignature.of_model(snapshot).expected)
        if expected != got or len(model.weights) != len(snapshot.weights):
            raise errors.ConfigError(
                "the snapshot model for background publishing does not match the student's "
                "checkpoint keys (publish synchronously, or build teachers like the student)"
            )
        self._sources = list(model.weights)
        self._targets = list(snapshot.weights)
        self._publisher = Publisher(snapshot, directory, max_to_keep)
        self.directory = directory
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tf_codistill_publish"
        )
        self._job: Optional[concurrent.futures.Future] = None
        self._job_step = -1
        self._requested: Optional[int] = self._publisher.last_published_step

    @property
    def last_published_step(self) -> Optional[int]:
        """The last step given to `publish` (its write may still be running)."""
        return self._requested

    def is_published(self, step: int) -> bool:
        """Whether the state file lists `ckpt-<step>` (after the write in flight, if any)."""
        self.flush()
        return self._publisher.is_published(step)

    def publish(self, step: int, wait: bool = False) -> str:
        """Snapshots the model as `ckpt-<step>` now; writes it on the helper thread.

        Args:
          step: the group's train step.
          wait: as for `Publisher.publish` (on a rate-limited store, the
            helper thread waits rather than skips this publication).

        Returns:
          The checkpoint prefix that will be (or was) written.

        Raises:
          PublishFailed: the *previous* background write failed.
        """
        step = int(step)
        self.flush()
        if step == self._requested or self._publisher.is_published(step):
            return self._publisher.publish(step)  # Never written again.
        for target, source in zip(self._targets, self._sources, strict=True):
            target.assign(source.read_value())
        self._requested, self._job_step = step, step
        self._job = self._executor.submit(self._publisher.publish, step, wait)
        return layout.checkpoint_prefix(self.directory, step)

    def failed(self) -> bool:
        """Whether a write has finished with an error not yet raised (no waiting)."""
        job = self._job
        return job is not None and job.done() and job.exception() is not None

    def flush(self) -> None:
        """Waits for the write in flight.

        Raises:
          PublishFailed: it failed (raised once; the next publish tries anew).
        """
        if self._job is None:
            return
        job, self._job = self._job, None
        try:
            job.result()
        except (tf.errors.OpError, OSError) as e:
            # The step was not published: a later publish of it may try again.
            self._requested = self._publisher.last_published_step
            raise PublishFailed(self._job_step, e) from e


def restore_validated(
    model: tf.Module,
    ref: CheckpointRef,
    signature: ModelSignature,
    defensive: bool = True,
) -> int:
    """Restores a published checkpoint into `model` after checking it; returns its step.

    The index (names, shapes, dtypes; no tensor data) is checked against
    `signature` first, so a checkpoint of another architecture is refused with
    the variables that differ instead of being half restored; then the
    tensors are restored with `expect_partial()` (a compiled student's
    checkpoint may also hold its optimizer).

    Args:
      model: a model of the run's architecture, with plain (host) variables:
        a staging copy, or an evaluator's model.
      ref: the checkpoint.
      signature: `ModelSignature.of_model(model)`, computed once.
      defensive: also what a *peer's* checkpoint must pass before it becomes
        a teacher: files of a plausible size (checked before anything is
        read), finite values, and the step in the checkpoint equal to the
        step in its name. Evaluation of a run's own checkpoints turns this
        off: a diverged model's NaN is a result to report, and a checkpoint
        without a step takes the step in its name.

    Returns:
      The step stored in the checkpoint (with `defensive=False`, the step in
      its name if it holds none).

    Raises:
      CheckpointError: why the checkpoint cannot be used: a
        `CheckpointContentError` for bad content (a `CheckpointMismatchError`
        for other variables), worth no second read; any other for a failed
        read, maybe transient (truncated or vanished files). The model may then
        hold a mix of old and new values: callers restore into a staging copy
        (teachers) or restore a good checkpoint before using it (evaluation).
    """
    name = posixpath.basename(ref.prefix)
    if defensive:
        _check_sizes(ref.prefix, name, signature)
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(ref.prefix)
    except tf.errors.NotFoundError as e:  # Deleted since, or not visible yet.
        raise CheckpointNotReadyError(
            f"cannot read the index of {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    except Exception as e:  # A corrupt index: DataLossError, ValueError...
        raise PeerCheckpointError(
            f"cannot read the index of {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    problems = signature.mismatches(reader)
    if problems:
        raise CheckpointMismatchError(
            f"{name} does not match this model's variables: " + "; ".join(problems)
        )
    step_var = tf.Variable(-1, dtype=tf.int64, trainable=False)
    try:
        # The signature check above guarantees every variable of the model
        # has a value of the right shape in the checkpoint; other objects
        # (save_counter, a compiled student's optimizer) may be absent.
        tf.train.Checkpoint(model=model, step=step_var).restore(ref.prefix).expect_partial()
    except tf.errors.NotFoundError as e:  # A data file deleted since, or not visible yet.
        raise CheckpointNotReadyError(
            f"cannot restore {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    except Exception as e:  # Truncated data: IndexError; bit flip: DataLossError...
        raise PeerCheckpointError(
            f"cannot restore {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    step = int(step_var.numpy())
    if not defensive:
        return step if step >= 0 else ref.step
    for variable in model.weights:
        if variable.dtype.is_floating and not np.all(np.isfinite(variable.numpy())):
            raise errors.CheckpointContentError(f"{name} holds NaN or Inf in {variable.name}")
    if step < 0:
        raise errors.CheckpointContentError(
            f"{name} holds no 'step' (not written by tf_codistill?)"
        )
    if step != ref.step:
        raise errors.CheckpointContentError(f"{name} holds step {step}, not {ref.step}")
    return step


def _check_sizes(prefix: str, name: str, signature: ModelSignature) -> None:
    """Refuses files of absurd size before anything is read into memory.

    The index (variable names, shapes, offsets) of a checkpoint of this
    model is small; the data files must hold at least the model's bytes,
    and not vastly more (tensors are read by offset, so a huge file would
    not be read whole, but it is not a checkpoint of this model).
    """
    expected = signature.num_bytes
    try:
        index_bytes = tf.io.gfile.stat(prefix + ".index").length
        data_files = tf.io.gfile.glob(prefix + ".data-*")
        data_bytes = sum(tf.io.gfile.stat(f).length for f in data_files)
    except tf.errors.NotFoundError as e:  # Deleted since, or not visible yet.
        raise CheckpointNotReadyError(
            f"cannot stat {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    except tf.errors.OpError as e:
        raise PeerCheckpointError(
            f"cannot stat {name}: {errors.one_line(e, with_type=True)}"
        ) from e
    if not data_files:
        # An object store may list a new object later than its index; the
        # writer's cleanup deletes the data files first.
        raise CheckpointNotReadyError(f"{name} has no data files (not visible yet, or deleted)")
    max_index = _MAX_INDEX_BYTES + 4096 * len(signature.expected)
    if index_bytes > max_index:
        raise errors.CheckpointContentError(
            f"{name}.index is {index_bytes} bytes, more than an index of this model "
            f"can be ({max_index}); refused unread"
        )
    if data_bytes < expected:
        raise PeerCheckpointError(
            f"{name} holds {data_bytes} bytes of data, less than this model's "
            f"{expected} (truncated, or not written completely)"
        )
    if data_bytes > 16 * expected + _MAX_INDEX_BYTES:
        raise errors.CheckpointContentError(
            f"{name} holds {data_bytes} bytes of data for a model of {expected}; refused unread"
        )


class TeacherLoader:
    """Reads one peer's checkpoints for its teacher, through a staging copy.

    `stage` validates a checkpoint and restores it into the staging copy
    (`restore_validated`); `write` then copies the staged values into a
    teacher. The caller decides which teacher (the active one, or an
    inactive buffer) and on which thread.

    Args:
      peer_index: the peer group.
      directory: the peer's `group_dir`.
      staging: a model of the teacher's architecture with plain host
        variables, built outside any strategy (see `outside_strategy`); one
        staging copy may serve several loaders, one at a time (`lock`).
      signature: `ModelSignature.of_model(staging)`.
      lock: held while the staging copy is in use.
    """

    def __init__(
        self,
        peer_index: int,
        directory: str,
        staging: tf.Module,
        signature: ModelSignature,
        lock: Optional[threading.Lock] = None,
    ):
        self.peer_index = peer_index
        self.directory = directory
        self.staging = staging
        self._signature = signature
        self.lock = lock or threading.Lock()

    def latest(self) -> Optional[CheckpointRef]:
        """The peer's latest published checkpoint, None if it has none yet."""
        return latest_checkpoint(self.directory)

    def stage(self, ref: CheckpointRef) -> int:
        """Validates `ref` and restores it into the staging copy (hold `lock`).

        Returns:
          The step stored in the checkpoint; it equals `ref.step`.

        Raises:
          PeerCheckpointError: why the checkpoint cannot be used. No teacher
            is touched by this method.
        """
        return restore_validated(self.staging, ref, self._signature, defensive=True)

    def write(self, teacher: tf.Module) -> None:
        """Copies the staged values into `teacher` (after a successful `stage`).

        Inside a strategy scope the assignment reaches every replica of the
        teacher's variables. A teacher in lower precision (`teacher_dtype`)
        gets the values cast to its variables' dtype.
        """
        for target, source in zip(teacher.weights, self.staging.weights, strict=True):
            target.assign(tf.cast(source.read_value(), target.dtype))
