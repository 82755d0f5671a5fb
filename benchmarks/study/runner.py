"""Trains the study's runs as real processes and reads back what they measured.

A `Run` is one configuration of the product: `binaries/train.py` once per
group, with the workload's gin files and bindings plus the run's own. Runs are
kept under `<work_dir>/runs/<key>`, named by a hash of their configuration, so
experiments that need the same run share it and a study that is stopped
resumes where it was. Evaluations on the held-out test split are made after
training by `binaries/evaluate.py --mode=all` over every checkpoint (groups)
and every step all members published (ensembles), and kept next to the run.

No TensorFlow import: the harness only starts processes and reads JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Optional

import gin

from tf_codistill import gin_quiet
from tf_codistill import layout
from tf_codistill import local_cluster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "binaries", "train.py")
# The study's workload files; one may `include 'mnist1d.gin'` and change a few values.
GIN_DIR = os.path.join(REPO, "gin", "reproduce")


_searched = []


def study_bindings(bindings: Sequence[str], quick: bool = False) -> list[str]:
    """The order a study's `--gin_bindings` apply in, with `--quick`'s sizes.

    Overlays (`include 'schedules/...gin'` lines) come first, then
    `quick.gin` (so `--quick` shrinks an overlaid study too), then every
    other binding in the order given (a macro such as `COSINE_STEPS = 700`
    after the overlay that uses it).
    """
    overlays = [b for b in bindings if b.lstrip().startswith("include ")]
    others = [b for b in bindings if not b.lstrip().startswith("include ")]
    return overlays + (["include 'quick.gin'"] if quick else []) + others


def parse_study_config(files: Sequence[str], bindings: Sequence[str] = (), **kwargs) -> None:
    """Parses study gin files, with `GIN_DIR` searched for their includes."""
    if not _searched:  # gin.add_config_file_search_path appends on every call.
        gin.add_config_file_search_path(GIN_DIR)
        _searched.append(GIN_DIR)
    quiet = gin_quiet.QuietGinIncludes()  # the misses before GIN_DIR
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


EVALUATE_RUNS = os.path.join(REPO, "benchmarks", "study", "evaluate_runs.py")
CHURN = os.path.join(REPO, "binaries", "churn.py")
TRAIN_GROUP = "tf_codistill.train_lib.train_group"


@gin.configurable(module="study")
@dataclasses.dataclass(frozen=True)
class Workload:
    """A task of the study: the product's gin config and how to read its results.

    Attributes:
      name: short name (file names, tables).
      gin_files: the groups' gin files (under gin/).
      bindings: extra bindings of the groups (`train_group` parameters may be
        given by their short name).
      batch: B, the per-group batch the experiments use unless they set one.
      learning_rate: Adam's learning rate at `batch` (experiments override it
        with the tuned one).
      train_steps: steps of every run.
      eval_every: steps between evaluations (`steps_per_loop`).
      lr_binding: the binding that sets the learning rate.
      batch_bindings: bindings set to the global batch size (a model that
        needs its batch, e.g. the LM's streams, lists it here).
      test_bindings: bindings that make evaluation read the test split.
      loss_key: the evaluation metric compared (`task_loss`: the compiled loss).
      offset: subtracted from every loss in tables (the task's irreducible
        loss, so tables show the excess loss); 0 for none.
      offset_name: what `offset` is, for the tables.
      seconds_per_step: one group's step at `batch` on the study machine,
        alone (estimates only); its part above `step_overhead_s` scales
        linearly in the batch.
      step_overhead_s: the part of a step that does not grow with the batch
        (dispatch, evaluation and checkpoints spread over steps).
      startup_s: a process's start, data and first trace (estimates only).
      repeats_data: whether runs repeat training examples (for the tables).
      description: one line for the report headers.
      quick_bindings: bindings added in `--quick` mode (tiny data).
    """

    name: str
    gin_files: tuple = ()
    bindings: dict = dataclasses.field(default_factory=dict)
    batch: int = 64
    learning_rate: float = 1e-3
    train_steps: int = 1000
    eval_every: int = 100
    lr_binding: str = "keras.optimizers.Adam.learning_rate"
    batch_bindings: tuple = ("global_batch_size",)
    test_bindings: dict = dataclasses.field(default_factory=dict)
    loss_key: str = "task_loss"
    offset: float = 0.0
    offset_name: str = ""
    seconds_per_step: float = 0.01
    step_overhead_s: float = 0.0
    startup_s: float = 15.0
    repeats_data: bool = False
    description: str = ""
    quick_bindings: dict = dataclasses.field(default_factory=dict)

    def __hash__(self):
        return hash(self.name)


@dataclasses.dataclass(frozen=True)
class Run:
    """Groups trained together (one process each) with one configuration.

    Attributes:
      workload: the task.
      label: what the run is, for tables and legends (not part of its key).
      num_groups: processes; with `codistill=False` they are independent
        groups (a baseline, or the members of an ensemble).
      codistill: whether the groups distil from each other.
      batch: per-group batch size.
      learning_rate: Adam's learning rate.
      seed: retrain index: initialisation `100 * seed (+ group)`, data order `seed`.
      overrides: other bindings, `(name, value)` pairs.
    """

    workload: Workload
    label: str
    num_groups: int = 1
    codistill: bool = False
    batch: int = 0
    learning_rate: float = 0.0
    seed: int = 0
    overrides: tuple = ()

    def bindings(self) -> dict[str, Any]:
        w = self.workload
        b = dict(w.bindings)
        batch = self.batch or w.batch
        for name in w.batch_bindings:
            b[name] = batch
        b[w.lr_binding] = self.learning_rate or w.learning_rate
        b["model_seed"] = 100 * self.seed
        b["data_seed"] = self.seed
        b["codistill"] = self.codistill
        b["train_steps"] = w.train_steps
        b["steps_per_loop"] = w.eval_every
        # Every published checkpoint is kept: test curves evaluate all of them.
        b["checkpoints_to_keep"] = 100_000
        b.update(dict(self.overrides))
        return b

    def key(self) -> str:
        config = {
            "gin_files": list(self.workload.gin_files),
            "bindings": self.bindings(),
            "num_groups": self.num_groups,
        }
        digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
        return f"{self.workload.name}-{digest.hexdigest()[:12]}"

    def steps(self) -> int:
        return int(self.bindings()["train_steps"])

    def command(self, root: str, group: int) -> list[str]:
        argv = [
            sys.executable,
            TRAIN,
            f"--root_dir={root}",
            f"--group_index={group}",
            f"--num_groups={self.num_groups}",
        ]
        argv += [f"--gin_file={f}" for f in self.workload.gin_files]
        argv += [f"--gin_bindings={b}" for b in gin_bindings(self.bindings())]
        return argv

    def estimate_s(self) -> float:
        """Seconds to train this run alone on 2 cores (a rough estimate)."""
        w = self.workload
        scale = (self.batch or w.batch) / w.batch
        per_step = w.step_overhead_s + (w.seconds_per_step - w.step_overhead_s) * scale
        per_step *= 1.3 if self.codistill else 1.0
        cores = 2
        share = max(1.0, self.num_groups / cores)
        return w.startup_s + self.steps() * per_step * share


def gin_bindings(bindings: dict[str, Any]) -> list[str]:
    """`name = value` lines; short names are `train_group` parameters."""
    out = []
    for name, value in bindings.items():
        if "." not in name and "/" not in name:
            name = f"{TRAIN_GROUP}.{name}"
        out.append(f"{name} = {gin_value(value)}")
    return out


class Raw(str):
    """A gin value written as it is (a reference, a list of references), not a Python literal."""


def gin_value(value: Any) -> str:
    if isinstance(value, Raw) or (isinstance(value, str) and value.startswith(("@", "%"))):
        return str(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(gin_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(gin_value(v) for v in value) + "]"
    return repr(value)


class Runner:
    """Trains runs (kept by key), evaluates them on the test split, reads results.

    Args:
      work_dir: where runs are kept.
      parallel: training processes at once (a run's groups always together).
      fresh: train every run again instead of reading kept ones.
      verbose: print every output line of the runs, not only progress.
      dry_run: plan only: record the runs an experiment asks for, train none.
    """

    def __init__(
        self,
        work_dir: str,
        parallel: int = 2,
        fresh: bool = False,
        verbose: bool = False,
        dry_run: bool = False,
    ):
        self.work_dir = work_dir
        self.parallel = parallel
        self.fresh = fresh
        self.verbose = verbose
        self.dry_run = dry_run
        self.planned: list[Run] = []
        self.used: list[Run] = []
        self._refreshed: set = set()

    # Runs on disk.

    def root(self, run: Run) -> str:
        return os.path.join(self.work_dir, "runs", run.key())

    def finished(self, run: Run) -> bool:
        for g in range(run.num_groups):
            metrics = local_cluster.read_metrics(self.root(run), g)
            if not metrics or metrics.get("steps") != run.steps():
                return False
        return True

    # Training.

    def train(self, runs: Sequence[Run]) -> None:
        """Trains the runs not kept yet, `parallel` processes at a time."""
        runs = list(dict.fromkeys(runs))
        self.used += [r for r in runs if r not in self.used]
        if self.dry_run:
            self.planned += [r for r in runs if r not in self.planned]
            raise PlanComplete()
        todo = []
        for run in runs:
            if self.fresh and run.key() not in self._refreshed and os.path.exists(self.root(run)):
                shutil.rmtree(self.root(run))
            self._refreshed.add(run.key())
            if not self.finished(run):
                todo.append(run)
        waves: list[list[Run]] = []
        for run in todo:
            if waves and sum(r.num_groups for r in waves[-1]) + run.num_groups <= self.parallel:
                waves[-1].append(run)
            else:
                waves.append([run])
        for i, wave in enumerate(waves):
            self._train_wave(wave, i + 1, len(waves))
        self.evaluate(runs)

    def _train_wave(self, wave: Sequence[Run], number: int, total: int) -> None:
        tasks, prefixes = [], {}
        for n, run in enumerate(wave):
            root = self.root(run)
            if os.path.exists(root):
                shutil.rmtree(root)  # Unfinished: start again, not resume.
            os.makedirs(root)
            for g in range(run.num_groups):
                name = f"r{n}g{g}"
                tasks.append(
                    local_cluster.Task(name, run.command(root, g), {"TF_CPP_MIN_LOG_LEVEL": "2"})
                )
                prefixes[name] = f"{run.label}: "
            with open(os.path.join(root, "run.json"), "w") as f:
                json.dump(
                    {
                        "label": run.label,
                        "workload": run.workload.name,
                        "bindings": run.bindings(),
                        "commands": [run.command(root, g) for g in range(run.num_groups)],
                    },
                    f,
                    indent=1,
                    default=str,
                )
        labels = "; ".join(r.label for r in wave)
        estimate = max(r.estimate_s() for r in wave) * max(1.0, sum(r.num_groups for r in wave) / 2)
        print(f"  [{number}/{total}] training {labels} (about {estimate:.0f} s)", flush=True)
        start = time.time()
        with local_cluster.LocalCluster(tasks, write=self._printer(prefixes), grace_s=5) as cluster:
            cluster.start()
            codes = cluster.wait(timeout_s=max(900.0, 6 * estimate))
        failed = {n: c for n, c in codes.items() if c != 0}
        if failed:
            raise RuntimeError(f"runs {labels} failed: exit codes {failed}")
        for run in wave:
            with open(os.path.join(self.root(run), "wall_s.json"), "w") as f:
                json.dump({"wall_s": time.time() - start, "trained_with": labels}, f)
        print(f"      done in {time.time() - start:.0f} s", flush=True)

    _PROGRESS = re.compile(r"step \d+/\d+ \|.*steps/s|\] train\.py: |Traceback|\b\w+Error: ")

    def _printer(self, prefixes: dict[str, str]) -> Callable[[str], None]:
        def write(line: str) -> None:
            if self.verbose or self._PROGRESS.search(line):
                name = line[1 : line.index("]")] if line.startswith("[") else ""
                print(f"      {prefixes.get(name, '')}{line}"[:200], flush=True)

        return write

    # Results.

    def history(self, run: Run, group: int) -> list[dict[str, float]]:
        """Every evaluation (validation) of a group: `{"step": s, "val_...": v}`."""
        metrics = local_cluster.read_metrics(self.root(run), group)
        if metrics is None:
            raise FileNotFoundError(f"{self.root(run)}: group {group} has no {layout.METRICS_FILE}")
        return metrics["history"]

    def metrics(self, run: Run, group: int) -> dict[str, Any]:
        metrics = local_cluster.read_metrics(self.root(run), group)
        if metrics is None:
            raise FileNotFoundError(f"{self.root(run)}: group {group} has no {layout.METRICS_FILE}")
        return metrics

    def val_curve(self, run: Run, group: int) -> list[tuple[int, float]]:
        key = f"val_{run.workload.loss_key}"
        return [(int(e["step"]), float(e[key])) for e in self.history(run, group) if key in e]

    def evaluate(self, runs: Sequence[Run]) -> None:
        """Makes the test curves of finished runs that lack them, in one process."""
        todo = {}
        for run in dict.fromkeys(runs):
            groups = list(range(run.num_groups))
            wanted = [[g] for g in groups] + ([groups] if len(groups) > 1 else [])
            if any(not os.path.exists(curve_path(self.root(run), m)) for m in wanted):
                todo.setdefault(tuple(sorted(run.workload.test_bindings.items())), []).append(run)
        for bindings, batch in todo.items():
            print(f"      evaluating {len(batch)} run(s) on the test split", flush=True)
            argv = [sys.executable, EVALUATE_RUNS, f"--loss_key={batch[0].workload.loss_key}"]
            argv += [f"--binding={b}" for b in gin_bindings(dict(bindings))]
            argv += [self.root(r) for r in batch]
            subprocess.run(
                argv,
                check=True,
                env=_tool_env(),
                capture_output=not self.verbose,
            )

    def test_curve(self, run: Run, groups: Sequence[int]) -> list[tuple[int, float]]:
        """(step, test loss) of a group (one index) or an ensemble (several), every step."""
        path = curve_path(self.root(run), groups)
        if not os.path.exists(path):
            self.evaluate([run])
        with open(path) as f:
            return [tuple(p) for p in json.load(f)]

    def churn(self, specs: Sequence[str], out: str, bindings: dict) -> dict[str, Any]:
        """`binaries/churn.py` over model specs (`ROOT:G`, `ROOT:G1+G2`), on the test split."""
        if not os.path.exists(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    CHURN,
                    *[f"--model={s}" for s in specs],
                    *[f"--gin_bindings={b}" for b in gin_bindings(bindings)],
                    f"--output_json={out}",
                ],
                check=True,
                env=_tool_env(),
                capture_output=not self.verbose,
            )
        with open(out) as f:
            return json.load(f)

    def training_seconds(self, runs: Sequence[Run]) -> float:
        """Wall time of the waves that trained `runs` (shared waves counted once)."""
        waves = {}
        for run in runs:
            try:
                with open(os.path.join(self.root(run), "wall_s.json")) as f:
                    kept = json.load(f)
                waves[kept["trained_with"]] = kept["wall_s"]
            except (OSError, ValueError, KeyError):
                pass
        return sum(waves.values())


def curve_path(root: str, groups: Sequence[int]) -> str:
    """Where `evaluate_runs.py` writes the test curve of a group or an ensemble."""
    return os.path.join(root, "test", "curve_" + "_".join(str(g) for g in groups) + ".json")


def _tool_env() -> dict[str, str]:
    """The environment of the harness's TensorFlow tools: quiet, and `study` importable.

    evaluate_runs.py imports `study` (this package), from benchmarks/.
    """
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    benchmarks = os.path.dirname(os.path.dirname(EVALUATE_RUNS))
    return dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([benchmarks, *path])
    )


class PlanComplete(Exception):
    """Raised by a dry-run `Runner.train` once an experiment's first runs are known."""


# ----------------------------------------------------------------------------
# Curves.


def steps_to(curve: Sequence[tuple[int, float]], target: float) -> Optional[int]:
    """The first evaluated step whose loss is at or below `target` (None: never)."""
    return next((s for s, v in curve if v <= target), None)


def steps_to_interpolated(curve: Sequence[tuple[int, float]], target: float) -> Optional[float]:
    """Where the curve crosses `target`, linearly between the evaluations around it.

    The evaluation's own step if it is the first, or the one before is not
    finite (the loss in between is unknown); None if the curve never reaches it.
    """
    previous = None
    for step, value in curve:
        if value <= target:
            if previous is None:
                return float(step)
            (s0, v0) = previous
            if not math.isfinite(v0):
                return float(step)
            return s0 + (step - s0) * (v0 - target) / (v0 - value)
        previous = (step, value)
    return None


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean over curves at the steps all of them evaluated."""
    if not curves:
        return []
    common = set(s for s, _ in curves[0])
    for c in curves[1:]:
        common &= set(s for s, _ in c)
    out = []
    for step in sorted(common):
        values = [dict(c)[step] for c in curves]
        out.append((step, sum(values) / len(values)))
    return out


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of finite values (nan when none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return sum(values) / len(values), min(values), max(values)


def at_best_validation(
    val: Sequence[tuple[int, float]], test: Sequence[tuple[int, float]]
) -> tuple[int, float]:
    """(step, test loss) of the test curve's point early stopping serves.

    The step is chosen on validation only (its lowest loss); the point is the
    last evaluated test step at or before it (a kept checkpoint; the first
    test step if none is).
    """
    step = min(val, key=lambda p: (p[1], p[0]))[0]
    before = [(s, v) for s, v in test if s <= step]
    return before[-1] if before else test[0]
