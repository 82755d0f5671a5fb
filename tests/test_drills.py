"""testing.drills: the helpers of the process-level fault drills."""

import os
import random
import time

import numpy as np
import pytest

from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.testing import drills


def test_train_command_binds_train_group_parameters():
    argv = drills.train_command("/r", 1, 2, {"train_steps": 40, "x.y": "z"}, "demo/tiny.gin")
    assert argv[1].endswith(os.path.join("tf_codistill", "programs", "train.py"))
    assert argv[2:7] == [
        "--gin_file=demo/tiny.gin",
        "--root_dir=/r",
        "--group_index=1",
        "--num_groups=2",
        "--verbosity=1",
    ]
    assert argv[7:] == [
        "--gin_bindings=tf_codistill.train_lib.train_group.train_steps = 40",
        "--gin_bindings=x.y = 'z'",
    ]


def test_output_log_waits_for_a_line_and_reads_progress():
    log = drills.OutputLog(echo=False)
    log("[g0] group 0: step 100/400 | loss 1 | 3 steps/s")
    log("[g0] group 0: step 200/400 | eval | val_loss 1")
    log("[g0] group 0: step 200/400 | teachers | peer 1: 2 reloads, now step 150 (staleness 50)")
    log("[g1] other")
    assert log.count("g0") == 3 and log.lines("g1") == ["other"]
    # Training lines only: not the evaluation nor the teachers line.
    assert drills.progress_steps(log.lines("g0")) == [100]
    assert "step 100" in log.wait_for_step("g0", 100, process=None, timeout_s=1)
    start = time.time()
    with pytest.raises(AssertionError, match="g0 timed out waiting for step 300"):
        log.wait_for_step("g0", 300, process=None, timeout_s=0.2)
    assert time.time() - start < 5


def test_kill_steps_keep_away_from_evaluations():
    rng = random.Random(0)
    steps = {drills.kill_step(rng, 1, 400, steps_per_loop=100, log_every=10) for _ in range(200)}
    # The progress line waited for is the next multiple of 10; never an epoch's last.
    assert steps and all(-(-s // 10) * 10 % 100 != 0 for s in steps)


def test_published_checkpoints_are_checked_and_a_flipped_byte_is_caught(tmp_path):
    group_dir = exchange.group_dir(str(tmp_path), 0)
    assert drills.check_published(group_dir, testing.mlp) == []
    assert drills.backup_step(group_dir) == 0
    publisher = exchange.Publisher(testing.mlp(seed=1), group_dir)
    for step in (3, 6):
        publisher.publish(step)
    assert drills.check_published(group_dir, testing.mlp) == [3, 6]
    drills.flip_data_byte(os.path.join(group_dir, "ckpt-6"))
    with pytest.raises(exchange.PeerCheckpointError, match="cannot restore ckpt-6"):
        drills.check_published(group_dir, testing.mlp)


def test_checkpoint_watcher_reads_a_publishing_group(tmp_path):
    group_dir = exchange.group_dir(str(tmp_path), 0)
    student = testing.mlp(seed=1)
    publisher = exchange.Publisher(student, group_dir, max_to_keep=2)
    watcher = drills.CheckpointWatcher(group_dir, testing.mlp, poll_s=0.001)
    watcher.start()
    for step in range(1, 30):
        student.set_weights([w + 1.0 for w in student.get_weights()])
        publisher.publish(step)
        time.sleep(0.005)
    watcher.stop()
    assert watcher.loaded and all(1 <= s < 30 for s in watcher.loaded)
    assert not watcher.unexplained(), watcher.unexplained()
    assert np.all(np.isfinite(student.get_weights()[0]))


def test_output_log_reads_to_a_tasks_last_line_before_saying_it_exited():
    log = drills.OutputLog(echo=False)
    log("[g0] group 0: step 10/40 | loss 1 | 3 steps/s")
    log("[g0] group 0: step 20/40 | loss 1 | 3 steps/s")
    log("[g0] exited with code 1")
    # A line just before the exit is found, however late the wait starts.
    assert "step 20" in log.wait_for_step("g0", 20, process=None, timeout_s=60)
    start = time.time()
    with pytest.raises(AssertionError, match="g0 exited waiting for step 30"):
        log.wait_for_step("g0", 30, process=None, timeout_s=60)
    assert time.time() - start < 5  # At once: not at the deadline.
