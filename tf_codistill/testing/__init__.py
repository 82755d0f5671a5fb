"""Fixtures for tf_codistill's tests and for users testing their own setups."""

from tf_codistill.testing.fixtures import SubclassedMLP
from tf_codistill.testing.fixtures import codistill_model
from tf_codistill.testing.fixtures import demo_tiny_eval_data
from tf_codistill.testing.fixtures import demo_tiny_student
from tf_codistill.testing.fixtures import event_scalars
from tf_codistill.testing.fixtures import load_binary
from tf_codistill.testing.fixtures import mirrored_strategy
from tf_codistill.testing.fixtures import mlp
from tf_codistill.testing.fixtures import repo_root
from tf_codistill.testing.fixtures import restore_latest
from tf_codistill.testing.fixtures import run_train_main
from tf_codistill.testing.fixtures import toy_classification
from tf_codistill.testing.fixtures import use_virtual_cpus

__all__ = [
    "SubclassedMLP",
    "codistill_model",
    "demo_tiny_eval_data",
    "demo_tiny_student",
    "event_scalars",
    "load_binary",
    "mirrored_strategy",
    "mlp",
    "repo_root",
    "restore_latest",
    "run_train_main",
    "toy_classification",
    "use_virtual_cpus",
]
