"""The exchange on an object store (gs:// semantics), through the offline emulator.

What the store does (tf_codistill/testing/object_store.py): whole-object
writes and no rename; about one write per second per object (429 beyond);
writes and deletes that show late, so readers see an object's previous
version or none. What the exchange must do: at most one state-file write per
publication, never too fast, never a rename; a reader that sees an older
state or misses an object keeps its teacher and tries again.
"""

import os
import re
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_codistill import exchange
from tf_codistill import storage
from tf_codistill import testing
from tf_codistill.testing import object_store


class FakeClock:
    """Monotonic seconds that move only when told (the rate limit and lags use it)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def store(tmp_path):
    """An emulated bucket at <tmp>/bucket, with a fake clock, registered for the exchange."""
    clock = FakeClock()
    with object_store.ObjectStoreEmulator(str(tmp_path / "bucket"), clock=clock) as emulator:
        with storage.register(emulator.directory, emulator):
            yield emulator


def _publisher(store, seed=1, group=1, max_to_keep=5):
    return exchange.Publisher(
        testing.mlp(seed=seed), exchange.group_dir(store.directory, group), max_to_keep
    )


# The emulator itself.


def test_a_write_shows_whole_after_its_lag_and_the_previous_version_until_then(tmp_path):
    clock = FakeClock()
    with object_store.ObjectStoreEmulator(str(tmp_path / "b"), lag_s=2.0, clock=clock) as store:
        path = os.path.join(store.directory, "x")
        store.write(path, b"one")
        assert not os.path.exists(path)  # Not listed, not readable yet.
        clock.advance(2.0)
        store.settle()
        clock.advance(1.0)
        store.write(path, b"two")
        assert open(path, "rb").read() == b"one"  # The previous version.
        clock.advance(2.0)
        store.settle()
        assert open(path, "rb").read() == b"two"
        store.remove(path)
        assert os.path.exists(path)  # Deleted, still listed for a while.
        clock.advance(2.0)
        store.settle()
        assert not os.path.exists(path)


def test_one_object_takes_one_write_per_second_and_there_is_no_rename(store):
    path = os.path.join(store.directory, "state")
    store.write(path, b"1")
    store.clock.advance(0.5)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="429"):
        store.write(path, b"2")
    store.write(os.path.join(store.directory, "other"), b"3")  # Per object.
    store.clock.advance(0.5)
    store.write(path, b"2")
    assert store.write_counts == {"state": 2, "other": 1} and store.rate_limited == ["state"]
    with pytest.raises(tf.errors.UnimplementedError):
        store.rename(path, path + "2")


def test_held_objects_stay_invisible_until_released_in_write_order(store):
    store.hold("*.data-*")
    store.write(os.path.join(store.directory, "c.data-00000-of-00001"), b"d")
    store.write(os.path.join(store.directory, "c.index"), b"i")
    store.settle()
    assert os.listdir(store.directory) == ["c.index"]
    assert store.pending() == ["c.data-00000-of-00001"]
    store.release()
    assert sorted(os.listdir(store.directory)) == ["c.data-00000-of-00001", "c.index"]


# Publishing.


def test_each_publication_writes_each_object_once_state_last_and_never_renames(store):
    publisher = _publisher(store, max_to_keep=2)
    for step in (10, 20, 30):
        assert publisher.publish(step).endswith(f"ckpt-{step}")
        store.clock.advance(1.0)
    data = "group_1/ckpt-{}.data-00000-of-00001"
    assert store.writes == [
        data.format(10),
        "group_1/ckpt-10.index",
        "group_1/checkpoint",
        data.format(20),
        "group_1/ckpt-20.index",
        "group_1/checkpoint",
        data.format(30),
        "group_1/ckpt-30.index",
        "group_1/checkpoint",
    ]
    store.settle()
    # No temporary names ever reached the store (it has no rename to undo them).
    assert sorted(os.listdir(os.path.join(store.directory, "group_1"))) == [
        "checkpoint",
        "ckpt-20.data-00000-of-00001",
        "ckpt-20.index",
        "ckpt-30.data-00000-of-00001",
        "ckpt-30.index",
    ]
    ref = exchange.latest_checkpoint(exchange.group_dir(store.directory, 1))
    assert ref.step == 30
    assert tf.train.latest_checkpoint(exchange.group_dir(store.directory, 1)).endswith("ckpt-30")


def test_a_publication_within_the_rate_limit_is_skipped_and_the_last_one_waits(store):
    publisher = _publisher(store)
    publisher.publish(10)
    store.clock.advance(0.4)
    assert publisher.publish(20) is None  # Skipped: nothing written, nothing refused.
    assert publisher.last_published_step == 10 and not publisher.is_published(20)
    # The last publication of training waits instead; the wait is real time,
    # so the fake clock is moved by the sleep.
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        store.clock.advance(seconds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "sleep", sleep)
        assert publisher.publish(20, wait=True).endswith("ckpt-20")
    assert slept == [pytest.approx(0.6)]
    assert store.write_counts["group_1/checkpoint"] == 2 and store.rate_limited == []


# Reading.


@pytest.fixture
def reader(store):
    """Group 0 of two, holding peer 1's ckpt-10 as its teacher."""
    publisher = _publisher(store)
    publisher.publish(10)
    store.clock.advance(1.0)
    store.settle()
    model = testing.codistill_model(store.directory, background_reload=False)
    (outcome,) = model.reload_teachers()
    assert (outcome.status, outcome.step) == ("loaded", 10)
    return model, publisher


def _teacher(model):
    return [w.copy() for w in model.teachers[0].get_weights()]


def _assert_kept(model, weights, step=10):
    assert list(model.teacher_steps) == [step]
    for before, now in zip(weights, model.teachers[0].get_weights(), strict=True):
        np.testing.assert_array_equal(before, now)


@pytest.mark.parametrize(
    "hidden, reason",
    [
        ("*.data-*", "ckpt-20 has no data files"),  # Index and state listed first.
        ("*.index", r"ckpt-20.index is missing"),  # The state file listed first.
    ],
)
def test_a_checkpoint_not_visible_yet_keeps_the_teacher_and_is_retried(reader, hidden, reason):
    model, publisher = reader
    store = storage.store_for(publisher.directory)
    before = _teacher(model)
    store.hold(hidden)
    publisher.publish(20)
    store.settle()
    for _ in range(2):  # Not refused: tried again at every reload.
        (outcome,) = model.reload_teachers()
        assert outcome.status == "failed"
        assert re.search(reason, outcome.reason), outcome
        _assert_kept(model, before)
    store.release()
    (outcome,) = model.reload_teachers()
    assert (outcome.status, outcome.step) == ("loaded", 20)


def test_an_older_state_file_after_a_newer_one_keeps_the_newer_teacher(reader, tmp_path):
    model, publisher = reader
    store = storage.store_for(publisher.directory)
    state = os.path.join(publisher.directory, "checkpoint")
    older = open(state, "rb").read()  # Names ckpt-10.
    store.clock.advance(1.0)
    publisher.publish(20)
    store.settle()
    assert model.reload_teachers()[0].step == 20
    weights = _teacher(model)
    # A read that shows the state file's previous version (names ckpt-10,
    # still there): the reader does not go back to it.
    with open(state, "wb") as f:
        f.write(older)
    (outcome,) = model.reload_teachers()
    assert (outcome.status, outcome.step) == ("unchanged", 20)
    _assert_kept(model, weights, step=20)


def test_a_checkpoint_deleted_by_cleanup_under_a_stale_state_is_retried(store):
    publisher = _publisher(store, max_to_keep=1)
    publisher.publish(10)
    store.settle()
    model = testing.codistill_model(store.directory, background_reload=False)
    assert model.reload_teachers()[0].step == 10
    weights = _teacher(model)
    store.hold("group_1/checkpoint")  # The new state file shows late ...
    store.clock.advance(1.0)
    publisher.publish(20)  # ... while ckpt-10's deletion shows at once.
    store.settle()
    assert not os.path.exists(os.path.join(publisher.directory, "ckpt-10.index"))
    store.clock.advance(1.0)
    publisher.publish(30)
    store.settle()
    (outcome,) = model.reload_teachers()  # The state file still names ckpt-10.
    assert outcome.status == "failed" and "ckpt-10.index is missing" in outcome.reason
    _assert_kept(model, weights)
    store.release()
    assert model.reload_teachers()[0].step == 30


def test_background_reads_retry_a_checkpoint_not_visible_yet(store):
    publisher = _publisher(store)
    publisher.publish(10)
    store.settle()
    model = testing.codistill_model(store.directory)  # Background reads.
    client = model.exchange_client
    assert client.background
    client.poll()
    (outcome,) = client.wait()
    assert (outcome.status, outcome.step) == ("loaded", 10)
    store.hold("*.data-*")
    store.clock.advance(1.0)
    publisher.publish(20)
    store.settle()
    client.poll()
    (outcome,) = client.wait()
    assert outcome.status == "failed" and "ckpt-20 has no data files" in outcome.reason
    store.release()
    client.poll()
    (outcome,) = client.wait()
    assert (outcome.status, outcome.step) == ("loaded", 20)


def test_a_reader_racing_a_fast_writer_never_loads_a_bad_or_older_teacher(tmp_path):
    """Random lags per object (data, index and state show in any order), a
    writer publishing as fast as the store allows, a reader reloading all the
    while: every load is a complete checkpoint, the steps never go down, the
    state file is written once per publication and never too fast."""
    rng = np.random.default_rng(0)
    lags = {}

    def lag(relpath):
        return lags.setdefault(relpath + str(len(lags)), float(rng.uniform(0.0, 0.05)))

    with object_store.ObjectStoreEmulator(
        str(tmp_path / "bucket"), lag_s=lag, min_write_interval_s=0.05
    ) as store:
        with storage.register(store.directory, store):
            peer = testing.mlp(seed=1)
            publisher = exchange.Publisher(peer, exchange.group_dir(store.directory, 1), 2)
            publisher.publish(0)
            store.settle()
            model = testing.codistill_model(store.directory, background_reload=False)
            stop = threading.Event()
            published = []

            def write():
                step = 0
                while not stop.is_set():
                    step += 1
                    peer.set_weights([w + 1.0 for w in peer.get_weights()])
                    if publisher.publish(step) is not None:
                        published.append(step)
                    time.sleep(0.01)

            initial = peer.get_weights()[0].copy()
            writer = threading.Thread(target=write)
            writer.start()
            loaded, failures = [], []
            # Up to 30 s for 15 loads (about 4 s on an idle machine): the
            # other core may be running an end-to-end test beside this one.
            deadline = time.monotonic() + 30.0
            try:
                while time.monotonic() < deadline and len(loaded) < 15:
                    (outcome,) = model.reload_teachers()
                    if outcome.status == "loaded":
                        loaded.append(outcome.step)
                        # Teacher = the peer at that step: initial weights + step.
                        kernel = model.teachers[0].get_weights()[0]
                        np.testing.assert_allclose(kernel, initial + outcome.step, rtol=1e-5)
                    elif outcome.status == "failed":
                        failures.append(outcome.reason)
            finally:
                stop.set()
                writer.join(timeout=30)
            # Nothing was refused for good: once the store settles, the
            # peer's last publication loads.
            store.settle()
            assert model.reload_teachers()[0].step == published[-1]
    assert len(loaded) >= 5, (loaded, failures)
    assert loaded == sorted(loaded), loaded
    assert store.rate_limited == []
    assert store.write_counts[os.path.join("group_1", "checkpoint")] == len(published) + 1
    # What failed was only ever a checkpoint not visible (yet, or any more).
    assert all("missing" in r or "no data files" in r or "NotFound" in r for r in failures), (
        failures
    )
