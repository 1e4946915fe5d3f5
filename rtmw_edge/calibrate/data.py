"""Calibration data: model inputs made exactly as at run time, sampled deterministically, cached as shards.

What a sample is depends on the model (`describe_model`):

- **detector** — a letterboxed frame, made by `OnnxDetector.preprocess` (the detector contract: our own
  exports and the foreign RTMDet / YOLOX graphs alike);
- **pose** — a person crop, made by `TopDownPose.preprocess` from a person box: the boxes of the run-time
  detector (`--det`: `PoseEstimator.detect`, the same thresholds and person NMS) or the COCO ground truth.

Sources (`Source`): a folder of images, a COCO annotation file + its image folder, or a video file. The
*units* are images (video: frames). A seeded split keeps `holdout` of them for the fidelity report — those
never feed calibration. Samples are spread over the calibration units stratified: unit i (in a seeded
order) gets ⌊N/M⌋ or ⌈N/M⌉ samples. A unit's first sample is the unmodified input (for pose: each person's
exact crop first); further ones are seeded augmentations — detector: horizontal flip, crop (zoom in),
zoom out; pose: flip and a jittered box (scale ±10 %, shift ±5 %), the way detector boxes wobble.

Cache (`CalibrationCache`, one folder): ``manifest.json`` + ``shard_00000.npy``, ... float32 N×C×H×W.
The manifest's key hashes everything the tensors depend on: the model file, the preprocessing, the
calibration images (names and contents), the COCO file or video, the detector and its thresholds, and the
sampling settings. Same key: the shards are reused; a different key: the folder's shards are deleted and
rebuilt (the message says which part changed). Shards are written atomically one at a time and the
manifest after each, so an interrupted run resumes after the last complete shard. Memory holds one shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import __version__
from ..backends import load_engine
from ..detectors import OnnxDetector, UnknownDetectorError, inspect_detector
from ..downloads import sha256_file
from ..errors import RtmwEdgeError, UsageError
from ..geometry import BBOX_PADDING
from ..onnx_meta import read_metadata
from ..outputs import atomic_output, atomic_write_text
from ..pipeline import PoseEstimator, TopDownPose, pose_info
from ..sources import ImageSource, open_source, read_image

DATA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_BYTES = 64 << 20           # at most this much per shard (and in memory while building)
DEFAULT_EVAL_UNITS = 16          # held-out units scored by the report at most
JITTER_SCALE = 0.10
JITTER_SHIFT = 0.05


# --------------------------------------------------------------------------- what the model eats
@dataclass(frozen=True)
class ModelInputs:
    """The preprocessing of one model, as the run-time code does it."""

    task: str                         # detector | pose
    input_name: str
    input_size: tuple[int, int]       # (w, h)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    swap_rb: bool
    pad_value: int | None = None      # detector letterbox fill
    padding: float | None = None      # pose box padding
    detector_kind: str | None = None  # detectors: the contract's kind
    keypoint_set: str | None = None   # pose
    num_keypoints: int | None = None
    split_ratio: float | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.input_size[1], self.input_size[0])


def describe_model(path: str | Path) -> ModelInputs:
    """Detector or pose model, and its preprocessing (metadata, else recognised from the graph)."""
    path = Path(path)
    if path.is_dir():
        raise RtmwEdgeError(f"{path} is a folder: give the model's .onnx file")
    if not path.is_file():
        raise RtmwEdgeError(f"model file not found: {path}")
    if path.suffix.lower() != ".onnx":
        raise RtmwEdgeError(f"{path.name}: calibrate takes an .onnx model (a TensorRT engine is built from the "
                            "calibrated ONNX afterwards)")
    meta = read_metadata(path)
    if meta is not None and meta.get("precision") == "int8":
        raise RtmwEdgeError(f"{path.name} is already an INT8 (Q/DQ) model: calibrate the FP32 export")
    pose = meta is not None and meta.get("task") in ("pose2d", "pose3d")
    if not pose:
        try:
            sig = inspect_detector(path)
            return ModelInputs("detector", sig.input_name, tuple(sig.input_size), tuple(sig.mean), tuple(sig.std),
                               bool(sig.swap_rb), pad_value=int(sig.pad_value), detector_kind=sig.kind)
        except UnknownDetectorError as exc:
            if "pose model" not in str(exc):
                raise RtmwEdgeError(f"{path.name} is neither a person detector nor a SimCC pose model this "
                                    f"toolkit knows: {exc}") from None

    engine = load_engine(path, "onnxruntime", threads=1)
    info = pose_info(engine)
    if info.decoded or info.flip_in_graph:
        raise RtmwEdgeError(f"{path.name} decodes or flips inside the graph: calibrate the plain SimCC export "
                            "(without --decode / --flip-test)")
    return ModelInputs("pose", engine.input_name, tuple(info.input_size), tuple(info.mean), tuple(info.std),
                       bool(info.swap_rb), padding=BBOX_PADDING, keypoint_set=info.keypoint_set,
                       num_keypoints=info.num_keypoints, split_ratio=info.split_ratio)


# --------------------------------------------------------------------------- sources and units
@dataclass
class Source:
    """Where calibration (and held-out) inputs come from. Exactly one of images / coco / video."""

    images: Path | None = None
    coco: Path | None = None
    video: Path | None = None
    eval_images: Path | None = None   # an explicit held-out folder (then nothing is held out of `images`)

    @property
    def kind(self) -> str:
        return "video" if self.video is not None else ("coco" if self.coco is not None else "images")

    def check(self) -> None:
        if self.video is not None and (self.images is not None or self.coco is not None):
            raise UsageError("give either --video FILE or --images DIR (with --coco ANN), not both")
        if self.video is None and self.images is None:
            raise UsageError("no calibration input: give --images DIR, --coco ANN.json --images DIR or --video FILE")
        for label, p, want_dir in (("--images", self.images, None), ("--coco", self.coco, False),
                                   ("--video", self.video, False), ("--eval-images", self.eval_images, True)):
            if p is None:
                continue
            if not p.exists():
                raise RtmwEdgeError(f"{label}: no such file or folder: {p}")
            if want_dir is True and not p.is_dir():
                raise RtmwEdgeError(f"{label} must be a folder of images: {p}")
            if want_dir is False and not p.is_file():
                raise RtmwEdgeError(f"{label} must be a file: {p}")
        if self.coco is not None and (self.images is None or not self.images.is_dir()):
            raise RtmwEdgeError("--coco needs --images DIR, the folder with the annotation's images")


@dataclass
class Unit:
    """One image (or video frame) and, for pose models with COCO, its ground-truth person boxes."""

    id: str                             # file name, or "frame_000123"
    path: Path | None = None
    frame: int | None = None
    boxes: list[list[float]] | None = None   # xyxy image pixels (COCO GT), or None

    def to_dict(self) -> dict:
        return {"id": self.id, "frame": self.frame, "boxes": self.boxes}


def _image_paths(folder: Path) -> list[Path]:
    src = open_source(folder)
    if not isinstance(src, ImageSource) or src.kind not in ("folder", "image"):
        raise RtmwEdgeError(f"{folder} is not an image file or a folder of images")
    return list(src.paths)


def _coco_units(ann: Path, images: Path) -> list[Unit]:
    """Images of a COCO file (keypoints or plain detection) that are in `images`, with their person boxes."""
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RtmwEdgeError(f"{ann}: not a readable COCO annotation file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise RtmwEdgeError(f"{ann.name}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    person_ids = {c["id"] for c in data.get("categories", []) if c.get("name") == "person"} or {1}
    boxes: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        if a.get("category_id") not in person_ids or a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a.get("bbox", (0, 0, 0, 0)))
        if w > 1 and h > 1:
            boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    units = []
    for img in sorted(data["images"], key=lambda i: str(i.get("file_name"))):
        path = images / str(img.get("file_name"))
        if path.is_file():
            units.append(Unit(path.name, path=path, boxes=boxes.get(img["id"], [])))
    if not units:
        raise RtmwEdgeError(f"none of the images of {ann.name} is in {images}")
    return units


def _video_info(video: Path) -> tuple[int, float | None]:
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise RtmwEdgeError(f"{video}: cannot open the video")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = cap.get(cv2.CAP_PROP_FPS) or None
    finally:
        cap.release()
    if count <= 0:
        raise RtmwEdgeError(f"{video}: the video reports no frame count (re-encode it, or extract frames into a "
                            "folder for --images)")
    return count, fps


def split_units(source: Source, holdout: float, seed: int, num: int) -> tuple[list[Unit], list[Unit]]:
    """(calibration units, held-out units). Held-out: the explicit --eval-images folder, else a seeded
    `holdout` fraction of the images (at least one when there are two or more), for a video the last
    `holdout` of its frames (so neighbouring frames never land on both sides)."""
    source.check()
    if not 0.0 <= holdout < 1.0:
        raise RtmwEdgeError(f"--holdout must be in [0, 1), got {holdout}")
    if source.video is not None:
        count, _ = _video_info(source.video)
        cut = count - int(round(count * holdout)) if holdout > 0 else count
        cal_frames = _spread(cut, num, seed)
        eval_frames = _spread(count - cut, DEFAULT_EVAL_UNITS, seed + 1)
        cal = [Unit(f"frame_{f:06d}", frame=f) for f in cal_frames]
        ev = [Unit(f"frame_{cut + f:06d}", frame=cut + f) for f in eval_frames]
        return cal, ev
    units = (_coco_units(source.coco, source.images) if source.coco is not None
             else [Unit(p.name, path=p) for p in _image_paths(source.images)])
    if source.eval_images is not None:
        ev = [Unit(p.name, path=p) for p in _image_paths(source.eval_images)]
        if source.coco is not None:  # GT boxes of held-out images come from the same annotation file
            try:
                known = {u.id: u for u in _coco_units(source.coco, source.eval_images)}
            except RtmwEdgeError:
                known = {}
            ev = [known.get(u.id, u) for u in ev]
        overlap = sorted({u.id for u in ev} & {u.id for u in units})
        if overlap and source.eval_images.resolve() == source.images.resolve():
            raise UsageError("--eval-images is the calibration folder: held-out images must be other images")
        ev_hashes = {_file_sha256(u.path) for u in ev}
        clash = [u.id for u in units if _file_sha256(u.path) in ev_hashes]
        if clash:
            raise UsageError(f"{len(clash)} held-out image(s) are also calibration images (e.g. {clash[0]}): "
                                "the fidelity report must use other images")
        return units, ev[:DEFAULT_EVAL_UNITS * 4]
    n_hold = int(round(len(units) * holdout))
    if holdout > 0 and len(units) >= 2:
        n_hold = min(max(n_hold, 1), len(units) - 1)
    else:
        n_hold = 0
    order = np.random.default_rng(seed).permutation(len(units))
    held = set(order[:n_hold].tolist())
    cal = [u for i, u in enumerate(units) if i not in held]
    ev = [u for i, u in enumerate(units) if i in held]
    return cal, ev


def _spread(count: int, num: int, seed: int) -> list[int]:
    """At most `num` indices of range(count), one per equal stratum at a seeded offset (sorted)."""
    if count <= 0 or num <= 0:
        return []
    if num >= count:
        return list(range(count))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, count, num + 1)
    return sorted({int(min(count - 1, np.floor(a + rng.random() * (b - a)))) for a, b in zip(edges[:-1], edges[1:])})


def _file_sha256(path: Path | None) -> str:
    return "" if path is None else sha256_file(path)


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- samples
def allocate(num: int, n_units: int, seed: int) -> list[int]:
    """Samples per unit: ⌊num/M⌋ each, one more for the first num mod M units of a seeded order."""
    if n_units == 0:
        return []
    counts = [num // n_units] * n_units
    for i in np.random.default_rng(seed).permutation(n_units)[: num % n_units]:
        counts[int(i)] += 1
    return counts


def _aug_detector(rng: np.random.Generator) -> dict:
    mode = ["crop", "zoom_out", "crop"][int(rng.integers(3))]
    aug = {"flip": bool(rng.random() < 0.5), "mode": mode}
    if mode == "crop":  # keep 55..100 % of each side
        fw, fh = rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
        aug.update(crop=[round(float(rng.uniform(0, 1 - fw)), 4), round(float(rng.uniform(0, 1 - fh)), 4),
                         round(float(fw), 4), round(float(fh), 4)])
    else:  # the image shrinks to 50..90 % of a canvas filled with its mean colour
        aug.update(zoom=round(float(rng.uniform(0.5, 0.9)), 4), at=[round(float(rng.random()), 4),
                                                                     round(float(rng.random()), 4)])
    return aug


def apply_detector_aug(image: np.ndarray, aug: dict | None) -> np.ndarray:
    if not aug:
        return image
    if aug.get("flip"):
        image = image[:, ::-1]
    h, w = image.shape[:2]
    if aug.get("mode") == "crop":
        x0, y0, fw, fh = aug["crop"]
        xa, ya = int(x0 * w), int(y0 * h)
        image = image[ya: ya + max(8, int(fh * h)), xa: xa + max(8, int(fw * w))]
    elif aug.get("mode") == "zoom_out":
        z = aug["zoom"]
        cw, ch = int(round(w / z)), int(round(h / z))
        canvas = np.empty((ch, cw, 3), np.uint8)
        canvas[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        ox, oy = int(aug["at"][0] * (cw - w)), int(aug["at"][1] * (ch - h))
        canvas[oy: oy + h, ox: ox + w] = image
        image = canvas
    return np.ascontiguousarray(image)


def _aug_pose(rng: np.random.Generator) -> dict:
    return {"flip": bool(rng.random() < 0.5),
            "scale": round(float(rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE)), 4),
            "shift": [round(float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)), 4),
                      round(float(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)), 4)]}


def apply_pose_aug(image: np.ndarray, box: np.ndarray, aug: dict | None) -> tuple[np.ndarray, np.ndarray]:
    box = np.asarray(box, np.float32).copy()
    if not aug:
        return image, box
    w = image.shape[1]
    if aug.get("flip"):
        image = np.ascontiguousarray(image[:, ::-1])
        box[[0, 2]] = w - box[[2, 0]]
    c = (box[:2] + box[2:]) / 2
    size = (box[2:] - box[:2]) * aug["scale"]
    c = c + np.asarray(aug["shift"], np.float32) * (box[2:] - box[:2])
    return image, np.concatenate([c - size / 2, c + size / 2]).astype(np.float32)


@dataclass
class Plan:
    """The calibration samples, in build order: per unit, its person boxes and its sample descriptors."""

    units: list[Unit]
    counts: list[int]
    samples: list[dict] = field(default_factory=list)  # {"unit": i, "person": p | None, "aug": {...} | None}


# --------------------------------------------------------------------------- the cache
@dataclass
class BuildStatus:
    action: str          # built | reused | resumed | rebuilt
    reason: str = ""
    samples: int = 0
    shards: int = 0


class CalibrationCache:
    """A folder of shards + manifest (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))

    def shard_paths(self) -> list[Path]:
        m = self.manifest() or {}
        return [self.folder / s for s in m.get("shards", [])]

    def __len__(self) -> int:
        m = self.manifest() or {}
        return int(m.get("num_samples", 0)) if m.get("complete") else 0

    def batches(self, batch_size: int = 16, limit: int | None = None) -> Iterator[np.ndarray]:
        """float32 batches read shard by shard (memory-mapped)."""
        left = limit if limit is not None else None
        for path in self.shard_paths():
            shard = np.load(path, mmap_mode="r")
            for i in range(0, len(shard), batch_size):
                chunk = np.asarray(shard[i: i + batch_size], np.float32)
                if left is not None:
                    chunk = chunk[:left]
                    left -= len(chunk)
                if len(chunk):
                    yield chunk
                if left is not None and left <= 0:
                    return

    def samples(self, count: int, start: int = 0) -> np.ndarray:
        """`count` samples from index `start` (one array; for the small validation sets)."""
        out = []
        seen = 0
        for path in self.shard_paths():
            shard = np.load(path, mmap_mode="r")
            lo, hi = max(start - seen, 0), min(start + count - seen, len(shard))
            if lo < hi:
                out.append(np.asarray(shard[lo:hi], np.float32))
            seen += len(shard)
            if seen >= start + count:
                break
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path, "wb") as f:
        np.save(f, array)


# --------------------------------------------------------------------------- building
@dataclass
class DataConfig:
    """Everything the calibration tensors depend on (besides the files, hashed separately)."""

    num: int = 512
    seed: int = 0
    augment: bool = True
    holdout: float = 0.2
    det: Path | None = None
    det_threshold: float = 0.3

    def check(self) -> None:
        if self.num < 1:
            raise RtmwEdgeError(f"--num must be at least 1, got {self.num}")
        if not 0.0 < self.det_threshold < 1.0:
            raise RtmwEdgeError("--det-threshold must be in (0, 1)")


class SampleMaker:
    """Turns (image, sample descriptor) into one model input with the run-time code (`OnnxDetector.preprocess`,
    `TopDownPose.preprocess`), set to the preprocessing parameters of `inputs` (which `describe_model` read
    from the model: the recorded parameters are the ones applied)."""

    def __init__(self, model_path: Path, inputs: ModelInputs, det: Path | None, det_threshold: float) -> None:
        from dataclasses import replace

        self.inputs = inputs
        self.estimator = None
        self.top_down = None
        self.detector = None
        if inputs.task == "detector":
            self.detector = OnnxDetector(model_path)
            self.detector.signature = replace(self.detector.signature, input_size=tuple(inputs.input_size),
                                              mean=tuple(inputs.mean), std=tuple(inputs.std),
                                              swap_rb=inputs.swap_rb, pad_value=int(inputs.pad_value or 0))
            return

        if det is not None:
            self.estimator = PoseEstimator(det, model_path, backend="onnxruntime", det_threshold=det_threshold)
            self.top_down = self.estimator.pose
        else:
            self.top_down = TopDownPose(load_engine(model_path, "onnxruntime", threads=1))
        self.top_down.info = replace(self.top_down.info, input_size=tuple(inputs.input_size), mean=tuple(inputs.mean),
                                     std=tuple(inputs.std), swap_rb=inputs.swap_rb)

    def person_boxes(self, unit: Unit, image: np.ndarray) -> list[list[float]]:
        if unit.boxes is not None and self.estimator is None:
            return unit.boxes
        if self.estimator is None:
            raise RtmwEdgeError("a pose model needs person boxes: give --det DETECTOR.onnx or --coco ANN.json")
        boxes, _, _ = self.estimator.detect(image)
        return [[float(v) for v in b] for b in boxes]  # float32 → float is exact, and back again

    def make(self, image: np.ndarray, sample: dict, unit: Unit) -> np.ndarray:
        if self.detector is not None:
            tensor, _ = self.detector.preprocess(apply_detector_aug(image, sample.get("aug")))
            return tensor[0]
        box = np.asarray(unit.boxes[sample["person"]], np.float32)
        img, box = apply_pose_aug(image, box, sample.get("aug"))
        crops, _, _ = self.top_down.preprocess(img, box[None])
        return crops[0]


def _units_images(units: list[Unit], video: Path | None, wanted: set[int] | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(unit index, BGR image) in unit order; a video is decoded once, front to back."""
    if video is None:
        for i, u in enumerate(units):
            if wanted is None or i in wanted:
                yield i, read_image(u.path)
        return

    by_frame = {u.frame: i for i, u in enumerate(units) if wanted is None or i in wanted}
    if not by_frame:
        return
    last = max(by_frame)
    with open_source(video, prefetch=2) as src:
        for frame in src:
            if frame.index in by_frame:
                yield by_frame[frame.index], frame.image
            if frame.index >= last:
                break


def source_fingerprint(source: Source, units: list[Unit]) -> dict:
    """The identity of the calibration inputs: names and content hashes (video: file hash + frames)."""
    if source.video is not None:
        return {"kind": "video", "file": source.video.name, "sha256": _file_sha256(source.video),
                "frames": [u.frame for u in units]}
    fp = {"kind": source.kind, "images": _hash_json([[u.id, _file_sha256(u.path)] for u in units]),
          "count": len(units)}
    if source.coco is not None:
        fp["coco"] = _file_sha256(source.coco)
    return fp


def build_calibration_set(model_path: Path, inputs: ModelInputs, source: Source, units: list[Unit],
                          cfg: DataConfig, cache: CalibrationCache, *,
                          progress: Callable[[str, int | None], Callable[[int], None]] | None = None
                          ) -> BuildStatus:
    """Make (or reuse, or resume) the cached calibration tensors. `progress(label, total)` returns an
    `advance(n)` callable (the CLI passes a rich progress bar)."""
    cfg.check()
    if not units:
        raise RtmwEdgeError("no calibration images left (all were held out): add images or lower --holdout")
    if inputs.task == "pose" and source.coco is None and cfg.det is None:
        raise RtmwEdgeError("a pose model is calibrated on person crops: give --det DETECTOR.onnx (or --coco ANN.json "
                            "for ground-truth boxes)")
    sections = {
        "version": DATA_VERSION,
        "model": {"file": model_path.name, "sha256": _file_sha256(model_path)},
        "preprocessing": inputs.to_dict(),
        "source": source_fingerprint(source, units),
        "detector": None if cfg.det is None or inputs.task != "pose" else
        {"file": Path(cfg.det).name, "sha256": _file_sha256(Path(cfg.det)), "threshold": cfg.det_threshold},
        "sampling": {"num": cfg.num, "seed": cfg.seed, "augment": cfg.augment},
    }
    key = _hash_json(sections)
    old = cache.manifest()
    status = BuildStatus("built")
    if old is not None:
        if old.get("key") == key and old.get("complete"):
            if all(p.is_file() for p in cache.shard_paths()):
                return BuildStatus("reused", samples=int(old["num_samples"]), shards=len(old["shards"]))
        if old.get("key") != key:
            changed = [k for k in sections if _hash_json(old.get("sections", {}).get(k)) != _hash_json(sections[k])]
            status = BuildStatus("rebuilt", reason=f"{', '.join(changed) or 'format'} changed")
            _clear(cache, old)
            old = None
    cache.folder.mkdir(parents=True, exist_ok=True)
    maker = SampleMaker(model_path, inputs, cfg.det, cfg.det_threshold)

    if old is not None and old.get("key") == key and old.get("plan"):
        plan_units = [Unit(u["id"], path=_unit_path(units, u["id"]), frame=u.get("frame"), boxes=u.get("boxes"))
                      for u in old["plan"]["units"]]
        samples = old["plan"]["samples"]
        done = [s for s in old.get("shards", []) if (cache.folder / s).is_file()]
        status = BuildStatus("resumed")
    else:
        plan_units, samples = _make_plan(maker, inputs, source, units, cfg, progress)
        done = []
    shard_size = max(1, min(256, SHARD_BYTES // (4 * int(np.prod(inputs.shape)))))
    manifest = {"key": key, "sections": sections, "package_version": __version__, "complete": False,
                "shard_size": shard_size, "num_samples": len(samples), "shards": list(done),
                "plan": {"units": [u.to_dict() for u in plan_units], "samples": samples}}
    cache._write_manifest(manifest)
    if not samples:
        raise RtmwEdgeError("no calibration samples: no person was found in the calibration images"
                            if inputs.task == "pose" else "no calibration samples")

    start = len(done) * shard_size
    todo = samples[start:]
    wanted = {s["unit"] for s in todo}
    advance = progress("calibration data", len(samples)) if progress else None
    if advance and start:
        advance(start)
    buffer: list[np.ndarray] = []
    next_index = start
    by_unit: dict[int, list[tuple[int, dict]]] = {}
    for k, s in enumerate(samples):
        if k >= start:
            by_unit.setdefault(s["unit"], []).append((k, s))
    pending: dict[int, np.ndarray] = {}
    for ui, image in _units_images(plan_units, source.video, wanted):
        for k, s in by_unit.get(ui, []):
            pending[k] = maker.make(image, s, plan_units[ui]).astype(np.float32)
        while next_index in pending:  # samples are stored in plan order
            buffer.append(pending.pop(next_index))
            next_index += 1
            if advance:
                advance(1)
            if len(buffer) == shard_size:
                _flush(cache, manifest, buffer)
                buffer = []
    if buffer:
        _flush(cache, manifest, buffer)
    if next_index != len(samples):
        raise RtmwEdgeError(f"the calibration source ended early: {next_index} of {len(samples)} samples made "
                            "(a video shorter than its reported frame count?)")
    manifest["complete"] = True
    cache._write_manifest(manifest)
    status.samples, status.shards = len(samples), len(manifest["shards"])
    return status


def _unit_path(units: list[Unit], uid: str) -> Path | None:
    return next((u.path for u in units if u.id == uid), None)


def _make_plan(maker: SampleMaker, inputs: ModelInputs, source: Source, units: list[Unit], cfg: DataConfig,
               progress) -> tuple[list[Unit], list[dict]]:
    """Person boxes (pose: detector or GT), then the sample descriptors of every unit."""
    units = [Unit(u.id, u.path, u.frame, None if u.boxes is None else list(u.boxes)) for u in units]
    if inputs.task == "pose":
        if cfg.det is not None or source.video is not None:
            advance = progress("person boxes", len(units)) if progress else None
            for i, image in _units_images(units, source.video):
                units[i].boxes = maker.person_boxes(units[i], image)
                if advance:
                    advance(1)
        units = [u for u in units if u.boxes]
    counts = allocate(cfg.num, len(units), cfg.seed)
    samples = []
    for i, (u, n) in enumerate(zip(units, counts)):
        rng = np.random.default_rng([cfg.seed, i, 7])
        persons = len(u.boxes) if inputs.task == "pose" else 1
        if not cfg.augment:
            n = min(n, persons)
        for r in range(n):
            first = r < persons
            if inputs.task == "pose":
                samples.append({"unit": i, "person": r % persons, "aug": None if first else _aug_pose(rng)})
            else:
                samples.append({"unit": i, "person": None, "aug": None if first else _aug_detector(rng)})
    return units, samples


def _flush(cache: CalibrationCache, manifest: dict, buffer: list[np.ndarray]) -> None:
    name = f"shard_{len(manifest['shards']):05d}.npy"
    _atomic_save_npy(cache.folder / name, np.stack(buffer))
    manifest["shards"].append(name)
    cache._write_manifest(manifest)


def _clear(cache: CalibrationCache, manifest: dict) -> None:
    for name in manifest.get("shards", []):
        try:
            (cache.folder / name).unlink()
        except OSError:
            pass
    for stale in cache.folder.glob("shard_*.npy"):
        stale.unlink(missing_ok=True)
    for derived in ("statistics.npz", "sensitivity.json"):
        (cache.folder / derived).unlink(missing_ok=True)
    cache.manifest_path.unlink(missing_ok=True)
