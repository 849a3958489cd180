"""The benchmark suite runs end to end (tiny sizes): CI proves it works, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def test_benchmark_smoke_runs_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    expected = {
        "latency_p50",
        "latency_p99",
        "throughput",
        "scale",
        "scale_client_peak",
        "data",
        "cpu",
        "startup",
        "node_idle_rss",
        "node_queued_rss",
        "client_per_job",
    }
    assert expected <= set(metrics), sorted(metrics)
    for name in ("latency_p50", "throughput", "data", "cpu", "startup"):
        assert metrics[name]["dispy"]["best"] > 0
        assert metrics[name]["ratio"] > 0
    assert "dispy vs ProcessPoolExecutor(2)" in proc.stdout


SHARED = BENCH.parent / "shared.py"


def test_shared_benchmark_smoke_runs_every_row(tmp_path):
    out = tmp_path / "shared.json"
    proc = subprocess.run(
        [sys.executable, str(SHARED), "--smoke", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"latency_p50", "throughput", "scale", "concurrent"}
    for name in ("latency_p50", "throughput", "scale"):
        assert rows[name]["shared"][0] > 0
        assert rows[name]["jobcluster"][0] > 0
    assert rows["concurrent"]["shared"][0] > 0
