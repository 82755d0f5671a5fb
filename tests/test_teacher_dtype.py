"""teacher_dtype: teachers that run in bfloat16/float16 while the student trains in float32."""

import logging

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import logging as absl_logging

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill import teachers
from tf_codistill import testing
from tf_codistill import train_lib


def _publish(model, exchange_dir, group, step):
    return exchange.Publisher(model, exchange.group_dir(exchange_dir, group)).publish(step)


def _wide_mlp(seed):
    return testing.mlp(input_dim=8, num_outputs=4, hidden=(64, 64), seed=seed)


def _model(exchange_dir, teacher_dtype, **kwargs):
    kwargs.setdefault("teacher_builder", lambda: _wide_mlp(seed=5))
    from tf_codistill import codistill_model

    model = codistill_model.CodistillModel(
        _wide_mlp(seed=0),
        group_index=0,
        num_groups=2,
        exchange_dir=exchange_dir,
        burn_in_steps=0,
        teacher_dtype=teacher_dtype,
        **kwargs,
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _targets(model, x):
    y_pred = model.student(x)
    pool = model.teacher_pool
    weights = pool.peer_weights(tf.constant(0, tf.int64))
    targets, _, usable = pool.targets(x, y_pred, weights, tf.constant(True), model.distill_loss)
    assert list(usable.numpy()) == [1.0]
    return targets.numpy()


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 3e-2), ("float16", 3e-3)])
def test_half_precision_teacher_matches_float32_teacher(tmp_path, dtype, tolerance):
    peer = _wide_mlp(seed=1)
    path = _publish(peer, str(tmp_path), group=1, step=7)
    x, _ = testing.toy_classification(64)
    reference = _model(str(tmp_path), None)
    half = _model(str(tmp_path), dtype)
    for model in (reference, half):
        assert [o.status for o in model.reload_teachers()] == ["loaded"]
    teacher = half.teachers[0]
    # Variables and compute in the half type; the checkpoint stays float32.
    assert {w.dtype.name for w in teacher.weights} == {dtype}
    assert teacher(x).dtype == dtype
    reader = tf.train.load_checkpoint(path)
    assert {
        reader.get_variable_to_dtype_map()[k].name
        for k in reader.get_variable_to_shape_map()
        if k.startswith("model/") and "VARIABLE_VALUE" in k
    } == {"float32"}
    for half_w, full_w in zip(teacher.weights, peer.weights, strict=True):
        np.testing.assert_array_equal(half_w.numpy(), tf.cast(full_w, dtype).numpy())
    want, got = _targets(reference, x), _targets(half, x)
    assert got.dtype == np.float32
    difference = np.max(np.abs(got - want))
    # Really computed in lower precision (not bit-identical), yet within its tolerance.
    assert 0 < difference < tolerance, difference
    # Targets are log-probabilities, normalised in float32.
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)


def test_training_with_half_teacher_under_mirrored_strategy(tmp_path):
    strategy = testing.mirrored_strategy()
    peer = _wide_mlp(seed=1)
    _publish(peer, str(tmp_path), group=1, step=0)
    x, y = testing.toy_classification(64)
    histories = {}
    for dtype in (None, "bfloat16"):
        with strategy.scope():
            model = _model(str(tmp_path), dtype)
        histories[dtype] = model.fit(
            x, y, batch_size=32, epochs=2, shuffle=False, verbose=0
        ).history
        assert list(model.teacher_steps) == [0]
        teacher = model.teachers[0]
        assert isinstance(teacher.weights[0], tf.distribute.DistributedValues)
        assert teacher.weights[0].dtype == (dtype or "float32")
    full, half = histories[None], histories["bfloat16"]
    assert np.all(np.isfinite(half["loss"]))
    assert min(half["distill_loss"]) > 0
    # Same data, same student start: psi against a bf16 teacher is psi against
    # the float32 one, up to bf16 rounding.
    np.testing.assert_allclose(half["distill_loss"], full["distill_loss"], rtol=2e-2)
    np.testing.assert_allclose(half["task_loss"], full["task_loss"], rtol=2e-2)


def test_clone_of_the_student_runs_in_the_teacher_dtype(tmp_path):
    _publish(testing.mlp(seed=1), str(tmp_path), group=1, step=3)
    model = testing.codistill_model(str(tmp_path), teacher_dtype="bfloat16")
    model.reload_teachers()
    assert {w.dtype.name for w in model.teachers[0].weights} == {"bfloat16"}
    # Neither the student nor Keras' global policy is changed.
    assert {w.dtype.name for w in model.student.weights} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"
    x, y = testing.toy_classification(32)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["distill_loss"][0] > 0


@pytest.mark.parametrize("value", ["float32", "int8", "mixed_bfloat16", 16])
def test_other_values_are_refused(tmp_path, value):
    with pytest.raises(errors.ConfigError, match="teacher_dtype must be None"):
        _model(str(tmp_path), value)


def test_builder_fixing_its_own_dtype_is_refused(tmp_path):
    def builder():
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(4, dtype="float32", name="fixed")(inputs))

    with pytest.raises(errors.ConfigError, match="fixed .*do not compute in it"):
        _model(str(tmp_path), "bfloat16", teacher_builder=builder)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_check_teacher_dtype_accepts_tf_dtypes():
    assert teachers.check_teacher_dtype(tf.bfloat16) == "bfloat16"
    assert teachers.check_teacher_dtype(None) is None


def test_train_group_takes_it_from_gin(tmp_path, caplog, request):
    caplog.set_level(logging.INFO)
    # absl's logger has its own level (--verbosity), which an earlier test may
    # have raised (seen in the full suite): INFO for this test.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    request.addfinalizer(lambda: absl_logging.set_verbosity(verbosity))
    gin_utils.parse(
        ["demo/tiny.gin"],
        [
            "tf_codistill.train_lib.train_group.wait_for_peers_s = 0",
            "tf_codistill.train_lib.train_group.teacher_dtype = 'bfloat16'",
            "tf_codistill.train_lib.train_group.train_steps = 20",
        ],
    )
    _publish(testing.demo_tiny_student(), str(tmp_path), group=1, step=0)
    results = train_lib.train_group(str(tmp_path), 0, 2)
    assert np.isfinite(results["final"]["val_loss"])
    assert results["teacher_reloads"]["1"]["loaded"] >= 1
    assert "teacher_dtype bfloat16" in caplog.text
    assert "teacher_dtype = 'bfloat16'" in gin.operative_config_str()


def test_lstm_clone_in_bfloat16(tmp_path):
    # An LSTM's Orthogonal initializer has no bfloat16 kernel; a clone needs none.
    def lstm(seed):
        inputs = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(11, 4)(inputs)
        h = keras.layers.LSTM(6, return_sequences=True)(h)
        return keras.Model(inputs, keras.layers.Dense(11)(h))

    keras.utils.set_random_seed(1)
    peer = lstm(1)
    _publish(peer, str(tmp_path), group=1, step=2)
    from tf_codistill import codistill_model

    model = codistill_model.CodistillModel(
        lstm(0), group_index=0, num_groups=2, exchange_dir=str(tmp_path), teacher_dtype="bfloat16"
    )
    assert model.reload_teachers()[0].status == "loaded"
    x = np.random.default_rng(0).integers(0, 11, size=(3, 5))
    got = model.teachers[0](x).numpy().astype(np.float32)
    np.testing.assert_allclose(got, peer(x).numpy(), atol=3e-2)
