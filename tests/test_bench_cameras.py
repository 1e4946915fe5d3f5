"""`scripts/bench_cameras.py` end to end, briefly: two video cameras on the real detector and a random-weight
RTMPose-t, batched and one call per camera alternating in both orders, a JSON report with what docs/daemon.md
tells a site to read (figures themselves: docs/daemon.md, measured on a quiet machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx").is_file(),
                                reason="shared detector not found")
pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")


def test_the_camera_benchmark_runs_both_ways_in_both_orders_and_reports(tmp_path, random_export, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_cameras

    out = tmp_path / "report.json"
    code = bench_cameras.main(["--pose", str(random_export("rtmpose-t-256x192")), "--cameras", "2", "--fps", "5",
                               "--budget-ms", "5000", "--seconds", "1.5", "--warmup", "1", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["runs"]] == ["batched", "one-call", "one-call", "batched"]
    assert set(report["ratios"]["2"]) == {"batched_first", "one_call_first"}
    for run in report["runs"]:
        assert run["cameras"] == 2 and set(run["per_camera"]) == {"cam0", "cam1"} and run["frames_per_s"] > 0
        assert run["pose_calls_per_tick"] is not None and "other_programs_cores" in run
    batched = [r["pose_calls_per_tick"] for r in report["runs"] if r["mode"] == "batched"]
    one_call = [r["pose_calls_per_tick"] for r in report["runs"] if r["mode"] == "one-call"]
    assert max(batched) <= 1.0 < max(one_call)          # one pose call per tick, against one per camera
    assert report["environment"]["cores"] and report["settings"]["one_inference_ms"] > 0
    assert set(report["capacity"]) == {"batched", "one-call"}
