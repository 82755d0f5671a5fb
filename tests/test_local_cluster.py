"""local_cluster: processes of a local run, their output, stopping them; the launcher's summary."""

import json
import os
import signal
import sys

import pytest

from tf_codistill import errors
from tf_codistill import local_cluster


def test_tf_config_of_a_worker():
    ports = local_cluster.free_ports(2)
    assert len(set(ports)) == 2
    config = json.loads(local_cluster.tf_config(ports, 1))
    assert config["cluster"]["worker"] == [f"127.0.0.1:{p}" for p in ports]
    assert config["task"] == {"type": "worker", "index": 1}


def test_group_tasks_one_per_worker_with_tf_config():
    tasks = local_cluster.group_tasks("train.py", "/r", 2, 2, ["--gin_file=x.gin"])
    assert [t.name for t in tasks] == ["g0w0", "g0w1", "g1w0", "g1w1"]
    assert tasks[3].argv[1:] == [
        "train.py",
        "--root_dir=/r",
        "--group_index=1",
        "--num_groups=2",
        "--strategy=multi_worker_mirrored",
        "--gin_file=x.gin",
    ]
    assert json.loads(tasks[3].env["TF_CONFIG"])["task"]["index"] == 1
    single = local_cluster.group_tasks("train.py", "/r", 1, 1)
    assert single[0].name == "g0" and single[0].env == {}


def test_output_is_prefixed_and_processes_are_stopped_by_pid():
    lines = []
    echo = local_cluster.Task("echo", [sys.executable, "-c", "print('hello')"])
    sleeper = local_cluster.Task(
        "sleeper",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
    )
    with local_cluster.LocalCluster([echo, sleeper], write=lines.append, grace_s=0.5) as cluster:
        cluster.start()
        # Bounded by events, not by a time a loaded machine may overrun.
        cluster.processes["echo"].wait(timeout=120)
        assert cluster.drain("echo") == 0
        assert [x for x in lines if x.startswith("[echo]")][-2:] == [
            "[echo] hello",
            "[echo] exited with code 0",  # The last line, after all its output.
        ]
        assert cluster.drain("sleeper") is None  # Still running.
        codes = cluster.wait(timeout_s=0.1, poll_s=0.05)
        assert codes["echo"] == 0 and codes["sleeper"] is None
        with pytest.raises(RuntimeError, match="sleeper is still running"):
            cluster.start("sleeper")
        # It ignores SIGTERM (as MultiWorkerMirroredStrategy does): SIGKILL after the grace.
        assert cluster.stop("sleeper") == -signal.SIGKILL
    assert "[echo] hello" in lines
    assert any(line.startswith("[sleeper] did not exit") for line in lines)
    with pytest.raises(errors.ConfigError, match="task names must be unique"):
        local_cluster.LocalCluster([echo, echo])


def test_summary_compares_the_groups_with_the_baseline(tmp_path):
    def write(directory, loss):
        os.makedirs(directory)
        result = {"final": {"val_task_loss": loss, "val_accuracy": 0.5}, "steps": 40}
        result["best"] = {"val_task_loss": loss, "step": 40}
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(result, f)

    write(tmp_path / "group_0", 1.0)
    write(tmp_path / "group_1", 1.2)
    write(tmp_path / "baseline" / "group_0", 1.2)
    text = local_cluster.format_summary(local_cluster.summary_rows(str(tmp_path), 3, True))
    assert "group 2" in text and "(no results)" in text
    assert "Codistilled groups vs baseline" not in text  # group 2 has no results
    text = local_cluster.format_summary(local_cluster.summary_rows(str(tmp_path), 2, True))
    # Mean 1.1 vs 1.2: -0.1 (-8.3%).
    assert "Codistilled groups vs baseline: -0.1000 validation task loss (-8.3%)." in text


def test_quiet_writer_leaves_out_tensorflow_start_up_lines_only():
    shown = []
    writer = local_cluster.QuietWriter(shown.append)
    for line in [
        "[g0] WARNING: All log messages before absl::InitializeLog() is called are written "
        "to STDERR",
        "[g0] I0000 00:00:1795867572.291229   20469 port.cc:153] oneDNN custom operations are on.",
        "[g0] E0000 00:00:1795867677.964008   20473 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "[g0] E0000 00:00:1795867677.964008   20473 other.cc:1] a real error",
        "[g0] I1128 12:08:02.520668 140715657280384 train_lib.py:336] group 0: 3000 steps",
        "[baseline] started, pid 20473",
    ]:
        writer(line)
    assert writer.hidden == 3
    assert shown == [
        "[g0] E0000 00:00:1795867677.964008   20473 other.cc:1] a real error",
        "[g0] I1128 12:08:02.520668 140715657280384 train_lib.py:336] group 0: 3000 steps",
        "[baseline] started, pid 20473",
    ]


def test_where_to_look_names_the_run_directory_and_its_files():
    text = local_cluster.where_to_look("/r", 2, baseline=True)
    assert text.splitlines()[0] == "Run directory: /r"
    assert "/r/group_*/metrics.json" in text and "tensorboard --logdir /r" in text
    assert text.splitlines()[-1] == "  baseline:    /r/baseline"
