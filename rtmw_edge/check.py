"""Fidelity check of a converted model against a reference, on real images.

`check_model(candidate, against=...)`: the candidate is an ONNX or a TensorRT engine built by
`rtmw-edge build` (run through `load_engine`, metadata from its manifest); the reference is another
ONNX file, an official checkpoint (.pth, run in PyTorch with the candidate's registered architecture) or
a registered model name (its official checkpoint is fetched). Both run on the same real photos.

- Pose models: the whole image as one person box, cropped exactly as at run time; the report gives, per
  output, the max abs/rel difference, the keypoint displacement in crop pixels and the OKS against the
  reference (per body part). The raw-output tolerance is not applied to INT8 candidates (quantisation
  changes logits by design; the keypoints judge them).
- Detectors — ours, foreign ones recognised by signature (`rtmw_edge.detectors`), the INT8 graphs
  `calibrate` makes of either, in-graph-NMS exports and engines — run through the detector contract
  (letterbox → infer → decode → threshold/NMS) on each photo, and the *kept detections* are compared:
  the recall of the reference's at IoU ≥ 0.5, their mean IoU and the largest score change. Raw outputs
  are compared (and reported) only when both graphs have the same outputs, e.g. an FP16 export against
  its FP32 twin; an `--nms` export and a plain one differ in their raw slots, not in what they keep.

Past the tolerances the check fails (the CLI exits 1).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import geometry as G
from . import signals
from .backends import ENGINE_SUFFIXES, load_engine, run_chunked
from .detectors import EngineDetector, OnnxDetector, UnknownDetectorError, project_signature
from .downloads import fetch
from .errors import RtmwEdgeError
from .export import export_graph
from .keypoints import KEYPOINT_SETS, OKS_SIGMAS
from .models import create_model
from .onnx_meta import CALIBRATION_KEY, read_metadata
from .pose_models import described_model
from .sources import IMAGE_SUFFIXES, _list_images
from .sources import read_image as read
from .zoo import get_spec

DET_THRESHOLD, DET_NMS_IOU, DET_MAX = 0.3, 0.6, 100  # the run-time defaults (PoseEstimator)


@dataclass
class Tolerances:
    max_rel: float = 1e-2        # per output: max |a − b| / max |b|
    max_px_p95: float = 1.0      # pose: 95th percentile keypoint displacement, crop pixels
    min_oks: float = 0.95        # pose: mean OKS against the reference
    min_recall: float = 1.0      # detector: reference detections recovered at IoU ≥ 0.5
    min_iou: float = 0.85        # detector: mean IoU of the recovered detections


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
    int8: bool = False           # the candidate is an INT8 graph (from `calibrate`)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def list_images(source: str | Path) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = _list_images(path)
    elif path.is_file():
        files = [path]
    else:
        raise RtmwEdgeError(f"no such image file or folder: {path}")
    if not files:
        raise RtmwEdgeError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def read_image(path: Path) -> np.ndarray:
    try:
        return read(path)
    except RtmwEdgeError as exc:
        raise RtmwEdgeError(f"cannot read image {exc}") from None


def make_inputs(meta: dict, images: list[Path], max_samples: int) -> np.ndarray:
    """Pose model inputs from real photos (the whole photo as one person), cropped exactly as at run time."""
    w, h = meta["input_size"]
    swap_rb = meta.get("color", "rgb") == "rgb"
    batch = []
    for path in images[:max_samples]:
        signals.check()
        image = read_image(path)
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

    def infer(x: np.ndarray) -> list[np.ndarray]:
        try:
            return session.run(None, {input_name: x})
        except Exception as exc:  # onnxruntime's own error types: wrong input size or kind of model
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise RtmwEdgeError(f"{path.name}: onnxruntime cannot run it on these inputs ({detail[:200]})") from None

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(fixed_batch, int) and fixed_batch != x.shape[0]:  # static batch: one chunk at a time
            parts = [infer(x[i:i + fixed_batch]) for i in range(0, len(x), fixed_batch)]
            return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}
        return dict(zip(names, infer(x)))

    return run


def _torch_runner(meta: dict, checkpoint: Path, trust: bool):
    """The registered PyTorch model with official weights, post-processed like the candidate graph."""
    import torch

    spec = get_spec(meta["name"])
    model = create_model(spec.name, checkpoint, trust_checkpoint=trust)
    graph, _, _ = export_graph(model, spec, decode=bool(meta.get("decoded")), flip_test=bool(meta.get("flip_test")),
                               topk=int(meta.get("topk") or 1000))
    names = meta["outputs"]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = graph.eval()(torch.from_numpy(x))
        return {n: o.numpy() for n, o in zip(names, outs)}

    return run


def _engine(path: Path, stack: ExitStack):
    """A TensorRT engine for the check, closed when STACK closes (its contexts, stream and buffers are
    released explicitly, not by the garbage collector)."""
    engine = load_engine(path, "tensorrt")
    stack.callback(engine.close)
    return engine


def _candidate_runner(candidate: Path, stack: ExitStack):
    """The pose candidate's runner and metadata: an ONNX (ONNX Runtime, metadata inside) or a TensorRT engine
    (`load_engine`, metadata from the manifest `rtmw-edge build` writes beside it)."""
    if candidate.suffix.lower() in ENGINE_SUFFIXES:
        engine = _engine(candidate, stack)
        if engine.metadata is None:
            raise RtmwEdgeError(f"{candidate} has no manifest with rtmw_edge metadata beside it: build it with "
                                "`rtmw-edge build MODEL.onnx`")
        return (lambda x: run_chunked(engine, x)), engine.metadata
    meta = read_metadata(candidate)
    if meta is None:
        raise RtmwEdgeError(f"{candidate} has no rtmw_edge metadata and is not a detector this toolkit "
                            "recognises: export it with `rtmw-edge export` first")
    return _ort_runner(candidate), meta


def _reference_runner(meta: dict, against: str, trust: bool):
    path = Path(against)
    if path.suffix.lower() == ".onnx":
        ref_meta = read_metadata(path)
        if ref_meta is None and _open_detector(path, role="probe", stack=None) is not None:
            raise RtmwEdgeError(f"{path} is a person detector: it does not describe the same model as the candidate "
                                f"({meta['name']}, {meta['task']})")
        if ref_meta and (ref_meta.get("task") != meta["task"] or ref_meta.get("input_size") != meta["input_size"]):
            raise RtmwEdgeError(f"{path} ({ref_meta.get('name')}, {ref_meta.get('task')}) does not describe the same "
                                f"model as the candidate ({meta['name']}, {meta['task']})")
        return _ort_runner(path), str(path)
    checkpoint, label = _reference_checkpoint(meta, against)
    return _torch_runner(meta, checkpoint, trust), label


def _reference_checkpoint(meta: dict, against: str) -> tuple[Path, str]:
    """A checkpoint file given as the reference, or a registered name: its official checkpoint (fetched)."""
    path = Path(against)
    if path.suffix.lower() in (".pth", ".pt", ".ckpt") or path.is_file():
        return path, str(path)

    spec = get_spec(against)
    if spec.name != meta["name"]:
        raise RtmwEdgeError(f"the candidate is {meta['name']}, not {spec.name}")
    ckpt = fetch(spec.checkpoint_url, hash_prefix=spec.hash_prefix)
    return ckpt, f"{spec.name} ({ckpt.name})"


def _pose_keypoints(meta: dict, outs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if "keypoints" in outs:
        return outs["keypoints"], outs["scores"]
    return G.simcc_decode(outs["simcc_x"], outs["simcc_y"], meta.get("simcc_split_ratio", 2.0))


def check_model(candidate: str | Path, against: str | Path, images: str | Path, *, max_samples: int = 16,
                tolerances: Tolerances | None = None, trust_checkpoint: bool = False,
                pose_spec: str | None = None) -> CheckReport:
    """`pose_spec`: the registered model whose settings apply to a foreign pose ONNX (candidate or reference)
    without rtmw_edge metadata or SDK JSON; such graphs are checked through an imported copy."""
    tol = tolerances or Tolerances()
    candidate = Path(candidate)
    if candidate.is_dir():
        raise RtmwEdgeError(f"{candidate} is a folder: give the converted model file")
    if not candidate.is_file():
        raise RtmwEdgeError(f"model file not found: {candidate}")
    files = list_images(images)[:max_samples]
    with ExitStack() as stack:  # engines closed at the end; a foreign pose graph runs as an imported copy
        detector = _open_detector(candidate, stack=stack)
        if detector is not None:
            return _check_detector(candidate, detector, str(against), files, tol, trust_checkpoint, stack)
        cand_run, meta = _candidate_runner(stack.enter_context(described_model(candidate, pose_spec)), stack)
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
    report.int8 = meta.get("precision") == "int8"
    _compare_outputs(cand, ref, report, tol, judge=not report.int8)
    _compare_keypoints(meta, cand, ref, report, tol)
    return report


def _compare_outputs(cand: dict[str, np.ndarray], ref: dict[str, np.ndarray], report: CheckReport,
                     tol: Tolerances, judge: bool) -> None:
    """Max abs / rel difference per output; past `max_rel` a failure when `judge` (not for INT8 candidates,
    whose logits differ by design; nor for coordinates, which keypoints/detections judge)."""
    for name, a in cand.items():
        if name not in ref:
            raise RtmwEdgeError(f"the reference has no output {name!r} (it has {', '.join(ref)})")
        b = ref[name]
        if a.shape != b.shape:
            raise RtmwEdgeError(f"output {name}: shape {list(a.shape)} vs reference {list(b.shape)}")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        scale = max(float(np.abs(b).max()), 1e-12)
        report.outputs[name] = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale)}
        if judge and diff.max() / scale > tol.max_rel and name not in ("keypoints", "boxes"):
            report.failures.append(f"{name}: max relative difference {diff.max() / scale:.2e} > {tol.max_rel:g}")


# --------------------------------------------------------------------------- detectors: kept detections
def _calibration_info(path: Path) -> dict:
    """What `calibrate` recorded in a foreign graph's INT8 copy (empty for other graphs)."""
    import json

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CALIBRATION_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return {}
    return {}


def _open_detector(path: Path, input_size: tuple[int, int] | None = None, role: str = "candidate", *,
                   stack: ExitStack | None):
    """The detector behind `path` (ONNX of any recognised kind, or an engine of ours) run through the
    detector contract, or None when `path` is a pose model. An engine is closed with STACK (at once when it is
    not a detector); without a stack only ONNX files are opened."""
    options = {"score_threshold": DET_THRESHOLD, "nms_iou": DET_NMS_IOU, "max_detections": DET_MAX}
    if path.suffix.lower() in ENGINE_SUFFIXES:
        if stack is None:
            raise RtmwEdgeError(f"{path.name}: a TensorRT engine cannot be probed here")
        engine = load_engine(path, "tensorrt")
        if not engine.metadata or engine.metadata.get("task") != "detector":
            engine.close()
            return None
        stack.callback(engine.close)
        return EngineDetector(engine, **options)
    meta = read_metadata(path)
    if meta is not None and meta.get("task") in ("pose2d", "pose3d"):
        return None
    try:
        return OnnxDetector(path, input_size=input_size, **options)
    except UnknownDetectorError as exc:
        if role == "probe" or (meta is None and role == "candidate" and "pose model" in str(exc)):
            return None  # a foreign pose graph: the pose path says what it needs
        if role == "candidate":
            raise
        raise RtmwEdgeError(f"--against {path.name}: not a detector like the candidate ({exc})") from None


class _TorchDetector(OnnxDetector):
    """One of our registered detectors in PyTorch (official weights) behind the detector contract, with
    the candidate's metadata: its boxes/scores before NMS, decoded like the plain export's."""

    def __init__(self, meta: dict, checkpoint: Path, trust: bool) -> None:
        plain = {**meta, "nms": False, "outputs": ["boxes", "scores"]}
        self._run = _torch_runner(plain, checkpoint, trust)
        self.name = str(checkpoint)
        self.signature = project_signature(plain, "input", tuple(meta["input_size"]))
        self.score_threshold, self.nms_iou, self.max_detections = DET_THRESHOLD, DET_NMS_IOU, DET_MAX
        self._input_dtype, self._output_names = np.float32, ["boxes", "scores"]

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        out = self._run(tensor)
        return [out["boxes"], out["scores"]]


def _reference_detector(candidate_meta: dict | None, against: str, input_size, trust: bool, stack: ExitStack):
    path = Path(against)

    if path.suffix.lower() == ".onnx" or path.suffix.lower() in ENGINE_SUFFIXES:
        if not path.is_file():
            raise RtmwEdgeError(f"--against: model file not found: {path}")
        ref = _open_detector(path, input_size, role="reference", stack=stack)
        if ref is None:
            raise RtmwEdgeError(f"{path} is a pose model: the candidate is a detector")
        return ref, str(path)
    if candidate_meta is None or candidate_meta.get("task") != "detector":
        raise RtmwEdgeError("a foreign detector is checked against another detector file (.onnx or .engine), not "
                            f"{against}")
    checkpoint, label = _reference_checkpoint(candidate_meta, against)
    return _TorchDetector(candidate_meta, checkpoint, trust), label


def _check_detector(candidate: Path, cand, against: str, files: list[Path], tol: Tolerances,
                    trust: bool, stack: ExitStack) -> CheckReport:
    meta = getattr(cand, "engine", None).metadata if hasattr(cand, "engine") else read_metadata(candidate)
    calibrated = _calibration_info(candidate) if candidate.suffix.lower() == ".onnx" else {}
    size = calibrated.get("detector_signature", {}).get("input_size")
    if size is not None and tuple(size) != tuple(cand.signature.input_size):
        cand = _open_detector(candidate, tuple(size), stack=stack)
    ref, ref_label = _reference_detector(meta, against, tuple(cand.signature.input_size), trust, stack)
    int8 = (meta or calibrated).get("precision") == "int8"
    same_layout = (cand.signature == ref.signature and cand._output_names == ref._output_names)
    report = CheckReport(str(candidate), ref_label, "detector", len(files), int8=int8)
    raw_cand: dict[str, list[np.ndarray]] = {}
    raw_ref: dict[str, list[np.ndarray]] = {}
    found = total = extra = 0
    ious, score_diffs = [], []
    for path in files:
        signals.check()  # SIGTERM / Ctrl-C between photos
        image = read_image(path)
        tensor_c, lb_c = cand.preprocess(image)
        out_c = cand.infer(tensor_c)
        tensor_r, lb_r = (tensor_c, lb_c) if same_layout else ref.preprocess(image)
        out_r = ref.infer(tensor_r)
        if same_layout:
            for name, a, b in zip(cand._output_names, out_c, out_r):
                raw_cand.setdefault(name, []).append(a)
                raw_ref.setdefault(name, []).append(b)
        boxes_c, scores_c = cand.postprocess(out_c, lb_c)
        boxes_r, scores_r = ref.postprocess(out_r, lb_r)
        total += len(boxes_r)
        if len(boxes_r) and len(boxes_c):
            iou = G.box_iou(boxes_r, boxes_c)
            best, match = iou.max(axis=1), iou.argmax(axis=1)
            hit = best >= 0.5
            found += int(hit.sum())
            ious.extend(best[hit].tolist())
            score_diffs.extend(np.abs(scores_r[hit] - scores_c[match[hit]]).tolist())
            extra += int((iou.max(axis=0) < 0.5).sum())
        else:
            extra += len(boxes_c)
    comparable = same_layout and all(a.shape == b.shape for n in raw_cand for a, b in zip(raw_cand[n], raw_ref[n]))
    if comparable:  # e.g. not end-to-end graphs, whose number of kept boxes differs between the two
        _compare_outputs({n: np.concatenate([a.ravel() for a in v]) for n, v in raw_cand.items()},
                         {n: np.concatenate([b.ravel() for b in v]) for n, v in raw_ref.items()}, report, tol,
                         judge=not int8)
    recall = found / total if total else 1.0
    mean_iou = float(np.mean(ious)) if ious else 1.0
    report.detections = {"reference_detections": total, "recall_iou50": recall, "mean_iou": mean_iou,
                         "extra_detections": extra, "max_score_diff": max(score_diffs, default=0.0)}
    if recall < tol.min_recall:
        report.failures.append(f"detections: recall {recall:.3f} of the reference's at IoU 0.5 < {tol.min_recall:g}")
    if mean_iou < tol.min_iou:
        report.failures.append(f"detections: mean IoU {mean_iou:.3f} < {tol.min_iou:g}")
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
    report.keypoints["oks"] = float(G.oks(kp_a, kp_b, valid, sigmas, area).mean())
    if kset:
        for part, (lo, hi) in kset.parts.items():
            v = valid[:, lo:hi]
            pd = dist[:, lo:hi][v]
            report.parts[part] = {"mean_px": float(pd.mean()) if pd.size else 0.0,
                                  "oks": float(G.oks(kp_a[:, lo:hi], kp_b[:, lo:hi], v, sigmas[lo:hi], area).mean())}
    if report.keypoints["p95_px"] > tol.max_px_p95:
        report.failures.append(f"keypoints: p95 displacement {report.keypoints['p95_px']:.2f} px > {tol.max_px_p95:g}")
    if report.keypoints["oks"] < tol.min_oks:
        report.failures.append(f"keypoints: OKS {report.keypoints['oks']:.3f} < {tol.min_oks:g}")
