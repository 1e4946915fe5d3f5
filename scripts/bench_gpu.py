#!/usr/bin/env python3
"""GPU runtime benchmark: end-to-end FPS and per-stage time of the CUDA-stream pipeline, GPU kernels vs. the CPU
pipeline's pre/post-processing around the same engines, and the per-extra-person cost at pose batch 1..32.

    python scripts/bench_gpu.py [--backend torch-cuda|onnxruntime-gpu|tensorrt] [--det DET] [--pose rtmw-m-256x192]
                                [--frames 100] [--persons 1,2,4,8,16,32] [--cuda-graphs] [--tf32] [--json out.json]

Defaults: an RTMW exported with random weights (speed does not depend on the weights) and, as detector, the
shared RTMDet-nano raw-head file (real weights) — except on torch-cuda, which runs project exports only: there
rtmdet-nano-person is exported from its official checkpoint when `rtmw-edge models download rtmdet-nano-person`
has cached it, else with random weights (then persons/frame says nothing). A registered name as --det or --pose
is exported the same way. With --backend tensorrt give built engines (`rtmw-edge build`).
Columns:
  * gpu-stream   GpuPoseEstimator.stream: two frames in flight (what `rtmw-edge run --backend ...` does)
  * gpu-serial   GpuPoseEstimator(image): one frame at a time, same kernels
  * cpu-prepost  the CPU pipeline (PoseEstimator: letterbox, NMS, warpAffine crops, SimCC decode in numpy/OpenCV)
                 calling the same engines through their host interface (copies in and out per call)
Without a CUDA GPU it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def preflight(backend: str) -> str:
    from rtmw_edge.errors import RtmwEdgeError

    try:
        from rtmw_edge.cuda import runtime as R

        ok, why = R.device_available(0)
    except RtmwEdgeError as exc:
        ok, why = False, str(exc)
    if ok and backend == "torch-cuda":
        try:
            import torch

            if not torch.cuda.is_available():
                ok, why = False, "PyTorch has no CUDA (install a CUDA build of torch for --backend torch-cuda)"
        except ImportError:
            ok, why = False, "PyTorch is not installed (pip install 'rtmw-edge[export]' with a CUDA build of torch)"
    if ok and backend == "onnxruntime-gpu":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            ok, why = False, "onnxruntime has no CUDA execution provider (install onnxruntime-gpu: docs/gpu-runtime.md)"
    if not ok:
        print(f"bench_gpu: needs a CUDA GPU: {why}", file=sys.stderr)
        sys.exit(2)
    return why


def frames_from(images: list[np.ndarray], count: int) -> list[np.ndarray]:
    return [images[i % len(images)] for i in range(count)]


def tiled_boxes(n: int, wh=(1920, 1080)) -> np.ndarray:
    """n person-shaped boxes spread over a frame."""
    cols = int(np.ceil(np.sqrt(n * 16 / 9)))
    rows = int(np.ceil(n / cols))
    w, h = wh[0] / cols, wh[1] / rows
    boxes = [[c * w + 0.1 * w, r * h + 0.05 * h, c * w + 0.9 * w, r * h + 0.95 * h]
             for r in range(rows) for c in range(cols)][:n]
    return np.asarray(boxes, np.float32)


def cpu_estimator(det, pose, det_engine, pose_engine, backend: str):
    """The CPU pipeline with both models on the GPU engines' host interface."""
    from rtmw_edge.backends.device import HostEngine
    from rtmw_edge.pipeline import PoseEstimator, TopDownPose

    if Path(det).suffix.lower() == ".onnx":
        est = PoseEstimator(det, pose)  # ONNX Runtime sessions, replaced below by the GPU engines
        names = est.detector._output_names
        est.detector.infer = lambda x: [det_engine.run(x)[n] for n in names]
    else:
        est = PoseEstimator(det, pose, backend=backend)  # TensorRT engines behind the host interface
    est.pose = TopDownPose(pose_engine if backend == "tensorrt" else HostEngine(pose_engine))
    return est


def model_file(name_or_path: str, tmp: Path, role: str) -> Path:
    """A file as given, or a registered name exported here: from its cached official checkpoint when there is one
    (`rtmw-edge models download`), else with random weights."""
    from rtmw_edge.downloads import checkpoints_dir
    from rtmw_edge.export import export_onnx
    from rtmw_edge.zoo import get_spec

    path = Path(name_or_path)
    if path.suffix:
        return path
    cached = checkpoints_dir() / get_spec(name_or_path).checkpoint_filename
    weights = {"checkpoint": cached} if cached.is_file() else {"random_init": True}
    print(f"bench_gpu: {role} {name_or_path} exported with {'official' if cached.is_file() else 'random'} weights",
          file=sys.stderr)
    return export_onnx(name_or_path, tmp / f"{name_or_path}.onnx", progress=False, **weights)


def device_engine(path: Path, backend: str, tf32: bool):
    from rtmw_edge.backends import load_device_engine  # the backend table: one place a name becomes an engine

    return load_device_engine(path, backend, **({"allow_tf32": tf32} if backend == "torch-cuda" else {}))


def time_cpu_stages(est, image, frames: int) -> dict[str, float]:
    from rtmw_edge import geometry as G

    stages = {k: [] for k in ("det_pre", "det_engine", "det_post", "crops", "pose_engine", "decode", "frame")}
    for _ in range(frames):
        t0 = time.perf_counter()
        tensor, lb = est.detector.preprocess(image)
        t1 = time.perf_counter()
        raw = est.detector.infer(tensor)
        t2 = time.perf_counter()
        boxes, scores = est.detector.postprocess(raw, lb)
        keep = G.nms(boxes, scores, est.nms_iou)
        boxes = boxes[keep][: est.max_persons]
        t3 = time.perf_counter()
        crops, centers, scales = est.pose.preprocess(image, boxes)
        t4 = time.perf_counter()
        out = est.pose.infer(crops) if len(crops) else {}
        t5 = time.perf_counter()
        if len(crops):
            est.pose.postprocess(out, centers, scales, (image.shape[1], image.shape[0]))
        t6 = time.perf_counter()
        for key, a, b in (("det_pre", t0, t1), ("det_engine", t1, t2), ("det_post", t2, t3), ("crops", t3, t4),
                          ("pose_engine", t4, t5), ("decode", t5, t6), ("frame", t0, t6)):
            stages[key].append((b - a) * 1e3)
    return {k: float(np.median(v)) for k, v in stages.items()}


def gpu_pose_segment(est, n: int, frames: int) -> float:
    """Median ms of crops → pose engine → decode → result copy for n persons on a 1080p frame (CUDA events
    recorded around the segment, never inside a capture)."""
    from rtmw_edge.cuda import runtime as R

    est._make_slots(1)
    slot = est.slots[0]
    image = np.full((1080, 1920, 3), 127, np.uint8)
    est._enqueue_detect(slot, (image, 0, 0.0))
    slot.counted.synchronize()
    boxes = tiled_boxes(n)
    staging = R.PinnedBuffer(boxes.nbytes)
    np.copyto(staging.array(np.float32, boxes.shape), boxes)
    R.copy_htod_async(slot.ptr["boxes"], staging.ptr, boxes.nbytes, slot.stream.handle)
    slot.stream.synchronize()
    start, end = R.Event(timing=True), R.Event(timing=True)
    times = []
    for i in range(frames + 2):
        start.record(slot.stream)
        est._pose_work(slot, n, marks=False)
        end.record(slot.stream)
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_ms(end))
    start.close()
    end.close()
    staging.free()
    slot.busy = False
    return float(np.median(times))


def cpu_pose_segment(est, n: int, frames: int) -> float:
    image = np.full((1080, 1920, 3), 127, np.uint8)
    boxes = tiled_boxes(n)
    times = []
    for i in range(frames + 2):
        t = time.perf_counter()
        crops, centers, scales = est.pose.preprocess(image, boxes)
        out = est.pose.infer(crops)
        est.pose.postprocess(out, centers, scales, (1920, 1080))
        if i >= 2:
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="torch-cuda", choices=("torch-cuda", "onnxruntime-gpu", "tensorrt"))
    ap.add_argument("--det", default=None, help="file or registered name (default: see above)")
    ap.add_argument("--pose", default="rtmw-m-256x192", help="registered name (exported with random weights) or file")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--persons", default="1,2,4,8,16,32")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the pose segment as CUDA graphs (TensorRT)")
    ap.add_argument("--tf32", action="store_true", help="torch-cuda: allow TF32 convolutions/matmuls")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    device = preflight(args.backend)
    persons = [int(p) for p in args.persons.split(",")]

    from rtmw_edge.cuda.gpu_pipeline import GpuPoseEstimator

    images = [cv2.imread(str(p)) for p in sorted((SHARED / "images").glob("*.jpg"))] or \
        [np.full((720, 1280, 3), 127, np.uint8)]
    report: dict = {"device": device, "backend": args.backend, "frames": args.frames,
                    "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        det = args.det or ("rtmdet-nano-person" if args.backend == "torch-cuda" else
                           str(SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"))
        det, pose = model_file(det, Path(tmp), "detector"), model_file(args.pose, Path(tmp), "pose")
        det_engine = device_engine(det, args.backend, args.tf32)
        pose_engine = device_engine(pose, args.backend, args.tf32)
        report.update(det=det.name, pose=pose.name)
        gpu = GpuPoseEstimator(det, pose, backend=args.backend, det_engine=det_engine, pose_engine=pose_engine,
                               max_persons=max(persons), cuda_graphs=args.cuda_graphs)
        sequence = frames_from(images, args.frames)
        list(gpu.stream(sequence[:10]))  # warm-up
        t = time.perf_counter()
        people = sum(len(r.persons) for _, r in gpu.stream(sequence))
        report["gpu-stream FPS"] = args.frames / (time.perf_counter() - t)
        t = time.perf_counter()
        for image in sequence:
            gpu(image)
        report["gpu-serial FPS"] = args.frames / (time.perf_counter() - t)
        report["persons/frame"] = people / args.frames
        gpu.close()
        gpu = GpuPoseEstimator(det, pose, backend=args.backend, det_engine=det_engine, pose_engine=pose_engine,
                               max_persons=max(persons), cuda_graphs=args.cuda_graphs, profile=True)
        list(gpu.stream(sequence))
        report["gpu stage ms (median, CUDA events)"] = gpu.timings.summary()

        cpu = cpu_estimator(det, pose, det_engine, pose_engine, args.backend)
        for image in sequence[:3]:
            cpu(image)
        t = time.perf_counter()
        for image in sequence:
            cpu(image)
        report["cpu-prepost FPS"] = args.frames / (time.perf_counter() - t)
        report["cpu-prepost stage ms (median, wall)"] = time_cpu_stages(cpu, sequence[0], min(args.frames, 30))

        curve = {}
        for n in persons:
            curve[n] = {"gpu_ms": gpu_pose_segment(gpu, n, min(args.frames, 30)),
                        "cpu_prepost_ms": cpu_pose_segment(cpu, n, min(args.frames, 10))}
        report["pose segment ms by persons (1080p frame)"] = curve
        ns = np.asarray(persons, float)
        for key in ("gpu_ms", "cpu_prepost_ms"):
            ys = np.asarray([curve[n][key] for n in persons])
            slope, intercept = np.polyfit(ns, ys, 1) if len(ns) > 1 else (float("nan"), ys[0])
            report[f"per extra person ({key})"] = {"ms": float(slope), "intercept_ms": float(intercept)}
        gpu.close()

    print(f"{report['device']} | {args.backend} | det {report['det']} | pose {report['pose']} | {args.frames} frames, "
          f"{report['persons/frame']:.1f} persons/frame")
    for key in ("gpu-stream FPS", "gpu-serial FPS", "cpu-prepost FPS"):
        print(f"  {key:16s} {report[key]:8.1f}")
    print("  GPU stages (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in report["gpu stage ms (median, CUDA events)"]
                                            .items()))
    print("  CPU pre/post stages (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                    report["cpu-prepost stage ms (median, wall)"].items()))
    print("  persons  gpu segment ms  cpu-prepost segment ms")
    for n, v in report["pose segment ms by persons (1080p frame)"].items():
        print(f"  {n:7d}  {v['gpu_ms']:14.3f}  {v['cpu_prepost_ms']:22.3f}")
    for key in ("gpu_ms", "cpu_prepost_ms"):
        v = report[f"per extra person ({key})"]
        print(f"  per extra person ({key}): {v['ms']:.3f} ms (+ {v['intercept_ms']:.3f} ms fixed)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
