"""The study's experiments: which runs each needs and what it concludes from them.

Every experiment is a gin-configurable function `fn(ctx, ...) -> Report`; its
parameters for a workload are bound in `gin/reproduce/<workload>.gin`. Runs
are `runner.Run`s trained through `ctx.runner` (real `train.py` processes,
kept by configuration hash, so experiments share runs: C2's baselines are
C1's runs, the recipe's reference pair is C2's).

Hygiene, for every experiment: `ctx.seeds` retrains per arm (model and data
seeds), reported as mean and range; the learning rate of every batch size is
tuned on a x2 grid on the *validation* split (`tuned_lr`), and every number
in a table is read on the held-out *test* split, at the step the validation
split chose where a run overfits (`runner.at_best_validation`). A
codistilling group is compared with the same group trained without
distillation (same seeds, same shard, same order): the independent pair,
whose two groups are also the members of the ensemble baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any
from typing import Optional

import gin
from study import runner as runner_lib
from study.runner import Run
from study.runner import mean_curve
from study.runner import spread
from study.runner import steps_to
from study.runner import steps_to_interpolated


@dataclasses.dataclass
class Context:
    """What every experiment gets: the workload, the runner and the seeds."""

    workload: runner_lib.Workload
    runner: runner_lib.Runner
    seeds: int = 3
    quick: bool = False


@dataclasses.dataclass
class Report:
    """An experiment's outcome: tables for the page, raw numbers, plots.

    Attributes:
      title: what was measured.
      markdown: the tables and their notes.
      raw: numbers for the JSON file.
      plots: `(kind, data)` pairs that `report.py` draws.
      runs: every run it used (for the run list and the training time).
    """

    title: str
    markdown: str
    raw: dict[str, Any]
    plots: list = dataclasses.field(default_factory=list)
    runs: list = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------
# Arms.


def sync(ctx: Context, batch: int, lr: float, seed: int, **overrides) -> Run:
    """One group (sync SGD) on all the data at `batch`."""
    return Run(
        ctx.workload,
        f"sync SGD, batch {batch}, LR {lr:g}, seed {seed}",
        1,
        False,
        batch,
        lr,
        seed,
        tuple(sorted(overrides.items())),
    )


def independent(ctx: Context, batch: int, lr: float, seed: int, groups: int = 2, **overrides):
    """`groups` independent groups: the same groups as a codistilling run, undistilled."""
    return Run(
        ctx.workload,
        f"{groups} independent groups, batch {batch}, LR {lr:g}, seed {seed}",
        groups,
        False,
        batch,
        lr,
        seed,
        tuple(sorted(overrides.items())),
    )


def codistill(ctx: Context, batch: int, lr: float, seed: int, groups: int = 2, **overrides):
    label = f"{groups}-way codistillation, batch {batch}, LR {lr:g}, seed {seed}"
    if overrides:
        label += " (" + ", ".join(f"{_short(k)}={v}" for k, v in sorted(overrides.items())) + ")"
    return Run(ctx.workload, label, groups, True, batch, lr, seed, tuple(sorted(overrides.items())))


def _own_lr(recipe: dict, lr: float) -> tuple[float, dict]:
    """Codistillation bindings without `learning_rate`: the groups' own rate (default `lr`)."""
    kw = dict(recipe)
    return kw.pop("learning_rate", lr), kw


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def seeds(ctx: Context) -> range:
    return range(ctx.seeds)


# ----------------------------------------------------------------------------
# Learning-rate tuning (validation split).


@gin.configurable(module="study")
def lr_grid(batch: int, grid: Any = gin.REQUIRED) -> list[float]:
    """The learning rates tried at `batch`: `grid` is a list, or a dict by batch size."""
    if isinstance(grid, dict):
        if batch not in grid:
            raise ValueError(f"study.lr_grid.grid has no entry for batch {batch}")
        return list(grid[batch])
    return list(grid)


@gin.configurable(module="study")
def tuning_target(value: Optional[float] = None) -> Optional[float]:
    """The validation loss whose steps-to-reach picks the learning rate (None: best loss)."""
    return value


def tuned_lr(ctx: Context, batch: int, **overrides) -> tuple[float, list[dict[str, Any]]]:
    """The best learning rate at `batch`, chosen on validation with seed 0.

    Best: fewest steps to `tuning_target` (ties and runs that never reach it
    ranked by their lowest validation loss); without a target, the lowest
    validation loss. Returns the rate and what every rate did.
    """
    grid = lr_grid(batch)
    runs = [sync(ctx, batch, lr, 0, **overrides) for lr in grid]
    ctx.runner.train(runs)
    target = tuning_target()
    table = []
    for lr, run in zip(grid, runs, strict=True):
        curve = ctx.runner.val_curve(run, 0)
        finite = [v for _, v in curve if math.isfinite(v)]
        best = min(finite) if finite else float("inf")
        reached = steps_to(curve, target) if target is not None else None
        table.append({"lr": lr, "best_val": best, "steps_to_target": reached})

    def rank(row):
        steps = row["steps_to_target"]
        return (steps if steps is not None else math.inf, row["best_val"])

    best_row = min(table, key=rank)
    if best_row["lr"] in (grid[0], grid[-1]) and len(grid) > 1:
        best_row["at_grid_edge"] = True
    return best_row["lr"], table


def _b_star_caveats(
    b_star, grids, means, interval: int, between, saturation_ratio: float
) -> list[str]:
    """Why a B* found may not be one: an untuned rate, a target too easy to
    resolve, or a ratio that holds only on the evaluation grid (`interval`: the
    steps between the test curves' points; `between`: steps to target
    interpolated between them, per size)."""
    if not b_star:
        return []
    caveats = []
    pair = (b_star, 2 * b_star)
    if all(between.get(b) is not None for b in pair):
        ratio = between[2 * b_star] / between[b_star]
        if ratio < saturation_ratio:
            caveats.append(
                f"between evaluations (the mean curves interpolated linearly), B = "
                f"{2 * b_star} reaches the target at step {between[2 * b_star]:.0f} and "
                f"B = {b_star} at {between[b_star]:.0f}: S(2B*)/S(B*) = {ratio:.2f} < "
                f"{saturation_ratio}. B* rests on the evaluation grid (every {interval} "
                "steps): evaluate more often before trusting it."
            )
    if any(r.get("at_grid_edge") for b in pair for r in grids[b]):
        caveats.append(
            f"the tuned learning rate of B = {b_star} or {2 * b_star} is at its grid's edge: "
            "widen the grid (study.lr_grid.grid) before trusting B*."
        )
    if means[2 * b_star] <= 2 * interval:
        caveats.append(
            f"B = {2 * b_star} reached the target within two evaluations (every {interval} "
            "steps): the target is too easy to tell the sizes apart; lower it "
            "(study.c1_saturation.target) or evaluate more often."
        )
    return caveats


def _lr_note(lr: float, table: Sequence[dict[str, Any]]) -> str:
    """`tuned LR x`, or says that a grid of one value tuned nothing."""
    return f"tuned LR {lr:g}" if len(table) > 1 else f"LR {lr:g}, not tuned (a grid of one)"


# ----------------------------------------------------------------------------
# Reading arms.


@dataclasses.dataclass
class Arm:
    """One arm over seeds: per seed, its test curve and early-stopped test loss."""

    label: str
    curves: list  # per seed: [(step, test loss)]
    stopped: list  # per seed: (step chosen on validation, test loss there)

    @property
    def mean(self) -> list[tuple[int, float]]:
        return mean_curve(self.curves)

    def stopped_loss(self) -> tuple[float, float, float]:
        return spread([v for _, v in self.stopped])

    def final_loss(self) -> tuple[float, float, float]:
        return spread([c[-1][1] for c in self.curves])


def read_group(ctx: Context, runs: Sequence[Run], group: int, label: str) -> Arm:
    """Group `group` of each seed's run."""
    curves, stopped = [], []
    for run in runs:
        test = ctx.runner.test_curve(run, [group])
        val = ctx.runner.val_curve(run, group)
        curves.append(test)
        stopped.append(runner_lib.at_best_validation(val, test))
    return Arm(label, curves, stopped)


def read_groups(ctx: Context, runs: Sequence[Run], label: str) -> Arm:
    """Every group of each seed's run, as one arm (a seed-and-group sample)."""
    curves, stopped = [], []
    for run in runs:
        for g in range(run.num_groups):
            test = ctx.runner.test_curve(run, [g])
            curves.append(test)
            stopped.append(runner_lib.at_best_validation(ctx.runner.val_curve(run, g), test))
    return Arm(label, curves, stopped)


def read_ensemble(ctx: Context, runs: Sequence[Run], label: str) -> Arm:
    """The ensemble of each seed's run's groups (averaged probabilities)."""
    curves, stopped = [], []
    groups = list(range(runs[0].num_groups))
    for run in runs:
        test = ctx.runner.test_curve(run, groups)
        curves.append(test)
        # The ensemble's early-stopping step: where its mean member validation
        # loss is lowest would favour it less than its own; use its test
        # curve's step chosen on the members' mean validation curve.
        val = mean_curve([ctx.runner.val_curve(run, g) for g in groups])
        stopped.append(runner_lib.at_best_validation(val, test))
    return Arm(label, curves, stopped)


def _fmt(loss: float, offset: float) -> str:
    return "n/a" if not math.isfinite(loss) else f"{loss - offset:.4f}"


def _fmt_spread(values: tuple[float, float, float], offset: float) -> str:
    mean, lo, hi = values
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean - offset:.4f} [{lo - offset:.4f}, {hi - offset:.4f}]"


def _fmt_steps(s: Optional[float]) -> str:
    return "never" if s is None else f"{s:.0f}"


def _loss_name(ctx: Context) -> str:
    w = ctx.workload
    return "excess test loss" if w.offset else "test loss"


def capture(single: float, ensemble: float, candidate: float) -> float:
    """Share of the ensemble's gain over `single` that `candidate` achieves."""
    gain = single - ensemble
    return float("nan") if not gain > 0 else (single - candidate) / gain


def _sync_runs(ctx: Context, batch: int, lr_b: float, lr_2b: Optional[float]) -> dict:
    """Sync SGD at B (and at 2B unless `lr_2b` is None), every seed: the speed-up's baselines."""
    runs = {"sync_b": [sync(ctx, batch, lr_b, s) for s in seeds(ctx)]}
    if lr_2b is not None:
        runs["sync_2b"] = [sync(ctx, 2 * batch, lr_2b, s) for s in seeds(ctx)]
    return runs


def _read_syncs(ctx: Context, batch: int, runs: dict) -> dict[str, Arm]:
    labels = {
        "sync_b": f"sync SGD, batch B = {batch}",
        "sync_2b": f"sync SGD, batch 2B = {2 * batch}",
    }
    return {key: read_group(ctx, rs, 0, labels[key]) for key, rs in runs.items()}


def _best_sync(arms: dict[str, Arm]) -> tuple[str, float, Optional[float]]:
    """The best sync baseline, its best loss (the speed-up's target) and the step it gets there.

    Steps to a target are read on mean curves over seeds, so the target is
    the lowest point of the best sync baseline's mean curve: a loss that
    baseline does reach. (The mean of its seeds' early-stopped losses, used
    before, can lie below its mean curve everywhere when the seeds bottom
    out at different steps: measured on MNIST-1D with 10,000 examples.)
    """

    def lowest(key: str) -> float:
        return min((v for _, v in arms[key].mean if math.isfinite(v)), default=math.inf)

    best = min((k for k in arms if k.startswith("sync_")), key=lowest)
    target = lowest(best)
    return best, target, (steps_to(arms[best].mean, target) if math.isfinite(target) else None)


# ----------------------------------------------------------------------------
# C1: saturation.


def _budget(w: runner_lib.Workload, batch: int, min_examples: int) -> dict[str, int]:
    """Overrides that give `batch` at least `min_examples` examples of training."""
    factor = math.ceil(min_examples / (batch * w.train_steps)) if min_examples else 1
    if factor <= 1:
        return {}
    interval = w.bindings.get("exchange_every_n_steps")
    return {
        "train_steps": w.train_steps * factor,
        "steps_per_loop": w.eval_every * factor,
        **({"exchange_every_n_steps": interval * factor} if interval else {}),
    }


@gin.configurable(module="study")
def c1_saturation(
    ctx: Context,
    batch_sizes: Sequence[int] = gin.REQUIRED,
    target: Optional[float] = None,
    saturation_ratio: float = 0.85,
    min_examples: int = 0,
) -> Report:
    """Steps to a target test loss against batch size, each at its tuned learning rate.

    Args:
      batch_sizes: increasing, each twice the previous.
      target: the test loss to reach (None: the highest of the sizes' best
        validation losses, so that every size reaches it).
      saturation_ratio: B* is the smallest size with S(2B*) / S(B*) at least this.
      min_examples: small batches train for at least this many examples
        (`train_steps` grows as 1/B below `min_examples / train_steps`, the
        evaluation and exchange intervals with it), so that a small batch is
        not cut off by the step budget before it reaches the target: with
        equal step budgets S(B) of the small sizes measures the budget.
    """
    w = ctx.workload
    budget = {b: _budget(w, b, min_examples) for b in batch_sizes}
    tuned, grids, arms, all_runs = {}, {}, {}, []
    for batch in batch_sizes:
        tuned[batch], grids[batch] = tuned_lr(ctx, batch, **budget[batch])
        all_runs += [sync(ctx, batch, lr, 0, **budget[batch]) for lr in lr_grid(batch)]
    runs = {b: [sync(ctx, b, tuned[b], s, **budget[b]) for s in seeds(ctx)] for b in batch_sizes}
    ctx.runner.train([r for b in batch_sizes for r in runs[b]])
    all_runs += [r for b in batch_sizes for r in runs[b]]
    for b in batch_sizes:
        arms[b] = read_group(ctx, runs[b], 0, f"batch {b}")
    if target is None:
        # The highest of the sizes' best mean losses: every size reaches it.
        target = max(min(v for _, v in arms[b].mean) for b in batch_sizes)
    steps, means, between = {}, {}, {}
    for b in batch_sizes:
        steps[b] = [steps_to(c, target) for c in arms[b].curves]
        means[b] = steps_to(arms[b].mean, target)
        between[b] = steps_to_interpolated(arms[b].mean, target)
    b_star = None
    rows = [
        f"Target: {_fmt(target, w.offset)} {_loss_name(ctx)}. Steps to reach it per batch size, "
        f"on the mean test curve over {ctx.seeds} seeds (in brackets: each seed's own steps; "
        "between evaluations: the mean curve interpolated linearly), "
        "each size at its learning rate tuned on a x2 grid on the validation split (seed 0).",
        "",
        "| batch | tuned LR (grid) | steps to target | between evaluations | S(B) / S(B/2) "
        "| best test loss | noise scale at the end |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    previous = None
    for b in batch_sizes:
        ratio = "-"
        if previous is not None and means[previous] and means[b]:
            ratio = f"{means[b] / means[previous]:.2f}"
        per_seed = ", ".join(_fmt_steps(s) for s in steps[b])
        cell = f"{_fmt_steps(means[b])} [{per_seed}]"
        grid = ", ".join(f"{r['lr']:g}" for r in grids[b])
        edge = " (grid edge)" if any(r.get("at_grid_edge") for r in grids[b]) else ""
        noise = _final_noise_scale(ctx, runs[b])
        interpolated = f"{between[b]:.0f}" if between[b] is not None else "never"
        rows.append(
            f"| {b} | {tuned[b]:g}{edge} ({grid}) | {cell} | {interpolated} | {ratio} | "
            f"{_fmt_spread(arms[b].stopped_loss(), w.offset)} | {noise} |"
        )
        previous = b
    for b in batch_sizes:
        nxt = 2 * b
        if nxt in means and means[b] and means[nxt] and means[nxt] / means[b] >= saturation_ratio:
            b_star = b
            break
    verdict = (
        f"**B\\* = {b_star}**: S(2B\\*)/S(B\\*) = {means[2 * b_star] / means[b_star]:.2f} "
        f">= {saturation_ratio}."
        if b_star
        else f"**Not saturated** within {list(batch_sizes)}: doubling the batch still cut "
        f"the steps by more than {1 / saturation_ratio:.2f}x at every size."
    )
    # The test curves are evaluated at the kept checkpoints, which may be
    # sparser than `eval_every` (one per exchange): their spacing is the
    # resolution of steps-to-target.
    spacing = w.eval_every
    if b_star:
        gaps = [
            b2[0] - b1[0]
            for b in (b_star, 2 * b_star)
            for b1, b2 in itertools.pairwise(arms[b].mean)
        ]
        spacing = max(gaps, default=spacing)
    caveats = _b_star_caveats(b_star, grids, means, spacing, between, saturation_ratio)
    rows += ["", verdict] + [f"**Caution:** {c}" for c in caveats]
    raw = {
        "target": target,
        "tuned_lr": tuned,
        "lr_grids": grids,
        "steps": steps,
        "mean_steps": means,
        "interpolated_steps": between,
        "b_star": b_star,
        "caveats": caveats,
    }
    plots = [
        (
            "scaling",
            {
                "steps": {b: steps[b] for b in batch_sizes},
                "mean": means,
                "b_star": b_star,
                "title": f"C1 {w.name}: steps to {_loss_name(ctx)} "
                f"{_fmt(target, w.offset)} vs batch size (tuned LR)",
            },
        ),
        (
            "curves",
            {
                "arms": {arms[b].label: arms[b].curves for b in batch_sizes},
                "target": target,
                "offset": w.offset,
                "ylabel": _loss_name(ctx),
                "title": f"C1 {w.name}: sync SGD at each batch size (mean, range over seeds)",
            },
        ),
    ]
    return Report(
        "C1: where doubling the batch stops helping", "\n".join(rows), raw, plots, all_runs
    )


def _final_noise_scale(ctx: Context, runs: Sequence[Run]) -> str:
    values = []
    for run in runs:
        final = ctx.runner.metrics(run, 0).get("final", {})
        value = final.get("train", {}).get("gradient_noise_scale")
        if value is not None and math.isfinite(value):
            values.append(value)
    if not values:
        return "-"
    mean, lo, hi = spread(values)
    return f"{mean:.0f} [{lo:.0f}, {hi:.0f}]"


# ----------------------------------------------------------------------------
# The gate and C2.


@gin.configurable(module="study")
def c2_speedup(
    ctx: Context,
    batch: Optional[int] = None,
    groups: Sequence[int] = (2,),
    ceiling_gate: float = 1.3,
    double_batch: bool = True,
    **recipe: Any,
) -> Report:
    """Codistillation at B per group vs sync SGD at B and 2B, and the ensemble ceiling.

    Args:
      batch: B (default: the workload's batch, B* from c1_saturation).
      groups: numbers of codistilling groups (N-way; 2 is the paper's).
      ceiling_gate: below this steps ratio the ensemble itself cannot show a
        2x speed-up: reported as the gate.
      double_batch: also train sync SGD at 2B (tuned there). False leaves it
        out, for a measurement sized to a budget: the target is then sync
        SGD at B's loss, and the table says that 2B was not run.
      **recipe: codistillation bindings (the recommended recipe) for the
        codistilling runs.
    """
    w = ctx.workload
    batch = batch or w.batch
    lr_b, grid_b = tuned_lr(ctx, batch)
    lr_2b = tuned_lr(ctx, 2 * batch)[0] if double_batch else None
    syncs = _sync_runs(ctx, batch, lr_b, lr_2b)
    ind = [independent(ctx, batch, lr_b, s) for s in seeds(ctx)]
    cods = {n: [codistill(ctx, batch, lr_b, s, n, **recipe) for s in seeds(ctx)] for n in groups}
    runs = [r for rs in syncs.values() for r in rs] + ind + [r for n in groups for r in cods[n]]
    ctx.runner.train(runs)
    arms = _read_syncs(ctx, batch, syncs)
    arms["single"] = read_groups(ctx, ind, "one group alone (same seeds, shard, order)")
    arms["ensemble"] = read_ensemble(ctx, ind, "2-way ensemble of the independent groups")
    for n in groups:
        arms[f"cod{n}"] = read_groups(ctx, cods[n], f"{n}-way codistillation (each group)")
    best_sync, target, sync_steps = _best_sync(arms)
    ens_loss = arms["ensemble"].stopped_loss()[0]
    single_loss = arms["single"].stopped_loss()[0]
    single_to_ens = steps_to(arms["single"].mean, ens_loss)
    ens_to_ens = steps_to(arms["ensemble"].mean, ens_loss)
    ceiling = None
    if ens_to_ens:
        ceiling = (single_to_ens or math.inf) / ens_to_ens
    doubled = f"2B: {lr_2b:g}" if double_batch else "sync SGD at 2B not run"
    rows = [
        f"B = {batch} per group ({_lr_note(lr_b, grid_b)}; {doubled}), {w.train_steps} steps, "
        f"{ctx.seeds} seeds. Losses: {_loss_name(ctx)} at the step the validation split "
        "chose (mean [min, max] over seeds; for groups, over seeds and groups). "
        f"Target: the best sync baseline's ({arms[best_sync].label}) best loss, the lowest "
        f"point of its mean curve, {_fmt(target, w.offset)}.",
        "",
        "| arm | loss | final loss | steps to target (mean curve) | speed-up vs best sync "
        "| share of the ensemble's gain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    raw = {"batch": batch, "lr": {"B": lr_b, "2B": lr_2b}, "target": target, "arms": {}}
    for key, arm in arms.items():
        s = steps_to(arm.mean, target)
        stopped = arm.stopped_loss()
        share = capture(single_loss, ens_loss, stopped[0]) if key.startswith("cod") else None
        speed = (sync_steps / s) if (s and sync_steps) else None
        rows.append(
            f"| {arm.label} | {_fmt_spread(stopped, w.offset)} | "
            f"{_fmt_spread(arm.final_loss(), w.offset)} | {_fmt_steps(s)} | "
            f"{'n/a' if speed is None else f'{speed:.2f}x'} | "
            f"{'-' if share is None else f'{100 * share:.0f}%'} |"
        )
        raw["arms"][key] = {
            "label": arm.label,
            "stopped": arm.stopped,
            "final": [c[-1] for c in arm.curves],
            "steps_to_target": s,
            "speedup": speed,
            "capture": share,
        }
    gate = (
        "never (the single group never reaches the ensemble's loss)"
        if ceiling == math.inf
        else ("n/a" if ceiling is None else f"{ceiling:.2f}x")
    )
    passed = ceiling is not None and ceiling >= ceiling_gate
    rows += [
        "",
        f"Ceiling (gate G2): a single group needs {gate} the steps the ensemble needs to reach "
        f"the ensemble's loss ({_fmt(ens_loss, w.offset)}): "
        + (
            "**passes**: the ensemble itself is worth the extra group."
            if passed
            else f"**fails** (< {ceiling_gate}x): no codistillation recipe can show C2 here."
        ),
    ]
    raw.update(ceiling=ceiling, gate_passed=passed, single_loss=single_loss, ensemble_loss=ens_loss)
    # Each codistilling group against the same group undistilled, seed by seed.
    for n in groups:
        if n != 2:
            continue
        diffs = []
        for cod_run, ind_run in zip(cods[n], ind, strict=True):
            for g in range(2):
                c = runner_lib.at_best_validation(
                    ctx.runner.val_curve(cod_run, g), ctx.runner.test_curve(cod_run, [g])
                )[1]
                i = runner_lib.at_best_validation(
                    ctx.runner.val_curve(ind_run, g), ctx.runner.test_curve(ind_run, [g])
                )[1]
                diffs.append(c - i)
        mean, lo, hi = spread(diffs)
        rows.append(
            f"\nEach codistilling group minus the same group undistilled (same seeds, data and "
            f"order), over {len(diffs)} groups: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]."
        )
        raw["paired_difference"] = diffs
    plots = [
        (
            "curves",
            {
                "arms": {a.label: a.curves for a in arms.values()},
                "target": target,
                "offset": w.offset,
                "ylabel": _loss_name(ctx),
                "title": f"C2 {w.name}: codistillation at B = {batch} vs sync SGD "
                "(mean over seeds, band: range)",
            },
        )
    ]
    return Report(
        "C2: codistillation vs sync SGD at B and 2B, and the ensemble ceiling",
        "\n".join(rows),
        raw,
        plots,
        runs,
    )


# ----------------------------------------------------------------------------
# The recipe search.


@gin.configurable(module="study")
def recipe(
    ctx: Context,
    variants: dict = gin.REQUIRED,
    batch: Optional[int] = None,
    speedup: bool = True,
    double_batch: bool = True,
) -> Report:
    """Codistillation settings against the share of the ensemble's gain each captures.

    Args:
      variants: name -> codistillation bindings (`distill_weight`,
        `burn_in_steps`, `exchange_every_n_steps`, `distill_loss`, ...).
        Two keys are not bindings: `groups` (N-way) and `learning_rate`
        (the codistilling groups' own Adam rate; default: sync SGD's tuned
        rate at B, which the independent pair uses too).
      batch: B (default: the workload's).
      speedup: also report each variant's steps to the best sync baseline's
        loss (C2's target and runs: sync SGD at B and 2B, tuned).
      double_batch: with `speedup`, sync SGD at 2B is a baseline too (as in
        `c2_speedup`; False: sync SGD at B only).
    """
    w = ctx.workload
    batch = batch or w.batch
    lr, _ = tuned_lr(ctx, batch)
    syncs = {}
    if speedup:
        lr_2b = tuned_lr(ctx, 2 * batch)[0] if double_batch else None
        syncs = _sync_runs(ctx, batch, lr, lr_2b)
    ind = [independent(ctx, batch, lr, s) for s in seeds(ctx)]
    cods = {}
    for name, kw in variants.items():
        own_lr, kw = _own_lr(kw, lr)
        cods[name] = [codistill(ctx, batch, own_lr, s, **kw) for s in seeds(ctx)]
    runs = [r for rs in syncs.values() for r in rs] + ind + [r for rs in cods.values() for r in rs]
    ctx.runner.train(runs)
    single = read_groups(ctx, ind, "one group alone")
    ensemble = read_ensemble(ctx, ind, "2-way ensemble")
    single_loss, ens_loss = single.stopped_loss()[0], ensemble.stopped_loss()[0]
    raw = {"batch": batch, "lr": lr, "single": single_loss, "ensemble": ens_loss, "variants": {}}
    rows = [
        f"B = {batch} per group, LR {lr:g} (unless a variant sets its own), {ctx.seeds} seeds. "
        f"One group alone: {_fmt_spread(single.stopped_loss(), w.offset)}; 2-way ensemble: "
        f"{_fmt_spread(ensemble.stopped_loss(), w.offset)} ({_loss_name(ctx)}). Share: "
        "(alone - variant) / (alone - ensemble), per seed, mean [min, max].",
    ]
    columns = "| variant | settings | loss | share of the ensemble's gain |"
    if syncs:
        sync_arms = _read_syncs(ctx, batch, syncs)
        best_sync, target, sync_steps = _best_sync(sync_arms)
        raw.update(target=target, sync_steps=sync_steps)
        rows[0] += (
            f" Speed-up: the best sync baseline's ({sync_arms[best_sync].label}) steps to its "
            f"best loss, the lowest point of its mean curve, {_fmt(target, w.offset)} "
            f"({_fmt_steps(sync_steps)} steps), over the variant's (mean curve of its groups)."
        )
        columns += " steps to target | speed-up vs best sync |"
    rows += ["", columns, "|" + " --- |" * (columns.count("|") - 1)]
    shares_by_name = {}
    for name, kw in variants.items():
        arm = read_groups(ctx, cods[name], name)
        per_seed = []
        # A variant may run more than 2 groups (`groups=`): its share is still
        # measured against the 2-way ensemble of the independent pair.
        n = len(arm.stopped) // len(ind)
        for k in range(len(ind)):
            s_single = (single.stopped[2 * k][1] + single.stopped[2 * k + 1][1]) / 2
            s_ens = ensemble.stopped[k][1]
            s_cod = sum(loss for _, loss in arm.stopped[n * k : n * (k + 1)]) / n
            per_seed.append(capture(s_single, s_ens, s_cod))
        shares = spread(per_seed)
        shares_by_name[name] = per_seed
        settings = ", ".join(f"{_short(k)}={v}" for k, v in sorted(kw.items())) or "(defaults)"
        row = (
            f"| {name} | {settings} | {_fmt_spread(arm.stopped_loss(), w.offset)} | "
            f"{_pct(shares)} |"
        )
        raw["variants"][name] = {"settings": kw, "stopped": arm.stopped, "shares": per_seed}
        if syncs:
            steps = steps_to(arm.mean, target)
            speed = sync_steps / steps if (steps and sync_steps) else None
            row += f" {_fmt_steps(steps)} | {'n/a' if speed is None else f'{speed:.2f}x'} |"
            raw["variants"][name].update(steps_to_target=steps, speedup=speed)
        rows.append(row)
    best = max(shares_by_name, key=lambda n: spread(shares_by_name[n])[0])
    rows += ["", f"Best: **{best}** ({_pct(spread(shares_by_name[best]))} of the gain)."]
    raw["best"] = best
    plots = [
        (
            "bars",
            {
                "values": {n: shares_by_name[n] for n in variants},
                "ylabel": "share of the 2-way ensemble's gain",
                "title": f"Recipe search {w.name}: share of the ensemble's gain captured "
                "(bar: mean, ticks: seeds)",
            },
        )
    ]
    return Report("The recipe: codistillation settings", "\n".join(rows), raw, plots, runs)


def _pct(values: tuple[float, float, float]) -> str:
    mean, lo, hi = values
    if not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]"


# ----------------------------------------------------------------------------
# C4, C5, C8.


@gin.configurable(module="study")
def c4_data(ctx: Context, batch: Optional[int] = None, **recipe: Any) -> Report:
    """Codistillation on disjoint shards vs on the same data (each its own order)."""
    w = ctx.workload
    batch = batch or w.batch
    lr, _ = tuned_lr(ctx, batch)
    arms, runs = {}, []
    for split in ("disjoint", "same"):
        ind = [independent(ctx, batch, lr, s, data_split=split) for s in seeds(ctx)]
        cod = [codistill(ctx, batch, lr, s, data_split=split, **recipe) for s in seeds(ctx)]
        runs += ind + cod
        ctx.runner.train(ind + cod)
        arms[f"single_{split}"] = read_groups(ctx, ind, f"one group alone, {split} data")
        arms[f"ensemble_{split}"] = read_ensemble(ctx, ind, f"2-way ensemble, {split} data")
        arms[f"cod_{split}"] = read_groups(ctx, cod, f"2-way codistillation, {split} data")
    rows = [
        f"B = {batch} per group, LR {lr:g}, {ctx.seeds} seeds; {_loss_name(ctx)} at the step "
        "the validation split chose, mean [min, max].",
        "",
        "| data | one group alone | 2-way ensemble | 2-way codistillation | share of the gain |",
        "| --- | --- | --- | --- | --- |",
    ]
    raw = {}
    for split in ("disjoint", "same"):
        s, e, c = (arms[f"{k}_{split}"].stopped_loss() for k in ("single", "ensemble", "cod"))
        share = capture(s[0], e[0], c[0])
        rows.append(
            f"| {split} | {_fmt_spread(s, w.offset)} | {_fmt_spread(e, w.offset)} | "
            f"{_fmt_spread(c, w.offset)} | {100 * share:.0f}% |"
        )
        raw[split] = {"single": s, "ensemble": e, "codistill": c, "share": share}
    plots = [
        (
            "curves",
            {
                "arms": {a.label: a.curves for a in arms.values()},
                "offset": w.offset,
                "ylabel": _loss_name(ctx),
                "title": f"C4 {w.name}: disjoint shards vs the same data",
            },
        )
    ]
    return Report("C4: disjoint data vs the same data", "\n".join(rows), raw, plots, runs)


@gin.configurable(module="study")
def c5_staleness(
    ctx: Context,
    intervals: Sequence[int] = gin.REQUIRED,
    batch: Optional[int] = None,
    **recipe: Any,
) -> Report:
    """Exchange intervals (teacher staleness) against loss, with the teachers' mean age."""
    w = ctx.workload
    batch = batch or w.batch
    lr, _ = tuned_lr(ctx, batch)
    ind = [independent(ctx, batch, lr, s) for s in seeds(ctx)]
    cods = {
        n: [
            codistill(ctx, batch, lr, s, **{**recipe, "exchange_every_n_steps": n})
            for s in seeds(ctx)
        ]
        for n in intervals
    }
    runs = ind + [r for rs in cods.values() for r in rs]
    ctx.runner.train(runs)
    single = read_groups(ctx, ind, "one group alone")
    ensemble = read_ensemble(ctx, ind, "2-way ensemble")
    rows = [
        f"B = {batch} per group, LR {lr:g}, {ctx.seeds} seeds. One group alone: "
        f"{_fmt_spread(single.stopped_loss(), w.offset)}; ensemble: "
        f"{_fmt_spread(ensemble.stopped_loss(), w.offset)}.",
        "",
        "| exchange every (steps) | teachers' mean age (steps) | loss | share of the gain |",
        "| --- | --- | --- | --- |",
    ]
    raw, arms = {}, {}
    for n in intervals:
        arm = read_groups(ctx, cods[n], f"exchange every {n} steps")
        arms[n] = arm
        age = _mean_teacher_age(ctx, cods[n])
        share = capture(single.stopped_loss()[0], ensemble.stopped_loss()[0], arm.stopped_loss()[0])
        rows.append(
            f"| {n} | {'n/a' if age is None else f'{age:.1f}'} | "
            f"{_fmt_spread(arm.stopped_loss(), w.offset)} | {100 * share:.0f}% |"
        )
        raw[n] = {"age": age, "stopped": arm.stopped, "share": share}
    plots = [
        (
            "curves",
            {
                "arms": {a.label: a.curves for a in [single, ensemble, *arms.values()]},
                "offset": w.offset,
                "ylabel": _loss_name(ctx),
                "title": f"C5 {w.name}: teachers reloaded every 1 to {max(intervals)} steps",
            },
        )
    ]
    return Report("C5: stale teachers", "\n".join(rows), raw, plots, runs)


def _mean_teacher_age(ctx: Context, runs: Sequence[Run]) -> Optional[float]:
    """Mean logged `teacher_staleness` over groups and evaluations (signed: a group ahead
    of its peer sees negative staleness, so the mean over groups is the teachers' age)."""
    values = []
    for run in runs:
        for g in range(run.num_groups):
            for evaluation in ctx.runner.history(run, g):
                train = evaluation.get("train", {})
                # Epoch means; only epochs where distillation was on all along.
                if "teacher_staleness" in train and train.get("distill_weight", 0) > 0:
                    values.append(train["teacher_staleness"])
    return sum(values) / len(values) if values else None


@gin.configurable(module="study")
def c8_churn(
    ctx: Context,
    retrains: int = 5,
    batch: Optional[int] = None,
    groups: Sequence[int] = (2,),
    **recipe: Any,
) -> Report:
    """Prediction churn between retrains: one group, the ensemble, codistilled groups.

    Args:
      retrains: seeds of each arm; churn is over every pair of them.
      batch: B (default: the workload's).
      groups: numbers of codistilling groups (N-way), one arm each; its
        group 0 of each retrain is the model compared.
      **recipe: codistillation bindings, plus `learning_rate` (the
        codistilling groups' own rate) as in `recipe`.
    """
    if not groups:
        raise ValueError("study.c8_churn.groups is empty: give at least one N, e.g. [2]")
    w = ctx.workload
    batch = batch or w.batch
    lr, _ = tuned_lr(ctx, batch)
    ind = [independent(ctx, batch, lr, s) for s in range(retrains)]
    cod_lr, recipe = _own_lr(recipe, lr)
    cods = {
        n: [codistill(ctx, batch, cod_lr, s, n, **recipe) for s in range(retrains)] for n in groups
    }
    runs = ind + [r for rs in cods.values() for r in rs]
    ctx.runner.train(runs)
    out = f"{ctx.runner.work_dir}/churn/{w.name}-{ind[0].key()}-{cods[groups[0]][0].key()}"
    one, ens = "one group (group 0 of each retrain)", "2-way ensemble"
    kinds = {
        one: (read_group(ctx, ind, 0, one), ind, [0]),
        ens: (read_ensemble(ctx, ind, ens), ind, [0, 1]),
    }
    for n in groups:
        name = f"{n}-way codistillation (group 0 of each retrain)"
        kinds[name] = (read_group(ctx, cods[n], 0, name), cods[n], [0])
    rows = [
        f"B = {batch}, LR {lr:g} (codistillation: {cod_lr:g}), {w.train_steps} steps, "
        f"{retrains} retrains (seeds) of each; churn between the models of every pair of "
        "retrains, on the test split (mean [min, max] over pairs), and their test loss "
        "(over retrains). Two tables: the final models, and the models early stopping on "
        "the validation split chose (what a user would serve; an ensemble's step is chosen "
        "on its members' mean validation loss)."
    ]
    raw = {}
    for served in ("final", "early-stopped"):
        rows += [
            "",
            f"**{served} models**",
            "",
            f"| model | {served} loss | mean abs. difference of probabilities | top-1 "
            "disagreement | churn / one group's (mean abs., top-1) |",
            "| --- | --- | --- | --- | --- |",
        ]
        table = raw.setdefault(served, {})
        base = None  # the one-group arm's churn, the first of `kinds`
        for name, (arm, arm_runs, members) in kinds.items():
            points = [c[-1] for c in arm.curves] if served == "final" else arm.stopped
            specs = [f"{ctx.runner.root(r)}:{'+'.join(map(str, members))}" for r in arm_runs]
            if served != "final":
                specs = [f"{spec}@{step}" for spec, (step, _) in zip(specs, points, strict=True)]
            slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
            slug += "" if served == "final" else "_stopped"
            report = ctx.runner.churn(specs, f"{out}/{slug}.json", w.test_bindings)
            losses = [loss for _, loss in points]
            mad, dis = report["mean_abs_diff"], report["disagreement"]
            base = base or (mad["mean"] or math.nan, dis["mean"] or math.nan)
            rows.append(
                f"| {name} | {_fmt_spread(spread(losses), w.offset)} | "
                f"{mad['mean']:.4f} [{mad['min']:.4f}, {mad['max']:.4f}] | "
                f"{dis['mean']:.4f} [{dis['min']:.4f}, {dis['max']:.4f}] | "
                f"{mad['mean'] / base[0]:.2f}x, {dis['mean'] / base[1]:.2f}x |"
            )
            table[name] = {
                "losses": losses,
                "steps": [step for step, _ in points],
                "churn": report,
                "ratio": mad["mean"] / base[0],
                "ratio_top1": dis["mean"] / base[1],
            }
        ratios = {
            f"{n}-way": table[f"{n}-way codistillation (group 0 of each retrain)"]["ratio"]
            for n in groups
        }
        rows += [
            "",
            f"{served.capitalize()} models: codistillation's churn (mean abs. difference) is "
            + ", ".join(f"{v:.2f}x ({k})" for k, v in ratios.items())
            + f" the single group's (the ensemble's: {table['2-way ensemble']['ratio']:.2f}x).",
        ]
    plots = [
        (
            "churn",
            {
                "values": {
                    f"{name} ({served})": [
                        r["churn"]["mean_abs_diff"]["mean"],
                        r["churn"]["disagreement"]["mean"],
                    ]
                    for served, table in raw.items()
                    for name, r in table.items()
                },
                "title": f"C8 {w.name}: churn between {retrains} retrains",
            },
        )
    ]
    return Report("C8: prediction churn between retrains", "\n".join(rows), raw, plots, runs)


@gin.configurable(module="study")
def repetition(
    ctx: Context,
    dataset_sizes: Sequence[int] = gin.REQUIRED,
    size_binding: str = gin.REQUIRED,
    batch: Optional[int] = None,
    **recipe: Any,
) -> Report:
    """The share of the ensemble's gain codistillation captures against how often data repeats.

    The same runs as C2's independent pair and codistilling pair, on training
    sets of several sizes: from many passes over a small set to about one
    pass (the paper's regime).

    Args:
      dataset_sizes: training examples (before any split between groups).
      size_binding: the gin binding that sets it.
      batch: B (default: the workload's).
    """
    w = ctx.workload
    batch = batch or w.batch
    lr, _ = tuned_lr(ctx, batch)
    rows = [
        f"B = {batch} per group, LR {lr:g} (tuned at the workload's size), {w.train_steps} "
        f"steps, {ctx.seeds} seeds; {_loss_name(ctx)} at the step the validation split "
        "chose, mean [min, max]. Passes: how many times a group reads each example.",
        "",
        "| training examples | passes | one group alone | 2-way ensemble | 2-way codistillation "
        "| share of the gain (per seed) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    raw, runs, shares = {}, [], {}
    for size in dataset_sizes:
        ind = [independent(ctx, batch, lr, s, **{size_binding: size}) for s in seeds(ctx)]
        cod = [codistill(ctx, batch, lr, s, **{size_binding: size}, **recipe) for s in seeds(ctx)]
        ctx.runner.train(ind + cod)
        runs += ind + cod
        single = read_groups(ctx, ind, "alone")
        ensemble = read_ensemble(ctx, ind, "ensemble")
        arm = read_groups(ctx, cod, "codistillation")
        per_seed = []
        for k in range(len(ind)):
            s = (single.stopped[2 * k][1] + single.stopped[2 * k + 1][1]) / 2
            c = (arm.stopped[2 * k][1] + arm.stopped[2 * k + 1][1]) / 2
            per_seed.append(capture(s, ensemble.stopped[k][1], c))
        shares[size] = per_seed
        passes = batch * w.train_steps / size
        rows.append(
            f"| {size} | {passes:.1f} | {_fmt_spread(single.stopped_loss(), w.offset)} | "
            f"{_fmt_spread(ensemble.stopped_loss(), w.offset)} | "
            f"{_fmt_spread(arm.stopped_loss(), w.offset)} | {_pct(spread(per_seed))} |"
        )
        raw[size] = {
            "passes": passes,
            "single": single.stopped,
            "ensemble": ensemble.stopped,
            "codistill": arm.stopped,
            "shares": per_seed,
        }
    plots = [
        (
            "bars",
            {
                "values": {
                    f"{s} examples ({raw[s]['passes']:.1f} passes)": shares[s] for s in shares
                },
                "ylabel": "share of the 2-way ensemble's gain",
                "title": f"{w.name}: share of the ensemble's gain codistillation captures vs "
                "passes over the data (bar: mean, ticks: seeds)",
            },
        )
    ]
    return Report(
        "When data repeats: codistillation vs the ensemble at several training-set sizes",
        "\n".join(rows),
        raw,
        plots,
        runs,
    )
