"""One owner per group directory: a second live writer is refused, a dead one taken over."""

import json
import os
import subprocess
import threading
import time
from unittest import mock

import pytest

from tf_codistill import errors
from tf_codistill import layout
from tf_codistill import local_cluster
from tf_codistill import ownership
from tf_codistill import testing
from tf_codistill.testing import drills

# Long enough that the first process is still training when the second one
# has started (TensorFlow's import alone takes seconds on a loaded machine);
# the first is killed once the test has seen what it waits for.
LONG_RUN = dict(train_steps=100000, steps_per_loop=1000, log_every_n_steps=5, wait_for_peers_s=0.0)


def _owner(group_dir):
    with open(layout.owner_path(str(group_dir))) as f:
        return json.load(f)


def _start_first(tmp_path, log, cluster_tasks):
    """Starts group 0 and waits until it owns its directory and trains."""
    cluster = local_cluster.LocalCluster(cluster_tasks, write=log, grace_s=5)
    cluster.start()
    process = cluster.processes["first"]
    log.wait_for(
        lambda line: drills.STARTING.search(line) is not None,
        "first",
        timeout_s=300,
        process=process,
        what="the first process to start training",
    )
    assert _owner(tmp_path / "group_0")["pid"] == process.pid
    return cluster, process


@pytest.mark.slow
def test_a_second_process_of_the_same_group_is_refused_with_one_line(tmp_path):
    command = drills.train_command(str(tmp_path), 0, 2, LONG_RUN)
    log = drills.OutputLog()
    cluster, first = _start_first(tmp_path, log, [local_cluster.Task("first", command)])
    with cluster:
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # Still training, undisturbed.
    assert second.returncode == 1, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: group 0's directory ") and "Traceback" not in second.stderr
    assert f"is in use by pid {first.pid} on host" in last
    assert "two processes must not train the same group" in last


@pytest.mark.slow
def test_a_group_restarted_after_a_kill_takes_over_and_resumes(tmp_path):
    bindings = dict(LONG_RUN, train_steps=400, steps_per_loop=200, backup_every_n_steps=10)
    command = drills.train_command(str(tmp_path), 0, 1, bindings)
    log = drills.OutputLog()
    cluster, first = _start_first(tmp_path, log, [local_cluster.Task("first", command)])
    with cluster:
        log.wait_for_step("first", 20, first, timeout_s=300)
        cluster.kill("first")
        first.wait(timeout=60)
    # The killed process left its owner file behind; its pid is gone.
    assert _owner(tmp_path / "group_0")["pid"] == first.pid
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"taking over {tmp_path / 'group_0'} from pid {first.pid}" in second.stderr
    assert f"(pid {first.pid} is gone)" in second.stderr
    resumed = drills.STARTING.search(second.stderr)
    assert resumed and int(resumed[2]) >= 10, second.stderr[-3000:]  # From its backup.
    # A finished owner lets go of the directory.
    assert not os.path.exists(layout.owner_path(str(tmp_path / "group_0")))


def _forge(group_dir, heartbeat, host="elsewhere", pid=4242):
    os.makedirs(group_dir, exist_ok=True)
    record = dict(host=host, pid=pid, boot_id="b", started=heartbeat, heartbeat=heartbeat)
    # Atomically, as a real owner writes it: a reader must never see half a
    # file (a test whose forging thread rewrites it while `fit` reads did).
    temporary = layout.owner_path(group_dir) + f".forge{threading.get_ident()}"
    with open(temporary, "w") as f:
        json.dump(dict(record, token="theirs"), f)
    os.replace(temporary, layout.owner_path(group_dir))


@pytest.fixture
def fast_heartbeats():
    with (
        mock.patch.object(ownership, "HEARTBEAT_S", 0.1),
        mock.patch.object(ownership, "STALE_AFTER_S", 1.0),
        mock.patch.object(ownership, "_SETTLE_S", 0.05),
    ):
        yield


def _fit(exchange_dir):
    x, y = testing.toy_classification(32)
    model = testing.codistill_model(exchange_dir)
    model.fit(x, y, batch_size=16, verbose=0)
    return model


def test_a_silent_owner_on_another_host_is_taken_over(tmp_path, fast_heartbeats):
    # Heartbeat 0.3 s old, never moving: stale once 1 s old (STALE_AFTER_S).
    _forge(str(tmp_path / "group_0"), time.time() - 0.3)
    with mock.patch.object(ownership.logging, "warning") as warning:
        _fit(str(tmp_path))
    (message,) = [c.args for c in warning.call_args_list if "taking over" in c.args[0]]
    assert message[3:5] == (4242, "elsewhere") and "heartbeat" in message[5]
    assert not os.path.exists(layout.owner_path(str(tmp_path / "group_0")))


def test_a_live_owner_on_another_host_is_refused(tmp_path, fast_heartbeats):
    group_dir = str(tmp_path / "group_0")
    _forge(group_dir, time.time())
    stop = threading.Event()

    def beat():  # The other host's heartbeat thread.
        while not stop.wait(0.05):
            _forge(group_dir, time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        with pytest.raises(errors.GroupOwnedError, match="in use by pid 4242 on host elsewhere"):
            _fit(str(tmp_path))
    finally:
        stop.set()
        thread.join()
    assert _owner(group_dir)["token"] == "theirs"  # Untouched.


def test_a_taken_over_owner_stops_before_it_publishes_again(tmp_path, fast_heartbeats):
    model = testing.codistill_model(str(tmp_path))
    model.publish()  # Owns group_0 now.
    group_dir = str(tmp_path / "group_0")
    assert _owner(group_dir)["pid"] == os.getpid()
    _forge(group_dir, time.time())  # Another process took it over.
    deadline = time.time() + 30
    with pytest.raises(errors.GroupOwnedError, match="in use by pid 4242"):
        while time.time() < deadline:  # Noticed at the next heartbeat.
            model.publish()
            time.sleep(0.05)


def test_claims_of_one_process_nest(tmp_path):
    group_dir = str(tmp_path / "group_0")
    outer = ownership.claim(group_dir, "group 0")
    inner = ownership.claim(group_dir, "group 0")
    assert inner is outer
    inner.release()
    assert _owner(group_dir)["pid"] == os.getpid()
    outer.release()
    assert not os.path.exists(layout.owner_path(group_dir))
