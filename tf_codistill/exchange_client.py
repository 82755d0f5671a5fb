"""The group's side of the checkpoint exchange, between steps.

An `ExchangeClient` publishes the group's student and keeps its teacher pool
(`teachers.TeacherPool`) filled with its peers' latest checkpoints:

* which peer each teacher slot holds is asked of the `peer_selection` rule
  once per exchange interval;
* a peer's checkpoint is found, validated and staged by an
  `exchange.TeacherLoader`, then written into the slot and switched to, so a
  bad checkpoint never touches a teacher;
* single-process groups read in the background (a helper thread writes into
  the slot's spare buffer; the switch happens between two steps);
  multi-worker groups reload at the exchange boundary, the workers agreeing
  on every checkpoint (`distribute.agree_min`) so that all replicas share
  one teacher;
* a teacher that predicted NaN or Inf is dropped; a checkpoint of bad
  content is not read again, one whose read failed (maybe transiently) is
  read again a bounded number of times (`MAX_READ_ATTEMPTS`); the peer's next
  checkpoint is tried either way.

`ExchangeCallback` drives it through seven calls (`start`, `exchange`, `poll`,
`check_publish`, `logs`, `note_distill_weight`, `finish`); `CodistillModel.fit`
adds that callback by itself.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from tf_codistill import distribute
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import layout
from tf_codistill import ownership
from tf_codistill import peer_selection
from tf_codistill import teachers

__all__ = ["ExchangeClient", "background_mode", "create"]

ReloadOutcome = teachers.ReloadOutcome


def background_mode(background_reload: Optional[bool], strategy: tf.distribute.Strategy) -> bool:
    """Whether teachers are read in the background: by default, in single-process groups.

    Raises:
      errors.ConfigError: `background_reload=True` for a multi-worker group.
    """
    single_process = distribute.num_workers(strategy) == 1
    if background_reload is None:
        return single_process
    if background_reload and not single_process:
        raise errors.ConfigError(
            "background_reload=True needs a single-process group: the workers of a "
            "multi-worker group must agree on every teacher checkpoint, which they do "
            "between steps (leave background_reload unset or False)"
        )
    return bool(background_reload)


def create(
    student: keras.Model,
    *,
    teacher_builder: Optional[Callable[[], keras.Model]],
    group_index: int,
    peers: Sequence[int],
    exchange_dir: str,
    selection: peer_selection.PeerSelection,
    background_reload: Optional[bool],
    max_staleness_steps: Optional[int],
    max_to_keep: int,
    own_step: Callable[[], int],
    teacher_dtype: Optional[str] = None,
    background_publish: bool = False,
    distill_output: teachers.OutputChoice = None,
) -> tuple[teachers.TeacherPool, ExchangeClient]:
    """A group's teacher pool and the client that fills it (see `CodistillModel`).

    Call inside the strategy scope. The teachers are built first, then the
    client's staging copy, each with `teacher_builder` (or a clone of
    `student`); with `teacher_dtype` the teachers are built in that precision
    (`teachers.resolve_builder`), the staging copy in the student's, so peers'
    checkpoints are read as they were written and cast when written into a
    teacher.

    Raises:
      errors.ConfigError, errors.ConfigTypeError: an inconsistent argument.
    """
    if max_staleness_steps is not None:
        max_staleness_steps = errors.check_int("max_staleness_steps", max_staleness_steps, 0)
    max_to_keep = errors.check_int("max_checkpoints_to_keep", max_to_keep, minimum=1)
    teacher_dtype = teachers.check_teacher_dtype(teacher_dtype)
    builder = teachers.resolve_builder(student, teacher_builder)
    background = background_mode(background_reload, tf.distribute.get_strategy()) and bool(peers)
    pool = teachers.TeacherPool(
        student,
        teachers.resolve_builder(student, teacher_builder, teacher_dtype),
        slot_peers=peer_selection.check_selection(selection, peers, 0, group_index)
        if peers
        else (),
        buffers=2 if background else 1,
        max_staleness_steps=max_staleness_steps,
        distill_output=distill_output,
    )
    client = ExchangeClient(
        pool,
        student=student,
        builder=builder,
        group_index=group_index,
        exchange_dir=exchange_dir,
        peers=peers,
        selection=selection,
        background=background,
        max_to_keep=max_to_keep,
        own_step=own_step,
        background_publish=background_publish,
    )
    return pool, client


class _Outcomes:
    """Counts and logs reload outcomes (each status change once, failures always).

    A peer's first teacher is logged at INFO, every later reload at DEBUG
    (`--verbosity=1`); `summary()` gives the reloads since its last call in
    one line, which `callbacks.ProgressLogger` prints with its progress lines:
    one line per reload drowned everything else (113 of the demo's 229 lines).
    """

    def __init__(self, group_index: int, peers: Sequence[int]):
        self.group_index = group_index
        self.last_status: dict[int, Optional[str]] = {p: None for p in peers}
        self.reload_counts = {p: {"loaded": 0, "failed": 0} for p in peers}
        self.fault_counts = {"peer_reload_failures": 0, "teachers_dropped": 0}
        self.last_failure: dict[int, str] = {}
        # Per peer since the last summary: [reloads, latest step, its staleness].
        # Recorded by the background reader too, read by the training thread.
        self._recent: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def record(self, outcomes: Sequence[ReloadOutcome]) -> None:
        for o in outcomes:
            previous = self.last_status.get(o.peer)
            self.last_status[o.peer] = o.status
            if o.status == "loaded":
                self.reload_counts[o.peer]["loaded"] += 1
                with self._lock:
                    count = self._recent.get(o.peer, [0])[0]
                    self._recent[o.peer] = [count + 1, o.step, o.staleness]
                first = self.reload_counts[o.peer]["loaded"] == 1
                logging.log(
                    logging.INFO if first else logging.DEBUG,
                    "Group %d: %steacher for peer %d <- step %d (staleness %d steps, %.3f s)",
                    self.group_index,
                    "first " if first else "",
                    o.peer,
                    o.step,
                    o.staleness,
                    o.seconds,
                )
            elif o.status == "failed":
                self.last_failure[o.peer] = o.reason
                self.reload_counts[o.peer]["failed"] += 1
                self.fault_counts["peer_reload_failures"] += 1
                logging.warning(
                    "Group %d: keeping the previous teacher for peer %d (step %s): %s",
                    self.group_index,
                    o.peer,
                    o.step if o.step >= 0 else "none",
                    o.reason,
                )
            elif o.status == "no_checkpoint" and previous != "no_checkpoint":
                logging.info(
                    "Group %d: peer %d has not published yet; left out until it does",
                    self.group_index,
                    o.peer,
                )

    def summary(self) -> str:
        """The teachers loaded since the last call, in one line ("" if none).

        E.g. `peer 1: 9 reloads, now step 2450 (staleness 495)`.
        """
        with self._lock:
            recent, self._recent = self._recent, {}
        return "; ".join(
            f"peer {peer}: {count} reload{'s' if count > 1 else ''}, now step {step} "
            f"(staleness {staleness})"
            for peer, (count, step, staleness) in sorted(recent.items())
        )

    def report(self, distilled: bool) -> dict:
        """Whether the group distilled, and what became of each peer, for metrics.json.

        Returns:
          `{"happened": bool, "peers": {peer: {"loaded", "failed",
          "last_failure"}}, "never_loaded": [peers], "why_not": str}`;
          `why_not` is empty when it happened, else says why not, peer by peer.
        """
        peers, never_loaded, reasons = {}, [], []
        for peer, counts in self.reload_counts.items():
            last = self.last_failure.get(peer, "")
            peers[str(peer)] = {**counts, "last_failure": last}
            if counts["loaded"]:
                continue
            never_loaded.append(peer)
            if counts["failed"]:
                reasons.append(
                    f"peer {peer}'s checkpoints were all refused ({counts['failed']} failed "
                    f"reads; last: {last})"
                )
            else:
                reasons.append(f"peer {peer} published no checkpoint")
        if distilled:
            why_not = ""
        elif not self.reload_counts:
            why_not = "it has no peers"
        elif reasons:
            why_not = "; ".join(reasons)
        else:
            why_not = "teachers were loaded but the distillation weight was 0 at every step"
        return {
            "happened": distilled,
            "peers": peers,
            "never_loaded": never_loaded,
            "why_not": why_not,
        }


# Reads of one checkpoint that may fail (I/O errors, files vanished or not yet
# complete) before it is refused; bad content is refused at once.
MAX_READ_ATTEMPTS = 3


class _Refusals:
    """Which peer checkpoints are not to be read again.

    Bad content (`errors.CheckpointContentError`: other variables, NaN/Inf, a
    wrong step inside, a teacher that predicted NaN/Inf) is refused at the
    first failure; a failed read, which may be transient, is retried at the
    next reload until `MAX_READ_ATTEMPTS` reads of that checkpoint failed.
    Either way the peer's next checkpoint is tried. Only the latest failing
    checkpoint of each peer is remembered (peers publish increasing steps).
    Read by the background thread, written between steps.
    """

    def __init__(self, max_attempts: int = MAX_READ_ATTEMPTS):
        self.max_attempts = max_attempts
        self._latest: dict[int, tuple[int, int, bool]] = {}  # peer -> (step, attempts, refused)

    def refused(self, peer: int, step: int) -> bool:
        step_, _, refused = self._latest.get(peer, (None, 0, False))
        return refused and step_ == step

    def refuse(self, peer: int, step: int) -> None:
        self._latest[peer] = (step, self.max_attempts, True)

    def failed(self, peer: int, step: int, error: Optional[Exception]) -> str:
        """Records a failed read of `peer`'s `step`; returns what happens next, for the log."""
        if isinstance(error, errors.CheckpointContentError):
            self.refuse(peer, step)
            return "refused"
        previous, attempts, _ = self._latest.get(peer, (None, 0, False))
        attempts = attempts + 1 if previous == step else 1
        refused = attempts >= self.max_attempts
        self._latest[peer] = (step, attempts, refused)
        if refused:
            return f"refused after {attempts} failed reads"
        return f"read {attempts} of {self.max_attempts} failed; tried again at the next reload"


class _BackgroundReads:
    """Reads the slots' peers' newer checkpoints on a helper thread (single-process groups).

    A job stages each new checkpoint and writes it into the slot's spare
    buffer; `poll` or `wait`, between two steps, switches the slots to what
    the finished job wrote. Failed reads are recorded in `refusals` (a
    `_Refusals`), shared with the client.
    """

    def __init__(self, pool, loaders, refusals, outcomes, own_step):
        self._pool = pool
        self._loaders = loaders
        self._refusals = refusals
        self._outcomes = outcomes
        self._own_step = own_step
        self._strategy = tf.distribute.get_strategy()
        self._job: Optional[concurrent.futures.Future] = None

    def poll(self, assigned: tuple[int, ...]) -> list[ReloadOutcome]:
        outcomes = []
        if self._job is not None and self._job.done():
            outcomes = self.wait()
        if self._job is None:
            # Host copies: no device read per call (a sync point on GPU/TPU).
            self._job = _prefetch_executor().submit(self._read, assigned, *self._pool.holding())
        return outcomes

    def wait(self) -> list[ReloadOutcome]:
        if self._job is None:
            return []
        job, self._job = self._job, None
        return self._harvest(job)

    def _read(self, assigned, active, held_steps, held_peers) -> list:
        """On the helper thread: newer checkpoints of the slots' peers -> spare buffers."""
        results = []
        for k, peer in enumerate(assigned):
            start = time.perf_counter()
            loader = self._loaders[peer]
            try:
                ref = loader.latest()
            except errors.CheckpointError as e:
                results.append((k, peer, -1, e, 0.0))
                continue
            if ref is None or self._refusals.refused(peer, ref.step):
                continue
            if peer == held_peers[k] and ref.step <= held_steps[k]:
                continue  # Held already, or an older state file (a stale read).
            with loader.lock:
                try:
                    loader.stage(ref)
                except errors.CheckpointNotReadyError as e:
                    results.append((k, peer, -1, str(e), time.perf_counter() - start))
                    continue  # Kept as not refused: tried again at the next look.
                except errors.CheckpointError as e:
                    results.append((k, peer, ref.step, e, time.perf_counter() - start))
                    continue
                with self._strategy.scope():
                    loader.write(self._pool.buffer(k, 1 - int(active[k])))
            results.append((k, peer, ref.step, None, time.perf_counter() - start))
        return results

    def _harvest(self, job: concurrent.futures.Future) -> list[ReloadOutcome]:
        own_step = self._own_step()
        outcomes = []
        for k, peer, step, error, seconds in job.result():
            if error is not None:
                reason = str(error)
                if step >= 0:
                    reason += f" ({self._refusals.failed(peer, step, error)})"
                staleness = own_step - step if step >= 0 else None
                outcomes.append(ReloadOutcome(peer, "failed", step, staleness, reason=reason))
                continue
            self._pool.switch(k, 1 - int(self._pool.holding()[0][k]), step, peer)
            outcomes.append(ReloadOutcome(peer, "loaded", step, own_step - step, seconds=seconds))
        self._outcomes.record(outcomes)
        return outcomes


class ExchangeClient:
    """Publishes the student and reloads the teacher pool, between steps only.

    Args:
      pool: the model's teacher pool.
      student: the group's student (what it publishes).
      builder: builds a model of the student's architecture (the staging copy).
      group_index: this group.
      exchange_dir: the run's exchange dir.
      peers: the groups this one learns from.
      selection: which peer each slot holds in each exchange interval.
      background: read peers' checkpoints on a helper thread (single-process
        groups; see `background_mode`).
      max_to_keep: published checkpoints kept.
      own_step: returns the group's current train step (the optimizer's).
      background_publish: at exchange boundaries, snapshot the student and
        write its checkpoint on a helper thread (`exchange.BackgroundPublisher`);
        a failed write is raised by `check_publish` after the next step.
    """

    def __init__(
        self,
        pool: teachers.TeacherPool,
        *,
        student: keras.Model,
        builder: Callable[[], keras.Model],
        group_index: int,
        exchange_dir: str,
        peers: Sequence[int],
        selection: peer_selection.PeerSelection,
        background: bool,
        max_to_keep: int,
        own_step: Callable[[], int],
        background_publish: bool = False,
    ):
        self._pool = pool
        self._strategy = tf.distribute.get_strategy()
        self.group_index = group_index
        self.peers = tuple(peers)
        self.background = bool(background) and bool(self.peers)
        self.selection = selection
        self._own_step = own_step
        self._publisher = None
        self._own: Optional[_OwnPublications] = None
        if distribute.is_chief(self._strategy):
            directory = layout.group_dir(exchange_dir, group_index)
            if background_publish:
                self._publisher = _background_publisher(student, builder, directory, max_to_keep)
            else:
                self._publisher = exchange.Publisher(student, directory, max_to_keep=max_to_keep)
            self._own = _OwnPublications(self._publisher, group_index, own_step)
        self._outcomes = _Outcomes(group_index, self.peers)
        # Whether a train step used psi (weight > 0), since the start.
        self._distilled = False
        # Checkpoints not to read again (bad content, or reads failed too often).
        self._refusals = _Refusals()
        # Non-finite training batches per slot already acted on (set at the
        # first start, after BackupAndRestore).
        self._nonfinite_seen: Optional[np.ndarray] = None
        self._loaders: dict[int, exchange.TeacherLoader] = {}
        self._assigned: tuple[int, ...] = ()
        self._reads: Optional[_BackgroundReads] = None
        if self.peers:
            self._assigned = self._select(0)
            self._loaders = self._make_loaders(builder, student, exchange_dir)
        if self.background:
            self._reads = _BackgroundReads(
                pool, self._loaders, self._refusals, self._outcomes, own_step
            )

    def _make_loaders(self, builder, student, exchange_dir) -> dict[int, exchange.TeacherLoader]:
        def make_staging():
            staging = builder()
            teachers.build_like(staging, student)
            return staging, exchange.ModelSignature.of_model(staging)

        # One staging copy serves all peers: they are loaded one after another.
        staging, signature = exchange.outside_strategy(make_staging)
        lock = threading.Lock()
        return {
            p: exchange.TeacherLoader(
                p, layout.group_dir(exchange_dir, p), staging, signature, lock
            )
            for p in self.peers
        }

    def _select(self, interval: int) -> tuple[int, ...]:
        return peer_selection.check_selection(
            self.selection, self.peers, interval, self.group_index
        )

    @property
    def background_publish(self) -> bool:
        """Whether checkpoints are written on a helper thread at exchange boundaries."""
        return isinstance(self._publisher, exchange.BackgroundPublisher)

    @property
    def publishing(self) -> bool:
        """Whether this process publishes (the chief of the group)."""
        return self._publisher is not None

    @property
    def reload_counts(self) -> dict:
        """Per peer: `{"loaded": n, "failed": m}` since the start."""
        return self._outcomes.reload_counts

    def reload_summary(self) -> str:
        """The teachers loaded since the last call, in one line ("" if none)."""
        return self._outcomes.summary()

    @property
    def fault_counts(self) -> dict:
        """`peer_reload_failures` and `teachers_dropped` since the start."""
        return self._outcomes.fault_counts

    # What ExchangeCallback calls.

    def start(self, interval: int, wait_for_peers_s: float = 0.0, poll_s: float = 0.5) -> None:
        """At the start of training: loads the peers' latest checkpoints.

        A peer of another architecture at the start is a configuration
        mistake: raises `PeerMismatchError` rather than training without it.

        Args:
          interval: the exchange interval training starts in.
          wait_for_peers_s: if > 0, publish first, then wait up to this long
            for every peer's first checkpoint (a start barrier).
          poll_s: polling interval of the barrier.
        """
        if self._own is not None:
            self._own.claim()
        self.set_interval(interval)
        if self.peers and self._nonfinite_seen is None:
            # A count restored by BackupAndRestore is history, not news.
            self._nonfinite_seen = self._pool.nonfinite_training_batches()
        if wait_for_peers_s > 0 and self.peers:
            self._wait_for_peers(wait_for_peers_s, poll_s)
        else:
            self.reload(raise_on_mismatch=True)

    def _wait_for_peers(self, timeout_s: float, poll_s: float) -> None:
        self.publish()
        deadline = time.time() + timeout_s
        while True:
            outcomes = self.reload(raise_on_mismatch=True)
            all_loaded = all(o.status in ("loaded", "unchanged") for o in outcomes)
            done = all_loaded or time.time() >= deadline
            # Every worker of a group must run the same number of reloads
            # (they are collectives): stop only when all of them are done.
            if distribute.agree_min([int(done)], self._strategy)[0]:
                break
            time.sleep(poll_s)
        if not all_loaded:
            missing = [o.peer for o in outcomes if o.status not in ("loaded", "unchanged")]
            logging.warning(
                "Peers %s did not publish within %.0f s; starting without them",
                missing,
                timeout_s,
            )

    def exchange(self, interval: int) -> None:
        """At an exchange boundary: publish, drop bad teachers, reload (blocking mode).

        With background publishing the checkpoint is written on a helper
        thread while training goes on.
        """
        self.publish(wait=False)
        self.drop_nonfinite_teachers()
        self.set_interval(interval)
        if not self.background:
            self.reload()

    def poll(self) -> list[ReloadOutcome]:
        """Background reloads: switches to teachers read since the last call, starts the next read.

        Cheap enough to call often: it only looks at a finished background job
        (switching a teacher is two scalar assignments) and, when none is
        running, starts one that looks for each slot's peer's newer checkpoint
        and writes it into the slot's spare buffer.

        Returns:
          The outcomes of the background job that finished since the last
          call (loaded or failed peers), empty otherwise.
        """
        return self._reads.poll(self._assigned) if self._reads else []

    def logs(self, own_step: int) -> dict:
        """Host-side exchange health for logs and TensorBoard (no device reads).

        `teachers_in_use`: slots whose teacher the next step may use;
        `stale_peers`: slots left out by `max_staleness_steps`;
        `peer_reload_failures` and `teachers_dropped`: counts since start.
        """
        if not self.peers:
            return {}
        _, steps, _ = self._pool.holding()
        loaded = steps >= 0
        stale = np.zeros_like(loaded)
        if self._pool.max_staleness_steps is not None:
            stale = loaded & (own_step - steps > self._pool.max_staleness_steps)
        logs = {
            "teachers_in_use": float(np.sum(loaded & ~stale)),
            "stale_peers": float(np.sum(stale)),
        }
        logs.update({k: float(v) for k, v in self.fault_counts.items()})
        return logs

    def note_distill_weight(self, weight) -> None:
        """Records that training used psi if `weight` (a step's or mean weight) is > 0."""
        if weight is not None and float(np.asarray(weight)) > 0:
            self._distilled = True

    def distillation(self) -> dict:
        """Whether this group distilled, and what became of each peer (see `_Outcomes.report`)."""
        return self._outcomes.report(self._distilled)

    def finish(self) -> None:
        """At the end of training: takes in a running background read, publishes.

        Then lets go of the group directory (`ownership`), which this process
        owned while it trained.
        """
        self.wait()
        self.publish(final=True)
        report = self.distillation()
        if self.peers and not report["happened"]:
            logging.warning(
                "Group %d: no distillation happened in this fit: %s",
                self.group_index,
                report["why_not"],
            )
        if self._own is not None:
            self._own.release()

    # The operations themselves.

    def set_interval(self, interval: int) -> None:
        """Asks the peer-selection rule which peer each slot holds in `interval`."""
        if self.peers:
            self._assigned = self._select(max(0, int(interval)))

    def publish(self, wait: bool = True, final: bool = False) -> Optional[str]:
        """Publishes the student now (see `_OwnPublications.publish`); None off the chief."""
        return self._own.publish(wait, final) if self._own is not None else None

    def check_publish(self) -> None:
        """Raises the error of a background write that failed (see `_OwnPublications.check`)."""
        if self._own is not None:
            self._own.check()

    def reload(self, raise_on_mismatch: bool = False) -> list[ReloadOutcome]:
        """Restores each slot's peer's latest checkpoint into the slot, now.

        Does not raise for a peer's sake: a peer without a checkpoint is left
        out, and a checkpoint that cannot be used (missing, truncated, deleted
        mid-read, mismatched, non-finite) leaves the slot's previous teacher
        in place; either way the reason is logged and returned. A checkpoint
        of bad content is not tried again, one whose read failed is tried
        again at the next reloads, `MAX_READ_ATTEMPTS` reads in all; the
        peer's next checkpoint is tried either way. Under
        MultiWorkerMirroredStrategy every worker must call this at the same
        step: the workers agree on which checkpoint to load and load it only
        if all of them could read it, so that all replicas share one teacher.

        Args:
          raise_on_mismatch: raise `PeerMismatchError` if a peer from which no
            teacher was ever loaded publishes a checkpoint with other variables
            than this model (other architecture, shapes or dtypes): that is a
            configuration mistake, not a transient fault. A peer that changes
            later is only skipped, with a warning.

        Returns:
          One `ReloadOutcome` per slot, in slot order (with all peers: the
          order of the peers).

        Raises:
          PeerMismatchError: see `raise_on_mismatch`.
        """
        if not self._loaders:
            return []
        self.wait()
        own_step = self._own_step()
        found, find_errors = [], {}
        for peer in self._assigned:
            try:
                found.append(exchange.outside_strategy(self._loaders[peer].latest))
            except errors.CheckpointError as e:
                found.append(None)
                find_errors[peer] = str(e)
        agreed = distribute.agree_min([-1 if r is None else r.step for r in found], self._strategy)
        # Read afresh: a restore (BackupAndRestore) may have changed them.
        active, held_steps, held_peers = self._pool.holding(refresh=True)
        outcomes = []
        for k, peer in enumerate(self._assigned):
            step = int(agreed[k])
            if step < 0:
                reason = find_errors.get(peer, "")
                status = "failed" if reason else "no_checkpoint"
                outcomes.append(ReloadOutcome(peer, status, reason=reason))
                continue
            if peer == held_peers[k] and step <= held_steps[k]:
                # Held already, or an older state file than the one this
                # teacher came from (an object store's stale read): kept.
                held = int(held_steps[k])
                outcomes.append(ReloadOutcome(peer, "unchanged", held, own_step - held))
                continue
            if self._refusals.refused(peer, step):
                outcomes.append(ReloadOutcome(peer, "left_out", step, own_step - step))
                continue
            outcome, error = self._load_agreed(k, peer, step, int(active[k]), own_step)
            if outcome.status != "loaded":
                next_ = self._refusals.failed(peer, step, error)
                outcome = dataclasses.replace(outcome, reason=f"{outcome.reason} ({next_})")
            outcomes.append(outcome)
            if outcome.status == "loaded":
                continue
            mismatch = isinstance(error, errors.CheckpointMismatchError)
            ever_loaded = peer == held_peers[k] and held_steps[k] >= 0
            if mismatch and raise_on_mismatch and not ever_loaded:
                self._outcomes.record(outcomes)
                raise errors.PeerMismatchError(
                    f"group {self.group_index} cannot learn from group {peer}: "
                    f"{outcome.reason}. All groups of a run must train the same architecture "
                    "(compare their gin configs, model_fn or teacher_builder)"
                )
        self._outcomes.record(outcomes)
        return outcomes

    def _load_agreed(self, k: int, peer: int, step: int, active: int, own_step: int):
        """Stages `peer`'s `ckpt-<step>` on every worker; writes it into slot k if all could.

        Returns:
          (the outcome, this worker's error staging it, None if none).
        """
        start = time.perf_counter()
        loader = self._loaders[peer]
        ref = exchange.CheckpointRef(layout.checkpoint_prefix(loader.directory, step), step)
        reason, error = "", None
        with loader.lock:
            try:
                exchange.outside_strategy(loader.stage, ref)
            except errors.CheckpointError as e:
                reason, error = str(e), e
            all_ok = distribute.agree_min([0 if reason else 1], self._strategy)[0] == 1
            if all_ok:
                # Written into the buffer not in use, then switched to.
                buffer = 1 - active if self._pool.buffers == 2 else 0
                with self._strategy.scope():
                    loader.write(self._pool.buffer(k, buffer))
                self._pool.switch(k, buffer, step, peer)
        if all_ok:
            seconds = time.perf_counter() - start
            return ReloadOutcome(peer, "loaded", step, own_step - step, seconds=seconds), None
        reason = reason or "another worker of this group could not read it"
        return ReloadOutcome(peer, "failed", step, own_step - step, reason=reason), error

    def drop_nonfinite_teachers(self) -> list[int]:
        """Drops teachers that predicted NaN/Inf since the last call.

        The train step already left such a teacher out of every batch where
        its predictions were not finite; this takes it out of use until its
        peer publishes a new checkpoint (the same one is not loaded again).
        Reads one small variable from the device; under
        MultiWorkerMirroredStrategy call it on every worker at the same step.

        Counts training batches only, in a counter Keras never resets (its
        metrics are reset every epoch and by evaluation, which would miss
        batches or count evaluation's).

        Returns:
          The peers whose teachers were dropped.
        """
        if not self.peers:
            return []
        counts = self._pool.nonfinite_training_batches()
        seen = np.zeros_like(counts) if self._nonfinite_seen is None else self._nonfinite_seen
        fresh = counts - seen
        self._nonfinite_seen = counts
        dropped = []
        for k in np.flatnonzero(fresh > 0):
            self.wait()
            active, steps, peers = self._pool.holding()
            if steps[k] < 0:
                continue
            peer = int(peers[k])
            self._refusals.refuse(peer, int(steps[k]))
            self._pool.switch(k, int(active[k]), -1)
            self.fault_counts["teachers_dropped"] += 1
            dropped.append(peer)
            logging.warning(
                "Group %d: the teacher for peer %d (step %d) predicted NaN or Inf on %d "
                "batch(es); left out until peer %d publishes a new checkpoint",
                self.group_index,
                peer,
                steps[k],
                int(fresh[k]),
                peer,
            )
        return dropped

    def wait(self) -> list[ReloadOutcome]:
        """Finishes a running background read and switches to what it read."""
        return self._reads.wait() if self._reads else []


class _OwnPublications:
    """The group's own publications, on its chief: ownership, the write, its errors, logs.

    Args:
      publisher: an `exchange.Publisher` or `exchange.BackgroundPublisher`.
      group_index: the group.
      own_step: returns the group's train step.
    """

    def __init__(self, publisher, group_index: int, own_step: Callable[[], int]):
        self._publisher = publisher
        self._background = isinstance(publisher, exchange.BackgroundPublisher)
        self.group_index = group_index
        self._own_step = own_step
        self._owner: Optional[ownership.GroupOwner] = None
        self._publications = 0

    def claim(self) -> None:
        """Makes this process the group directory's owner (once).

        Raises:
          errors.GroupOwnedError: another live process writes this group.
        """
        if self._owner is None:
            # This process's claim on the group directory while it publishes.
            self._owner = ownership.claim(self._publisher.directory, f"group {self.group_index}")

    def release(self) -> None:
        """Lets go of the group directory, owned since `claim`."""
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner.release()

    def publish(self, wait: bool = True, final: bool = False) -> Optional[str]:
        """Publishes the student as `ckpt-<step>`.

        Args:
          wait: with background publishing, return only once the checkpoint
            is written (False: it is written on a helper thread).
          final: the last publication of training: on a store that rate-limits
            writes (an object store), wait for it rather than skip it.

        Returns:
          The checkpoint prefix written, or None when the publication was
          skipped, too soon after the previous one.

        Raises:
          ExchangeWriteError: the exchange directory cannot be written (with
            background publishing, possibly an earlier step's write).
          GroupOwnedError: another live process writes this group's directory.
        """
        self.claim()
        self._owner.check()  # Stops here if another process took the group over.
        step = self._own_step()
        start = time.perf_counter()
        try:
            if step != self._publisher.last_published_step and self._publisher.is_published(step):
                # A restarted group going again through steps it published before.
                logging.info(
                    "Group %d: step %d was published before this process started; kept as it is",
                    self.group_index,
                    step,
                )
                return self._publisher.publish(step)
            path = self._publisher.publish(step, wait=final)
            if wait:
                self._flush()
        except (tf.errors.OpError, OSError, exchange.PublishFailed) as e:
            raise self._write_error(step, e) from e
        if path is None:
            logging.vlog(
                1,
                "Group %d: step %d not published (too soon after the last write of the state file)",
                self.group_index,
                step,
            )
            return None
        # The first publication at INFO, the routine ones at verbosity 1.
        logging.vlog(
            0 if self._publications == 0 else 1,
            "Group %d: published step %d to %s (%.3f s%s)",
            self.group_index,
            step,
            path,
            time.perf_counter() - start,
            "" if wait or not self._background else ", written in the background",
        )
        self._publications += 1
        return path

    def _write_error(self, step: int, e: BaseException) -> errors.ExchangeWriteError:
        # One line: train.py shows it as the reason the group stopped.
        if isinstance(e, exchange.PublishFailed):
            step, e = e.step, e.cause
        return errors.ExchangeWriteError(
            f"group {self.group_index} cannot publish step {step} into "
            f"{self._publisher.directory}: {errors.one_line(e)}"
        )

    def _flush(self) -> None:
        if isinstance(self._publisher, exchange.BackgroundPublisher):
            self._publisher.flush()

    def check(self) -> None:
        """Raises the error of a background write that failed; cheap, no waiting.

        Raises:
          ExchangeWriteError: as `publish` would have, naming the step.
        """
        publisher = self._publisher
        if isinstance(publisher, exchange.BackgroundPublisher) and publisher.failed():
            try:
                publisher.flush()
            except exchange.PublishFailed as e:
                raise self._write_error(e.step, e) from e.cause


def _background_publisher(student, builder, directory: str, max_to_keep: int):
    """An `exchange.BackgroundPublisher` with a snapshot built like the student."""

    def make_snapshot():
        snapshot = builder()
        teachers.build_like(snapshot, student)
        return snapshot

    snapshot = exchange.outside_strategy(make_snapshot)
    return exchange.BackgroundPublisher(student, snapshot, directory, max_to_keep=max_to_keep)


_PREFETCH_EXECUTOR: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _prefetch_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One background thread for teacher reads (a thread is outside any strategy scope)."""
    global _PREFETCH_EXECUTOR
    if _PREFETCH_EXECUTOR is None:
        _PREFETCH_EXECUTOR = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tf_codistill_prefetch"
        )
    return _PREFETCH_EXECUTOR
