"""In-process search probe for the codistillation study (a research tool, not the product).

Trains M small MLPs in lockstep in one process, with or without
codistillation between them (teachers are in-memory snapshots of the peers,
refreshed every `reload` steps: the exchange without files), on

* the teacher-student task of `tf_codistill.datasets.teacher_student` (fresh
  data every step; losses are excess expected cross-entropy over the
  oracle's), or
* MNIST-1D (`kind="mnist1d"`, a fixed pool of `pool` examples, repeated;
  losses are cross-entropy against the labels; see `make_pool`),

and records validation curves, ensembles of the models, test losses and the
churn between the first two models. Fast enough to sweep batch sizes,
learning rates and codistillation settings on 2 CPU cores (seconds to
minutes per run). It is how the study searched; the product (train.py
processes exchanging checkpoints, `benchmarks/reproduce.py`) measures what
the tables report. The model, optimiser (Adam, tf_keras defaults) and data
follow the product's, but the two do not share code or random streams, so
their numbers agree statistically, not bit for bit.

Every run appends one JSON line to --log; docs/results/probe_runs.jsonl.gz
holds every run the study made with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Task:
    dim: int = 32
    classes: int = 10
    oracle_hidden: int = 64
    sharpness: float = 3.0
    oracle_seed: int = 0
    oracle_depth: int = 1
    kind: str = "ts"  # ts (teacher-student, fresh data) | mnist1d (a fixed pool)
    pool: int = 0  # mnist1d: training examples used (0: all but the evaluation sets)

    def oracle(self):
        rng = np.random.default_rng(self.oracle_seed)
        ws = []
        fan_in = self.dim
        for _ in range(self.oracle_depth):
            ws.append(rng.normal(size=(fan_in, self.oracle_hidden)) / np.sqrt(fan_in))
            fan_in = self.oracle_hidden
        ws.append(rng.normal(size=(fan_in, self.classes)) / np.sqrt(fan_in))
        return [tf.constant(w, tf.float32) for w in ws]


_POOL = {}
# The probe's MNIST-1D examples: four chunks of 150,000 made by the mnist1d
# package (`make_pool` below), the last 60,000 held out as validation and test.
POOL_DIR = os.environ.get("PROBE_POOL_DIR", os.path.expanduser("~/.cache/tf_codistill/probe"))


def make_pool(seed: int, num_samples: int = 150_000) -> None:
    """Writes one chunk of the probe's MNIST-1D pool (a few minutes per chunk on one core)."""
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    data = make_dataset(args)
    os.makedirs(POOL_DIR, exist_ok=True)
    np.savez_compressed(
        os.path.join(POOL_DIR, f"mnist1d_{num_samples}_{seed}.npz"),
        x=data["x"].astype(np.float32),
        y=data["y"].astype(np.int64),
    )


def mnist1d_pool():
    if not _POOL:
        xs, ys = [], []
        for s in (1, 2, 3, 4):
            d = np.load(os.path.join(POOL_DIR, f"mnist1d_150000_{s}.npz"))
            xs.append(d["x"])
            ys.append(d["y"])
        x, y = np.concatenate(xs), np.concatenate(ys)
        _POOL.update(
            val=(x[-60000:-30000], y[-60000:-30000]),
            test=(x[-30000:], y[-30000:]),
            train=(tf.constant(x[:-60000]), tf.constant(y[:-60000].astype(np.int32))),
        )
    return _POOL


def oracle_logits(task: Task, ws, x):
    h = x
    for w in ws[:-1]:
        h = tf.tanh(h @ w)
    return task.sharpness * (h @ ws[-1])


def sample(task: Task, ws, stream: int, step, batch: int, part=(0, 1)):
    """Fresh examples of `stream` at `step`: x, sampled labels, true probabilities."""
    if task.kind == "mnist1d":
        xp, yp = mnist1d_pool()["train"]
        n = task.pool or int(xp.shape[0])
        size = n // part[1]
        idx = (tf.cast(step, tf.int64) * batch + tf.range(batch, dtype=tf.int64)) % size
        idx = (idx * 7919 + stream * 104729) % size + part[0] * size
        return tf.gather(xp, idx), tf.gather(yp, idx), None
    seed = tf.stack([tf.cast(stream, tf.int64) * 1_000_003 + 17, tf.cast(step, tf.int64)])
    x = tf.random.stateless_normal([batch, task.dim], seed=seed)
    logits = oracle_logits(task, ws, x)
    y = tf.random.stateless_categorical(logits, 1, seed=seed + 7, dtype=tf.int32)[:, 0]
    return x, y, logits


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: `models` MLPs trained in lockstep (independent or codistilling)."""

    hidden: tuple = (128, 128)
    batch: int = 1024
    lr: float = 1e-3
    steps: int = 2000
    eval_every: int = 50
    models: int = 2
    codistill: bool = False
    weight: float = 1.0
    burn_in: int = 0
    ramp: int = 0
    reload: int = 50
    psi: str = "ce"  # ce | kl | rkl | mse | ce_logitavg
    temperature: float = 1.0
    seed: int = 0
    warmup: int = 0
    teacher_ema: float = 0.0  # >0: the published copy is an EMA of the peer's weights
    same_data: bool = False
    act: str = "relu"
    lr_decay: str = "none"  # none | cosine
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgdm (momentum 0.9)
    beta2: float = 0.999


def init_mlp(dims, rng):
    params = []
    for a, b in zip(dims[:-1], dims[1:], strict=False):
        limit = np.sqrt(6.0 / (a + b))  # Keras Dense's glorot_uniform
        params.append(tf.Variable(rng.uniform(-limit, limit, size=(a, b)).astype(np.float32)))
        params.append(tf.Variable(np.zeros(b, np.float32)))
    return params


def mlp(params, x, act):
    h = x
    n = len(params) // 2
    for i in range(n):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n - 1:
            h = tf.nn.relu(h) if act == "relu" else tf.tanh(h)
    return h


def run(task: Task, arm: Arm, val_n: int = 32768, test_n: int = 32768, verbose=False, gns=False):
    ws = task.oracle()
    dim = 40 if task.kind == "mnist1d" else task.dim
    rng = np.random.default_rng(1000 + arm.seed)
    dims = (dim, *arm.hidden, task.classes)
    M = arm.models
    models = [init_mlp(dims, rng) for _ in range(M)]
    snaps = [[tf.Variable(p) for p in m] for m in models]  # published copies
    ms = [[tf.Variable(tf.zeros_like(p)) for p in m] for m in models]
    vs = [[tf.Variable(tf.zeros_like(p)) for p in m] for m in models]
    streams = [arm.seed * 100 + (0 if arm.same_data else i) + 1 for i in range(M)]
    b1, b2, eps = 0.9, arm.beta2, 1e-7  # tf_keras Adam's defaults

    if task.kind == "mnist1d":
        pool = mnist1d_pool()
        xv, pv = tf.constant(pool["val"][0]), tf.one_hot(pool["val"][1], 10)
        xt, pt = tf.constant(pool["test"][0]), tf.one_hot(pool["test"][1], 10)
        bayes_v = bayes_t = 0.0
    else:
        xv, _, lv = sample(task, ws, 999_001, 0, val_n)
        xt, _, lt = sample(task, ws, 999_002, 0, test_n)
        pv, pt = tf.nn.softmax(lv), tf.nn.softmax(lt)
        bayes_v = float(-tf.reduce_mean(tf.reduce_sum(pv * tf.nn.log_softmax(lv), -1)))
        bayes_t = float(-tf.reduce_mean(tf.reduce_sum(pt * tf.nn.log_softmax(lt), -1)))

    def lr_at(step):
        s = tf.cast(step, tf.float32)
        lr = tf.constant(arm.lr, tf.float32)
        if arm.warmup:
            lr = lr * tf.minimum(1.0, (s + 1) / arm.warmup)
        if arm.lr_decay == "cosine":
            lr = lr * 0.5 * (1 + tf.cos(math.pi * tf.minimum(s / arm.steps, 1.0)))
        return lr

    def weight_at(step):
        if not arm.codistill:
            return tf.constant(0.0)
        s = tf.cast(step, tf.float32)
        if arm.ramp:
            return arm.weight * tf.clip_by_value((s - arm.burn_in + 1) / arm.ramp, 0.0, 1.0)
        return tf.where(s >= arm.burn_in, arm.weight, 0.0)

    def psi(student_logits, teacher_logits_list):
        T = arm.temperature
        if arm.psi in ("ce", "kl"):
            logq = tf.reduce_logsumexp(
                tf.stack([tf.nn.log_softmax(t / T) for t in teacher_logits_list]), 0
            ) - math.log(len(teacher_logits_list))
            logp = tf.nn.log_softmax(student_logits / T)
            return tf.reduce_mean(tf.reduce_sum(tf.exp(logq) * (logq - logp), -1)) * T * T
        if arm.psi == "ce_logitavg":
            t = tf.add_n(teacher_logits_list) / len(teacher_logits_list)
            logq = tf.nn.log_softmax(t / T)
            logp = tf.nn.log_softmax(student_logits / T)
            return tf.reduce_mean(tf.reduce_sum(tf.exp(logq) * (logq - logp), -1)) * T * T
        if arm.psi == "rkl":
            logq = tf.reduce_logsumexp(
                tf.stack([tf.nn.log_softmax(t / T) for t in teacher_logits_list]), 0
            ) - math.log(len(teacher_logits_list))
            logp = tf.nn.log_softmax(student_logits / T)
            return tf.reduce_mean(tf.reduce_sum(tf.exp(logp) * (logp - logq), -1)) * T * T
        if arm.psi == "mse":
            t = tf.add_n(teacher_logits_list) / len(teacher_logits_list)
            tc = t - tf.reduce_mean(t, -1, keepdims=True)
            sc = student_logits - tf.reduce_mean(student_logits, -1, keepdims=True)
            return tf.reduce_mean(tf.reduce_sum(tf.square(sc - tc), -1))
        raise ValueError(arm.psi)

    @tf.function
    def chunk(start, n):
        for k in tf.range(n):
            step = start + k
            if arm.codistill:
                refresh = tf.equal(step % arm.reload, 0)
                for i in range(M):
                    for sp, p in zip(snaps[i], models[i], strict=False):
                        if arm.teacher_ema > 0:
                            new = arm.teacher_ema * sp + (1 - arm.teacher_ema) * p
                            # EMA tracked every step; published only at refresh is not
                            # modelled: the EMA copy itself is the teacher.
                            sp.assign(new)
                        else:
                            sp.assign(tf.where(refresh, p, sp))
            w = weight_at(step)
            lr = lr_at(step)
            t = tf.cast(step, tf.float32) + 1
            for i in range(M):
                if arm.same_data:
                    x, y, _ = sample(task, ws, streams[i], step * M + i, arm.batch)
                else:
                    x, y, _ = sample(task, ws, streams[i], step, arm.batch, (i, M))
                with tf.GradientTape() as tape:
                    logits = mlp(models[i], x, arm.act)
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                    )
                    if arm.codistill:
                        teachers = [
                            tf.stop_gradient(mlp(snaps[j], x, arm.act)) for j in range(M) if j != i
                        ]
                        loss = loss + w * psi(logits, teachers)
                grads = tape.gradient(loss, models[i])
                for p, g, m, v in zip(models[i], grads, ms[i], vs[i], strict=False):
                    if arm.optimizer == "sgdm":
                        m.assign(0.9 * m + g)
                        p.assign_sub(lr * (m + arm.weight_decay * p))
                        continue
                    m.assign(b1 * m + (1 - b1) * g)
                    v.assign(b2 * v + (1 - b2) * g * g)
                    mh = m / (1 - b1**t)
                    vh = v / (1 - b2**t)
                    upd = mh / (tf.sqrt(vh) + eps)
                    if arm.weight_decay:
                        upd = upd + arm.weight_decay * p
                    p.assign_sub(lr * upd)
        return 0

    @tf.function(jit_compile=True)
    def evaluate(x, p):
        logps = [tf.nn.log_softmax(mlp(m, x, arm.act)) for m in models]
        each = [-tf.reduce_mean(tf.reduce_sum(p * lp, -1)) for lp in logps]
        ens = tf.reduce_logsumexp(tf.stack(logps), 0) - math.log(M)
        ens_ce = -tf.reduce_mean(tf.reduce_sum(p * ens, -1))
        if M >= 2:
            ens2 = tf.reduce_logsumexp(tf.stack(logps[:2]), 0) - math.log(2)
            ens2_ce = -tf.reduce_mean(tf.reduce_sum(p * ens2, -1))
        else:
            ens2_ce = ens_ce
        # churn between model 0 and 1: mean |dp| and top-1 disagreement
        if M >= 2:
            p0, p1 = tf.exp(logps[0]), tf.exp(logps[1])
            dp = tf.reduce_mean(tf.reduce_sum(tf.abs(p0 - p1), -1)) / 2
            dis = tf.reduce_mean(tf.cast(tf.argmax(p0, -1) != tf.argmax(p1, -1), tf.float32))
        else:
            dp = dis = tf.constant(0.0)
        return tf.stack(each), ens_ce, ens2_ce, dp, dis

    gns_micro, gns_count = 256, 64

    @tf.function
    def noise_scale(step):
        # McCandlish et al. 2018, appendix A: |G_B|^2 at two batch sizes.
        x, y, _ = sample(task, ws, 999_003, step, gns_micro * gns_count)
        xs = tf.reshape(x, [gns_count, gns_micro, dim])
        ys = tf.reshape(y, [gns_count, gns_micro])
        total = [tf.zeros_like(p) for p in models[0]]
        small = tf.constant(0.0)
        for k in tf.range(gns_count):
            with tf.GradientTape() as tape:
                logits = mlp(models[0], xs[k], arm.act)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys[k], logits=logits)
                )
            g = tape.gradient(loss, models[0])
            small += tf.add_n([tf.reduce_sum(gi * gi) for gi in g])
            total = [a + gi for a, gi in zip(total, g, strict=False)]
        small = small / gns_count
        big = tf.add_n([tf.reduce_sum((a / gns_count) ** 2) for a in total])
        bs, bb = float(gns_micro), float(gns_micro * gns_count)
        g2 = (bb * big - bs * small) / (bb - bs)
        trs = (small - big) / (1 / bs - 1 / bb)
        return g2, trs

    curve = []
    t0 = time.time()
    step = 0
    while step < arm.steps:
        n = min(arm.eval_every, arm.steps - step)
        chunk(tf.constant(step, tf.int64), tf.constant(n, tf.int64))
        step += n
        each, ens, ens2, dp, dis = evaluate(xv, pv)
        row = dict(
            step=step,
            val=[float(e) - bayes_v for e in each.numpy()],
            ens=float(ens) - bayes_v,
            ens2=float(ens2) - bayes_v,
        )
        if gns:
            g2, trs = noise_scale(tf.constant(step, tf.int64))
            row["gns_g2"], row["gns_tr"] = float(g2), float(trs)
        if not all(np.isfinite(row["val"])):
            row["diverged"] = True
            curve.append(row)
            break
        curve.append(row)
        if verbose:
            print(step, row, flush=True)
    each, ens, ens2, dp, dis = evaluate(xt, pt)
    test = dict(
        each=[float(e) - bayes_t for e in each.numpy()],
        ens=float(ens) - bayes_t,
        ens2=float(ens2) - bayes_t,
        churn_tv=float(dp),
        churn_top1=float(dis),
    )
    return dict(
        task=dataclasses.asdict(task),
        arm=dataclasses.asdict(arm),
        bayes_val=bayes_v,
        bayes_test=bayes_t,
        curve=curve,
        test=test,
        wall_s=time.time() - t0,
    )


# Fields added after the first runs: left out of the key at their defaults, so
# that the runs made before they existed keep their keys.
_LATER_FIELDS = {"optimizer": "adam", "beta2": 0.999, "kind": "ts", "pool": 0}


def _keyed(d):
    return {k: v for k, v in d.items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def key_of(task, arm):
    s = json.dumps(
        [_keyed(dataclasses.asdict(task)), _keyed(dataclasses.asdict(arm))], sort_keys=True
    )
    return hashlib.sha1(s.encode()).hexdigest()[:16]


def cached_run(task, arm, log, verbose=False, gns=False):
    k = key_of(task, arm) + ("-gns" if gns else "")
    if os.path.exists(log):
        with open(log) as f:
            for line in f:
                r = json.loads(line)
                if r.get("key") == k:
                    return r
    r = run(task, arm, verbose=verbose, gns=gns)
    r["key"] = k
    with open(log, "a") as f:
        f.write(json.dumps(r) + "\n")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default="probe_runs.jsonl", help="every run is appended here")
    ap.add_argument("--task", default="{}")
    ap.add_argument("--arm", default="{}")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    task = Task(**json.loads(a.task))
    arm_kwargs = json.loads(a.arm)
    if "hidden" in arm_kwargs:
        arm_kwargs["hidden"] = tuple(arm_kwargs["hidden"])
    arm = Arm(**arm_kwargs)
    r = cached_run(task, arm, a.log, a.verbose)
    print(
        json.dumps(
            {"key": r["key"], "test": r["test"], "wall_s": r["wall_s"], "last": r["curve"][-1]}
        )
    )


if __name__ == "__main__":
    sys.exit(main())
