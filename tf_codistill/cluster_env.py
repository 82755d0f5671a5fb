"""A multi-worker group's `TF_CONFIG`, derived from a cluster manager's environment.

The workers of a group (`MultiWorkerMirroredStrategy`) find each other
through `TF_CONFIG`: every worker's address and this worker's index. The
local launcher and the Ray launcher write it; on Slurm and Kubernetes each
worker derives it from what the scheduler puts in its environment
(`binaries/train.py --cluster=slurm|kubernetes`, docs/cluster.md):

* **Slurm**, one job step per group (`srun --ntasks=<W> ... --group_index=<g>`):
  TensorFlow's `SlurmClusterResolver` reads `SLURM_PROCID`,
  `SLURM_STEP_NUM_TASKS`, `SLURM_STEP_NODELIST` and
  `SLURM_STEP_TASKS_PER_NODE`. Each group's ports start at
  `port_base + group_index * PORTS_PER_GROUP`, so groups whose steps share a
  node do not take the same ports (the resolver alone would give every step
  `port_base`).
* **Kubernetes**, one Indexed Job and one headless Service per group: pod `i`
  of Job `<job>` is reachable as `<job>-<i>.<service>` and gets
  `JOB_COMPLETION_INDEX=i`; the manifest says the rest (`TF_CODISTILL_JOB`,
  `TF_CODISTILL_SERVICE`, `TF_CODISTILL_WORKERS`, optionally
  `TF_CODISTILL_PORT`).

Worker 0 is the chief, as everywhere else in tf_codistill. No TensorFlow
import at module level: the Kubernetes route needs none, the Slurm route
imports TensorFlow's resolver when called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from typing import Optional

from tf_codistill import errors

__all__ = [
    "CLUSTERS",
    "PORTS_PER_GROUP",
    "configure",
    "kubernetes_tf_config",
    "slurm_tf_config",
]

CLUSTERS = ("slurm", "kubernetes")
# Ports a group may use on one node (its tasks there take consecutive ones).
PORTS_PER_GROUP = 100
SLURM_PORT_BASE = 8888
KUBERNETES_PORT = 2222


def _tf_config(workers: list[str], index: int) -> dict[str, Any]:
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def slurm_tf_config(
    group_index: int,
    port_base: int = SLURM_PORT_BASE,
    gpus_per_node: Optional[int] = None,
) -> dict[str, Any]:
    """TF_CONFIG of this task of a Slurm job step that runs one group.

    Args:
      group_index: the group the step runs (its ports start at
        `port_base + group_index * PORTS_PER_GROUP`).
      port_base: the first port of group 0 on each node.
      gpus_per_node: GPUs on each node, shared by the step's tasks on it (the
        resolver then sets each task's `CUDA_VISIBLE_DEVICES`). Default:
        `SLURM_GPUS_ON_NODE`, else none (CPU nodes).

    Returns:
      The TF_CONFIG dict (worker `SLURM_PROCID` of the step's tasks).

    Raises:
      errors.ConfigError: not inside a job step, or Slurm placed this task on
        another node than the one the resolver expects (a non-block task
        distribution).
    """
    import tensorflow as tf  # Only here: the Kubernetes route needs none.

    group_index = errors.check_int("group_index", group_index, minimum=0)
    if gpus_per_node is None:
        gpus_per_node = int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)
    kwargs: dict[str, Any] = dict(port_base=port_base + group_index * PORTS_PER_GROUP)
    if gpus_per_node > 0:
        kwargs.update(gpus_per_node=gpus_per_node, auto_set_gpu=True)
    else:
        # The resolver hands out GPUs even where there are none (with 0 per
        # task it fails); on CPU nodes every task gets a pretend one (as many
        # as a group may have tasks on a node) and nothing is set.
        kwargs.update(gpus_per_node=PORTS_PER_GROUP, gpus_per_task=1, auto_set_gpu=False)
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(**kwargs)
        workers = resolver.cluster_spec().as_dict()["worker"]
    except (RuntimeError, ValueError) as e:
        raise errors.ConfigError(
            "--cluster=slurm needs the environment of a Slurm job step (srun): "
            f"{errors.one_line(e, with_type=True)}"
        ) from e
    index = int(resolver.task_id)
    node = os.environ.get("SLURMD_NODENAME")
    expected = workers[index].rsplit(":", 1)[0]
    if node and node != expected:
        raise errors.ConfigError(
            f"Slurm task {index} runs on {node}, but TensorFlow's SlurmClusterResolver "
            f"numbers tasks node by node and expects it on {expected}: run the step "
            "with the default block distribution (srun --distribution=block)"
        )
    return _tf_config(workers, index)


def kubernetes_tf_config(environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """TF_CONFIG of this pod of a group's Indexed Job (pods `<job>-<i>.<service>`).

    Args:
      environ: the pod's environment (default `os.environ`): Kubernetes sets
        `JOB_COMPLETION_INDEX`; the manifest sets `TF_CODISTILL_JOB` (the
        Job's name), `TF_CODISTILL_SERVICE` (the headless Service, the pods'
        `subdomain`), `TF_CODISTILL_WORKERS` (the Job's `completions`) and
        optionally `TF_CODISTILL_PORT` (default 2222).

    Raises:
      errors.ConfigError: a variable missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    missing = [
        name
        for name in (
            "JOB_COMPLETION_INDEX",
            "TF_CODISTILL_JOB",
            "TF_CODISTILL_SERVICE",
            "TF_CODISTILL_WORKERS",
        )
        if not env.get(name)
    ]
    if missing:
        raise errors.ConfigError(
            f"--cluster=kubernetes needs {', '.join(missing)} in the environment "
            "(an Indexed Job sets JOB_COMPLETION_INDEX; the manifest the others: "
            "see cluster/k8s/)"
        )
    try:
        index = int(env["JOB_COMPLETION_INDEX"])
        workers = int(env["TF_CODISTILL_WORKERS"])
        port = int(env.get("TF_CODISTILL_PORT") or KUBERNETES_PORT)
    except ValueError as e:
        raise errors.ConfigError(f"--cluster=kubernetes: {e}") from e
    if not 0 <= index < workers:
        raise errors.ConfigError(
            f"JOB_COMPLETION_INDEX={index} is not in [0, TF_CODISTILL_WORKERS={workers}): "
            "the Job's completions and TF_CODISTILL_WORKERS must agree"
        )
    job, service = env["TF_CODISTILL_JOB"], env["TF_CODISTILL_SERVICE"]
    return _tf_config([f"{job}-{i}.{service}:{port}" for i in range(workers)], index)


def configure(cluster: str, group_index: int) -> dict[str, Any]:
    """Sets `TF_CONFIG` in this process's environment from `cluster`'s; returns it.

    Call before the strategy is created (and, for Slurm with GPUs, before
    TensorFlow initialises its devices: the resolver sets CUDA_VISIBLE_DEVICES).

    Raises:
      errors.ConfigError: an unknown cluster, or its environment is incomplete.
    """
    if cluster == "slurm":
        config = slurm_tf_config(group_index)
    elif cluster == "kubernetes":
        config = kubernetes_tf_config()
    else:
        raise errors.ConfigError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    os.environ["TF_CONFIG"] = json.dumps(config)
    return config
