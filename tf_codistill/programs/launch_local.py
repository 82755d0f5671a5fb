r"""Runs a whole codistillation job on this machine and summarises it.

Starts --num_groups groups (each of --workers_per_group worker processes,
multi-worker groups wired together through TF_CONFIG on free 127.0.0.1 ports)
that share one exchange directory, plus, with --baseline, the same model
trained on group 0's data without distillation. Streams every process's output
with a prefix, waits (at most --timeout_s), and prints each group's final
validation metrics next to the baseline's.

  tf-codistill-launch-local                      # the bundled demo
  tf-codistill-launch-local --gin_file=demo/codistill.gin --num_groups=3
"""

import os
import sys
import tempfile

from absl import flags

from tf_codistill import app
from tf_codistill import errors
from tf_codistill import local_cluster

flags.DEFINE_multi_string("gin_file", ["demo/codistill.gin"], "gin files for every group.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every group.")
flags.DEFINE_string("root_dir", None, "Run directory (default: a new temporary directory).")
flags.DEFINE_integer("num_groups", 2, "Codistilling groups.", lower_bound=1)
flags.DEFINE_integer("workers_per_group", 1, "Worker processes per group.", lower_bound=1)
flags.DEFINE_bool("baseline", True, "Also train group 0's model on its data without distillation.")
flags.DEFINE_float("timeout_s", 1800, "Stop everything after this many seconds.")
flags.DEFINE_float("grace_s", 10, "Seconds between SIGTERM and SIGKILL when stopping.")
flags.DEFINE_bool(
    "show_tf_startup",
    False,
    "Show TensorFlow's start-up lines (oneDNN, CUDA probing), left out by default.",
)
flags.DEFINE_bool(
    "allow_no_distillation",
    False,
    "Let groups that never distilled exit 0 (train.py --allow_no_distillation); by default "
    "such a group fails, and so does the launcher.",
)

FLAGS = flags.FLAGS


@app.one_line_errors
def main(argv):
    del argv
    codes = local_cluster.launch(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
        FLAGS.root_dir or tempfile.mkdtemp(prefix="tf_codistill_run_"),
        FLAGS.num_groups,
        FLAGS.workers_per_group,
        FLAGS.gin_file,
        FLAGS.gin_bindings
        + (
            ["tf_codistill.train_lib.train_group.allow_no_distillation = True"]
            if FLAGS.allow_no_distillation
            else []
        ),
        baseline=FLAGS.baseline,
        timeout_s=FLAGS.timeout_s,
        grace_s=FLAGS.grace_s,
        show_tf_startup=FLAGS.show_tf_startup,
    )
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        raise errors.Error(f"processes did not finish cleanly: {failed}")


def run():
    """The console script's entry point (`tf-codistill-launch-local`)."""
    app.run(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
