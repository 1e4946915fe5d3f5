"""Per-stage latency of the whole pipeline, and the cost of each extra person.

For every configuration (pose model × backend; several may be given to compare precisions or backends
side by side in one run) the estimator is the one `--backend` means (`estimators.open_estimator`, as in `run`).
On the CPU pipeline the frame goes through the same stages as `PoseEstimator`, each one timed:

  decode (JPEG → BGR) · det_preprocess (letterbox + normalise) · det_inference · nms (box decode,
  threshold, NMS) · crops (warpAffine + normalise) · pose_inference · decode (SimCC → image coords)
  · draw (skeleton picture)

On the CUDA-stream and remote pipelines the stages run on the GPU or the server: end-to-end time only.

Frames with N people are made by tiling person crops of real photos into one picture, so the real detector finds
them; the number it actually finds is reported. The people come from your photos: the detector's confident,
isolated persons (`--images DIR`), or a COCO annotation file's people (`--ann FILE`, photos beside it or in
`--images`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import geometry as G
from .check import list_images
from .detectors import OnnxDetector
from .errors import RtmwEdgeError, require
from .estimators import open_estimator, pipeline_of
from .outputs import atomic_path
from .pipeline import resolve_model
from .streams import FrameTail
from .viz import draw_frame

# a confident threshold keeps edge fragments of neighbouring tiles from counting as people
DET_THRESHOLD = 0.5
STAGES = ("decode", "det_preprocess", "det_inference", "nms", "crops", "pose_inference", "decode_keypoints", "draw")


def _tile(image: np.ndarray, box, others, tile_wh: tuple[int, int]) -> np.ndarray | None:
    """The person in BOX as one tile (padded box, white border), or None when another person would show in it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c, s = G.box_to_center_scale(np.array([[x1, y1, x2, y2]], np.float32), tile_wh, padding=1.15)
    tile_box = np.concatenate([c - s / 2, c + s / 2], axis=1)
    if len(others):
        o = np.asarray(others, np.float32).reshape(-1, 4)
        inter = np.prod(np.clip(np.minimum(o[:, 2:], tile_box[:, 2:]) - np.maximum(o[:, :2], tile_box[:, :2]),
                                0, None), axis=1)
        if (inter / np.maximum(np.prod(o[:, 2:] - o[:, :2], axis=1), 1e-6)).max() > 0.05:
            return None  # another person would show in the tile: the detector would find two
    return cv2.warpAffine(image, G.warp_matrix(c[0], s[0], tile_wh), tile_wh, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))


def person_tiles(ann_path: Path, images_dir: Path, tile_wh: tuple[int, int] = (96, 192)) -> list[np.ndarray]:
    """Person crops (padded GT boxes, resized to one tile size) from a COCO annotation file's photos."""
    data = json.loads(Path(ann_path).read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    tiles = []
    boxes_by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes_by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    for ann in data["annotations"]:
        if ann.get("iscrowd") or ann.get("num_keypoints", 0) < 8:
            continue
        image = cv2.imread(str(Path(images_dir) / files[ann["image_id"]]))
        if image is None:
            continue
        x, y, w, h = ann["bbox"]
        others = [b for b in boxes_by_image[ann["image_id"]] if b != [x, y, x + w, y + h]]
        tile = _tile(image, (x, y, x + w, y + h), others, tile_wh)
        if tile is not None:
            tiles.append(tile)
    if not tiles:
        raise RtmwEdgeError(f"no usable person annotations in {ann_path}")
    return tiles


def detected_person_tiles(images_dir: Path, det, tile_wh: tuple[int, int] = (96, 192),
                          min_score: float = DET_THRESHOLD, min_height: int = 64) -> list[np.ndarray]:
    """Person crops from your own photos: the persons the detector finds with a confident score, at least
    MIN_HEIGHT pixels tall, with nobody else inside their tile."""
    path = resolve_model(det, "det")
    if path.suffix.lower() != ".onnx":
        raise RtmwEdgeError(f"--images finds the people with an ONNX detector, not {path.name}: give --det an .onnx "
                            "file or a registered name (or --ann with annotated people)")
    detector = OnnxDetector(path, score_threshold=min_score, nms_iou=0.6, max_detections=100)
    tiles = []
    for photo in list_images(images_dir):
        image = cv2.imread(str(photo))
        if image is None:
            continue
        boxes, _scores = detector(image)
        boxes = [b for b in np.asarray(boxes, np.float32).reshape(-1, 4) if b[3] - b[1] >= min_height]
        for i, box in enumerate(boxes):
            tile = _tile(image, box, [b for j, b in enumerate(boxes) if j != i], tile_wh)
            if tile is not None:
                tiles.append(tile)
    if not tiles:
        raise RtmwEdgeError(f"the detector found no isolated person of {min_height}+ px in {images_dir}: give photos "
                            "with people (or --ann with annotated people)")
    return tiles


def tiled_frame(tiles: list[np.ndarray], n: int) -> np.ndarray:
    """A near-square grid of n person tiles on a white background."""
    th, tw = tiles[0].shape[:2]
    cols = max(1, int(np.ceil(np.sqrt(n * th / tw))))
    rows = int(np.ceil(n / cols))
    frame = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        frame[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tiles[i % len(tiles)]
    return frame


@dataclass
class Config:
    name: str
    det: str
    pose: str
    backend: str = "auto"
    triton_url: str | None = None      # backend "triton": the server; its pipeline model decides det and pose
    triton_model: str = "rtmw_pipeline"
    pose_spec: str | None = None       # settings of a foreign pose ONNX (see rtmw_edge.pose_models)


def make_estimator(cfg: Config, max_persons: int = 32, threads: int | None = None):
    """The estimator CFG's backend means (`estimators.open_estimator`); for backend "triton" the server's pipeline."""
    if cfg.backend == "triton":
        return open_estimator(backend="triton", triton_url=cfg.triton_url, triton_model=cfg.triton_model,
                              det_threshold=DET_THRESHOLD, max_persons=max_persons)
    return open_estimator(cfg.det, cfg.pose, cfg.backend, max_persons=max_persons, threads=threads,
                          det_threshold=DET_THRESHOLD, pose_spec=cfg.pose_spec)


def _people(est, image: np.ndarray) -> int:
    return len(est.detect(image)[0]) if hasattr(est, "detect") else len(est(image).persons)


class StageClock:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {s: [] for s in STAGES}
        self.totals: list[float] = []

    def summary(self) -> dict:
        def pct(v):
            a = np.asarray(v) * 1000
            return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                    "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}

        total = pct(self.totals)
        return {"stages_ms": {s: pct(v) for s, v in self.times.items() if v}, "end_to_end_ms": total,
                "fps": 1000.0 / total["mean"], "stage_sum_ms": float(sum(pct(v)["mean"] for v in self.times.values()
                                                                         if v))}


def run_frame(est, jpeg: bytes, clock: StageClock, draw: bool = True) -> int:
    """One frame through every stage, each timed separately; returns the number of persons."""
    marks = [time.perf_counter()]

    def lap(stage: str) -> None:
        marks.append(time.perf_counter())
        clock.times[stage].append(marks[-1] - marks[-2])

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    lap("decode")
    det = est.detector
    tensor, lb = det.preprocess(image)
    lap("det_preprocess")
    raw = det.infer(tensor)
    lap("det_inference")
    boxes, scores = det.postprocess(raw, lb)
    keep = G.nms(boxes, scores, est.nms_iou)[: est.max_persons]
    boxes, scores = boxes[keep], scores[keep]
    lap("nms")
    crops, centers, scales = est.pose.preprocess(image, boxes)
    lap("crops")
    outputs = est.pose.infer(crops) if len(crops) else {}
    lap("pose_inference")
    h, w = image.shape[:2]
    if len(crops):
        kpts, kscores, k3d = est.pose.postprocess(outputs, centers, scales, (w, h))
    else:
        kpts, kscores, k3d = np.zeros((0, 0, 2), np.float32), np.zeros((0, 0), np.float32), None
    result = FrameTail()(boxes, scores, kpts, kscores, k3d, 0, width=w, height=h)
    lap("decode_keypoints")
    if draw:
        draw_frame(image, result)
        lap("draw")
    return len(result.persons)


def run_production(est, jpeg: bytes, clock: StageClock, draw: bool = True) -> int:
    """The same frame through the real code path (decode → `estimator(image)` → draw), timed as a
    whole: the end-to-end time the stage breakdown must add up to. Returns the number of persons."""
    t = time.perf_counter()
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    result = est(image)
    if draw:
        draw_frame(image, result)
    clock.totals.append(time.perf_counter() - t)
    return len(result.persons)


def benchmark(configs: list[Config], tiles: list[np.ndarray], persons: list[int], frames: int = 20,
              warmup: int = 2, threads: int | None = None, progress: bool = True) -> dict:
    """Stage breakdown at the largest person count, and the frame-time curve over `persons`."""

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "frames": frames, "persons_requested": persons, "configs": []}
    first = make_estimator(next((c for c in configs if c.backend != "triton"), configs[0]), threads=threads)
    # keep the tiles in which the detector sees exactly one person, alone and in a 4×4 grid of copies
    single = [t for t in tiles if _people(first, t) == 1 and _people(first, tiled_frame([t], 16)) == 16]
    if not single:
        raise RtmwEdgeError("the detector finds no single person in any tile: check --det")
    jpegs = {n: cv2.imencode(".jpg", tiled_frame(single, n), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
             for n in persons}
    report["tiles"] = len(single)
    from .progress import progress_bar

    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("bench", total=len(configs) * len(persons) * (frames + warmup))
        for cfg in configs:
            est = make_estimator(cfg, max_persons=max(persons), threads=threads)
            remote = pipeline_of(est) != "cpu"  # the GPU or the server runs the stages: end-to-end time only
            curve = []
            for n in persons:
                clock = StageClock()
                found = 0
                for i in range(frames + warmup):
                    # instrumented copy (per-stage times) and the real path (end to end), interleaved so both
                    # see the same load, in alternating order so neither always runs on the other's warm caches
                    if remote:
                        count = run_production(est, jpegs[n], clock)
                    elif i % 2:
                        run_production(est, jpegs[n], clock)
                        count = run_frame(est, jpegs[n], clock)
                    else:
                        count = run_frame(est, jpegs[n], clock)
                        run_production(est, jpegs[n], clock)
                    found = max(found, count)
                    if i < warmup:  # discard warm-up frames (allocations, first-run kernel selection)
                        clock.totals.pop()
                        for v in clock.times.values():
                            if v:
                                v.pop()
                    bar.advance(task)
                summary = clock.summary()
                curve.append({"persons_requested": n, "persons_detected": found, **summary})
            report["configs"].append({"name": cfg.name, "det": cfg.det, "pose": cfg.pose, "backend": cfg.backend,
                                      "pipeline": pipeline_of(est),
                                      "triton_url": cfg.triton_url, "pose_model": est.info.name, "stages": curve[-1],
                                      "curve": curve})
    for cfg in report["configs"]:
        pts = [(c["persons_detected"], c["end_to_end_ms"]["mean"]) for c in cfg["curve"]]
        if len(pts) >= 2 and len({p for p, _ in pts}) >= 2:
            slope = np.polyfit([p for p, _ in pts], [m for _, m in pts], 1)[0]
            cfg["ms_per_extra_person"] = float(slope)
    return report


def plot(report: dict, path: str | Path) -> Path:
    """Stage breakdown (stacked bars per configuration) and frame time vs persons, as one PNG."""
    require("matplotlib", "viz")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    names = [c["name"] for c in report["configs"]]
    bottom = np.zeros(len(names))
    for stage in STAGES:
        vals = np.array([c["stages"]["stages_ms"].get(stage, {}).get("mean", 0.0) for c in report["configs"]])
        ax1.bar(names, vals, bottom=bottom, label=stage)
        bottom += vals
    n = report["configs"][0]["stages"]["persons_detected"] if report["configs"] else 0
    ax1.set_title(f"stage breakdown at {n} persons (mean ms)")
    ax1.set_ylabel("ms per frame")
    ax1.legend(fontsize=7)
    for c in report["configs"]:
        xs = [p["persons_detected"] for p in c["curve"]]
        ax2.plot(xs, [p["end_to_end_ms"]["mean"] for p in c["curve"]], marker="o", label=f"{c['name']} frame")
        if all("pose_inference" in p["stages_ms"] for p in c["curve"]):  # local configs: the stage breakdown
            ax2.plot(xs, [p["stages_ms"]["pose_inference"]["mean"] for p in c["curve"]], marker=".", linestyle="--",
                     label=f"{c['name']} pose inference")
    ax2.set_xlabel("persons in the frame (detected)")
    ax2.set_ylabel("ms per frame")
    ax2.set_title("cost per extra person")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp))
    return path
