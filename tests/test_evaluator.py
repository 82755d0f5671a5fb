"""evaluation.evaluator: a group's checkpoints (latest, all, sidecar), on a trained run."""

import glob
import json
import logging
import os
import shutil
import threading
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_codistill import evaluation
from tf_codistill import exchange
from tf_codistill import testing

KEPT_STEPS = [20, 25, 30, 35, 40]  # exchange every 5 steps, 5 checkpoints kept, 40 steps


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_latest_reproduces_each_groups_own_final_validation(run_dir, tmp_path, evaluate_main):
    evaluate_main(run_dir, str(tmp_path))
    for g in range(2):
        own = read_json(os.path.join(run_dir, f"group_{g}", "metrics.json"))["final"]
        results = read_json(tmp_path / f"eval_group_{g}.json")
        assert results["kind"] == "group" and results["groups"] == [g]
        (entry,) = results["evaluations"]
        assert entry["step"] == 40 and entry["checkpoint"] == "ckpt-40"
        np.testing.assert_allclose(entry["task_loss"], own["val_task_loss"], rtol=1e-5)
        np.testing.assert_allclose(entry["accuracy"], own["val_accuracy"], rtol=1e-6)
        events = testing.event_scalars(tmp_path / "tensorboard" / f"group_{g}", "task_loss")
        assert [s for s, _ in events] == [40]
        np.testing.assert_allclose(events[0][1], own["val_task_loss"], rtol=1e-5)


def test_default_output_dir_is_inside_the_run(run_dir, evaluate_main):
    evaluate_main(run_dir, None, groups=[0])
    assert os.path.exists(os.path.join(run_dir, "eval", "eval_group_0.json"))
    shutil.rmtree(os.path.join(run_dir, "eval"))


def test_all_evaluates_every_kept_checkpoint_once(run_dir, tmp_path):
    evaluator = evaluation.GroupEvaluator(evaluation.load_group(run_dir, 1), str(tmp_path))
    entries = evaluator.all()
    evaluator.close()
    assert [e["step"] for e in entries] == KEPT_STEPS
    # Each step was evaluated exactly once: one TensorBoard point per step.
    events = testing.event_scalars(tmp_path / "tensorboard" / "group_1", "task_loss")
    assert [s for s, _ in events] == KEPT_STEPS
    # The group itself evaluated at steps 20 and 40 (the ends of its two epochs).
    history = read_json(os.path.join(run_dir, "group_1", "metrics.json"))["history"]
    by_step = {e["step"]: e["task_loss"] for e in entries}
    for own in history:
        np.testing.assert_allclose(by_step[own["step"]], own["val_task_loss"], rtol=1e-5)
    # And every checkpoint holds other weights: the losses all differ.
    assert len({round(v, 7) for v in by_step.values()}) == len(KEPT_STEPS)


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
    student = testing.demo_tiny_student()
    publisher = exchange.Publisher(student, group_dir)
    publisher.publish(30)
    results_path = tmp_path / "eval" / "eval_group_0.json"
    wait_for(lambda: results_path.exists() and read_json(results_path)["evaluations"])
    x, y = testing.demo_tiny_eval_data()
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


def test_all_can_keep_to_the_steps_asked_for(run_dir, tmp_path):
    # The study's test curves are read at the validation steps only.
    evaluator = evaluation.GroupEvaluator(evaluation.load_group(run_dir, 1), str(tmp_path))
    wanted = {KEPT_STEPS[0], KEPT_STEPS[-1], 10_000}
    entries = evaluator.all(steps=wanted)
    evaluator.close()
    assert [e["step"] for e in entries] == [KEPT_STEPS[0], KEPT_STEPS[-1]]
