"""A preempted worker of a multi-worker group: both workers come back at the same step.

One group of two workers (MultiWorkerMirroredStrategy, TF_CONFIG on free
127.0.0.1 ports). Worker 1 is killed with SIGKILL mid-run; worker 0 then
fails in its next collective (UnavailableError, exit 1) or hangs in it, and
is stopped by pid (SIGKILL: MultiWorkerMirroredStrategy ignores SIGTERM).
Both are started again (on new ports, as a rescheduled job would be);
BackupAndRestore must bring both to the step of the chief's last backup.
"""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from tf_codistill import local_cluster
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

TRAIN_STEPS = 200
BACKUP_EVERY = 20
LOG_EVERY = 10
STEPS_PER_LOOP = 100
BINDINGS = dict(
    train_steps=TRAIN_STEPS,
    steps_per_loop=STEPS_PER_LOOP,
    backup_every_n_steps=BACKUP_EVERY,
    log_every_n_steps=LOG_EVERY,
)
# Worker 0 notices a dead worker 1 about 7 s later (TF notes, Q3); beyond
# this it is taken as hanging and killed.
GRACE_S = 60


def _tasks(root_dir):
    ports = local_cluster.free_ports(2)
    command = drills.train_command(
        root_dir, 0, 1, BINDINGS, extra_flags=("--strategy=multi_worker_mirrored",)
    )
    return [
        local_cluster.Task(f"w{w}", command, {"TF_CONFIG": local_cluster.tf_config(ports, w)})
        for w in range(2)
    ]


def test_killed_worker_then_restarted_group_resumes_at_one_step(tmp_path):
    seed = int(os.environ.get("TF_CODISTILL_DRILL_SEED", time.time_ns() % 2**31))
    kill_at = drills.kill_step(
        random.Random(seed), BACKUP_EVERY + 1, TRAIN_STEPS - 80, STEPS_PER_LOOP, LOG_EVERY
    )
    print(f"seed {seed}: worker 1 killed after step {kill_at}")
    group_dir = str(tmp_path / "group_0")
    log = drills.OutputLog()

    with local_cluster.LocalCluster(_tasks(str(tmp_path)), write=log, grace_s=5) as cluster:
        cluster.start()
        log.wait_for_step("w1", kill_at, process=cluster.processes["w1"], timeout_s=300)
        cluster.kill("w1")
        chief = cluster.processes["w0"]
        try:
            chief_code = chief.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            cluster.kill("w0")  # Hanging in a collective: SIGKILL by pid.
            chief_code = chief.wait(timeout=30)
        print(f"worker 0 exited with {chief_code} after worker 1 was killed")
        assert chief_code in (1, -signal.SIGKILL), chief_code
        for w in ("w0", "w1"):
            assert cluster.drain(w) is not None, w  # The rest of its output.
        first_run = {w: log.count(w) for w in ("w0", "w1")}
        last_logged = max(drills.progress_steps(log.lines("w0")))
        saved = drills.backup_step(group_dir)
        assert saved >= BACKUP_EVERY and saved % BACKUP_EVERY == 0, saved
        # The chief's last backup is the one of the last interval it logged.
        assert last_logged // BACKUP_EVERY * BACKUP_EVERY <= saved <= last_logged + LOG_EVERY

    # Both workers again, new ports, the same command otherwise.
    with local_cluster.LocalCluster(_tasks(str(tmp_path)), write=log, grace_s=5) as cluster:
        cluster.start()
        codes = cluster.wait(timeout_s=300)
    assert codes == {"w0": 0, "w1": 0}, codes

    for w in ("w0", "w1"):
        restarted = log.lines(w, first_run[w])
        starts = [int(m[2]) for m in map(drills.STARTING.search, restarted) if m]
        # Restored by BackupAndRestore (the optimizer's step after restore),
        # the same on both workers: the chief's backup, read by worker 1 too.
        assert starts == [saved], (w, starts, saved)
        steps = drills.progress_steps(restarted)
        assert steps[0] == saved + LOG_EVERY and steps[-1] == TRAIN_STEPS, (w, steps)
    with open(os.path.join(group_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["steps"] == TRAIN_STEPS
    assert [e["step"] for e in metrics["history"]] == [100, 200]
