"""Evaluate a run's published checkpoints: one group, an ensemble of groups, churn.

One module per job:

* `run_config`: a run's configuration, read back from its operative config;
* `evaluator`: a group's checkpoints (latest, all, sidecar) and their results;
* `ensembles`: ensembles of groups, and models named by a spec;
* `tools`: what `binaries/evaluate.py` and `binaries/churn.py` do.

The names below are importable from `tf_codistill.evaluation` itself.
docs/evaluation.md describes the outputs.
"""

from tf_codistill import errors
from tf_codistill.evaluation import ensembles
from tf_codistill.evaluation import evaluator
from tf_codistill.evaluation import run_config
from tf_codistill.evaluation import tools
from tf_codistill.evaluation.ensembles import EnsembleModel
from tf_codistill.evaluation.ensembles import LoadedModel
from tf_codistill.evaluation.ensembles import ensemble_logits
from tf_codistill.evaluation.ensembles import ensemble_name
from tf_codistill.evaluation.ensembles import evaluate_ensemble
from tf_codistill.evaluation.ensembles import load_model
from tf_codistill.evaluation.evaluator import TASK_LOSS
from tf_codistill.evaluation.evaluator import GroupEvaluator
from tf_codistill.evaluation.evaluator import GroupRun
from tf_codistill.evaluation.evaluator import Results
from tf_codistill.evaluation.evaluator import default_output_dir
from tf_codistill.evaluation.evaluator import find_groups
from tf_codistill.evaluation.evaluator import latest_restored
from tf_codistill.evaluation.evaluator import list_checkpoints
from tf_codistill.evaluation.evaluator import load_group
from tf_codistill.evaluation.evaluator import restore
from tf_codistill.evaluation.run_config import TRAIN_GROUP
from tf_codistill.evaluation.run_config import RunConfig

# The errors this package raises (defined in tf_codistill.errors).
EvaluationError = errors.EvaluationError
CheckpointError = errors.CheckpointError

__all__ = [
    "CheckpointError",
    "EnsembleModel",
    "EvaluationError",
    "GroupEvaluator",
    "GroupRun",
    "LoadedModel",
    "Results",
    "RunConfig",
    "TASK_LOSS",
    "TRAIN_GROUP",
    "default_output_dir",
    "ensemble_logits",
    "ensemble_name",
    "ensembles",
    "evaluate_ensemble",
    "evaluator",
    "find_groups",
    "latest_restored",
    "list_checkpoints",
    "load_group",
    "load_model",
    "restore",
    "run_config",
    "tools",
]
