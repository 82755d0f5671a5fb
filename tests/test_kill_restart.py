"""A group process killed with SIGKILL at a random moment, then started again with the same command.

The group must resume from its last save (`backup_every_n_steps`) and finish
all its steps, and a peer that keeps reading the group's published
checkpoints all along must never be handed a half-written one.
"""

import json
import os
import random
import signal
import time

import pytest
import tensorflow as tf

from tf_codistill import local_cluster
from tf_codistill.models import mlp
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

TRAIN_STEPS = 400
BACKUP_EVERY = 25
LOG_EVERY = 5
STEPS_PER_LOOP = 100
BINDINGS = dict(
    train_steps=TRAIN_STEPS,
    steps_per_loop=STEPS_PER_LOOP,
    backup_every_n_steps=BACKUP_EVERY,
    # Publishing every 5 steps puts many saves in flight for the kill to hit.
    exchange_every_n_steps=5,
    log_every_n_steps=LOG_EVERY,
    wait_for_peers_s=0.0,
)


def _tiny_model():
    return mlp.mlp_classifier(hidden_units=(16,))  # demo/tiny.gin's


def test_sigkill_at_a_random_moment_resumes_from_the_last_save(tmp_path):
    seed = int(os.environ.get("TF_CODISTILL_DRILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    # Killed once a progress line reaches this step (after the first save),
    # plus up to 50 ms: within a step, a save or a publication.
    # A 50 ms jitter is up to ~20 steps of this model on 2 cores.
    kill_at = drills.kill_step(
        rng, BACKUP_EVERY + 1, TRAIN_STEPS - 150, STEPS_PER_LOOP, LOG_EVERY, margin=20
    )
    jitter_s = rng.uniform(0.0, 0.05)
    print(f"seed {seed}: kill after step {kill_at} + {jitter_s * 1000:.0f} ms")

    group_dir = str(tmp_path / "group_0")
    command = drills.train_command(str(tmp_path), 0, 1, BINDINGS)
    log = drills.OutputLog()
    watcher = drills.CheckpointWatcher(group_dir, _tiny_model)
    watcher.start()
    try:
        with local_cluster.LocalCluster(
            [local_cluster.Task("g0", command)], write=log, grace_s=5
        ) as cluster:
            cluster.start()
            process = cluster.processes["g0"]
            log.wait_for_step("g0", kill_at, process=process, timeout_s=240)
            time.sleep(jitter_s)
            cluster.kill("g0")
            assert process.wait(timeout=30) == -signal.SIGKILL, "finished before the kill"
            assert cluster.drain("g0") == -signal.SIGKILL  # The rest of its output.
            first_run = log.count("g0")
            last_logged = max(drills.progress_steps(log.lines("g0")))
            saved = drills.backup_step(group_dir)
            # It had saved, and its last save is the one of the last interval
            # it logged: BackupAndRestore runs before the progress line of a step.
            assert saved >= BACKUP_EVERY and saved % BACKUP_EVERY == 0, saved
            assert last_logged // BACKUP_EVERY * BACKUP_EVERY <= saved <= last_logged + LOG_EVERY
            # What the killed process left: every checkpoint its state file
            # lists is complete (a save cut short is in a *_temp directory).
            assert drills.check_published(group_dir, _tiny_model)

            cluster.start("g0")  # The same command.
            codes = cluster.wait(timeout_s=240)
    finally:
        watcher.stop()
    assert codes == {"g0": 0}, log.lines("g0")[-20:]

    restarted = log.lines("g0", first_run)
    starts = [int(m[2]) for m in map(drills.STARTING.search, restarted) if m]
    assert starts == [saved], (starts, saved)  # Model, optimizer, step: from the save.
    assert any(f"resuming at step {saved};" in line for line in restarted)
    steps = drills.progress_steps(restarted)
    assert steps[0] == saved + LOG_EVERY and steps[-1] == TRAIN_STEPS
    lost = last_logged - saved
    print(f"lost {lost} to {lost + LOG_EVERY - 1} steps (since the save at step {saved})")

    with open(os.path.join(group_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["steps"] == TRAIN_STEPS
    assert [e["step"] for e in metrics["history"]] == [100, 200, 300, 400]
    assert tf.train.latest_checkpoint(group_dir).endswith(f"ckpt-{TRAIN_STEPS}")

    # The peer read many checkpoints and never one that was half-written.
    assert len(watcher.loaded) >= 10, watcher.loaded
    assert not watcher.unexplained(), watcher.unexplained()
    print(
        f"watcher: {len(watcher.loaded)} restores, {len(watcher.failures)} explained failures "
        "(files deleted by the writer's cleanup while read)"
    )
