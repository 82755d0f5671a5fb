"""binaries/churn.py on group checkpoints, ensembles and exported students.

The "runs" are made by hand: each group directory gets an operative config
(the tiny demo) and one published checkpoint of a student with seeded random
weights, so no training is needed; the expected numbers are computed here
with numpy from the same students' predictions.
"""

import json
import os

import gin
import numpy as np
import pytest
import tf_keras as keras
from absl import flags

from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.datasets import synthetic
from tf_codistill.models import mlp

churn = testing.load_binary("churn")
FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def student(seed):
    keras.utils.set_random_seed(seed)
    return mlp.mlp_classifier(input_dim=32, num_classes=10, hidden_units=(16,))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two retrains of a two-group run: {(run, group): student}, and their root dirs."""
    roots = [str(tmp_path_factory.mktemp(f"retrain{r}")) for r in range(2)]
    students = {}
    for r, root in enumerate(roots):
        for g in range(2):
            directory = exchange.group_dir(root, g)
            os.makedirs(directory)
            with open(os.path.join(directory, "operative_config.gin"), "w") as f:
                f.write("include 'demo/tiny.gin'\n")
            students[r, g] = student(seed=10 * r + g)
            exchange.Publisher(students[r, g], directory).publish(40)
    gin.clear_config()
    return roots, students


def probabilities(model):
    x, _ = synthetic.planted_classification("validation", 128, 32, 10, sharpness=4.0)
    logits = model(x).numpy().astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def expected_pair(p, q):
    """(mean total-variation distance, top-1 disagreement) over the examples."""
    return 0.5 * np.abs(p - q).sum(axis=1).mean(), np.mean(p.argmax(1) != q.argmax(1))


def run_main(models, gin_files=(), head="auto", output_json=None):
    FLAGS.model = list(models)
    FLAGS.head = head
    FLAGS.gin_file = list(gin_files)
    FLAGS.gin_bindings = []
    FLAGS.output_json = output_json
    churn.main([])


def test_retrains_and_an_ensemble(runs, tmp_path, capsys):
    (r0, r1), students = runs
    specs = [f"{r0}:0", f"{r1}:0", f"{r0}:0+1"]
    output = str(tmp_path / "churn.json")
    run_main(specs, output_json=output)
    with open(output) as f:
        report = json.load(f)

    p = [probabilities(students[0, 0]), probabilities(students[1, 0])]
    p.append((probabilities(students[0, 0]) + probabilities(students[0, 1])) / 2)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.array([expected_pair(p[a], p[b]) for a, b in pairs])
    assert report["models"] == specs and report["head"] == "softmax"
    assert report["num_examples"] == 128
    assert report["steps"] == {specs[0]: [40], specs[1]: [40], specs[2]: [40, 40]}
    for (a, b), entry, (tv, flips) in zip(pairs, report["pairs"], expected, strict=True):
        assert (entry["a"], entry["b"]) == (specs[a], specs[b])
        np.testing.assert_allclose(entry["mean_abs_diff"], tv, rtol=1e-5)
        np.testing.assert_allclose(entry["disagreement"], flips, rtol=1e-6)
    tv = expected[:, 0]
    np.testing.assert_allclose(
        [report["mean_abs_diff"][k] for k in ("mean", "min", "max", "half_range")],
        [tv.mean(), tv.min(), tv.max(), (tv.max() - tv.min()) / 2],
        rtol=1e-5,
    )
    # A member is exactly half as far (in TV) from the 2-way average as from the other member.
    np.testing.assert_allclose(
        report["pairs"][1]["mean_abs_diff"],
        expected_pair(p[0], probabilities(students[0, 1]))[0] / 2,
        rtol=1e-5,
    )
    table = capsys.readouterr().out
    assert f"{r0}:0  vs  {r1}:0" in table and "half-range over 3 pairs" in table


def test_retrains_of_an_ensemble_first(runs, tmp_path):
    # An ensemble named first has never been called: its head comes from its members.
    (r0, r1), students = runs
    output = str(tmp_path / "churn.json")
    run_main([f"{r0}:0+1", f"{r1}:0+1"], output_json=output)
    with open(output) as f:
        report = json.load(f)
    p = [(probabilities(students[r, 0]) + probabilities(students[r, 1])) / 2 for r in (0, 1)]
    assert report["head"] == "softmax"
    np.testing.assert_allclose(report["pairs"][0]["mean_abs_diff"], expected_pair(*p)[0], rtol=1e-5)


def test_exported_students_on_a_gin_configs_data(runs, tmp_path):
    (r0, r1), students = runs
    paths = []
    for r in range(2):
        paths.append(str(tmp_path / f"student{r}.keras"))
        students[r, 0].save(paths[-1])
    output = str(tmp_path / "churn.json")
    run_main(paths, gin_files=["demo/tiny.gin"], output_json=output)
    with open(output) as f:
        (pair,) = json.load(f)["pairs"]
    tv, flips = expected_pair(probabilities(students[0, 0]), probabilities(students[1, 0]))
    np.testing.assert_allclose(
        (pair["mean_abs_diff"], pair["disagreement"]), (tv, flips), rtol=1e-5
    )


@pytest.mark.parametrize(
    "models, gin_files, message",
    [
        (["{r0}:0"], [], "give at least two --model, got 1"),
        (["{r0}:0", "{r0}"], [], "expected ROOT_DIR:GROUP, ROOT_DIR:G1+G2"),
        (["{r0}:0", "{r0}:2"], [], "no group 2 in"),
        (["{r0}:0", "{r0}:0+0"], [], "names a group twice"),
        (["{tmp}/a.keras", "{tmp}/b.keras"], [], "a.keras does not exist"),
        (["{tmp}/m.keras", "{tmp}/m.keras"], [], "only .keras models were given"),
    ],
)
def test_mistakes_give_one_clear_message(runs, tmp_path, models, gin_files, message):
    (r0, _), students = runs
    students[0, 0].save(str(tmp_path / "m.keras"))
    models = [m.format(r0=r0, tmp=tmp_path) for m in models]
    with pytest.raises(SystemExit) as exit_info:
        run_main(models, gin_files)
    text = str(exit_info.value.code)
    assert text.startswith("churn.py: ") and message in text, text
    assert "Traceback" not in text and "\n" not in text
