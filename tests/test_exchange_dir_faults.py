"""The exchange dir filling up or becoming unwritable while a group trains.

Expected: the group stops with exit code 1 and one line (`train.py: ...`)
naming the directory, no stack trace, and what it had published stays
complete for its peers (its state file never names a half-written
checkpoint); its resume state too, so it can go on once there is room.

"Full" is simulated two ways. A file size limit (RLIMIT_FSIZE, set on the
running process with prlimit) makes every write past the limit fail with
EFBIG, part-way through like a disk filling up; it needs no privileges.
TensorFlow reports EFBIG as OutOfRangeError, which Keras' `fit` took for the
end of the data and silently ended the epoch on. A real ENOSPC comes from a
small tmpfs filled by the test (needs root with CAP_SYS_ADMIN; skipped
otherwise). "Unwritable": the group's directory replaced by a file (tests
run as root, so chmod would not stop the writes).
"""

import json
import os
import resource
import shutil
import subprocess
import time

import pytest

from tf_codistill import exchange
from tf_codistill import local_cluster
from tf_codistill.models import mlp
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

TRAIN_STEPS = 400
BINDINGS = dict(
    train_steps=TRAIN_STEPS,
    steps_per_loop=100,
    backup_every_n_steps=20,
    exchange_every_n_steps=5,
    log_every_n_steps=10,
    wait_for_peers_s=0.0,
    allow_no_distillation=True,  # Group 0 alone: its peer never publishes.
)


def _tiny_model():
    return mlp.mlp_classifier(hidden_units=(16,))


def _run_until_saved_then(root_dir, fault, log, name="g0"):
    """Runs group 0 of 2, calls `fault(pid)` once it has saved; returns its exit code."""
    group_dir = os.path.join(root_dir, "group_0")
    task = local_cluster.Task(name, drills.train_command(root_dir, 0, 2, BINDINGS))
    with local_cluster.LocalCluster([task], write=log, grace_s=5) as cluster:
        cluster.start()
        process = cluster.processes[name]
        deadline = time.time() + 180
        metrics = os.path.join(group_dir, "metrics.json")  # After the evaluation at step 100.
        while not (os.path.exists(metrics) and drills.backup_step(group_dir) > 0):
            assert process.poll() is None and time.time() < deadline, log.lines(name)[-10:]
            time.sleep(0.02)
        fault(process.pid)
        return cluster.wait(timeout_s=120)[name]


def _assert_clean_stop(code, lines, directory):
    text = "\n".join(lines)
    assert code == 1, (code, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    # The program's last words, then LocalCluster's line for its exit.
    *_, last, exited = [line for line in lines if line.strip()]
    assert exited == f"{local_cluster.EXITED} 1", exited
    assert last.startswith("train.py: ") and directory in last, last
    assert "\n" not in last
    return last


def _assert_peers_see_complete_checkpoints(group_dir):
    steps = drills.check_published(group_dir, _tiny_model)
    assert steps, "published nothing before the fault"
    assert exchange.latest_checkpoint(group_dir).step == steps[-1]
    with open(os.path.join(group_dir, "metrics.json")) as f:
        assert json.load(f)["history"]  # Written whole, then renamed.
    return steps


def test_file_size_limit_mid_run_stops_cleanly_then_resumes(tmp_path):
    root, group_dir = str(tmp_path), str(tmp_path / "group_0")
    log = drills.OutputLog()

    def limit_file_size(pid):
        # Every file of the process may now hold at most 1,000 bytes; the
        # checkpoints (3.5 kB), the backup (19 kB) and soon the event files
        # and metrics.json are bigger.
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1000, 1000))

    code = _run_until_saved_then(root, limit_file_size, log)
    first_run = log.count("g0")
    last = _assert_clean_stop(code, log.lines("g0"), group_dir)
    assert "File too large" in last, last
    published = _assert_peers_see_complete_checkpoints(group_dir)
    saved = drills.backup_step(group_dir)
    print(f"stopped with: {last}\npublished {published}, backup at step {saved}")

    # Room again (no limit): the group resumes from its backup and finishes.
    task = local_cluster.Task("g0", drills.train_command(root, 0, 2, BINDINGS))
    with local_cluster.LocalCluster([task], write=log, grace_s=5) as cluster:
        cluster.start()
        assert cluster.wait(timeout_s=180) == {"g0": 0}
    restarted = log.lines("g0", first_run)
    assert [int(m[2]) for m in map(drills.STARTING.search, restarted) if m] == [saved]
    with open(os.path.join(group_dir, "metrics.json")) as f:
        assert json.load(f)["steps"] == TRAIN_STEPS
    assert drills.check_published(group_dir, _tiny_model)[-1] == TRAIN_STEPS


def test_disk_full_mid_run_stops_cleanly(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs to fill (needs root and CAP_SYS_ADMIN): {mounted.stderr}"
        )
    try:
        root, group_dir = str(mount_point), str(mount_point / "group_0")
        log = drills.OutputLog()

        def fill_the_disk(pid):
            del pid
            fd = os.open(os.path.join(root, "filler"), os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
            try:  # The last partial block.
                while True:
                    os.write(fd, b"\0")
            except OSError:
                pass
            os.close(fd)

        code = _run_until_saved_then(root, fill_the_disk, log)
        last = _assert_clean_stop(code, log.lines("g0"), group_dir)
        assert "No space left on device" in last, last
        _assert_peers_see_complete_checkpoints(group_dir)
        print(f"stopped with: {last}")
    finally:
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)])


def test_group_dir_replaced_by_a_file_mid_run_stops_cleanly(tmp_path):
    root, group_dir = str(tmp_path), str(tmp_path / "group_0")
    moved = str(tmp_path / "group_0.moved")
    log = drills.OutputLog()

    def replace_by_a_file(pid):
        del pid
        shutil.move(group_dir, moved)
        with open(group_dir, "w") as f:
            f.write("not a directory\n")

    code = _run_until_saved_then(root, replace_by_a_file, log)
    last = _assert_clean_stop(code, log.lines("g0"), group_dir)
    assert "ot a directory" in last, last
    # A peer finds nothing to read there, cleanly ...
    try:
        assert exchange.latest_checkpoint(group_dir) is None
    except exchange.PeerCheckpointError:
        pass
    # ... and what had been published is complete where it went.
    assert drills.check_published(moved, _tiny_model)
