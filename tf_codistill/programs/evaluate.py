r"""Evaluates a run's published checkpoints on its evaluation data.

The model, data, loss and metrics come from each group's
operative_config.gin (extra --gin_file/--gin_bindings override them); flags
say what to evaluate and where the results go:

  # the latest checkpoint of every group of the run
  tf-codistill-evaluate --root_dir=/tmp/run1
  # every kept checkpoint of group 0
  tf-codistill-evaluate --root_dir=/tmp/run1 --group=0 --mode=all
  # next to a training group: each new checkpoint, until the run's last step
  tf-codistill-evaluate --root_dir=/tmp/run1 --group=0 --mode=sidecar
  # the ensemble of groups 0 and 1 (averaged probabilities)
  tf-codistill-evaluate --root_dir=/tmp/run1 --group=0 --group=1 --ensemble

Results: <output_dir>/eval_<name>.json and <output_dir>/tensorboard/<name>/,
with <output_dir> defaulting to <root_dir>/eval (docs/evaluation.md).
"""

import sys

from absl import flags

from tf_codistill import app
from tf_codistill.evaluation import tools

flags.DEFINE_string(
    "root_dir", None, "Directory of the run (holds group_<i>/).", allow_override=True
)
flags.DEFINE_multi_integer("group", [], "Group(s) to evaluate; default: every group of the run.")
flags.DEFINE_enum(
    "mode",
    "latest",
    list(tools.MODES),
    "latest: the latest checkpoint; all: every kept checkpoint; sidecar: wait for new "
    "checkpoints while the group trains.",
)
flags.DEFINE_bool("ensemble", False, "Evaluate the ensemble of the groups' latest checkpoints.")
flags.DEFINE_enum(
    "ensemble_head",
    "auto",
    ["auto", "softmax", "sigmoid"],
    "How --ensemble averages: softmax probabilities or per-label sigmoid probabilities; "
    "auto decides from the run's distill_loss (or the output shape).",
)
flags.DEFINE_float(
    "timeout_s",
    3600,
    "Sidecar: stop when no new checkpoint came for this many seconds.",
    allow_override=True,
)
flags.DEFINE_float("poll_interval_s", 10, "Sidecar: seconds between looks for a new checkpoint.")
flags.DEFINE_integer(
    "final_step", None, "Sidecar: stop after evaluating this step; default: the run's train_steps."
)
flags.DEFINE_integer("max_attempts", 3, "Sidecar: failed reads of a checkpoint before skipping it.")
flags.DEFINE_multi_string(
    "gin_file", [], "Extra gin files, applied after the run's config.", allow_override=True
)
flags.DEFINE_multi_string(
    "gin_bindings", [], "Extra gin bindings, applied last.", allow_override=True
)
flags.DEFINE_string("output_dir", None, "Where results go; default: <root_dir>/eval.")
flags.mark_flag_as_required("root_dir")

# Flags that other binaries define too (root_dir, gin_file, ...) allow an
# override: a program loads one binary, but tests load several into one
# process, where absl would otherwise refuse the second definition.
FLAGS = flags.FLAGS


@app.one_line_errors
def main(argv):
    del argv
    tools.evaluate_run(
        FLAGS.root_dir,
        FLAGS.group,
        mode=FLAGS.mode,
        ensemble=FLAGS.ensemble,
        ensemble_head=FLAGS.ensemble_head,
        gin_files=FLAGS.gin_file,
        gin_bindings=FLAGS.gin_bindings,
        output_dir=FLAGS.output_dir,
        final_step=FLAGS.final_step,
        timeout_s=FLAGS.timeout_s,
        poll_interval_s=FLAGS.poll_interval_s,
        max_attempts=FLAGS.max_attempts,
    )


def run():
    """The console script's entry point (`tf-codistill-evaluate`)."""
    app.run(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
