"""benchmarks/bench.py: how it derives the second-thread speedup (the figures quoted in
docs/benchmarks.md come from these functions)."""

import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
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


def test_variants_runnable_and_one_line_per_variant(bench, monkeypatch):
    """--variants: the variants carried and runnable are timed, the others are named with the
    reason; the table has one swiftunet line per variant, each against the same peers."""
    from swiftunet import _variants

    monkeypatch.setattr(_variants, "available", lambda: ("avx2", "baseline"))
    monkeypatch.setattr(_variants, "cpu_flags", lambda: set(_variants.REQUIRED_FLAGS["avx2"]))
    monkeypatch.setattr(_variants.platform, "machine", lambda: "x86_64")
    run, skipped = bench.runnable_variants("all")
    assert run == ["avx2", "baseline"]
    assert skipped == [("avx512", "not carried by this installation (build with SWIFTUNET_VARIANTS=all)")]
    monkeypatch.setattr(_variants, "available", lambda: ("avx512", "avx2", "baseline"))
    assert bench.runnable_variants("avx512,baseline") == (["baseline"], [("avx512", "this CPU cannot run it")])
    assert bench.engine_env("swiftunet:avx2", 2)["SWIFTUNET_VARIANT"] == "avx2"
    assert bench.engine_variant("swiftunet") is None

    row = _row("rgb32-small", 1, 2, 10.0)
    row["engines"] = {"swiftunet:avx2": {"median_ms": 10.0, "peak_rss_mib": 90.0},
                      "swiftunet:baseline": {"median_ms": 40.0, "peak_rss_mib": 90.0},
                      "onnxruntime": {"median_ms": 20.0, "peak_rss_mib": 200.0}}
    results = {"facts": {"date": "d", "nproc": 2, "cpu": "AMD EPYC", "swiftunet_build": "b", "python": "3",
                         "variants": ["avx2", "baseline"], "variants_skipped": [("avx512", "this CPU cannot run it")]},
               "peak": {"source": "s", "by_threads": {1: 100.0, 2: 200.0}, "per_core": 100.0},
               "cases": [row], "scaling": [], "paired": []}
    lines = bench.render(results, [2]).splitlines()
    assert "CPU: AMD EPYC" in lines[0]
    assert lines[2] == "kernel variant(s) timed: avx2, baseline; avx512 not run: this CPU cannot run it"
    main = [l for l in lines if l.startswith("| rgb32-small 32x32x3")]
    assert [l.split(" | ")[3] for l in main] == ["avx2", "baseline"]
    assert [l.split(" | ")[12] for l in main] == ["0.50", "2.00"]  # swift/best peer: 10/20, 40/20


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


# --------------------------------------------------------------------------
# benchmarks/train_bench.py (the "Training step time" section of docs/benchmarks.md)

TRAIN_BENCH_PATH = BENCH_PATH.parent / "train_bench.py"


@pytest.fixture(scope="module")
def train_bench():
    spec = importlib.util.spec_from_file_location("swiftunet_train_bench_script", TRAIN_BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_train_bench(tmp_path, *args, timeout=600):
    out_json = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, str(TRAIN_BENCH_PATH), *args, "--json", str(out_json)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out_json.read_text())


def _table_rows(text, header_start):
    """The cells of the markdown table whose header line starts with header_start."""
    lines = text.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return header, rows


TRAIN_COLUMNS = ["config", "B", "thr", "swiftunet ms/step", "torch ms/step", "ratio", "round ratios",
                 "swiftunet peak RSS MiB", "torch peak RSS MiB", "RSS ratio",
                 "verdict (ratio <= 0.75, RSS <= torch)"]


def test_train_bench_median_of_round_medians_and_verdicts(train_bench):
    row = {"libraries": {"swiftunet": {"rounds_ms": [[1, 2, 3], [10, 11, 12], [5, 6, 7]], "peak_rss_mib": 100.0},
                         "torch": {"rounds_ms": [[4, 4, 4], [20, 30, 40], [8, 9, 10]], "peak_rss_mib": 400.0}}}
    train_bench.summarize_row(row)
    assert row["libraries"]["swiftunet"]["ms_per_step"] == 6  # median of 2, 11, 6
    assert row["libraries"]["torch"]["ms_per_step"] == 9      # median of 4, 30, 9
    assert row["ratio"] == pytest.approx(6 / 9)
    assert row["round_ratios"] == pytest.approx([2 / 4, 11 / 30, 6 / 9])
    assert row["rss_ratio"] == pytest.approx(0.25)
    assert row["verdict"] == "meets"
    row["libraries"]["swiftunet"]["peak_rss_mib"] = 500.0
    train_bench.summarize_row(row)
    assert row["verdict"] == "misses: RSS 1.25x torch"
    row["libraries"]["swiftunet"]["rounds_ms"] = [[9, 9, 9]] * 3
    train_bench.summarize_row(row)
    assert row["verdict"] == "misses: time 1.00 > 0.75, RSS 1.25x torch"
    del row["libraries"]["torch"]
    train_bench.summarize_row(row)
    assert row["ratio"] is None and row["verdict"] == "-"


def test_train_bench_interleaves_rounds_and_keeps_rss_apart(tmp_path):
    """The driver with stand-in libraries (a step sleeps; set-up touches some MiB): the rounds
    alternate which library goes first, each library's RSS is its own process's, and the table
    carries every column with the figures of the JSON."""
    fake = {"ms": {"swiftunet": 10, "torch": 30}, "mib": {"swiftunet": 20, "torch": 150}}
    text, res = _run_train_bench(tmp_path, "--fake", json.dumps(fake), "--configs", "tiny", "--batches", "2",
                                 "--threads", "1", "--rounds", "4", "--steps", "2", "--warmup", "1")
    (row,) = res["rows"]
    assert row["sequence"] == [[0, "swiftunet"], [0, "torch"], [1, "torch"], [1, "swiftunet"],
                               [2, "swiftunet"], [2, "torch"], [3, "torch"], [3, "swiftunet"]]
    s, t = row["libraries"]["swiftunet"], row["libraries"]["torch"]
    assert [len(r) for r in s["rounds_ms"]] == [2] * 4 and [len(r) for r in t["rounds_ms"]] == [2] * 4
    assert 10 <= s["ms_per_step"] < 20 and 30 <= t["ms_per_step"] < 45
    assert 100 < t["peak_rss_mib"] - s["peak_rss_mib"] < 200  # 130 MiB more touched by the torch stand-in
    assert row["verdict"] == "meets"
    header, rows = _table_rows(text, "| config | B | thr | swiftunet ms/step")
    assert header == TRAIN_COLUMNS
    (cells,) = rows
    assert cells["config"].startswith("tiny 8x8x1") and cells["B"] == "2" and cells["thr"] == "1"
    assert float(cells["swiftunet ms/step"]) == pytest.approx(s["ms_per_step"], abs=0.05)
    assert float(cells["torch ms/step"]) == pytest.approx(t["ms_per_step"], abs=0.05)
    assert float(cells["ratio"]) == pytest.approx(row["ratio"], abs=0.005)
    assert float(cells["swiftunet peak RSS MiB"]) == pytest.approx(s["peak_rss_mib"], abs=0.5)
    assert float(cells["RSS ratio"]) == pytest.approx(row["rss_ratio"], abs=0.005)
    assert cells["verdict (ratio <= 0.75, RSS <= torch)"] == "meets"


def test_train_bench_quick_no_torch(tmp_path):
    """train_bench.py --quick --no-torch on a tiny model: the header's facts, one swiftunet row
    per (batch, threads) with its time and RSS, and no torch figures."""
    swiftunet = pytest.importorskip("swiftunet")
    if not hasattr(swiftunet, "Trainer"):
        pytest.skip("this swiftunet has no Trainer (training not built in): nothing to time")
    text, res = _run_train_bench(tmp_path, "--quick", "--no-torch", "--configs", "tiny", "--batches", "2,3",
                                 "--threads", "1,2")
    lines = text.splitlines()
    assert re.match(r"date: \d{4}-\d\d-\d\d \d\d:\d\d UTC; nproc: \d+", lines[0]), lines[0]
    assert lines[1].startswith("CPU: ") and "; vector ISA: " in lines[1]
    assert any(k in lines[1] for k in ("AVX-512", "AVX2", "no AVX2")), lines[1]
    assert lines[2] == f"swiftunet build: {swiftunet.build_info()}; python {platform.python_version()}"
    assert lines[3] == "torch: not measured (--no-torch): swiftunet rows only"
    assert "AdamW" in lines[4] and "EMA decay 0.999" in lines[4] and "no gradient clipping" in lines[4]
    assert lines[5].startswith("timing: 1 warm-up step(s), then 1 alternating round(s) of 2 timed step(s)")
    header, rows = _table_rows(text, "| config | B | thr | swiftunet ms/step")
    assert header == TRAIN_COLUMNS
    assert [(r["B"], r["thr"]) for r in rows] == [("2", "1"), ("2", "2"), ("3", "1"), ("3", "2")]
    for cells, row in zip(rows, res["rows"]):
        s = row["libraries"]["swiftunet"]
        assert "error" not in s, s["error"]
        assert list(row["libraries"]) == ["swiftunet"]
        assert cells["config"] == "tiny 8x8x1 [8, 16]"
        assert 0 < float(cells["swiftunet ms/step"]) == pytest.approx(s["ms_per_step"], abs=0.05)
        assert 0 < float(cells["swiftunet peak RSS MiB"]) == pytest.approx(s["peak_rss_mib"], abs=0.5)
        assert s["peak_rss_mib"] >= s["setup_rss_mib"] > 0
        assert all(math.isfinite(v) and v > 0 for v in s["loss"]) and len(s["loss"]) == 2
        for col in ("torch ms/step", "ratio", "round ratios", "torch peak RSS MiB", "RSS ratio",
                    "verdict (ratio <= 0.75, RSS <= torch)"):
            assert cells[col] == "-", (col, cells[col])


def test_memory_worker_reports_at_least_the_weights_per_model(bench):
    spec = {"memory": True, "models": 3, "threads": 1, "image_size": 16, "channels": 1,
            "hidden_dims": [32, 64, 128], "time_dim": 32}
    res = bench.run_worker(spec, timeout=300)
    assert "error" not in res, res
    assert res["models"] == 3
    assert res["parameter_bytes"] > 0
    # every model holds its raw weights at least; its forwards add an arena
    assert res["per_model_bytes"] >= res["parameter_bytes"]
    assert res["per_model_after_forward_bytes"] >= res["per_model_bytes"]
    table = bench.render_memory({"memory": [{"case": "tiny", "hidden_dims": [32, 64, 128], **res}]})
    ratio = res["per_model_bytes"] / res["parameter_bytes"]
    assert f"| {ratio:.2f} |" in table


# --------------------------------------------------------------------------
# benchmarks/idle_rounds.py (why 2-thread rows move, docs/benchmarks.md)

IDLE_ROUNDS_PATH = BENCH_PATH.parent / "idle_rounds.py"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc/self/task (Linux only)")
def test_idle_rounds_reports_each_thread_and_its_ticks():
    proc = subprocess.Popen([sys.executable, str(IDLE_ROUNDS_PATH), "--config", "gray28-small", "--batch", "1",
                             "--threads", "2", "--rounds", "2", "--steps", "2", "--pause", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    rounds = [l for l in out.splitlines() if l.startswith("round ")]
    assert len(rounds) == 2, out
    for line in rounds:
        median = float(re.search(r"median ([0-9.]+) ms", line).group(1))
        threads = re.findall(r"(\d+): cpu(\d+) \+(\d+)", line)
        assert median > 0 and len(threads) >= 1, line
        # The script's main thread (its thread id is the process id) ran the steps.
        assert str(proc.pid) in [t for t, _, _ in threads], line
