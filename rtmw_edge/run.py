"""The `rtmw-edge run` loop: source → the estimator `--backend` means (`estimators.open_estimator`: the CPU,
CUDA-stream or remote pipeline) → sinks (JSON lines, COCO, pictures, window).

Order of work, so that nothing is wasted and nothing of the user's is lost:

1. option values and every output path are checked (`rtmw_edge.outputs`: never an input, writable, the
   right kind) — a usage error stops here, before any model is loaded; `--coco` also needs an image id for
   every image, from `--ann` or from COCO-style file names, checked here too;
2. the source is opened and the models are loaded;
3. the frame loop: JSON lines are a *stream*, written and flushed per frame under the final name (``-`` is
   standard output), so ``tail -f`` and pipes see results live; pictures and videos go to temporary files;
4. the end: on success the COCO results and pictures are renamed into place. On an error the JSON lines
   keep the frames done (the message says how many) and nothing else is left. On Ctrl-C or SIGTERM
   everything is finalised with what was processed (the video stays playable) and the summary says so;
   the CLI then exits 130 / 143.

A folder run skips an unreadable image (one warning line each), goes on, and reports the count at the end
(the CLI exits 1 if any was skipped); ``--strict`` stops at the first one. A video's corrupt frames are
skipped and counted the same way. The source decodes ahead in its own thread (rtmw_edge.sources), so
reading overlaps inference.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import geometry as G
from . import signals
from .backends import backend_names, backend_pipeline
from .errors import ReaderGone, RtmwEdgeError, Terminated, UsageError
from .estimators import open_estimator
from .evaluate import load_annotations
from .outputs import Stream, atomic_output, atomic_path, check_output, commit_file, temp_beside
from .pipeline import resolve_models
from .results import FrameResult, coco_items
from .sources import open_source
from .triton.client import parse_url
from .viz import draw_frame, plot_3d

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
    ann: Path | None = None
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
    strict: bool = False
    pose_spec: str | None = None   # settings of a foreign pose ONNX: a registered model name
    det_interval: int = 1          # video: detector every N-th frame, keypoint boxes in between


@dataclass
class RunSummary:
    """What a run did; `interrupted` is the KeyboardInterrupt / Terminated that stopped it, if any."""

    frames: int = 0
    persons: int = 0
    crowded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    max_persons: int = 32
    skipped_kind: str = "image"
    outputs: list[str] = field(default_factory=list)
    interrupted: BaseException | None = None
    reader_left: bool = False   # standard output's reader closed the pipe: the run ended there

    def __str__(self) -> str:
        text = f"{self.frames} frame(s), {self.persons} person(s), {self.frames / max(self.seconds, 1e-9):.1f} FPS"
        if self.crowded:
            text += (f"; {self.crowded} frame(s) had more than {self.max_persons} persons: kept the "
                     f"{self.max_persons} highest scores (--max-persons)")
        if self.skipped:
            text += f"; {self.skipped} unreadable {self.skipped_kind}(s) skipped"
        if self.reader_left:
            text += "; standard output's reader left, so the run ended there"
        if self.interrupted is not None:
            signal_name = "SIGTERM" if isinstance(self.interrupted, Terminated) else "Ctrl-C"
            text = f"interrupted ({signal_name}): {text}; outputs hold the frames done"
        return text


# --------------------------------------------------------------------------- checks before any work
def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be two numbers 'a,b', not {text!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UsageError(f"{what} must be finite numbers, not {text!r}")
    return a, b


def camera_from_options(focal: str | None, principal: str | None) -> G.Camera | None:
    f, c = _pair(focal, "--focal"), _pair(principal, "--principal")
    if f is not None and min(f) <= 0:
        raise UsageError(f"--focal must be positive, not {focal!r}")
    if f is None and c is None:
        return None
    fx, fy = f or (G.Camera.fx, G.Camera.fy)
    cx, cy = c or (None, None)
    return G.Camera(fx, fy, cx, cy)


def _in_range(value: float | None, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) or high == math.inf and value == math.inf
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if high != math.inf:
            bound = f"in [{low:g}, {high:g}]"
        raise UsageError(f"{name} must be {bound}, not {value!r}")


def validate_options(opts: RunOptions) -> None:
    """Every option value, before anything is loaded (UsageError: exit 2)."""
    if opts.backend not in backend_names():
        raise UsageError(f"--backend must be one of {', '.join(backend_names())}, not {opts.backend!r}")
    if opts.triton_url is not None and opts.backend not in ("auto", "triton"):
        raise UsageError(f"--triton-url sends frames to a Triton server; it does not go with --backend {opts.backend}")
    if opts.backend == "triton" and not opts.triton_url:
        raise UsageError("--backend triton needs --triton-url HOST:PORT (gRPC; http://HOST:PORT for HTTP)")
    if opts.triton_url is not None:
        parse_url(opts.triton_url)
        if (opts.det, opts.pose) != (RunOptions.det, RunOptions.pose):
            raise UsageError("with --backend triton the server's repository decides the models: drop --det/--pose "
                             "(re-export the repository to change them)")
    _in_range(opts.smooth_min_cutoff, "--smooth-min-cutoff", 0.0, low_open=True)
    _in_range(opts.smooth_beta, "--smooth-beta", 0.0)
    _in_range(opts.det_threshold, "--det-threshold", 0.0, 1.0)
    _in_range(opts.kpt_threshold, "--kpt-threshold", 0.0, 1.0)
    if opts.max_persons < 1:
        raise UsageError(f"--max-persons must be at least 1, not {opts.max_persons}")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {opts.threads}")
    camera_from_options(opts.focal, opts.principal)
    if opts.ann is not None and opts.coco is None:
        raise UsageError("--ann gives the image ids of --coco results: give --coco too")
    if opts.det_interval < 1:
        raise UsageError(f"--det-interval must be at least 1 frame, not {opts.det_interval}")
    if opts.det_interval > 1 and (backend_pipeline(opts.backend) in ("cuda-stream", "remote") or opts.triton_url):
        raise UsageError("--det-interval runs in the CPU pipeline: --backend auto (TensorRT .engine files "
                         "included) or onnxruntime; the CUDA-stream pipeline (--backend tensorrt / torch-cuda / "
                         "onnxruntime-gpu) and a Triton server detect on every frame")
    if opts.pose_spec and (opts.backend == "triton" or opts.triton_url):
        raise UsageError("--pose-spec describes a local pose ONNX; with Triton the server's repository decides")


def _local_inputs(opts: RunOptions) -> list[str]:
    """The files and folders this run reads (model names, URLs and camera indices are not files)."""
    return [p for p in (opts.source, opts.det, opts.pose, opts.ann) if p is not None and os.path.exists(p)]


def _save_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_CODECS:
        return "video"
    if suffix == "" or path.is_dir():
        return "folder"
    raise UsageError(f"--save: unsupported file type {suffix!r} (use .jpg/.png, .mp4/.avi or a folder)")


def plan_outputs(opts: RunOptions) -> RunOptions:
    """Check every output path (rtmw_edge.outputs) and return the options with the paths to write."""
    inputs = _local_inputs(opts)
    given = {"--out": opts.out_jsonl, "--coco": opts.coco, "--save": opts.save, "--plot-3d": opts.plot_3d}
    checked = {}
    for option, path in given.items():
        others = [p for o, p in given.items() if o != option]
        kind = "dir" if option == "--save" and path is not None and _save_kind(Path(path)) == "folder" else "file"
        # a folder of annotated pictures must not hold the source's images (their names are reused)
        protect = [opts.source] if kind == "dir" and os.path.exists(opts.source) else inputs
        checked[option] = check_output(path, option=option, inputs=protect, kind=kind, stream=option == "--out",
                                       others=others)
    if opts.plot_3d is not None and Path(opts.plot_3d).suffix.lower() != ".png":
        raise UsageError("--plot-3d writes a PNG picture: give a .png file name")
    return RunOptions(**{**opts.__dict__, "out_jsonl": checked["--out"], "coco": checked["--coco"],
                         "save": checked["--save"], "plot_3d": checked["--plot-3d"]})


_COCO_NAME = re.compile(r"^0*(\d+)$")


class ImageIds:
    """COCO image ids of the frames: by file name from a COCO annotation (`--ann`), else from file names
    that are numbers like COCO's (000000196141.jpg → 196141).

    With `--ann`, the annotation defines the images that can be scored: other images are still processed
    (JSON lines, pictures) but left out of the COCO results, with one warning; none matching is an error.
    Without it, every image needs a COCO-style name."""

    def __init__(self, ann: Path | None) -> None:
        self.by_name: dict[str, int] = {}
        self.ann = ann
        if ann is not None:
            for image in load_annotations(ann)["images"]:
                self.by_name[Path(str(image.get("file_name", ""))).name] = int(image["id"])

    def __call__(self, name: str) -> int | None:
        if self.ann is not None:
            return self.by_name.get(Path(name).name)
        match = _COCO_NAME.match(Path(name).stem)
        return int(match.group(1)) if match else None

    def check(self, source) -> str | None:
        """Before any work: every image of a still-image source needs an id (see above); videos and cameras
        have no image file names. Returns a warning for images left out, or None."""
        if source.kind not in ("image", "folder", "url-image"):
            raise UsageError(f"--coco needs image ids, and a {source.kind} has no image file names: use --out "
                             "(JSON lines) for videos and cameras")
        missing = [n for n in source.names if self(n) is None]
        if not missing:
            return None
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if self.ann is None:
            raise UsageError(f"--coco: no image id for {missing[0]}{more}: not a COCO-style number "
                             "(000000196141.jpg); give --ann with the COCO annotation of these images")
        if len(missing) == len(source.names):
            raise UsageError(f"--coco: none of the images is in --ann {self.ann.name} (e.g. {missing[0]})")
        return (f"--coco: {len(missing)} image(s) not in {self.ann.name} are left out of the COCO results: "
                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")


# --------------------------------------------------------------------------- sinks
class PictureSink:
    """--save: one image, a folder of images (one per frame), or a video file. Pictures are written
    atomically; a video is written to a temporary file beside the target and renamed when the run ends
    (also on Ctrl-C / SIGTERM, so it stays playable), removed on an error."""

    def __init__(self, path: Path, multi_frame: bool, fps: float | None) -> None:
        self.path = path
        self.suffix = path.suffix.lower()
        self.fps = fps or 30.0
        self.writer = None
        self.tmp: Path | None = None
        self.count = 0
        self.mode = _save_kind(path)
        if self.mode == "image" and multi_frame:
            raise UsageError(f"--save {path.name} is one image but the source has many frames: give a video "
                             "file (.mp4/.avi) or a folder")

    def write(self, image: np.ndarray, name: str) -> None:
        if self.mode in ("image", "folder"):
            target = self.path if self.mode == "image" else self.path / f"{Path(name).stem}.jpg"
            with atomic_path(target) as tmp:
                if not cv2.imwrite(str(tmp), image):
                    raise RtmwEdgeError(f"cannot write {target} (OpenCV could not encode it)")
        else:
            if self.writer is None:
                h, w = image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.suffix])
                self.tmp = temp_beside(self.path)
                self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
                if not self.writer.isOpened():
                    raise RtmwEdgeError(f"cannot open a video writer for {self.path}")
            self.writer.write(image)
        self.count += 1

    def close(self, keep: bool) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        assert self.tmp is not None
        if keep:
            commit_file(self.tmp, self.path)
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


def _frame_source(source, frame) -> str:
    """What the JSON `source` field names: the image file, else the video / camera / stream."""
    if source.kind in ("image", "folder", "url-image"):
        return frame.name
    return Path(source.description).name if source.kind == "video" else source.description


# --------------------------------------------------------------------------- the run
def run_source(opts: RunOptions, console=None) -> RunSummary:
    """Process the whole source. Raises UsageError before any work for bad options or outputs, and
    RtmwEdgeError for errors met while working (the JSON lines keep the frames done). Ctrl-C / SIGTERM
    stop the run cleanly: the summary comes back with `interrupted` set (the CLI exits 130 / 143)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from .progress import progress_bar

    validate_options(opts)
    opts = plan_outputs(opts)
    camera = camera_from_options(opts.focal, opts.principal)
    image_ids = ImageIds(opts.ann) if opts.coco is not None else None
    summary = RunSummary(max_persons=opts.max_persons)

    def warn(message: str) -> None:
        if console is not None:
            from rich.markup import escape

            console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    source = open_source(opts.source, loop=opts.loop, skip_bad=not opts.strict, on_skip=warn)
    stream = None
    estimator = None
    pictures = None
    coco: list[dict] = []
    last_3d: FrameResult | None = None
    failure: BaseException | None = None
    start = time.perf_counter()
    try:
        multi = source.kind not in ("image", "url-image")
        summary.skipped_kind = "image" if source.kind == "folder" else "frame"
        if image_ids is not None:
            note = image_ids.check(source)
            if note:
                warn(note)
        pictures = PictureSink(opts.save, multi, source.fps) if opts.save else None
        smoothing = {k: v for k, v in (("min_cutoff", opts.smooth_min_cutoff), ("beta", opts.smooth_beta))
                     if v is not None}
        options = dict(flip_test=opts.flip_test, max_persons=opts.max_persons, det_threshold=opts.det_threshold,
                       kpt_threshold=opts.kpt_threshold, track=opts.track, smooth=opts.smooth, camera=camera,
                       smoothing=smoothing or None)
        if opts.triton_url is not None:  # frames go to a Triton server's pipeline model
            estimator = open_estimator(backend="triton", triton_url=opts.triton_url, triton_model=opts.triton_model,
                                       **options)
        else:
            det_path, pose_path = resolve_models(opts.det, opts.pose)  # every missing checkpoint named at once
            if opts.det_interval > 1 and source.kind in ("image", "url-image", "folder"):
                warn(f"--det-interval applies to videos and cameras: every photo of this {source.kind} is detected")
            elif opts.det_interval > 1:
                options["det_interval"] = opts.det_interval
            estimator = open_estimator(det_path, pose_path, opts.backend, threads=opts.threads,
                                       pose_spec=opts.pose_spec, **options)
        if opts.plot_3d is not None and estimator.info.task != "pose3d":
            raise UsageError("--plot-3d needs an RTMW3D pose model")
        if camera is not None and estimator.info.task != "pose3d":
            given = " and ".join(o for o, v in (("--focal", opts.focal), ("--principal", opts.principal)) if v)
            warn(f"{given}: only for RTMW3D pose models (camera-space 3D); ignored for this 2D model")
        signals.check()  # a stop that came while the models loaded
        hint = _ThresholdHint(opts.kpt_threshold) if pictures or opts.show else None
        stream = Stream(opts.out_jsonl) if opts.out_jsonl is not None else None
        with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[fps]:.1f} FPS"), TimeElapsedColumn(), console=console,
                          disable=not multi or console is None) as bar:
            task = bar.add_task(f"run {Path(str(opts.source)).name}", total=source.frame_count, fps=0.0)
            results = (estimator.stream(source) if hasattr(estimator, "stream")  # GPU: two frames in flight
                       else ((f, estimator(f.image, f.index, f.timestamp)) for f in source))
            for frame, result in results:
                result.source = _frame_source(source, frame)
                summary.frames += 1
                summary.persons += len(result.persons)
                summary.crowded += result.dropped_persons > 0
                if stream is not None:
                    try:
                        stream.write_line(json.dumps(result.to_dict()))
                    except ReaderGone:  # `--out - | head`: the reader has what it wanted, a normal end
                        summary.reader_left = True
                        break
                image_id = image_ids(frame.name) if image_ids is not None else None
                if image_id is not None:
                    coco.extend(coco_items(result, image_id))
                if result.persons and result.persons[0].keypoints_3d is not None:
                    last_3d = result
                if hint is not None:
                    hint(result, warn)
                if pictures or opts.show:
                    drawn = draw_frame(frame.image, result, kpt_threshold=opts.kpt_threshold)
                    if pictures:
                        pictures.write(drawn, frame.name)
                    if opts.show and not _show(drawn):
                        break
                bar.update(task, advance=1, fps=summary.frames / (time.perf_counter() - start))
        summary.skipped = source.skipped
    except (KeyboardInterrupt, Terminated) as exc:
        summary.interrupted = exc
        summary.skipped = source.skipped
    except BaseException as exc:
        failure = exc
        _add_progress_note(exc, stream)
        raise
    finally:
        source.close()
        if stream is not None:
            stream.close()
        if estimator is not None and hasattr(estimator, "close"):
            estimator.close()     # engines, CUDA streams and contexts released in order, not by the GC
        if pictures is not None:
            pictures.close(keep=failure is None)
        summary.seconds = time.perf_counter() - start
    if opts.coco is not None and (summary.interrupted is None or summary.frames):  # not when stopped loading
        with atomic_output(opts.coco) as f:
            json.dump(coco, f)
    if opts.plot_3d is not None and summary.interrupted is None:
        if last_3d is None:
            raise RtmwEdgeError("--plot-3d: no person was found, nothing to plot")

        plot_3d(last_3d, opts.plot_3d)
    return summary


class _ThresholdHint:
    """Pictures draw only keypoints scored above --kpt-threshold: when every keypoint of a frame's people is at or
    under it, the picture shows boxes without a skeleton. Say so once per run."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.said = False

    def __call__(self, result: FrameResult, warn) -> None:
        if self.said or not result.persons:
            return
        best = max((float(np.max(p.keypoint_scores)) for p in result.persons if len(p.keypoint_scores)),
                   default=None)
        if best is None or best > self.threshold:
            return
        self.said = True
        warn(f"frame {result.frame}: every keypoint of its {len(result.persons)} person(s) scored at most {best:.3g}, "
             f"not above --kpt-threshold {self.threshold:g}, so the picture shows boxes without a skeleton: lower "
             "--kpt-threshold to draw them (the JSON lines hold every keypoint either way)")


def _add_progress_note(exc: BaseException, stream: Stream | None) -> None:
    """An error met mid-run says how much of the JSON-lines stream is valid."""
    if isinstance(exc, RtmwEdgeError) and stream is not None and not stream.to_stdout:
        exc.args = (f"{exc} ({stream.name} holds the {stream.lines} frame(s) done before the error)",)
