"""Bring-your-own detector ONNX: recognise a person detector by its I/O signature, run it behind one contract.

`inspect_detector` reads a graph (no inference) and returns a `DetectorSignature`; `OnnxDetector` runs
preprocess → infer → postprocess with onnxruntime and always answers the same way: person boxes xyxy in
original-image pixels and their scores, sorted by score, after threshold and NMS.

Recognised kinds (checked in this order):

- ``project``: our own export, recognised by the `rtmw_edge` metadata with task "detector" (input size,
  mean/std, strides and the nms flag come from it). Output contract: ``boxes [B,K,4]`` xyxy in input
  pixels and ``scores [B,K]`` sigmoid person scores (found by name, else the 3-D / 2-D float outputs).
  With ``nms: false`` these are all K candidates and we threshold + NMS them. With ``nms: true`` the graph
  already ran NMS and keeps the same two outputs with a fixed K = max_per_image: kept detections first,
  empty slots carry a score ≤ 0 (0 or −1, boxes arbitrary); thresholding drops them, so no extra
  ``num_dets`` output is needed.
- ``rtmdet-rawhead``: one 4-D float input and three ``[B,H,W,5]`` NHWC outputs (channel 0 person logit,
  1..4 l,t,r,b × stride); strides = input size / H. Decoded with `geometry.decode_rtmdet`, then NMS.
- ``mmdeploy-e2e-rtmdet`` / ``mmdeploy-e2e-yolox``: outputs ``dets [B,N,5]`` (x1,y1,x2,y2,score in input
  pixels) and ``labels [B,N]`` int64, NMS inside. Told apart by the stem: YOLOX starts with a Focus
  (space-to-depth by Slice or Reshape/Transpose ops in front of a Conv with 4× the input channels) and
  takes raw 0–255 BGR; RTMDet's input goes straight into a Conv and needs BGR mean/std. Any other e2e
  stem is refused (its preprocessing cannot be guessed). A dynamic H/W input runs at 320×320 unless
  `input_size` is given: on the COCO test photos RTMDet-nano finds every GT person at 320 with the best
  mean IoU (see tests/test_detectors.py).
- ``yolox-raw``: one output ``[B,A,5+C]`` with A = Σ (in/s)² over strides 8/16/32: per anchor dx, dy,
  log w, log h, objectness and C class probabilities (both already sigmoid). xy = (d + grid)·stride,
  wh = exp(·)·stride; person score = objectness · p(class 0). Raw 0–255 BGR, pad 114.

Anything else raises `UnknownDetectorError` (one line naming the inputs/outputs seen); a pose model
(our metadata task pose2d/pose3d, or simcc_x/simcc_y outputs) raises it too, saying so.

Images: uint8 H×W×3 BGR. Grayscale H×W or H×W×1 is converted with cv2.cvtColor(GRAY2BGR), BGRA H×W×4
loses its alpha channel, uint16 is scaled to uint8 by ``>> 8`` (keeps the top byte); anything else raises
`RtmwEdgeError`. Only batch 1 is used (the mmdeploy e2e graphs fail with batch 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import RtmwEdgeError
from .geometry import (
    Letterbox,
    decode_rtmdet,
    filter_detections,
    grid_priors,
    letterbox,
    normalize_to_nchw,
    valid_boxes,
)
from .onnx_meta import read_metadata
from .zoo import DET_MEAN_BGR, DET_STD_BGR

KINDS = ("project", "rtmdet-rawhead", "mmdeploy-e2e-rtmdet", "mmdeploy-e2e-yolox", "yolox-raw")
DEFAULT_DYNAMIC_SIZE = (320, 320)  # (w, h) for a graph whose input H/W are dynamic
RAW_MEAN, RAW_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # YOLOX: raw 0-255 values
_FOCUS_OPS = {"Slice", "Reshape", "Transpose", "SpaceToDepth", "Concat", "Identity"}
_FLOAT_TYPES = {1, 10, 11}  # onnx FLOAT, FLOAT16, DOUBLE
_INT_TYPES = {6, 7}  # INT32, INT64


class UnknownDetectorError(RtmwEdgeError):
    """An ONNX graph whose signature matches none of the supported detector kinds."""


@dataclass(frozen=True)
class DetectorSignature:
    kind: str                                  # one of KINDS
    input_name: str
    input_size: tuple[int, int]                # (w, h) the frame is letterboxed to
    mean: tuple[float, float, float]           # BGR order (the network's order if swap_rb); (0,0,0) for raw 0-255
    std: tuple[float, float, float]            # BGR order (the network's order if swap_rb); (1,1,1) for raw 0-255
    swap_rb: bool = False                      # the detectors here all take BGR (a project "rgb" one sets it)
    pad_value: int = 114
    strides: tuple[int, ...] = (8, 16, 32)
    has_nms: bool = False                      # the graph already ran NMS
    person_class: int = 0


# --------------------------------------------------------------------------- graph inspection
@dataclass(frozen=True)
class _Tensor:
    name: str
    elem_type: int
    shape: tuple  # ints for static dims, None for dynamic ones (None for the whole shape if unknown)

    def describe(self) -> str:
        import onnx

        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).name if self.elem_type else "?"
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {dtype}[{dims}]"


def _value_infos(values, exclude=()) -> list[_Tensor]:
    out = []
    for v in values:
        if v.name in exclude:  # IR < 4 lists initializers among the inputs
            continue
        tt = v.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                          for d in tt.shape.dim)
        out.append(_Tensor(v.name, tt.elem_type, shape))
    return out


def _load(path_or_model, role: str = "detector"):
    """(ModelProto, display name) of a path or proto; one-line RtmwEdgeError for a missing / non-ONNX file."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "<model>"
    path = Path(path_or_model)
    if not path.is_file():
        raise RtmwEdgeError(f"{role} ONNX not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise RtmwEdgeError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise RtmwEdgeError(f"{path} is not a readable ONNX model (no graph)")
    return model, str(path)


def _unknown(where: str, inputs, outputs, why: str = "") -> UnknownDetectorError:
    seen = f"inputs [{'; '.join(t.describe() for t in inputs)}], outputs [{'; '.join(t.describe() for t in outputs)}]"
    reason = f" ({why})" if why else ""
    return UnknownDetectorError(f"{where}: unrecognised detector ONNX{reason}: {seen}; supported kinds: "
                                f"{', '.join(KINDS)}")


def _resolve_size(image_input: _Tensor, input_size, fallback) -> tuple[int, int]:
    """(w, h): the static input size, else `input_size`, else `fallback`; a clash with a static size fails."""
    h, w = image_input.shape[2], image_input.shape[3]
    if input_size is not None:
        size = (int(input_size[0]), int(input_size[1]))
        if (w is not None and w != size[0]) or (h is not None and h != size[1]):
            raise RtmwEdgeError(f"input_size {size} does not fit the graph's static input "
                                f"{image_input.describe()} (w={w}, h={h})")
        return size
    if w is not None and h is not None:
        return (w, h)
    return (int(fallback[0]), int(fallback[1]))


def _constant_shape(model, name: str):
    """Shape of an initializer / Constant output (through Identity nodes), or None."""
    from onnx import numpy_helper

    producers = {o: n for n in model.graph.node for o in n.output}
    for _ in range(8):
        for init in model.graph.initializer:
            if init.name == name:
                return tuple(init.dims)
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return tuple(numpy_helper.to_array(attr.t).shape)
        return None
    return None


def _stem(model, input_name: str, channels: int) -> str:
    """'conv' (input straight into a Conv), 'focus' (space-to-depth ops, then a Conv on 4×C) or 'other'."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    first = [n for n in consumers.get(input_name, []) if n.op_type != "Shape"]  # dynamic graphs read the shape
    if first and all(n.op_type == "Conv" for n in first):
        return "conv"
    if not first or not all(n.op_type in _FOCUS_OPS for n in first):
        return "other"
    frontier, seen = [n for n in first], set()
    for _ in range(32):  # breadth-first through the data-movement ops, to the first Conv
        nxt = []
        for node in frontier:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Conv":
                shape = _constant_shape(model, node.input[1])
                return "focus" if shape is not None and len(shape) == 4 and shape[1] == 4 * channels else "other"
            if node.op_type not in _FOCUS_OPS:
                return "other"
            for out in node.output:
                nxt.extend(consumers.get(out, []))
        if not nxt:
            return "other"
        frontier = nxt
    return "other"


def project_signature(meta: dict, input_name: str, input_size: tuple[int, int]) -> DetectorSignature:
    """The signature of one of our own exported detectors, from its metadata."""
    swap = str(meta.get("color", "bgr")).lower() == "rgb"  # mean/std given in RGB order → feed RGB
    return DetectorSignature(
        kind="project", input_name=input_name, input_size=tuple(input_size),
        mean=tuple(float(v) for v in meta.get("mean", DET_MEAN_BGR)),
        std=tuple(float(v) for v in meta.get("std", DET_STD_BGR)),
        swap_rb=swap, pad_value=int(meta.get("pad_value", 114)),
        strides=tuple(int(s) for s in meta.get("strides", (8, 16, 32))), has_nms=bool(meta.get("nms", False)))


def inspect_detector(path_or_model, input_size: tuple[int, int] | None = None, *,
                     name: str | None = None) -> DetectorSignature:
    """Recognise a detector ONNX (path or onnx.ModelProto) from its inputs, outputs and stem; no inference.

    `input_size` (w, h) sets the letterbox size of a graph with dynamic H/W (default 320×320); for a static
    graph it must equal the graph's size.
    """
    model, where = _load(path_or_model)
    where = name or where
    initializers = {i.name for i in model.graph.initializer}
    inputs = _value_infos(model.graph.input, exclude=initializers)
    outputs = _value_infos(model.graph.output)
    out_names = {o.name for o in outputs}

    meta = read_metadata(model)
    if meta is not None and meta.get("task") in ("pose2d", "pose3d"):
        raise UnknownDetectorError(f"{where}: this is a pose model (rtmw_edge metadata task '{meta['task']}'), "
                                   f"not a person detector; supported detector kinds: {', '.join(KINDS)}")
    if {"simcc_x", "simcc_y"} & out_names:
        raise UnknownDetectorError(f"{where}: this is a pose model (outputs {', '.join(sorted(out_names))}), "
                                   f"not a person detector; supported detector kinds: {', '.join(KINDS)}")

    images = [t for t in inputs if t.shape is not None and len(t.shape) == 4 and t.elem_type in _FLOAT_TYPES]
    if len(inputs) != 1 or len(images) != 1 or images[0].shape[1] not in (3, None):
        raise _unknown(where, inputs, outputs, "expected one float N×3×H×W input")
    image = images[0]

    if meta is not None and meta.get("task") == "detector":
        meta_size = meta.get("input_size") or DEFAULT_DYNAMIC_SIZE
        return project_signature(meta, image.name, _resolve_size(image, input_size, meta_size))

    shapes = [o.shape for o in outputs]
    # RTMDet raw head: three NHWC [B, H, W, 5] maps
    if len(outputs) == 3 and all(s is not None and len(s) == 4 and s[3] == 5 for s in shapes):
        size = _resolve_size(image, input_size, DEFAULT_DYNAMIC_SIZE)
        heights = sorted((s[1] for s in shapes), key=lambda h: -(h or 0))
        if all(h is not None for h in heights):
            strides = tuple(size[1] // h for h in heights)
            if any(size[1] != s * h for s, h in zip(strides, heights, strict=True)):
                raise _unknown(where, inputs, outputs, f"map heights {heights} do not divide input height {size[1]}")
        else:
            strides = (8, 16, 32)
        return DetectorSignature(kind="rtmdet-rawhead", input_name=image.name, input_size=size,
                                 mean=DET_MEAN_BGR, std=DET_STD_BGR, strides=strides)

    # MMDeploy end-to-end: dets [B, N, 5] + labels [B, N]
    if len(outputs) == 2:
        dets = next((o for o in outputs if o.elem_type in _FLOAT_TYPES and o.shape is not None and len(o.shape) == 3
                     and o.shape[2] in (5, None) and (o.shape[2] == 5 or o.name == "dets")), None)
        labels = next((o for o in outputs if o.elem_type in _INT_TYPES and o.shape is not None
                       and len(o.shape) == 2), None)
        if dets is not None and labels is not None:
            stem = _stem(model, image.name, 3)
            size = _resolve_size(image, input_size, DEFAULT_DYNAMIC_SIZE)
            if stem == "focus":
                return DetectorSignature(kind="mmdeploy-e2e-yolox", input_name=image.name, input_size=size,
                                         mean=RAW_MEAN, std=RAW_STD, has_nms=True)
            if stem == "conv":
                return DetectorSignature(kind="mmdeploy-e2e-rtmdet", input_name=image.name, input_size=size,
                                         mean=DET_MEAN_BGR, std=DET_STD_BGR, has_nms=True)
            raise _unknown(where, inputs, outputs, "dets/labels graph whose stem is neither a Conv (RTMDet) "
                                                   "nor a Focus (YOLOX)")

    # YOLOX raw: one [B, A, 5 + C] output with A = sum over strides of (in/s)^2
    if len(outputs) == 1 and shapes[0] is not None and len(shapes[0]) == 3 and (shapes[0][2] or 0) > 5:
        size = _resolve_size(image, input_size, (416, 416))
        strides = (8, 16, 32)
        anchors = len(grid_priors((size[1], size[0]), strides))
        if shapes[0][1] in (anchors, None):
            return DetectorSignature(kind="yolox-raw", input_name=image.name, input_size=size,
                                     mean=RAW_MEAN, std=RAW_STD, strides=strides)
        raise _unknown(where, inputs, outputs, f"{shapes[0][1]} anchors, YOLOX at {size[0]}x{size[1]} has {anchors}")

    raise _unknown(where, inputs, outputs)


# --------------------------------------------------------------------------- images
def as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 BGR from BGR / grayscale (H×W, H×W×1) / BGRA (H×W×4), uint8 or uint16 (>> 8)."""
    if not isinstance(image, np.ndarray):
        raise RtmwEdgeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise RtmwEdgeError(f"image must be uint8 (or uint16) H×W×3 BGR, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise RtmwEdgeError(f"image must be uint8 H×W×3 BGR (or gray / BGRA), got shape {image.shape}")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- runtime
class OnnxDetector:
    """preprocess → infer → postprocess, readable top to bottom (rtmlib style)."""

    def __init__(self, path, *, input_size=None, score_threshold: float = 0.3, nms_iou: float = 0.6,
                 max_detections: int = 100, providers=None, session_options=None) -> None:
        import onnxruntime as ort

        model, self.name = _load(path)  # a path, or an onnx.ModelProto
        self.signature = inspect_detector(model, input_size, name=self.name)
        source = self.name if isinstance(path, (str, Path)) else model.SerializeToString()  # path: external data ok
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        try:
            self.session = ort.InferenceSession(source, sess_options=session_options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise RtmwEdgeError(f"{self.name}: onnxruntime cannot load the detector: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._input_dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
        self._output_names = [o.name for o in self.session.get_outputs()]
        batch = self.session.get_inputs()[0].shape[0]
        # frames per call: our own exports take any batch (dynamic axis 0, every output per item); foreign graphs
        # one (mmdeploy's end-to-end RTMDet fails at batch 2 inside its NMS; the raw heads here are static)
        self.max_batch = None if self.signature.kind == "project" and not isinstance(batch, int) else 1

    # -- the three steps
    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        sig = self.signature
        canvas, lb = letterbox(as_bgr_uint8(image_bgr), sig.input_size, sig.pad_value)
        return normalize_to_nchw(canvas, sig.mean, sig.std, sig.swap_rb), lb

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.signature.input_name: tensor.astype(self._input_dtype, copy=False)})

    def postprocess(self, outputs, letterbox: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self._decode(outputs)
        if self.signature.has_nms:  # the graph ran NMS: threshold (empty slots score ≤ 0), sort, cap
            keep = np.flatnonzero((scores > self.score_threshold) & valid_boxes(boxes))
            keep = keep[np.argsort(-scores[keep], kind="stable")][: self.max_detections]
            boxes, scores = boxes[keep], scores[keep]
        else:
            boxes, scores = filter_detections(boxes, scores, self.score_threshold, self.nms_iou,
                                              self.max_detections)
        boxes = letterbox.boxes_to_image(boxes)
        image_w, image_h = letterbox.width / letterbox.scale_x, letterbox.height / letterbox.scale_y
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, round(image_w))
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, round(image_h))
        inside = valid_boxes(boxes)  # a box wholly outside the frame is clipped to zero area: no person
        return boxes[inside].astype(np.float32), scores[inside].astype(np.float32)

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor, lb = self.preprocess(image_bgr)
        return self.postprocess(self.infer(tensor), lb)

    def detect_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several frames in one engine call (at most `max_batch`; None: any number): each frame's (boxes,
        scores), as `__call__` gives them one by one."""
        if self.max_batch is not None and len(images) > self.max_batch:
            raise RtmwEdgeError(f"{self.name} takes at most {self.max_batch} frame(s) per call, got {len(images)}")
        prepared = [self.preprocess(image) for image in images]
        outputs = self.infer(np.concatenate([tensor for tensor, _ in prepared]))
        return [self.postprocess([o[i:i + 1] for o in outputs], lb) for i, (_, lb) in enumerate(prepared)]

    def raw_boxes(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, Letterbox]:
        """The detector contract before filtering: person boxes [N,4] in input pixels and scores [N]."""
        tensor, lb = self.preprocess(image_bgr)
        boxes, scores = self._decode(self.infer(tensor))
        return boxes, scores, lb

    # -- per-kind decoding into the common contract (batch item 0)
    def _decode(self, outputs) -> tuple[np.ndarray, np.ndarray]:
        kind = self.signature.kind
        named = dict(zip(self._output_names, outputs, strict=True))
        if kind == "project":
            boxes = named.get("boxes", next((o for o in outputs if o.ndim == 3), None))
            scores = named.get("scores", next((o for o in outputs if o.ndim == 2), None))
            if boxes is None or scores is None:
                raise RtmwEdgeError(f"{self.name}: a project detector must output boxes [B,K,4] and scores [B,K]")
            return boxes[0].reshape(-1, 4), scores[0].reshape(-1)
        if kind == "rtmdet-rawhead":
            levels = sorted(outputs, key=lambda o: -o.shape[1])  # finest map (smallest stride) first
            cls = [o[..., :1].transpose(0, 3, 1, 2) for o in levels]
            reg = [o[..., 1:].transpose(0, 3, 1, 2) for o in levels]
            boxes, scores = decode_rtmdet(cls, reg, self.signature.strides)
            return boxes[0], scores[0]
        if kind in ("mmdeploy-e2e-rtmdet", "mmdeploy-e2e-yolox"):
            dets = next(o for o in outputs if o.ndim == 3)
            labels = next(o for o in outputs if o.ndim == 2)
            person = labels[0] == self.signature.person_class
            return dets[0, person, :4], dets[0, person, 4]
        if kind == "yolox-raw":
            return self._decode_yolox(outputs[0][0])
        raise RtmwEdgeError(f"no decoder for detector kind {kind!r}")

    def _decode_yolox(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """YOLOX raw [A, 5+C] → xyxy boxes in input pixels and person scores (objectness · p(person))."""
        w, h = self.signature.input_size
        strides = self.signature.strides
        points = grid_priors((h, w), strides)  # (col·s, row·s) = grid · stride
        per_level = [(-(-h // s)) * (-(-w // s)) for s in strides]
        stride = np.repeat(np.asarray(strides, np.float32), per_level)[:, None]
        if len(points) != len(pred):
            raise RtmwEdgeError(f"{self.name}: YOLOX output has {len(pred)} anchors, expected {len(points)}")
        center = pred[:, :2] * stride + points
        size = np.exp(pred[:, 2:4]) * stride
        boxes = np.concatenate([center - size / 2, center + size / 2], axis=1).astype(np.float32)
        scores = (pred[:, 4] * pred[:, 5 + self.signature.person_class]).astype(np.float32)
        return boxes, scores


class EngineDetector(OnnxDetector):
    """A detector behind any `backends.Engine` (a TensorRT engine built from one of our exports, or a model on a
    Triton server): the same preprocess → infer → postprocess. The signature is read from the engine's metadata,
    or given (`signature`, as `inspect_detector` read it from the ONNX the engine runs: foreign detectors too)."""

    def __init__(self, engine, *, signature: DetectorSignature | None = None, score_threshold: float = 0.3,
                 nms_iou: float = 0.6, max_detections: int = 100) -> None:
        meta = engine.metadata
        self.name = str(engine.path)
        if signature is None and (not meta or meta.get("task") != "detector"):
            task = meta.get("task") if meta else "unknown"
            raise UnknownDetectorError(f"{self.name}: not a detector built by rtmw-edge (task {task}); foreign "
                                       "detectors run through ONNX Runtime")
        self.engine = engine
        self.signature = signature or project_signature(meta, engine.input_name, tuple(meta["input_size"]))
        self.score_threshold, self.nms_iou, self.max_detections = float(score_threshold), float(nms_iou), \
            int(max_detections)
        self._input_dtype = np.float32
        self._output_names = list(engine.output_names)
        fixed = engine.input_dims[0] if isinstance(engine.input_dims[0], int) else None
        self.max_batch = engine.max_batch if self.signature.kind == "project" and fixed is None else 1

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        out = self.engine.run(tensor.astype(np.float32, copy=False))
        return [out[n] for n in self._output_names]
