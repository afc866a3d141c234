"""benchmarks/bench.py: how it derives the second-thread speedup (the figures quoted in
docs/benchmarks.md come from these functions)."""

import importlib.util
import os
import subprocess
import time
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("swiftunet_bench_script", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeEngine:
    """Stands in for the swiftunet module: a call takes `seconds[threads]`."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.threads = 1
        self.calls = []

    def set_num_threads(self, n):
        self.threads = n

    def run(self):
        self.calls.append(self.threads)
        time.sleep(self.seconds[self.threads])


def test_paired_times_alternate_and_divide_per_pair(bench):
    engine = FakeEngine({1: 0.004, 2: 0.001})
    res = bench._paired_thread_times(engine, engine.run, 1, 2, pairs=10)
    timed = engine.calls[4:]  # after the warm-up of two calls at each count
    assert engine.calls[:4] == [1, 2, 1, 2]
    assert len(timed) == 2 * res["pairs"] and res["pairs"] >= 10
    assert timed == [1, 2] * res["pairs"], "each pair is one call at 1 thread, then one at 2"
    assert res["low_threads"] == 1 and res["high_threads"] == 2
    assert res["low_median_ms"] >= 4.0 and res["high_median_ms"] >= 1.0
    # sleep only overshoots, by a similar amount for both calls: the ratio lies below 4
    assert 1.5 < res["speedup_median"] < 4.01
    q1, q2, q3 = res["speedup_quartiles"]
    assert q1 <= q2 <= q3


def _row(case, batch, threads, ms):
    return {"case": case, "batch": batch, "threads": threads, "height": 32, "width": 32, "channels": 3,
            "hidden_dims": [32, 64, 128], "flops": 1e9, "loadavg": [0.5],
            "engines": {"swiftunet": {"median_ms": ms, "peak_rss_mib": 100.0}}}


def test_table_speedups_divide_the_one_thread_row(bench):
    results = {"cases": [_row("a", 8, 1, 30.0), _row("a", 8, 2, 12.0), _row("a", 1, 2, 3.0),
                         _row("b", 8, 1, 20.0)]}
    speedups = bench._table_speedups(results)
    assert speedups == {("a", 8, 2): pytest.approx(2.5)}  # no 1-thread row for ("a", 1), no 2 for "b"


def test_render_prints_both_speedups(bench):
    results = {
        "facts": {"date": "d", "nproc": 2, "cpu": "c", "swiftunet_build": "b", "python": "3"},
        "peak": {"source": "s", "by_threads": {1: 100.0, 2: 200.0}, "per_core": 100.0},
        "cases": [_row("rgb32-small", 8, 1, 30.0), _row("rgb32-small", 8, 2, 15.0)],
        "scaling": [],
        "paired": [{"case": "rgb32-small", "batch": 8, "threads": 2, "low_threads": 1, "high_threads": 2, "pairs": 12,
                    "low_median_ms": 31.0, "high_median_ms": 16.0, "speedup_median": 1.9,
                    "speedup_quartiles": [1.8, 1.9, 2.0], "loadavg": 0.7}],
    }
    text = bench.render(results, [1, 2])
    line = next(l for l in text.splitlines() if l.startswith("| rgb32-small | 8 | 2 | 2.00 |"))
    assert "| 31.00 | 16.00 | 1.90 (1.80-2.00) | 12 |" in line


PROBE_PATH = BENCH_PATH.parent / "cross_core_probe.c"


def test_cross_core_probe_builds_and_reports(tmp_path, c_compiler):
    """benchmarks/cross_core_probe.c (figures in docs/KERNELS.md): it builds with the line
    at its top, less -march=native, and prints its four figures, or says why it cannot."""
    exe = tmp_path / "cross_core_probe"
    subprocess.run([c_compiler, "-O3", "-pthread", str(PROBE_PATH), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120).stdout
    if "needs CPUs 0 and 1" in out:
        assert not {0, 1} <= os.sched_getaffinity(0), "the probe declined although CPUs 0 and 1 are usable"
        return
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    for line, unit in zip(lines, ["GB/s", "GB/s", "GB/s", "ns"]):
        value = float(line.split(":")[1].split()[0])
        assert value > 0 and line.endswith(unit), line
