r"""Trains one codistillation group (or one worker of a multi-worker group).

Flags say which process this is and where it writes; gin says what the
experiment is (model, data, optimiser, codistillation settings):

  python binaries/train.py --gin_file=demo/codistill.gin \
      --root_dir=/tmp/run1 --group_index=0 --num_groups=2

Start one such process per group (and per worker, with TF_CONFIG set, under
--strategy=multi_worker_mirrored); all groups of a run share --root_dir.
binaries/launch_local.py does that on one machine.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

if __package__ in (None, ""):  # Run as a script from a source checkout.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_multi_string("gin_file", [], "gin files (paths, or names under gin/).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, applied last.")
flags.DEFINE_string("root_dir", None, "Directory of the run, shared by all its groups.")
flags.DEFINE_integer("group_index", 0, "This group's index in [0, num_groups).")
flags.DEFINE_integer("num_groups", 1, "Number of groups in the run.")
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker_mirrored", "tpu"],
    "tf.distribute strategy of the group (multi_worker_mirrored reads TF_CONFIG).",
)
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
flags.mark_flag_as_required("root_dir")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from tf_codistill import distribute
    from tf_codistill import errors
    from tf_codistill import gin_utils
    from tf_codistill import train_lib

    # TensorFlow's own INFO lines (checkpoint sharding...) drown the run's.
    tf.get_logger().setLevel("WARNING")

    try:
        if not 0 <= FLAGS.group_index < FLAGS.num_groups:
            raise errors.ConfigError(
                f"--group_index must be in [0, --num_groups={FLAGS.num_groups}), "
                f"got {FLAGS.group_index}"
            )
        if not FLAGS.gin_file:
            raise errors.ConfigError("give at least one --gin_file (e.g. demo/codistill.gin)")
        gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings)
        strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu)
        train_lib.train_group(
            FLAGS.root_dir, FLAGS.group_index, FLAGS.num_groups, strategy=strategy
        )
    except errors.Error as e:
        # A configuration mistake or a full or unwritable exchange dir, which
        # we detected: one clear line, not a stack trace.
        message = errors.one_line(e)
        logging.error("%s: %s", type(e).__name__, message)
        sys.exit(f"train.py: {message}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
