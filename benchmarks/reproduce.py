r"""The codistillation study: the paper's claims, measured on this machine.

  python benchmarks/reproduce.py --list                      # experiments, expected minutes
  python benchmarks/reproduce.py c2_speedup:mnist1d          # one experiment on one workload
  python benchmarks/reproduce.py all:mnist1d                 # every experiment of a workload
  python benchmarks/reproduce.py c1_saturation --quick       # tiny sizes: checks the harness

An experiment (`study/experiments.py`) and its parameters for a workload
(`gin/reproduce/<workload>.gin`) say which runs to train; `study/runner.py`
trains them as real `binaries/train.py` processes (kept under --work_dir by a
hash of their configuration, so experiments share runs and a stopped study
resumes) and evaluates their checkpoints on the test split;
`study/report.py` writes `<out_dir>/<experiment>-<workload>.{md,json,png}`,
which docs/REPRODUCTION.md quotes. The expected time is printed first, and
progress while runs train.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time

import gin
from absl import app
from absl import flags
from study import experiments
from study import report
from study import runner as runner_lib

flags.DEFINE_bool("list", False, "List the experiments and their expected run times.")
flags.DEFINE_bool("quick", False, "Tiny sizes, about a minute per experiment: checks the harness.")
flags.DEFINE_string(
    "out_dir", os.path.join(runner_lib.REPO, "docs", "results"), "Tables, plots, JSON."
)
flags.DEFINE_string("work_dir", "/tmp/tf_codistill_study", "Training runs go here.")
flags.DEFINE_integer(
    "seeds", 3, "Retrains per arm (model and data seeds); --quick: 2 unless given."
)
flags.DEFINE_integer("parallel", 2, "Training processes at once (a run's groups always together).")
flags.DEFINE_bool("fresh", False, "Train every run again instead of reading kept ones.")
flags.DEFINE_bool("verbose", False, "Show every output line of the runs.")
flags.DEFINE_multi_string(
    "gin_bindings",
    [],
    "Extra bindings for the study's gin files. Overlays (`include 'schedules/X.gin'`) apply "
    "first, then --quick's sizes, then the other bindings in order.",
)

FLAGS = flags.FLAGS

# Experiment name -> (function, what it measures).
EXPERIMENTS = {
    "c1_saturation": (experiments.c1_saturation, "steps to target vs batch size: find B*"),
    "c2_speedup": (experiments.c2_speedup, "codistillation at B* vs sync at B* and 2B*; ceiling"),
    "recipe": (experiments.recipe, "codistillation settings vs share of the ensemble's gain"),
    "c4_data": (experiments.c4_data, "disjoint shards vs the same data"),
    "c5_staleness": (experiments.c5_staleness, "teachers reloaded every 1..500 steps"),
    "c8_churn": (experiments.c8_churn, "prediction churn between retrains"),
    "repetition": (experiments.repetition, "share of the ensemble's gain vs passes over the data"),
}
GIN_DIR = runner_lib.GIN_DIR


def workloads() -> list[str]:
    return sorted(f[:-4] for f in os.listdir(GIN_DIR) if f.endswith(".gin") and f != "quick.gin")


def configure(workload: str) -> tuple[runner_lib.Workload, list[str]]:
    """Parses the workload's study config; returns it and the experiments it binds."""
    gin.clear_config()
    path = os.path.join(GIN_DIR, f"{workload}.gin")
    if not os.path.exists(path):
        sys.exit(f"reproduce.py: no workload {workload!r}; one of {workloads()}")
    runner_lib.parse_study_config(
        [path], runner_lib.study_bindings(FLAGS.gin_bindings, FLAGS.quick)
    )
    w = runner_lib.Workload()
    if FLAGS.quick:
        w = dataclasses.replace(
            w, name=f"{w.name}-quick", bindings={**w.bindings, **w.quick_bindings}
        )
    bound = [e for e in EXPERIMENTS if _bound(e)]
    return w, bound


def _bound(experiment: str) -> bool:
    """Whether the parsed config names `experiment` in study.enabled_experiments."""
    return experiment in enabled_experiments()


@gin.configurable(module="study")
def enabled_experiments(names=()) -> tuple:
    return tuple(names)


def _seeds() -> int:
    """--seeds, or 2 for --quick unless --seeds is given."""
    return 2 if FLAGS.quick and not FLAGS["seeds"].present else FLAGS.seeds


def _run(
    name: str, workload: str, runner: runner_lib.Runner
) -> tuple[runner_lib.Workload, experiments.Report]:
    w, bound = configure(workload)
    if name not in bound:
        sys.exit(f"reproduce.py: {name} is not configured for {workload} (it runs {bound})")
    ctx = experiments.Context(w, runner, _seeds(), FLAGS.quick)
    return w, EXPERIMENTS[name][0](ctx)


def planned_seconds(name: str, workload: str) -> float:
    """Seconds to train an experiment's runs from scratch (kept runs not counted)."""
    total, seen = 0.0, set()
    while True:
        runner = runner_lib.Runner(FLAGS.work_dir, dry_run=True)
        runner.planned = []
        # A dry run stops at the first `train` call; pretend those runs exist
        # and go on until the experiment asks for nothing new.
        try:
            _run(name, workload, _Pretend(runner, seen))
            break
        except runner_lib.PlanComplete:
            pass
        new = [r for r in runner.planned if r.key() not in seen]
        if not new:
            break
        for r in new:
            seen.add(r.key())
            total += r.estimate_s() / (FLAGS.parallel / min(FLAGS.parallel, r.num_groups))
    return total


class _Pretend(runner_lib.Runner):
    """A dry-run runner whose `train` returns for runs already planned."""

    def __init__(self, inner: runner_lib.Runner, seen: set):
        super().__init__(inner.work_dir, dry_run=True)
        self._inner, self._seen = inner, seen

    def train(self, runs):
        new = [r for r in runs if r.key() not in self._seen and not self.finished(r)]
        if new:
            self._inner.planned += new
            raise runner_lib.PlanComplete()

    # Kept runs answer with what they measured, so the plan makes the same
    # choices (the tuned learning rate, B*) as the study will; runs still to
    # train answer with a flat curve.

    def val_curve(self, run, group):
        return super().val_curve(run, group) if self.finished(run) else [(run.steps(), 1.0)]

    def test_curve(self, run, groups):
        if self.finished(run) and os.path.exists(runner_lib.curve_path(self.root(run), groups)):
            return super().test_curve(run, groups)
        return [(run.steps(), 1.0)]

    def metrics(self, run, group):
        return super().metrics(run, group) if self.finished(run) else {}

    def history(self, run, group):
        return super().history(run, group) if self.finished(run) else []

    def evaluate(self, runs):
        pass

    def churn(self, specs, out, bindings):
        spread = {"mean": 1.0, "min": 1.0, "max": 1.0, "half_range": 0.0}
        return {"mean_abs_diff": spread, "disagreement": spread}


def _stop(signum, frame):
    # Raised in the main thread: the LocalCluster of the running wave stops
    # its training processes on the way out.
    raise SystemExit(128 + signum)


def main(argv):
    # Background jobs of a non-interactive shell start with SIGINT ignored;
    # either signal must still stop the harness and the runs it started.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # The runs start in the repository, whatever the harness' directory: data
    # paths in gin files and bindings are relative to it (the bundled text of
    # the LM's --quick runs, as in gin/lm/tiny.gin).
    FLAGS.work_dir = os.path.abspath(FLAGS.work_dir)
    FLAGS.out_dir = os.path.abspath(FLAGS.out_dir)
    os.chdir(runner_lib.REPO)
    names = argv[1:]
    if FLAGS.list or not names:
        print("experiments (expected minutes from scratch on 2 cores; kept runs are reused):")
        for workload in workloads():
            for name in configure(workload)[1]:
                minutes = planned_seconds(name, workload) / 60
                print(f"  {name:14s} {workload:16s} ~{minutes:6.1f} min  {EXPERIMENTS[name][1]}")
        if not names:
            print("usage: reproduce.py EXPERIMENT[:WORKLOAD] ... | all[:WORKLOAD]  [--quick]")
        return
    todo = []
    for spec in names:
        name, _, workload = spec.partition(":")
        targets = [workload] if workload else workloads()
        for wl in targets:
            bound = configure(wl)[1]
            if name == "all":
                todo += [(e, wl) for e in bound]
            elif name not in EXPERIMENTS:
                sys.exit(f"reproduce.py: unknown experiment {name!r}; one of {sorted(EXPERIMENTS)}")
            elif name in bound:
                todo.append((name, wl))
            elif workload:
                sys.exit(f"reproduce.py: {name} is not configured for {wl} (it runs {bound})")
    total = sum(planned_seconds(e, wl) for e, wl in todo)
    plan = (
        f"expect about {math.ceil(total / 60)} min of training (kept runs not counted)"
        if total
        else "every run is kept: reports only"
    )
    print(
        f"{len(todo)} experiment(s): {', '.join(f'{e}:{wl}' for e, wl in todo)}; {plan}", flush=True
    )
    runner = runner_lib.Runner(FLAGS.work_dir, FLAGS.parallel, FLAGS.fresh, FLAGS.verbose)
    for name, wl in todo:
        start = time.time()
        print(f"== {name}:{wl}: {EXPERIMENTS[name][1]}", flush=True)
        w, rep = _run(name, wl, runner)
        seeds = _seeds()
        markdown = report.write(
            FLAGS.out_dir, name, w, rep, runner, seeds, FLAGS.quick, tuple(FLAGS.gin_bindings)
        )
        print(markdown, flush=True)
        print(f"   ({(time.time() - start) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    app.run(main)
