"""Run a codistillation job on a Ray cluster: one Ray Train `TensorflowTrainer` per group.

What `binaries/launch_ray.py` does, with the flags of `launch_local.py`: every
group (and the no-distillation baseline) is a `ray.train.tensorflow.TensorflowTrainer`
of `workers_per_group` workers, all of them running at once and sharing
`root_dir` (a filesystem every node mounts, or `gs://`). Ray Train starts the
workers, writes each worker's `TF_CONFIG` for MultiWorkerMirroredStrategy,
and, with `FailureConfig(max_failures)`, starts a group's workers again when
one of them dies; the group then resumes from its BackupAndRestore backup
(`train_lib` does that under any launcher) while its peers keep training.

Each worker's log lines carry its prefix (`[g0w1]`, `[baseline]`) after
Ray's own (`(RayTrainWorker pid=...)`); at the end the launcher prints the
same summary as `launch_local.py`.

This module imports Ray; nothing else in tf_codistill does (Ray is the
optional `ray` extra: `pip install "tf_codistill[ray]"`).
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Optional

# Read when Ray is imported: by default the driver folds lines that differ
# only in numbers ("[g0w0] ... step 10", "[g1w0] ... step 10") into one.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from absl import logging  # noqa: E402
from ray import train as ray_train  # noqa: E402
from ray.train import tensorflow as ray_tensorflow  # noqa: E402

from tf_codistill import errors
from tf_codistill import layout
from tf_codistill import local_cluster

__all__ = [
    "GroupRun",
    "group_runs",
    "launch",
    "train_worker",
    "worker_prefix",
]

# Lines the workers print, which the tests (and people) look for.
STARTED = "worker started, pid {pid} on {host}"


@dataclasses.dataclass(frozen=True)
class GroupRun:
    """One group of the job, as one TensorflowTrainer.

    Attributes:
      name: the output prefix (`g<i>`, or `baseline`).
      root_dir: the run directory the group writes into (`<root>/baseline`
        for the baseline).
      group_index: the group's index in its run.
      num_groups: groups in the run.
      gin_files, gin_bindings: the group's configuration.
    """

    name: str
    root_dir: str
    group_index: int
    num_groups: int
    gin_files: tuple[str, ...]
    gin_bindings: tuple[str, ...]


def group_runs(
    root_dir: str,
    num_groups: int,
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    baseline: bool,
) -> list[GroupRun]:
    """The groups of a job and, with `baseline`, group 0's model without distillation."""
    runs = [
        GroupRun(f"g{g}", root_dir, g, num_groups, tuple(gin_files), tuple(gin_bindings))
        for g in range(num_groups)
    ]
    if baseline:
        # As launch_local: group 0's data and seed, no peers, its own directory.
        runs.append(
            GroupRun(
                local_cluster.BASELINE,
                os.path.join(root_dir, local_cluster.BASELINE),
                0,
                num_groups,
                tuple(gin_files),
                (*gin_bindings, "tf_codistill.train_lib.train_group.codistill=False"),
            )
        )
    return runs


def worker_prefix(name: str, worker: int, workers: int) -> str:
    """`g0` for a one-worker group, `g0w1` for worker 1 of several (as launch_local)."""
    return name if workers == 1 else f"{name}w{worker}"


class _Prefix(std_logging.Filter):
    """Puts `[prefix] ` before a record's message, once."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: std_logging.LogRecord) -> bool:
        if not getattr(record, "tf_codistill_prefixed", False):
            record.msg = f"[{self.prefix}] {record.getMessage()}"
            record.args = None
            record.tf_codistill_prefixed = True
        return True


def _prefix_log_lines(prefix: str) -> None:
    """Prefixes every line this worker logs (or prints) with `[prefix]`.

    Ray Train has configured the worker's root logger (a console handler,
    which the driver streams, and a file); absl's logger and, through Ray's
    patched `print`, printed lines propagate to it. A filter on the handlers,
    not a formatter: in a worker, Ray's console handler formats with one of
    its own.
    """
    for handler in std_logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _Prefix)]:
            handler.removeFilter(old)
        handler.addFilter(_Prefix(prefix))


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: one worker of one group, in a Ray actor.

    `TensorflowTrainer` has set `TF_CONFIG` (all the group's workers, this
    one's index) before this runs.
    """
    # Imported here: the training code runs in the actor, not in the driver.
    from tf_codistill import distribute
    from tf_codistill import gin_utils
    from tf_codistill import train_lib

    context = ray_train.get_context()
    worker, workers = context.get_world_rank(), context.get_world_size()
    prefix = worker_prefix(config["name"], worker, workers)
    _prefix_log_lines(prefix)
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    logging.info(STARTED.format(pid=os.getpid(), host=socket.gethostname()))
    gin_utils.parse(list(config["gin_files"]), list(config["gin_bindings"]))
    strategy = distribute.make_strategy("multi_worker_mirrored" if workers > 1 else "default")
    train_lib.train_group(
        config["root_dir"], config["group_index"], config["num_groups"], strategy=strategy
    )


def _trainer(
    run: GroupRun,
    workers: int,
    storage_path: str,
    max_failures: int,
    cpus_per_worker: float,
    use_gpu: bool,
) -> ray_tensorflow.TensorflowTrainer:
    return ray_tensorflow.TensorflowTrainer(
        train_worker,
        train_loop_config=dataclasses.asdict(run),
        scaling_config=ray_train.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker},
        ),
        run_config=ray_train.RunConfig(
            name=f"tf_codistill-{run.name}",
            storage_path=storage_path,
            failure_config=ray_train.FailureConfig(max_failures=max_failures),
        ),
    )


def _init(address: Optional[str], cpus_needed: float, env_vars: dict[str, str]) -> Optional[float]:
    """Connects to `address`, or starts a local Ray cluster with enough logical CPUs.

    Returns:
      The cluster's CPUs.
    """
    runtime_env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # A local cluster: as many logical CPUs as the workers ask for (like
        # launch_local, which starts every process whatever the cores).
        ray.init(
            num_cpus=max(int(cpus_needed + 0.999), os.cpu_count() or 1),
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    return ray.cluster_resources().get("CPU")


def launch(
    root_dir: str,
    num_groups: int = 2,
    workers_per_group: int = 1,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    baseline: bool = True,
    address: Optional[str] = None,
    max_failures: int = 3,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    timeout_s: float = 1800.0,
    write: Callable[[str], None] = print,
) -> dict[str, Optional[str]]:
    """Runs a whole job on a Ray cluster and prints a summary (`binaries/launch_ray.py`).

    All groups (and the baseline) run at once, each as one TensorflowTrainer
    of `workers_per_group` workers; a group whose worker dies is started
    again up to `max_failures` times and resumes from its backup.

    Args:
      root_dir: the run directory, visible to every worker (a shared
        filesystem, or `gs://`).
      num_groups, workers_per_group, gin_files, gin_bindings, baseline: as
        `local_cluster.launch`.
      address: an existing Ray cluster (`ray://...`, `auto`, `host:port`);
        None starts a local one.
      max_failures: restarts of a group after a worker failure.
      cpus_per_worker, use_gpu: what each worker asks Ray for.
      timeout_s: stop everything after this long.
      write: where the launcher's own lines go (the workers' come through Ray).

    Returns:
      Per group name: None if it finished, else why not (one line).

    Raises:
      errors.ConfigError: the cluster cannot run every worker at once (the
        groups of a run must train together).
    """
    num_groups = errors.check_int("num_groups", num_groups, minimum=1)
    workers = errors.check_int("workers_per_group", workers_per_group, minimum=1)
    max_failures = errors.check_int("max_failures", max_failures, minimum=0)
    runs = group_runs(root_dir, num_groups, gin_files, gin_bindings, baseline)
    cpus_needed = len(runs) * workers * cpus_per_worker
    # Worker processes get the launcher's view of the code; a remote cluster
    # needs tf_codistill installed on its nodes (docs/cluster.md).
    env_vars = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if not address and os.environ.get("PYTHONPATH"):
        env_vars["PYTHONPATH"] = os.environ["PYTHONPATH"]
    write(f"Run directory: {root_dir}")
    cpus = _init(address, cpus_needed, env_vars)
    outcomes: dict[str, Optional[str]] = {}
    try:
        if cpus is not None and cpus < cpus_needed:
            raise errors.ConfigError(
                f"the Ray cluster has {cpus:g} CPUs; {len(runs)} groups x {workers} workers "
                f"x {cpus_per_worker:g} CPUs need {cpus_needed:g} at once (every group of a "
                "run trains at the same time): lower --cpus_per_worker or add nodes"
            )
        storage_path = layout.ray_dir(root_dir)
        threads = []
        for run in runs:
            trainer = _trainer(run, workers, storage_path, max_failures, cpus_per_worker, use_gpu)
            thread = threading.Thread(
                target=_fit,
                args=(trainer, run.name, outcomes),
                name=f"fit-{run.name}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for run in runs:
            if run.name not in outcomes:
                outcomes[run.name] = f"still running after {timeout_s:.0f} s; stopped"
    finally:
        # Ends this driver's actors (the trainers' controllers and workers).
        ray.shutdown()
    write(local_cluster.format_summary(local_cluster.summary_rows(root_dir, num_groups, baseline)))
    return outcomes


def _fit(
    trainer: ray_tensorflow.TensorflowTrainer, name: str, outcomes: dict[str, Optional[str]]
) -> None:
    # setdefault: a group stopped at the timeout keeps that as its outcome.
    try:
        trainer.fit()
        outcomes.setdefault(name, None)
    except Exception as e:  # A group that failed more than max_failures times.
        outcomes.setdefault(name, errors.one_line(e, with_type=True))
