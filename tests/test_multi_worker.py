"""Two groups x two workers (MultiWorkerMirroredStrategy) as real processes on 127.0.0.1."""

import collections
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import local_cluster
from tf_codistill import testing
from tf_codistill.datasets import synthetic
from tf_codistill.models import mlp
from tf_codistill.testing import drills

pytestmark = pytest.mark.slow

# ProgressLogger's line of the teachers loaded since its previous line.
TEACHERS = re.compile(r"^\[(g\d)(w\d)\] .*: (step \d+/\d+ \| teachers \| .*)$")
BUILT = re.compile(r"^\[(g\d)(w\d)\] .*CodistillModel group \d of \d: .*publishing (True|False)")
# What TensorFlow's coordination service logs when a worker leaves before the others.
COORDINATION_ERRORS = re.compile(
    r"have crashed|CoordinationServiceError|Failed to send RPC to coordination service"
)


def test_two_groups_of_two_workers(tmp_path):
    launcher = os.path.join(testing.repo_root(), "binaries", "launch_local.py")
    result = subprocess.run(
        [
            sys.executable,
            launcher,
            "--gin_file=demo/tiny.gin",
            "--num_groups=2",
            "--workers_per_group=2",
            "--nobaseline",
            f"--root_dir={tmp_path}",
            "--timeout_s=400",
            "--grace_s=5",
        ],
        capture_output=True,
        text=True,
        timeout=480,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert not COORDINATION_ERRORS.search(out), out[-6000:]
    lines = out.splitlines()

    # Only the chiefs (worker 0) publish.
    publishing = {(m[1], m[2]): m[3] for m in map(BUILT.match, lines) if m}
    assert publishing == {
        ("g0", "w0"): "True",
        ("g0", "w1"): "False",
        ("g1", "w0"): "True",
        ("g1", "w1"): "False",
    }
    for g in (0, 1):
        entries = set(os.listdir(tmp_path / f"group_{g}"))
        names = {e for e in entries if not re.fullmatch(r"ckpt-\d+\.(index|data-\d+-of-\d+)", e)}
        assert names == {
            "checkpoint",
            "metrics.json",
            "operative_config.gin",
            "tensorboard",
            "backup",
        }, names
        assert os.listdir(tmp_path / f"group_{g}" / "backup") == ["chief"]

    # Every worker of a group loaded the same teacher checkpoints at the same
    # steps: the same number of reloads, the same latest checkpoint and
    # staleness, line after line.
    reloads = collections.defaultdict(list)
    for m in filter(None, map(TEACHERS.match, lines)):
        reloads[(m[1], m[2])].append(m[3])
    for g in ("g0", "g1"):
        assert len(reloads[(g, "w0")]) >= 2, out[-3000:]
        assert reloads[(g, "w0")] == reloads[(g, "w1")]

    x, y = synthetic.planted_classification("validation", 128, sharpness=4.0)
    for g in (0, 1):
        group_dir = str(tmp_path / f"group_{g}")
        with open(os.path.join(group_dir, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["steps"] == 40
        # Distillation was on after burn-in (10 steps) ...
        assert all(w == 1.0 for s, w in drills.scalars(group_dir, "distill_weight") if s >= 30)
        assert metrics["final"]["val_distill_loss"] > 0
        # ... and the reported evaluation is the true value, not a sum over workers.
        student = mlp.mlp_classifier(hidden_units=(16,))
        tf.train.Checkpoint(model=student).restore(
            os.path.join(group_dir, "ckpt-40")
        ).expect_partial()
        loss = keras.losses.sparse_categorical_crossentropy(y, student(x), from_logits=True)
        np.testing.assert_allclose(
            metrics["final"]["val_task_loss"], float(np.mean(loss)), rtol=1e-4
        )


# One worker of a group of two; the chief sleeps at the very end of training
# (after its last file write), longer than the coordination service's 10 s
# heartbeat timeout. With END_MODE=crash, worker 1 dies instead of waiting.
_SLOW_END_WORKER = """
import json, os, sys, time
from tf_codistill import distribute, testing, train_lib
train = testing.load_binary("train")
chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
write_config, writes = train_lib._write_operative_config, []
def slow_write(group_dir):
    write_config(group_dir)
    writes.append(group_dir)
    if len(writes) == 2:  # The last one, after training.
        time.sleep(12)
train_lib._write_operative_config = slow_write
if os.environ["END_MODE"] == "crash" and not chief:
    distribute.barrier = lambda strategy=None: os._exit(3)
sys.argv = ["train.py", *sys.argv[1:]]
train.run()
"""


@pytest.mark.parametrize("mode", ["clean", "crash"])
def test_the_workers_of_a_group_end_together_and_a_crash_at_the_end_is_reported(tmp_path, mode):
    bindings = dict(train_steps=20, steps_per_loop=20, wait_for_peers_s=0.0)
    if mode == "clean":
        # The chief writes its checkpoints on a helper thread; fit's end flushes
        # the last one while worker 1 waits at the final barrier.
        bindings["background_publish"] = True
    argv = drills.train_command(
        str(tmp_path), 0, 1, bindings, extra_flags=("--strategy=multi_worker_mirrored",)
    )
    ports = local_cluster.free_ports(2)
    tasks = [
        local_cluster.Task(
            f"w{w}",
            [sys.executable, "-c", _SLOW_END_WORKER, *argv[2:]],
            {"TF_CONFIG": local_cluster.tf_config(ports, w), "END_MODE": mode},
        )
        for w in range(2)
    ]
    log = drills.OutputLog()
    with local_cluster.LocalCluster(tasks, write=log, grace_s=5) as cluster:
        cluster.start()
        ended = {}
        deadline = time.time() + 240
        while len(ended) < 2 and time.time() < deadline:
            for name, process in cluster.processes.items():
                if name not in ended and process.poll() is not None:
                    ended[name] = (process.returncode, time.time())
            time.sleep(0.1)
        cluster.wait(timeout_s=5)
    out = "\n".join(log.lines("w0") + log.lines("w1"))
    assert len(ended) == 2, out[-3000:]
    if mode == "clean":
        # Worker 1 waited for the chief's 12 s and left with it: no error
        # logged, both done at once.
        assert {w: code for w, (code, _) in ended.items()} == {"w0": 0, "w1": 0}, out[-3000:]
        assert not COORDINATION_ERRORS.search(out), out[-3000:]
        assert abs(ended["w0"][1] - ended["w1"][1]) < 8, ended
        # The chief wrote in the background (its log says so at --verbosity=1),
        # and the write of the last step is complete and listed.
        assert "written in the background" in "\n".join(log.lines("w0")), out[-3000:]
        group_dir = tmp_path / "group_0"
        assert tf.train.latest_checkpoint(str(group_dir)) == str(group_dir / "ckpt-20"), out[-3000:]
        assert os.path.exists(group_dir / "ckpt-20.index")
    else:
        # Worker 1 died before the end; the chief's last collective fails.
        assert ended["w1"][0] == 3, out[-3000:]
        assert ended["w0"][0] not in (0, None), out[-3000:]
