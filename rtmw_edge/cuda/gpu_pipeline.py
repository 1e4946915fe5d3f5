"""The CUDA-stream pipeline: the whole frame on the GPU — upload → letterbox → detector → select → crops →
pose → decode → results — with the same results (`FrameResult`) as the CPU pipeline.

Two objects, as the CPU side has them: `GpuPoseModel` holds what every camera shares (the engines, the compiled
kernels, the detector contract and the pose model's description, the buffer plan); `GpuPoseStream` holds one
camera's state — two frame slots, each with its own CUDA stream, events, device buffers and one execution
context per engine (TensorRT: never two streams on one context), CUDA graphs, the tracker. `GpuPoseEstimator`
is a model with one stream (the single-camera API: `estimator(image)` and `estimator.stream(frames)`).

Per frame, on its slot's stream (nothing waits on the host in between):

    H2D frame (pinned; zero-copy mapped memory on an integrated GPU) → letterbox_bgr_to_nchw → detector →
    [rtmdet_rawhead_decode] → detector_select → D2H header (16 bytes) → event `counted`
    ── host: `counted.synchronize()`, n = header[0]: the one read between detector and pose ──
    per chunk of the pose engine's max batch: crop_persons_bgr_to_nchw → pose engine → decode, each chunk's
    buffers 256-byte aligned → D2H boxes, scores, keypoints [n,K,3] (+ 3D) → event `done`

Rules kept here (docs/gpu-runtime.md; the emulated runtime of tests/emulated_cuda.py checks each): every host
read of results follows the wait that orders it; a slot is reused only after its frame was collected; frames on
the GPU are ordered after their producer's stream; CUDA graphs are captured only right after an eager enqueue of
exactly their shapes, keyed by everything they bake in (frame buffer, size, person count, camera), bounded
(LRU), and never hold profiling events; each public entry makes the pipeline's device current in the calling
thread. Engines follow `backends.device.DeviceEngine` (TensorRT engines from `rtmw-edge build`, the PyTorch
path, or any object with those methods).

Detectors: the project's own exports (kind "project": boxes [B,K,4] + scores [B,K]) and RTMDet raw-head
graphs; other kinds stay on the CPU pipeline (one clear line says so). Pose models need the project
metadata; host-side flip test is not done here (export the pose model with --flip-test instead).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import geometry as G
from ..backends import availability, load_device_engine
from ..detectors import as_bgr_uint8, inspect_detector
from ..errors import RtmwEdgeError, UsageError
from ..export import POSE_OUTPUTS
from ..pipeline import pose_info, resolve_model
from ..pose_models import pose_metadata
from ..results import FrameResult, Person
from ..streams import FrameTail
from ..zoo import DET_MEAN_BGR, DET_STD_BGR
from . import kernels as KK
from . import runtime as R

SLOTS = 2
FRAME_RESERVE = 1920 * 1080 * 3   # frame buffers start at 1080p BGR
GPU_DETECTOR_KINDS = ("project", "rtmdet-rawhead")
STAGES = ("upload", "letterbox", "detector", "select", "count_wait", "crops", "pose", "decode", "download",
          "pose_segment")
GRAPHS_PER_SLOT = 16              # captured graphs kept per frame slot (least recently used out)
LEGACY_STREAM = 0                 # cudaStreamLegacy: the producer assumed for a DeviceFrame that names none


@dataclass(frozen=True)
class DetectorConfig:
    """How the GPU pipeline feeds and reads a detector engine."""

    kind: str                              # project | rtmdet-rawhead
    input_size: tuple[int, int]            # (w, h)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    swap_rb: bool = False
    pad_value: int = 114
    has_nms: bool = False                  # project graphs exported with --nms (suppressed slots score 0)
    boxes_output: str | None = None        # project
    scores_output: str | None = None
    levels: tuple[tuple[str, int], ...] = ()  # rawhead: (output name, stride), finest map first


@dataclass(frozen=True)
class DeviceFrame:
    """A uint8 BGR frame already on the GPU (interop: a decoder's, CuPy's or PyTorch's buffer).

    `ptr`: device pointer (or any object `runtime.as_device_pointer` understands); `pitch`: bytes per row
    (default width·3); `stream`: the producer's stream, waited on through an event (no host wait) before the
    frame is read. Without `stream`, the `stream` field of the object's `__cuda_array_interface__` is used (None
    there means the producer promises the data is ready); without either, the legacy default stream — which the
    pipeline's non-blocking streams would not otherwise wait for. The buffer must stay valid and unchanged until
    the frame's result has been returned (the crop kernel reads it late).
    """

    ptr: object
    width: int
    height: int
    pitch: int | None = None
    stream: object = None
    index: int = 0
    timestamp: float = 0.0


def detector_config(engine, path: Path | None = None) -> DetectorConfig:
    """Read the detector contract from the engine's metadata (project exports) or, for an ONNX without it,
    from `detectors.inspect_detector` (RTMDet raw head); anything else is refused in one line."""
    name = getattr(engine, "name", None) or (path.name if path else "detector")
    meta = engine.metadata
    if meta is not None and meta.get("task") in ("pose2d", "pose3d"):
        raise RtmwEdgeError(f"{name} is a pose model ({meta.get('name')}), not a detector: check --det")
    if meta is not None and meta.get("task") == "detector":
        shape = engine.input_shape(1)
        size = tuple(meta.get("input_size") or (shape[3], shape[2]))
        outs = {n: engine.output_shape(n, 1) for n in engine.output_names}
        boxes = "boxes" if "boxes" in outs else next((n for n, s in outs.items() if len(s) == 3), None)
        scores = "scores" if "scores" in outs else next((n for n, s in outs.items() if len(s) == 2), None)
        if boxes is None or scores is None:
            raise RtmwEdgeError(f"{name}: a project detector must output boxes [B,K,4] and scores [B,K], "
                                f"got {outs}")
        return DetectorConfig("project", (int(size[0]), int(size[1])),
                              tuple(float(v) for v in meta.get("mean", DET_MEAN_BGR)),
                              tuple(float(v) for v in meta.get("std", DET_STD_BGR)),
                              swap_rb=str(meta.get("color", "bgr")).lower() == "rgb",
                              pad_value=int(meta.get("pad_value", 114)), has_nms=bool(meta.get("nms", False)),
                              boxes_output=boxes, scores_output=scores)
    outs = {n: engine.output_shape(n, 1) for n in engine.output_names}
    if len(outs) == 3 and all(len(s) == 4 and s[3] == 5 for s in outs.values()):
        kind = "rtmdet-rawhead"
        if path is not None and path.suffix.lower() == ".onnx":
            kind = inspect_detector(path).kind
        if kind == "rtmdet-rawhead":
            shape = engine.input_shape(1)
            h = shape[2]
            levels = tuple(sorted(((n, h // s[1]) for n, s in outs.items()), key=lambda t: t[1]))
            return DetectorConfig(kind, (shape[3], shape[2]), DET_MEAN_BGR, DET_STD_BGR, levels=levels)
    kind = "unknown"
    if path is not None and path.suffix.lower() == ".onnx":
        kind = inspect_detector(path).kind  # raises UnknownDetectorError for unrecognised graphs
    raise RtmwEdgeError(f"{name}: detector kind '{kind}' runs on the CPU pipeline only (--backend onnxruntime); "
                        f"the GPU pipeline takes the project's exported detectors (`rtmw-edge export "
                        f"rtmdet-nano-person`) and RTMDet raw-head graphs")


class _MetaView:
    """What `pipeline.pose_info` reads from an engine."""

    def __init__(self, engine, path: Path | None) -> None:
        self.metadata = engine.metadata
        self.path = path or Path(getattr(engine, "name", "pose"))
        self.output_names = list(engine.output_names)


@dataclass
class _Timings:
    ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def add(self, stage: str, value: float) -> None:
        self.ms.setdefault(stage, []).append(value)

    def summary(self) -> dict[str, float]:
        """Median milliseconds per stage."""
        return {k: float(np.median(v)) for k, v in self.ms.items() if v}


class GpuPoseModel:
    """What every camera shares: the engines, the compiled kernels, the detector contract, the pose model's
    description and the per-slot buffer plan. `open_stream()` gives one camera its own `GpuPoseStream`."""

    def __init__(self, det, pose, *, backend: str = "torch-cuda", device: int = 0, flip_test: bool = False,
                 max_persons: int = 32, det_threshold: float = 0.3, nms_iou: float = 0.3, kpt_threshold: float = 0.3,
                 match_cpu_rounding: bool = False, allow_tf32: bool = False, det_engine=None, pose_engine=None,
                 det_nms_iou: float = 0.6, det_max_detections: int = 1000, pose_spec: str | None = None,
                 threads: int | None = None) -> None:
        if max_persons < 1:
            raise RtmwEdgeError("--max-persons must be at least 1")
        if not 0.0 <= det_threshold <= 1.0:
            raise RtmwEdgeError("--det-threshold must be in [0, 1]")
        if det_engine is None or pose_engine is None:
            availability(backend).require()   # the backend table: the engine library, cuda-python, a GPU
        R.cuda_modules()  # cuda-python present, or one line naming the gpu extra
        ok, why = R.device_available(device)
        if not ok:
            raise RtmwEdgeError(f"the GPU pipeline needs a CUDA GPU: {why}")
        self.device = R.get_device(device)
        det_path = pose_path = None
        given = {id(e) for e in (det_engine, pose_engine) if e is not None}
        options = {"allow_tf32": allow_tf32} if backend == "torch-cuda" else {}
        if det_engine is None:
            det_path = resolve_model(det, "det")
            det_engine = load_device_engine(det_path, backend, device=device, **options)
        if pose_engine is None:
            pose_path = resolve_model(pose, "pose")
            pose_engine = load_device_engine(pose_path, backend, device=device, **options)
        self._own_engines = [e for e in (det_engine, pose_engine) if id(e) not in given]
        for engine in (det_engine, pose_engine):
            if not callable(getattr(engine, "create_context", None)):
                raise RtmwEdgeError(f"{getattr(engine, 'name', engine)}: a device engine must provide "
                                    "create_context(stream) (backends.device.DeviceEngine)")
        self.det_engine, self.pose_engine = det_engine, pose_engine
        self.det = detector_config(det_engine, det_path)
        if pose_engine.metadata is None and pose_path is not None and pose_path.suffix.lower() == ".onnx":
            meta = pose_metadata(pose_path, pose_spec)  # a foreign pose ONNX: --pose-spec or its SDK JSON
            if meta["outputs"] != list(POSE_OUTPUTS[:len(meta["outputs"])]):
                raise RtmwEdgeError(f"{pose_path.name}: outputs {meta['outputs']}; the GPU pipeline reads simcc_x/"
                                    "simcc_y: `rtmw-edge models import` it first")
            pose_engine.metadata = meta
        if pose_engine.metadata is None:
            raise RtmwEdgeError(f"{getattr(pose_engine, 'name', 'pose model')}: the GPU pipeline needs a pose model "
                                "exported by rtmw-edge (its metadata); run foreign graphs with --backend onnxruntime")
        self.info = pose_info(_MetaView(pose_engine, pose_path))
        if flip_test and not self.info.flip_in_graph:
            raise RtmwEdgeError("the GPU pipeline does flip test in the graph only: export the pose model with "
                                "--flip-test (then no --flip-test flag is needed)")
        self.max_persons = int(max_persons)
        self.det_threshold, self.nms_iou, self.kpt_threshold = float(det_threshold), float(nms_iou), kpt_threshold
        self.det_nms_iou, self.det_max_detections = float(det_nms_iou), int(det_max_detections)
        self.quantize = 1 if match_cpu_rounding else 0
        self.zero_copy = bool(self.device.integrated and self.device.can_map_host)
        self.kernels = R.KernelModules(self.device)
        self.streams: list[GpuPoseStream] = []

        # sizes: pose buffers chunk by chunk (each chunk 256-byte aligned), results for `capacity` items
        self.num_keypoints = self.info.num_keypoints
        self.has_3d = self.info.task == "pose3d"
        if self.det.kind == "project":
            self.num_candidates = int(det_engine.output_shape(self.det.boxes_output, 1)[1])
        else:
            self.num_candidates = sum(int(np.prod(det_engine.output_shape(n, 1)[1:3])) for n, _ in self.det.levels)
        self.capacity = KK.pose_capacity(self.max_persons, pose_engine.max_batch, pose_engine.min_batch)
        self.chunk = int(min(pose_engine.max_batch or self.capacity, self.capacity))
        det_outputs = {n: (det_engine.output_shape(n, 1), det_engine.output_dtype(n)) for n in det_engine.output_names}
        pose_outputs = {n: (pose_engine.output_shape(n, self.chunk), pose_engine.output_dtype(n))
                        for n in pose_engine.output_names}
        self.plan = KK.plan_slot(det_input_shape=det_engine.input_shape(1), det_outputs=det_outputs,
                                 num_candidates=self.num_candidates, max_persons=self.max_persons,
                                 pose_input_wh=self.info.input_size, pose_outputs=pose_outputs,
                                 num_keypoints=self.num_keypoints, capacity=self.capacity, has_3d=self.has_3d,
                                 pose_chunk=self.chunk)
        in_w, in_h = self.info.input_size
        self.item_bytes = {"pose_input": 3 * in_w * in_h * 4}
        self.item_bytes.update({f"pose:{n}": int(np.prod(s[1:])) * np.dtype(d).itemsize
                                for n, (s, d) in pose_outputs.items()})
        self.chunk_stride = {k: KK.chunk_stride(self.chunk * v) for k, v in self.item_bytes.items()}
        self.scratch_bytes = KK.align(max(int(getattr(e, "scratch_bytes", 0) or 0) for e in (det_engine, pose_engine)))

    def open_stream(self, **options) -> GpuPoseStream:
        """One camera's stream over this model: its own CUDA streams, contexts, buffers, graphs and tracker.
        Options: those of `GpuPoseStream` (track, smooth, smoothing, camera, cuda_graphs, profile, blocking_sync,
        det_interval, kpt_threshold, on_stage)."""
        stream = GpuPoseStream(self, **options)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        """Close every stream opened on this model, then the kernels and the engines it loaded."""
        R.use_device(self.device.index)
        for stream in list(self.streams):
            stream.close()
        self.streams = []
        if self.kernels is not None:
            self.kernels.close()
            self.kernels = None
        for engine in self._own_engines:  # engines handed in stay open: they belong to the caller
            if hasattr(engine, "close"):
                engine.close()
        self._own_engines = []


class StreamHolder:
    """What a GPU pipeline's slot (`_Slot`) and a camera lane (`multicam._Lane`) share: a stream with optional
    timing marks, and frame buffers that grow on demand. Subclasses set `stream`, `marks`, `frame_host` and
    `frame_dev`."""

    stream: R.Stream
    marks: dict
    frame_host: R.PinnedBuffer | None
    frame_dev: R.DeviceBuffer | None

    def mark(self, name: str) -> None:
        """Record the timing event NAME on this stream (profiling only)."""
        if self.marks:
            self.marks[name].record(self.stream)

    def frame_buffers(self, nbytes: int, zero_copy: bool) -> None:
        """Grow the frame buffers (`frame_host`, `frame_dev`) to NBYTES (at least 1080p; cudaFree and cudaMalloc
        synchronise, so grow rarely). Zero-copy: one mapped pinned buffer the kernels read directly; otherwise
        pinned staging + a device copy."""
        nbytes = max(nbytes, FRAME_RESERVE)
        if self.frame_host is None or self.frame_host.nbytes < nbytes:
            if self.frame_host is not None:
                self.frame_host.free()
            self.frame_host = R.PinnedBuffer(nbytes, mapped=zero_copy)
        if not zero_copy and (self.frame_dev is None or self.frame_dev.nbytes < nbytes):
            if self.frame_dev is not None:
                self.frame_dev.free()
            self.frame_dev = R.DeviceBuffer(nbytes)


class _Slot(StreamHolder):
    """One frame in flight: its stream, events, device buffers, pinned host buffers and one execution context
    per engine — bound to this slot's stream only, sharing the slot's scratch block (they run one after the
    other on it)."""

    def __init__(self, st: GpuPoseStream, index: int) -> None:
        model = st.model
        self.index = index
        self.stream = R.Stream()
        self.counted = R.Event(blocking_sync=st.blocking_sync)
        self.done = R.Event(blocking_sync=st.blocking_sync)
        self.ready = R.Event()                     # a DeviceFrame producer's stream → ours
        self.marks = ({name: R.Event(timing=True) for name in ("start", "pose_start", "pose_end", *STAGES)}
                      if st.profile else {})
        self.memory = R.DeviceBuffer(model.plan.total)
        offsets = model.plan.offsets()
        self.ptr = {name: self.memory.ptr + off for name, off in offsets.items()}
        self.scratch = R.DeviceBuffer(model.scratch_bytes) if model.scratch_bytes else None
        scratch = self.scratch.ptr if self.scratch is not None else None
        self.det_ctx = model.det_engine.create_context(self.stream.handle, scratch=scratch)
        self.pose_ctx = model.pose_engine.create_context(self.stream.handle, scratch=scratch)
        self.pose_batch: int | None = None         # the pose context's input batch (set by its last eager run)
        self.graphs = R.GraphCache(GRAPHS_PER_SLOT)
        self.frame_dev: R.DeviceBuffer | None = None
        self.frame_host: R.PinnedBuffer | None = None
        k, m, c = model.num_keypoints, model.max_persons, model.capacity
        out_bytes = 16 + 4 * m * 5 + 4 * c * k * 3 * (2 if model.has_3d else 1)
        # results: mapped (zero-copy) on an integrated GPU — the kernels write them where the host reads them
        self.host = R.PinnedBuffer(out_bytes, mapped=model.zero_copy)
        self.out = {"header": 0, "boxes": 16, "scores": 16 + 16 * m, "keypoints": 16 + 20 * m,
                    "keypoints_3d": 16 + 20 * m + 12 * c * k}
        if model.zero_copy:
            self.ptr.update({name: self.host.device_ptr + off for name, off in self.out.items()})
        self.header = self.host.array(np.int32, (4,))
        self.boxes = self.host.array(np.float32, (m, 4), self.out["boxes"])
        self.scores = self.host.array(np.float32, (m,), self.out["scores"])
        self.keypoints = self.host.array(np.float32, (c, k, 3), self.out["keypoints"])
        self.keypoints_3d = self.host.array(np.float32, (c, k, 3), self.out["keypoints_3d"]) if model.has_3d else None
        self.meta: dict = {}
        self.busy = False
        self.graphed = False                        # this frame's pose segment ran as a graph replay

    def close(self) -> None:
        self.stream.synchronize()
        self.graphs.close()
        for ctx in (self.det_ctx, self.pose_ctx):      # contexts before their memory and the engines
            if ctx is not None and hasattr(ctx, "close"):
                ctx.close()
        self.det_ctx = self.pose_ctx = None
        for buf in (self.memory, self.scratch, self.frame_dev, self.frame_host, self.host):
            if buf is not None:
                buf.free()
        for ev in (self.counted, self.done, self.ready, *self.marks.values()):
            ev.close()
        self.stream.close()


def enqueue_detect(model: GpuPoseModel, slot, item, *, copy_boxes: bool = False) -> None:
    """Upload (or adopt) the frame and enqueue letterbox → detector → select → header copy on `slot.stream`,
    then record `slot.counted`. `slot`: a frame slot or a camera lane (stream, events, buffers, its detector
    context). `copy_boxes`: also copy every box and score slot back with the header (the multi-camera tick reads
    them before the pose work)."""
    s = slot.stream
    slot.busy = True
    slot.mark("start")
    if isinstance(item, DeviceFrame):
        w, h = int(item.width), int(item.height)
        pitch = int(item.pitch or w * 3)
        src = R.as_device_pointer(item.ptr)
        producer = item.stream
        if producer is None:
            cai = getattr(item.ptr, "__cuda_array_interface__", None)
            producer = cai.get("stream", LEGACY_STREAM) if cai is not None else LEGACY_STREAM
            producer = LEGACY_STREAM if producer == 1 else producer   # CAI: 1 = the legacy default stream
        if producer is not None:      # None: the producer says the data is ready
            slot.ready.record(R.as_stream_handle(producer))
            s.wait(slot.ready)
        index, timestamp = item.index, item.timestamp
    else:
        image, index, timestamp = item
        image = as_bgr_uint8(image)
        h, w = image.shape[:2]
        pitch = w * 3
        slot.frame_buffers(image.nbytes, model.zero_copy)
        np.copyto(slot.frame_host.array(np.uint8, image.shape), image)
        if model.zero_copy:
            src = slot.frame_host.device_ptr
        else:
            R.copy_htod_async(slot.frame_dev.ptr, slot.frame_host.ptr, image.nbytes, s.handle)
            src = slot.frame_dev.ptr
    slot.mark("upload")
    slot.meta = {"src": src, "w": w, "h": h, "pitch": pitch, "index": index, "timestamp": timestamp}

    det, lb = model.det, KK.letterbox_args((h, w), model.det.input_size)
    model.kernels.launch("letterbox_bgr_to_nchw", KK.letterbox_launch(det.input_size), KK.pack_args(
        "letterbox_bgr_to_nchw", src=src, src_w=w, src_h=h, src_pitch=pitch, dst=slot.ptr["det_input"],
        dst_w=det.input_size[0], dst_h=det.input_size[1], new_w=lb["new_w"], new_h=lb["new_h"],
        scale_x=lb["resize_scale_x"], scale_y=lb["resize_scale_y"], **KK.normalisation(det.mean, det.std),
        swap_rb=int(det.swap_rb), pad_value=float(det.pad_value), quantize=model.quantize), s)
    slot.mark("letterbox")
    det_engine = model.det_engine
    outputs = {n: slot.ptr[f"det:{n}"] for n in det_engine.output_names}
    slot.det_ctx.infer_async({det_engine.input_name: slot.ptr["det_input"]}, outputs, 1)
    slot.mark("detector")
    if det.kind == "rtmdet-rawhead":
        args = {}
        for i, (name, stride) in enumerate(det.levels):
            shape = det_engine.output_shape(name, 1)
            args.update({f"level{i}": outputs[name], f"h{i}": shape[1], f"w{i}": shape[2], f"stride{i}": stride})
        model.kernels.launch("rtmdet_rawhead_decode", KK.rawhead_launch(model.num_candidates), KK.pack_args(
            "rtmdet_rawhead_decode", **args, boxes=slot.ptr["cand_boxes"], scores=slot.ptr["cand_scores"]), s)
        boxes, scores = slot.ptr["cand_boxes"], slot.ptr["cand_scores"]
    else:
        boxes, scores = outputs[det.boxes_output], outputs[det.scores_output]
    model.kernels.launch("detector_select", KK.select_launch(model.num_candidates), KK.pack_args(
        "detector_select", boxes=boxes, scores=scores, num_candidates=model.num_candidates,
        score_threshold=float(np.float32(model.det_threshold)), run_nms1=int(not det.has_nms),
        iou1=model.det_nms_iou, max_det1=model.det_max_detections, scale_x=float(lb["box_scale_x"]),
        scale_y=float(lb["box_scale_y"]), clip_w=lb["clip_w"], clip_h=lb["clip_h"], iou2=model.nms_iou,
        max_persons=model.max_persons, work=slot.ptr["nms_work"], out_boxes=slot.ptr["boxes"],
        out_scores=slot.ptr["scores"], header=slot.ptr["header"]), s)
    if not model.zero_copy:
        R.copy_dtoh_async(slot.host.ptr, slot.ptr["header"], 16, s.handle)
        if copy_boxes:
            m = model.max_persons
            R.copy_dtoh_async(slot.host.ptr + slot.out["boxes"], slot.ptr["boxes"], 16 * m, s.handle)
            R.copy_dtoh_async(slot.host.ptr + slot.out["scores"], slot.ptr["scores"], 4 * m, s.handle)
    slot.mark("select")
    slot.counted.record(s)


def camera_args(model: GpuPoseModel, camera: G.Camera | None, meta: dict) -> tuple[float, float, float, float]:
    """The intrinsics the decode kernel gets (float32 values) for a frame: a captured graph bakes them in."""
    info = model.info
    cam = camera or G.Camera(*(info.focal or (G.Camera.fx, G.Camera.fy)))
    cx = meta["w"] / 2 if cam.cx is None else cam.cx
    cy = meta["h"] / 2 if cam.cy is None else cam.cy
    f32 = np.float32
    return float(f32(cam.fx)), float(f32(cam.fy)), float(f32(cx)), float(f32(cy))


def read_count(model: GpuPoseModel, header: np.ndarray) -> tuple[int, int]:
    """The person count (and the total before the cap) from a header — after its `counted` was waited for.
    A value outside [0, max_persons] means corrupted memory: an error, never a buffer overrun."""
    n, total = int(header[0]), int(header[1])
    if not 0 <= n <= model.max_persons or total < n:
        raise RtmwEdgeError(f"the detector stage reported {n} person(s) (total {total}), outside "
                            f"[0, {model.max_persons}]: device results are corrupt")
    return n, total


class GpuPoseStream:
    """One camera on a `GpuPoseModel`: `stream(image)` / `stream.step(image, frame, timestamp)` → `FrameResult`
    (one frame to completion), `stream.stream(frames)` (two frames in flight), `detect`, `infer_device` — with its
    own tracker and smoother (`streams.FrameTail`, the tail every pipeline ends in).

    Frame slots (their CUDA streams, buffers and execution contexts) are made on first use — the second when
    `stream()` first needs it: a camera stepped one frame at a time (the daemon) holds one context per engine, and
    an estimator whose own stream is never used (the daemon's shared one) holds none. det_interval must be 1
    (skip-frame detection runs on the CPU pipeline); kpt_threshold is accepted for the common stream options;
    on_stage(name, seconds) is told each frame's host time ("inference", "track")."""

    pipeline = "cuda-stream"

    def __init__(self, model: GpuPoseModel, *, track: bool = False, smooth: bool = False,
                 smoothing: dict | None = None, camera: G.Camera | None = None, cuda_graphs: bool = False,
                 profile: bool = False, blocking_sync: bool | None = None, det_interval: int = 1,
                 kpt_threshold: float | None = None, on_stage=None) -> None:
        if det_interval != 1:
            raise UsageError(f"det_interval {det_interval}: the CUDA-stream pipeline detects on every frame; skip-"
                             "frame detection runs in the CPU pipeline (--backend onnxruntime, or auto)")
        self.model = model
        R.use_device(model.device.index)
        self.camera = camera
        self.cuda_graphs = bool(cuda_graphs) and bool(getattr(model.pose_engine, "graph_capturable", False))
        self.profile = bool(profile)
        # host waits sleep instead of spinning on an integrated GPU (a Jetson's CPU cores are precious)
        self.blocking_sync = model.device.integrated if blocking_sync is None else bool(blocking_sync)
        self.timings = _Timings()
        self.on_stage = on_stage
        self.slots: list[_Slot] = []
        self.closed = False
        self.tail = FrameTail(track=track, smooth=smooth, smoothing=smoothing)

    @property
    def tracker(self):
        return self.tail.tracker

    def _make_slots(self, count: int) -> None:
        """Frame slots up to `count`, made on first use (one-time allocations, never inside a capture)."""
        while len(self.slots) < count:
            self.slots.append(_Slot(self, len(self.slots)))

    # read-through to the model (the single-camera API has always had these)
    def __getattr__(self, name):
        model = self.__dict__.get("model")
        if model is not None and name in ("det", "info", "det_engine", "pose_engine", "kernels", "plan", "capacity",
                                          "max_persons", "num_keypoints", "has_3d", "num_candidates", "device",
                                          "zero_copy", "quantize"):
            return getattr(model, name)
        raise AttributeError(name)

    # ------------------------------------------------------------------ stages
    def _enqueue_detect(self, slot: _Slot, item) -> None:
        enqueue_detect(self.model, slot, item)

    def _camera(self, meta: dict) -> tuple[float, float, float, float]:
        return camera_args(self.model, self.camera, meta)

    def _pose_work(self, slot: _Slot, n: int, marks: bool) -> None:
        """crops → pose engine → decode per chunk, then the result copies, for n persons (capturable as one CUDA
        graph: `marks=False` then, since an event recorded in a capture cannot be timed)."""
        model, s, meta, info = self.model, slot.stream, slot.meta, self.model.info
        in_w, in_h = info.input_size
        p, k, f32 = slot.ptr, model.num_keypoints, np.float32
        fx, fy, cx, cy = self._camera(meta)
        chunks = KK.batch_chunks(n, model.pose_engine.max_batch, model.pose_engine.min_batch)
        stage_marks = marks and len(chunks) == 1
        for c, (start, count, batch) in enumerate(chunks):
            base = {name: p[name] + c * stride for name, stride in model.chunk_stride.items()}
            model.kernels.launch("crop_persons_bgr_to_nchw", KK.crop_launch(info.input_size, count), KK.pack_args(
                "crop_persons_bgr_to_nchw", src=meta["src"], src_w=meta["w"], src_h=meta["h"], src_pitch=meta["pitch"],
                boxes=p["boxes"] + 16 * start, num_persons=count, dst=base["pose_input"], dst_w=in_w, dst_h=in_h,
                params=p["params"] + 16 * start, padding=G.BBOX_PADDING, aspect=float(f32(in_w / in_h)),
                **KK.normalisation(info.mean, info.std), swap_rb=int(info.swap_rb), quantize=model.quantize), s)
            if stage_marks:
                slot.mark("crops")
            slot.pose_ctx.infer_async({model.pose_engine.input_name: base["pose_input"]},
                                      {name: base[f"pose:{name}"] for name in model.pose_engine.output_names}, batch)
            if stage_marks:
                slot.mark("pose")
            common = dict(params=p["params"] + 16 * start, num_persons=count, num_keypoints=k, in_w=float(in_w),
                          in_h=float(in_h), out=p["keypoints"] + 12 * k * start,
                          out3d=p["keypoints_3d"] + 12 * k * start if model.has_3d else 0,
                          depth_half=float(f32(in_w / 2)), z_range=float(f32(info.z_range or 0.0)),
                          root_z=float(f32(info.root_z or 0.0)), fx=fx, fy=fy, cx=cx, cy=cy)
            if info.decoded:
                model.kernels.launch("decoded_to_image", KK.decoded_launch(count, k), KK.pack_args(
                    "decoded_to_image", keypoints=base["pose:keypoints"], scores=base["pose:scores"],
                    z=base.get("pose:z", 0) if model.has_3d else 0, **common), s)
            else:
                bins = {name: model.pose_engine.output_shape(name, 1)[2] for name in model.pose_engine.output_names}
                model.kernels.launch("simcc_decode_to_image", KK.simcc_decode_launch(count, k), KK.pack_args(
                    "simcc_decode_to_image", simcc_x=base["pose:simcc_x"], bins_x=bins["simcc_x"],
                    simcc_y=base["pose:simcc_y"], bins_y=bins["simcc_y"],
                    simcc_z=base.get("pose:simcc_z", 0) if model.has_3d else 0, bins_z=bins.get("simcc_z", 0),
                    split_ratio=float(f32(info.split_ratio)), **common), s)
            if stage_marks:
                slot.mark("decode")
        if not model.zero_copy:
            R.copy_dtoh_async(slot.host.ptr + slot.out["boxes"], p["boxes"], 16 * n, s.handle)
            R.copy_dtoh_async(slot.host.ptr + slot.out["scores"], p["scores"], 4 * n, s.handle)
            R.copy_dtoh_async(slot.host.ptr + slot.out["keypoints"], p["keypoints"], 12 * n * k, s.handle)
            if model.has_3d:
                R.copy_dtoh_async(slot.host.ptr + slot.out["keypoints_3d"], p["keypoints_3d"], 12 * n * k, s.handle)
        if stage_marks:
            slot.mark("download")

    def _read_count(self, slot: _Slot) -> tuple[int, int]:
        return read_count(self.model, slot.header)

    def _enqueue_pose(self, slot: _Slot) -> int:
        """Wait for the person count (the one host read between the engines), then enqueue the pose part —
        as a CUDA graph replay when one is captured for exactly this work."""
        t = time.perf_counter()
        slot.counted.synchronize()
        if self.profile:
            self.timings.add("count_wait", (time.perf_counter() - t) * 1e3)
        n, _ = self._read_count(slot)
        slot.graphed = False
        if n > 0:
            slot.mark("pose_start")
            if not self._pose_graph(slot, n):
                self._pose_eager(slot, n)
            slot.mark("pose_end")
        slot.done.record(slot.stream)
        return n

    def _pose_eager(self, slot: _Slot, n: int) -> None:
        batches = {b for _, _, b in KK.batch_chunks(n, self.model.pose_engine.max_batch,
                                                    self.model.pose_engine.min_batch)}
        batch = batches.pop() if len(batches) == 1 else None
        if slot.pose_batch is not None and batch != slot.pose_batch:
            # the context's input shape changes: graphs captured under the old shape must never replay
            slot.graphs.discard(lambda key: key[0] == batch)
        self._pose_work(slot, n, marks=True)
        slot.pose_batch = batch

    def _pose_graph(self, slot: _Slot, n: int) -> bool:
        """Replay (or capture, then replay) the pose segment as a CUDA graph. TensorRT's rules: capture only
        right after an eager enqueue with exactly these shapes (`slot.pose_batch`), every chunk of one shape,
        and replay only while the context keeps that shape. Returns False when the segment must run eagerly."""
        if not self.cuda_graphs:
            return False
        chunks = KK.batch_chunks(n, self.model.pose_engine.max_batch, self.model.pose_engine.min_batch)
        batches = {b for _, _, b in chunks}
        if len(batches) != 1 or slot.pose_batch != next(iter(batches)):
            return False
        meta = slot.meta
        key = (slot.pose_batch, n, meta["src"], meta["w"], meta["h"], meta["pitch"], self._camera(meta))
        graph = slot.graphs.get(key) or slot.graphs.capture(key, slot.stream,
                                                            lambda _s: self._pose_work(slot, n, marks=False))
        if graph is None:
            return False
        graph.launch(slot.stream)
        slot.graphed = True
        return True

    def _collect(self, slot: _Slot, clock: float | None = None) -> FrameResult:
        slot.done.synchronize()
        n, total = self._read_count(slot)
        kpts = slot.keypoints[:n].copy()
        k3d = slot.keypoints_3d[:n].copy() if self.model.has_3d else None
        persons = [Person(bbox=slot.boxes[i].copy(), score=float(slot.scores[i]), keypoints=kpts[i, :, :2].copy(),
                          keypoint_scores=kpts[i, :, 2].copy(), keypoints_3d=None if k3d is None else k3d[i])
                   for i in range(n)]
        if self.profile and slot.marks:
            chain = ("start", "upload", "letterbox", "detector", "select")
            for a, b in zip(chain, chain[1:]):
                self.timings.add(b, slot.marks[a].elapsed_ms(slot.marks[b]))
            if n > 0:
                self.timings.add("pose_segment", slot.marks["pose_start"].elapsed_ms(slot.marks["pose_end"]))
                if not slot.graphed and len(KK.batch_chunks(n, self.model.pose_engine.max_batch,
                                                            self.model.pose_engine.min_batch)) == 1:
                    for a, b in zip(("pose_start", "crops", "pose", "decode"), ("crops", "pose", "decode", "download")):
                        self.timings.add(b, slot.marks[a].elapsed_ms(slot.marks[b]))
        meta = slot.meta
        slot.busy = False
        t = time.perf_counter()
        result = self.tail.finish(persons, max(0, total - n), frame=int(meta["index"]),
                                  timestamp=float(meta["timestamp"]), width=meta["w"], height=meta["h"], clock=clock)
        if self.on_stage is not None and self.tail.tracker is not None:
            self.on_stage("track", time.perf_counter() - t)
        return result

    # ------------------------------------------------------------------ public API
    def _enter(self) -> None:
        """Every public entry: this pipeline's device current in the calling thread, and no frame of this
        stream still in flight in slot 0 (a `stream()` generator not yet finished)."""
        if self.closed:
            raise RtmwEdgeError("this GPU pipeline stream is closed")
        R.use_device(self.model.device.index)
        if any(slot.busy for slot in self.slots):
            raise RtmwEdgeError("this GPU stream has frames in flight (a stream() iteration is still open): finish "
                                "or close it first, or open another stream on the model (model.open_stream())")
        self._make_slots(1)

    def step(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0, *,
             clock: float | None = None) -> FrameResult:
        """One frame to completion (no overlap; `stream` overlaps consecutive frames). `clock`: the time the
        tracker sees (default `timestamp`; the daemon gives the monotonic capture time)."""
        self._enter()
        t = time.perf_counter()
        slot = self.slots[0]
        self._enqueue_detect(slot, (image, frame, timestamp))
        self._enqueue_pose(slot)
        slot.done.synchronize()
        if self.on_stage is not None:
            self.on_stage("inference", time.perf_counter() - t)
        return self._collect(slot, clock)

    __call__ = step

    def reset(self) -> None:
        """A new stream starts (a camera re-opened, a new video): forget the tracks."""
        self.tail.reset()

    def infer_device(self, frame: DeviceFrame) -> FrameResult:
        """One frame that already lives on the GPU."""
        self._enter()
        slot = self.slots[0]
        self._enqueue_detect(slot, frame)
        self._enqueue_pose(slot)
        return self._collect(slot)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Person boxes (image pixels) and scores, best first, at most max_persons; + how many were cut
        (the same answer as PoseEstimator.detect)."""
        self._enter()
        slot = self.slots[0]
        self._enqueue_detect(slot, (image, 0, 0.0))
        slot.counted.synchronize()
        n, total = self._read_count(slot)
        if not self.model.zero_copy:
            R.copy_dtoh_async(slot.host.ptr + slot.out["boxes"], slot.ptr["boxes"], 16 * n, slot.stream.handle)
            R.copy_dtoh_async(slot.host.ptr + slot.out["scores"], slot.ptr["scores"], 4 * n, slot.stream.handle)
        slot.done.record(slot.stream)
        slot.done.synchronize()
        slot.busy = False
        return slot.boxes[:n].copy(), slot.scores[:n].copy(), max(0, total - n)

    def stream(self, frames: Iterable) -> Iterator[tuple[object, FrameResult]]:
        """(item, FrameResult) for each item, in order, with two frames in flight.

        Items: objects with .image/.index/.timestamp (rtmw_edge.sources frames), (image, index, timestamp)
        tuples, bare BGR arrays, or DeviceFrame. Timeline per new frame t+1: collect t−1 (its pose ran while
        frame t's detector ran), enqueue t+1's upload+detector, read t's count and enqueue t's pose, then hand
        t−1's result out — so the consumer's work on t−1 overlaps the GPU's work on t and t+1. A slot is
        reused only after its previous frame was collected. Leaving the loop early waits for the frames still
        in flight.
        """
        self._enter()
        self._make_slots(SLOTS)
        posed = detected = None   # (slot, item)
        counter = 0
        try:
            for item in frames:
                R.use_device(self.model.device.index)     # the consumer may resume us from another thread
                work = self._as_work(item, counter)
                counter += 1
                ready = None
                if posed is not None:
                    ready = (posed[1], self._collect(posed[0]))
                    posed = None
                slot = next(s for s in self.slots if not s.busy)
                self._enqueue_detect(slot, work)
                if detected is not None:
                    self._enqueue_pose(detected[0])
                posed, detected = detected, (slot, item)
                if ready is not None:
                    yield ready
            R.use_device(self.model.device.index)
            if posed is not None:
                (last_slot, last_item), posed = posed, None
                yield last_item, self._collect(last_slot)
            if detected is not None:
                self._enqueue_pose(detected[0])
                last, detected = detected, None
                yield last[1], self._collect(last[0])
        finally:
            for slot in self.slots:       # abandoned mid-way: let the queued work finish, free the slots
                if slot.busy:
                    slot.stream.synchronize()
                    slot.busy = False

    @staticmethod
    def _as_work(item, counter: int):
        if isinstance(item, DeviceFrame):
            return item
        if isinstance(item, np.ndarray):
            return item, counter, 0.0
        if isinstance(item, tuple) and len(item) == 3:
            return item
        return item.image, getattr(item, "index", counter), getattr(item, "timestamp", 0.0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        R.use_device(self.model.device.index)
        for slot in self.slots:
            slot.close()
        self.slots = []
        if self in self.model.streams:
            self.model.streams.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GpuPoseEstimator(GpuPoseStream):
    """A `GpuPoseModel` with one stream: the single-camera GPU pipeline (same call and results as
    `pipeline.PoseEstimator`, plus `stream`). Closing it closes the model (and the engines it loaded)."""

    def __init__(self, det, pose, *, backend: str = "torch-cuda", device: int = 0, flip_test: bool = False,
                 max_persons: int = 32, det_threshold: float = 0.3, nms_iou: float = 0.3, kpt_threshold: float = 0.3,
                 track: bool = False, smooth: bool = False, camera: G.Camera | None = None, threads: int | None = None,
                 smoothing: dict | None = None, cuda_graphs: bool = False, match_cpu_rounding: bool = False,
                 profile: bool = False, blocking_sync: bool | None = None, allow_tf32: bool = False,
                 det_engine=None, pose_engine=None, det_nms_iou: float = 0.6, det_max_detections: int = 1000,
                 pose_spec: str | None = None) -> None:
        model = GpuPoseModel(det, pose, backend=backend, device=device, flip_test=flip_test, max_persons=max_persons,
                             det_threshold=det_threshold, nms_iou=nms_iou, kpt_threshold=kpt_threshold,
                             match_cpu_rounding=match_cpu_rounding, allow_tf32=allow_tf32, det_engine=det_engine,
                             pose_engine=pose_engine, det_nms_iou=det_nms_iou, det_max_detections=det_max_detections,
                             pose_spec=pose_spec)
        try:
            super().__init__(model, track=track, smooth=smooth, smoothing=smoothing, camera=camera,
                             cuda_graphs=cuda_graphs, profile=profile, blocking_sync=blocking_sync)
        except BaseException:
            model.close()
            raise
        model.streams.append(self)

    def open_stream(self, **options) -> GpuPoseStream:
        """Another stream over this estimator's model (the daemon: one per camera). Defaults: this estimator's
        graph, blocking and camera settings; a stream whose caller wants stage times (`on_stage`) is profiled
        with CUDA events (`timings.summary()`: the daemon's /metrics)."""
        options.setdefault("cuda_graphs", self.cuda_graphs)
        options.setdefault("blocking_sync", self.blocking_sync)
        options.setdefault("profile", self.profile or options.get("on_stage") is not None)
        return self.model.open_stream(**options)

    def close(self) -> None:
        super().close()
        self.model.close()
