"""bench.testbed.sweep: reports of one profile at several rates, read back and set side by side."""

from __future__ import annotations

import json
from pathlib import Path

from bench.testbed import sweep


def _report(path: Path, utilisation: float, p99: dict[str, float]) -> Path:
    def figure(v: float, beyond: int) -> dict:
        return {"value": v, "low": v - 1, "high": v + 1, "beyond": beyond}

    schemes = [{"name": n, "figures": {"p99": figure(v, 40), "p99.9": figure(2 * v, 4)}} for n, v in p99.items()]
    report = {
        "command": f"python -m bench.testbed --utilisation {utilisation}",
        "started_utc": "2026-12-07 20:00:00",
        "testbed": {"utilisation": utilisation, "rate_qps": 100 * utilisation},
        "schemes": schemes,
    }
    path.write_text(json.dumps(report))
    return path


def test_sweep_orders_runs_by_load_and_keeps_only_the_schemes_every_run_has(tmp_path: Path):
    high = _report(tmp_path / "high.json", 0.7, {"none": 900, "parm": 400, "hedge": 800})
    low = _report(tmp_path / "low.json", 0.3, {"none": 700, "parm": 200})
    md, png = sweep.main([str(high), str(low), "--tag", "rates", "--out", str(tmp_path)])
    text = md.read_text()
    assert "| scheme | p99 at 0.30 (30.0 q/s) | p99 at 0.70 (70.0 q/s) | p99.9 at 0.30" in text
    assert "| parm | 200 [199, 201] (n>q=40) | 400 [399, 401] (n>q=40) | 400 [399, 401] (n>q=4, thin)" in text
    assert "| hedge |" not in text  # only in one run
    assert png.exists() and png.stat().st_size > 0
