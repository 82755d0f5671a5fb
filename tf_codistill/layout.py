"""The run directory: every file name and directory of a run, in one place.

A run's `root_dir` is shared by all its groups and is the exchange dir:

    <root_dir>/group_<i>/checkpoint              state file naming the latest checkpoint
    <root_dir>/group_<i>/ckpt-<step>.index       published student checkpoints
    <root_dir>/group_<i>/ckpt-<step>.data-*
    <root_dir>/group_<i>/operative_config.gin    the gin parameters actually used
    <root_dir>/group_<i>/metrics.json            evaluations and final results
    <root_dir>/group_<i>/tensorboard/            TensorBoard summaries
    <root_dir>/group_<i>/backup/                 BackupAndRestore (resume) state
    <root_dir>/group_<i>/owner.json              the process writing this group (ownership.py)
    <root_dir>/eval/                             evaluations by binaries/evaluate.py
    <root_dir>/ray/                              Ray Train's own state (binaries/launch_ray.py)

Training, the exchange, the launcher, evaluation, the churn tool, the
reproduction harness and the drills all build paths with these functions.
Paths are joined with `posixpath`, so URLs (`gs://bucket/run`) work as local
paths do. No TensorFlow import: the launcher and the harness use this module
without loading TensorFlow.
"""

from __future__ import annotations

import operator
import posixpath
import re
from typing import Optional

from tf_codistill import errors

__all__ = [
    "BACKUP_DIR",
    "CHECKPOINT_NAME",
    "EVAL_DIR",
    "METRICS_FILE",
    "OPERATIVE_CONFIG",
    "RAY_DIR",
    "OWNER_FILE",
    "STATE_FILE",
    "TENSORBOARD_DIR",
    "backup_dir",
    "checkpoint_prefix",
    "checkpoint_step",
    "eval_dir",
    "group_dir",
    "group_index",
    "metrics_path",
    "operative_config_path",
    "ray_dir",
    "owner_path",
    "state_path",
    "tensorboard_dir",
]

# Published checkpoints are `ckpt-<step>`; the state file has TensorFlow's
# name, so `tf.train.latest_checkpoint(group_dir)` finds the latest one.
CHECKPOINT_NAME = "ckpt"
STATE_FILE = "checkpoint"
METRICS_FILE = "metrics.json"
OPERATIVE_CONFIG = "operative_config.gin"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
OWNER_FILE = "owner.json"
EVAL_DIR = "eval"
RAY_DIR = "ray"

_GROUP_DIR = re.compile(r"^group_(\d{1,9})$")
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_NAME}-(\d{{1,18}})$")


def group_dir(root_dir: str, group_index: int) -> str:
    """`<root_dir>/group_<i>`: where group `i` publishes and writes its outputs.

    Raises:
      errors.ConfigTypeError: `group_index` is not an int.
      errors.ConfigError: it is negative, or `root_dir` is empty.
    """
    try:
        if isinstance(group_index, bool):
            raise TypeError
        group_index = operator.index(group_index)  # ints and numpy integers
    except TypeError:
        raise errors.ConfigTypeError(f"group_index must be an int, got {group_index!r}") from None
    if group_index < 0:
        raise errors.ConfigError(f"group_index must be >= 0, got {group_index}")
    root_dir = str(root_dir)
    if not root_dir:
        raise errors.ConfigError("exchange_dir must be a non-empty path or URL")
    return posixpath.join(root_dir.rstrip("/"), f"group_{group_index}")


def group_index(name: str) -> Optional[int]:
    """The `i` of a directory named `group_<i>` (a trailing `/` allowed); None otherwise."""
    match = _GROUP_DIR.match(name.rstrip("/"))
    return int(match.group(1)) if match else None


def checkpoint_prefix(directory: str, step: int) -> str:
    """`<directory>/ckpt-<step>`, the prefix of a published checkpoint's files."""
    return posixpath.join(directory, f"{CHECKPOINT_NAME}-{int(step)}")


def checkpoint_step(name: str) -> Optional[int]:
    """The step of a checkpoint *base name* `ckpt-<step>`; None for any other name."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def state_path(directory: str) -> str:
    return posixpath.join(directory, STATE_FILE)


def metrics_path(directory: str) -> str:
    return posixpath.join(directory, METRICS_FILE)


def operative_config_path(directory: str) -> str:
    return posixpath.join(directory, OPERATIVE_CONFIG)


def owner_path(directory: str) -> str:
    """`<group_dir>/owner.json`: host, pid and heartbeat of the process writing the group."""
    return posixpath.join(directory, OWNER_FILE)


def tensorboard_dir(directory: str) -> str:
    return posixpath.join(directory, TENSORBOARD_DIR)


def backup_dir(directory: str) -> str:
    return posixpath.join(directory, BACKUP_DIR)


def eval_dir(root_dir: str) -> str:
    """`<root_dir>/eval`, where evaluations go unless told otherwise."""
    return posixpath.join(str(root_dir).rstrip("/"), EVAL_DIR)


def ray_dir(root_dir: str) -> str:
    """`<root_dir>/ray`, Ray Train's storage path for a run's trainers."""
    return posixpath.join(str(root_dir).rstrip("/"), RAY_DIR)
