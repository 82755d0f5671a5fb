"""ray_launcher: groups as Ray Train TensorflowTrainers, and a worker killed under local Ray.

The end-to-end test runs `binaries/launch_ray.py` (2 groups x 2 workers, a
local Ray cluster in a temporary directory of its own), kills one worker of
group 1 mid-run with SIGKILL, and checks that Ray started group 1 again, that
it resumed from its backup, that group 0 trained on without a restart, and
that both finished distilling. Skipped where Ray Train is not installed (the
optional `ray` extra).
"""

import json
import logging as std_logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tf_codistill import layout
from tf_codistill import testing
from tf_codistill.testing import drills

ray_launcher = pytest.importorskip(
    "tf_codistill.ray_launcher",
    reason='needs Ray Train, the optional `ray` extra: pip install -e ".[ray]"',
    exc_type=ImportError,
)

TRAIN_STEPS = 200
STEPS_PER_LOOP = 100
BACKUP_EVERY = 20
LOG_EVERY = 10
KILL_AFTER = 40
BINDINGS = dict(
    train_steps=TRAIN_STEPS,
    steps_per_loop=STEPS_PER_LOOP,
    backup_every_n_steps=BACKUP_EVERY,
    log_every_n_steps=LOG_EVERY,
)
# What the driver prints before a worker's line: ANSI colours and "(RayTrainWorker pid=N) ".
_RAY_PREFIX = re.compile(r"\x1b\[[0-9;]*m|^\(\w+ pid=\d+(?:, ip=[\d.]+)?\) ")
STARTED = re.compile(r"worker started, pid (\d+)")
# What TensorFlow's coordination service logs when a worker leaves before the others.
COORDINATION_ERRORS = re.compile(r"have crashed|CoordinationServiceError")
# ProgressLogger's evaluation line, and train_group's last line (after the closing barrier).
EVAL = re.compile(r"group \d+[^:]*: step \d+/\d+ \| eval \|")
DONE = re.compile(r"group \d+[^:]*: done, ")
# Between a worker's last evaluation and its group's end: writing the results
# and the closing barrier, seconds; generous for a loaded machine. A worker
# that freed its input pipeline on its training thread took 5 to 97 s there.
END_WITHIN_S = 30


def test_group_runs_and_prefixes_match_launch_local():
    runs = ray_launcher.group_runs("/r", 2, ["a.gin"], ["x=1"], baseline=True)
    assert [(r.name, r.root_dir, r.group_index) for r in runs] == [
        ("g0", "/r", 0),
        ("g1", "/r", 1),
        ("baseline", os.path.join("/r", "baseline"), 0),
    ]
    # The baseline is group 0 without distillation, as under launch_local.
    assert runs[2].gin_bindings == ("x=1", "tf_codistill.train_lib.train_group.codistill=False")
    assert runs[0].gin_files == ("a.gin",) and runs[0].num_groups == 2
    assert [ray_launcher.worker_prefix("g1", w, 2) for w in range(2)] == ["g1w0", "g1w1"]
    assert ray_launcher.worker_prefix("baseline", 0, 1) == "baseline"


def test_worker_log_lines_carry_the_prefix_once(capsys):
    root = std_logging.getLogger()
    handlers = [std_logging.StreamHandler(sys.stdout) for _ in range(2)]
    for handler in handlers:
        handler.setFormatter(std_logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(handler)
    try:
        # Twice: a second call (the loop run again in one process) must not stack prefixes.
        ray_launcher._prefix_log_lines("g1w1")
        ray_launcher._prefix_log_lines("g1w0")
        std_logging.getLogger("absl").warning("step %d", 3)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
    # Both handlers (Ray's console and file handlers), one prefix each.
    assert capsys.readouterr().out.splitlines()[-2:] == ["WARNING [g1w0] step 3"] * 2


def _kill_processes_of(ray_tmp):
    """SIGKILLs, by pid, the processes of the Ray cluster whose temp dir is `ray_tmp`.

    What is left when the launcher did not shut its cluster down: Ray's
    workers start sessions of their own, out of reach of the launcher's
    process group; their command lines name the cluster's temp dir.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                mine = ray_tmp.encode() in f.read()
            if mine:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:  # Gone meanwhile, or not ours to read.
            pass


class _LauncherOutput:
    """Reads the launcher's output into a `drills.OutputLog` by worker prefix."""

    def __init__(self, process):
        self.log = drills.OutputLog()
        self.times: list[tuple[float, str, str]] = []
        self.all: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process):
        for raw in process.stdout:
            line = _RAY_PREFIX.sub("", raw.rstrip("\n"))
            line = _RAY_PREFIX.sub("", line)  # The colour codes around the prefix.
            self.log(line)
            self.all.append(line)
            match = re.match(r"^\[([^\]]+)\] ?(.*)$", line)
            if match:
                self.times.append((time.time(), match[1], match[2]))

    def join(self, timeout_s):
        self._thread.join(timeout_s)


@pytest.mark.slow
def test_a_killed_worker_restarts_its_group_from_backup_while_the_peer_trains_on(tmp_path):
    root = str(tmp_path / "run")
    # Ray's sockets live under its temp dir: a short path of this test's own.
    ray_tmp = tempfile.mkdtemp(prefix="tfcd_ray_", dir="/tmp")
    argv = [
        sys.executable,
        os.path.join(testing.repo_root(), "binaries", "launch_ray.py"),
        "--gin_file=demo/tiny.gin",
        *(
            f"--gin_bindings=tf_codistill.train_lib.train_group.{k} = {v!r}"
            for k, v in BINDINGS.items()
        ),
        "--num_groups=2",
        "--workers_per_group=2",
        "--nobaseline",
        f"--root_dir={root}",
        "--max_failures=2",
        "--timeout_s=660",
    ]
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # A local cluster of its own, never one found running.
    # A session of its own: at the end, whatever is left of the launcher's
    # local Ray cluster is stopped by its process group id.
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    output = _LauncherOutput(process)
    log = output.log
    try:
        started = log.wait_for(
            STARTED.search, "g1w1", timeout_s=300, process=process, what="g1w1 started"
        )
        victim = int(STARTED.search(started)[1])
        log.wait_for_step("g1w1", KILL_AFTER, process=process, timeout_s=300)
        first_run = {name: log.count(name) for name in ("g0w0", "g0w1", "g1w0", "g1w1")}
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        print(f"killed g1w1 (pid {victim}) after step {KILL_AFTER}")

        # Ray starts group 1's two workers again; they resume from the backup.
        resumed = log.wait_for(
            drills.STARTING.search,
            "g1w0",
            start=first_run["g1w0"],
            timeout_s=240,
            process=process,
            what="group 1 starting again",
        )
        resumed_at = time.time()
        code = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        _kill_processes_of(ray_tmp)
        output.join(10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"group 1 logged its resumption {resumed_at - killed_at:.1f} s after the kill")
    out = "\n".join(output.all)
    assert code == 0, out[-5000:]

    # Group 1: worker 1 killed once, then both workers started again (new pids).
    starts = {n: len([1 for line in log.lines(n) if STARTED.search(line)]) for n in first_run}
    assert starts == {"g0w0": 1, "g0w1": 1, "g1w0": 2, "g1w1": 2}, starts
    # ... resumed at the chief's last backup before the kill (a multiple of
    # BACKUP_EVERY, at least one interval in), so nothing was lost:
    resumed_step = int(drills.STARTING.search(resumed)[2])
    killed_progress = max(drills.progress_steps(log.lines("g1w0")[: first_run["g1w0"]]))
    assert BACKUP_EVERY <= resumed_step <= killed_progress + LOG_EVERY, resumed_step
    assert resumed_step % BACKUP_EVERY == 0, resumed_step
    for worker in ("g1w0", "g1w1"):
        again = log.lines(worker, first_run[worker])
        starting = [int(m[2]) for m in map(drills.STARTING.search, again) if m]
        assert starting == [resumed_step], (worker, starting)
        assert drills.progress_steps(again)[-1] == TRAIN_STEPS, worker

    # Group 0 trained on while group 1 was down: progress logged between the
    # kill and group 1's resumption, from its first (and only) workers.
    g0_between = [
        s
        for t, n, text in output.times
        if n == "g0w0" and killed_at < t < resumed_at
        for s in drills.progress_steps([text])
    ]
    assert g0_between, "group 0 logged no progress while group 1 was restarting"

    # Both finished with distillation on: every step trained, the weight at 1,
    # and after the restart group 1 distilled from group 0 again.
    for group in (0, 1):
        with open(layout.metrics_path(layout.group_dir(root, group))) as f:
            metrics = json.load(f)
        assert metrics["steps"] == TRAIN_STEPS, (group, metrics["steps"])
        assert [e["step"] for e in metrics["history"]] == list(
            range(STEPS_PER_LOOP, TRAIN_STEPS + 1, STEPS_PER_LOOP)
        ), group
        last = [line for line in log.lines(f"g{group}w0") if drills.PROGRESS.search(line)][-1]
        assert "distill_weight 1 " in last, last
    reloads_after = [
        int(m[3]) for m in map(drills.RELOAD.search, log.lines("g1w0", first_run["g1w0"])) if m
    ]
    assert reloads_after and max(reloads_after) > resumed_step, reloads_after

    # A run that succeeded ends without the coordination service's errors ...
    assert not COORDINATION_ERRORS.search(out), out[-5000:]
    # ... and every worker, restarted or not, ends with its last evaluation:
    # none waits for TensorFlow to free its input pipeline first
    # (tf_codistill.input_release), holding its group at the closing barrier.
    for worker in first_run:
        last_eval = max(t for t, n, text in output.times if n == worker and EVAL.search(text))
        done = max(t for t, n, text in output.times if n == worker and DONE.search(text))
        print(f"{worker}: done {done - last_eval:.1f} s after its last evaluation")
        assert done - last_eval < END_WITHIN_S, (worker, done - last_eval)
