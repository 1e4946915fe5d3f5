"""The `rtmw-edge run` loop: source → `PoseEstimator` → sinks (JSON lines, COCO, pictures, window).

The source decodes ahead in its own thread (rtmw_edge.sources), so reading overlaps inference. Every
output file is written under a temporary name and renamed at the end: a failed run never leaves a
half-written file under the requested name; Ctrl-C stops cleanly and keeps what was processed.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import geometry as G
from .errors import RtmwEdgeError
from .results import CocoResultsSink, FrameResult, JsonLinesSink

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


@dataclass
class RunOptions:
    source: str
    det: str = "rtmdet-nano-person"
    pose: str = "rtmw-m-256x192"
    backend: str = "auto"
    triton_url: str | None = None          # --backend triton: the server (rtmw_edge/triton/client.py)
    triton_model: str = "rtmw_pipeline"
    out_jsonl: Path | None = None
    coco: Path | None = None
    save: Path | None = None
    plot_3d: Path | None = None
    show: bool = False
    flip_test: bool = False
    track: bool = False
    smooth: bool = False
    smooth_min_cutoff: float | None = None
    smooth_beta: float | None = None
    max_persons: int = 32
    det_threshold: float = 0.3
    kpt_threshold: float = 0.3
    focal: str | None = None
    principal: str | None = None
    threads: int | None = None
    loop: bool = False


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise RtmwEdgeError(f"{what} must be two numbers 'a,b', not {text!r}") from None
    return a, b


def camera_from_options(focal: str | None, principal: str | None) -> G.Camera | None:
    f, c = _pair(focal, "--focal"), _pair(principal, "--principal")
    if f is None and c is None:
        return None
    fx, fy = f or (G.Camera.fx, G.Camera.fy)
    cx, cy = c or (None, None)
    return G.Camera(fx, fy, cx, cy)


class PictureSink:
    """--save: one image, a folder of images, or a video file; written atomically."""

    def __init__(self, path: Path, multi_frame: bool, fps: float | None) -> None:
        self.path = path
        self.suffix = path.suffix.lower()
        self.fps = fps or 30.0
        self.writer = None
        self.count = 0
        if self.suffix in IMAGE_SUFFIXES:
            if multi_frame:
                raise RtmwEdgeError(f"--save {path.name} is one image but the source has many frames: give a "
                                    "video file (.mp4/.avi) or a folder")
            self.mode = "image"
        elif self.suffix in VIDEO_CODECS:
            self.mode = "video"
            self.tmp = path.with_name(path.stem + ".partial" + path.suffix)  # keep the suffix: it picks the codec
        elif self.suffix == "" or path.is_dir():
            self.mode = "folder"
            path.mkdir(parents=True, exist_ok=True)
        else:
            raise RtmwEdgeError(f"--save: unsupported file type {self.suffix!r} (use .jpg/.png, .mp4/.avi or a folder)")
        if not path.parent.exists():
            raise RtmwEdgeError(f"--save: folder does not exist: {path.parent}")

    def write(self, image: np.ndarray, name: str) -> None:
        if self.mode == "image":
            tmp = self.path.with_name(self.path.stem + ".partial" + self.suffix)
            if not cv2.imwrite(str(tmp), image):
                raise RtmwEdgeError(f"cannot write {self.path}")
            os.replace(tmp, self.path)
        elif self.mode == "folder":
            stem = Path(name).stem
            cv2.imwrite(str(self.path / f"{stem}.jpg"), image)
        else:
            if self.writer is None:
                h, w = image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.suffix])
                self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
                if not self.writer.isOpened():
                    raise RtmwEdgeError(f"cannot open a video writer for {self.path}")
            self.writer.write(image)
        self.count += 1

    def close(self, error: BaseException | None = None) -> None:
        if self.writer is not None:
            self.writer.release()
            if error is None or isinstance(error, KeyboardInterrupt):
                os.replace(self.tmp, self.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp)


def _show(image: np.ndarray) -> bool:
    """Display a frame; False when the user pressed q/Esc."""
    try:
        cv2.imshow("rtmw-edge", image)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
    except cv2.error:
        raise RtmwEdgeError("--show needs an OpenCV build with GUI support (pip install opencv-python); "
                            "use --save instead on headless machines") from None


def triton_estimator(opts: RunOptions, camera: G.Camera | None, smoothing: dict):
    """--backend triton: the server's pipeline model runs the models (rtmw_edge/triton/client.py)."""
    from .triton.client import TritonPoseEstimator

    if opts.backend not in ("auto", "triton"):
        raise RtmwEdgeError(f"--triton-url sends frames to a Triton server; it does not go with --backend {opts.backend}")
    if not opts.triton_url:
        raise RtmwEdgeError("--backend triton needs --triton-url HOST:PORT (gRPC; http://HOST:PORT for HTTP)")
    if (opts.det, opts.pose) != (RunOptions.det, RunOptions.pose):
        raise RtmwEdgeError("with --backend triton the server's repository decides the models: drop --det/--pose "
                            "(re-export the repository to change them)")
    return TritonPoseEstimator(opts.triton_url, model=opts.triton_model, flip_test=opts.flip_test,
                               det_threshold=opts.det_threshold, max_persons=opts.max_persons, camera=camera,
                               track=opts.track, smooth=opts.smooth, smoothing=smoothing or None)


def run_source(opts: RunOptions, console=None) -> str:
    """Process the whole source; returns a one-line summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .pipeline import PoseEstimator
    from .sources import open_source

    camera = camera_from_options(opts.focal, opts.principal)
    smoothing = {k: v for k, v in (("min_cutoff", opts.smooth_min_cutoff), ("beta", opts.smooth_beta))
                 if v is not None}
    estimator_class = PoseEstimator
    if opts.backend in ("tensorrt", "torch-cuda"):  # the CUDA-stream pipeline (rtmw_edge/cuda/pipeline.py)
        from .cuda.pipeline import GpuPoseEstimator as estimator_class
    if opts.backend == "triton" or opts.triton_url:
        estimator = triton_estimator(opts, camera, smoothing)
    else:
        estimator = estimator_class(opts.det, opts.pose, backend=opts.backend, flip_test=opts.flip_test,
                                    max_persons=opts.max_persons, det_threshold=opts.det_threshold,
                                    kpt_threshold=opts.kpt_threshold, track=opts.track, smooth=opts.smooth,
                                    camera=camera, threads=opts.threads, smoothing=smoothing or None)
    if opts.plot_3d is not None and estimator.info.task != "pose3d":
        raise RtmwEdgeError("--plot-3d needs an RTMW3D pose model")
    source = open_source(opts.source, loop=opts.loop)
    multi = source.kind not in ("image", "url-image")
    sinks: list = []
    error: BaseException | None = None
    frames = persons = crowded = 0
    last_3d: FrameResult | None = None
    start = time.perf_counter()
    try:
        pictures = PictureSink(opts.save, multi, source.fps) if opts.save else None  # validates first
        jsonl = JsonLinesSink(opts.out_jsonl) if opts.out_jsonl else None
        coco = CocoResultsSink(opts.coco) if opts.coco else None
        sinks = [s for s in (jsonl, coco, pictures) if s is not None]
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[fps]:.1f} FPS"), TimeElapsedColumn(), console=console,
                      transient=True, disable=not multi) as bar:
            task = bar.add_task(f"run {Path(str(opts.source)).name}", total=source.frame_count, fps=0.0)
            results = (estimator.stream(source) if hasattr(estimator, "stream")  # GPU: two frames in flight
                       else ((f, estimator(f.image, f.index, f.timestamp)) for f in source))
            for frame, result in results:
                frames += 1
                persons += len(result.persons)
                crowded += result.dropped_persons > 0
                if jsonl:
                    jsonl.write(result)
                if coco:
                    coco.add(result, name=frame.name)
                if result.persons and result.persons[0].keypoints_3d is not None:
                    last_3d = result
                if pictures or opts.show:
                    from .viz import draw_frame

                    drawn = draw_frame(frame.image, result, kpt_threshold=opts.kpt_threshold)
                    if pictures:
                        pictures.write(drawn, frame.name)
                    if opts.show and not _show(drawn):
                        break
                bar.update(task, advance=1, fps=frames / (time.perf_counter() - start))
    except BaseException as exc:  # noqa: B036 - re-raised below; sinks decide what to keep
        error = exc
        if not isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        source.close()
        for sink in sinks:
            sink.close(error)
    if opts.plot_3d is not None:
        if last_3d is None:
            raise RtmwEdgeError("--plot-3d: no person was found, nothing to plot")
        from .viz import plot_3d

        plot_3d(last_3d, opts.plot_3d)
    elapsed = time.perf_counter() - start
    summary = f"{frames} frame(s), {persons} person(s), {frames / max(elapsed, 1e-9):.1f} FPS"
    if crowded:
        summary += (f"; {crowded} frame(s) had more than {opts.max_persons} persons: kept the "
                    f"{opts.max_persons} highest scores (--max-persons)")
    if isinstance(error, KeyboardInterrupt):
        summary = "interrupted: " + summary + " (outputs kept)"
    return summary
