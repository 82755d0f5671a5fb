r"""What codistillation costs per step, timed step by step in one process.

Timing whole epochs (the retired `--mode=epochs`) gave per-repeat ratios
from 0.65 to 2.7 on a loaded 2-vCPU host: one epoch of a variant meets one
burst of someone else's load and the next does not. Here every variant runs
one step in turn (round-robin, same process, each on its own iterator over
the same cached batches), so drifts in machine speed hit all of them alike,
and the statistics are over single steps.

For each workload (an MLP, an LSTM language model and the study's causal
convolutional byte LM at B = 512, `WORKLOADS`):

1. Single steps, round-robin (`--mlp_rounds`, `--lstm_rounds` per variant):
     plain             the student's tf_keras train step
     teacher           one teacher forward pass alone (inference mode): what
                       a teacher adds at least; plain + teacher is the bound
     teacher-<half>    the same in `--half_dtype` (bfloat16; float16 on GPUs)
     codistill-1       CodistillModel's train step, one peer
     codistill-1-<half> the same with `teacher_dtype=<half>`
     codistill-3-all   three peers, `peer_selection="all_peers"`
     codistill-3-random, codistill-3-round_robin
                       three peers, one teacher slot (`random_peer`,
                       `round_robin`): one teacher forward for any N
     codistill-1-unfused (`--unfused_psi`) one peer with the library's psi
                       before it used the fused cross-entropy kernel
                       (`unfused_cross_entropy` below): what the fusion saves
     keras3-plain      the same student in Keras 3
     keras3-distiller  Keras 3's `keras.distillation.Distiller`, 1 teacher
   Keras 3's Distiller is compared with Keras 3's own plain step.
   Teacher memory (teacher copies, their variables' bytes) is reported for
   each codistill variant.
2. Exchange runs: one peer, an exchange every 50 steps (the group publishes
   its own checkpoint and reloads its peer, which publishes just before each
   boundary, untimed), driven step by step with `fit`'s callbacks. The runs
   take turns in blocks of 50 steps, each block holding one exchange
   boundary 40 steps in (so background work ends inside its own block).
     none                   no exchanges (the baseline median)
     blocking               blocking reload and blocking publish
     background reads       background reload, blocking publish (the default)
     background             background reload and `background_publish=True`
     background, low prio   the same, the library's helper threads run at a
                            lower OS priority during its blocks (experiment;
                            needs the right to raise a priority back: root)
   Reported: p50, p99 and max step; p99 over the median of `none`.
3. One blocking publish and one blocking reload (median of a few).

  nice -n 10 python benchmarks/step_cost.py --markdown=docs/benchmarks.md \
      --json=docs/benchmarks.json

Runs unchanged on a GPU host (`--device`, default the first GPU if there is
one; `--half_dtype=float16`); it has only been run on CPUs so far.
"""

import atexit
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

WORKLOADS = {
    # Compute-bound on a CPU: three 1024-wide layers, batch 256 (2.2 M parameters).
    "mlp": dict(batch=256, examples=256 * 16, input_dim=64, classes=10, hidden=(1024, 1024, 1024)),
    # Byte-level LM: 2 x LSTM 256 on 64-token sequences, batch 32 (0.9 M parameters).
    "lstm": dict(batch=32, examples=32 * 8, length=64, vocab=256, embed=64, units=256),
    # The study's byte LM (gin/lm/conv.gin, 0.27 M parameters) at its near-saturated
    # batch: 512 streams of 32 bytes, a 258-way softmax at every position, so
    # psi and the softmax are a large share of the step.
    "convlm": dict(
        batch=512, examples=512 * 4, length=32, vocab=258, embed=32, context=16, hidden=(256, 256)
    ),
}
EXCHANGE_EVERY = 50
# Exchange runs: where a timed block starts, relative to an exchange boundary
# (blocks are [boundary - 40, boundary + 10)), and the warm-up start.
BLOCK_LEAD, WARMUP_START = 40, 45
FIRST_BLOCK = 2 * EXCHANGE_EVERY - BLOCK_LEAD  # Step 60: blocks hold boundaries 100, 150, ...
AFTER = 5  # Steps after a boundary reported as "after".


# ----------------------------------------------------------------------
# Pure helpers (tests/test_step_cost.py).


def summarize(seconds):
    """p50, p99, max and mean of step times, in ms."""
    t = 1e3 * np.asarray(seconds, dtype=float)
    return {
        "n": int(t.size),
        "p50_ms": float(np.percentile(t, 50)),
        "p99_ms": float(np.percentile(t, 99)),
        "max_ms": float(t.max()),
        "mean_ms": float(t.mean()),
    }


def paired_ratios(times, base):
    """Per-round ratios `times[i] / base[i]`: median and interquartile range."""
    r = np.asarray(times, dtype=float) / np.asarray(base, dtype=float)
    q1, q2, q3 = np.percentile(r, [25, 50, 75])
    return {"median": float(q2), "q1": float(q1), "q3": float(q3)}


def step_ratios(times, half):
    """Ratios and targets from the round-robin step times of one workload.

    Args:
      times: variant name -> list of step times (seconds), the same number
        per variant, index i of each taken in the same round.
      half: the half-precision name used in the variants (e.g. "bfloat16").

    Returns:
      Per variant: summary, `p50_over_plain` (ratio of medians) and the
      paired per-round ratio; and `derived`: the bound, the excess over it,
      the half-precision cut, flatness in N and the Distiller comparison
      (keys absent when their variants were not timed).
    """
    med = {n: float(np.median(t)) for n, t in times.items()}
    out = {"variants": {}, "derived": {}}
    for n, t in times.items():
        out["variants"][n] = {
            **summarize(t),
            "p50_over_plain": med[n] / med["plain"],
            "paired_over_plain": paired_ratios(t, times["plain"]),
        }
    d = out["derived"]

    def have(*names):
        return all(n in med for n in names)

    for suffix, teacher in (("", "teacher"), (f"-{half}", f"teacher-{half}")):
        one = f"codistill-1{suffix}"
        if have(one, teacher):
            key = suffix.lstrip("-") or "float32"
            d[f"bound_{key}"] = (med["plain"] + med[teacher]) / med["plain"]
            d[f"overhead_{key}"] = med[one] / med["plain"] - 1
            # Issue 11's target: codistill-1 <= 1.05 x (plain + teacher forward).
            d[f"over_bound_{key}"] = med[one] / (med["plain"] + med[teacher])
    if "overhead_float32" in d and f"overhead_{half}" in d and d["overhead_float32"] > 0:
        # Target: the half-precision teacher cuts the one-peer overhead by >= 25%.
        d["half_cut"] = 1 - d[f"overhead_{half}"] / d["overhead_float32"]
    for rule in ("all", "random", "round_robin"):
        if have(f"codistill-3-{rule}", "codistill-1"):
            # Flat in N: 3 peers (one sampled slot) cost what 1 peer does.
            d[f"3_{rule}_over_1"] = med[f"codistill-3-{rule}"] / med["codistill-1"]
    if have("codistill-1-unfused", "codistill-1"):
        d["unfused_over_fused"] = med["codistill-1-unfused"] / med["codistill-1"]
        # Per round, the two steps taken in the same round: the paired ratio and
        # how many rounds the unfused step was the slower one.
        unfused, fused = times["codistill-1-unfused"], times["codistill-1"]
        d["unfused_over_fused_paired"] = paired_ratios(unfused, fused)
        d["unfused_slower_rounds"] = [
            sum(u > f for u, f in zip(unfused, fused, strict=True)),
            len(fused),
        ]
    if have("keras3-plain", "keras3-distiller"):
        d["distiller_over_keras3_plain"] = med["keras3-distiller"] / med["keras3-plain"]
        d["keras3_plain_over_plain"] = med["keras3-plain"] / med["plain"]
    return out


def exchange_summary(runs):
    """Per exchange run: summary and p99 over the median of the run without exchanges.

    Args:
      runs: run name -> {"times": [...] seconds, "boundary": [...] seconds
        of the steps that crossed an exchange boundary, "after": [...]
        seconds of the 5 steps after each, ...}; must hold "none".
    """
    base = float(np.median(runs["none"]["times"]))
    out = {}
    for name, r in runs.items():
        s = summarize(r["times"])
        s["p99_over_none_p50"] = s["p99_ms"] / (1e3 * base)
        s["p50_over_none_p50"] = s["p50_ms"] / (1e3 * base)
        # Less sensitive to load that changed between the runs' blocks.
        s["p99_over_own_p50"] = s["p99_ms"] / s["p50_ms"]
        if r.get("boundary"):
            s["boundary_p50_ms"] = 1e3 * float(np.median(r["boundary"]))
            s["after_max_ms"] = 1e3 * float(np.max(r["after"])) if r.get("after") else None
        for key in ("reloads", "publishes", "priority"):
            if key in r:
                s[key] = r[key]
        out[name] = s
    return out


def parse_cpuinfo(text):
    """CPU model and bf16-relevant flags from the text of /proc/cpuinfo."""
    model, cpu_flags = platform.machine(), set()
    for line in text.splitlines():
        if line.startswith("model name") and model == platform.machine():
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not cpu_flags:
            cpu_flags = set(line.split(":", 1)[1].split())
    return {
        "cpu": model,
        "avx512f": "avx512f" in cpu_flags,
        "avx512_bf16": "avx512_bf16" in cpu_flags,
        "amx_bf16": "amx_bf16" in cpu_flags,
        "amx_tile": "amx_tile" in cpu_flags,
    }


def _ms(v):
    return f"{v:.2f} ms" if v is not None else ""


def _x(v):
    return f"{v:.3f}x" if v is not None else ""


def _yes(v):
    return "yes" if v else "no"


def markdown(results):
    """The tables of a run (what goes between the markers of docs/benchmarks.md)."""
    m = results["machine"]
    lines = [
        "## Measured (`benchmarks/step_cost.py`)",
        "",
        f"Machine: {m['cores']} vCPUs, {m['cpu']} (AVX-512F: {_yes(m['avx512f'])}, "
        f"AVX512_BF16: {_yes(m['avx512_bf16'])}, AMX-BF16: {_yes(m['amx_bf16'])}), "
        f"{m['gpus']} GPUs, device `{results['device']}`; TensorFlow {m['tensorflow']}, "
        f"tf_keras {m['tf_keras']}, Keras {m['keras3']}, Python {m['python']}.",
        f"Run {results['start']} to {results['end']} (UTC), process nice {results['nice']}, "
        f"with `python benchmarks/step_cost.py {results['args']}`.",
        f"Load average (1 min) {results['load_before'][0]:.2f} before, "
        f"{results['load_after'][0]:.2f} after (5 min: {results['load_before'][1]:.2f}, "
        f"{results['load_after'][1]:.2f}).",
    ]
    lines += _steps_tables(results["steps"], results["half_dtype"])
    lines += _exchange_table(results["exchanges"], results.get("priority_note"))
    lines += _io_table(results["io"])
    return "\n".join(lines) + "\n"


def _steps_tables(steps, half):
    if not steps:
        return []
    lines = [
        "",
        "### Single steps, round-robin",
        "",
        "Each variant runs one step in turn. *p50 / plain* is the ratio of medians; "
        "*paired* is the median (and quartiles) of the per-round ratios to the plain step "
        "of the same round.",
        "",
        "| workload | variant | p50 | p99 | p50 / plain | paired (q1-q3) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in steps.items():
        for name, v in r["variants"].items():
            p = v["paired_over_plain"]
            lines.append(
                f"| {workload} | {name} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])} | "
                f"{_x(v['p50_over_plain'])} | {p['median']:.3f} ({p['q1']:.2f}-{p['q3']:.2f}) |"
            )
    lines += [
        "",
        "Teacher memory (slots x buffers; the staging copy a reload restores into, one "
        "per group whatever N, is not counted):",
        "",
        "| workload | model | slots | buffers | teacher copies | teacher variables |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in steps.items():
        for name, mem in r.get("memory", {}).items():
            lines.append(
                f"| {workload} | {name} | {mem['slots']} | {mem['buffers']} | {mem['copies']} | "
                f"{mem['bytes'] / 2**20:.1f} MiB |"
            )
    lines += [
        "",
        "Against issue 11's targets (ratios of medians):",
        "",
        "| workload | bound (1 + teacher) | codistill-1 / bound (<= 1.05) | overhead float32 "
        f"| overhead {half} | {half} cut (>= 25%) | 3 all / 1 | 3 random / 1 | "
        "3 round robin / 1 | Distiller / Keras 3 plain | Keras 3 plain / plain "
        "| unfused psi / fused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in steps.items():
        d = r["derived"]

        def pct(key, d=d):
            return f"{100 * d[key]:.0f}%" if key in d else ""

        lines.append(
            f"| {workload} | {_x(d.get('bound_float32'))} | {_x(d.get('over_bound_float32'))} | "
            f"{pct('overhead_float32')} | {pct(f'overhead_{half}')} | {pct('half_cut')} | "
            f"{_x(d.get('3_all_over_1'))} | {_x(d.get('3_random_over_1'))} | "
            f"{_x(d.get('3_round_robin_over_1'))} | "
            f"{_x(d.get('distiller_over_keras3_plain'))} | {_x(d.get('keras3_plain_over_plain'))} "
            f"| {_unfused(d)} |"
        )
    return lines


def _unfused(d):
    if "unfused_over_fused" not in d:
        return ""
    p, (slower, rounds) = d["unfused_over_fused_paired"], d["unfused_slower_rounds"]
    return (
        f"{_x(d['unfused_over_fused'])} (paired {p['median']:.3f}, {p['q1']:.2f}-{p['q3']:.2f}; "
        f"slower in {slower} of {rounds} rounds)"
    )


def _exchange_table(exchanges, priority_note=None):
    if not exchanges:
        return []
    lines = [
        "",
        f"### Exchange every {EXCHANGE_EVERY} steps, one peer",
        "",
        "Runs take turns in 50-step blocks, one exchange boundary in each. A step's time "
        "includes `fit`'s callbacks (the exchange happens in them). *boundary* is the median "
        "of the steps that crossed a boundary; *after* the slowest of the 5 steps after one.",
        "",
        "| workload | run | steps | p50 | p99 | max | boundary | after | p99 / p50 of none "
        "(<= 1.10) | p99 / own p50 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, runs in exchanges.items():
        for name, s in runs.items():
            lines.append(
                f"| {workload} | {name} | {s['n']} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
                f"{_ms(s['max_ms'])} | {_ms(s.get('boundary_p50_ms'))} | "
                f"{_ms(s.get('after_max_ms'))} | {s['p99_over_none_p50']:.2f} | "
                f"{s['p99_over_own_p50']:.2f} |"
            )
    if priority_note:
        lines += ["", priority_note]
    return lines


def _io_table(io):
    if not io:
        return []
    lines = [
        "",
        "### One blocking publish and one blocking reload",
        "",
        "| workload | parameters | publish (median) | reload (median) |",
        "| --- | --- | --- | --- |",
    ]
    for workload, r in io.items():
        lines.append(
            f"| {workload} | {r['parameters']:,} | {_ms(r['publish_ms'])} | {_ms(r['reload_ms'])} |"
        )
    return lines


START, END = "<!-- step_cost.py: start -->", "<!-- step_cost.py: end -->"


def write_markdown(path, text, start=START, end=END):
    """Writes `text` between the markers in `path`, keeping what surrounds them (the analysis).

    Without markers in the file the block is appended; without a file it is created.
    """
    block = f"{start}\n{text}{end}\n"
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if start in old and end in old:
        block = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1 :]
    elif old:
        block = old.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(block)


# ----------------------------------------------------------------------
# Models and data.


def build(framework, workload, seed):
    """The workload's model in tf_keras or Keras 3 (same layers, same sizes)."""
    if framework == "keras3":
        import keras as k
    else:
        import tf_keras as k
    k.utils.set_random_seed(seed)
    w = WORKLOADS[workload]
    if workload == "convlm":  # The library's model (tf_keras only: no Distiller run for it).
        from tf_codistill.models.conv_lm import conv_lm

        return conv_lm(w["vocab"], w["embed"], w["context"], w["hidden"])
    if workload == "mlp":
        inputs = k.Input((w["input_dim"],))
        h = inputs
        for units in w["hidden"]:
            h = k.layers.Dense(units, activation="relu")(h)
        return k.Model(inputs, k.layers.Dense(w["classes"])(h))
    inputs = k.Input((w["length"],), dtype="int32")
    h = k.layers.Embedding(w["vocab"], w["embed"])(inputs)
    h = k.layers.LSTM(w["units"], return_sequences=True)(h)
    h = k.layers.LSTM(w["units"], return_sequences=True)(h)
    return k.Model(inputs, k.layers.Dense(w["vocab"])(h))


def data(workload):
    import tensorflow as tf

    w = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    if workload == "mlp":
        x = rng.normal(size=(w["examples"], w["input_dim"])).astype("float32")
        y = rng.integers(0, w["classes"], size=(w["examples"],))
    else:
        x = rng.integers(0, w["vocab"], size=(w["examples"], w["length"])).astype("int32")
        y = rng.integers(0, w["vocab"], size=(w["examples"], w["length"]))
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(w["batch"]).cache().repeat()


def _sync(outputs):
    """Waits for a step's results (on a GPU a call returns before its kernels finish)."""
    import tensorflow as tf

    leaves = tf.nest.flatten(outputs)
    if leaves:
        np.asarray(leaves[0])


def unfused_cross_entropy():
    """The library's psi before the fused kernel, kept to measure what the fusion saves.

    A `SoftmaxCrossEntropy` whose pointwise loss is log_softmax, product and
    sum, and whose one-peer targets go through the stack and logsumexp. The
    old math at T = 1 with float32 logits only (what the benchmark runs).
    """
    import tensorflow as tf

    from tf_codistill import losses

    class Unfused(losses.SoftmaxCrossEntropy):
        def aggregate(self, teacher_logits, peer_weights):
            w = tf.math.divide_no_nan(peer_weights, tf.reduce_sum(peer_weights))
            log_probs = [
                tf.where(w[j] > 0, tf.nn.log_softmax(t, axis=-1), float("-inf"))
                for j, t in enumerate(teacher_logits)
            ]
            stacked = tf.stack(log_probs, 0)
            log_w = tf.reshape(tf.math.log(w), [-1] + [1] * (stacked.shape.rank - 1))
            return tf.reduce_logsumexp(stacked + log_w, axis=0)

        def pointwise(self, targets, student_logits):
            log_p = tf.nn.log_softmax(tf.cast(student_logits, tf.float32), axis=-1)
            return -tf.reduce_sum(tf.exp(targets) * log_p, axis=-1)

    return Unfused()


_SCRATCH = []


def scratch_dir():
    """A fresh directory under this run's scratch root, removed when the run ends.

    Every model here publishes checkpoints (25-85 MB per model); an earlier
    version left them all in /tmp and a few dozen runs filled the disk.
    """
    if not _SCRATCH:
        # A background publish or reload may still be writing at exit.
        root = tempfile.TemporaryDirectory(prefix="tfcd_step_cost_", ignore_cleanup_errors=True)
        atexit.register(root.cleanup)
        _SCRATCH.append(root)
    return tempfile.mkdtemp(dir=_SCRATCH[0].name)


def codistill_model(workload, exchange_dir, peers, **kwargs):
    """A one-group CodistillModel whose `peers` peers have each published a checkpoint."""
    import tf_keras as keras

    import tf_codistill
    from tf_codistill import exchange

    publishers = {}
    for g in range(1, peers + 1):
        publishers[g] = exchange.Publisher(
            build("tf_keras", workload, g), exchange.group_dir(exchange_dir, g)
        )
        publishers[g].publish(0)
    kwargs.setdefault("exchange_every_n_steps", 10**9)  # No exchanges unless asked.
    model = tf_codistill.CodistillModel(
        build("tf_keras", workload, 0),
        group_index=0,
        num_groups=peers + 1,
        exchange_dir=exchange_dir,
        burn_in_steps=0,
        **kwargs,
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, publishers


def teacher_memory(model):
    """Teacher copies (slots x buffers) and the bytes of their variables."""
    pool = model.teacher_pool
    copies = [pool.buffer(k, i) for k in range(pool.num_slots) for i in range(pool.buffers)]
    nbytes = sum(int(np.prod(w.shape)) * w.dtype.size for t in copies for w in t.weights)
    return {
        "slots": pool.num_slots,
        "buffers": pool.buffers,
        "copies": len(copies),
        "bytes": nbytes,
    }


# ----------------------------------------------------------------------
# 1. Single steps, round-robin.


class StepVariant:
    """One variant's single step, as a callable timed on its own (see the module doc)."""

    def __init__(self, name, workload, half):
        import tensorflow as tf
        import tf_keras as keras

        from tf_codistill import teachers

        self.name, self.memory = name, None
        self.iterator = iter(data(workload))
        if name.startswith("keras3-"):
            self._init_keras3(name, workload)
            return
        if name == "plain":
            student = build("tf_keras", workload, 0)
            student.compile(
                keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            fn = student.make_train_function()
            self._call = lambda: fn(self.iterator)
            return
        if name.startswith("teacher"):
            kind, _, dtype = name.partition("-")
            student = build("tf_keras", workload, 0)
            teacher = teachers.resolve_builder(student, None, dtype or None)()
            teacher.trainable = False

            # As in the train step: inference mode, logits cast to float32.
            def forward(x):
                return tf.reduce_sum(tf.cast(teacher(x, training=False), tf.float32))

            forward = tf.function(forward, jit_compile=kind == "teacherxla")
            self._call = lambda: forward(next(self.iterator)[0])
            return
        peers, kwargs = {
            "codistill-1": (1, {}),
            f"codistill-1-{half}": (1, {"teacher_dtype": half}),
            "codistill-3-all": (3, {"peer_selection": "all_peers"}),
            "codistill-3-random": (3, {"peer_selection": "random_peer"}),
            "codistill-3-round_robin": (3, {"peer_selection": "round_robin"}),
            "codistill-1-unfused": (1, {"distill_loss": unfused_cross_entropy()}),
        }[name]
        model, _ = codistill_model(workload, scratch_dir(), peers, **kwargs)
        outcomes = model.reload_teachers()
        if not all(o.status == "loaded" for o in outcomes):
            raise RuntimeError(f"{name}: teachers not loaded: {outcomes}")
        self.memory = teacher_memory(model)
        fn = model.make_train_function()
        self._call = lambda: fn(self.iterator)

    def _init_keras3(self, name, workload):
        import keras as keras3

        student = build("keras3", workload, 0)
        if name == "keras3-plain":
            model = student
        else:
            model = keras3.distillation.Distiller(
                teacher=build("keras3", workload, 1),
                student=student,
                distillation_losses=keras3.distillation.LogitsDistillation(temperature=1.0),
                student_loss_weight=0.5,
            )
        model.compile(
            optimizer=keras3.optimizers.Adam(1e-3),
            loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        # Builds the model, its optimizer and its train function as fit does.
        model.fit(data(workload), steps_per_epoch=2, epochs=1, verbose=0)
        self._call = lambda: model.train_function(self.iterator)

    def step(self):
        start = time.perf_counter()
        _sync(self._call())
        return time.perf_counter() - start


def step_variants(half, keras3, xla, unfused=False):
    names = [
        "plain",
        "teacher",
        f"teacher-{half}",
        "codistill-1",
        f"codistill-1-{half}",
        "codistill-3-all",
        "codistill-3-random",
        "codistill-3-round_robin",
    ]
    if keras3:
        names += ["keras3-plain", "keras3-distiller"]
    if xla:
        names += ["teacherxla", f"teacherxla-{half}"]
    if unfused:
        names += ["codistill-1-unfused"]
    return names


def time_steps(workload, rounds, half, keras3, xla, unfused=False, warmup=5):
    """Round-robin single steps of every variant; ratios and teacher memory."""
    variants = []
    for name in step_variants(half, keras3, xla, unfused):
        print(f"  building {name}", flush=True)
        variants.append(StepVariant(name, workload, half))
    for v in variants:  # Trace and warm up.
        for _ in range(warmup):
            v.step()
    times = {v.name: [] for v in variants}
    for i in range(rounds):
        # Rotate the starting variant so none always follows the same one.
        for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
            times[v.name].append(v.step())
    result = step_ratios(times, half)
    result["memory"] = {v.name: v.memory for v in variants if v.memory}
    # Without background reloads each slot keeps one buffer (not timed).
    for rule in ("all", "random"):
        model, _ = codistill_model(
            workload,
            scratch_dir(),
            3,
            peer_selection="all_peers" if rule == "all" else "random_peer",
            background_reload=False,
        )
        result["memory"][f"codistill-3-{rule}, blocking reload"] = teacher_memory(model)
    result["raw_ms"] = {n: [round(1e3 * t, 3) for t in ts] for n, ts in times.items()}
    return result


# ----------------------------------------------------------------------
# 2. Exchange runs.


def _helper_threads():
    """The library's helper threads (publish, prefetch and exchange I/O)."""
    return [t for t in threading.enumerate() if t.name.startswith("tf_codistill")]


def can_restore_priority():
    """Whether this process may raise a thread's priority back after lowering it."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    ok = []

    def probe():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, before + 1))
            os.setpriority(os.PRIO_PROCESS, tid, before)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return ok[0]


def set_helper_priority(increment):
    """Sets the helper threads' nice to the process's plus `increment` (0: back to it)."""
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    for t in _helper_threads():
        if t.native_id is not None:
            os.setpriority(os.PRIO_PROCESS, t.native_id, nice)
    return nice


class ExchangeRun:
    """A one-peer CodistillModel trained step by step with `fit`'s callbacks."""

    def __init__(self, name, workload, nice_increment=0, **kwargs):
        import tf_keras as keras

        from tf_codistill import callbacks as callbacks_lib

        self.name, self.nice_increment = name, nice_increment
        self.low_priority = nice_increment > 0
        exchanges = name != "none"
        self.model, publishers = codistill_model(
            workload,
            scratch_dir(),
            1,
            exchange_every_n_steps=EXCHANGE_EVERY if exchanges else 10**9,
            **kwargs,
        )
        self.peer = publishers[1] if exchanges else None
        self.iterator = iter(data(workload))
        self.fn = self.model.make_train_function()
        self.callbacks = keras.callbacks.CallbackList(
            callbacks_lib.with_exchange([], self.model.exchange_every_n_steps),
            model=self.model,
        )
        self.model.optimizer.iterations.assign(WARMUP_START)
        self.callbacks.on_train_begin()
        self.callbacks.on_epoch_begin(0)
        self.times, self.boundary, self.after = [], [], []
        self.batch, self.nice = 0, None
        self._since_boundary = AFTER

    @property
    def step_count(self):
        return WARMUP_START + self.batch

    def step(self):
        """One step with its callbacks; returns its time. The peer publishes first, untimed."""
        next_step = self.step_count + 1
        if self.peer is not None and next_step % EXCHANGE_EVERY == 0:
            self.peer.publish(next_step)
        start = time.perf_counter()
        self.callbacks.on_train_batch_begin(self.batch)
        logs = self.fn(self.iterator)
        _sync(logs)
        self.callbacks.on_train_batch_end(self.batch, logs)
        seconds = time.perf_counter() - start
        self.batch += 1
        return seconds, next_step

    def run(self, steps, timed=True):
        if self.low_priority:
            self.nice = set_helper_priority(self.nice_increment)
        try:
            for _ in range(steps):
                seconds, step = self.step()
                if not timed:
                    continue
                self.times.append(seconds)
                if self.peer is not None and step % EXCHANGE_EVERY == 0:
                    self.boundary.append(seconds)
                    self._since_boundary = 0
                elif self._since_boundary < AFTER:
                    self.after.append(seconds)
                    self._since_boundary += 1
        finally:
            if self.low_priority:
                set_helper_priority(0)

    def finish(self):
        # As fit ends an epoch: the exchange callback notes the distillation weight.
        self.callbacks.on_epoch_end(0, dict(self.model.get_metrics_result()))
        self.callbacks.on_train_end()
        counts = self.model.reload_counts.get(1, {})
        return {
            "times": self.times,
            "boundary": self.boundary,
            "after": self.after,
            "reloads": counts.get("loaded", 0),
        }


def exchange_runs(low_priority):
    runs = [
        ("none", {}),
        ("blocking", dict(background_reload=False)),
        ("background reads", dict(background_reload=True)),
        ("background", dict(background_reload=True, background_publish=True)),
    ]
    if low_priority:
        runs.append(("background, low prio", dict(background_reload=True, background_publish=True)))
    return runs


def time_exchanges(workload, blocks, nice_increment):
    """The exchange runs (with the low-priority one if `nice_increment` > 0)."""
    runs = [
        ExchangeRun(
            name,
            workload,
            nice_increment=nice_increment if name.endswith("low prio") else 0,
            **kwargs,
        )
        for name, kwargs in exchange_runs(nice_increment > 0)
    ]
    # Warm-up: from step 45 through the boundary at 50 (traces the step, starts
    # the helper threads) to the first block's start.
    for r in runs:
        r.run(FIRST_BLOCK - WARMUP_START, timed=False)
    for i in range(blocks):
        # Rotate the order so that no run always follows the same one.
        for r in runs[i % len(runs) :] + runs[: i % len(runs)]:
            r.run(EXCHANGE_EVERY)
    raw = {r.name: r.finish() for r in runs}
    for r in runs:
        if r.low_priority:
            raw[r.name]["priority"] = f"helper threads at nice {r.nice} during its blocks"
    return exchange_summary(raw)


# ----------------------------------------------------------------------
# 3. One publish, one reload.


def time_io(workload, repeats=7):
    """Median time of one blocking publish of the student and one blocking reload."""
    from tf_codistill import exchange

    model, publishers = codistill_model(workload, scratch_dir(), 1, background_reload=False)
    writer = exchange.Publisher(model.student, exchange.group_dir(scratch_dir(), 0))
    publish_s, reload_s = [], []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        writer.publish(step)
        publish_s.append(time.perf_counter() - start)
        publishers[1].publish(step)
        start = time.perf_counter()
        (outcome,) = model.reload_teachers()
        reload_s.append(time.perf_counter() - start)
        if outcome.status != "loaded":
            raise RuntimeError(f"reload {step}: {outcome}")
    return {  # The first of each is a warm-up.
        "parameters": int(sum(np.prod(w.shape) for w in model.student.weights)),
        "publish_ms": 1e3 * statistics.median(publish_s[1:]),
        "reload_ms": 1e3 * statistics.median(reload_s[1:]),
    }


# ----------------------------------------------------------------------


def machine():
    import keras as keras3
    import tensorflow as tf
    import tf_keras

    try:
        with open("/proc/cpuinfo") as f:
            cpu = parse_cpuinfo(f.read())
    except OSError:
        cpu = parse_cpuinfo("")
    return {
        **cpu,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "keras3": keras3.__version__,
        "python": platform.python_version(),
    }


def _now():
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime())


def main(argv):
    del argv
    import tensorflow as tf

    m = machine()
    device = FLAGS.device or ("/GPU:0" if m["gpus"] else "/CPU:0")
    half = FLAGS.half_dtype or ("float16" if device.upper().startswith("/GPU") else "bfloat16")
    low_priority = FLAGS.low_priority and can_restore_priority()
    results = {
        "machine": m,
        "device": device,
        "half_dtype": half,
        "args": " ".join(sys.argv[1:]),
        "start": _now(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
        "load_before": list(os.getloadavg()),
        "steps": {},
        "exchanges": {},
        "io": {},
    }
    if FLAGS.low_priority and not low_priority:
        results["priority_note"] = (
            "The low-priority experiment was skipped: this process may not raise a "
            "thread's priority back (needs root or CAP_SYS_NICE)."
        )
    with tf.device(device):
        for workload in FLAGS.workloads:
            rounds = FLAGS.mlp_rounds if workload == "mlp" else FLAGS.lstm_rounds
            blocks = FLAGS.mlp_blocks if workload == "mlp" else FLAGS.lstm_blocks
            keras3 = FLAGS.keras3 and workload != "convlm"  # Its Distiller: MLP and LSTM.
            if "steps" in FLAGS.parts:
                print(f"[{workload}] single steps, {rounds} rounds ({_now()})", flush=True)
                r = time_steps(workload, rounds, half, keras3, FLAGS.xla_teacher, FLAGS.unfused_psi)
                results["steps"][workload] = r
                print(json.dumps(r["derived"]), flush=True)
            if "exchanges" in FLAGS.parts:
                print(f"[{workload}] exchange runs, {blocks} blocks ({_now()})", flush=True)
                results["exchanges"][workload] = time_exchanges(
                    workload, blocks, FLAGS.nice_increment if low_priority else 0
                )
                print(json.dumps(results["exchanges"][workload]), flush=True)
            if "io" in FLAGS.parts:
                results["io"][workload] = time_io(workload)
    results["end"] = _now()
    results["load_after"] = list(os.getloadavg())
    text = markdown(results)
    print(text)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=1)
    if FLAGS.markdown:
        write_markdown(FLAGS.markdown, text)


def define_flags():
    """The program's flags (defined only when run, so tests can import the helpers)."""
    flags.DEFINE_list("workloads", ["mlp", "lstm"], f"Which models to time: {list(WORKLOADS)}.")
    flags.DEFINE_list(
        "parts", ["steps", "exchanges", "io"], "Which measurements (1, 2, 3 of the module doc)."
    )
    flags.DEFINE_integer("mlp_rounds", 150, "Timed single steps per variant, MLP.")
    flags.DEFINE_integer("lstm_rounds", 40, "Timed single steps per variant, LSTM and conv LM.")
    flags.DEFINE_integer("mlp_blocks", 6, "Exchange runs: timed 50-step blocks per run, MLP.")
    flags.DEFINE_integer(
        "lstm_blocks", 2, "Exchange runs: timed 50-step blocks per run, LSTM and conv LM."
    )
    flags.DEFINE_string(
        "device", None, "Where to run, e.g. /GPU:0 or /CPU:0 (default: GPU if any)."
    )
    flags.DEFINE_enum(
        "half_dtype",
        None,
        ["bfloat16", "float16"],
        "Teacher precision to compare with float32 (default: float16 on a GPU, else bfloat16).",
    )
    flags.DEFINE_bool("keras3", True, "Also time Keras 3's plain step and its Distiller.")
    flags.DEFINE_bool("xla_teacher", False, "Also time the teacher forward XLA-compiled.")
    flags.DEFINE_bool("unfused_psi", False, "Also time one peer with the pre-fusion psi.")
    flags.DEFINE_bool(
        "low_priority", True, "Exchange runs: also the experiment with low-priority helper threads."
    )
    flags.DEFINE_integer("nice_increment", 9, "How much lower (nice) the helper threads run.")
    flags.DEFINE_string("json", None, "Write raw results here.")
    flags.DEFINE_string("markdown", None, "Write the tables here (e.g. docs/benchmarks.md).")


if __name__ == "__main__":
    define_flags()
    app.run(main)
