r"""What codistillation costs per step, measured side by side in one process.

For a compute-bound MLP and an LSTM language model, on the same data and
batch, it times:

  plain        student.compile(...); student.fit(...)          (tf_keras)
  codistill-1  CodistillModel with 1 peer (one teacher forward pass)
  codistill-3  CodistillModel with 3 peers
  plain-keras3 the same student in Keras 3: student.fit
  distiller    Keras 3's keras.distillation.Distiller, 1 teacher (Keras 3)

The Distiller is compared both with tf_keras' plain step (what a user would
pay for switching) and with Keras 3's own plain step (its own overhead).

Each variant is built and traced once; then the variants take turns running
one timed epoch each, --repeats times (interleaved, so drifts in machine
speed hit all of them alike). A step's time is the interval between two
consecutive `on_train_batch_end` calls (train step plus Keras' per-step
overhead). Reported: the median step time per variant and repeat, then the
median over repeats of each variant's ratio to `plain` within the same repeat.

It also times one teacher reload (new peer checkpoint -> teacher) and, over a
run that reloads every 50 steps, the median and 99th-percentile step.

  python benchmarks/step_cost.py --repeats=5 --markdown=docs/benchmarks.md
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed epochs per variant (interleaved).")
flags.DEFINE_integer("mlp_steps", 150, "Steps per timed epoch, MLP.")
flags.DEFINE_integer("lstm_steps", 40, "Steps per timed epoch, LSTM LM.")
flags.DEFINE_integer("reload_run_steps", 1000, "Steps of the run that reloads every 50 steps.")
flags.DEFINE_list("workloads", ["mlp", "lstm"], "Which models to time.")
flags.DEFINE_enum(
    "mode",
    "epochs",
    ["epochs", "steps"],
    "epochs: the interleaved-epoch comparison and reload runs below; steps: single steps "
    "timed round-robin between variants (step_times), and p50/p99 with and without exchanges.",
)
flags.DEFINE_integer("rounds", 100, "--mode=steps: timed steps per variant (round-robin).")
flags.DEFINE_integer("exchange_run_steps", 400, "--mode=steps: steps of each exchange run.")
flags.DEFINE_string("json", None, "Write raw results here.")
flags.DEFINE_string("markdown", None, "Write the tables here (e.g. docs/benchmarks.md).")
FLAGS = flags.FLAGS

WORKLOADS = {
    # Compute-bound on a CPU: three 1024-wide layers, batch 256 (2.2 M parameters).
    "mlp": dict(batch=256, examples=256 * 16, input_dim=64, classes=10, hidden=(1024, 1024, 1024)),
    # Byte-level LM: 2 x LSTM 256 on 64-token sequences, batch 32 (0.9 M parameters).
    "lstm": dict(batch=32, examples=32 * 8, length=64, vocab=256, embed=64, units=256),
}


def build(framework, workload, seed):
    """The workload's model in tf_keras or Keras 3 (same layers, same sizes)."""
    if framework == "keras3":
        import keras as k
    else:
        import tf_keras as k
    k.utils.set_random_seed(seed)
    w = WORKLOADS[workload]
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


def step_timer(callback_base):
    class StepTimer(callback_base):
        """Intervals between consecutive batch ends, minus time excluded by others."""

        def __init__(self):
            super().__init__()
            self.times, self.excluded, self._last = [], 0.0, None

        def on_epoch_begin(self, epoch, logs=None):
            self._last = None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None:
                self.times.append(now - self._last - self.excluded)
            self.excluded = 0.0
            self._last = now

    return StepTimer()


class Variant:
    """A compiled model plus how to run one timed epoch of it."""

    def __init__(self, name, workload, exchange_dir):
        import tf_keras as keras

        self.name, self.workload = name, workload
        self.dataset = data(workload)
        loss = "sparse_categorical_crossentropy"
        if name == "plain-keras3":
            import keras as keras3

            self.timer = step_timer(keras3.callbacks.Callback)
            self.model = build("keras3", workload, 0)
            self.model.compile(
                optimizer=keras3.optimizers.Adam(1e-3),
                loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            return
        if name == "distiller":
            import keras as keras3

            self.timer = step_timer(keras3.callbacks.Callback)
            self.model = keras3.distillation.Distiller(
                teacher=build("keras3", workload, 1),
                student=build("keras3", workload, 0),
                distillation_losses=keras3.distillation.LogitsDistillation(temperature=1.0),
                student_loss_weight=0.5,
            )
            self.model.compile(
                optimizer=keras3.optimizers.Adam(1e-3),
                loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            return
        self.timer = step_timer(keras.callbacks.Callback)
        student = build("tf_keras", workload, 0)
        if name == "plain":
            self.model = student
        else:
            import tf_codistill
            from tf_codistill import exchange

            peers = int(name.split("-")[1])
            for g in range(1, peers + 1):
                exchange.Publisher(
                    build("tf_keras", workload, g), exchange.group_dir(exchange_dir, g)
                ).publish(0)
            self.model = tf_codistill.CodistillModel(
                student,
                group_index=0,
                num_groups=peers + 1,
                exchange_dir=exchange_dir,
                burn_in_steps=0,
                exchange_every_n_steps=10**9,  # No reloads while timing the step.
            )
        self.model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        del loss

    def epoch(self, steps):
        start = len(self.timer.times)
        self.model.fit(
            self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[self.timer]
        )
        return statistics.median(self.timer.times[start:])


def time_variants(workload, steps, repeats):
    names = ["plain", "codistill-1", "codistill-3", "plain-keras3", "distiller"]
    variants = [Variant(n, workload, tempfile.mkdtemp()) for n in names]
    for v in variants:  # Trace and warm up.
        v.epoch(max(5, steps // 5))
    medians = {n: [] for n in names}
    for _ in range(repeats):
        for v in variants:
            medians[v.name].append(v.epoch(steps))
    ratios = {
        n: statistics.median(m / p for m, p in zip(medians[n], medians["plain"], strict=True))
        for n in names
    }
    # Each framework's distillation against its own plain student.
    ratios["distiller-vs-keras3"] = statistics.median(
        m / p for m, p in zip(medians["distiller"], medians["plain-keras3"], strict=True)
    )
    return {
        "median_step_ms": {n: 1e3 * statistics.median(m) for n, m in medians.items()},
        "per_repeat_ms": {n: [1e3 * t for t in m] for n, m in medians.items()},
        "ratio_to_plain": ratios,
    }


def timed_fit(model, workload, publisher, run_steps, exchanges):
    """Per-step times of `fit` (after a tracing fit of 20 steps).

    With `exchanges`, the peer's `publisher` publishes just before each
    exchange every 50 steps; its time is not counted.
    """
    import tf_keras as keras

    timer = step_timer(keras.callbacks.Callback)

    class PeerPublishes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if exchanges and (step + 1) % 50 == 0:
                start = time.perf_counter()
                publisher.publish(10**6 + step)
                timer.excluded += time.perf_counter() - start

    dataset = data(workload)
    model.fit(dataset, epochs=1, steps_per_epoch=20, verbose=0)  # Trace.
    timer.times.clear()
    model.fit(
        dataset, epochs=1, steps_per_epoch=run_steps, verbose=0, callbacks=[timer, PeerPublishes()]
    )
    return np.asarray(timer.times)


def time_reloads(workload, run_steps, background):
    """One reload's time, and the step-time distribution with a reload every 50 steps.

    `background` selects the group's reload mode: blocking reloads at each
    exchange boundary, or reads on a background thread into a spare teacher.
    """
    import tf_keras as keras

    import tf_codistill
    from tf_codistill import exchange

    d = tempfile.mkdtemp()
    peer = build("tf_keras", workload, 1)
    publisher = exchange.Publisher(peer, exchange.group_dir(d, 1))
    publisher.publish(0)
    model = tf_codistill.CodistillModel(
        build("tf_keras", workload, 0),
        group_index=0,
        num_groups=2,
        exchange_dir=d,
        burn_in_steps=0,
        exchange_every_n_steps=50,
        background_reload=background,
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    reload_s = []
    for step in range(1, 12):
        publisher.publish(step)
        start = time.perf_counter()
        (outcome,) = model.reload_teachers()
        reload_s.append(time.perf_counter() - start)
        assert outcome.status == "loaded", outcome
    times = timed_fit(model, workload, publisher, run_steps, exchanges=True)
    loads = model.reload_counts[1]["loaded"]
    return {
        "mode": "background" if background else "blocking",
        "reload_ms_median": 1e3 * statistics.median(reload_s[1:]),
        "parameters": int(sum(np.prod(w.shape) for w in model.student.weights)),
        "run_steps": run_steps,
        "reloads_in_run": loads,
        "p50_ms": 1e3 * float(np.percentile(times, 50)),
        "p99_ms": 1e3 * float(np.percentile(times, 99)),
        "max_ms": 1e3 * float(times.max()),
        "p99_over_p50": float(np.percentile(times, 99) / np.percentile(times, 50)),
    }


def cpu_flags():
    """The host's CPU model and whether it has bf16 instructions (/proc/cpuinfo)."""
    model, flags_ = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags_:
                    flags_ = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "avx512_bf16": "avx512_bf16" in flags_,
        "amx_bf16": "amx_bf16" in flags_,
    }


class StepVariant:
    """One variant's single step, as a callable timed on its own.

    Variants: `plain` (the student's tf_keras train step), `teacher-<dtype>`
    (one teacher forward pass alone, in inference mode: the bound of what a
    teacher adds), `teacherxla-<dtype>` (the same, XLA-compiled),
    `codistill-1-<dtype>` (CodistillModel's train step with one peer, its
    teacher in that precision). All on the same batch stream.
    """

    def __init__(self, name, workload, exchange_dir):
        import tensorflow as tf
        import tf_keras as keras

        import tf_codistill
        from tf_codistill import exchange
        from tf_codistill import teachers

        self.name = name
        self.iterator = iter(data(workload))
        adam = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        student = build("tf_keras", workload, 0)
        kind, _, dtype = name.partition("-")
        if kind == "plain":
            student.compile(adam(), loss=loss)
            self._fn = student.make_train_function()
            self._call = lambda: self._fn(self.iterator)
            return
        if kind in ("teacher", "teacherxla"):
            teacher_dtype = None if dtype == "float32" else dtype
            teacher = teachers.resolve_builder(student, None, teacher_dtype)()
            teacher.trainable = False
            forward = tf.function(
                lambda x: tf.cast(teacher(x, training=False), tf.float32),
                jit_compile=kind == "teacherxla",
            )
            self._call = lambda: forward(next(self.iterator)[0])
            return
        dtype = dtype.split("-")[-1]  # codistill-1-<dtype>
        exchange.Publisher(
            build("tf_keras", workload, 1), exchange.group_dir(exchange_dir, 1)
        ).publish(0)
        model = tf_codistill.CodistillModel(
            student,
            group_index=0,
            num_groups=2,
            exchange_dir=exchange_dir,
            burn_in_steps=0,
            teacher_dtype=None if dtype == "float32" else dtype,
        )
        model.compile(adam(), loss=loss)
        assert model.reload_teachers()[0].status == "loaded"
        self._fn = model.make_train_function()
        self._call = lambda: self._fn(self.iterator)

    def step(self):
        start = time.perf_counter()
        self._call()  # On CPU a tf.function returns when its ops are done.
        return time.perf_counter() - start


def time_steps(workload, rounds, dtypes, xla=True):
    """p50/p99 of single steps, the variants taking turns step by step."""
    names = ["plain"]
    for dtype in dtypes:
        names += [f"teacher-{dtype}", f"codistill-1-{dtype}"]
    if xla:  # The teacher forward alone, XLA-compiled: would compiling it pay?
        names += [f"teacherxla-{dtype}" for dtype in dtypes]
    variants = [StepVariant(n, workload, tempfile.mkdtemp()) for n in names]
    for v in variants:  # Trace and warm up.
        for _ in range(5):
            v.step()
    times = {n: [] for n in names}
    for _ in range(rounds):
        for v in variants:
            times[v.name].append(v.step())
    plain = statistics.median(times["plain"])
    result = {}
    for n, t in times.items():
        t = np.asarray(t)
        result[n] = {
            "p50_ms": 1e3 * float(np.percentile(t, 50)),
            "p99_ms": 1e3 * float(np.percentile(t, 99)),
            "p50_over_plain": float(np.percentile(t, 50) / plain),
        }
    for dtype in dtypes:
        overhead = result[f"codistill-1-{dtype}"]["p50_over_plain"] - 1
        bound = result[f"teacher-{dtype}"]["p50_over_plain"]
        result[f"codistill-1-{dtype}"]["overhead"] = overhead
        result[f"codistill-1-{dtype}"]["over_bound"] = (1 + overhead) / (1 + bound)
    return result


def time_exchange_run(workload, run_steps, exchanges, background_publish=True):
    """Per-step times of a one-peer run, with an exchange every 50 steps or none.

    With exchanges, the group publishes its own checkpoint and reloads its
    peer (background reads), the peer publishing just before each boundary
    (its write not counted).
    """
    import tf_keras as keras

    import tf_codistill
    from tf_codistill import exchange

    d = tempfile.mkdtemp()
    publisher = exchange.Publisher(build("tf_keras", workload, 1), exchange.group_dir(d, 1))
    publisher.publish(0)
    model = tf_codistill.CodistillModel(
        build("tf_keras", workload, 0),
        group_index=0,
        num_groups=2,
        exchange_dir=d,
        burn_in_steps=0,
        exchange_every_n_steps=50 if exchanges else 10**9,
        background_publish=background_publish,
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    times = timed_fit(model, workload, publisher, run_steps, exchanges)
    return {
        "steps": len(times),
        "p50_ms": 1e3 * float(np.percentile(times, 50)),
        "p99_ms": 1e3 * float(np.percentile(times, 99)),
        "max_ms": 1e3 * float(times.max()),
        "reloads": model.reload_counts[1]["loaded"],
    }


def steps_markdown(results):
    m = results["machine"]
    lines = [
        "## Single steps, round-robin (`benchmarks/step_cost.py --mode=steps`)",
        "",
        f"Machine: {m['cores']} vCPUs, {m['cpu']} (AVX512_BF16: "
        f"{'yes' if m['avx512_bf16'] else 'no'}, AMX: {'yes' if m['amx_bf16'] else 'no'}), "
        f"{m['gpus']} GPUs; TensorFlow {m['tensorflow']}. Measured {results['date']} with "
        f"`python benchmarks/step_cost.py {results['args']}`, **on a shared, loaded machine "
        f"(load average {results['load']:.1f} on {m['cores']} vCPUs at the start): indicative "
        "only**.",
        "",
        "Each variant runs one step in turn (same process, same batch stream); p50 over "
        "plain is the ratio of medians; *overhead* is codistill-1's p50 over plain minus 1; "
        "*over bound* is codistill-1 / (plain + teacher forward).",
        "",
        "| workload | variant | p50 | p99 | p50 / plain | overhead | over bound |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in results["steps"].items():
        for name, v in r.items():
            lines.append(
                f"| {workload} | {name} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | "
                f"{v['p50_over_plain']:.3f}x | "
                + (f"{v['overhead']:.3f} | {v['over_bound']:.3f}x |" if "overhead" in v else "| |")
            )
    lines += [
        "",
        "One peer, exchange every 50 steps (own publish + peer reload in the background) or "
        "none; per-step times from `fit`:",
        "",
        "| workload | run | steps | reloads | p50 | p99 | max | p99 / p50 of the run "
        "without exchanges |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, runs in results["exchange_runs"].items():
        base = runs["no exchanges"]["p50_ms"]
        for name, r in runs.items():
            lines.append(
                f"| {workload} | {name} | {r['steps']} | {r['reloads']} | {r['p50_ms']:.2f} ms | "
                f"{r['p99_ms']:.2f} ms | {r['max_ms']:.2f} ms | {r['p99_ms'] / base:.2f} |"
            )
    return "\n".join(lines) + "\n"


def steps_main():
    results = {
        "machine": {**machine(), **cpu_flags()},
        "date": time.strftime("%Y-%m-%d"),
        "args": " ".join(sys.argv[1:]),
        "load": os.getloadavg()[0],
        "steps": {},
        "exchange_runs": {},
    }
    for workload in FLAGS.workloads:
        print(f"[{workload}] single steps, {FLAGS.rounds} rounds", flush=True)
        results["steps"][workload] = time_steps(workload, FLAGS.rounds, ["float32", "bfloat16"])
        print(json.dumps(results["steps"][workload]), flush=True)
        runs = {}
        for name, exchanges, background in (
            ("no exchanges", False, True),
            ("exchanges, blocking publish", True, False),
            ("exchanges, background publish", True, True),
        ):
            steps = FLAGS.exchange_run_steps
            runs[name] = time_exchange_run(workload, steps, exchanges, background)
            print(name, json.dumps(runs[name]), flush=True)
        results["exchange_runs"][workload] = runs
    text = steps_markdown(results)
    print(text)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=2)
    if FLAGS.markdown:
        write_markdown(FLAGS.markdown, text, STEPS_START, STEPS_END)


def machine():
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def markdown(results):
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "## Step cost of codistillation (`benchmarks/step_cost.py`)",
        "",
        f"Machine: {m['cores']} CPU cores ({m['cpu']}), {m['gpus']} GPUs; TensorFlow "
        f"{m['tensorflow']}, Python {m['python']}. Measured {results['date']} with "
        f"`python benchmarks/step_cost.py {results['args']}`.",
        "",
        "Median step time of `plain` (tf_keras `student.fit`), and each variant's step time as a",
        "ratio to `plain` (median over the interleaved repeats of the within-repeat ratio):",
        "",
        "| workload | plain step | codistill, 1 peer | codistill, 3 peers "
        "| Keras 3 plain | Keras 3 Distiller (1 teacher) | Distiller / Keras 3 plain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in results["step_cost"].items():
        ratio = r["ratio_to_plain"]
        lines.append(
            f"| {workload} | {r['median_step_ms']['plain']:.2f} ms | {ratio['codistill-1']:.3f}x | "
            f"{ratio['codistill-3']:.3f}x | {ratio['plain-keras3']:.3f}x | "
            f"{ratio['distiller']:.3f}x | {ratio['distiller-vs-keras3']:.3f}x |"
        )
    lines += [
        "",
        "Teacher reloads (one peer, from a checkpoint on local disk):",
        "",
        "| workload, reload mode | parameters | one blocking reload (median) | steps | reloads "
        "| p50 step | p99 step | p99 / p50 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, r in results["reloads"].items():
        lines.append(
            f"| {workload} | {r['parameters']:,} | {r['reload_ms_median']:.1f} ms "
            f"| {r['run_steps']} | "
            f"{r['reloads_in_run']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
            f"{r['p99_over_p50']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.mode == "steps":
        steps_main()
        return
    results = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "args": " ".join(sys.argv[1:]),
        "step_cost": {},
        "reloads": {},
    }
    for workload in FLAGS.workloads:
        steps = FLAGS.mlp_steps if workload == "mlp" else FLAGS.lstm_steps
        print(
            f"[{workload}] timing 4 variants x {FLAGS.repeats} epochs of {steps} steps", flush=True
        )
        results["step_cost"][workload] = time_variants(workload, steps, FLAGS.repeats)
        print(json.dumps(results["step_cost"][workload]["ratio_to_plain"]), flush=True)
        run_steps = FLAGS.reload_run_steps if workload == "mlp" else FLAGS.reload_run_steps // 4
        for background in (False, True):
            mode = "background" if background else "blocking"
            print(f"[{workload}] {mode} reloads: {run_steps} steps, one every 50", flush=True)
            r = time_reloads(workload, run_steps, background)
            results["reloads"][f"{workload}, {mode}"] = r
            print(json.dumps(r), flush=True)
    text = markdown(results)
    print(text)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=2)
    if FLAGS.markdown:
        write_markdown(FLAGS.markdown, text)


START, END = "<!-- step_cost.py: start -->", "<!-- step_cost.py: end -->"
STEPS_START, STEPS_END = "<!-- step_cost.py steps: start -->", "<!-- step_cost.py steps: end -->"


def write_markdown(path, text, start=START, end=END):
    """Writes the tables between the markers, keeping what surrounds them (the analysis)."""
    START, END = start, end  # noqa: N806
    block = f"{START}\n{text}{END}\n"
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if START in old and END in old:
        block = old[: old.index(START)] + block + old[old.index(END) + len(END) + 1 :]
    elif old:
        block = old.rstrip("\n") + "\n\n" + block  # Added after what is there.
    with open(path, "w") as f:
        f.write(block)


if __name__ == "__main__":
    app.run(main)
