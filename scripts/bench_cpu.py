#!/usr/bin/env python3
"""CPU speed side by side, in one run: rtmlib vs rtmw-edge vs the bare ONNX Runtime floor.

The same graphs go through every contender: RTMW-m 256x192 (random weights — speed does not depend on them —
exported by this project and laid out like an official mmpose/mmdeploy export: no rtmw_edge metadata, K
symbolic) and the real RTMDet-nano end-to-end graph of ../shared/models (an mmdeploy export with NMS inside,
the kind rtmlib's RTMDet reads). Contenders, one frame each in turn, in a new random order every frame, each
frame started after a short idle gap (so no contender pays for the previous one's ONNX Runtime threads still
spinning — a process running one pipeline has no such neighbour), background load hitting all alike:

- rtmlib  — `RTMDet` + `RTMPose` (one person per pose call) on every frame; with a detection interval N > 1,
            `PoseTracker(det_frequency=N)` (rtmlib installed under $RTMW_EDGE_HOME/bench, never a dependency
            of the toolkit; its default ONNX Runtime sessions);
- toolkit — `PoseEstimator(..., pose_spec="rtmw-m-256x192", det_interval=N)` on the decoded frame;
  (no tracking on either side; every person is carried between detections on both sides)
- toolkit-shared — the same, in a worker process whose sessions share ONNX Runtime's global thread pool
            (process-wide only, so not the library's default);
- floor   — ONNX Runtime alone: the detector on the pre-made input tensor (every N-th frame), then the pose
            model on the pre-made crops of the same persons at batch N_persons; with the best session
            settings: `floor` (per-session pools, spinning off), `floor-worker` (the same in a worker
            process: what a separate process alone changes), `floor-shared` (one global thread pool for both
            sessions, in a worker process); and, for reference, ORT's defaults (`floor-spin`, spinning on).
            Workers are driven frame by frame over a pipe and timed inside.

Scenarios: 1 and 5 persons (a pan/zoom video over 000000000785.jpg and 000000197388.jpg, persons moving
≤ 20 px per frame) × detector interval 1 and 5. Prints ms/frame, FPS and the ratios (toolkit/floor frame
time, toolkit/rtmlib FPS); `--out` writes JSON. Run it on a quiet machine (here: under the exclusive lock).

    python scripts/bench_cpu.py [--frames 40] [--warmup 3] [--threads N] [--out bench_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RTMLIB = "rtmlib==0.0.16"
POSE_SPEC = "rtmw-m-256x192"
PHOTOS = {1: "000000000785.jpg", 5: "000000197388.jpg"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def import_rtmlib():
    """rtmlib from the benchmark's own install folder (pip --target, made on first use)."""
    from rtmw_edge.downloads import home_dir

    target = home_dir() / "bench" / RTMLIB.replace("==", "-")
    if not (target / "rtmlib").is_dir():
        print(f"installing {RTMLIB} (+ tqdm) into {target} for the benchmark only", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        RTMLIB, "tqdm"], check=True)
    sys.path.append(str(target))  # after the venv: rtmlib uses this environment's numpy/cv2/onnxruntime
    import rtmlib

    return rtmlib


def pan_video(photo: np.ndarray, frames: int) -> list[np.ndarray]:
    """Zoom 0.80 → 0.95 while the view centre moves on an ellipse (≤ ~16 px per frame on these photos)."""
    h, w = photo.shape[:2]
    out = []
    for t in range(frames):
        zoom = 0.80 + 0.15 * t / max(frames - 1, 1)
        a = 2 * math.pi * t / frames
        cx, cy = w / 2 + 50 * math.sin(a), h / 2 + 20 * math.cos(a)
        m = np.array([[zoom, 0, w / 2 - zoom * cx], [0, zoom, h / 2 - zoom * cy]], np.float32)
        out.append(cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)))
    return out


# --------------------------------------------------------------------------- contenders
class Toolkit:
    def __init__(self, det: Path, pose: Path, interval: int, threads: int | None) -> None:
        from rtmw_edge.pipeline import PoseEstimator

        # random weights give random keypoint scores: with the threshold at -inf every person stays confident
        # and is carried between detections, as with real weights (rtmlib carries every person regardless)
        self.est = PoseEstimator(det, pose, pose_spec=POSE_SPEC, det_interval=interval, threads=threads,
                                 kpt_threshold=float("-inf"))

    def __call__(self, image: np.ndarray, t: int) -> int:
        return len(self.est(image, frame=t, timestamp=t / 30).persons)


class Rtmlib:
    def __init__(self, rtmlib, det: Path, pose: Path, interval: int) -> None:
        if interval == 1:
            self.det = rtmlib.RTMDet(str(det), model_input_size=(320, 320), backend="onnxruntime", device="cpu")
            self.pose = rtmlib.RTMPose(str(pose), model_input_size=(192, 256), backend="onnxruntime", device="cpu")
            self.tracker = None
        else:
            solution = partial(rtmlib.Custom, det_class="RTMDet", det=str(det), det_input_size=(320, 320),
                               pose_class="RTMPose", pose=str(pose), pose_input_size=(192, 256))
            # tracking off: its IoU matching drops the random-weight poses' boxes (and the toolkit does not track here)
            self.tracker = rtmlib.PoseTracker(solution, det_frequency=interval, tracking=False, backend="onnxruntime",
                                              device="cpu")

    def __call__(self, image: np.ndarray, t: int) -> int:
        if self.tracker is not None:
            keypoints, _ = self.tracker(image)
        else:
            keypoints, _ = self.pose(image, bboxes=self.det(image))
        return len(keypoints)


class Floor:
    """ONNX Runtime alone: pre-made inputs, detector every `interval` frames, pose at batch n."""

    def __init__(self, det: Path, pose: Path, det_input: np.ndarray, crops: np.ndarray, interval: int,
                 threads: int | None, mode: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if mode == "floor":
            opts.intra_op_num_threads = threads or os.cpu_count() or 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif mode == "floor-shared":
            opts.use_per_session_threads = False  # the global pool set up in floor_worker()
        self.det = ort.InferenceSession(str(det), opts, providers=["CPUExecutionProvider"])
        self.pose = ort.InferenceSession(str(pose), opts, providers=["CPUExecutionProvider"])
        self.det_feed = {self.det.get_inputs()[0].name: det_input}
        self.pose_feed = {self.pose.get_inputs()[0].name: crops}
        self.interval = interval

    def __call__(self, image: np.ndarray, t: int) -> int:
        if t % self.interval == 0:
            self.det.run(None, self.det_feed)
        return len(self.pose.run(None, self.pose_feed)[0])


class Worker:
    """A contender in its own process, driven frame by frame and timed inside it: ONNX Runtime's global
    thread pool exists only process-wide (and then forbids per-session pools), and a per-session floor in a
    worker shows what the separate process alone changes. Kinds: `floor` (per-session pools, spinning off),
    `floor-shared` and `toolkit-shared` (one global pool for the detector and the pose model)."""

    def __init__(self, kind: str, det: Path, pose: Path, interval: int, threads: int | None, folder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, str(det), str(pose), str(folder),
                                      str(interval), str(threads or 0)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def __call__(self, image: np.ndarray, t: int) -> tuple[int, float]:
        self.proc.stdin.write(f"{t}\n")
        self.proc.stdin.flush()
        n, seconds = self.proc.stdout.readline().split()
        return int(n), float(seconds)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def worker(kind: str, det: str, pose: str, folder: str, interval: str, threads: str) -> None:
    import onnxruntime as ort

    folder_path, shared = Path(folder), kind.endswith("-shared")
    if shared:
        ort.set_global_thread_pool_sizes(int(threads) or os.cpu_count() or 1, 1)  # before any session
        import rtmw_edge.backends.onnxruntime as backend

        per_session = backend.session_options

        def session_options(threads=None):  # the toolkit's settings, on the global pool
            opts = per_session(threads)
            opts.use_per_session_threads = False
            return opts

        backend.session_options = session_options
    if kind.startswith("floor"):
        run = Floor(Path(det), Path(pose), np.load(folder_path / "det_input.npy"), np.load(folder_path / "crops.npy"),
                    int(interval), int(threads) or None, "floor-shared" if shared else "floor")
        video = None
    else:
        run = Toolkit(Path(det), Path(pose), int(interval), int(threads) or None)
        video = np.load(folder_path / "video.npy")
    print("ready", flush=True)
    for line in sys.stdin:
        t = int(line)
        start = time.perf_counter()
        n = run(None if video is None else video[t], t)
        print(n, time.perf_counter() - start, flush=True)


# --------------------------------------------------------------------------- measurement
def measure(contenders: dict, frames: list[np.ndarray], warmup: int, gap: float = 0.05) -> dict[str, dict]:
    """Every contender sees every frame, in a random order per frame, each after `gap` seconds idle; warm-up
    frames are not timed."""
    times = {name: [] for name in contenders}
    persons = {name: [] for name in contenders}
    names = list(contenders)
    rng = np.random.default_rng(0)
    for t, frame in enumerate(frames):
        for k in rng.permutation(len(names)):
            name = names[k]
            time.sleep(gap)
            start = time.perf_counter()
            n = contenders[name](frame, t)
            elapsed = time.perf_counter() - start
            if isinstance(n, tuple):  # timed inside a worker process
                n, elapsed = n
            if t >= warmup:
                times[name].append(elapsed)
                persons[name].append(n)
    out = {}
    for name in names:
        ms = np.asarray(times[name]) * 1000
        out[name] = {"ms_mean": float(ms.mean()), "ms_median": float(np.median(ms)), "fps": 1000 / float(ms.mean()),
                     "persons_mean": float(np.mean(persons[name]))}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(*sys.argv[2:8])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="video frames per scenario (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--persons", default="1,5")
    ap.add_argument("--intervals", default="1,5")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort

    rtmlib = import_rtmlib()
    sys.path.insert(0, str(ROOT / "tests"))
    from foreign_layouts import foreign_copy

    from rtmw_edge.export import export_onnx
    from rtmw_edge.pipeline import PoseEstimator

    det = SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "onnxruntime": ort.__version__,
                          "rtmlib": RTMLIB.split("==")[1]},
              "pose_graph": "RTMW-m 256x192, random weights, mmpose/mmdeploy layout (no metadata, K symbolic)",
              "detector": det.name, "frames": args.frames, "scenarios": []}
    with tempfile.TemporaryDirectory() as tmp:
        own = export_onnx(POSE_SPEC, Path(tmp) / "own.onnx", random_init=True, progress=False)
        pose = foreign_copy(own, Path(tmp) / "rtmw-m-256x192.onnx", symbolic_k=True)
        probe = PoseEstimator(det, pose, pose_spec=POSE_SPEC)
        for n in (int(v) for v in args.persons.split(",")):
            photo = cv2.imread(str(SHARED / "images" / PHOTOS[n]))
            video = pan_video(photo, args.frames + args.warmup)
            boxes, _, _ = probe.detect(video[0])
            crops, _, _ = probe.pose.preprocess(video[0], boxes)
            det_input, _ = probe.detector.preprocess(video[0])
            for interval in (int(v) for v in args.intervals.split(",")):
                folder = Path(tmp)
                np.save(folder / "det_input.npy", det_input)
                np.save(folder / "crops.npy", crops)
                np.save(folder / "video.npy", np.stack(video))
                workers = {kind: Worker(kind, det, pose, interval, args.threads, folder)
                           for kind in ("toolkit-shared", "floor-worker", "floor-shared")}
                contenders = {
                    "rtmlib": Rtmlib(rtmlib, det, pose, interval),
                    "toolkit": Toolkit(det, pose, interval, args.threads),
                    "toolkit-shared": workers["toolkit-shared"],
                    "floor": Floor(det, pose, det_input, crops, interval, args.threads, "floor"),
                    "floor-worker": workers["floor-worker"],
                    "floor-shared": workers["floor-shared"],
                    "floor-spin": Floor(det, pose, det_input, crops, interval, args.threads, "floor-spin"),
                }
                result = measure(contenders, video, args.warmup)
                for w in workers.values():
                    w.close()
                best_floor = min(("floor", "floor-worker", "floor-shared"), key=lambda m: result[m]["ms_mean"])
                row = {"persons": n, "det_interval": interval, "results": result, "best_floor": best_floor,
                       "toolkit_over_floor": result["toolkit"]["ms_mean"] / result[best_floor]["ms_mean"],
                       "toolkit_shared_over_floor": result["toolkit-shared"]["ms_mean"]
                       / result[best_floor]["ms_mean"],
                       "toolkit_fps_over_rtmlib": result["toolkit"]["fps"] / result["rtmlib"]["fps"]}
                report["scenarios"].append(row)
                print(f"\n{n} person(s), detector every {interval} frame(s), {args.frames} frames "
                      f"(crops at batch {len(crops)})", flush=True)
                for name, r in result.items():
                    print(f"  {name:13s} {r['ms_mean']:7.1f} ms/frame (median {r['ms_median']:6.1f})  "
                          f"{r['fps']:6.2f} FPS  persons {r['persons_mean']:.1f}")
                print(f"  toolkit / {best_floor}: {row['toolkit_over_floor']:.3f} × frame time "
                      f"(toolkit-shared: {row['toolkit_shared_over_floor']:.3f});  "
                      f"toolkit / rtmlib: {row['toolkit_fps_over_rtmlib']:.2f} × FPS", flush=True)
    print(f"\n{report['date']}, {report['machine']['cpu']} ({report['machine']['cores']} cores), "
          f"onnxruntime {ort.__version__}, rtmlib {report['machine']['rtmlib']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
