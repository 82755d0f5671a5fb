"""evaluation.run_config: a run's config read back, with an explicit parameter list."""

import inspect

import gin
import pytest
import tf_keras as keras

from tf_codistill import errors
from tf_codistill import losses
from tf_codistill import train_lib
from tf_codistill.evaluation import run_config


def test_the_parameters_read_have_train_groups_defaults():
    # RunConfig does not inspect train_group (a sidecar needs no signature);
    # this keeps its list honest.
    parameters = inspect.signature(train_lib.train_group.__wrapped__).parameters
    for name, default in run_config.TRAIN_GROUP_DEFAULTS.items():
        assert parameters[name].default == default, name


def test_a_config_gives_the_model_data_loss_and_settings():
    config = run_config.RunConfig(
        ["demo/tiny.gin"],
        [f"{run_config.TRAIN_GROUP}.eval_steps = 3", f"{run_config.TRAIN_GROUP}.data_seed = 5"],
    )
    assert (config.eval_batch_size, config.eval_steps, config.train_steps) == (64, 3, 40)
    assert (config.data_split, config.data_seed) == ("disjoint", 5)
    assert config.distill_loss == losses.SoftmaxCrossEntropy()
    model = config.build_model()
    assert model.get_layer("hidden_0").units == 16  # tiny.gin's, not the default 256
    loss, metrics = config.loss_and_metrics()
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy) and metrics
    (x, y) = next(iter(config.dataset(group_index=1, num_groups=2)))
    assert x.shape == (64, 32) and y.shape == (64,)
    # The process's gin config is left cleared.
    with pytest.raises(ValueError):
        gin.query_parameter(f"{run_config.TRAIN_GROUP}.train_steps")


def test_what_is_missing_is_named():
    with pytest.raises(errors.GinConfigError, match="neither .*eval_batch_size nor"):
        run_config.RunConfig([], [f"{run_config.TRAIN_GROUP}.train_steps = 4"])
    config = run_config.RunConfig([], [f"{run_config.TRAIN_GROUP}.global_batch_size = 4"])
    with pytest.raises(errors.EvaluationError, match="binds no .*model_fn"):
        config.build_model()
    with pytest.raises(errors.EvaluationError, match="binds no .*eval_input_fn or input_fn"):
        config.dataset()
    with pytest.raises(errors.EvaluationError, match="binds no .*loss"):
        config.loss_and_metrics()
