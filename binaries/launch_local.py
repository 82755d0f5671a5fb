r"""Runs a whole codistillation job on this machine and summarises it.

Starts --num_groups groups (each of --workers_per_group worker processes,
multi-worker groups wired together through TF_CONFIG on free 127.0.0.1 ports)
that share one exchange directory, plus, with --baseline, the same model
trained on group 0's data without distillation. Streams every process's output
with a prefix, waits (at most --timeout_s), and prints each group's final
validation metrics next to the baseline's.

  python binaries/launch_local.py                      # the bundled demo
  python binaries/launch_local.py --gin_file=demo/codistill.gin --num_groups=3
"""

import json
import os
import sys
import tempfile

from absl import app
from absl import flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # Run as a script from a source checkout.
    sys.path.insert(0, os.path.dirname(_HERE))

from tf_codistill import layout  # noqa: E402
from tf_codistill import local_cluster  # noqa: E402

flags.DEFINE_multi_string("gin_file", ["demo/codistill.gin"], "gin files for every group.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every group.")
flags.DEFINE_string("root_dir", None, "Run directory (default: a new temporary directory).")
flags.DEFINE_integer("num_groups", 2, "Codistilling groups.", lower_bound=1)
flags.DEFINE_integer("workers_per_group", 1, "Worker processes per group.", lower_bound=1)
flags.DEFINE_bool("baseline", True, "Also train group 0's model on its data without distillation.")
flags.DEFINE_float("timeout_s", 1800, "Stop everything after this many seconds.")
flags.DEFINE_float("grace_s", 10, "Seconds between SIGTERM and SIGKILL when stopping.")

FLAGS = flags.FLAGS

BASELINE = "baseline"


def group_tasks(root_dir, num_groups, workers, gin_args, extra=()):
    """One task per worker of every group."""
    train = os.path.join(_HERE, "train.py")
    tasks = []
    for g in range(num_groups):
        ports = local_cluster.free_ports(workers) if workers > 1 else []
        for w in range(workers):
            args = [f"--root_dir={root_dir}", f"--group_index={g}", f"--num_groups={num_groups}"]
            env = {}
            if workers > 1:
                args.append("--strategy=multi_worker_mirrored")
                env["TF_CONFIG"] = local_cluster.tf_config(ports, w)
            name = f"g{g}" if workers == 1 else f"g{g}w{w}"
            tasks.append(
                local_cluster.Task(
                    name, local_cluster.python_command(train, *args, *gin_args, *extra), env
                )
            )
    return tasks


def read_metrics(root_dir, group):
    path = layout.metrics_path(layout.group_dir(root_dir, group))
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def summary_rows(root_dir, num_groups, baseline):
    rows = [(f"group {g}", read_metrics(root_dir, g)) for g in range(num_groups)]
    if baseline:
        rows.append(
            (
                "baseline (group 0's data, no distillation)",
                read_metrics(os.path.join(root_dir, BASELINE), 0),
            )
        )
    return rows


def format_summary(rows):
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


def main(argv):
    del argv
    root_dir = FLAGS.root_dir or tempfile.mkdtemp(prefix="tf_codistill_run_")
    gin_args = [f"--gin_file={f}" for f in FLAGS.gin_file]
    gin_args += [f"--gin_bindings={b}" for b in FLAGS.gin_bindings]
    tasks = group_tasks(root_dir, FLAGS.num_groups, FLAGS.workers_per_group, gin_args)
    if FLAGS.baseline:
        # Same model, data shard and seed as group 0; peers none; its own directory.
        baseline = group_tasks(
            os.path.join(root_dir, BASELINE),
            FLAGS.num_groups,
            FLAGS.workers_per_group,
            gin_args,
            extra=["--gin_bindings=tf_codistill.train_lib.train_group.codistill=False"],
        )
        for task in baseline[: FLAGS.workers_per_group]:
            task.name = BASELINE if FLAGS.workers_per_group == 1 else f"{BASELINE}{task.name[2:]}"
            tasks.append(task)
    print(f"Run directory: {root_dir}", flush=True)
    with local_cluster.LocalCluster(tasks, grace_s=FLAGS.grace_s) as cluster:
        cluster.start()
        codes = cluster.wait(FLAGS.timeout_s)
        timed_out = [n for n, c in codes.items() if c is None]
        if timed_out:
            print(f"Timed out after {FLAGS.timeout_s:.0f} s; stopping {timed_out}", flush=True)
    print(format_summary(summary_rows(root_dir, FLAGS.num_groups, FLAGS.baseline)), flush=True)
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        sys.exit(f"launch_local.py: processes did not finish cleanly: {failed}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
