r"""Reproduces the paper's claims at a scale that fits this machine (2 CPU cores).

  python benchmarks/reproduce.py --list                 # experiments, expected run times
  python benchmarks/reproduce.py c2_speedup             # one experiment
  python benchmarks/reproduce.py all                    # every experiment (see --list)
  python benchmarks/reproduce.py c2_speedup --quick     # seconds, tiny sizes: checks the harness

Each experiment prints its expected run time first and each run's progress
while it trains, then writes into `--out_dir` (default `docs/results/`):

  <experiment>.json   raw results: every run's every evaluation, the commands
  <experiment>.md     the table docs/REPRODUCTION.md quotes
  <experiment>.png    the plot (validation loss against steps)

Every training run is a real `binaries/train.py` process per group (through
`tf_codistill.local_cluster`, as `launch_local.py` runs them), configured by
the workload's gin file and bindings. Runs are kept under `--work_dir`, named
by a hash of their configuration: an experiment that needs a run another one
made (C2 compares with C1's baselines) reads it instead of training again,
so the numbers of different tables come from the same runs. `--fresh`
trains again.

Workloads (`WORKLOADS`):

* `planted`: gin/demo/codistill.gin's synthetic 10-class task (labels drawn
  from a planted teacher's softmax, so the best loss is above zero), an MLP
  32-128-128-10, Adam 3e-4, batch 64; 800,000 training examples, so the runs
  do not repeat data (as in the paper). Evaluated every 100 steps.
* `lm`: gin/lm/codistill.gin's LSTM language model, shrunk (2 x 128 units,
  64-d embeddings, 4k word pieces, 16 streams x 32 tokens), on real English
  text available offline: the CPython and Linux kernel documentation
  (Debian packages python3.11-doc and linux-doc-6.1, about 4.4 M words, see
  tf_codistill/datasets/debian_docs.py). Needs those packages installed.

`--quick` swaps in gin/demo/tiny.gin and gin/lm/tiny.gin (bundled text) and
a few dozen steps; its numbers mean nothing, it proves the harness runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Optional

from absl import app
from absl import flags

from tf_codistill import layout
from tf_codistill import local_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_bool("list", False, "List the experiments and their expected run times.")
flags.DEFINE_bool("quick", False, "Tiny sizes, seconds per experiment: checks the harness.")
flags.DEFINE_string("out_dir", os.path.join(REPO, "docs", "results"), "Tables, plots, JSON.")
flags.DEFINE_string(
    "work_dir", "/tmp/tf_codistill_reproduce", "Training runs (checkpoints, logs) go here."
)
flags.DEFINE_string(
    "corpus_dir",
    os.path.expanduser("~/.cache/tf_codistill/debian_docs"),
    "Where the `lm` workload's text corpus is prepared (once).",
)
flags.DEFINE_bool("fresh", False, "Train every run again instead of reading kept ones.")
flags.DEFINE_integer("parallel", 2, "Processes trained at once (a run's groups always together).")
flags.DEFINE_integer("seeds", 5, "Retrains per configuration in the churn experiments.")
flags.DEFINE_bool("verbose", False, "Show every output line of the runs, not only progress.")

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------
# Workloads and runs.


@dataclasses.dataclass(frozen=True)
class Workload:
    """A gin configuration and how to read its results.

    Attributes:
      name: short name.
      gin_file: the base gin file (under gin/).
      bindings: `train_group` bindings (short names) or full gin bindings.
      batch: B, the global batch size of one group.
      train_steps: steps of every run.
      eval_every: steps between evaluations.
      loss_keys: the validation loss in `metrics.json`, first found wins.
      seconds_per_step: one group's step alone on this machine (estimates).
      startup_s: a process's start, data and tracing (estimates).
      prepare: called once before the first run (e.g. build the corpus).
      unigram: gin bindings that make a label-smoothing prior of the unigram
        distribution (None: class frequencies are uniform).
    """

    name: str
    gin_file: str
    bindings: dict[str, Any]
    batch: int
    train_steps: int
    eval_every: int
    loss_keys: tuple[str, ...]
    seconds_per_step: float
    startup_s: float
    prepare: Optional[Callable[[], dict[str, Any]]] = None
    unigram: Optional[dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class Run:
    """Groups trained together (one process each) with one configuration.

    `codistill=False` runs independent groups (a baseline, or the members of
    an ensemble); with `data_split="same"` each of them reads all the data.
    """

    label: str
    workload: Workload
    num_groups: int = 1
    codistill: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()

    def bindings(self) -> dict[str, Any]:
        b = dict(self.workload.bindings)
        b["codistill"] = self.codistill
        b.update(dict(self.overrides))
        return b

    def key(self) -> str:
        config = {
            "gin_file": self.workload.gin_file,
            "bindings": self.bindings(),
            "num_groups": self.num_groups,
        }
        digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
        slug = re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")
        return f"{self.workload.name}-{slug}-{digest.hexdigest()[:10]}"

    def root(self) -> str:
        return os.path.join(FLAGS.work_dir, "runs", self.key())

    def steps(self) -> int:
        return int(self.bindings().get("train_steps", self.workload.train_steps))

    def estimate_s(self) -> float:
        w = self.workload
        per_step = w.seconds_per_step * (1.35 if self.codistill else 1.0)
        batch = self.bindings().get("global_batch_size", w.batch)
        per_step *= max(1.0, batch / w.batch) ** 0.7
        share = max(1.0, self.num_groups / 2)  # two cores
        exchange = self.bindings().get("exchange_every_n_steps", 50) if self.codistill else 0
        extra = self.steps() * 0.06 / exchange if exchange else 0.0
        return w.startup_s + (self.steps() * per_step + extra) * share

    def command(self, group: int) -> list[str]:
        argv = [
            sys.executable,
            os.path.join(REPO, "binaries", "train.py"),
            f"--gin_file={self.workload.gin_file}",
            f"--root_dir={self.root()}",
            f"--group_index={group}",
            f"--num_groups={self.num_groups}",
        ]
        for name, value in self.bindings().items():
            if name == "import":  # a module whose configurables a binding names
                argv.append(f"--gin_bindings=import {value}")
                continue
            if "." not in name:
                name = f"tf_codistill.train_lib.train_group.{name}"
            argv.append(f"--gin_bindings={name} = {_gin_value(value)}")
        return argv


class Raw(str):
    """A gin value written as it is (a list of references, ...), not as a Python literal."""


def _gin_value(value: Any) -> str:
    if isinstance(value, Raw) or (isinstance(value, str) and value.startswith(("@", "%"))):
        return str(value)
    return repr(value)


def _metrics_path(run: Run, group: int) -> str:
    return layout.metrics_path(layout.group_dir(run.root(), group))


def _finished(run: Run) -> bool:
    for g in range(run.num_groups):
        try:
            with open(_metrics_path(run, g)) as f:
                if json.load(f).get("steps") != run.steps():
                    return False
        except (OSError, ValueError):
            return False
    return True


_PROGRESS = re.compile(r"step \d+/\d+|\] train\.py: |Traceback|\b\w+(Error|Exception): ")


def _printer(prefixes: dict[str, str]):
    def write(line: str) -> None:
        if FLAGS.verbose or _PROGRESS.search(line):
            name = line[1 : line.index("]")] if line.startswith("[") else ""
            print(f"{prefixes.get(name, '')}{line}"[:240], flush=True)

    return write


def train(runs: Sequence[Run], prepared: set) -> None:
    """Trains the runs not kept yet, `--parallel` processes at a time."""
    todo = []
    for run in runs:
        if FLAGS.fresh and run.key() not in prepared and os.path.exists(run.root()):
            shutil.rmtree(run.root())
        prepared.add(run.key())
        if not _finished(run):
            todo.append(run)
        else:
            print(f"  kept: {run.label} ({run.root()})", flush=True)
    waves: list[list[Run]] = []
    for run in todo:
        if waves and sum(r.num_groups for r in waves[-1]) + run.num_groups <= FLAGS.parallel:
            waves[-1].append(run)
        else:
            waves.append([run])
    for wave in waves:
        _train_wave(wave)


def _train_wave(wave: Sequence[Run]) -> None:
    tasks, prefixes = [], {}
    for n, run in enumerate(wave):
        if os.path.exists(run.root()):
            shutil.rmtree(run.root())  # Unfinished: start again, not resume.
        os.makedirs(run.root())
        for g in range(run.num_groups):
            name = f"r{n}g{g}"
            tasks.append(local_cluster.Task(name, run.command(g), {"TF_CPP_MIN_LOG_LEVEL": "2"}))
            prefixes[name] = f"{run.label}: "
        with open(os.path.join(run.root(), "commands.json"), "w") as f:
            json.dump([run.command(g) for g in range(run.num_groups)], f, indent=1)
    labels = ", ".join(r.label for r in wave)
    estimate = max(r.estimate_s() for r in wave) * max(
        1.0, sum(r.num_groups for r in wave) / max(r.num_groups for r in wave) / 1.6
    )
    print(f"  training {labels} (about {estimate / 60:.1f} min)", flush=True)
    start = time.time()
    with local_cluster.LocalCluster(tasks, write=_printer(prefixes), grace_s=5) as cluster:
        cluster.start()
        codes = cluster.wait(timeout_s=max(600.0, 4 * estimate))
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        raise RuntimeError(f"runs {labels} failed: exit codes {failed}")
    for run in wave:
        with open(os.path.join(run.root(), "wall_s.json"), "w") as f:
            json.dump({"wall_s": time.time() - start, "trained_with": labels}, f)
    print(f"  done in {(time.time() - start) / 60:.1f} min: {labels}", flush=True)


def history(run: Run, group: int) -> list[tuple[int, float]]:
    """(step, validation loss) of every evaluation of a group."""
    with open(_metrics_path(run, group)) as f:
        evaluations = json.load(f)["history"]
    out = []
    for e in evaluations:
        key = next((k for k in run.workload.loss_keys if k in e), None)
        if key is None:
            raise KeyError(f"{_metrics_path(run, group)}: none of {run.workload.loss_keys}")
        out.append((int(e["step"]), float(e[key])))
    return out


def best(curve: Sequence[tuple[int, float]]) -> tuple[int, float]:
    """(step, loss) of the lowest validation loss (the earliest if tied)."""
    return min(curve, key=lambda p: (p[1], p[0]))


def steps_to(curve: Sequence[tuple[int, float]], target: float) -> Optional[int]:
    """The first evaluated step whose loss is at or below `target` (None: never)."""
    return next((s for s, v in curve if v <= target), None)


# ----------------------------------------------------------------------------
# Workloads.

PLANTED_EXAMPLES = 800_000
# The validation number of every planted run: plain cross-entropy as a metric,
# so runs whose training loss is another (label smoothing) compare on it too.
PLANTED_XENT = {
    "metrics": Raw('["accuracy", @xent/keras.metrics.SparseCategoricalCrossentropy]'),
    "xent/keras.metrics.SparseCategoricalCrossentropy.from_logits": True,
    "xent/keras.metrics.SparseCategoricalCrossentropy.name": "cross_entropy",
}


def planted() -> Workload:
    if FLAGS.quick:
        return Workload(
            name="planted-quick",
            gin_file="demo/tiny.gin",
            bindings={**PLANTED_XENT, "train_steps": 40, "steps_per_loop": 10, "burn_in_steps": 10},
            batch=16,
            train_steps=40,
            eval_every=10,
            loss_keys=("val_cross_entropy",),
            seconds_per_step=0.003,
            startup_s=10,
        )
    return Workload(
        name="planted",
        gin_file="demo/codistill.gin",
        bindings={
            **PLANTED_XENT,
            "tf_codistill.datasets.planted_input_fn.num_train_examples": PLANTED_EXAMPLES,
            "train_steps": 3000,
            "steps_per_loop": 100,
            "log_every_n_steps": 500,
            "burn_in_steps": 300,
            "exchange_every_n_steps": 50,
            "wait_for_peers_s": 120.0,
        },
        batch=64,
        train_steps=3000,
        eval_every=100,
        loss_keys=("val_cross_entropy",),
        seconds_per_step=0.004,
        startup_s=12,
    )


def planted_small() -> Workload:
    """`planted` with the demo's 24,000 training examples: runs repeat their data.

    A group at B sees its 12,000-example shard 16 times in 3,000 steps: the
    regime where codistillation acts as a regulariser (Sodhani et al.), not
    the paper's (no repetition). Reported next to `planted` to tell them apart.
    """
    w = planted()
    bindings = dict(w.bindings)
    bindings["tf_codistill.datasets.planted_input_fn.num_train_examples"] = (
        2_400 if FLAGS.quick else 24_000
    )
    return dataclasses.replace(
        w, name=w.name.replace("planted", "planted_small"), bindings=bindings
    )


def _prepare_corpus() -> dict[str, Any]:
    from tf_codistill.datasets import debian_docs

    print(f"  preparing the text corpus in {FLAGS.corpus_dir} (once)", flush=True)
    prepared = debian_docs.prepare(FLAGS.corpus_dir)
    corpus = debian_docs.text_corpus(prepared, **LM_VOCAB)
    start = time.time()
    size = corpus.vocab_size
    print(f"  vocabulary: {size} ids ({time.time() - start:.0f} s)", flush=True)
    return {"corpus": prepared.manifest["counts"], "vocab_size": size}


LM_VOCAB = dict(target_vocab_size=4096, vocab_max_corpus_chars=3_000_000)


def lm() -> Workload:
    text = "tf_codistill.datasets.text"
    if FLAGS.quick:
        return Workload(
            name="lm-quick",
            gin_file="lm/tiny.gin",
            bindings={"train_steps": 20, "steps_per_loop": 10, "wait_for_peers_s": 60.0},
            batch=4,
            train_steps=20,
            eval_every=10,
            loss_keys=("val_token_cross_entropy",),
            seconds_per_step=0.02,
            startup_s=15,
            unigram={
                "tf_codistill.label_smoothing.LabelSmoothingCrossEntropy.prior": (
                    f"@{text}.unigram_distribution()"
                )
            },
        )
    cache = FLAGS.corpus_dir
    streams = 16
    return Workload(
        name="lm",
        gin_file="lm/codistill.gin",
        bindings={
            f"{text}.TextCorpus.tfds_name": None,
            f"{text}.TextCorpus.train_files": os.path.join(cache, "train", "*.txt"),
            f"{text}.TextCorpus.eval_files": os.path.join(cache, "valid", "*.txt"),
            f"{text}.TextCorpus.document_separator": "file",
            f"{text}.TextCorpus.vocab_dir": cache,
            f"{text}.TextCorpus.target_vocab_size": LM_VOCAB["target_vocab_size"],
            f"{text}.TextCorpus.vocab_max_corpus_chars": LM_VOCAB["vocab_max_corpus_chars"],
            f"{text}.lm_input_fn.max_eval_documents": 200,
            f"{text}.lm_input_fn.eval_batches": 40,
            "eval_steps": 40,
            "tf_codistill.models.lstm_lm.batch_size": streams,
            "tf_codistill.models.lstm_lm.embedding_dim": 64,
            "tf_codistill.models.lstm_lm.units": 128,
            "keras.optimizers.Adam.learning_rate": 3e-3,
            "global_batch_size": streams,
            "train_steps": 1000,
            "steps_per_loop": 100,
            "log_every_n_steps": 100,
            "burn_in_steps": 200,
            "exchange_every_n_steps": 50,
            "wait_for_peers_s": 300.0,
        },
        batch=streams,
        train_steps=1000,
        eval_every=100,
        loss_keys=("val_token_cross_entropy",),
        seconds_per_step=0.06,
        startup_s=25,
        prepare=_prepare_corpus,
        unigram={
            "tf_codistill.label_smoothing.LabelSmoothingCrossEntropy.prior": (
                f"@{text}.unigram_distribution()"
            )
        },
    )


# ----------------------------------------------------------------------------
# Building blocks shared by the experiments.


def baseline(w: Workload, batch_multiple: int = 1, seed: int = 0) -> Run:
    """One group (sync SGD) at batch `batch_multiple` x B."""
    b = w.batch * batch_multiple
    overrides: list[tuple[str, Any]] = [("model_seed", seed), ("data_seed", seed)]
    if batch_multiple != 1:
        overrides.append(("global_batch_size", b))
        if w.gin_file.startswith("lm/"):  # carried state: the model knows its streams
            overrides.append(("tf_codistill.models.lstm_lm.batch_size", b))
    label = "1 group, batch B" if batch_multiple == 1 else f"1 group, batch {batch_multiple}B"
    return Run(label, w, 1, False, tuple(overrides))


def independent(w: Workload, seed: int = 0, num_groups: int = 2) -> Run:
    """Independent groups, each on all the data (another order): a retrain each.

    Group 0 is a baseline at B; the groups together are the ensemble.
    """
    return Run(
        f"{num_groups} independent groups" + (f", seed {seed}" if seed else ""),
        w,
        num_groups,
        False,
        (("data_split", "same"), ("model_seed", 100 * seed), ("data_seed", seed)),
    )


def codistill(w: Workload, num_groups: int = 2, seed: int = 0, **overrides: Any) -> Run:
    parts = [f"{num_groups}-way codistillation"]
    if overrides.get("data_split") == "same":
        parts.append("same data")
    if "exchange_every_n_steps" in overrides:
        parts.append(f"exchange every {overrides['exchange_every_n_steps']}")
    if "burn_in_steps" in overrides:
        parts.append(f"burn-in {overrides['burn_in_steps']}")
    if seed:
        parts.append(f"seed {seed}")
    items = [("model_seed", 100 * seed), ("data_seed", seed)] + sorted(overrides.items())
    return Run(", ".join(parts), w, num_groups, True, tuple(items))


def label_smoothing(w: Workload, prior: str, smoothing: float) -> Run:
    """One group with label smoothing toward `uniform` or the `unigram` prior.

    PAPER.md 2.3 / tf_codistill/label_smoothing.py: the paper's "0.99"
    (uniform) and "0.9 - unigram" are read as smoothing 0.01 and 0.1.
    """
    ls = "tf_codistill.label_smoothing.LabelSmoothingCrossEntropy"
    overrides = {
        "import": "tf_codistill.label_smoothing",
        "loss": f"@{ls}()",
        f"{ls}.smoothing": smoothing,
    }
    if prior == "unigram":
        if w.unigram is None:
            raise ValueError(f"workload {w.name} has no unigram prior")
        overrides.update(w.unigram)
    return Run(
        f"1 group, label smoothing {smoothing} to {prior}",
        w,
        1,
        False,
        tuple(sorted(overrides.items())),
    )


def curves(runs: Sequence[Run]) -> dict[str, list[tuple[int, float]]]:
    """One curve per group of each run, labelled `run` or `run, group g`."""
    out = {}
    for run in runs:
        for g in range(run.num_groups):
            name = run.label if run.num_groups == 1 else f"{run.label}, group {g}"
            out[name] = history(run, g)
    return out


def _ensemble_loss(run: Run) -> dict[str, Any]:
    """Evaluates the ensemble of a run's groups' latest checkpoints (evaluate.py)."""
    out_dir = layout.eval_dir(run.root())
    name = "ensemble_" + "_".join(str(g) for g in range(run.num_groups))
    path = os.path.join(out_dir, f"eval_{name}.json")
    groups = [f"--group={g}" for g in range(run.num_groups)]
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f)["evaluations"][-1]["step"] == run.steps():
                return _ensemble_entry(run, path)
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "binaries", "evaluate.py"),
            f"--root_dir={run.root()}",
            "--ensemble",
            *groups,
            f"--output_dir={out_dir}",
        ],
        check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=not FLAGS.verbose,
    )
    return _ensemble_entry(run, path)


def _ensemble_entry(run: Run, path: str) -> dict[str, Any]:
    with open(path) as f:
        entry = json.load(f)["evaluations"][-1]
    key = next((k[4:] for k in run.workload.loss_keys if k[4:] in entry), None)
    if key is None:
        raise KeyError(f"{path} has none of {run.workload.loss_keys}")
    return {"step": entry["step"], "loss": entry[key], "metrics": entry}


def _churn(specs: Sequence[str], out: str) -> dict[str, Any]:
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "binaries", "churn.py"),
            *[f"--model={s}" for s in specs],
            f"--output_json={out}",
        ],
        check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=not FLAGS.verbose,
    )
    with open(out) as f:
        return json.load(f)


# ----------------------------------------------------------------------------
# Experiments. Each returns (raw results, markdown table, curves to plot).


def _fmt_steps(s: Optional[int]) -> str:
    return "never" if s is None else str(s)


def _ratio(a: Optional[int], b: Optional[int]) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def exp_c1(w: Workload, train_) -> tuple[dict, str, dict]:
    runs = [baseline(w, m) for m in (1, 2, 4)]
    train_(runs)
    c = curves(runs)
    bests = {r.label: best(history(r, 0)) for r in runs}
    target = max(v for _, v in bests.values())  # every run reaches it
    rows = [
        "| run | batch | best val loss (step) | steps to target | speed-up vs half the batch |",
        "| --- | --- | --- | --- | --- |",
    ]
    steps = {}
    previous = None
    for r, m in zip(runs, (1, 2, 4), strict=True):
        s = steps_to(history(r, 0), target)
        steps[r.label] = s
        b_step, b_loss = bests[r.label]
        speedup = _ratio(previous, s) if previous is not None else "-"
        rows.append(
            f"| {r.label} | {m * w.batch} | {b_loss:.4f} ({b_step}) | {_fmt_steps(s)} | {speedup} |"
        )
        previous = s
    table = f"Target: {target:.4f}, the highest of the three runs' best validation losses.\n\n"
    table += "\n".join(rows)
    raw = {"target": target, "steps_to_target": steps, "best": bests}
    return raw, table, c


def _speedup_rows(w: Workload, baselines: Sequence[Run], cod_runs: Sequence[Run]):
    """Steps of each codistilling group to the best baseline's best loss."""
    base_best = {r.label: best(history(r, 0)) for r in baselines}
    best_label = min(base_best, key=lambda k: base_best[k][1])
    best_step, target = base_best[best_label]
    rows = [
        f"Target: {target:.4f}, the best validation loss of the best baseline "
        f"({best_label}, at step {best_step}).",
        "",
        "| run | best val loss (step) | final val loss | steps to target | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    raw = {"target": target, "best_baseline": best_label, "runs": {}}
    for r in baselines:
        h = history(r, 0)
        s, v = base_best[r.label]
        t = steps_to(h, target)
        rows.append(
            f"| {r.label} | {v:.4f} ({s}) | {h[-1][1]:.4f} | {_fmt_steps(t)} | "
            f"{_ratio(best_step, t)} |"
        )
        raw["runs"][r.label] = {"best": [s, v], "final": h[-1][1], "steps_to_target": t}
    for r in cod_runs:
        per_group = []
        for g in range(r.num_groups):
            h = history(r, g)
            s, v = best(h)
            t = steps_to(h, target)
            per_group.append({"best": [s, v], "final": h[-1][1], "steps_to_target": t})
        worst_t = (
            None
            if any(p["steps_to_target"] is None for p in per_group)
            else max(p["steps_to_target"] for p in per_group)
        )
        mean_best = sum(p["best"][1] for p in per_group) / len(per_group)
        mean_final = sum(p["final"] for p in per_group) / len(per_group)
        rows.append(
            f"| {r.label} (mean of {r.num_groups} groups; steps: slowest group) | "
            f"{mean_best:.4f} | {mean_final:.4f} | {_fmt_steps(worst_t)} | "
            f"{_ratio(best_step, worst_t)} |"
        )
        raw["runs"][r.label] = {"groups": per_group, "steps_to_target": worst_t}
    return raw, "\n".join(rows)


def exp_c2(w: Workload, train_) -> tuple[dict, str, dict]:
    baselines = [baseline(w, 1), baseline(w, 2)]
    cod = [codistill(w, 2)]
    train_(baselines + cod)
    raw, table = _speedup_rows(w, baselines, cod)
    return raw, table, curves(baselines + cod)


def exp_burn_in(w: Workload, train_) -> tuple[dict, str, dict]:
    """C2 again with distillation switched on later: does a weak early teacher hurt?"""
    late = int(0.6 * w.train_steps)
    baselines = [baseline(w, 1), baseline(w, 2)]
    cod = [codistill(w, 2), codistill(w, 2, burn_in_steps=late)]
    train_(baselines + cod)
    raw, table = _speedup_rows(w, baselines, cod)
    burn_in = w.bindings.get("burn_in_steps", "the gin file's")
    table = (
        f"Burn-in {burn_in} steps (the workload's) and {late} steps (60% of the run).\n\n" + table
    )
    return raw, table, curves(baselines + cod)


def exp_nway(w: Workload, train_) -> tuple[dict, str, dict]:
    baselines = [baseline(w, 1), baseline(w, 2)]
    cod = [codistill(w, n) for n in ((2, 3) if FLAGS.quick else (2, 3, 4))]
    train_(baselines + cod)
    raw, table = _speedup_rows(w, baselines, cod)
    return raw, table, curves(baselines + cod)


def exp_c3(w: Workload, train_) -> tuple[dict, str, dict]:
    ind = independent(w)
    # The paper's two label-smoothing baselines; the planted task's classes
    # have no meaningful unigram prior, so it gets two strengths toward uniform.
    second = ("unigram", 0.1) if w.unigram else ("uniform", 0.1)
    ls = [label_smoothing(w, "uniform", 0.01), label_smoothing(w, *second)]
    cod = codistill(w, 2)
    base = baseline(w, 1)
    runs = [base, ind, cod, *ls]
    train_(runs)
    ens = _ensemble_loss(ind)
    rows = ["| model | best val loss (step) | final val loss |", "| --- | --- | --- |"]
    raw = {}
    for r in [base, *ls]:
        h = history(r, 0)
        s, v = best(h)
        rows.append(f"| {r.label} | {v:.4f} ({s}) | {h[-1][1]:.4f} |")
        raw[r.label] = {"best": [s, v], "final": h[-1][1]}
    for g in range(2):
        h = history(ind, g)
        s, v = best(h)
        rows.append(f"| independent group {g} | {v:.4f} ({s}) | {h[-1][1]:.4f} |")
        raw[f"independent group {g}"] = {"best": [s, v], "final": h[-1][1]}
    rows.append(
        f"| 2-way ensemble of the independent groups (final checkpoints) | - | {ens['loss']:.4f} |"
    )
    raw["ensemble"] = ens
    for g in range(2):
        h = history(cod, g)
        s, v = best(h)
        rows.append(f"| 2-way codistillation, group {g} | {v:.4f} ({s}) | {h[-1][1]:.4f} |")
        raw[f"codistillation group {g}"] = {"best": [s, v], "final": h[-1][1]}
    c = curves([base, cod, *ls])
    return raw, "\n".join(rows), c


def exp_c4(w: Workload, train_) -> tuple[dict, str, dict]:
    base = baseline(w, 1)
    runs = [base, codistill(w, 2), codistill(w, 2, data_split="same")]
    train_(runs)
    rows = ["| run | best val loss (step) | final val loss |", "| --- | --- | --- |"]
    raw = {}
    for r in runs:
        for g in range(r.num_groups):
            h = history(r, g)
            s, v = best(h)
            name = r.label if r.num_groups == 1 else f"{r.label}, group {g}"
            rows.append(f"| {name} | {v:.4f} ({s}) | {h[-1][1]:.4f} |")
            raw[name] = {"best": [s, v], "final": h[-1][1]}
    return raw, "\n".join(rows), curves(runs)


def exp_c5(w: Workload, train_) -> tuple[dict, str, dict]:
    k = int(w.bindings.get("exchange_every_n_steps", 5))  # demo/tiny.gin's: 5
    intervals = (1, k) if FLAGS.quick else (1, k, 2 * k, 5 * k)
    base = baseline(w, 1)
    # Every k steps is the workload's default exchange: C2's run.
    cod = [
        codistill(w, 2) if n == k else codistill(w, 2, exchange_every_n_steps=n) for n in intervals
    ]
    runs = [base, *cod]
    train_(runs)
    rows = [
        "| exchange every | mean best val loss | mean final val loss "
        "| mean teacher staleness (steps, signed, over both groups) |",
        "| --- | --- | --- | --- |",
    ]
    raw = {}
    h = history(base, 0)
    rows.append(f"| no codistillation (1 group, batch B) | {best(h)[1]:.4f} | {h[-1][1]:.4f} | - |")
    for r, n in zip(cod, intervals, strict=True):
        bests = [best(history(r, g))[1] for g in range(2)]
        finals = [history(r, g)[-1][1] for g in range(2)]
        stale = _mean_staleness(r)
        name = f"{n} steps" + (" (about a fresh teacher)" if n == 1 else "")
        rows.append(
            f"| {name} | {sum(bests) / 2:.4f} | {sum(finals) / 2:.4f} | "
            f"{'n/a' if stale is None else f'{stale:.0f}'} |"
        )
        raw[name] = {"best": bests, "final": finals, "mean_staleness": stale}
    return raw, "\n".join(rows), curves(runs)


def _mean_staleness(run: Run) -> Optional[float]:
    """Mean logged `teacher_staleness` after burn-in, over all groups, signed.

    Staleness is a group's step minus its teacher's. When one group runs d
    steps ahead of the other, its staleness is the teacher's age + d and the
    other's the age - d: the signed mean over the groups is the age, which is
    what the exchange interval controls, without the speed difference.
    """
    from tf_codistill.testing import drills

    burn_in = int(run.bindings().get("burn_in_steps", 0))
    values = []
    for g in range(run.num_groups):
        group_dir = layout.group_dir(run.root(), g)
        values += [v for s, v in drills.scalars(group_dir, "teacher_staleness") if s > burn_in]
    return sum(values) / len(values) if values else None


def exp_c8(w: Workload, train_) -> tuple[dict, str, dict]:
    # Retrain 0 is C3's independent pair and C2's codistillation run.
    seeds = range(2 if FLAGS.quick else FLAGS.seeds)
    ind = [independent(w, seed) for seed in seeds]
    cod = [codistill(w, 2, seed=seed) for seed in seeds]
    train_(ind + cod)
    out = os.path.join(FLAGS.work_dir, "churn", w.name)
    os.makedirs(out, exist_ok=True)
    ens = [_ensemble_loss(r) for r in ind]
    kinds = {
        "baseline (1 group)": ([f"{r.root()}:0" for r in ind], [history(r, 0)[-1][1] for r in ind]),
        "2-way ensemble": ([f"{r.root()}:0+1" for r in ind], [e["loss"] for e in ens]),
        "2-way codistillation (group 0)": (
            [f"{r.root()}:0" for r in cod],
            [history(r, 0)[-1][1] for r in cod],
        ),
    }
    rows = [
        f"{len(seeds)} retrains of each (different seeds); mean ± half-range over "
        "retrains (loss) and over pairs of retrains (churn).",
        "",
        "| model | validation log loss | mean abs. difference of probabilities | "
        "top-1 disagreement |",
        "| --- | --- | --- | --- |",
    ]
    raw = {}
    for name, (specs, losses) in kinds.items():
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower())
        report = _churn(specs, os.path.join(out, f"{slug}.json"))
        mad, dis = report["mean_abs_diff"], report["disagreement"]
        mean = sum(losses) / len(losses)
        half = (max(losses) - min(losses)) / 2
        rows.append(
            f"| {name} | {mean:.4f} ± {half:.4f} | {mad['mean']:.4f} ± {mad['half_range']:.4f} "
            f"| {dis['mean']:.4f} ± {dis['half_range']:.4f} |"
        )
        raw[name] = {"losses": losses, "churn": report}
    return raw, "\n".join(rows), curves(ind[:1] + cod[:1])


WORKLOADS = {"planted": planted, "planted_small": planted_small, "lm": lm}


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    fn: Callable[[Workload, Callable], tuple[dict, str, dict]]
    workloads: tuple[str, ...]


EXPERIMENTS = {
    e.name: e
    for e in [
        Experiment(
            "c1_saturation",
            "one group at B, 2B, 4B: where doubling stops helping",
            exp_c1,
            ("planted",),
        ),
        Experiment(
            "c2_speedup",
            "2 codistilling groups at B vs 1 group at B and 2B",
            exp_c2,
            ("planted", "planted_small", "lm"),
        ),
        Experiment(
            "c3_explain", "ensemble and label smoothing baselines", exp_c3, ("planted", "lm")
        ),
        Experiment("c4_data", "disjoint shards vs the same data", exp_c4, ("planted",)),
        Experiment("c5_staleness", "exchange every 1, k, 2k, 5k steps", exp_c5, ("planted",)),
        Experiment(
            "c8_churn",
            "churn between retrains: baseline, ensemble, codistillation",
            exp_c8,
            ("planted", "lm"),
        ),
        Experiment(
            "nway", "beyond the paper: 2, 3 and 4 codistilling groups", exp_nway, ("planted",)
        ),
        Experiment(
            "burn_in",
            "C2 with a late burn-in: is an early, weak teacher what hurts?",
            exp_burn_in,
            ("lm", "planted"),
        ),
    ]
}


# ----------------------------------------------------------------------------
# Output.


def plot(path: str, title: str, data: dict[str, list[tuple[int, float]]], ylabel: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed (pip install -e '.[plots]'): no plot", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, curve in data.items():
        steps, losses = [s for s, _ in curve], [v for _, v in curve]
        style = "--" if "group 1" in label or "group 2" in label or "group 3" in label else "-"
        ax.plot(steps, losses, style, label=label, linewidth=1.2)
    all_losses = sorted(v for curve in data.values() for _, v in curve)
    if all_losses:  # leave out the first evaluations' large losses
        low = all_losses[0]
        high = all_losses[min(len(all_losses) - 1, int(0.8 * len(all_losses)))]
        ax.set_ylim(low - 0.05 * (high - low + 1e-6), high + 0.1 * (high - low + 1e-6))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{os.cpu_count()} x {model}"


def run_experiment(exp: Experiment, workload_name: str, prepared: set) -> dict:
    w = WORKLOADS[workload_name]()
    name = f"{exp.name}-{w.name}"
    print(f"== {name}: {exp.claim}", flush=True)
    info = {}
    if w.prepare is not None and not FLAGS.quick:
        info = w.prepare()
    start = time.time()
    used: list[Run] = []

    def train_(runs):
        used.extend(runs)
        train(runs, prepared)

    result, table, data = exp.fn(w, train_)
    elapsed = time.time() - start
    # Training time of the runs it reports, wherever they were trained (runs
    # trained together in one wave share its time).
    waves = {}
    for run in used:
        try:
            with open(os.path.join(run.root(), "wall_s.json")) as f:
                kept = json.load(f)
            waves[kept["trained_with"]] = kept["wall_s"]
        except (OSError, ValueError, KeyError):
            pass
    training_s = sum(waves.values())
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    ylabel = "validation " + w.loss_keys[0].replace("val_", "").replace("_", " ")
    png = os.path.join(FLAGS.out_dir, f"{name}.png")
    plotted = plot(png, f"{name}: {exp.claim}", data, ylabel)
    header = (
        f"### {name}: {exp.claim}\n\n"
        f"Workload `{w.name}` (`gin/{w.gin_file}` + the bindings in "
        f"benchmarks/reproduce.py), B = {w.batch}, {w.train_steps} steps, evaluated every "
        f"{w.eval_every}. Machine: {_machine()}. Wall time of training its runs: "
        f"{training_s / 60:.1f} min, in waves of up to {FLAGS.parallel} processes on the "
        "machine's 2 cores (other work may have shared them).\n\n"
    )
    markdown = header + table + "\n"
    if plotted:
        markdown += f"\n![{name}]({os.path.basename(png)})\n"
    with open(os.path.join(FLAGS.out_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
    raw = {
        "experiment": exp.name,
        "workload": dataclasses.asdict(w) | {"prepare": None},
        "quick": FLAGS.quick,
        "machine": _machine(),
        "wall_s": elapsed,
        "training_s": training_s,
        "info": info,
        "result": result,
        "curves": data,
    }
    with open(os.path.join(FLAGS.out_dir, f"{name}.json"), "w") as f:
        json.dump(raw, f, indent=1, default=str)
    print(markdown, flush=True)
    return raw


class _Planned(Exception):
    pass


def _planned_estimate(exp: Experiment, workload_name: str) -> float:
    """Seconds to train an experiment's runs from scratch (no kept runs)."""
    w = WORKLOADS[workload_name]()
    runs: list[Run] = []

    def collect(rs):
        runs.extend(rs)
        raise _Planned()

    try:
        exp.fn(w, collect)
    except _Planned:
        pass
    total_groups = sum(r.num_groups for r in runs)
    waves = max(1.0, total_groups / FLAGS.parallel)
    return max((r.estimate_s() for r in runs), default=0.0) * waves


def _stop(signum, frame):
    # Raised in the main thread: the LocalCluster of the running wave stops
    # its training processes on the way out.
    raise SystemExit(128 + signum)


def main(argv):
    # Background jobs of a non-interactive shell start with SIGINT ignored;
    # either signal must still stop the harness and the runs it started.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    names = argv[1:]
    if FLAGS.list or not names:
        print("experiments (expected minutes from scratch on 2 cores; kept runs are reused):")
        for exp in EXPERIMENTS.values():
            for wl in exp.workloads:
                minutes = _planned_estimate(exp, wl) / 60
                print(f"  {exp.name:14s} {wl:8s} ~{minutes:5.1f} min  {exp.claim}")
        if not names:
            print("usage: reproduce.py EXPERIMENT[:WORKLOAD] ... | all  [--quick]")
        return
    if names == ["all"]:
        names = list(EXPERIMENTS)
    todo = []
    for spec in names:
        exp_name, _, workload = spec.partition(":")
        if exp_name not in EXPERIMENTS:
            sys.exit(f"reproduce.py: unknown experiment {exp_name!r}; one of {sorted(EXPERIMENTS)}")
        exp = EXPERIMENTS[exp_name]
        if workload and workload not in exp.workloads:
            sys.exit(f"reproduce.py: {exp_name} runs on {exp.workloads}, not {workload!r}")
        todo += [(exp, wl) for wl in ([workload] if workload else exp.workloads)]
    total = sum(_planned_estimate(e, wl) for e, wl in todo)
    print(
        f"{len(todo)} experiment(s); expect at most about {math.ceil(total / 60)} min "
        "(less where runs are kept)",
        flush=True,
    )
    prepared: set = set()
    for exp, wl in todo:
        run_experiment(exp, wl, prepared)


if __name__ == "__main__":
    app.run(main)
