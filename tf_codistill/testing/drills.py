"""Fault drills: train.py processes whose output is watched, and a watchful peer.

Used by the process-level fault tests (kill and restart, a preempted worker,
a full exchange dir, the chaos test); usable to drill a setup of one's own.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import exchange
from tf_codistill import layout
from tf_codistill import local_cluster
from tf_codistill import programs
from tf_codistill import train_lib
from tf_codistill.testing import fixtures

__all__ = [
    "CheckpointWatcher",
    "OutputLog",
    "PROGRESS",
    "RELOAD",
    "STARTING",
    "backup_step",
    "check_published",
    "progress_steps",
    "scalars",
    "train_command",
]

# ProgressLogger's training lines (not its evaluation lines).
PROGRESS = re.compile(r"group (\d+)[^:]*: step (\d+)/\d+ \| (?!eval|teachers)")
# ProgressLogger's first line, after BackupAndRestore restored the step.
STARTING = re.compile(r"group (\d+)[^:]*: starting at step (\d+)/\d+")
# CodistillModel's reload lines (every reload after the first at DEBUG: --verbosity=1).
RELOAD = re.compile(
    r"Group (\d+): (?:first )?teacher for peer (\d+) <- step (\d+) \(staleness (-?\d+) steps"
)
RELOAD_FAILED = re.compile(
    r"Group (\d+): keeping the previous teacher for peer (\d+) \(step (\w+)\)"
)


def train_command(
    root_dir: str,
    group_index: int,
    num_groups: int,
    bindings: dict,
    gin_file: str = "demo/tiny.gin",
    extra_flags: tuple = (),
) -> list[str]:
    """`python .../tf_codistill/programs/train.py ...` for one group, with `train_group` bindings.

    The program's file, run as a script: found in a checkout and an install alike.
    At `--verbosity=1`, so that every teacher reload is logged (`RELOAD`).
    """
    argv = [
        sys.executable,
        os.path.join(os.path.dirname(programs.__file__), "train.py"),
        f"--gin_file={gin_file}",
        f"--root_dir={root_dir}",
        f"--group_index={group_index}",
        f"--num_groups={num_groups}",
        "--verbosity=1",
        *extra_flags,
    ]
    for name, value in bindings.items():
        if "." not in name:
            name = f"tf_codistill.train_lib.train_group.{name}"
        argv.append(f"--gin_bindings={name} = {value!r}")
    return argv


class OutputLog:
    """Collects the `[name] line` output of a `LocalCluster` (pass it as `write`).

    Lines are also echoed to stdout, which pytest shows when a test fails.
    """

    def __init__(self, echo: bool = True):
        self._lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._echo = echo
        self._start = time.time()

    def __call__(self, line: str) -> None:
        match = re.match(r"^\[([^\]]+)\] ?(.*)$", line, re.DOTALL)
        name, text = (match[1], match[2]) if match else ("", line)
        with self._lock:
            self._lines.append((name, text))
        if self._echo:
            print(f"{time.time() - self._start:7.2f} {line}"[:400], flush=True)

    def lines(self, name: str, start: int = 0) -> list[str]:
        """Lines of task `name`, from its `start`-th line on."""
        with self._lock:
            return [text for n, text in self._lines if n == name][start:]

    def count(self, name: str) -> int:
        return len(self.lines(name))

    def wait_for(
        self,
        pattern: Callable[[str], bool],
        name: str,
        timeout_s: float,
        start: int = 0,
        process=None,
        what: str = "",
    ) -> str:
        """Waits until a line of `name` (from its `start`-th) satisfies `pattern`.

        Args:
          pattern: a predicate on one line.
          process: the task's `subprocess.Popen` (unused: the task's exit is
            seen from its last line, `exited with code <n>`, which
            `LocalCluster` writes once the rest of its output is read).

        Returns:
          The first such line.

        Raises:
          AssertionError: the deadline passed or the process exited first.
        """
        deadline = time.time() + timeout_s
        seen = start
        while True:
            lines = self.lines(name)
            for line in lines[seen:]:
                if pattern(line):
                    return line
            seen = max(seen, len(lines))
            # Exited: its last line is LocalCluster's `exited with code`; the
            # lines before it may still be on their way.
            exited = any(line.startswith(local_cluster.EXITED) for line in lines[start:])
            if exited or time.time() > deadline:
                tail = "\n".join(self.lines(name)[-15:])
                state = "exited" if exited else "timed out"
                raise AssertionError(f"{name} {state} waiting for {what or pattern}:\n{tail}")
            time.sleep(0.02)

    def wait_for_step(self, name: str, step: int, process, timeout_s: float) -> str:
        """Waits until `name` logs progress at `step` or beyond (see `wait_for`)."""
        return self.wait_for(
            lambda line: any(s >= step for s in progress_steps([line])),
            name,
            timeout_s=timeout_s,
            process=process,
            what=f"step {step}",
        )


def kill_step(
    rng, low: int, high: int, steps_per_loop: int, log_every: int, margin: int = 0
) -> int:
    """A random step in [low, high] to kill a group after, away from evaluations.

    A drill kills once the progress line of the first logged step at or after
    the chosen one appears (plus, in some drills, a jitter worth up to `margin`
    steps). When the kill lands between the backup at an epoch's last step and
    that epoch's evaluation, the restarted group resumes after the evaluation
    it never made: a known limitation (docs/fault_tolerance.md) that these
    drills leave out rather than test.
    """

    def near_evaluation(step):
        line = -(-step // log_every) * log_every  # the progress line waited for
        to_boundary = -line % steps_per_loop
        return to_boundary <= margin

    return rng.choice([s for s in range(low, high + 1) if not near_evaluation(s)])


def flip_data_byte(prefix: str) -> None:
    """Inverts the middle byte of a checkpoint's data file (a bit-flipped checkpoint)."""
    path = prefix + ".data-00000-of-00001"
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def progress_steps(lines: list[str]) -> list[int]:
    """The steps of the training progress lines among `lines`."""
    return [int(m[2]) for m in map(PROGRESS.search, lines) if m]


def backup_step(group_dir: str) -> int:
    """The train step a group's BackupAndRestore state holds (0 if none)."""
    return train_lib.resumed_step(layout.backup_dir(group_dir))


def check_published(group_dir: str, model_fn: Callable[[], keras.Model]) -> list[int]:
    """Stages every checkpoint a group's state file lists, as a peer would.

    Returns:
      Their steps, oldest first ([] when the group has not published).

    Raises:
      PeerCheckpointError: one of them is incomplete or corrupt.
    """
    state = tf.train.get_checkpoint_state(group_dir)
    if state is None:
        return []
    staging = model_fn()
    loader = exchange.TeacherLoader(
        0, group_dir, staging, exchange.ModelSignature.of_model(staging)
    )
    steps = []
    for path in state.all_model_checkpoint_paths:
        step = int(os.path.basename(path).split("-")[1])
        ref = exchange.CheckpointRef(exchange.checkpoint_prefix(group_dir, step), step)
        # Sizes, signature, every value read, finite, the step inside.
        steps.append(loader.stage(ref))
    return steps


def scalars(group_dir: str, tag: str, split: str = "train") -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar of a group, over all its processes' event files."""
    return fixtures.event_scalars(os.path.join(layout.tensorboard_dir(group_dir), split), tag)


def _files(prefix: str) -> frozenset:
    """(name, inode) of a checkpoint's files: what a rename or a deletion changes."""
    found = set()
    for path in glob.glob(glob.escape(prefix) + ".*"):
        try:
            found.add((os.path.basename(path), os.stat(path).st_ino))
        except FileNotFoundError:
            pass
    return frozenset(found)


class CheckpointWatcher(threading.Thread):
    """A peer that keeps restoring a group's latest published checkpoint.

    Alternates the library's way (`exchange.latest_checkpoint`, then a
    `TeacherLoader` stage into a staging copy, which validates sizes, the
    signature and finiteness) and the documented plain one
    (`tf.train.Checkpoint(model=m).restore(tf.train.latest_checkpoint(d))`).
    Before every restore the model is filled with NaN, so a restore that
    succeeds and leaves every weight finite restored all of them.

    A failed restore is *explained* when the checkpoint's files were deleted
    or replaced by a rename while it was read (the writer's cleanup keeps
    only the last few): that is a clean failure a peer retries. Any other
    failure means the state file named a checkpoint that was incomplete or
    being written in place: what a reader must never see.

    Args:
      directory: the group's directory.
      model_fn: builds a model of the group's architecture.
      poll_s: pause between two rounds (leaves the CPU to the processes).
    """

    def __init__(self, directory: str, model_fn: Callable[[], keras.Model], poll_s: float = 0.01):
        super().__init__(daemon=True, name="checkpoint-watcher")
        self.directory = directory
        self.poll_s = poll_s
        self._stopping = threading.Event()
        self._staging = model_fn()
        self._plain = model_fn()
        self._loader = exchange.TeacherLoader(
            0, directory, self._staging, exchange.ModelSignature.of_model(self._staging)
        )
        self.loaded: list[int] = []
        self.failures: list[tuple[Optional[str], str, bool]] = []
        self.error: Optional[BaseException] = None

    @staticmethod
    def _poison(model) -> None:
        model.set_weights([np.full(w.shape, np.nan, w.dtype) for w in model.get_weights()])

    def _through_loader(self) -> None:
        try:
            ref = exchange.latest_checkpoint(self.directory)
        except exchange.PeerCheckpointError as e:
            # Only "names ckpt-N but its index is missing" is the cleanup's doing.
            self.failures.append((None, str(e), "is missing" in str(e)))
            return
        if ref is None:
            return
        before = _files(ref.prefix)
        self._poison(self._staging)
        try:
            self.loaded.append(self._loader.stage(ref))
        except exchange.PeerCheckpointError as e:
            self.failures.append((ref.prefix, str(e), _files(ref.prefix) != before))

    def _through_tf_train(self) -> None:
        prefix = tf.train.latest_checkpoint(self.directory)
        if prefix is None:
            return
        before = _files(prefix)
        self._poison(self._plain)
        step = tf.Variable(-1, dtype=tf.int64)
        try:
            tf.train.Checkpoint(model=self._plain, step=step).restore(
                prefix
            ).assert_existing_objects_matched()
            weights = self._plain.get_weights()
            if not all(np.all(np.isfinite(w)) for w in weights):
                raise ValueError(f"{prefix} left NaN in the model: not all of it was restored")
            if int(step.numpy()) != int(prefix.rsplit("-", 1)[1]):
                raise ValueError(f"{prefix} holds step {int(step.numpy())}")
            self.loaded.append(int(step.numpy()))
        except (tf.errors.OpError, ValueError, IndexError, AssertionError) as e:
            self.failures.append((prefix, f"{type(e).__name__}: {e}", _files(prefix) != before))

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._through_loader()
                self._through_tf_train()
                self._stopping.wait(self.poll_s)
        except BaseException as e:  # noqa: BLE001  Reported by stop().
            self.error = e

    def stop(self) -> CheckpointWatcher:
        """Stops and joins the thread; re-raises an unexpected error of its own."""
        self._stopping.set()
        self.join(timeout=60)
        if self.error is not None:
            raise self.error
        return self

    def unexplained(self) -> list[tuple[Optional[str], str]]:
        """Failures on checkpoints that stayed in place: half-written ones seen."""
        return [(prefix, reason) for prefix, reason, explained in self.failures if not explained]
