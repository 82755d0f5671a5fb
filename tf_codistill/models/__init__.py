"""Model builders for tf_codistill's workloads. Every builder returns a new,
built `tf_keras.Model` that outputs logits, and is gin-registered."""

from tf_codistill.models import criteo
from tf_codistill.models import mlp
from tf_codistill.models.criteo import criteo_dnn
from tf_codistill.models.mlp import mlp_classifier

__all__ = ["criteo", "criteo_dnn", "mlp", "mlp_classifier"]
