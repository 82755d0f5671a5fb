"""binaries/evaluate.py and tf_codistill.evaluation on two really trained tiny groups."""

import glob
import json
import logging
import math
import os
import shutil
import threading
import time

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import flags

from tf_codistill import evaluation
from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill import testing
from tf_codistill import train_lib
from tf_codistill.datasets import synthetic

evaluate = testing.load_binary("evaluate")
FLAGS = flags.FLAGS

# gin/demo/tiny.gin: an MLP 32-16-10 on 128 validation examples of the planted task.
NUM_EVAL, DIM, CLASSES, SHARPNESS = 128, 32, 10, 4.0
KEPT_STEPS = [20, 25, 30, 35, 40]  # exchange every 5 steps, 5 checkpoints kept, 40 steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two codistilling tiny groups, trained one after the other into one root_dir."""
    root = str(tmp_path_factory.mktemp("run"))
    for g in range(2):
        gin.clear_config()
        gin_utils.parse(
            ["demo/tiny.gin"], ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"]
        )
        train_lib.train_group(root, g, 2)
    gin.clear_config()
    return root


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def run_main(root_dir, output_dir, groups=(), mode="latest", ensemble=False, bindings=()):
    FLAGS.root_dir = root_dir
    FLAGS.group = list(groups)
    FLAGS.mode = mode
    FLAGS.ensemble = ensemble
    FLAGS.ensemble_head = "auto"
    FLAGS.timeout_s = 60
    FLAGS.poll_interval_s = 0.1
    FLAGS.final_step = None
    FLAGS.max_attempts = 3
    FLAGS.gin_file = []
    FLAGS.gin_bindings = list(bindings)
    FLAGS.output_dir = output_dir
    evaluate.main([])


def read_json(path):
    with open(path) as f:
        return json.load(f)


def scalar_events(tensorboard_dir, tag):
    """(step, value) of every `tag` summary under `tensorboard_dir`."""
    found = []
    for path in glob.glob(os.path.join(tensorboard_dir, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    found.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(found)


def restored_model(group_dir, prefix=None):
    """The tiny student restored the documented way (exchange.py's docstring)."""
    model = tiny_student()
    prefix = prefix or tf.train.latest_checkpoint(group_dir)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return model


def tiny_student():
    from tf_codistill.models import mlp

    return mlp.mlp_classifier(input_dim=DIM, num_classes=CLASSES, hidden_units=(16,))


def eval_data():
    return synthetic.planted_classification(
        "validation", NUM_EVAL, DIM, CLASSES, sharpness=SHARPNESS
    )


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_latest_reproduces_each_groups_own_final_validation(run_dir, tmp_path):
    run_main(run_dir, str(tmp_path))
    for g in range(2):
        own = read_json(os.path.join(run_dir, f"group_{g}", "metrics.json"))["final"]
        results = read_json(tmp_path / f"eval_group_{g}.json")
        assert results["kind"] == "group" and results["groups"] == [g]
        (entry,) = results["evaluations"]
        assert entry["step"] == 40 and entry["checkpoint"] == "ckpt-40"
        np.testing.assert_allclose(entry["task_loss"], own["val_task_loss"], rtol=1e-5)
        np.testing.assert_allclose(entry["accuracy"], own["val_accuracy"], rtol=1e-6)
        events = scalar_events(tmp_path / "tensorboard" / f"group_{g}", "task_loss")
        assert [s for s, _ in events] == [40]
        np.testing.assert_allclose(events[0][1], own["val_task_loss"], rtol=1e-5)


def test_default_output_dir_is_inside_the_run(run_dir):
    run_main(run_dir, None, groups=[0])
    assert os.path.exists(os.path.join(run_dir, "eval", "eval_group_0.json"))
    shutil.rmtree(os.path.join(run_dir, "eval"))


def test_all_evaluates_every_kept_checkpoint_once(run_dir, tmp_path):
    evaluator = evaluation.GroupEvaluator(evaluation.load_group(run_dir, 1), str(tmp_path))
    entries = evaluator.all()
    evaluator.close()
    assert [e["step"] for e in entries] == KEPT_STEPS
    # Each step was evaluated exactly once: one TensorBoard point per step.
    events = scalar_events(tmp_path / "tensorboard" / "group_1", "task_loss")
    assert [s for s, _ in events] == KEPT_STEPS
    # The group itself evaluated at steps 20 and 40 (the ends of its two epochs).
    history = read_json(os.path.join(run_dir, "group_1", "metrics.json"))["history"]
    by_step = {e["step"]: e["task_loss"] for e in entries}
    for own in history:
        np.testing.assert_allclose(by_step[own["step"]], own["val_task_loss"], rtol=1e-5)
    # And every checkpoint holds other weights: the losses all differ.
    assert len({round(v, 7) for v in by_step.values()}) == len(KEPT_STEPS)


def test_ensemble_is_the_average_of_the_groups_probabilities(run_dir, tmp_path):
    run_main(run_dir, str(tmp_path), groups=[0, 1], ensemble=True)
    results = read_json(tmp_path / "eval_ensemble_0_1.json")
    assert (results["kind"], results["head"], results["groups"]) == ("ensemble", "softmax", [0, 1])
    (entry,) = results["evaluations"]
    assert entry["member_steps"] == {"group_0": 40, "group_1": 40}

    # By hand: restore both students, average their softmax probabilities.
    x, y = eval_data()
    probs = [
        softmax(restored_model(os.path.join(run_dir, f"group_{g}"))(x).numpy().astype(np.float64))
        for g in range(2)
    ]
    mean = (probs[0] + probs[1]) / 2
    cross_entropy = -np.mean(np.log(mean[np.arange(len(y)), y]))
    accuracy = np.mean(mean.argmax(axis=1) == y)
    np.testing.assert_allclose(entry["task_loss"], cross_entropy, rtol=1e-5)
    np.testing.assert_allclose(entry["accuracy"], accuracy)
    # Jensen: -log(mean p) <= mean(-log p), so the ensemble's loss is at most the members' mean.
    members = [-np.mean(np.log(p[np.arange(len(y)), y])) for p in probs]
    assert cross_entropy <= np.mean(members)


def test_ensemble_logits_softmax_and_sigmoid_by_hand():
    # Sigmoid: p = sigmoid(0) = 0.5 and sigmoid(ln 4) = 0.8 -> mean 0.65 -> logit ln(0.65 / 0.35).
    logits = evaluation.ensemble_logits(
        [tf.constant([[0.0]]), tf.constant([[math.log(4)]])], "sigmoid"
    )
    np.testing.assert_allclose(logits.numpy(), [[math.log(0.65 / 0.35)]], rtol=1e-6)
    # Far in the tails the probabilities underflow, but the logits stay exact.
    tails = evaluation.ensemble_logits([tf.constant([-200.0]), tf.constant([-200.0])], "sigmoid")
    np.testing.assert_allclose(tails.numpy(), [-200.0], rtol=1e-6)
    # Softmax: softmax(output) = mean of (0.5, 0.5) and (0.1, 0.9) = (0.3, 0.7).
    out = evaluation.ensemble_logits(
        [tf.math.log([[0.5, 0.5]]), tf.math.log([[0.1, 0.9]])], "softmax"
    )
    np.testing.assert_allclose(tf.nn.softmax(out).numpy(), [[0.3, 0.7]], rtol=1e-6)


class FakeSleep:
    """Counts the sidecar's polls and sleeps briefly for real."""

    def __init__(self):
        self.polls = 0

    def __call__(self, seconds):
        self.polls += 1
        time.sleep(seconds)


def wait_for(condition, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_sidecar_follows_a_training_group_and_skips_a_corrupt_checkpoint(run_dir, tmp_path, caplog):
    # A new group that has written its config but no checkpoint yet.
    root = str(tmp_path / "run")
    group_dir = os.path.join(root, "group_0")
    os.makedirs(group_dir)
    shutil.copy(os.path.join(run_dir, "group_0", "operative_config.gin"), group_dir)
    evaluator = evaluation.GroupEvaluator(evaluation.load_group(root, 0), str(tmp_path / "eval"))
    sleep, outcome = FakeSleep(), {}

    def sidecar():
        outcome["entries"] = evaluator.sidecar(
            final_step=50, timeout_s=60, poll_interval_s=0.05, max_attempts=2, sleep=sleep
        )

    caplog.set_level(logging.INFO)
    thread = threading.Thread(target=sidecar, daemon=True)
    thread.start()
    wait_for(lambda: sleep.polls >= 2)  # It is running and has found nothing.

    # The "training job" publishes step 30 ...
    student = tiny_student()
    publisher = exchange.Publisher(student, group_dir)
    publisher.publish(30)
    results_path = tmp_path / "eval" / "eval_group_0.json"
    wait_for(lambda: results_path.exists() and read_json(results_path)["evaluations"])
    x, y = eval_data()
    student.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    expected_30 = student.evaluate(x, y, batch_size=64, verbose=0)

    # ... then a corrupt ckpt-45: written elsewhere, truncated, moved in, named latest.
    elsewhere = str(tmp_path / "elsewhere")
    bad = exchange.Publisher(student, elsewhere).publish(45)
    data_file = bad + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    for path in glob.glob(bad + ".*"):
        shutil.copy(path, group_dir)
    tf.compat.v1.train.update_checkpoint_state(group_dir, os.path.join(group_dir, "ckpt-45"))
    wait_for(lambda: read_json(results_path)["skipped"])

    # ... and finally step 50 with other weights: the sidecar evaluates it and stops.
    student.set_weights([w * 0.5 for w in student.get_weights()])
    expected_50 = student.evaluate(x, y, batch_size=64, verbose=0)
    publisher.publish(50)
    thread.join(timeout=60)
    assert not thread.is_alive()
    evaluator.close()

    assert [e["step"] for e in outcome["entries"]] == [30, 50]
    np.testing.assert_allclose(
        [e["task_loss"] for e in outcome["entries"]], [expected_30, expected_50], rtol=1e-5
    )
    (skipped,) = read_json(results_path)["skipped"]
    assert (skipped["step"], skipped["attempts"]) == (45, 2)
    assert "cannot restore ckpt-45" in skipped["reason"]
    logged = [r.getMessage() for r in caplog.records]
    assert any("cannot evaluate ckpt-45 now (attempt 1 of 2), retrying later" in m for m in logged)
    assert any("skipping ckpt-45 after 2 failed attempts: cannot restore" in m for m in logged)


def test_sidecar_stops_after_its_timeout(run_dir, tmp_path):
    root = str(tmp_path / "run")
    os.makedirs(os.path.join(root, "group_0"))
    shutil.copy(os.path.join(run_dir, "group_0", "operative_config.gin"), f"{root}/group_0")
    evaluator = evaluation.GroupEvaluator(evaluation.load_group(root, 0), str(tmp_path))
    start = time.monotonic()
    assert evaluator.sidecar(final_step=40, timeout_s=0.3, poll_interval_s=0.05) == []
    assert 0.3 <= time.monotonic() - start < 10


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_group", "no group 5 in"),
        ("no_checkpoint", "group_0 has no checkpoint in"),
        ("unparsable_config", "in gin file"),
        ("other_architecture", "hidden_0/kernel has shape [32, 16], expected [32, 8]"),
        ("ensemble_of_all", "--ensemble evaluates the latest checkpoints"),
        ("sidecar_on_two_groups", "--mode=sidecar follows one group"),
        ("ensemble_of_one", "an ensemble needs at least two groups"),
        ("empty_root", "no group_<i> directory in --root_dir"),
    ],
)
def test_mistakes_give_one_clear_message(run_dir, tmp_path, case, message):
    root, groups, mode, ensemble, bindings = run_dir, [0], "latest", False, []
    config = os.path.join(run_dir, "group_0", "operative_config.gin")
    if case == "unknown_group":
        groups = [5]
    elif case == "no_checkpoint":
        root = str(tmp_path / "run")
        os.makedirs(f"{root}/group_0")
        shutil.copy(config, f"{root}/group_0")
    elif case == "unparsable_config":
        root = str(tmp_path / "run")
        write(f"{root}/group_0/operative_config.gin", "train_group.train_steps = ((\n")
    elif case == "other_architecture":
        bindings = ["tf_codistill.models.mlp_classifier.hidden_units = (8,)"]
    elif case == "ensemble_of_all":
        groups, mode, ensemble = [0, 1], "all", True
    elif case == "sidecar_on_two_groups":
        groups, mode = [0, 1], "sidecar"
    elif case == "ensemble_of_one":
        ensemble = True
    elif case == "empty_root":
        root, groups = str(tmp_path), []
    with pytest.raises(SystemExit) as exit_info:
        run_main(root, str(tmp_path / "eval"), groups, mode, ensemble, bindings)
    text = str(exit_info.value.code)
    assert text.startswith("evaluate.py: ") and message in text, text
    assert "Traceback" not in text and "\n" not in text
