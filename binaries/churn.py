r"""Prediction churn between two or more trained models.

Reports, for every pair of models and as mean ± half-range over the pairs,
the paper's churn (mean absolute difference of predicted probabilities; the
total-variation distance for softmax heads) and later work's churn (fraction
of examples whose top-1 prediction differs). Streams over the data.

  # group 0 of five retrains of the same run
  python binaries/churn.py --model=/tmp/r1:0 --model=/tmp/r2:0 --model=/tmp/r3:0
  # retrains of a 2-way ensemble (averaged probabilities of groups 0 and 1)
  python binaries/churn.py --model=/tmp/r1:0+1 --model=/tmp/r2:0+1
  # exported students, on the data of a gin config
  python binaries/churn.py --model=a.keras --model=b.keras --gin_file=demo/tiny.gin

Models: ROOT_DIR:GROUP (the group's latest checkpoint), ROOT_DIR:G1+G2 (an
ensemble) or PATH.keras. Data: the first run's evaluation data (its
operative_config.gin), or the --gin_file config's when only .keras files are
given. docs/evaluation.md defines both numbers.
"""

import json
import os

from absl import flags
from absl import logging

from tf_codistill import app
from tf_codistill import errors

flags.DEFINE_multi_string(
    "model", [], "ROOT_DIR:GROUP, ROOT_DIR:G1+G2 (ensemble) or PATH.keras; two or more."
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
    import tensorflow as tf

    from tf_codistill import evaluation
    from tf_codistill import metrics

    if len(FLAGS.model) < 2:
        raise errors.ConfigError(f"give at least two --model, got {len(FLAGS.model)}")
    loaded = [
        evaluation.load_model(spec, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.head)
        for spec in FLAGS.model
    ]
    first_run = next((m.run for m in loaded if m.run is not None), None)
    if first_run is not None:
        config = first_run.config
        dataset = config.dataset(first_run.group_index, first_run.num_groups)
        data_source = first_run.config.gin_files[0]
    elif FLAGS.gin_file:
        config = evaluation.RunConfig(FLAGS.gin_file, FLAGS.gin_bindings)
        dataset = config.dataset()
        data_source = FLAGS.gin_file[0]
    else:
        raise errors.ConfigError(
            "only .keras models were given: name the data with --gin_file (a config that "
            "sets tf_codistill.train_lib.train_group's input_fn, e.g. demo/tiny.gin)"
        )
    head = FLAGS.head
    if head == "auto" and loaded[0].head:  # an ensemble: its members' head
        head = loaded[0].head
    if head == "auto":
        head = metrics.infer_head(
            config.distill_loss if first_run is not None else None,
            loaded[0].model.output_shape,
        )
    logging.info(
        "Churn of %d models (%s head) on the evaluation data of %s",
        len(loaded),
        head,
        data_source,
    )
    report = metrics.prediction_churn(
        [m.model for m in loaded],
        dataset,
        head,
        names=[m.name for m in loaded],
        steps=config.eval_steps,
    )
    print(report.format())
    if FLAGS.output_json:
        result = report.to_dict()
        result["data"] = data_source
        result["steps"] = {m.name: list(m.steps) for m in loaded}
        if os.path.dirname(FLAGS.output_json):
            tf.io.gfile.makedirs(os.path.dirname(FLAGS.output_json))
        with tf.io.gfile.GFile(FLAGS.output_json, "w") as f:
            json.dump(result, f, indent=2)
        logging.info("Report written to %s", FLAGS.output_json)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
