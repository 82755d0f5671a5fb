"""evaluation.ensembles: the ensemble of two really trained groups, and its logits by hand."""

import json
import math
import os

import numpy as np
import tensorflow as tf

from tf_codistill import evaluation
from tf_codistill import testing


def read_json(path):
    with open(path) as f:
        return json.load(f)


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_ensemble_is_the_average_of_the_groups_probabilities(run_dir, tmp_path, evaluate_main):
    evaluate_main(run_dir, str(tmp_path), groups=[0, 1], ensemble=True)
    results = read_json(tmp_path / "eval_ensemble_0_1.json")
    assert (results["kind"], results["head"], results["groups"]) == ("ensemble", "softmax", [0, 1])
    (entry,) = results["evaluations"]
    assert entry["member_steps"] == {"group_0": 40, "group_1": 40}

    # By hand: restore both students, average their softmax probabilities.
    x, y = testing.demo_tiny_eval_data()
    members = [
        testing.restore_latest(testing.demo_tiny_student(), os.path.join(run_dir, f"group_{g}"))
        for g in range(2)
    ]
    probs = [softmax(m(x).numpy().astype(np.float64)) for m in members]
    mean = (probs[0] + probs[1]) / 2
    cross_entropy = -np.mean(np.log(mean[np.arange(len(y)), y]))
    accuracy = np.mean(mean.argmax(axis=1) == y)
    np.testing.assert_allclose(entry["task_loss"], cross_entropy, rtol=1e-5)
    np.testing.assert_allclose(entry["accuracy"], accuracy)
    # Jensen: -log(mean p) <= mean(-log p), so the ensemble's loss is at most the members' mean.
    members = [-np.mean(np.log(p[np.arange(len(y)), y])) for p in probs]
    assert cross_entropy <= np.mean(members)


def test_ensemble_at_every_step_both_groups_published(run_dir, tmp_path, evaluate_main):
    evaluate_main(run_dir, str(tmp_path), groups=[0, 1], mode="all", ensemble=True)
    entries = read_json(tmp_path / "eval_ensemble_0_1.json")["evaluations"]
    steps = {
        name: sorted(
            int(f[len("ckpt-") : -len(".index")])
            for f in os.listdir(os.path.join(run_dir, name))
            if f.startswith("ckpt-") and f.endswith(".index")
        )
        for name in ("group_0", "group_1")
    }
    common = sorted(set(steps["group_0"]) & set(steps["group_1"]))
    assert len(common) >= 2, steps
    assert [e["step"] for e in entries] == common
    for entry in entries:
        assert entry["member_steps"] == {"group_0": entry["step"], "group_1": entry["step"]}
    # The last one is the ensemble of the latest checkpoints, as --mode=latest gives it.
    latest_dir = tmp_path / "latest"
    evaluate_main(run_dir, str(latest_dir), groups=[0, 1], ensemble=True)
    (latest,) = read_json(latest_dir / "eval_ensemble_0_1.json")["evaluations"]
    np.testing.assert_allclose(entries[-1]["task_loss"], latest["task_loss"], rtol=1e-6)
    # Earlier steps are other models: their losses differ from the last one.
    assert entries[0]["task_loss"] != entries[-1]["task_loss"]


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


def test_ensemble_at_the_steps_asked_for(run_dir):
    runs = [evaluation.load_group(run_dir, g) for g in (0, 1)]
    every = evaluation.evaluate_ensemble(runs, every_step=True)
    steps = [e["step"] for e in every]
    some = evaluation.evaluate_ensemble(runs, every_step=True, steps={steps[-1]})
    assert [e["step"] for e in some] == [steps[-1]]
    np.testing.assert_allclose(some[0]["task_loss"], every[-1]["task_loss"], rtol=1e-6)
