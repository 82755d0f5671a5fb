"""A group stopped and restarted by train_lib continues its model, optimizer and data."""

import json
from unittest import mock

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.distribute import worker_training_state

from tf_codistill import callbacks
from tf_codistill import codistill_model
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill import train_lib
from tf_codistill.datasets import sharding
from tf_codistill.models import mlp

BINDINGS = [
    "tf_codistill.train_lib.train_group.codistill = False",
    "tf_codistill.train_lib.train_group.wait_for_peers_s = 0",
]


def _train(root, steps):
    gin.clear_config()
    gin_utils.parse(
        ["demo/tiny.gin"],
        BINDINGS + [f"tf_codistill.train_lib.train_group.train_steps = {steps}"],
        finalize=False,
    )
    return train_lib.train_group(str(root), group_index=0, num_groups=2)


def _student(root, step):
    model = mlp.mlp_classifier(hidden_units=(16,))
    tf.train.Checkpoint(model=model).restore(f"{root}/group_0/ckpt-{step}").expect_partial()
    return model.get_weights()


def test_restart_continues_model_optimizer_and_data(tmp_path):
    _train(tmp_path / "straight", 40)
    _train(tmp_path / "restarted", 20)  # Stops after 20 steps (a save point) ...
    results = _train(tmp_path / "restarted", 40)  # ... and is started again for 40.
    assert results["steps"] == 40
    for a, b in zip(
        _student(tmp_path / "straight", 40), _student(tmp_path / "restarted", 40), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The evaluations of the first part are kept.
    with open(tmp_path / "restarted" / "group_0" / "metrics.json") as f:
        assert [e["step"] for e in json.load(f)["history"]] == [20, 40]


def test_skip_consumed_resumes_the_example_stream():
    def stream(initial_step, take):
        context = sharding.DataContext(batch_size=4, shuffle_buffer=50, initial_step=initial_step)
        dataset = sharding.batched(tf.data.Dataset.range(50), context)
        return np.concatenate([b.numpy() for b in dataset.take(take)])

    np.testing.assert_array_equal(stream(7, 10), stream(0, 17)[7 * 4 :])
    # One pipeline feeding two replicas (MirroredStrategy): a step took two batches.
    fed = sharding.DataContext(batch_size=4, initial_step=7, replicas_per_pipeline=2)
    assert fed.skip_consumed(tf.data.Dataset.range(100)).cardinality() == 100 - 7 * 4 * 2
    evaluation = sharding.DataContext(training=False, batch_size=4, initial_step=7)
    assert evaluation.skip_consumed(tf.data.Dataset.range(3)).cardinality() == 3


def test_backup_interval_is_in_steps_with_steps_per_execution(tmp_path):
    # Keras' BackupAndRestore counts executions: with 5 steps per execution
    # and save_freq=10 it would save every 50 steps, none in 40.
    gin.clear_config()
    gin_utils.parse(
        ["demo/tiny.gin"],
        BINDINGS
        + [
            "tf_codistill.train_lib.train_group.steps_per_execution = 5",
            "tf_codistill.train_lib.train_group.backup_every_n_steps = 10",
        ],
        finalize=False,
    )
    train_lib.train_group(str(tmp_path), group_index=0, num_groups=2)
    backup = tf.train.latest_checkpoint(str(tmp_path / "group_0" / "backup" / "chief"))
    # Saved at steps 10, 20, 30 and 40: the fourth save, holding step 40.
    assert backup is not None and backup.endswith("ckpt-4"), backup
    assert train_lib.resumed_step(str(tmp_path / "group_0" / "backup")) == 40


def test_failed_backup_stops_fit_instead_of_ending_the_epoch(tmp_path):
    # EFBIG (a file size limit) reaches Python as OutOfRangeError; raised by a
    # callback inside fit, Keras takes it for the end of the data.
    x = np.zeros((64, 4), np.float32)
    y = np.zeros((64, 1), np.float32)

    def fit(backup):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(x, y, batch_size=4, epochs=1, callbacks=[backup], verbose=0)
        return int(model.optimizer.iterations.numpy())

    efbig = tf.errors.OutOfRangeError(None, None, "backup/chief/ckpt-1_temp/x; File too large")
    with mock.patch.object(worker_training_state.WorkerTrainingState, "back_up", side_effect=efbig):
        # Keras' own callback: 4 of the 16 steps, then silence.
        plain = keras.callbacks.BackupAndRestore(str(tmp_path / "plain"), save_freq=4)
        assert fit(plain) == 4
        with pytest.raises(
            codistill_model.ExchangeWriteError,
            match=r"cannot write the resume state into .*wrapped: .*File too large",
        ):
            fit(train_lib._BackupAndRestore(str(tmp_path / "wrapped"), save_freq=4))


class _Preempted(Exception):
    pass


def test_restart_mid_epoch_with_steps_per_execution_trains_the_steps_asked(tmp_path):
    bindings = BINDINGS + [
        "tf_codistill.train_lib.train_group.steps_per_execution = 5",
        "tf_codistill.train_lib.train_group.backup_every_n_steps = 10",
        "tf_codistill.train_lib.train_group.steps_per_loop = 40",
        "tf_codistill.train_lib.train_group.log_every_n_steps = 5",
    ]
    on_steps = callbacks.ProgressLogger.on_steps

    def stop_after_step_25(logger, previous_step, logs):
        on_steps(logger, previous_step, logs)
        if logger.step >= 25:
            raise _Preempted

    gin.clear_config()
    gin_utils.parse(["demo/tiny.gin"], bindings, finalize=False)
    with mock.patch.object(callbacks.ProgressLogger, "on_steps", stop_after_step_25):
        with pytest.raises(_Preempted):
            train_lib.train_group(str(tmp_path), group_index=0, num_groups=2)
    assert train_lib.resumed_step(str(tmp_path / "group_0" / "backup")) == 20
    # Started again: from the backup at step 20, the epoch's batches 20-39.
    # Keras alone restarted at batch 16 (after the execution's first batch,
    # 15) and ended at step 44.
    results = train_lib.train_group(str(tmp_path), group_index=0, num_groups=2)
    assert results["steps"] == 40
    assert [e["step"] for e in results["history"]] == [40]


class _PublishOtherArchitectureAt(keras.callbacks.Callback):
    """Plays a misconfigured peer, group 1, that first publishes at step 5."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == 5:
            other = mlp.mlp_classifier(hidden_units=(12,))  # tiny.gin's has 16.
            exchange.Publisher(other, exchange.group_dir(self.root, 1)).publish(5)


@pytest.mark.parametrize("allow", [False, True])
def test_a_peer_of_another_architecture_arriving_late_is_no_silent_success(tmp_path, allow):
    # Not seen at the start (nothing published yet), so not PeerMismatchError:
    # refused at every reload after, the group trains alone. It must say so
    # at the end, in metrics.json, and fail unless allowed.
    gin.clear_config()
    gin_utils.parse(["demo/tiny.gin"], ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"])
    root = str(tmp_path)
    factories = [lambda: _PublishOtherArchitectureAt(root)]
    if allow:
        results = train_lib.train_group(root, 0, 2, callbacks=factories, allow_no_distillation=True)
    else:
        with pytest.raises(
            errors.NoDistillationError,
            match=r"group 0 never distilled: .*peer 1's checkpoints were all refused "
            r"\(\d+ failed reads; last: ckpt-5 does not match this model's variables.*"
            r"pass --allow_no_distillation",
        ):
            train_lib.train_group(root, 0, 2, callbacks=factories)
        results = json.loads((tmp_path / "group_0" / "metrics.json").read_text())
    assert results["steps"] == 40  # Trained and written all the same.
    report = results["distillation"]
    assert report["happened"] is False and report["never_loaded"] == [1]
    assert report["peers"]["1"]["loaded"] == 0 and report["peers"]["1"]["failed"] >= 1
    assert "does not match this model's variables" in report["peers"]["1"]["last_failure"]


def test_burn_in_over_the_whole_run_is_named(tmp_path):
    gin.clear_config()
    gin_utils.parse(
        ["demo/tiny.gin"],
        [
            "tf_codistill.train_lib.train_group.wait_for_peers_s = 0",
            "tf_codistill.train_lib.train_group.burn_in_steps = 100",
        ],
    )
    peer = mlp.mlp_classifier(hidden_units=(16,))
    exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1)).publish(0)
    with pytest.raises(errors.NoDistillationError, match=r"is 0 up to the last step, 39"):
        train_lib.train_group(str(tmp_path), 0, 2)


def test_a_group_that_distilled_reports_it(tmp_path):
    gin.clear_config()
    gin_utils.parse(["demo/tiny.gin"], ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"])
    peer = mlp.mlp_classifier(hidden_units=(16,))
    exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1)).publish(0)
    results = train_lib.train_group(str(tmp_path), 0, 2)
    report = results["distillation"]
    assert report["happened"] is True and report["why_not"] == ""
    assert report["peers"]["1"]["loaded"] >= 1
