"""benchmarks/reproduce.py --quick: every experiment runs end to end on tiny sizes.

One harness process runs them all (see EXPERIMENTS), so runs
that several experiments share are trained once; a second call finds them
kept and trains nothing. The numbers mean nothing at this size; the test
checks that each experiment trains real groups and writes its table, plot
and raw results, so the harness cannot rot between full runs.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tf_codistill import testing

pytestmark = pytest.mark.slow

REPRODUCE = os.path.join(testing.repo_root(), "benchmarks", "reproduce.py")
# Every experiment, on the planted workload, and the LM through C3 (its
# ensemble, label smoothing toward the unigram distribution, per-token loss).
# C2 and C8 on the LM and on planted_small run the same code on other
# bindings; they are left to `reproduce.py all --quick` on demand, which
# would double this test's time (each run is a process start).
EXPERIMENTS = {
    "c1_saturation": ["planted"],
    "c2_speedup": ["planted"],
    "c3_explain": ["planted", "lm"],
    "c4_data": ["planted"],
    "c5_staleness": ["planted"],
    "c8_churn": ["planted"],
    "nway": ["planted"],
    "burn_in": ["planted"],
}


def _reproduce(*args, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            REPRODUCE,
            *args,
            "--quick",
            f"--out_dir={tmp_path / 'results'}",
            f"--work_dir={tmp_path / 'work'}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=testing.repo_root(),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    return result.stdout


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    specs = [f"{name}:{w}" for name, workloads in EXPERIMENTS.items() for w in workloads]
    out = _reproduce(*specs, tmp_path=tmp_path)
    results = {}
    for name, workloads in EXPERIMENTS.items():
        for w in workloads:
            stem = tmp_path / "results" / f"{name}-{w}-quick"
            with open(f"{stem}.json") as f:
                results[f"{name}-{w}"] = json.load(f)
            assert os.path.getsize(f"{stem}.png") > 5000, stem
            assert (stem.parent / f"{stem.name}.md").read_text().startswith(f"### {name}-{w}")
    return tmp_path, out, results


def test_list_prints_every_experiment_with_its_run_time():
    result = subprocess.run(
        [sys.executable, REPRODUCE, "--list"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in EXPERIMENTS:
        assert name in result.stdout
    assert "min" in result.stdout


def test_unknown_experiment_is_one_clear_line():
    result = subprocess.run(
        [sys.executable, REPRODUCE, "c9_nonsense"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "unknown experiment 'c9_nonsense'" in result.stderr


def test_every_experiment_trains_and_reports(quick_results):
    _, out, results = quick_results
    assert "expect at most about" in out
    for name, r in results.items():
        assert r["quick"] is True
        assert r["curves"], name
        for label, curve in r["curves"].items():
            steps = [s for s, _ in curve]
            assert steps == sorted(steps) and steps[-1] == r["workload"]["train_steps"], label
            assert all(v > 0 for _, v in curve), label


def test_speedup_compares_codistillation_with_the_best_baseline(quick_results):
    _, _, results = quick_results
    r = results["c2_speedup-planted"]["result"]
    assert r["best_baseline"] in ("1 group, batch B", "1 group, batch 2B")
    cod = r["runs"]["2-way codistillation"]
    assert len(cod["groups"]) == 2
    n = results["nway-planted"]["result"]["runs"]
    assert [len(n[f"{k}-way codistillation"]["groups"]) for k in (2, 3)] == [2, 3]


def test_explain_has_the_ensemble_and_label_smoothing(quick_results):
    _, _, results = quick_results
    lm = results["c3_explain-lm"]["result"]
    assert "1 group, label smoothing 0.1 to unigram" in lm
    assert lm["ensemble"]["loss"] > 0
    planted = results["c3_explain-planted"]["result"]
    assert "1 group, label smoothing 0.1 to uniform" in planted


def test_churn_table_has_the_papers_three_rows(quick_results):
    _, _, results = quick_results
    for w in ("planted",):
        r = results[f"c8_churn-{w}"]["result"]
        assert set(r) == {
            "baseline (1 group)",
            "2-way ensemble",
            "2-way codistillation (group 0)",
        }
        for row in r.values():
            churn = row["churn"]
            assert len(churn["pairs"]) == 1  # two retrains in quick mode
            assert 0 < churn["mean_abs_diff"]["mean"] <= 1
            assert 0 <= churn["disagreement"]["mean"] <= 1


def test_staleness_grows_with_the_exchange_interval(quick_results):
    _, _, results = quick_results
    r = results["c5_staleness-planted"]["result"]
    every_step = r["1 steps (about a fresh teacher)"]["mean_staleness"]
    every_5 = r["5 steps"]["mean_staleness"]
    assert every_step is not None and every_5 is not None
    assert every_step < every_5


def test_kept_runs_are_not_trained_again(quick_results):
    tmp_path, _, _ = quick_results
    out = _reproduce("c2_speedup:planted", tmp_path=tmp_path)
    assert not re.search(r"^  training ", out, re.MULTILINE), out
    assert out.count("kept:") == 3
