"""gin_utils.query: bound values with @references resolved as gin resolves them."""

import gin
import pytest
import tf_keras as keras

from tf_codistill import configurables  # noqa: F401  Registers what CONFIG names.
from tf_codistill import gin_utils
from tf_codistill.models import mlp

ROOT = "tf_codistill.train_lib.train_group"
CONFIG = """
tf_codistill.train_lib.train_group.model_fn = @tf_codistill.models.mlp_classifier
tf_codistill.models.mlp_classifier.hidden_units = (3,)
tf_codistill.train_lib.train_group.loss = @keras.losses.SparseCategoricalCrossentropy()
keras.losses.SparseCategoricalCrossentropy.from_logits = True
tf_codistill.train_lib.train_group.metrics = ["accuracy", @keras.metrics.AUC]
tf_codistill.train_lib.train_group.train_steps = 7
"""


@pytest.fixture(autouse=True)
def config(clean_gin):
    gin.parse_config(CONFIG)


def test_plain_value():
    assert gin_utils.query(f"{ROOT}.train_steps") == 7


def test_reference_is_the_configurable_reading_its_bindings_when_called():
    model_fn = gin_utils.query(f"{ROOT}.model_fn")
    assert model_fn.__wrapped__ is mlp.mlp_classifier
    model = model_fn()
    assert model.get_layer("hidden_0").units == 3  # The binding, not the default 256.


def test_evaluated_reference_is_a_new_object_per_query():
    first = gin_utils.query(f"{ROOT}.loss")
    second = gin_utils.query(f"{ROOT}.loss")
    assert isinstance(first, keras.losses.SparseCategoricalCrossentropy)
    assert first.get_config()["from_logits"] is True
    assert first is not second


def test_references_inside_a_list_are_resolved():
    metrics = gin_utils.query(f"{ROOT}.metrics")
    assert metrics[0] == "accuracy"
    assert isinstance(metrics[1](), keras.metrics.AUC)


def test_unbound_parameter_gives_the_default_or_a_clear_error():
    assert gin_utils.query(f"{ROOT}.eval_steps", default=None) is None
    with pytest.raises(gin_utils.GinConfigError, match=rf"{ROOT}.eval_steps is not set"):
        gin_utils.query(f"{ROOT}.eval_steps")
