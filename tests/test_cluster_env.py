"""cluster_env: the TF_CONFIG every worker derives from a Slurm or Kubernetes environment.

Each test fakes the environment one worker would see and checks that every
worker of a group derives the same cluster (all addresses, in one order) and
its own index, and that TensorFlow's own resolver reads the result back as
MultiWorkerMirroredStrategy will.
"""

import json
import os
import re
import subprocess
from unittest import mock

import pytest
import tensorflow as tf

from tf_codistill import cluster_env
from tf_codistill import errors
from tf_codistill import testing


def _slurm_env(procid, nodelist="node[01-02]", tasks_per_node="2(x2)", node=None, **extra):
    """A job step's environment as srun sets it for task `procid`."""
    env = {
        "SLURM_PROCID": str(procid),
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
    }
    if node:
        env["SLURMD_NODENAME"] = node
    env.update(extra)
    return env


def _slurm(env, group_index=0, **kwargs):
    with mock.patch.dict(os.environ, env):
        for name in ("SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"):
            if name not in env:
                os.environ.pop(name, None)
        config = cluster_env.slurm_tf_config(group_index, **kwargs)
        return config, os.environ.get("CUDA_VISIBLE_DEVICES")


def test_slurm_two_nodes_two_tasks_each_every_worker_derives_one_cluster():
    # Block distribution (srun's default): tasks 0, 1 on node01, 2, 3 on node02.
    expected = ["node01:8888", "node01:8889", "node02:8888", "node02:8889"]
    for procid, node in enumerate(["node01", "node01", "node02", "node02"]):
        config, _ = _slurm(_slurm_env(procid, node=node))
        assert config == {
            "cluster": {"worker": expected},
            "task": {"type": "worker", "index": procid},
        }


def test_slurm_groups_sharing_a_node_get_disjoint_ports():
    # Group 1's step on the same nodes: ports from 8888 + 100.
    config, _ = _slurm(_slurm_env(3, node="node02"), group_index=1)
    assert config["cluster"]["worker"] == [
        "node01:8988",
        "node01:8989",
        "node02:8988",
        "node02:8989",
    ]
    assert config["task"]["index"] == 3


def test_slurm_gpus_are_shared_by_the_tasks_of_a_node():
    # 4 GPUs per node, 2 tasks per node: 2 GPUs each (set before TF uses them).
    visible = [_slurm(_slurm_env(i, SLURM_GPUS_ON_NODE="4"))[1] for i in range(4)]
    assert visible == ["0,1", "2,3", "0,1", "2,3"]
    # CPU nodes: nothing is set (TensorFlow's resolver alone would fail there).
    assert _slurm(_slurm_env(1))[1] is None


def test_slurm_uneven_tasks_per_node():
    env = _slurm_env(2, nodelist="a1,b[7-8]", tasks_per_node="2,1(x2)", node="b7")
    config, _ = _slurm(env)
    assert config["cluster"]["worker"] == ["a1:8888", "a1:8889", "b7:8888", "b8:8888"]
    assert config["task"]["index"] == 2


def test_slurm_cyclic_distribution_and_no_job_step_are_one_line_errors():
    # Cyclic: task 1 on node02, where the resolver expects node01.
    with pytest.raises(errors.ConfigError, match=r"task 1 runs on node02.*distribution=block"):
        _slurm(_slurm_env(1, node="node02"))
    with mock.patch.dict(os.environ, {"SLURM_PROCID": "0"}):
        os.environ.pop("SLURM_STEP_NUM_TASKS", None)
        with pytest.raises(errors.ConfigError, match="needs the environment of a Slurm job step"):
            cluster_env.slurm_tf_config(0)


def _k8s_env(index, workers="3", **extra):
    env = {
        "JOB_COMPLETION_INDEX": str(index),
        "TF_CODISTILL_JOB": "codistill-g1",
        "TF_CODISTILL_SERVICE": "codistill-g1",
        "TF_CODISTILL_WORKERS": workers,
    }
    env.update(extra)
    return env


def test_kubernetes_indexed_job_pods_derive_one_cluster_from_dns_names():
    expected = [f"codistill-g1-{i}.codistill-g1:2222" for i in range(3)]
    for index in range(3):
        assert cluster_env.kubernetes_tf_config(_k8s_env(index)) == {
            "cluster": {"worker": expected},
            "task": {"type": "worker", "index": index},
        }
    config = cluster_env.kubernetes_tf_config(_k8s_env(0, TF_CODISTILL_PORT="5000"))
    assert config["cluster"]["worker"][2] == "codistill-g1-2.codistill-g1:5000"


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "needs JOB_COMPLETION_INDEX, TF_CODISTILL_JOB, TF_CODISTILL_SERVICE"),
        (_k8s_env(3), r"JOB_COMPLETION_INDEX=3 is not in \[0, TF_CODISTILL_WORKERS=3\)"),
        (_k8s_env(0, workers="two"), "invalid literal"),
    ],
)
def test_kubernetes_missing_or_inconsistent_environment(env, message):
    with pytest.raises(errors.ConfigError, match=message):
        cluster_env.kubernetes_tf_config(env)


def test_configure_sets_the_tf_config_tensorflow_reads():
    with mock.patch.dict(os.environ, _k8s_env(1)):
        config = cluster_env.configure("kubernetes", group_index=1)
        assert json.loads(os.environ["TF_CONFIG"]) == config
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == config["cluster"]
        assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    with pytest.raises(errors.ConfigError, match="cluster must be one of"):
        cluster_env.configure("yarn", 0)


def test_train_binary_derives_tf_config_before_the_strategy(tmp_path):
    train = testing.load_binary("train")
    seen = {}

    def make_strategy(name, tpu):
        seen["tf_config"] = json.loads(os.environ["TF_CONFIG"])
        raise errors.ConfigError("stop here")

    flags = train.FLAGS
    values = dict(
        gin_file=["demo/tiny.gin"],
        gin_bindings=[],
        root_dir=str(tmp_path),
        group_index=1,
        num_groups=2,
        strategy="multi_worker_mirrored",
        tpu=None,
        cluster="kubernetes",
    )
    for name, value in values.items():
        setattr(flags, name, value)
    try:
        with (
            mock.patch.dict(os.environ, _k8s_env(2)),
            mock.patch.object(train.distribute, "make_strategy", make_strategy),
        ):
            with pytest.raises(SystemExit, match="stop here"):
                train.main([])
    finally:
        flags.cluster = None
        flags.strategy = "default"
    assert seen["tf_config"]["task"] == {"type": "worker", "index": 2}


CLUSTER_DIR = os.path.join(testing.repo_root(), "cluster")


def _train_flags():
    return set(testing.load_binary("train").FLAGS)


def test_kubernetes_manifest_each_pod_derives_its_groups_cluster():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests")
    with open(os.path.join(CLUSTER_DIR, "k8s", "codistill.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    jobs = [d for d in docs if d["kind"] == "Job"]
    flags = _train_flags()
    groups, roots = set(), set()
    for job in jobs:
        name, spec = job["metadata"]["name"], job["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        args = dict(a[2:].split("=", 1) for a in container["args"])
        assert set(args) <= flags, set(args) - flags
        assert args["cluster"] == "kubernetes" and args["strategy"] == "multi_worker_mirrored"
        groups.add(int(args["group_index"]))
        roots.add(args["root_dir"])
        assert int(args["num_groups"]) == len(jobs)
        # The Service is headless, named as the pods' subdomain, and selects the Job's pods.
        service = services[pod["subdomain"]]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == {"job-name": name}
        assert spec["completionMode"] == "Indexed"
        workers = int(env["TF_CODISTILL_WORKERS"])
        assert spec["completions"] == spec["parallelism"] == workers
        port = int(env["TF_CODISTILL_PORT"])
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        # What each pod derives: the Job's pods by their DNS names, its own index.
        for index in range(workers):
            pod_env = dict(env, JOB_COMPLETION_INDEX=str(index))
            config = cluster_env.kubernetes_tf_config(pod_env)
            assert config["cluster"]["worker"] == [
                f"{name}-{i}.{pod['subdomain']}:{port}" for i in range(workers)
            ]
            assert config["task"]["index"] == index
    assert groups == set(range(len(jobs))) and len(roots) == 1


def test_kuberay_job_runs_the_ray_launcher_on_its_cluster():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests")
    with open(os.path.join(CLUSTER_DIR, "k8s", "rayjob.yaml")) as f:
        job = yaml.safe_load(f)
    assert job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[0] == "tf-codistill-launch-ray" and "--address=auto" in entrypoint


def test_slurm_script_is_valid_bash_running_one_step_per_group():
    path = os.path.join(CLUSTER_DIR, "slurm", "codistill.sbatch")
    subprocess.run(["bash", "-n", path], check=True)
    with open(path) as f:
        script = f.read()
    used = set(re.findall(r"^\s+--(\w+)=", script, re.MULTILINE))
    srun = {"exact", "nodes", "ntasks", "ntasks-per-node", "distribution"}
    assert used - srun <= _train_flags(), used - srun - _train_flags()
    assert "--cluster=slurm" in script and "--distribution=block" in script


def test_slurm_script_steps_give_each_group_its_own_nodes_and_ports(tmp_path):
    # The script under a fake srun that records its command line: 4 nodes of
    # 2 tasks, 2 groups -> one step of 2 nodes x 2 tasks per group.
    calls = tmp_path / "srun_calls"
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{fake.parent}:{os.environ['PATH']}",
        SLURM_JOB_NUM_NODES="4",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_JOB_ID="77",
        USER="me",
    )
    script = os.path.join(CLUSTER_DIR, "slurm", "codistill.sbatch")
    subprocess.run(["bash", script], check=True, env=env, timeout=30)
    steps = [dict(re.findall(r"--([\w-]+)=(\S+)", line)) for line in calls.read_text().splitlines()]
    assert sorted(int(s["group_index"]) for s in steps) == [0, 1]
    clusters = {}
    for step in steps:
        assert (step["nodes"], step["ntasks"], step["ntasks-per-node"]) == ("2", "4", "2")
        assert step["root_dir"] == "/shared/me/codistill/77" and step["cluster"] == "slurm"
        group = int(step["group_index"])
        # What srun then gives the step's tasks (here group g on nodes n[2g, 2g+1]).
        nodes = f"n[{2 * group}-{2 * group + 1}]"
        configs = [
            _slurm(_slurm_env(i, nodelist=nodes, node=f"n{2 * group + i // 2}"), group)[0]
            for i in range(4)
        ]
        assert [c["task"]["index"] for c in configs] == [0, 1, 2, 3]
        assert all(c["cluster"] == configs[0]["cluster"] for c in configs)
        clusters[group] = configs[0]["cluster"]["worker"]
    assert clusters[1] == ["n2:8988", "n2:8989", "n3:8988", "n3:8989"]
    assert clusters[0] == ["n0:8888", "n0:8889", "n1:8888", "n1:8889"]
