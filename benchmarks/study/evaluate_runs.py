r"""Test curves of the study's runs: every checkpoint of every group, and the ensemble.

  python benchmarks/study/evaluate_runs.py --binding='...eval_split = "test"' ROOT [ROOT ...]

For each run directory: each group's checkpoints at the steps it was
evaluated on validation, and (for runs of two or more groups) the ensemble at
those steps where all groups published, evaluated on
the split the bindings select, with the run's own model, loss and metrics
(`tf_codistill.evaluation`). Writes `<root>/test/curve_<groups>.json`:
`[[step, loss], ...]`. One process for many runs: TensorFlow starts once.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from study.runner import curve_path

from tf_codistill import layout

flags.DEFINE_multi_string("binding", [], "gin bindings for the evaluation (the test split).")
flags.DEFINE_string("loss_key", "task_loss", "The metric recorded in the curves.")

FLAGS = flags.FLAGS


def _validation_steps(root: str, groups) -> set:
    """The steps the groups were evaluated at on validation (their `metrics.json`).

    The test curve is read at these steps only: a table reads the test loss
    at the step validation chose, and a run that publishes every step (a
    staleness study) would otherwise be evaluated a thousand times.
    """
    steps = set()
    for g in groups:
        with open(layout.metrics_path(layout.group_dir(root, g))) as f:
            steps |= {int(e["step"]) for e in json.load(f)["history"]}
    return steps


def main(argv):
    from tf_codistill import evaluation

    for root in argv[1:]:
        groups = evaluation.find_groups(root)
        todo = [[g] for g in groups] + ([groups] if len(groups) > 1 else [])
        for members in todo:
            path = curve_path(root, members)
            if os.path.exists(path):
                continue
            out_dir = os.path.join(root, "test")
            evaluation.tools.evaluate_run(
                root,
                groups=members,
                mode="all",
                ensemble=len(members) > 1,
                gin_bindings=FLAGS.binding,
                output_dir=out_dir,
                steps=_validation_steps(root, members),
            )
            name = evaluation.ensemble_name(members) if len(members) > 1 else f"group_{members[0]}"
            with open(os.path.join(out_dir, f"eval_{name}.json")) as f:
                evaluations = json.load(f)["evaluations"]
            curve = sorted((int(e["step"]), float(e[FLAGS.loss_key])) for e in evaluations)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(curve, f)
            os.replace(tmp, path)


if __name__ == "__main__":
    app.run(main)
