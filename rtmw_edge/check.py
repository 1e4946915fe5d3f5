"""Fidelity check of a converted model against a reference, on real images.

`check_model(candidate, against=...)`: the candidate is an ONNX or a TensorRT engine built by
`rtmw-edge build` (run through `load_engine`, metadata from its manifest); the reference is another
ONNX file, an official checkpoint (.pth, run in PyTorch with the candidate's registered architecture) or
a registered model name (its official checkpoint is fetched). Both run on the same inputs made from real
photos — for pose models the whole image as one person box, cropped exactly as at run time; for
detectors the letterboxed frame — and the report gives, per output, the max abs/rel difference; for
pose, the keypoint displacement in crop pixels and the OKS against the reference (per body part); for
detectors, the recall of the reference's detections at IoU ≥ 0.5 and their mean IoU. Past the
tolerances the check fails (the CLI exits 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import geometry as G
from .errors import RtmwEdgeError
from .keypoints import KEYPOINT_SETS, OKS_SIGMAS
from .onnx_meta import read_metadata
from .zoo import get_spec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Tolerances:
    max_rel: float = 1e-2        # per output: max |a − b| / max |b|
    max_px_p95: float = 1.0      # pose: 95th percentile keypoint displacement, crop pixels
    min_oks: float = 0.95        # pose: mean OKS against the reference
    min_recall: float = 1.0      # detector: reference detections recovered at IoU ≥ 0.5


@dataclass
class CheckReport:
    candidate: str
    reference: str
    task: str
    samples: int
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    keypoints: dict[str, float] = field(default_factory=dict)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    detections: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def list_images(source: str | Path) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise RtmwEdgeError(f"no such image file or folder: {path}")
    if not files:
        raise RtmwEdgeError(f"no images (.jpg/.png/...) in {path}")
    return files


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RtmwEdgeError(f"cannot read image {path} (missing, truncated or not an image)")
    return image


def make_inputs(meta: dict, images: list[Path], max_samples: int) -> np.ndarray:
    """Model inputs from real photos, preprocessed exactly as at run time."""
    w, h = meta["input_size"]
    swap_rb = meta.get("color", "rgb") == "rgb"
    batch = []
    for path in images[:max_samples]:
        image = read_image(path)
        if meta["task"] == "detector":
            canvas, _ = G.letterbox(image, (w, h), meta.get("pad_value", 114))
            batch.append(G.normalize_to_nchw(canvas, meta["mean"], meta["std"], swap_rb)[0])
        else:
            box = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32)
            crops, _, _ = G.crop_persons(image, box, (w, h), meta["mean"], meta["std"], swap_rb)
            batch.append(crops[0])
    return np.stack(batch).astype(np.float32)


def _ort_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    fixed_batch = session.get_inputs()[0].shape[0]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(fixed_batch, int) and fixed_batch != x.shape[0]:  # static batch: one chunk at a time
            parts = [session.run(None, {input_name: x[i:i + fixed_batch]}) for i in range(0, len(x), fixed_batch)]
            return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}
        return dict(zip(names, session.run(None, {input_name: x})))

    return run


def _torch_runner(meta: dict, checkpoint: Path, trust: bool):
    """The registered PyTorch model with official weights, post-processed like the candidate graph."""
    import torch

    from .export import _detector_wrapper, _pose_wrapper
    from .models import create_model

    spec = get_spec(meta["name"])
    model = create_model(spec.name, checkpoint, trust_checkpoint=trust)
    if spec.is_pose:
        graph = _pose_wrapper(model, spec, bool(meta.get("decoded")), bool(meta.get("flip_test")))
    else:
        graph, _ = _detector_wrapper(model, spec, int(meta.get("topk") or 1000))
    names = meta["outputs"]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = graph.eval()(torch.from_numpy(x))
        return {n: o.numpy() for n, o in zip(names, outs)}

    return run


def _candidate_runner(candidate: Path):
    """The candidate's runner and metadata: an ONNX (ONNX Runtime, metadata inside) or a TensorRT engine
    (`load_engine`, metadata from the manifest `rtmw-edge build` writes beside it)."""
    from .backends import ENGINE_SUFFIXES

    if candidate.suffix.lower() in ENGINE_SUFFIXES:
        from .backends import load_engine, run_chunked

        engine = load_engine(candidate, "tensorrt")
        if engine.metadata is None:
            raise RtmwEdgeError(f"{candidate} has no manifest with rtmw_edge metadata beside it: build it with "
                                "`rtmw-edge build MODEL.onnx`")
        return (lambda x: run_chunked(engine, x)), engine.metadata
    meta = read_metadata(candidate)
    if meta is None:
        raise RtmwEdgeError(f"{candidate} has no rtmw_edge metadata: export it with `rtmw-edge export` first")
    return _ort_runner(candidate), meta


def _reference_runner(meta: dict, against: str, trust: bool):
    path = Path(against)
    if path.suffix.lower() == ".onnx":
        ref_meta = read_metadata(path)
        if ref_meta and (ref_meta.get("task") != meta["task"] or ref_meta.get("input_size") != meta["input_size"]):
            raise RtmwEdgeError(f"{path} ({ref_meta.get('name')}, {ref_meta.get('task')}) does not describe the same "
                                f"model as the candidate ({meta['name']}, {meta['task']})")
        return _ort_runner(path), str(path)
    if path.suffix.lower() in (".pth", ".pt", ".ckpt") or path.is_file():
        return _torch_runner(meta, path, trust), str(path)
    # a registered name: its official checkpoint
    from .hub import fetch

    spec = get_spec(against)
    if spec.name != meta["name"]:
        raise RtmwEdgeError(f"the candidate is {meta['name']}, not {spec.name}")
    ckpt = fetch(spec.checkpoint_url, hash_prefix=spec.hash_prefix)
    return _torch_runner(meta, ckpt, trust), f"{spec.name} ({ckpt.name})"


def _pose_keypoints(meta: dict, outs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if "keypoints" in outs:
        return outs["keypoints"], outs["scores"]
    return G.simcc_decode(outs["simcc_x"], outs["simcc_y"], meta.get("simcc_split_ratio", 2.0))


def oks(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray, sigmas: np.ndarray, area: float) -> np.ndarray:
    """Object keypoint similarity per sample: mean over valid keypoints of exp(−d² / (2·area·(2σ)²))."""
    d2 = np.sum((pred - ref) ** 2, axis=-1)
    e = np.exp(-d2 / (2.0 * area * (2.0 * sigmas) ** 2))
    counts = valid.sum(axis=1)
    return np.where(counts > 0, (e * valid).sum(axis=1) / np.maximum(counts, 1), 1.0)


def check_model(candidate: str | Path, against: str | Path, images: str | Path, *, max_samples: int = 16,
                tolerances: Tolerances | None = None, trust_checkpoint: bool = False,
                pose_spec: str | None = None) -> CheckReport:
    """`pose_spec`: the registered model whose settings apply to a foreign pose ONNX (candidate or reference)
    without rtmw_edge metadata or SDK JSON; such graphs are checked through an imported copy."""
    from contextlib import ExitStack

    from .pose_models import described_model

    tol = tolerances or Tolerances()
    candidate = Path(candidate)
    with ExitStack() as stack:
        cand_run, meta = _candidate_runner(stack.enter_context(described_model(candidate, pose_spec)))
        files = list_images(images)
        x = make_inputs(meta, files, max_samples)
        ref_arg = str(against)
        if Path(ref_arg).suffix.lower() == ".onnx":
            ref_arg = str(stack.enter_context(described_model(ref_arg, pose_spec)))
        ref_run, ref_label = _reference_runner(meta, ref_arg, trust_checkpoint)
        if Path(ref_arg).suffix.lower() == ".onnx":
            ref_label = str(against)
        cand = cand_run(x)
        ref = ref_run(x)
    report = CheckReport(str(candidate), ref_label, meta["task"], len(x))

    for name, a in cand.items():
        if name not in ref:
            raise RtmwEdgeError(f"the reference has no output {name!r} (it has {', '.join(ref)})")
        b = ref[name]
        if a.shape != b.shape:
            raise RtmwEdgeError(f"output {name}: shape {list(a.shape)} vs reference {list(b.shape)}")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        scale = max(float(np.abs(b).max()), 1e-12)
        report.outputs[name] = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale)}
        if diff.max() / scale > tol.max_rel and name not in ("keypoints", "boxes"):
            report.failures.append(f"{name}: max relative difference {diff.max() / scale:.2e} > {tol.max_rel:g}")

    if meta["task"] == "detector":
        _compare_detections(meta, cand, ref, report, tol)
    else:
        _compare_keypoints(meta, cand, ref, report, tol)
    return report


def _compare_keypoints(meta, cand, ref, report: CheckReport, tol: Tolerances) -> None:
    kp_a, _ = _pose_keypoints(meta, cand)
    kp_b, sc_b = _pose_keypoints(meta, ref)
    valid = sc_b > 0
    dist = np.linalg.norm(kp_a - kp_b, axis=-1)
    d = dist[valid] if valid.any() else np.zeros(1)
    report.keypoints = {"mean_px": float(d.mean()), "p95_px": float(np.percentile(d, 95)), "max_px": float(d.max())}
    kset = KEYPOINT_SETS.get(meta.get("keypoint_set", ""))
    sigmas = np.asarray(OKS_SIGMAS.get(meta.get("keypoint_set", ""), [0.05] * kp_a.shape[1]))
    w, h = meta["input_size"]
    # area of the person in the crop: the padded box fills the crop, so its area is (w·h)/1.25²
    area = w * h / G.BBOX_PADDING ** 2
    report.keypoints["oks"] = float(oks(kp_a, kp_b, valid, sigmas, area).mean())
    if kset:
        for part, (lo, hi) in kset.parts.items():
            v = valid[:, lo:hi]
            pd = dist[:, lo:hi][v]
            report.parts[part] = {"mean_px": float(pd.mean()) if pd.size else 0.0,
                                  "oks": float(oks(kp_a[:, lo:hi], kp_b[:, lo:hi], v, sigmas[lo:hi], area).mean())}
    if report.keypoints["p95_px"] > tol.max_px_p95:
        report.failures.append(f"keypoints: p95 displacement {report.keypoints['p95_px']:.2f} px > {tol.max_px_p95:g}")
    if report.keypoints["oks"] < tol.min_oks:
        report.failures.append(f"keypoints: OKS {report.keypoints['oks']:.3f} < {tol.min_oks:g}")


def _compare_detections(meta, cand, ref, report: CheckReport, tol: Tolerances) -> None:
    thr, iou_thr, max_det = 0.3, meta.get("nms_iou", 0.6), meta.get("max_per_image", 100)
    found = total = 0
    ious = []
    for i in range(len(cand["boxes"])):
        ba, sa = G.filter_detections(cand["boxes"][i], cand["scores"][i], thr, iou_thr, max_det)
        bb, sb = G.filter_detections(ref["boxes"][i], ref["scores"][i], thr, iou_thr, max_det)
        total += len(bb)
        if len(bb) and len(ba):
            best = G.box_iou(bb, ba).max(axis=1)
            found += int((best >= 0.5).sum())
            ious.extend(best.tolist())
    recall = found / total if total else 1.0
    report.detections = {"reference_detections": total, "recall_iou50": recall,
                         "mean_iou": float(np.mean(ious)) if ious else 1.0}
    if recall < tol.min_recall:
        report.failures.append(f"detections: recall {recall:.3f} of the reference's at IoU 0.5 < {tol.min_recall:g}")
