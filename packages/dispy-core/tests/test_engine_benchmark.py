"""benchmarks/engine.py runs (tiny sizes) so it cannot rot; CI proves it works, not how fast."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "engine.py"


def test_engine_benchmark_runs(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("engine_benchmark", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "engine.json"
    args = ["--jobs", "3000", "--nodes", "20", "--cpus", "8", "--batch", "500"]
    assert bench.main([*args, "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["jobs"] == 3000
    assert metrics["job_events_per_s"] > 0
    assert 0 < metrics["bytes_per_queued_job"] < 1000
    assert "memory per queued job" in capsys.readouterr().out
