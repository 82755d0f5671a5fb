r"""Lists every run of the search probe (benchmarks/study/probe.py) as one markdown table.

  python benchmarks/study/probe_report.py probe_runs.jsonl > docs/results/probe_runs.md

One row per run, in the order they were made: the task, what differs from the
probe's defaults, and what it measured (validation loss at the end and at its
best, the ensemble of its models, the test loss, seconds).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys

import probe

_TASK_DEFAULTS = dataclasses.asdict(probe.Task())
_ARM_DEFAULTS = dataclasses.asdict(probe.Arm())


def _open(path: str):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def _settings(run: dict) -> tuple[str, str]:
    task = {k: v for k, v in run["task"].items() if _TASK_DEFAULTS.get(k) != v}
    arm = run["arm"]
    kind = task.pop("kind", "ts")
    name = f"MNIST-1D pool {task.pop('pool', 0)}" if kind == "mnist1d" else "teacher-student"
    if task:
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(task.items())) + ")"
    shown = ["batch", "lr", "models", "steps"]
    parts = [f"{k}={arm[k]}" for k in shown]
    if arm["codistill"]:
        parts.append("codistill")
    for key, value in sorted(arm.items()):
        if key in shown or key in ("codistill", "eval_every", "hidden"):
            continue
        if _ARM_DEFAULTS.get(key) != value and (arm["codistill"] or key not in _CODISTILL_ONLY):
            parts.append(f"{key}={value}")
    if tuple(arm["hidden"]) != tuple(_ARM_DEFAULTS["hidden"]):
        parts.append(f"hidden={tuple(arm['hidden'])}")
    return name, ", ".join(parts)


_CODISTILL_ONLY = {"weight", "burn_in", "ramp", "reload", "psi", "temperature", "teacher_ema"}


def main(argv) -> None:
    rows = [
        "| # | task | settings | val loss, end | val loss, best (step) | ensemble of its "
        "models, best | test loss, end | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    with _open(argv[1]) as f:
        for n, line in enumerate(f, 1):
            run = json.loads(line)
            curve = run["curve"]
            means = [sum(c["val"]) / len(c["val"]) for c in curve]
            best = min(range(len(means)), key=means.__getitem__)
            ensemble = min(c["ens"] for c in curve)
            test = run["test"]["each"]
            task, settings = _settings(run)
            rows.append(
                f"| {n} | {task} | {settings} | {means[-1]:.4f} | {means[best]:.4f} "
                f"({curve[best]['step']}) | {ensemble:.4f} | {sum(test) / len(test):.4f} | "
                f"{run['wall_s']:.0f} |"
            )
    print(
        "# Every run of the search probe\n\n"
        "Made with `benchmarks/study/probe.py` (in-process, see its docstring) while "
        "searching for the regime and the recipe, in this order; raw curves in "
        "`probe_runs.jsonl.gz`. Losses: excess cross-entropy over the oracle's "
        "(teacher-student) or cross-entropy (MNIST-1D); `models` MLPs trained together "
        "(the ensemble averages their probabilities). One seed per row.\n\n"
        "Rows 1-6 were made before the probe switched to Keras' initialisation "
        "(Glorot uniform; it had He normal) and Adam epsilon (1e-7; it had 1e-8); every "
        "later row uses them. Two runs were stopped before they finished and are not "
        "listed (nothing was read from them): the 7th of the first sweep (width 256, "
        "weight 0.3) and a 4-model codistillation at batch 16384 that would have taken "
        "a quarter of an hour while the product's runs needed the cores.\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv)
