"""Model builders for tf_codistill's workloads. Every builder returns a new,
built `tf_keras.Model` that outputs logits, and is gin-registered."""

from tf_codistill.models import mlp
from tf_codistill.models.mlp import mlp_classifier

__all__ = ["mlp", "mlp_classifier"]
