"""Input pipelines. Each workload module exposes a gin-configurable input
function `fn(context: DataContext) -> tf.data.Dataset` of `(features, labels)`
or `(features, labels, sample_weights)` batches."""

from tf_codistill.datasets import sharding
from tf_codistill.datasets import synthetic
from tf_codistill.datasets.sharding import DataContext

__all__ = ["DataContext", "sharding", "synthetic"]
