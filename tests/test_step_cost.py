"""benchmarks/step_cost.py's pure helpers (statistics, ratios, cpuinfo, markdown) and scratch dirs.

Nothing here times anything or builds a model: the step times are written
down, and the expected numbers are worked out in the comments.
"""

import os
import subprocess
import sys

import pytest

from tf_codistill import testing

sys.path.insert(0, os.path.join(testing.repo_root(), "benchmarks"))

import step_cost  # noqa: E402


def test_summarize_in_ms():
    # 1..100 ms: median (50 + 51) / 2; numpy's linear p99 sits at index
    # 0.99 * 99 = 98.01, i.e. 99 + 0.01 * (100 - 99).
    s = step_cost.summarize([t / 1e3 for t in range(1, 101)])
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["max_ms"] == pytest.approx(100)
    assert s["mean_ms"] == pytest.approx(50.5)


def test_paired_ratios_pair_rounds():
    # Round by round: 2/1, 3/1, 4/2 -> [2, 3, 2]: median 2, q1 2, q3 2.5.
    r = step_cost.paired_ratios([2, 3, 4], [1, 1, 2])
    assert r == pytest.approx({"median": 2.0, "q1": 2.0, "q3": 2.5})


STEP_MS = {
    "plain": 100.0,
    "teacher": 25.0,
    "teacher-bfloat16": 15.0,
    "codistill-1": 130.0,
    "codistill-1-bfloat16": 115.0,
    "codistill-3-all": 180.0,
    "codistill-3-random": 132.0,
    "codistill-3-round_robin": 130.0,
    "keras3-plain": 90.0,
    "keras3-distiller": 117.0,
}


def step_times():
    return {name: [ms / 1e3] * 3 for name, ms in STEP_MS.items()}


def test_step_ratios_targets():
    d = step_cost.step_ratios(step_times(), "bfloat16")["derived"]
    # Bound: plain + teacher = 125 ms = 1.25 plain; codistill-1 130 / 125 = 1.04.
    assert d["bound_float32"] == pytest.approx(1.25)
    assert d["over_bound_float32"] == pytest.approx(1.04)
    # Overheads over plain: 30% in float32, 15% with a bf16 teacher: cut by half.
    assert d["overhead_float32"] == pytest.approx(0.30)
    assert d["overhead_bfloat16"] == pytest.approx(0.15)
    assert d["half_cut"] == pytest.approx(0.5)
    # In N: 180 / 130 with every peer, 132 / 130 with one sampled slot.
    assert d["3_all_over_1"] == pytest.approx(180 / 130)
    assert d["3_random_over_1"] == pytest.approx(132 / 130)
    assert d["3_round_robin_over_1"] == pytest.approx(1.0)
    # Keras 3 against its own plain step: 117 / 90 = 1.3.
    assert d["distiller_over_keras3_plain"] == pytest.approx(1.3)
    assert d["keras3_plain_over_plain"] == pytest.approx(0.9)


def test_step_ratios_per_variant_and_missing_variants():
    times = step_times()
    for name in ("teacher-bfloat16", "codistill-1-bfloat16", "keras3-plain", "keras3-distiller"):
        del times[name]
    r = step_cost.step_ratios(times, "bfloat16")
    assert r["variants"]["codistill-1"]["p50_over_plain"] == pytest.approx(1.3)
    assert r["variants"]["codistill-1"]["paired_over_plain"]["median"] == pytest.approx(1.3)
    assert r["variants"]["plain"]["p50_ms"] == pytest.approx(100)
    # What was not timed is not derived (no KeyError, no made-up value).
    for key in ("half_cut", "overhead_bfloat16", "distiller_over_keras3_plain"):
        assert key not in r["derived"]
    assert "over_bound_float32" in r["derived"]


def test_unfused_psi_against_fused_per_round():
    # Rounds of the fused step: 100, 100, 100, 100 ms; unfused: 110, 90, 120, 105.
    # Ratio of medians: 107.5 / 100; per round 1.1, 0.9, 1.2, 1.05 (median 1.075);
    # the unfused step was the slower one in 3 of 4 rounds.
    times = {
        "plain": [0.08] * 4,
        "codistill-1": [0.1] * 4,
        "codistill-1-unfused": [0.11, 0.09, 0.12, 0.105],
    }
    d = step_cost.step_ratios(times, "bfloat16")["derived"]
    assert d["unfused_over_fused"] == pytest.approx(1.075)
    assert d["unfused_over_fused_paired"]["median"] == pytest.approx(1.075)
    assert d["unfused_slower_rounds"] == [3, 4]
    assert "unfused_over_fused" not in step_cost.step_ratios(step_times(), "bfloat16")["derived"]


def test_exchange_summary_against_the_median_without_exchanges():
    # Without exchanges every step takes 50 ms. With them, 98 steps of 50 ms
    # and 2 of 150 ms: numpy's p99 (index 98.01 of the sorted 100) is 150,
    # 3.0x the median of the run without exchanges.
    runs = {
        "none": {"times": [0.05] * 100},
        "blocking": {
            "times": [0.05] * 98 + [0.15] * 2,
            "boundary": [0.15, 0.15],
            "after": [0.05, 0.06],
            "reloads": 2,
        },
    }
    s = step_cost.exchange_summary(runs)
    assert s["none"]["p99_over_none_p50"] == pytest.approx(1.0)
    assert s["blocking"]["p99_over_none_p50"] == pytest.approx(3.0)
    assert s["blocking"]["p50_over_none_p50"] == pytest.approx(1.0)
    assert s["blocking"]["p99_over_own_p50"] == pytest.approx(3.0)
    assert s["blocking"]["boundary_p50_ms"] == pytest.approx(150)
    assert s["blocking"]["after_max_ms"] == pytest.approx(60)
    assert s["blocking"]["reloads"] == 2
    assert "boundary_p50_ms" not in s["none"]


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse
"""


def test_parse_cpuinfo():
    # The first processor's model name and flags.
    cpu = step_cost.parse_cpuinfo(CPUINFO)
    assert cpu["cpu"] == "AMD EPYC 9R14"
    assert cpu["avx512f"] and cpu["avx512_bf16"]
    assert not cpu["amx_bf16"] and not cpu["amx_tile"]
    empty = step_cost.parse_cpuinfo("")
    assert not empty["avx512_bf16"]


def results():
    steps = step_cost.step_ratios(step_times(), "bfloat16")
    steps["memory"] = {
        "codistill-3-all": {"slots": 3, "buffers": 2, "copies": 6, "bytes": 6 * 2**20},
        "codistill-3-random": {"slots": 1, "buffers": 2, "copies": 2, "bytes": 2 * 2**20},
    }
    return {
        "machine": {
            **step_cost.parse_cpuinfo(CPUINFO),
            "cores": 2,
            "gpus": 0,
            "tensorflow": "2.21.0",
            "tf_keras": "2.21.0",
            "keras3": "3.15.1",
            "python": "3.11.7",
        },
        "device": "/CPU:0",
        "half_dtype": "bfloat16",
        "args": "--mlp_rounds=3",
        "start": "2026-11-28 16:20",
        "end": "2026-11-28 16:30",
        "nice": 10,
        "load_before": [0.5, 1.0, 2.0],
        "load_after": [1.5, 1.2, 2.0],
        "steps": {"mlp": steps},
        "exchanges": {
            "mlp": step_cost.exchange_summary(
                {"none": {"times": [0.05] * 10}, "background": {"times": [0.05] * 9 + [0.06]}}
            )
        },
        "io": {"mlp": {"parameters": 2176010, "publish_ms": 30.0, "reload_ms": 29.0}},
    }


def test_markdown_tables():
    text = step_cost.markdown(results())
    assert "AVX512_BF16: yes, AMX-BF16: no" in text
    assert "Load average (1 min) 0.50 before, 1.50 after" in text
    assert "| mlp | codistill-1 | 130.00 ms | 130.00 ms | 1.300x | 1.300 (1.30-1.30) |" in text
    assert "| mlp | codistill-3-all | 3 | 2 | 6 | 6.0 MiB |" in text
    # The targets row: bound 1.25x, 1.04x over it, 30% -> 15% overhead (cut 50%).
    assert "| mlp | 1.250x | 1.040x | 30% | 15% | 50% |" in text
    assert "| mlp | none | 10 | 50.00 ms |" in text
    # background: p99 of 9 x 50 ms and one 60 ms (index 8.91 -> 59.1 ms) over 50 ms.
    assert "| 1.18 | 1.18 |" in text
    assert "| mlp | codistill-3-random | 1 | 2 | 2 | 2.0 MiB |" in text
    assert "| mlp | 2,176,010 | 30.00 ms | 29.00 ms |" in text


def test_write_markdown_keeps_what_surrounds_the_markers(tmp_path):
    path = str(tmp_path / "benchmarks.md")
    step_cost.write_markdown(path, "first\n")  # No file yet: created.
    with open(path) as f:
        assert f.read() == f"{step_cost.START}\nfirst\n{step_cost.END}\n"
    with open(path, "w") as f:
        f.write(f"# Title\n\n{step_cost.START}\nold\n{step_cost.END}\n\nAnalysis.\n")
    step_cost.write_markdown(path, "new\n")
    with open(path) as f:
        assert f.read() == f"# Title\n\n{step_cost.START}\nnew\n{step_cost.END}\n\nAnalysis.\n"


def test_write_markdown_appends_without_markers(tmp_path):
    path = str(tmp_path / "notes.md")
    with open(path, "w") as f:
        f.write("Notes.\n\n")
    step_cost.write_markdown(path, "tables\n")
    with open(path) as f:
        assert f.read() == f"Notes.\n\n{step_cost.START}\ntables\n{step_cost.END}\n"


def test_scratch_dirs_are_removed_when_the_run_ends(tmp_path):
    # The models' checkpoints go under one root that is gone after exit
    # (they once piled up in /tmp until the disk was full).
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import step_cost; "
        "a, b = step_cost.scratch_dir(), step_cost.scratch_dir(); "
        "assert a != b and os.path.dirname(a) == os.path.dirname(b), (a, b); "
        "open(os.path.join(a, 'ckpt'), 'w').write('x'); print(os.path.dirname(a))"
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code, os.path.join(testing.repo_root(), "benchmarks")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip()
    assert os.path.basename(out).startswith("tfcd_step_cost_")
    assert os.path.dirname(out) == str(tmp_path)
    assert not os.path.exists(out)
