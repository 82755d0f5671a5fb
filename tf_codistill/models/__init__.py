"""Model builders for tf_codistill's workloads. Every builder returns a new,
built `tf_keras.Model` that outputs logits, and is gin-registered."""

from tf_codistill.models import criteo
from tf_codistill.models import mlp
from tf_codistill.models import resnet
from tf_codistill.models.criteo import criteo_dnn
from tf_codistill.models.mlp import mlp_classifier
from tf_codistill.models.resnet import resnet50
from tf_codistill.models.resnet import small_resnet

__all__ = [
    "criteo",
    "criteo_dnn",
    "mlp",
    "mlp_classifier",
    "resnet",
    "resnet50",
    "small_resnet",
]
