#!/usr/bin/env python3
"""Batched vs one-person-per-call pose pipeline on a 5-person photo, measured side by side in one run.

Prints frames/s of both, their ratio, and the share of frame time spent outside the two model calls
(decode, letterbox, NMS, crops, SimCC decode, back-mapping). Also ONNX Runtime with and without I/O
binding. Uses the real RTMDet-nano detector from ../shared/models and an RTMW exported with random
weights (speed does not depend on the weights).

    python scripts/bench_pipeline.py [--pose rtmw-m-256x192] [--frames 20] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from rtmw_edge.backends import run_chunked
from rtmw_edge.export import export_onnx
from rtmw_edge.pipeline import PoseEstimator

SHARED = Path(__file__).resolve().parents[2] / "shared"


class Timed:
    """Wraps an engine's run() and adds up the time spent inside model calls."""

    def __init__(self, engine) -> None:
        self.engine, self.seconds, self.calls = engine, 0.0, 0
        for attr in ("path", "input_name", "input_shape", "max_batch", "output_names", "metadata", "session"):
            setattr(self, attr, getattr(engine, attr))

    def run(self, x):
        t = time.perf_counter()
        out = self.engine.run(x)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def per_person_call(est: PoseEstimator, image: np.ndarray):
    """The anchor behaviour (rtmlib-style): one pose inference per detected person."""
    boxes, _, _ = est.detect(image)
    results = []
    for box in boxes:
        crops, centers, scales = est.pose.preprocess(image, box[None])
        out = run_chunked(est.pose.engine, crops)
        results.append(est.pose.postprocess(out, centers, scales, (image.shape[1], image.shape[0])))
    return results


def measure(fn, frames: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(frames):
        fn()
    return (time.perf_counter() - t) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pose", default="rtmw-m-256x192")
    ap.add_argument("--det", default=str(SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"))
    ap.add_argument("--image", default=str(SHARED / "images" / "000000197388.jpg"))
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    image = cv2.imread(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        pose_path = export_onnx(args.pose, Path(tmp) / "pose.onnx", random_init=True, progress=False)
        est = PoseEstimator(args.det, pose_path, threads=args.threads)
        n = len(est(image).persons)
        timed_pose = Timed(est.pose.engine)
        est.pose.engine = timed_pose
        det_call = est.detector.infer

        det_seconds = [0.0]

        def det_timed(x):
            t = time.perf_counter()
            out = det_call(x)
            det_seconds[0] += time.perf_counter() - t
            return out

        est.detector.infer = det_timed
        modes = {"batched (one pose call)": lambda: est(image),
                 "one call per person": lambda: per_person_call(est, image)}
        totals = {label: [0.0, 0.0, 0] for label in modes}   # frame seconds, model seconds, pose calls
        for fn in modes.values():
            fn()  # warm-up
        for _ in range(args.frames):  # interleaved, so background load hits both modes alike
            for label, fn in modes.items():
                timed_pose.seconds, timed_pose.calls, det_seconds[0] = 0.0, 0, 0.0
                t = time.perf_counter()
                fn()
                totals[label][0] += time.perf_counter() - t
                totals[label][1] += timed_pose.seconds + det_seconds[0]
                totals[label][2] += timed_pose.calls
        results = {label: (sec / args.frames, calls / args.frames, 1 - model / sec)
                   for label, (sec, model, calls) in totals.items()}

        est.pose.engine = timed_pose.engine
        io = {}
        crops, _, _ = est.pose.preprocess(image, est.detect(image)[0])
        for flag in (False, True):
            est.pose.engine.io_binding = flag
            io[flag] = measure(lambda: est.pose.engine.run(crops), args.frames)
        est.pose.engine.io_binding = False

    print(f"pose model {args.pose} (random weights), detector {Path(args.det).name}, image "
          f"{Path(args.image).name}: {n} persons, {args.frames} frames, threads={args.threads or 'all'}")
    for label, (per_frame, calls, outside) in results.items():
        print(f"  {label:26s} {1 / per_frame:6.2f} frames/s  {per_frame * 1000:7.1f} ms/frame  "
              f"{calls:.0f} pose call(s)/frame  {outside * 100:4.1f} % of frame time outside model calls")
    speedup = results["one call per person"][0] / results["batched (one pose call)"][0]
    print(f"  batched / per-person speed ratio: {speedup:.2f}x")
    print(f"  ONNX Runtime pose call ({n} crops): plain {io[False] * 1000:.1f} ms, I/O binding {io[True] * 1000:.1f} ms"
          f" (ratio {io[False] / io[True]:.2f})")


if __name__ == "__main__":
    main()
