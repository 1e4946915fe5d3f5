#!/usr/bin/env python3
"""How many cameras one device holds: the daemon's scheduler and camera batch with N video files as cameras.

    python scripts/bench_cameras.py [--det DET] [--pose POSE | --random-pose rtmw-m-256x192] [--backend auto]
        [--cameras 1,2,4,8] [--fps 5] [--budget-ms 0] [--seconds 10] [--warmup 3] [--threads 0]
        [--isolation] [--out bench_cameras.json]

For each N, the real daemon parts run in this process — a grabber per camera (`serve.cameras.Camera`: a looping
MJPG video of the shared photos, 1 to 5 people per frame, played in real time at --fps like a camera) and the
inference worker (`serve.worker.InferenceWorker`: the scheduler, then one tick per pass) — without the web side.
Two ways side by side, alternating, in both orders (batched, one-call, one-call, batched), on the same estimator:

  * batched     one pose call for the people of every camera in the tick (`multicam`: the daemon's default)
  * one-call    each camera's own detector and pose calls in the tick (what the daemon did before)

Per run: total persons per second, per-camera FPS and p50 / p95 latency (capture → result handed over), pose
calls and cameras per tick, frames dropped by reason. Per N: the ratio of persons per second, batched over
one-call, for each order. Then, for each way, the largest N whose every camera holds --fps (90 % of it) with its
p95 latency under its budget (--budget-ms, default one frame period).

--isolation adds the must-show of issue 24: two cameras alone, then the same two with a stalled camera (a live
source that stops sending) and a flooding one (a live source declaring --fps that sends ten times as fast); the
two cameras' FPS with them over their FPS alone.

The environment goes into the report: CPU, cores, the CPU other programs took during each run (from /proc/stat
less this process: the figures mean little on a busy machine, run it on a quiet one), the load average, the ONNX
Runtime / TensorRT versions, the GPU, and on a Jetson the L4T / JetPack release, `nvpmodel -q` and
`jetson_clocks --show` (when it finds them; run as root for the latter).
Prints a table, writes the JSON report with --out (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = ("human-pose.jpg", "000000040083.jpg", "000000197388.jpg", "000000000785.jpg", "000000196141.jpg")
MODES = ("batched", "one-call")


# ============================================================================ the environment
def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    return (out.stdout or out.stderr).strip() or None


def environment() -> dict:
    from importlib import metadata

    def version(*names):
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    cpu = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), None)
    except OSError:
        pass
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "platform": platform.platform(), "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
           "python": platform.python_version(), "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
           "tensorrt": version("tensorrt", "tensorrt-cu12", "tensorrt_libs"), "gpu": _run(["nvidia-smi", "-L"])}
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():   # a Jetson: its release, power mode and clocks
        from rtmw_edge.backends.tensorrt import _l4t_release

        env["jetpack"] = _l4t_release()
        env["nvpmodel"] = _run(["nvpmodel", "-q"])
        env["jetson_clocks"] = _run(["jetson_clocks", "--show"])
    return env


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far: their difference over a run is
    what other programs took (the measure of a quiet machine; the load average counts this benchmark too)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in fields]
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)   # all but idle and iowait
    own = os.times()
    return busy / ticks, own.user + own.system


# ============================================================================ cameras
def make_videos(folder: Path, cameras: int, fps: float, hold_s: float = 1.0) -> list[Path]:
    """A looping MJPG video per camera: the shared photos (1, 2, 5, 1, 3 people), each held HOLD_S seconds, in an
    order of its own (camera k starts at photo k)."""
    photos = [cv2.resize(cv2.imread(str(SHARED / "images" / n)), (640, 480), interpolation=cv2.INTER_AREA)
              for n in PHOTOS]
    out = []
    for k in range(cameras):
        path = folder / f"cam{k}.avi"
        if not path.exists():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
            for i in range(len(photos)):
                for _ in range(max(1, round(hold_s * fps))):
                    writer.write(photos[(k + i) % len(photos)])
            writer.release()
        out.append(path)
    return out


class LiveVideo:
    """A video file played as a live camera (a `sources.Source`): declares FPS, sends a frame every INTERVAL s,
    and stops sending after STOP_AFTER frames without closing (a stalled camera)."""

    kind = "camera"
    live = True
    dropped = skipped = 0

    def __init__(self, path: Path, fps: float, interval: float, stop_after: int | None = None) -> None:
        from types import SimpleNamespace

        cap = cv2.VideoCapture(str(path))
        self.frames = []
        while True:
            ok, image = cap.read()
            if not ok:
                break
            self.frames.append(image)
        cap.release()
        self.fps, self.interval, self.stop_after = fps, interval, stop_after
        self.closed = threading.Event()
        self._frame = SimpleNamespace

    def __iter__(self):
        n, next_at = 0, time.monotonic()
        while not self.closed.is_set():
            if self.stop_after is not None and n >= self.stop_after:
                self.closed.wait(0.05)
                continue
            next_at = max(next_at + self.interval, time.monotonic() - self.interval)
            self.closed.wait(max(0.0, next_at - time.monotonic()))
            yield self._frame(image=self.frames[n % len(self.frames)], index=n, timestamp=time.monotonic())
            n += 1

    def close(self) -> None:
        self.closed.set()


def opener_for(fps: float):
    from rtmw_edge.sources import open_source

    def opener(spec, prefetch=1, loop=False, on_skip=None):
        kind, _, path = spec.partition(":")
        if kind == "stall":
            return LiveVideo(Path(path), fps, 1.0 / fps, stop_after=3)
        if kind == "flood":
            return LiveVideo(Path(path), fps, 0.1 / fps)
        return open_source(spec, prefetch=prefetch, loop=loop, on_skip=on_skip)
    return opener


# ============================================================================ one run
def run_once(estimator, sources: list[str], *, batched: bool, fps: float, budget_ms: float, seconds: float,
             warmup: float, inference_s: float | None) -> dict:
    from rtmw_edge.serve.cameras import Camera
    from rtmw_edge.serve.config import CameraConfig
    from rtmw_edge.serve.metrics import Metrics
    from rtmw_edge.serve.worker import InferenceWorker

    metrics = Metrics()
    names = [f"cam{k}" for k in range(len(sources))]
    records: list[tuple[str, float, float, int]] = []   # camera, publish time, latency, persons
    lock = threading.Lock()

    def on_result(p) -> None:
        now = time.monotonic()
        with lock:
            records.append((p.camera, now, now - p.captured, len(p.result.persons)))

    worker = None
    cams = [Camera(CameraConfig(name=n, source=s, loop=True, realtime=True, max_latency_ms=budget_ms),
                   metrics, lambda: worker.wake(), opener=opener_for(fps)) for n, s in zip(names, sources)]
    worker = InferenceWorker(estimator, cams, metrics, on_result, batched=batched, inference_s=inference_s)
    load_before = os.getloadavg()[0]
    worker.start()
    for cam in cams:
        cam.start()

    def counters() -> dict:
        value = metrics.registry.get_sample_value
        return {"ticks": value("rtmw_edge_ticks_total") or 0.0,
                "pose_calls": value("rtmw_edge_pose_calls_total") or 0.0,
                "tick_cameras": value("rtmw_edge_tick_cameras_sum") or 0.0,
                "drops": {r: sum(value("rtmw_edge_frames_dropped_total", {"camera": n, "reason": r}) or 0.0
                                 for n in names) for r in ("stale", "throttled", "rate", "source", "corrupt")}}
    try:
        time.sleep(warmup)
        start, first, cpu0 = time.monotonic(), counters(), cpu_seconds()
        time.sleep(seconds)
        end, last, cpu1 = time.monotonic(), counters(), cpu_seconds()
    finally:
        for cam in cams:
            cam.stop()
        worker.stop()
        worker.join(10)
        for cam in cams:
            cam.join(2)
    window = [r for r in records if start <= r[1] <= end]
    span = end - start
    per_camera = {}
    for n in names:
        lat = np.array([r[2] for r in window if r[0] == n]) * 1000
        per_camera[n] = {"fps": round(len(lat) / span, 2),
                         "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                         "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None}
    ticks = last["ticks"] - first["ticks"]
    all_lat = np.array([r[2] for r in window]) * 1000
    return {"mode": "batched" if batched else "one-call", "cameras": len(sources), "seconds": round(span, 2),
            "persons_per_s": round(sum(r[3] for r in window) / span, 2),
            "frames_per_s": round(len(window) / span, 2),
            "fps_min": min(c["fps"] for c in per_camera.values()),
            "fps_mean": round(float(np.mean([c["fps"] for c in per_camera.values()])), 2),
            "p50_ms": round(float(np.percentile(all_lat, 50)), 1) if len(all_lat) else None,
            "p95_ms": round(float(np.percentile(all_lat, 95)), 1) if len(all_lat) else None,
            "p95_worst_camera_ms": max((c["p95_ms"] or 0.0) for c in per_camera.values()),
            "pose_calls_per_tick": round((last["pose_calls"] - first["pose_calls"]) / ticks, 2) if ticks else None,
            "cameras_per_tick": round((last["tick_cameras"] - first["tick_cameras"]) / ticks, 2) if ticks else None,
            "dropped": {r: int(last["drops"][r] - first["drops"][r]) for r in last["drops"]},
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "cpu_cores_used": round((cpu1[1] - cpu0[1]) / span, 2),
            "other_programs_cores": round(max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / span, 2),
            "per_camera": per_camera}


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--det", default=str(SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"))
    parser.add_argument("--pose", default=None, help="pose model (file or registered name)")
    parser.add_argument("--random-pose", default="rtmw-m-256x192",
                        help="without --pose: this registered model exported with random weights (the cost of a "
                             "call does not depend on the weights)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    parser.add_argument("--cameras", default="1,2,4,8")
    parser.add_argument("--fps", type=float, default=5.0, help="each camera's frame rate (the videos' rate)")
    parser.add_argument("--budget-ms", type=float, default=0.0, help="max_latency_ms per camera (0: one frame period)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring, per run")
    parser.add_argument("--max-persons", type=int, default=8)
    parser.add_argument("--isolation", action="store_true", help="also: a stalled and a flooding camera")
    parser.add_argument("--only-isolation", action="store_true", help="the isolation runs only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from rtmw_edge.estimators import open_estimator
    from rtmw_edge.outputs import atomic_write_text, check_output
    from rtmw_edge.serve.scheduler import measure_inference

    console = Console(stderr=True)
    if args.out is not None:
        check_output(args.out, option="--out")
    counts = [int(x) for x in args.cameras.split(",") if x.strip()]
    if not counts or min(counts) < 1 or args.fps <= 0 or args.seconds <= 0:
        parser.error("--cameras needs whole numbers >= 1, --fps and --seconds positive numbers")
    work = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    try:
        pose = args.pose
        if pose is None:
            from rtmw_edge.export import export_onnx

            console.print(f"exporting {args.random_pose} with random weights ...")
            pose = export_onnx(args.random_pose, work / f"{args.random_pose}.onnx", random_init=True, progress=False)
        estimator = open_estimator(args.det, pose, args.backend, threads=args.threads or None,
                                   max_persons=args.max_persons)
        inference_s = measure_inference(estimator)
        budget = args.budget_ms or 1000.0 / args.fps
        videos = make_videos(work, max(counts + [2]), args.fps)
        report = {"environment": environment(), "settings": {
            "det": str(args.det), "pose": str(args.pose or f"{args.random_pose} (random weights)"),
            "backend": args.backend, "threads": args.threads, "fps": args.fps, "budget_ms": budget,
            "seconds": args.seconds, "warmup": args.warmup, "max_persons": args.max_persons,
            "one_inference_ms": None if inference_s is None else round(inference_s * 1000, 1)},
            "runs": [], "ratios": {}, "capacity": {}, "isolation": None}
        plans = [] if args.only_isolation else \
            [(n, mode) for n in counts for mode in (*MODES, *reversed(MODES))]   # both orders, alternating
        extra = 3 if (args.isolation or args.only_isolation) else 0
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("runs", total=len(plans) + extra)
            for n, mode in plans:
                progress.update(task, description=f"{n} camera(s), {mode}")
                report["runs"].append(run_once(estimator, [str(v) for v in videos[:n]], batched=mode == "batched",
                                               fps=args.fps, budget_ms=args.budget_ms, seconds=args.seconds,
                                               warmup=args.warmup, inference_s=inference_s))
                progress.advance(task)
            if extra:
                two = [str(v) for v in videos[:2]]
                noisy = [*two, f"stall:{videos[0]}", f"flood:{videos[1]}"]
                iso = {}
                for label, sources in (("alone", two), ("with_stalled_and_flooding", noisy), ("alone_again", two)):
                    progress.update(task, description=f"isolation: {label}")
                    iso[label] = run_once(estimator, sources, batched=True, fps=args.fps, budget_ms=args.budget_ms,
                                          seconds=args.seconds, warmup=args.warmup, inference_s=inference_s)
                    progress.advance(task)
                alone = {c: np.mean([iso[k]["per_camera"][c]["fps"] for k in ("alone", "alone_again")])
                         for c in ("cam0", "cam1")}
                noisy_fps = iso["with_stalled_and_flooding"]["per_camera"]
                report["isolation"] = {**iso, "fps_ratio": {
                    c: round(noisy_fps[c]["fps"] / alone[c], 3) if alone[c] else None for c in alone}}
        for n in counts:
            runs = [r for r in report["runs"] if r["cameras"] == n]
            if len(runs) == 4:   # batched, one-call, one-call, batched
                ratio = [runs[0]["persons_per_s"] / max(runs[1]["persons_per_s"], 1e-9),
                         runs[3]["persons_per_s"] / max(runs[2]["persons_per_s"], 1e-9)]
                report["ratios"][str(n)] = {"batched_first": round(ratio[0], 3), "one_call_first": round(ratio[1], 3)}
        for mode in MODES:
            held = [n for n in counts if all(r["fps_min"] >= 0.9 * args.fps and r["p95_worst_camera_ms"] <= budget
                                             for r in report["runs"] if r["cameras"] == n and r["mode"] == mode)]
            report["capacity"][mode] = max(held) if held else 0
        table = Table(title=f"cameras at {args.fps:g} FPS, budget {budget:.0f} ms "
                            f"(one inference: {report['settings']['one_inference_ms']} ms)")
        for col in ("N", "mode", "persons/s", "FPS min/mean", "p50 ms", "p95 ms", "pose calls/tick", "cams/tick",
                    "dropped", "others' CPU"):
            table.add_column(col)
        for r in report["runs"]:
            table.add_row(str(r["cameras"]), r["mode"], f"{r['persons_per_s']:.1f}", f"{r['fps_min']:.2f}/"
                          f"{r['fps_mean']:.2f}", str(r["p50_ms"]), str(r["p95_ms"]), str(r["pose_calls_per_tick"]),
                          str(r["cameras_per_tick"]), str(sum(r["dropped"].values())),
                          f"{r['other_programs_cores']:.2f} cores")
        Console().print(table)
        print(json.dumps({"ratios": report["ratios"], "capacity": report["capacity"],
                          "isolation_fps_ratio": (report["isolation"] or {}).get("fps_ratio")}, indent=2))
        if args.out is not None:
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
