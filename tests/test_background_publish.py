"""Background publishing: snapshot between steps, write on a helper thread, same files."""

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.testing import drills


def _background(model, directory, max_to_keep=5):
    snapshot = exchange.outside_strategy(lambda: testing.mlp(seed=99))
    return exchange.BackgroundPublisher(model, snapshot, directory, max_to_keep=max_to_keep)


def _values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def test_same_files_as_a_blocking_publisher_of_the_snapshot_time(tmp_path):
    student = testing.mlp(seed=1)
    blocking = exchange.Publisher(student, str(tmp_path / "blocking")).publish(10)
    background = _background(student, str(tmp_path / "background"))
    path = background.publish(10)
    # Changed right after the snapshot: the checkpoint holds the values at publish time.
    for w in student.weights:
        w.assign(w + 1.0)
    background.flush()
    assert path == exchange.checkpoint_prefix(str(tmp_path / "background"), 10)
    want, got = _values(blocking), _values(path)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)
    assert drills.check_published(str(tmp_path / "background"), lambda: testing.mlp()) == [10]


def test_never_rewrites_and_unlists_before_deleting(tmp_path):
    directory = str(tmp_path)
    student = testing.mlp(seed=1)
    publisher = _background(student, directory, max_to_keep=2)
    publisher.publish(1)
    publisher.flush()
    index = exchange.checkpoint_prefix(directory, 1) + ".index"
    mtime = os.stat(index).st_mtime_ns
    publisher.publish(1)  # Published: not written again.
    publisher.flush()
    assert os.stat(index).st_mtime_ns == mtime
    for step in (2, 3):
        publisher.publish(step)
    publisher.flush()
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-3"]
    assert not os.path.exists(index)
    assert publisher.is_published(3) and not publisher.is_published(1)
    # A new process (restart) with the same directory keeps what is listed.
    assert _background(student, directory, max_to_keep=2).is_published(2)


def test_a_snapshot_of_another_architecture_is_refused(tmp_path):
    snapshot = exchange.outside_strategy(lambda: testing.mlp(hidden=(8,)))
    with pytest.raises(errors.ConfigError, match="snapshot"):
        exchange.BackgroundPublisher(testing.mlp(), snapshot, str(tmp_path))


def test_fit_publishes_in_the_background_and_its_end_flushes(tmp_path):
    model = testing.codistill_model(
        str(tmp_path), exchange_every_n_steps=2, background_publish=True
    )
    assert model.exchange_client.background_publish
    x, y = testing.toy_classification(64)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    group_dir = exchange.group_dir(str(tmp_path), 0)
    # Steps 2, 4, 6 and 8 (the end); the last one written before fit returned.
    assert exchange.latest_checkpoint(group_dir).step == 8
    assert drills.check_published(group_dir, lambda: testing.mlp()) == [2, 4, 6, 8]
    final = _values(exchange.checkpoint_prefix(group_dir, 8))
    assert any(np.array_equal(v, model.student.weights[0].numpy()) for v in final.values())


def test_mirrored_student_is_snapshotted(tmp_path):
    with testing.mirrored_strategy().scope():
        model = testing.codistill_model(
            str(tmp_path), exchange_every_n_steps=2, background_publish=True
        )
    x, y = testing.toy_classification(32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    group_dir = exchange.group_dir(str(tmp_path), 0)
    assert drills.check_published(group_dir, lambda: testing.mlp()) == [2]
    final = _values(exchange.checkpoint_prefix(group_dir, 2))
    for w in model.student.weights:
        assert any(np.array_equal(v, w.numpy()) for v in final.values()), w.name


class _FailingPublish:
    """Wraps a Publisher.publish: the write of `step` fails as a full disk would."""

    def __init__(self, publish, step):
        self.publish, self.step = publish, step

    def __call__(self, step, wait=False):
        if step == self.step:
            raise tf.errors.ResourceExhaustedError(None, None, "ckpt-4_temp: No space left")
        return self.publish(step, wait)


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_write_stops_fit_with_the_same_one_line_error(tmp_path, background):
    model = testing.codistill_model(
        str(tmp_path), exchange_every_n_steps=4, background_publish=background
    )
    # pylint: disable=protected-access
    publisher = model.exchange_client._publisher
    inner = publisher._publisher if background else publisher
    inner.publish = _FailingPublish(inner.publish, 4)
    x, y = testing.toy_classification(128)

    class WriteFinishes(keras.callbacks.Callback):
        """Lets the background write of step 4 finish before step 5 runs."""

        def on_train_batch_end(self, batch, logs=None):
            job = getattr(publisher, "_job", None)
            if job is not None:
                concurrent.futures.wait([job])

    with pytest.raises(errors.ExchangeWriteError) as raised:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[WriteFinishes()])
    message = str(raised.value)
    group_dir = exchange.group_dir(str(tmp_path), 0)
    assert message == (
        f"group 0 cannot publish step 4 into {group_dir}: ckpt-4_temp: No space left"
    )
    # Blocking: raised at the exchange (after step 4); background: after the next step.
    assert int(model.optimizer.iterations.numpy()) == (5 if background else 4)
    assert not isinstance(raised.value, tf.errors.OutOfRangeError)


_WRITER = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tf_keras as keras
    from tf_codistill import exchange, testing

    def big():
        return testing.mlp(input_dim=256, num_outputs=10, hidden=(2048, 2048, 2048), seed=0)

    student = big()
    directory = sys.argv[1]
    publisher = exchange.BackgroundPublisher(
        student, exchange.outside_strategy(big), directory, max_to_keep=2
    )
    publisher.publish(1)
    publisher.flush()
    step = 1
    while True:
        step += 1
        for w in student.weights:
            w.assign(w * 0.5)
        publisher.publish(step)
        print("writing", step, flush=True)
        publisher.flush()
    """
)


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_nothing_half_written_listed(tmp_path):
    directory = str(tmp_path / "group_0")
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.time() + 120
        # Killed right after its third background write started (a 4.2e7-byte
        # checkpoint takes tens of milliseconds or more to write).
        for line in process.stdout:
            assert time.time() < deadline
            if line.startswith("writing 4"):
                break
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    steps = drills.check_published(
        directory,
        lambda: testing.mlp(input_dim=256, num_outputs=10, hidden=(2048, 2048, 2048), seed=1),
    )
    # What is listed is complete and validated, the latest what a peer loads.
    assert steps and steps[-1] in (3, 4), steps
    assert exchange.latest_checkpoint(directory).step == steps[-1]
