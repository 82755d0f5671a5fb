"""Run a codistillation job's processes on one machine: groups x workers.

Every worker is a process of its own; the workers of a multi-worker group find
each other through a `TF_CONFIG` listing free 127.0.0.1 ports. Output of every
process is streamed line by line with a prefix (`g0`, `g1w1`, ...). Processes
are stopped by their pid only, and with SIGKILL after a grace period, because
MultiWorkerMirroredStrategy installs a SIGTERM handler and does not exit on
SIGTERM (see shared TF notes, Q3).

`launch` is what `binaries/launch_local.py` does: a run's groups (and a
no-distillation baseline) as processes, then a summary of their results.
No TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Optional

from tf_codistill import errors
from tf_codistill import layout

__all__ = [
    "BASELINE",
    "EXITED",
    "LocalCluster",
    "QuietWriter",
    "TF_STARTUP_LINE",
    "Task",
    "format_summary",
    "free_ports",
    "group_tasks",
    "launch",
    "python_command",
    "read_metrics",
    "summary_rows",
    "tf_config",
    "where_to_look",
]

# The baseline's directory inside a run's root_dir, and its name in the output.
BASELINE = "baseline"
# A task's last line: `[name] exited with code <n>`.
EXITED = "exited with code"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def tf_config(ports: Sequence[int], index: int) -> str:
    """TF_CONFIG of worker `index` of a cluster of workers on `ports` (worker 0 is chief)."""
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


@dataclasses.dataclass
class Task:
    """One process: a name (the output prefix), its command line and extra environment."""

    name: str
    argv: list[str]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


class LocalCluster:
    """Starts, watches and stops a set of processes.

    Args:
      tasks: the processes to run.
      write: where prefixed output lines go (default: stdout, flushed).
      grace_s: seconds between SIGTERM and SIGKILL when stopping a process.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        write: Optional[Callable[[str], None]] = None,
        grace_s: float = 10.0,
    ):
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise errors.ConfigError(f"task names must be unique, got {names}")
        self.tasks = {t.name: t for t in tasks}
        self.grace_s = grace_s
        self._write = write or _print_flush
        self._lock = threading.Lock()
        self.processes: dict[str, subprocess.Popen] = {}
        self._readers: dict[str, threading.Thread] = {}
        self.started_at: dict[str, float] = {}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def _emit(self, name: str, line: str) -> None:
        with self._lock:
            self._write(f"[{name}] {line.rstrip()}")

    def start(self, name: Optional[str] = None) -> None:
        """Starts one task (again, e.g. after a kill), or all of them."""
        for task_name in [name] if name else list(self.tasks):
            task = self.tasks[task_name]
            previous = self.processes.get(task_name)
            if previous is not None and previous.poll() is None:
                raise RuntimeError(f"task {task_name} is still running (pid {previous.pid})")
            env = dict(os.environ)
            env.update(task.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            process = subprocess.Popen(
                task.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
                errors="replace",
            )
            self.processes[task_name] = process
            self.started_at[task_name] = time.time()
            # Before its output: a quick process's lines could come first.
            self._emit(task_name, f"started, pid {process.pid}")
            reader = threading.Thread(
                target=self._pump, args=(task_name, process), daemon=True, name=f"pump-{task_name}"
            )
            reader.start()
            self._readers[task_name] = reader

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._emit(name, line)
        # After its last line (the pipe is at its end): who reads the output
        # knows it has all of it, without waiting for a while.
        self._emit(name, f"{EXITED} {process.wait()}")

    def drain(self, name: str, timeout_s: float = 60.0) -> Optional[int]:
        """Waits until an exited task's output is all read (its `exited with code` line).

        Returns:
          Its exit code, or None if it is still running or its output was not
          read to the end within `timeout_s`.
        """
        process, reader = self.processes.get(name), self._readers.get(name)
        if process is None or process.poll() is None:
            return None
        reader.join(timeout=timeout_s)
        return None if reader.is_alive() else process.returncode

    def running(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None]

    def wait(self, timeout_s: float, poll_s: float = 0.5) -> dict[str, Optional[int]]:
        """Waits until every process has exited or `timeout_s` passed.

        Returns:
          Exit code per task; None for tasks still running at the deadline
          (they are left running; call `stop_all`).
        """
        deadline = time.time() + timeout_s
        while self.running() and time.time() < deadline:
            time.sleep(poll_s)
        for name in self._readers:
            self.drain(name)
        return {n: p.poll() for n, p in self.processes.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Sends `sig` to one task's process (by its pid), if it is running."""
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            os.kill(process.pid, sig)

    def stop(self, name: str) -> Optional[int]:
        """SIGTERM, then SIGKILL after the grace period; returns the exit code."""
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        self.kill(name, signal.SIGTERM)
        try:
            return process.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            self._emit(name, f"did not exit {self.grace_s:.0f} s after SIGTERM; sending SIGKILL")
            self.kill(name, signal.SIGKILL)
            return process.wait(timeout=30)

    def stop_all(self) -> None:
        """Stops every running task: SIGTERM to all, SIGKILL to those left after the grace."""
        running = self.running()
        for name in running:
            self.kill(name, signal.SIGTERM)
        deadline = time.time() + self.grace_s
        while self.running() and time.time() < deadline:
            time.sleep(0.1)
        for name in self.running():
            self._emit(name, f"did not exit {self.grace_s:.0f} s after SIGTERM; sending SIGKILL")
            self.kill(name, signal.SIGKILL)
        for name in running:
            self.processes[name].wait(timeout=30)


def _print_flush(line: str) -> None:
    print(line, flush=True)


def python_command(script: str, *args: str) -> list[str]:
    """`[python, script, *args]` with this interpreter."""
    return [sys.executable, script, *args]


def group_tasks(
    train_script: str,
    root_dir: str,
    num_groups: int,
    workers: int,
    args: Sequence[str] = (),
) -> list[Task]:
    """One task per worker of every group: `python train_script --root_dir=... <args>`.

    Multi-worker groups get `--strategy=multi_worker_mirrored` and a TF_CONFIG
    on free ports; tasks are named `g<i>` (`g<i>w<j>` with several workers).
    """
    tasks = []
    for g in range(num_groups):
        ports = free_ports(workers) if workers > 1 else []
        for w in range(workers):
            argv = [f"--root_dir={root_dir}", f"--group_index={g}", f"--num_groups={num_groups}"]
            env = {}
            if workers > 1:
                argv.append("--strategy=multi_worker_mirrored")
                env["TF_CONFIG"] = tf_config(ports, w)
            name = f"g{g}" if workers == 1 else f"g{g}w{w}"
            tasks.append(Task(name, python_command(train_script, *argv, *args), env))
    return tasks


def read_metrics(root_dir: str, group: int) -> Optional[dict[str, Any]]:
    """A group's `metrics.json`, None if it has written none."""
    path = layout.metrics_path(layout.group_dir(root_dir, group))
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def summary_rows(root_dir: str, num_groups: int, baseline: bool) -> list[tuple[str, Any]]:
    """(name, metrics) of each group, and of the baseline last."""
    rows = [(f"group {g}", read_metrics(root_dir, g)) for g in range(num_groups)]
    if baseline:
        rows.append(
            (
                "baseline (group 0's data, no distillation)",
                read_metrics(os.path.join(root_dir, BASELINE), 0),
            )
        )
    return rows


# TensorFlow's C++ start-up lines, printed before its logging is set up (so
# TF_CPP_MIN_LOG_LEVEL does not hide them), twice per process: absl's banner,
# INFO lines (oneDNN, CUDA probing), and the failed CUDA probe of a machine
# without a GPU (TensorFlow then runs on the CPU, as it says elsewhere).
TF_STARTUP_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I0000 00:00:"
    r"|E0000 00:00:.*[Ff]ailed call to cuInit)"
)


class QuietWriter:
    """Prints processes' prefixed lines, leaving out TensorFlow's start-up lines.

    Args:
      write: where the other lines go (default: stdout, flushed).
    """

    def __init__(self, write: Optional[Callable[[str], None]] = None):
        self._write = write or _print_flush
        self.hidden = 0

    def __call__(self, line: str) -> None:
        # `[name] text`: the text is what the process printed.
        text = line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
        if TF_STARTUP_LINE.match(text):
            self.hidden += 1
            return
        self._write(line)


def where_to_look(root_dir: str, num_groups: int, baseline: bool) -> str:
    """The run directory and what in it a user reads next, for the end of the output."""
    groups = layout.group_dir(root_dir, 0) if num_groups == 1 else os.path.join(root_dir, "group_*")
    lines = [
        f"Run directory: {root_dir}",
        f"  results:     {os.path.join(groups, 'metrics.json')} (every evaluation, the final "
        "one, whether distillation happened)",
        f"  TensorBoard: tensorboard --logdir {root_dir}",
        f"  the models:  {os.path.join(groups, 'ckpt-*')} (the students; "
        f"tf-codistill-evaluate --root_dir={root_dir})",
    ]
    if baseline:
        lines.append(f"  baseline:    {os.path.join(root_dir, BASELINE)}")
    return "\n".join(lines)


def format_summary(rows: Sequence[tuple[str, Any]]) -> str:
    """The final validation metrics of each row, and the groups' mean against the baseline."""
    lines = [
        "",
        "Final validation metrics:",
        f"{'':46s} {'task loss':>10s} {'best (step)':>16s} {'accuracy':>9s} {'steps':>6s}",
    ]
    for name, m in rows:
        if m is None or not m.get("final"):
            lines.append(f"{name:46s} {'(no results)':>10s}")
            continue
        final, best = m["final"], m.get("best") or {}
        best_text = f"{best.get('val_task_loss', float('nan')):.4f} ({best.get('step', '-')})"
        accuracy = final.get("val_accuracy")
        lines.append(
            f"{name:46s} {final.get('val_task_loss', float('nan')):10.4f} {best_text:>16s} "
            f"{accuracy if accuracy is None else f'{accuracy:.4f}':>9} {m.get('steps', '-'):>6}"
        )
    for name, m in rows:
        distillation = (m or {}).get("distillation") or {}
        if m and m.get("codistill", True) and distillation.get("why_not"):
            lines.append(f"{name}: NO DISTILLATION happened: {distillation['why_not']}")
    done = [m for _, m in rows if m and m.get("final")]
    if len(done) == len(rows) and rows[-1][0].startswith(BASELINE) and len(rows) > 1:
        base = rows[-1][1]["final"]["val_task_loss"]
        groups = [m["final"]["val_task_loss"] for _, m in rows[:-1]]
        mean = sum(groups) / len(groups)
        lines.append(
            f"Codistilled groups vs baseline: {mean - base:+.4f} validation task loss "
            f"({(mean - base) / base:+.1%})."
        )
    return "\n".join(lines)


def launch(
    train_script: str,
    root_dir: str,
    num_groups: int = 2,
    workers_per_group: int = 1,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    baseline: bool = True,
    timeout_s: float = 1800.0,
    grace_s: float = 10.0,
    show_tf_startup: bool = False,
) -> dict[str, Optional[int]]:
    """Runs a whole job on this machine and prints a summary (`binaries/launch_local.py`).

    Starts `num_groups` groups of `workers_per_group` processes sharing
    `root_dir`, plus, with `baseline`, the same model trained on group 0's
    data without distillation in `<root_dir>/baseline`; streams their output
    with a prefix (TensorFlow's start-up lines left out unless
    `show_tf_startup`); waits at most `timeout_s`, then stops what is left;
    prints the results, then the run directory and what to read in it.

    Returns:
      The exit code of every process (None for one stopped at the timeout).
    """
    args = [f"--gin_file={f}" for f in gin_files] + [f"--gin_bindings={b}" for b in gin_bindings]
    tasks = group_tasks(train_script, root_dir, num_groups, workers_per_group, args)
    if baseline:
        # Same model, data shard and seed as group 0; peers none; its own directory.
        no_distillation = "--gin_bindings=tf_codistill.train_lib.train_group.codistill=False"
        baseline_tasks = group_tasks(
            train_script,
            os.path.join(root_dir, BASELINE),
            num_groups,
            workers_per_group,
            [*args, no_distillation],
        )
        for task in baseline_tasks[:workers_per_group]:
            task.name = BASELINE if workers_per_group == 1 else f"{BASELINE}{task.name[2:]}"
            tasks.append(task)
    print(f"Run directory: {root_dir}", flush=True)
    writer = None if show_tf_startup else QuietWriter()
    with LocalCluster(tasks, write=writer, grace_s=grace_s) as cluster:
        cluster.start()
        codes = cluster.wait(timeout_s)
        timed_out = [n for n, c in codes.items() if c is None]
        if timed_out:
            print(f"Timed out after {timeout_s:.0f} s; stopping {timed_out}", flush=True)
    print(format_summary(summary_rows(root_dir, num_groups, baseline)), flush=True)
    if writer is not None and writer.hidden:
        print(
            f"({writer.hidden} lines of TensorFlow start-up messages left out; "
            "--show_tf_startup shows them)",
            flush=True,
        )
    print(where_to_look(root_dir, num_groups, baseline), flush=True)
    return codes
