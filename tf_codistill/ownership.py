"""One owner per group directory: a second process writing as the same group is refused.

Two processes started as the same group (`--group_index=0` twice on one root)
would write checkpoints of the same names into one directory, alternate its
state file and delete each other's files, with no error. So the process that
writes a group's directory (the chief of the group) owns it first: it writes
`<group_dir>/owner.json` (`layout.owner_path`)

    {"host": ..., "pid": ..., "boot_id": ..., "process_start": ...,
     "started": <time>, "heartbeat": <time>, "token": <random>, "argv": [...]}

and rewrites the heartbeat every `HEARTBEAT_S` seconds from a helper thread.
Another process that finds a *live* owner is refused with one line
(`errors.GroupOwnedError`); a *stale* owner (a crashed or killed process) is
taken over, so a group restarted after a crash resumes. How an owner is judged:

* on the same host (same host name and boot): alive while its pid runs, is
  not a zombie, and started when the record says (a reused pid is not it);
* on another host: alive while its heartbeat moves. An owner whose heartbeat
  is older than `STALE_AFTER_S` (by this host's clock) is stale at once;
  otherwise the newcomer watches the file until the heartbeat moves (alive:
  refused) or grows older than `STALE_AFTER_S` (stale: taken over), so a
  restart on another machine waits at most that long.

A new owner on a local filesystem appears atomically (a hard link, which fails
if the file exists); one that takes over, or writes to an object store,
writes then reads back after a pause, and yields if another process's token
is there. The loser of a race that slips through anyway, or an owner whose
heartbeat stalled long enough to be taken over, finds another token in the
file at its next heartbeat and stops at its next publication
(`GroupOwner.check`), before it writes more.

Within one process the same directory may be claimed several times (a
`train_group` and its model's `fit`); the file goes when the last claim is
released, or when the process exits normally.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Any
from typing import Optional

import tensorflow as tf
from absl import logging

from tf_codistill import errors
from tf_codistill import layout

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "GroupOwner", "claim", "owning"]

# Seconds between two heartbeats of an owner.
HEARTBEAT_S = 10.0
# An owner on another host whose heartbeat has not moved for this long is gone.
STALE_AFTER_S = 60.0
# Pause before reading back a record written without an atomic create.
_SETTLE_S = 1.0

_HELD: dict[str, GroupOwner] = {}
_HELD_LOCK = threading.Lock()


def claim(directory: str, what: str = "this group") -> GroupOwner:
    """Makes this process the owner of `directory` (or counts one more claim).

    Args:
      directory: a group's directory (`layout.group_dir`).
      what: names the group in messages ("group 0").

    Returns:
      The owner; call its `release()` once per `claim`.

    Raises:
      errors.GroupOwnedError: a live process of another pid owns it.
    """
    key = posixpath.normpath(directory) if "://" not in directory else directory.rstrip("/")
    with _HELD_LOCK:
        owner = _HELD.get(key)
        if owner is None or owner.lost is not None:
            owner = GroupOwner(directory, what)
            owner.acquire()
            _HELD[key] = owner
        owner.claims += 1
        return owner


@contextlib.contextmanager
def owning(directory: str, what: str = "this group", enabled: bool = True):
    """`claim(directory)` for the duration of a block (nothing if not `enabled`)."""
    owner = claim(directory, what) if enabled else None
    try:
        yield owner
    finally:
        if owner is not None:
            owner.release()


@atexit.register
def _release_all() -> None:
    with _HELD_LOCK:
        owners = list(_HELD.values())
    for owner in owners:
        owner.claims = 1
        owner.release()


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _process_stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, start time in clock ticks since boot) of `pid` from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: split after its ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Someone else's process: it exists.
        return True
    return True


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    stat = _process_stat(pid)
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "boot_id": _boot_id(),
        "process_start": stat[1] if stat else None,
    }


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


class GroupOwner:
    """This process's ownership of one group directory (see the module docstring).

    Args:
      directory: the group's directory.
      what: the group's name in messages.
    """

    def __init__(self, directory: str, what: str = "this group"):
        self.directory = directory
        self.what = what
        self.path = layout.owner_path(directory)
        self.claims = 0
        # The record found in our place at a heartbeat: ownership was lost.
        self.lost: Optional[dict[str, Any]] = None
        self._record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # Reading and judging a record.

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                record = json.loads(f.read())
            return record if isinstance(record, dict) else {}
        except tf.errors.NotFoundError:
            return None
        except (tf.errors.OpError, ValueError):
            return {}  # Unreadable or half a file: no owner we can name.

    def _same_host(self, record: dict[str, Any]) -> bool:
        me = _identity()
        return record.get("host") == me["host"] and record.get("boot_id") == me["boot_id"]

    def _is_mine(self, record: dict[str, Any]) -> bool:
        return bool(self._record) and record.get("token") == self._record.get("token")

    def _judge(self, record: dict[str, Any]) -> Optional[str]:
        """Why `record`'s owner is gone ("..." for the log), or None if it may be alive."""
        if not record.get("pid") or not record.get("host"):
            return "the owner file names no process"
        if self._same_host(record):
            pid = int(record["pid"])
            if pid == os.getpid():
                # Not among this process's claims (`claim` looked first): left
                # by a released claim, or by an earlier process of this pid.
                return "it is this process, or an earlier one of its pid"
            if not _pid_runs(pid):
                return f"pid {pid} is gone"
            stat = _process_stat(pid)
            if stat and stat[0] == "Z":
                return f"pid {pid} has exited (a zombie)"
            start = record.get("process_start")
            if stat and start is not None and stat[1] != start:
                return f"pid {pid} is another process now"
            return None
        age = time.time() - float(record.get("heartbeat", 0))
        if age > STALE_AFTER_S:
            return f"its heartbeat is {age:.0f} s old (> {STALE_AFTER_S:.0f} s)"
        return None

    def _watch(self, record: dict[str, Any]) -> Optional[str]:
        """Watches another host's owner until its heartbeat moves (None) or grows stale."""
        logging.info(
            "%s: %s is owned by pid %s on host %s; waiting up to %.0f s to see whether it is alive",
            self.what,
            self.directory,
            record.get("pid"),
            record.get("host"),
            STALE_AFTER_S,
        )
        while True:
            time.sleep(min(HEARTBEAT_S, STALE_AFTER_S) / 4)
            now = self._read()
            if now is None:
                return "its owner file was removed"
            if now.get("token") != record.get("token"):
                return self._judge(now) if now else "its owner file is unreadable"
            if now.get("heartbeat") != record.get("heartbeat"):
                return None
            reason = self._judge(now)
            if reason:
                return reason

    def _refusal(self, record: dict[str, Any]) -> errors.GroupOwnedError:
        heartbeat = record.get("heartbeat")
        age = f", last heartbeat {time.time() - float(heartbeat):.0f} s ago" if heartbeat else ""
        started = f", started {_when(float(record['started']))}" if record.get("started") else ""
        return errors.GroupOwnedError(
            f"{self.what}'s directory {self.directory} is in use by pid {record.get('pid')} "
            f"on host {record.get('host')}{started}{age}: two processes must not train the "
            "same group. Stop that one, or choose another group index or root_dir (an owner "
            f"that is gone is taken over: a pid no longer running on this host, or no "
            f"heartbeat for {STALE_AFTER_S:.0f} s from another host)"
        )

    # Owning.

    def _write(self, record: dict[str, Any], exclusive: bool) -> bool:
        """Writes `record` as the owner file; with `exclusive`, only if there is none.

        Returns:
          False if `exclusive` and the file exists.
        """
        text = json.dumps(record, indent=1)
        temporary = f"{self.path}.tmp{uuid.uuid4().hex}"
        tf.io.gfile.makedirs(self.directory)
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)
        try:
            if exclusive:
                try:
                    os.link(temporary, self.path)  # Atomic: fails if there is one.
                except FileExistsError:
                    return False
            else:
                tf.io.gfile.rename(temporary, self.path, overwrite=True)
                return True
        finally:
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)
        return True

    def acquire(self) -> None:
        """Becomes the owner, or raises `errors.GroupOwnedError` naming the owner."""
        local = "://" not in self.directory
        for _ in range(3):
            found = self._read()
            taking_over = found is not None
            if found:
                reason = self._judge(found)
                if reason is None and not self._same_host(found):
                    reason = self._watch(found)
                if reason is None:
                    raise self._refusal(found)
                logging.warning(
                    "%s: taking over %s from pid %s on host %s (%s)",
                    self.what,
                    self.directory,
                    found.get("pid"),
                    found.get("host"),
                    reason,
                )
            now = time.time()
            self._record = {
                **_identity(),
                "started": now,
                "heartbeat": now,
                "token": uuid.uuid4().hex,
                "argv": sys.argv,
            }
            try:
                if local and not taking_over:
                    if not self._write(self._record, exclusive=True):
                        continue  # Another process was first: judge it.
                else:
                    self._write(self._record, exclusive=False)
                    # Two takers (or two writers to an object store) may both
                    # have written: the last one stays, the other yields.
                    time.sleep(_SETTLE_S)
                    found = self._read()
                    if not found or not self._is_mine(found):
                        raise self._refusal(found or {})
            except (tf.errors.OpError, OSError) as e:
                raise errors.ExchangeWriteError(
                    f"cannot write the owner file {self.path}: {errors.one_line(e)}"
                ) from e
            self._start_heartbeat()
            return
        raise self._refusal(self._read() or {})

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, daemon=True, name=f"tf_codistill_owner_{self.what}"
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                found = self._read()
                if found is not None and not self._is_mine(found):
                    self.lost = found or {"pid": "?", "host": "?"}
                    logging.error(
                        "%s: %s was taken over by pid %s on host %s; this process stops "
                        "writing into it",
                        self.what,
                        self.directory,
                        self.lost.get("pid"),
                        self.lost.get("host"),
                    )
                    return
                self._record["heartbeat"] = time.time()
                self._write(self._record, exclusive=False)
            except (tf.errors.OpError, OSError) as e:  # Tried again at the next beat.
                logging.warning("%s: cannot write the heartbeat of %s: %s", self.what, self.path, e)

    def check(self) -> None:
        """Raises if another process took the directory over (seen at a heartbeat).

        Raises:
          errors.GroupOwnedError: naming that process.
        """
        if self.lost is not None:
            raise self._refusal(self.lost)

    def release(self) -> None:
        """Drops one claim; the last one stops the heartbeat and removes the file."""
        with _HELD_LOCK:
            self.claims -= 1
            if self.claims > 0:
                return
            for key, owner in list(_HELD.items()):
                if owner is self:
                    del _HELD[key]
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.lost is None:
            try:
                found = self._read()
                if found and self._is_mine(found):
                    tf.io.gfile.remove(self.path)
            except tf.errors.OpError as e:
                logging.warning("%s: cannot remove %s: %s", self.what, self.path, e)
