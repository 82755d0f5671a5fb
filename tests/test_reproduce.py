"""The study harness (benchmarks/reproduce.py, benchmarks/study/).

Two kinds of test: the experiments' arithmetic against a runner whose curves
are written down here (targets, steps to target, B*, the ensemble's gain,
shares), and one real `--quick` experiment whose runs are `train.py`
processes evaluated on the test split, as the study makes them.
"""

import json
import math
import os
import re
import subprocess
import sys

import gin
import pytest

from tf_codistill import testing

BENCHMARKS = os.path.join(testing.repo_root(), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from study import experiments  # noqa: E402
from study import runner as runner_lib  # noqa: E402


def curve(start, floor, speed, steps=200, every=10, rise=0.0):
    """A learning curve: from `start` down to `floor` at `speed`, then up by `rise` per step."""
    points = []
    for s in range(every, steps + 1, every):
        value = floor + (start - floor) * math.exp(-speed * s)
        points.append((s, value + rise * s))
    return points


class FakeRunner(runner_lib.Runner):
    """Curves from a function of the run (no processes)."""

    def __init__(self, make_curve):
        super().__init__("/nonexistent")
        self.make_curve = make_curve
        self.trained = []

    def train(self, runs):
        self.trained += [r for r in runs if r not in self.trained]

    def val_curve(self, run, group):
        return self.make_curve(run, [group], "val")

    def test_curve(self, run, groups):
        return self.make_curve(run, list(groups), "test")

    def metrics(self, run, group):
        return {"final": {"train": {"gradient_noise_scale": 100.0 * run.batch}}}

    def history(self, run, group):
        return [
            {"step": s, "train": {"teacher_staleness": 3.0, "distill_weight": 1.0}}
            for s in (10, 20)
        ]


@pytest.fixture
def configured():
    gin.clear_config()
    gin.parse_config(
        [
            "study.lr_grid.grid = [0.001, 0.002]",
            "study.Workload.name = 'fake'",
            "study.Workload.batch = 64",
            "study.Workload.train_steps = 200",
            # As often as the curves below have points.
            "study.Workload.eval_every = 10",
        ]
    )
    yield runner_lib.Workload()
    gin.clear_config()


def speed_of(run):
    # Steps scale like 1/B up to B = 128, then stop improving (saturation);
    # the larger learning rate is the better one.
    base = 0.002 * min(run.batch, 128) / 64
    return base * (1.0 if run.learning_rate == 0.002 else 0.5)


def test_c1_finds_b_star_where_doubling_stops_helping(configured):
    runner = FakeRunner(lambda run, groups, split: curve(2.0, 1.0, speed_of(run), steps=1000))
    ctx = experiments.Context(configured, runner, seeds=2)
    report = experiments.c1_saturation(ctx, batch_sizes=[32, 64, 128, 256], target=1.5)
    steps = report.raw["mean_steps"]
    # exp(-k s) = 1/2 at s = ln 2 / k: k = 0.001, 0.002, 0.004, 0.004 -> 700, 350, 180, 180.
    assert steps == {32: 700, 64: 350, 128: 180, 256: 180}
    assert report.raw["tuned_lr"] == {32: 0.002, 64: 0.002, 128: 0.002, 256: 0.002}
    assert report.raw["b_star"] == 128
    assert "**B\\* = 128**" in report.markdown and "| 256 |" in report.markdown
    # 0.002 is the top of the grid at every size: B* comes with a caution.
    assert len(report.raw["caveats"]) == 1 and "grid's edge" in report.raw["caveats"][0]
    assert "**Caution:** the tuned learning rate" in report.markdown
    # Seed 0 at both learning rates (tuning), then seed 1 at the tuned one.
    assert {(r.batch, r.learning_rate, r.seed) for r in runner.trained} >= {
        (32, 0.001, 0),
        (32, 0.002, 0),
        (32, 0.002, 1),
    }


def test_c1_warns_when_b_star_rests_on_the_evaluation_grid(configured):
    # Evaluations every 100 steps: B = 64 and 128 both first reach 1.5 at
    # step 300 (ratio 1.00: "B* = 64"), but between evaluations 128 crosses at
    # about 200 and 64 at 250 (ratio 0.80 < 0.85).
    points = {
        32: [(100, 2.2), (200, 2.0), (300, 1.9), (400, 1.8), (500, 1.5)],
        64: [(100, 2.0), (200, 1.6), (300, 1.4)],
        128: [(100, 1.9), (200, 1.5001), (300, 1.3)],
    }
    runner = FakeRunner(lambda run, groups, split: points[run.batch])
    ctx = experiments.Context(configured, runner, seeds=2)
    report = experiments.c1_saturation(ctx, batch_sizes=[32, 64, 128], target=1.5)
    assert report.raw["b_star"] == 64
    between = report.raw["interpolated_steps"]
    assert between[32] == 500 and between[64] == pytest.approx(250)
    assert between[128] == pytest.approx(200.05, abs=0.01)
    grid = [c for c in report.raw["caveats"] if "evaluation grid" in c]
    assert len(grid) == 1 and "S(2B*)/S(B*) = 0.80 < 0.85" in grid[0]
    # The curves' own spacing, not the workload's eval_every (10 here): test
    # curves are read at the kept checkpoints.
    assert "every 100 steps" in grid[0]
    assert "| 64 | 0.001" in report.markdown and "| 300 [300, 300] | 250 |" in report.markdown


def test_steps_to_interpolated():
    curve = [(100, 2.0), (200, 1.6), (300, 1.2)]
    assert runner_lib.steps_to_interpolated(curve, 1.4) == pytest.approx(250)
    assert runner_lib.steps_to_interpolated(curve, 1.6) == pytest.approx(200)
    # Already below at the first evaluation: its step (nothing is known before it).
    assert runner_lib.steps_to_interpolated(curve, 2.5) == 100
    assert runner_lib.steps_to_interpolated(curve, 1.0) is None
    assert runner_lib.steps_to_interpolated([], 1.0) is None
    # After a non-finite evaluation nothing is known in between: its own step.
    assert runner_lib.steps_to_interpolated([(100, math.nan), (200, 1.2)], 1.4) == 200


def test_c1_small_batches_train_for_min_examples(configured):
    # With 200 steps for every size, batch 32 (k = 0.001) never reaches the
    # target at step 700; min_examples = 64 x 1000 gives it 2000 steps (and
    # batch 64 1000; whole multiples of 200), so its steps to target are measured, not the budget.
    def make(run, groups, split):
        return curve(2.0, 1.0, speed_of(run), steps=run.steps(), every=run.steps() // 20)

    ctx = experiments.Context(configured, FakeRunner(make), seeds=1)
    report = experiments.c1_saturation(
        ctx, batch_sizes=[32, 64, 128, 256], target=1.5, min_examples=64_000
    )
    assert {r.batch: r.steps() for r in ctx.runner.trained} == {
        32: 2000,
        64: 1000,
        128: 600,
        256: 400,
    }
    assert report.raw["mean_steps"] == {32: 700, 64: 350, 128: 180, 256: 180}
    assert report.raw["b_star"] == 128
    budget = dict(next(r for r in ctx.runner.trained if r.batch == 32).overrides)
    assert budget["steps_per_loop"] == configured.eval_every * 10


def test_c1_warns_when_the_target_is_reached_at_the_first_evaluations(configured):
    # Every size at least 10x faster than above: B = 256 reaches 1.5 by step 20,
    # the second evaluation (every 10 steps).
    runner = FakeRunner(lambda run, groups, split: curve(2.0, 1.0, 10 * speed_of(run)))
    ctx = experiments.Context(configured, runner, seeds=1)
    report = experiments.c1_saturation(ctx, batch_sizes=[32, 64, 128, 256], target=1.5)
    assert report.raw["b_star"] is not None
    assert any("too easy" in c for c in report.raw["caveats"]), report.raw["caveats"]


def test_c1_says_so_when_nothing_saturates(configured):
    runner = FakeRunner(lambda run, groups, split: curve(2.0, 1.0, 0.0001 * run.batch))
    ctx = experiments.Context(configured, runner, seeds=1)
    report = experiments.c1_saturation(ctx, batch_sizes=[32, 64], target=1.5)
    assert report.raw["b_star"] is None and "**Not saturated**" in report.markdown


def c2_curves(run, groups, split):
    """Sync B and 2B end at 1.10 and 1.08; one group alone at 1.10, the ensemble at
    1.00; codistilled groups at 1.02, faster than sync."""
    if not run.codistill and run.num_groups == 1:
        return curve(2.0, 1.10 if run.batch == 64 else 1.08, 0.03)
    if not run.codistill:
        return curve(2.0, 1.00 if len(groups) > 1 else 1.10, 0.03)
    return curve(2.0, 1.02, 0.06)


def test_c2_target_speed_up_share_and_gate(configured):
    runner = FakeRunner(c2_curves)
    ctx = experiments.Context(configured, runner, seeds=2)
    report = experiments.c2_speedup(ctx, batch=64)
    raw = report.raw
    # The best sync baseline is 2B; its curve's lowest point is the target.
    target = min(v for _, v in curve(2.0, 1.08, 0.03))
    assert raw["target"] == pytest.approx(target)
    arms = raw["arms"]
    assert arms["sync_2b"]["steps_to_target"] == 200
    # Codistillation reaches it where 1.02 + 0.98 e^{-0.06 s} <= target.
    expected = next(s for s, v in curve(2.0, 1.02, 0.06) if v <= target)
    assert arms["cod2"]["steps_to_target"] == expected
    assert arms["cod2"]["speedup"] == pytest.approx(200 / expected)
    # Share of the ensemble's gain: (1.10 - 1.02) / (1.10 - 1.00) at their early-stopped points.
    single = min(v for _, v in curve(2.0, 1.10, 0.03))
    ensemble = min(v for _, v in curve(2.0, 1.00, 0.03))
    cod = min(v for _, v in curve(2.0, 1.02, 0.06))
    assert arms["cod2"]["capture"] == pytest.approx((single - cod) / (single - ensemble))
    # A single group never reaches the ensemble's loss: the gate passes.
    assert raw["ceiling"] == math.inf and raw["gate_passed"]
    # Each codistilled group against the same group undistilled, seed by seed.
    assert raw["paired_difference"] == pytest.approx([cod - single] * 4)


def test_c2_without_double_batch_trains_no_2b_and_targets_sync_at_b(configured):
    runner = FakeRunner(c2_curves)
    ctx = experiments.Context(configured, runner, seeds=2)
    report = experiments.c2_speedup(ctx, batch=64, double_batch=False)
    assert {r.batch for r in runner.trained} == {64}
    assert "sync_2b" not in report.raw["arms"] and report.raw["lr"]["2B"] is None
    # Sync SGD at B ends at 1.10: the target is its lowest point.
    assert report.raw["target"] == pytest.approx(min(v for _, v in curve(2.0, 1.10, 0.03)))
    assert "sync SGD at 2B not run" in report.markdown
    # The grid has two rates (equally good here: the first is kept): tuned.
    # A grid of one says it tuned nothing.
    assert "tuned LR 0.001" in report.markdown
    gin.bind_parameter("study.lr_grid.grid", [0.002])
    one = experiments.c2_speedup(experiments.Context(configured, FakeRunner(c2_curves), seeds=1))
    assert "LR 0.002, not tuned (a grid of one)" in one.markdown


def test_c2_target_is_a_loss_the_best_sync_baseline_reaches_on_its_mean_curve(configured):
    def v_shape(bottom):
        # Down to 1.0 at step `bottom`, then up again: an overfitting run.
        return [(s, 1.0 + 0.002 * abs(s - bottom)) for s in range(10, 201, 10)]

    def make(run, groups, split):
        if run.codistill:
            return [(s, 2.0 - 0.005 * s) for s in range(10, 201, 10)]
        # Seeds bottom out at different steps: each seed's early-stopped loss
        # is 1.0, but their mean curve never comes down to 1.0.
        return v_shape(50 if run.seed == 0 else 150)

    ctx = experiments.Context(configured, FakeRunner(make), seeds=2)
    raw = experiments.c2_speedup(ctx, batch=64, double_batch=False).raw
    mean = [(a[0], (a[1] + b[1]) / 2) for a, b in zip(v_shape(50), v_shape(150), strict=True)]
    assert raw["target"] == pytest.approx(min(v for _, v in mean)) and raw["target"] > 1.0
    assert raw["arms"]["sync_b"]["steps_to_target"] == 50
    # Codistillation's straight line reaches it where 2 - 0.005 s <= 1.1.
    assert raw["arms"]["cod2"]["steps_to_target"] == 180
    assert raw["arms"]["cod2"]["speedup"] == pytest.approx(50 / 180)


def test_report_lists_the_bindings_the_study_ran_with(configured, tmp_path):
    from study import report as report_lib

    rep = experiments.Report("a title", "a table", {"x": 1})
    bindings = ("study.lr_grid.grid = [0.004]", "study.c2_speedup.double_batch = False")
    markdown = report_lib.write(
        str(tmp_path), "c2_speedup", configured, rep, FakeRunner(None), 3, False, bindings
    )
    assert "`study.lr_grid.grid = [0.004]`; `study.c2_speedup.double_batch = False`" in markdown
    with open(tmp_path / "c2_speedup-fake.json") as f:
        assert json.load(f)["gin_bindings"] == list(bindings)


def test_early_stopping_reads_the_test_loss_where_validation_is_lowest():
    val = [(10, 1.0), (20, 0.8), (30, 0.9)]
    test = [(10, 1.1), (20, 0.95), (30, 0.7)]
    assert runner_lib.at_best_validation(val, test) == (20, 0.95)


def test_recipe_shares_per_seed(configured):
    def make(run, groups, split):
        if not run.codistill:
            return curve(2.0, 1.00 if len(groups) > 1 else 1.10, 0.03)
        weight = dict(run.overrides).get("distill_weight", 1.0)
        if run.num_groups == 3:
            # Groups 0, 1, 2 at 1.08, 1.06, 1.04: their mean 1.06 is 40%.
            return curve(2.0, 1.08 - 0.02 * groups[0], 0.03)
        return curve(2.0, 1.10 - 0.05 * weight, 0.03)

    ctx = experiments.Context(configured, FakeRunner(make), seeds=2)
    variants = {
        "w1": {"distill_weight": 1.0},
        "w2": {"distill_weight": 2.0},
        "3 groups": {"groups": 3},
    }
    report = experiments.recipe(ctx, variants=variants, batch=64)
    shares = {name: v["shares"] for name, v in report.raw["variants"].items()}
    # A drop of 0.05 per unit of weight, against the ensemble's 0.10.
    assert shares["w1"] == pytest.approx([0.5, 0.5], abs=1e-6)
    assert shares["w2"] == pytest.approx([1.0, 1.0], abs=1e-6)
    # Per seed, the mean of that seed's three groups (not of the first two).
    assert shares["3 groups"] == pytest.approx([0.4, 0.4], abs=1e-6)
    assert report.raw["best"] == "w2"


def test_recipe_variant_with_its_own_learning_rate_and_its_speed_up(configured):
    def make(run, groups, split):
        if not run.codistill:
            # Sync SGD at 2B (batch 128) is the best baseline: floor 1.08.
            floor = 1.08 if run.batch == 128 else (1.00 if len(groups) > 1 else 1.10)
            return curve(2.0, floor, 0.03)
        # The variant's own rate doubles its speed.
        return curve(2.0, 1.05, 0.06 if run.learning_rate == 0.004 else 0.03)

    runner = FakeRunner(make)
    ctx = experiments.Context(configured, runner, seeds=2)
    variants = {"w1": {}, "fast": {"learning_rate": 0.004}}
    report = experiments.recipe(ctx, variants=variants, batch=64)
    fast = [r for r in runner.trained if r.codistill and r.learning_rate == 0.004]
    assert len(fast) == 2 and all("learning_rate" not in dict(r.overrides) for r in fast)
    # The independent pair and "w1" keep sync SGD's tuned rate at B.
    assert {r.learning_rate for r in runner.trained if r.num_groups == 2} == {0.001, 0.004}
    # Sync SGD at B and 2B trained with every seed: C2's baselines.
    assert {(r.batch, r.seed) for r in runner.trained if r.num_groups == 1} >= {
        (b, s) for b in (64, 128) for s in (0, 1)
    }
    raw = report.raw
    target = min(v for _, v in curve(2.0, 1.08, 0.03))
    assert raw["target"] == pytest.approx(target) and raw["sync_steps"] == 200
    slow = next(s for s, v in curve(2.0, 1.05, 0.03) if v <= target)
    quick = next(s for s, v in curve(2.0, 1.05, 0.06) if v <= target)
    assert raw["variants"]["w1"]["steps_to_target"] == slow
    assert raw["variants"]["fast"]["speedup"] == pytest.approx(200 / quick)
    assert "| fast | learning_rate=0.004 |" in report.markdown
    assert "speed-up vs best sync" in report.markdown
    without = experiments.recipe(
        experiments.Context(configured, FakeRunner(make), seeds=2), variants, 64, speedup=False
    )
    assert "speed-up" not in without.markdown and "target" not in without.raw


def test_c8_churn_of_final_and_early_stopped_models_with_every_n(configured):
    class ChurnRunner(FakeRunner):
        def churn(self, specs, out, bindings):
            self.specs.append(specs)
            # Codistilled models disagree 1/N as much as one group; early-
            # stopped models half as much as final ones.
            runs = [r for r in self.trained if self.root(r) in specs[0]]
            value = 0.1 / (runs[0].num_groups if runs[0].codistill else 1)
            value /= 2 if "@" in specs[0] else 1
            stats = {"mean": value, "min": value, "max": value}
            return {"mean_abs_diff": stats, "disagreement": stats}

    # Overfitting curves: lowest at step 110 (seed 0) and 130 (seeds 1, 2);
    # group 1 of the independent runs validates lowest at step 80.
    def rise(run, groups, split):
        if split == "val" and groups == [1] and not run.codistill:
            return 0.002
        return 0.001 if run.seed == 0 else 0.0005

    def make(run, groups, split):
        return curve(2.0, 1.1, 0.03, rise=rise(run, groups, split))

    runner = ChurnRunner(make)
    runner.specs = []
    ctx = experiments.Context(configured, runner, seeds=2)
    report = experiments.c8_churn(ctx, retrains=3, batch=64, groups=(2, 4), learning_rate=0.004)
    cod = [r for r in runner.trained if r.codistill]
    assert sorted((r.num_groups, r.seed) for r in cod) == [(n, s) for n in (2, 4) for s in range(3)]
    assert {r.learning_rate for r in cod} == {0.004}
    assert all(dict(r.overrides) == {} for r in cod)
    assert len(report.runs) == 3 + 6
    final, stopped = report.raw["final"], report.raw["early-stopped"]
    four = "4-way codistillation (group 0 of each retrain)"
    assert final[four]["ratio"] == pytest.approx(0.25) and stopped[four]["ratio"] == pytest.approx(
        0.25
    )
    assert final[four]["churn"]["mean_abs_diff"]["mean"] == pytest.approx(0.025)
    assert stopped[four]["churn"]["mean_abs_diff"]["mean"] == pytest.approx(0.0125)
    # Final models: the last step; early-stopped: where validation is lowest.
    val = [curve(2.0, 1.1, 0.03, rise=r) for r in (0.001, 0.0005, 0.0005)]
    best = [min(c, key=lambda p: p[1])[0] for c in val]
    assert final[four]["steps"] == [200] * 3 and stopped[four]["steps"] == best
    assert best[0] != best[1]
    # The ensemble's step: where its members' mean validation curve is lowest.
    ensemble = [s for s in runner.specs if s[0].endswith("0+1") or "0+1@" in s[0]]
    members_val = [
        runner_lib.mean_curve([curve(2.0, 1.1, 0.03, rise=r), curve(2.0, 1.1, 0.03, rise=0.002)])
        for r in (0.001, 0.0005, 0.0005)
    ]
    ens_best = [min(c, key=lambda p: p[1])[0] for c in members_val]
    assert ens_best != best and ens_best != [80] * 3
    assert [spec.rsplit("@", 1)[1] for spec in ensemble[1]] == [str(b) for b in ens_best]
    assert "| 4-way codistillation (group 0 of each retrain) |" in report.markdown
    assert "| 0.25x, 0.25x |" in report.markdown
    assert "**early-stopped models**" in report.markdown
    assert "(codistillation: 0.004)" in report.markdown
    with pytest.raises(ValueError, match="study.c8_churn.groups is empty"):
        experiments.c8_churn(ctx, retrains=3, batch=64, groups=())


def test_c5_reports_the_teachers_age(configured):
    def make(run, groups, split):
        if not run.codistill:
            return curve(2.0, 1.00 if len(groups) > 1 else 1.10, 0.03)
        return curve(2.0, 1.05, 0.03)

    ctx = experiments.Context(configured, FakeRunner(make), seeds=1)
    report = experiments.c5_staleness(ctx, intervals=[1, 10])
    assert report.raw[1]["age"] == 3.0 and report.raw[10]["share"] == pytest.approx(0.5, abs=1e-6)


def test_gin_values_are_written_as_gin_reads_them():
    assert runner_lib.gin_value((16,)) == "(16,)"
    assert runner_lib.gin_value([1, "a"]) == "[1, 'a']"
    assert (
        runner_lib.gin_value("@tf_codistill.losses.ReverseKL()")
        == "@tf_codistill.losses.ReverseKL()"
    )
    assert runner_lib.gin_bindings({"train_steps": 3, "a.b": None}) == [
        "tf_codistill.train_lib.train_group.train_steps = 3",
        "a.b = None",
    ]


def test_runs_are_kept_by_configuration_not_label(configured):
    a = runner_lib.Run(configured, "one label", batch=64, learning_rate=0.001)
    b = runner_lib.Run(configured, "another label", batch=64, learning_rate=0.001)
    c = runner_lib.Run(configured, "one label", batch=64, learning_rate=0.002)
    assert a.key() == b.key() != c.key()


def reproduce(*args, cwd=BENCHMARKS, timeout=900):
    return subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "reproduce.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


def test_list_plans_every_experiment_of_every_workload(tmp_path):
    result = reproduce("--list", f"--work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("c1_saturation", "c2_speedup", "recipe", "c8_churn"):
        assert name in result.stdout
    assert "mnist1d" in result.stdout and "teacher_student" in result.stdout


@pytest.mark.slow
def test_quick_c2_trains_real_runs_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    # One seed: 8 train.py processes instead of 14 (the arithmetic over seeds
    # is tested above with curves written down).
    args = ("--quick", "--seeds=1", f"--work_dir={tmp_path}", f"--out_dir={out}")
    result = reproduce("c2_speedup:teacher_student", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "expect about" in result.stdout.splitlines()[0]
    name = "c2_speedup-teacher_student-quick"
    with open(out / f"{name}.json") as f:
        raw = json.load(f)
    arms = raw["result"]["arms"]
    assert set(arms) == {"sync_b", "sync_2b", "single", "ensemble", "cod2"}
    # Every arm, each group's curve read on the test split.
    assert len(arms["sync_b"]["stopped"]) == 1 and len(arms["cod2"]["stopped"]) == 2
    assert all(math.isfinite(loss) for _, loss in arms["cod2"]["stopped"])
    assert (out / f"{name}.png").exists()
    markdown = (out / f"{name}.md").read_text()
    assert "| sync SGD, batch 2B = 32 |" in markdown and "Ceiling (gate G2)" in markdown
    # The runs are real: each group's test curve has one point per published checkpoint.
    run_dirs = list((tmp_path / "runs").iterdir())
    curves = [p for d in run_dirs for p in (d / "test").glob("curve_*.json")]
    assert curves and all(len(json.loads(p.read_text())) >= 2 for p in curves)
    # Kept runs are read again, not retrained.
    again = reproduce("c2_speedup:teacher_student", *args)
    assert again.returncode == 0 and "every run is kept" in again.stdout
    assert "] training" not in again.stdout


def workload_config(name, bindings=()):
    """A workload's study config (gin/reproduce/<name>.gin), as the harness parses it."""
    gin.clear_config()
    try:
        # enabled_experiments is registered by reproduce.py, whose flags this
        # process must not define (other test modules define some of them).
        runner_lib.parse_study_config(
            [os.path.join(runner_lib.GIN_DIR, f"{name}.gin")],
            bindings,
            skip_unknown=["study.enabled_experiments"],
        )
        return runner_lib.Workload()
    finally:
        gin.clear_config()


# The schedule overlays (gin/reproduce/schedules/), with the workload each one
# is included on top of.
OVERLAYS = {
    "cosine_mnist1d": "mnist1d",
    "cosine_mnist1d_10k": "mnist1d_10k",
    "cosine_lm": "lm",
}


def overlay(name):
    return f"include 'schedules/{name}.gin'"


@pytest.mark.parametrize(
    "name, bindings",
    [(n, ()) for n in ["lm", "mnist1d", "mnist1d_10k", "teacher_student"]]
    + [(w, (overlay(o),)) for o, w in OVERLAYS.items()],
)
def test_every_binding_of_a_workload_names_a_parameter_of_its_groups(name, bindings):
    # What the harness hands train.py and the test evaluation must parse with
    # the workload's own gin files: a misspelt name fails here, not an hour
    # into a study.
    from tf_codistill import gin_utils

    w = workload_config(name, bindings)
    run = runner_lib.Run(w, "a run", batch=2 * w.batch, learning_rate=0.5)
    for extra in ({}, w.quick_bindings, w.test_bindings):
        run_bindings = runner_lib.gin_bindings({**run.bindings(), **extra})
        gin.clear_config()
        try:
            gin_utils.parse(list(w.gin_files), run_bindings, finalize=False)
            assert gin_utils.query(f"{runner_lib.TRAIN_GROUP}.global_batch_size") == 2 * w.batch
        finally:
            gin.clear_config()


@pytest.mark.parametrize(
    "workload, report",
    [
        ("mnist1d", "mnist1d_cosine/recipe-mnist1d.json"),
        ("mnist1d", "mnist1d_cosine_500/recipe-mnist1d.json"),
        ("mnist1d", "mnist1d_cosine_700/recipe-mnist1d.json"),
        ("mnist1d_10k", "mnist1d_10k_cosine/recipe-mnist1d_10k.json"),
        ("lm", "lm_b512_cosine/recipe-lm.json"),
    ],
)
def test_a_schedule_overlay_plans_exactly_the_runs_its_report_lists(workload, report):
    # The report's recorded --gin_bindings (an overlay include first) replayed
    # through the recipe with curves that favour the rates the study tuned:
    # it must ask for exactly the runs (keys: a hash of every binding a run
    # gets) that the committed report lists, so running it reuses them.
    with open(os.path.join(runner_lib.REPO, "docs", "results", report)) as f:
        recorded = json.load(f)
    assert recorded["gin_bindings"][0].startswith("include 'schedules/")
    tuned = {recorded["result"]["batch"]: recorded["result"]["lr"]}
    for r in recorded["runs"]:
        m = re.match(r"sync SGD, batch (\d+), LR ([0-9.e-]+), seed", r["label"])
        if m:
            tuned[int(m.group(1))] = float(m.group(2))

    def make_curve(run, groups, split):
        # The tuned rate reaches the lowest loss; every step is evaluated.
        best = run.learning_rate == tuned.get(run.batch)
        return [(s, (0.5 if best else 1.0) + 1.0 / s) for s in range(10, 1001, 10)]

    gin.clear_config()
    try:
        runner_lib.parse_study_config(
            [os.path.join(runner_lib.GIN_DIR, f"{workload}.gin")],
            runner_lib.study_bindings(recorded["gin_bindings"]),
            skip_unknown=["study.enabled_experiments"],
        )
        runner = FakeRunner(make_curve)
        ctx = experiments.Context(runner_lib.Workload(), runner, seeds=recorded["seeds"])
        planned = experiments.recipe(ctx)
    finally:
        gin.clear_config()
    assert {r.key() for r in planned.runs} == {r["key"] for r in recorded["runs"]}
    assert {r["key"] for r in recorded["runs"]} <= {r.key() for r in runner.trained}


def test_quick_shrinks_an_overlaid_study():
    # Overlays first, then quick.gin, then the rest: --quick with an overlay
    # still trains 20 steps, and a macro after the overlay still applies.
    bindings = runner_lib.study_bindings(
        ["COSINE_STEPS = 700", overlay("cosine_mnist1d"), "study.Workload.eval_every = 5"],
        quick=True,
    )
    assert bindings == [
        overlay("cosine_mnist1d"),
        "include 'quick.gin'",
        "COSINE_STEPS = 700",
        "study.Workload.eval_every = 5",
    ]
    w = workload_config("mnist1d", bindings)
    assert (w.train_steps, w.eval_every) == (20, 5)
    assert w.bindings["keras.optimizers.schedules.CosineDecay.decay_steps"] == 700
    assert runner_lib.study_bindings(["a = 1"]) == ["a = 1"]


def test_lm_quick_reads_bundled_text_and_evaluates_the_test_split_on_every_batch():
    # --quick must run without the Debian packages: the bundled text, by
    # paths relative to the repository (where the harness starts the runs).
    w = workload_config("lm")
    files = {k: v for k, v in w.quick_bindings.items() if k.endswith("_files")}
    assert set(files) == {
        f"tf_codistill.datasets.text.TextCorpus.{f}"
        for f in ("train_files", "eval_files", "test_files")
    }
    for path in files.values():
        assert not os.path.isabs(path) and os.path.exists(os.path.join(runner_lib.REPO, path))
    assert w.test_bindings == {"tf_codistill.datasets.text.lm_input_fn.eval_split": "test"}
    # The streams are the batch; the model has no per-batch size to bind.
    assert w.batch_bindings == ("global_batch_size",)
    assert w.loss_key == "token_cross_entropy"
