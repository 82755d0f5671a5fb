r"""Prediction churn between two or more trained models.

Reports, for every pair of models and as mean ± half-range over the pairs,
the paper's churn (mean absolute difference of predicted probabilities; the
total-variation distance for softmax heads) and later work's churn (fraction
of examples whose top-1 prediction differs). Streams over the data.

  # group 0 of five retrains of the same run
  tf-codistill-churn --model=/tmp/r1:0 --model=/tmp/r2:0 --model=/tmp/r3:0
  # retrains of a 2-way ensemble (averaged probabilities of groups 0 and 1)
  tf-codistill-churn --model=/tmp/r1:0+1 --model=/tmp/r2:0+1
  # exported students, on the data of a gin config
  tf-codistill-churn --model=a.keras --model=b.keras --gin_file=demo/tiny.gin

  # the checkpoints early stopping chose (kept ones: checkpoints_to_keep)
  tf-codistill-churn --model=/tmp/r1:0@400 --model=/tmp/r2:0@380

Models: ROOT_DIR:GROUP (the group's latest checkpoint), ROOT_DIR:G1+G2 (an
ensemble), either with @STEP (that step's checkpoint), ROOT_DIR:GROUP@S1,S2
(one group's checkpoints at those steps, averaged), or PATH.keras. Data:
the first run's evaluation data (its operative_config.gin), or the
--gin_file config's when only .keras files are given. docs/evaluation.md defines both numbers.
"""

import sys

from absl import flags

from tf_codistill import app
from tf_codistill.evaluation import tools

flags.DEFINE_multi_string(
    "model",
    [],
    "ROOT_DIR:GROUP, ROOT_DIR:G1+G2 (ensemble), either with @STEP (that step's checkpoint), "
    "ROOT_DIR:GROUP@S1,S2 (one group's checkpoints averaged), or PATH.keras; two or more.",
)
flags.DEFINE_enum(
    "head",
    "auto",
    ["auto", "softmax", "sigmoid"],
    "Softmax or per-label sigmoid probabilities; auto: from the run's distill_loss, else "
    "from the output shape (one output: sigmoid).",
)
flags.DEFINE_multi_string(
    "gin_file",
    [],
    "Extra gin files for the runs' configs, or the data config for .keras models.",
    allow_override=True,
)
flags.DEFINE_multi_string(
    "gin_bindings", [], "Extra gin bindings, applied last.", allow_override=True
)
flags.DEFINE_string("output_json", None, "Also write the report here as JSON.")

# Flags that other binaries define too (root_dir, gin_file, ...) allow an
# override: a program loads one binary, but tests load several into one
# process, where absl would otherwise refuse the second definition.
FLAGS = flags.FLAGS


@app.one_line_errors
def main(argv):
    del argv
    report = tools.churn(
        FLAGS.model, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.head, FLAGS.output_json
    )
    print(report.format())


def run():
    """The console script's entry point (`tf-codistill-churn`)."""
    app.run(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
