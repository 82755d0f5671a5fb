"""Writes an experiment's report: a markdown table, a JSON file, a plot.

`<out_dir>/<experiment>-<workload>.md` is what docs/REPRODUCTION.md quotes,
`.json` the raw numbers (every run's key, seeds, curves), `.png` the plot.
Titles and legends say what is drawn: the y axis names the quantity (the
excess test loss where the workload has an irreducible loss), every line
has a label, and a band is the range over seeds.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from study import experiments
from study import runner as runner_lib


def machine() -> str:
    """CPU model, cores and bf16 support of this machine, for every report."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "no bf16"
    return f"{os.cpu_count()} x {model} ({bf16})"


def write(
    out_dir: str,
    experiment: str,
    workload: runner_lib.Workload,
    report: experiments.Report,
    runner: runner_lib.Runner,
    seeds: int,
    quick: bool,
    bindings: tuple = (),
) -> str:
    """Writes the three files; returns the markdown.

    `bindings` are the `--gin_bindings` the study was run with (on top of the
    workload's gin file): the header lists them, as they change what ran.
    """
    os.makedirs(out_dir, exist_ok=True)
    name = f"{experiment}-{workload.name}"
    training_s = runner.training_seconds(report.runs)
    header = (
        f"### {name}: {report.title}\n\n"
        f"Workload `{workload.name}`: {workload.description} "
        f"(`gin/reproduce/{workload.name.replace('-quick', '')}.gin`). "
        f"{'Repeats' if workload.repeats_data else 'Does not repeat'} training data. "
        f"Machine: {machine()}. Training time of its {len(set(report.runs))} runs: "
        f"{training_s / 60:.1f} min (runs shared with other experiments included; "
        "other work may have shared the cores).\n\n"
    )
    if bindings:
        header += (
            "Run with these bindings on top of the gin file: "
            + "; ".join(f"`{b}`" for b in bindings)
            + ".\n\n"
        )
    if workload.offset:
        header += (
            f"Losses are excess losses: the test cross-entropy minus {workload.offset_name} "
            f"({workload.offset:.4f}).\n\n"
        )
    markdown = header + report.markdown + "\n"
    for k, (kind, data) in enumerate(report.plots):
        png = f"{name}.png" if k == 0 else f"{name}-{k}.png"
        if _plot(os.path.join(out_dir, png), kind, data):
            markdown += f"\n![{data.get('title', name)}]({png})\n"
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
    raw = {
        "experiment": experiment,
        "workload": workload.name,
        "quick": quick,
        "seeds": seeds,
        "machine": machine(),
        "training_s": training_s,
        "gin_bindings": list(bindings),
        "runs": [
            {"key": r.key(), "label": r.label, "seed": r.seed, "groups": r.num_groups}
            for r in dict.fromkeys(report.runs)
        ],
        "result": report.raw,
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(raw, f, indent=1, default=_jsonable)
    return markdown


def _jsonable(value: Any):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def _plot(path: str, kind: str, data: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed (pip install -e '.[plots]'): no plot", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    if kind == "curves":
        _curves(ax, data)
    elif kind == "scaling":
        _scaling(ax, data)
    elif kind in ("bars", "churn"):
        _bars(ax, data, kind)
    else:
        raise ValueError(f"unknown plot kind {kind!r}")
    ax.set_title(data.get("title", ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _curves(ax, data: dict) -> None:
    offset = data.get("offset", 0.0)
    lows = []
    for label, curves in data["arms"].items():
        mean = runner_lib.mean_curve(curves)
        if not mean:
            continue
        steps = [s for s, _ in mean]
        per_step = [[dict(c)[s] - offset for c in curves] for s in steps]
        ax.plot(steps, [v - offset for _, v in mean], label=label, linewidth=1.3)
        if len(curves) > 1:
            ax.fill_between(
                steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.2
            )
        lows += [v - offset for _, v in mean]
    if "target" in data and data["target"] is not None:
        ax.axhline(data["target"] - offset, color="k", linestyle=":", linewidth=1, label="target")
    if lows:  # leave out the first evaluations' large losses
        lows.sort()
        low, high = lows[0], lows[min(len(lows) - 1, int(0.85 * len(lows)))]
        pad = (high - low) or abs(high) or 1.0
        ax.set_ylim(low - 0.05 * pad, high + 0.15 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel(data.get("ylabel", "test loss"))
    ax.legend(fontsize=7)


def _scaling(ax, data: dict) -> None:
    xs, means, lows, highs = [], [], [], []
    for b in sorted(data["mean"]):
        mean = data["mean"][b]
        if mean is None:
            continue
        seeds = [s for s in data["steps"][b] if s is not None] or [mean]
        xs.append(b)
        means.append(mean)
        lows.append(min(min(seeds), mean))
        highs.append(max(max(seeds), mean))
    if xs:
        errors = [
            [m - lo for m, lo in zip(means, lows, strict=True)],
            [hi - m for m, hi in zip(means, highs, strict=True)],
        ]
        ax.errorbar(
            xs,
            means,
            yerr=errors,
            marker="o",
            capsize=3,
            label="steps to target, mean curve (bars: seeds)",
        )
        ideal = [means[0] * xs[0] / b for b in xs]
        ax.plot(xs, ideal, "k:", linewidth=1, label="perfect scaling (steps x batch constant)")
    if data.get("b_star"):
        ax.axvline(data["b_star"], color="r", linestyle="--", linewidth=1, label="B*")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (examples per step)")
    ax.set_ylabel("steps to target")
    ax.legend(fontsize=7)


def _bars(ax, data: dict, kind: str) -> None:
    names = list(data["values"])
    if kind == "churn":
        import numpy as np

        x = np.arange(len(names))
        mad = [data["values"][n][0] for n in names]
        dis = [data["values"][n][1] for n in names]
        ax.bar(x - 0.2, mad, 0.4, label="mean abs. difference of probabilities")
        ax.bar(x + 0.2, dis, 0.4, label="top-1 disagreement")
        ax.set_ylabel("churn between retrains")
        ax.legend(fontsize=7)
    else:
        x = range(len(names))
        for i, n in enumerate(names):
            values = [v for v in data["values"][n] if v is not None and math.isfinite(v)]
            if values:
                ax.bar(i, sum(values) / len(values), 0.6, color="C0", alpha=0.6)
                ax.plot([i] * len(values), values, "k_", markersize=12)
        ax.axhline(1.0, color="k", linestyle=":", linewidth=1, label="the ensemble's gain")
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_ylabel(data.get("ylabel", ""))
        ax.legend(fontsize=7)
    ax.set_xticks(list(range(len(names))))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
