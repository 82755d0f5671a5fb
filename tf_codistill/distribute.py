"""Data parallelism inside a group: strategy helpers.

A codistillation group is an ordinary synchronous data-parallel job; this
module holds what the group needs to know about its `tf.distribute` strategy:
whether this process is the chief (the only one that publishes) and how the
workers of a group agree on a value (which peer checkpoint to load), so that
every replica of a group uses the same teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from tf_codistill import errors

__all__ = [
    "STRATEGIES",
    "components",
    "make_strategy",
    "is_default",
    "is_chief",
    "num_workers",
    "worker_index",
    "agree_min",
    "barrier",
]

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")


def components(variables) -> list:
    """The per-replica variables of (possibly distributed) variables, on this worker.

    A sync-on-read variable (a replica's carried state, say) has a value per
    replica; copying or resetting it variable by variable reaches each one.
    """
    out = []
    for v in variables:
        out.extend(v.values if isinstance(v, tf.distribute.DistributedValues) else [v])
    return out


def make_strategy(name: str = "default", tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """The strategy of one group, chosen by name.

    Args:
      name: `default` (one device), `mirrored` (all local GPUs, or the CPU),
        `multi_worker_mirrored` (the cluster in `TF_CONFIG`; one process per
        worker), or `tpu`.
      tpu: TPU address for `tpu` (a name, `grpc://host:port`, or `local`).

    Returns:
      The strategy; create the student, the `CodistillModel`, the optimizer
      and metrics inside its `scope()`.

    Raises:
      ValueError: an unknown name, or an argument that does not go with it.
    """
    if name not in STRATEGIES:
        raise errors.ConfigError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if tpu and name != "tpu":
        raise errors.ConfigError(
            f"--tpu={tpu!r} is only meaningful with strategy 'tpu', got {name!r}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        # Blocks until every worker of TF_CONFIG has connected.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if not tpu:
        raise errors.ConfigError(
            "strategy 'tpu' needs a TPU address (--tpu=<name|grpc://...|local>)"
        )
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _cluster_resolver(strategy: tf.distribute.Strategy):
    return getattr(strategy, "cluster_resolver", None)


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is TensorFlow's default (no distribution) strategy.

    TensorFlow exports no class or test for it (`tf.distribute.get_strategy()`
    returns it only outside every scope); its class name is checked here, the
    one place (tests/test_distribute.py fails if TensorFlow renames it).
    """
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def num_workers(strategy: Optional[tf.distribute.Strategy] = None) -> int:
    """Number of worker processes the strategy spans (1 unless multi-worker)."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # The chief (if any) and the workers of TF_CONFIG; none without one.
        cluster = _cluster_resolver(strategy).cluster_spec().as_dict()
        return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))
    return 1


def worker_index(strategy: Optional[tf.distribute.Strategy] = None) -> int:
    """This process's index among the group's workers (its input pipeline id)."""
    strategy = strategy or tf.distribute.get_strategy()
    if num_workers(strategy) == 1:
        return 0
    resolver = _cluster_resolver(strategy)
    cluster = resolver.cluster_spec().as_dict()
    # MultiWorkerMirroredStrategy numbers input pipelines chief first, then workers.
    offset = len(cluster.get("chief", [])) if resolver.task_type == "worker" else 0
    return offset + int(resolver.task_id or 0)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process is the group's chief.

    Single-process strategies (default, mirrored, TPU) always are. Under
    MultiWorkerMirroredStrategy the chief is the `chief` task, or worker 0 when
    the cluster has no `chief` task (TF_CONFIG's usual convention).
    """
    strategy = strategy or tf.distribute.get_strategy()
    if num_workers(strategy) == 1:
        return True
    resolver = _cluster_resolver(strategy)
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = resolver.cluster_spec().as_dict()
    return "chief" not in cluster and task_type == "worker" and int(task_id or 0) == 0


def agree_min(
    values: Sequence[int], strategy: Optional[tf.distribute.Strategy] = None
) -> np.ndarray:
    """Element-wise minimum of `values` over all workers of the group.

    Must be called by every worker at the same point of training (it is a
    collective under MultiWorkerMirroredStrategy); a no-op with one worker.

    Args:
      values: int values, the same length on every worker.
      strategy: defaults to the current strategy.

    Returns:
      int64 numpy array of the agreed values.
    """
    local = np.asarray(list(values), dtype=np.int64)
    strategy = strategy or tf.distribute.get_strategy()
    if num_workers(strategy) == 1 or local.size == 0:
        return local
    return _min_over_replicas_fn(strategy)(tf.constant(local)).numpy()


def barrier(strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """Returns once every worker of the group has called it; a no-op with one worker.

    A collective (`agree_min` of nothing in particular): every worker must
    call it at the same point. If a worker has died, it fails as any
    collective does (`tf.errors.UnavailableError` once the coordination
    service notices, about 10 s later).
    """
    agree_min([1], strategy)


_MIN_FNS: dict = {}


def _min_over_replicas_fn(strategy: tf.distribute.Strategy):
    """A tf.function (traced once per input length) gathering a vector from
    every replica of the group and taking the element-wise minimum. Eager
    collectives retrace on every call and cost ~0.3 s each on a CPU."""
    key = id(strategy)
    if key not in _MIN_FNS:

        @tf.function
        def min_over_replicas(values):
            per_replica = strategy.run(lambda v: v[tf.newaxis, :], args=(values,))
            gathered = strategy.gather(per_replica, axis=0)  # [replicas, len]
            return tf.reduce_min(gathered, axis=0)

        _MIN_FNS[key] = (strategy, min_over_replicas)  # Keeps `strategy` alive with its id.
    return _MIN_FNS[key][1]
