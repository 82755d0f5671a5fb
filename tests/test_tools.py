"""evaluation.tools, what binaries/churn.py and binaries/evaluate.py do.

Churn on group checkpoints, ensembles and exported students; the evaluate
binary's mistakes, each one clear line.

The "runs" are made by hand: each group directory gets an operative config
(the tiny demo) and one published checkpoint of a student with seeded random
weights, so no training is needed; the expected numbers are computed here
with numpy from the same students' predictions.
"""

import json
import os
import shutil

import gin
import numpy as np
import pytest
import tf_keras as keras
from absl import flags

from tf_codistill import exchange
from tf_codistill import testing

churn = testing.load_binary("churn")
FLAGS = flags.FLAGS


def student(seed):
    keras.utils.set_random_seed(seed)
    return testing.demo_tiny_student()


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
    x, _ = testing.demo_tiny_eval_data()
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


def two_step_run(root, students):
    """Two groups that published step 20 (their own weights) and step 40 (retrain 0's)."""
    early = {}
    for g in range(2):
        directory = exchange.group_dir(root, g)
        os.makedirs(directory)
        with open(os.path.join(directory, "operative_config.gin"), "w") as f:
            f.write("include 'demo/tiny.gin'\n")
        early[g] = student(seed=70 + g)
        publisher = exchange.Publisher(early[g], directory)
        publisher.publish(20)
        early[g].set_weights(students[0, g].get_weights())
        publisher.publish(40)
        early[g].set_weights(student(seed=70 + g).get_weights())
    return early


def test_a_kept_checkpoint_by_its_step(runs, tmp_path):
    # A group that published steps 20 and 40 with other weights: @20 is the
    # early checkpoint (what early stopping would serve), without @ the latest.
    (r0, _), students = runs
    root = str(tmp_path / "two_steps")
    early = two_step_run(root, students)
    output = str(tmp_path / "churn.json")
    specs = [f"{root}:0@20", f"{root}:0", f"{root}:0+1@20"]
    run_main(specs, output_json=output)
    with open(output) as f:
        report = json.load(f)
    assert report["steps"] == {specs[0]: [20], specs[1]: [40], specs[2]: [20, 20]}
    p_early = probabilities(early[0])
    p_late = probabilities(students[0, 0])
    p_ens = (p_early + probabilities(early[1])) / 2
    pairs = {(e["a"], e["b"]): e["mean_abs_diff"] for e in report["pairs"]}
    np.testing.assert_allclose(
        pairs[specs[0], specs[1]], expected_pair(p_early, p_late)[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        pairs[specs[0], specs[2]], expected_pair(p_early, p_ens)[0], rtol=1e-5
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main([f"{root}:0@30", f"{r0}:0"])
    text = str(exit_info.value.code)
    assert "kept no checkpoint of step 30 (nearest: 20, 40; 2 kept, steps 20..40)" in text, text
    # A checkpoint whose name says another step than it holds is refused.
    directory = exchange.group_dir(root, 1)
    for name in os.listdir(directory):
        if name.startswith("ckpt-40."):
            shutil.copy(
                os.path.join(directory, name), os.path.join(directory, "ckpt-30" + name[7:])
            )
    with pytest.raises(SystemExit) as exit_info:
        run_main([f"{root}:1@30", f"{r0}:0"])
    assert "ckpt-30 holds step 40, not 30" in str(exit_info.value.code)


def test_a_temporal_ensemble_of_one_groups_steps(runs, tmp_path):
    # ROOT:G@20,40 averages the group's two checkpoints' probabilities.
    _, students = runs
    root = str(tmp_path / "two_steps")
    early = two_step_run(root, students)
    output = str(tmp_path / "churn.json")
    specs = [f"{root}:0@20,40", f"{root}:0@20"]
    run_main(specs, output_json=output)
    with open(output) as f:
        report = json.load(f)
    assert report["steps"] == {specs[0]: [20, 40], specs[1]: [20]}
    assert report["head"] == "softmax"
    p_early = probabilities(early[0])
    p_average = (p_early + probabilities(students[0, 0])) / 2
    (pair,) = report["pairs"]
    np.testing.assert_allclose(
        (pair["mean_abs_diff"], pair["disagreement"]),
        expected_pair(p_average, p_early),
        rtol=1e-5,
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main([f"{root}:0@20,30", f"{root}:0"])
    assert "kept no checkpoint of step 30" in str(exit_info.value.code)


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
        (["{r0}:0", "{r0}:0@x"], [], "either with @STEP"),
        (["{r0}:0", "{r0}:2"], [], "no group 2 in"),
        (["{r0}:0", "{r0}:0+0"], [], "names a group twice"),
        (["{r0}:0", "{r0}:0+1@40,40"], [], "several steps (a temporal ensemble) take one group"),
        (["{r0}:0", "{r0}:0@40,40"], [], "names a step twice"),
        (["{r0}:0", "{r0}:0@40,"], [], "one group's steps averaged"),
        (["{tmp}/a.keras", "{tmp}/b.keras"], [], "a.keras does not exist"),
        (["{tmp}/m.keras", "{tmp}/m.keras"], [], "only .keras models were given"),
    ],
)
def test_churn_mistakes_give_one_clear_message(runs, tmp_path, models, gin_files, message):
    (r0, _), students = runs
    students[0, 0].save(str(tmp_path / "m.keras"))
    models = [m.format(r0=r0, tmp=tmp_path) for m in models]
    with pytest.raises(SystemExit) as exit_info:
        run_main(models, gin_files)
    text = str(exit_info.value.code)
    assert text.startswith("churn.py: ") and message in text, text
    assert "Traceback" not in text and "\n" not in text


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
        ("ensemble_sidecar", "not --mode=sidecar"),
        ("sidecar_on_two_groups", "--mode=sidecar follows one group"),
        ("ensemble_of_one", "an ensemble needs at least two groups"),
        ("empty_root", "no group_<i> directory in --root_dir"),
    ],
)
def test_evaluate_mistakes_give_one_clear_message(run_dir, tmp_path, case, message, evaluate_main):
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
    elif case == "ensemble_sidecar":
        groups, mode, ensemble = [0, 1], "sidecar", True
    elif case == "sidecar_on_two_groups":
        groups, mode = [0, 1], "sidecar"
    elif case == "ensemble_of_one":
        ensemble = True
    elif case == "empty_root":
        root, groups = str(tmp_path), []
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(root, str(tmp_path / "eval"), groups, mode, ensemble, bindings)
    text = str(exit_info.value.code)
    assert text.startswith("evaluate.py: ") and message in text, text
    assert "Traceback" not in text and "\n" not in text
