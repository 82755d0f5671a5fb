r"""Runs a whole codistillation job on a Ray cluster and summarises it.

The flags of launch_local.py, plus --address: each group (and, with
--baseline, group 0's model without distillation) is one Ray Train
TensorflowTrainer of --workers_per_group workers (Ray sets their TF_CONFIG),
all groups at once, sharing --root_dir (a filesystem every node mounts, or
gs://). A group whose worker dies is started again (--max_failures) and
resumes from its backup while its peers train on. Needs the `ray` extra:
pip install "tf_codistill[ray]".

  tf-codistill-launch-ray                           # a local Ray cluster
  tf-codistill-launch-ray --address=auto --root_dir=/shared/run1 \
      --gin_file=demo/codistill.gin --num_groups=2 --workers_per_group=4
"""

import sys
import tempfile

from absl import flags

from tf_codistill import app
from tf_codistill import errors

flags.DEFINE_multi_string("gin_file", ["demo/codistill.gin"], "gin files for every group.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every group.")
flags.DEFINE_string(
    "root_dir",
    None,
    "Run directory, visible to every worker (default: a new temporary directory, "
    "which only a local cluster can share).",
)
flags.DEFINE_integer("num_groups", 2, "Codistilling groups.", lower_bound=1)
flags.DEFINE_integer("workers_per_group", 1, "Worker processes per group.", lower_bound=1)
flags.DEFINE_bool("baseline", True, "Also train group 0's model on its data without distillation.")
flags.DEFINE_float("timeout_s", 1800, "Stop everything after this many seconds.")
flags.DEFINE_string(
    "address", None, "An existing Ray cluster (auto, host:port, ray://...); default: a local one."
)
flags.DEFINE_integer(
    "max_failures", 3, "Restarts of a group after one of its workers failed.", lower_bound=0
)
flags.DEFINE_float("cpus_per_worker", 1.0, "CPUs each worker asks Ray for.")
flags.DEFINE_bool("use_gpu", False, "Give each worker a GPU.")

FLAGS = flags.FLAGS


@app.one_line_errors
def main(argv):
    del argv
    try:
        from tf_codistill import ray_launcher
    except ImportError as e:
        raise errors.ConfigError(
            f'tf-codistill-launch-ray needs Ray Train: pip install "tf_codistill[ray]" ({e})'
        ) from e
    outcomes = ray_launcher.launch(
        FLAGS.root_dir or tempfile.mkdtemp(prefix="tf_codistill_run_"),
        FLAGS.num_groups,
        FLAGS.workers_per_group,
        FLAGS.gin_file,
        FLAGS.gin_bindings,
        baseline=FLAGS.baseline,
        address=FLAGS.address,
        max_failures=FLAGS.max_failures,
        cpus_per_worker=FLAGS.cpus_per_worker,
        use_gpu=FLAGS.use_gpu,
        timeout_s=FLAGS.timeout_s,
        write=lambda line: print(line, flush=True),
    )
    failed = {name: why for name, why in outcomes.items() if why}
    if failed:
        raise errors.Error(f"groups did not finish: {failed}")


def run():
    """The console script's entry point (`tf-codistill-launch-ray`)."""
    app.run(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
