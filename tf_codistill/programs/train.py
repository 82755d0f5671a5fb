r"""Trains one codistillation group (or one worker of a multi-worker group).

Flags say which process this is and where it writes; gin says what the
experiment is (model, data, optimiser, codistillation settings):

  tf-codistill-train --gin_file=demo/codistill.gin \
      --root_dir=/tmp/run1 --group_index=0 --num_groups=2

Start one such process per group (and per worker, with TF_CONFIG set, under
--strategy=multi_worker_mirrored); all groups of a run share --root_dir.
tf-codistill-launch-local does that on one machine, tf-codistill-launch-ray on a
Ray cluster. On Slurm or Kubernetes, --cluster=slurm|kubernetes derives
TF_CONFIG from the scheduler's environment (docs/cluster.md).
"""

import sys

from absl import flags

from tf_codistill import app
from tf_codistill import cluster_env
from tf_codistill import distribute
from tf_codistill import errors
from tf_codistill import gin_utils
from tf_codistill import train_lib

flags.DEFINE_multi_string("gin_file", [], "gin files (paths, or names under gin/).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, applied last.")
flags.DEFINE_string("root_dir", None, "Directory of the run, shared by all its groups.")
flags.DEFINE_integer("group_index", 0, "This group's index in [0, num_groups).")
flags.DEFINE_integer("num_groups", 1, "Number of groups in the run.")
flags.DEFINE_enum(
    "strategy",
    "default",
    list(distribute.STRATEGIES),
    "tf.distribute strategy of the group (multi_worker_mirrored reads TF_CONFIG).",
)
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
flags.DEFINE_enum(
    "cluster",
    None,
    list(cluster_env.CLUSTERS),
    "Derive TF_CONFIG from this cluster manager's environment (a Slurm job step, a "
    "Kubernetes Indexed Job pod) before creating the strategy.",
)
flags.DEFINE_bool(
    "allow_no_distillation",
    False,
    "Exit 0 even if this codistilling group never distilled (no peer checkpoint loaded, "
    "all refused, or a zero weight throughout); by default that exits 1 after writing "
    "the results.",
)
flags.mark_flag_as_required("root_dir")

FLAGS = flags.FLAGS


@app.one_line_errors
def main(argv):
    del argv
    if not 0 <= FLAGS.group_index < FLAGS.num_groups:
        raise errors.ConfigError(
            f"--group_index must be in [0, --num_groups={FLAGS.num_groups}), "
            f"got {FLAGS.group_index}"
        )
    if not FLAGS.gin_file:
        raise errors.ConfigError("give at least one --gin_file (e.g. demo/codistill.gin)")
    gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    if FLAGS.cluster:
        cluster_env.configure(FLAGS.cluster, FLAGS.group_index)
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu)
    # Passed only when set, so that a gin binding of it still counts.
    extra = {"allow_no_distillation": True} if FLAGS.allow_no_distillation else {}
    train_lib.train_group(
        FLAGS.root_dir, FLAGS.group_index, FLAGS.num_groups, strategy=strategy, **extra
    )
    if distribute.num_workers(strategy) > 1:
        # train_group returns when every worker of the group is done; the
        # workers leave together, without seconds of teardown each.
        app.exit_now(0)


def run():
    """The console script's entry point (`tf-codistill-train`)."""
    app.run(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
