"""`GpuPoseEstimator`: the whole frame on the GPU — upload → letterbox → detector → select → crops → pose →
decode → results — on one CUDA stream per frame slot, with two slots so that frame t+1's upload and
detector overlap frame t's pose. Same results (`FrameResult`) as the CPU `PoseEstimator`.

Per frame, on the slot's stream (nothing waits on the host in between):

    H2D frame (pinned) → letterbox_bgr_to_nchw → detector engine → [rtmdet_rawhead_decode] →
    detector_select → D2H header (16 bytes) → event `counted`
    ── host: `counted.synchronize()`, n = header[0]: the one read between detector and pose ──
    crop_persons_bgr_to_nchw (n) → pose engine (n, in chunks of its max batch) → simcc_decode_to_image →
    D2H boxes, scores, keypoints [n,K,3] (+ 3D) → event `done`

`stream(frames)` keeps two frames in flight (see docs/gpu-runtime.md for the timeline); `__call__` runs
one frame to completion. Engines: `--backend torch-cuda` (the exported ONNX on PyTorch-CUDA) or
`--backend tensorrt` (engines from `rtmw-edge build`), or any object following `backends.device.DeviceEngine`.

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
from ..errors import RtmwEdgeError, require
from ..results import FrameResult, Person
from . import kernels as KK
from . import runtime as R

SLOTS = 2
FRAME_RESERVE = 1920 * 1080 * 3   # frame buffers start at 1080p BGR
GPU_DETECTOR_KINDS = ("project", "rtmdet-rawhead")
STAGES = ("upload", "letterbox", "detector", "select", "count_wait", "crops", "pose", "decode", "download")


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
    (default width·3); `stream`: the producer's stream, waited on (through an event) before reading. The
    buffer must stay valid until the frame's result has been returned (the crop kernel reads it late).
    """

    ptr: object
    width: int
    height: int
    pitch: int | None = None
    stream: object = None
    index: int = 0
    timestamp: float = 0.0


def load_device_engine(path: str | Path, backend: str, device: int = 0, **options):
    """A DeviceEngine for a model file: torch-cuda (an .onnx) or tensorrt (a built .engine)."""
    path = Path(path)
    if backend == "torch-cuda":
        if path.suffix.lower() != ".onnx":
            raise RtmwEdgeError(f"--backend torch-cuda runs exported .onnx models, not {path.name}")
        from ..backends.torch_cuda import TorchCudaEngine

        return TorchCudaEngine(path, device=device, **options)
    if backend == "tensorrt":
        from ..backends import tensorrt as trt_backend

        trt_backend.import_tensorrt()
        if path.suffix.lower() == ".onnx":
            raise RtmwEdgeError(f"--backend tensorrt runs built engines: `rtmw-edge build {path}` first")
        return trt_backend.load_device_engine(path, device=device)
    raise RtmwEdgeError(f"the GPU pipeline runs --backend tensorrt or torch-cuda, not {backend!r}")


def detector_config(engine, path: Path | None = None) -> DetectorConfig:
    """Read the detector contract from the engine's metadata (project exports) or, for an ONNX without it,
    from `detectors.inspect_detector` (RTMDet raw head); anything else is refused in one line."""
    from ..zoo import DET_MEAN_BGR, DET_STD_BGR

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
            from ..detectors import inspect_detector

            kind = inspect_detector(path).kind
        if kind == "rtmdet-rawhead":
            shape = engine.input_shape(1)
            h = shape[2]
            levels = tuple(sorted(((n, h // s[1]) for n, s in outs.items()), key=lambda t: t[1]))
            return DetectorConfig(kind, (shape[3], shape[2]), DET_MEAN_BGR, DET_STD_BGR, levels=levels)
    kind = "unknown"
    if path is not None and path.suffix.lower() == ".onnx":
        from ..detectors import inspect_detector

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


class _Slot:
    """One frame in flight: its stream, events, device buffers and pinned host buffers."""

    def __init__(self, est: GpuPoseEstimator, index: int) -> None:
        self.index = index
        self.stream = R.Stream()
        self.counted = R.Event(blocking_sync=est.blocking_sync)
        self.done = R.Event(blocking_sync=est.blocking_sync)
        self.ready = R.Event()                     # a DeviceFrame producer's stream → ours
        self.marks = {name: R.Event(timing=True) for name in ("start", "pose_start", *STAGES)} if est.profile else {}
        self.memory = R.DeviceBuffer(est.plan.total)
        offsets = est.plan.offsets()
        self.ptr = {name: self.memory.ptr + off for name, off in offsets.items()}
        self.frame_dev: R.DeviceBuffer | None = None
        self.frame_host: R.PinnedBuffer | None = None
        out_bytes = 16 + 4 * est.max_persons * 5 + 4 * est.capacity * est.num_keypoints * 3 * (2 if est.has_3d else 1)
        self.host = R.PinnedBuffer(out_bytes)
        k, m, c = est.num_keypoints, est.max_persons, est.capacity
        self.header = self.host.array(np.int32, (4,))
        self.boxes = self.host.array(np.float32, (m, 4), 16)
        self.scores = self.host.array(np.float32, (m,), 16 + 16 * m)
        self.keypoints = self.host.array(np.float32, (c, k, 3), 16 + 20 * m)
        self.keypoints_3d = (self.host.array(np.float32, (c, k, 3), 16 + 20 * m + 12 * c * k)
                             if est.has_3d else None)
        self.meta: dict = {}
        self.busy = False

    def mark(self, name: str) -> None:
        if self.marks:
            self.marks[name].record(self.stream)

    def frame_buffers(self, nbytes: int, pinned: bool) -> None:
        """Grow the frame buffers (at least 1080p; cudaFree/cudaMalloc synchronise, so grow rarely)."""
        nbytes = max(nbytes, FRAME_RESERVE)
        if self.frame_dev is None or self.frame_dev.nbytes < nbytes:
            if self.frame_dev is not None:
                self.frame_dev.free()
            self.frame_dev = R.DeviceBuffer(nbytes)
        if pinned and (self.frame_host is None or self.frame_host.nbytes < nbytes):
            if self.frame_host is not None:
                self.frame_host.free()
            self.frame_host = R.PinnedBuffer(nbytes)

    def close(self) -> None:
        self.stream.synchronize()
        for buf in (self.memory, self.frame_dev, self.frame_host, self.host):
            if buf is not None:
                buf.free()
        for ev in (self.counted, self.done, self.ready, *self.marks.values()):
            ev.close()
        self.stream.close()


class GpuPoseEstimator:
    """The GPU pipeline; the same call and results as `pipeline.PoseEstimator` (plus `stream`)."""

    def __init__(self, det, pose, *, backend: str = "torch-cuda", device: int = 0, flip_test: bool = False,
                 max_persons: int = 32, det_threshold: float = 0.3, nms_iou: float = 0.3, kpt_threshold: float = 0.3,
                 track: bool = False, smooth: bool = False, camera: G.Camera | None = None, threads: int | None = None,
                 smoothing: dict | None = None, cuda_graphs: bool = False, match_cpu_rounding: bool = False,
                 profile: bool = False, blocking_sync: bool = False, allow_tf32: bool = False,
                 det_engine=None, pose_engine=None, det_nms_iou: float = 0.6, det_max_detections: int = 1000,
                 pose_spec: str | None = None) -> None:
        from ..pipeline import pose_info, resolve_model

        if max_persons < 1:
            raise RtmwEdgeError("--max-persons must be at least 1")
        if not 0.0 <= det_threshold <= 1.0:
            raise RtmwEdgeError("--det-threshold must be in [0, 1]")
        if backend == "tensorrt":
            from ..backends.tensorrt import import_tensorrt

            import_tensorrt()  # no GPU / no TensorRT: the one wording of the build and selftest commands
        elif backend == "torch-cuda":
            require("torch", "export")
        R.cuda_modules()  # cuda-python present, or one line naming the gpu extra
        ok, why = R.device_available(device)
        if not ok:
            raise RtmwEdgeError(f"the GPU pipeline needs a CUDA GPU: {why}")
        self.device = R.get_device(device)
        det_path = pose_path = None
        det_given, pose_given = det_engine is not None, pose_engine is not None
        if det_engine is None:
            det_path = resolve_model(det, "det")
            det_engine = load_device_engine(det_path, backend, device, allow_tf32=allow_tf32) \
                if backend == "torch-cuda" else load_device_engine(det_path, backend, device)
        if pose_engine is None:
            pose_path = resolve_model(pose, "pose")
            pose_engine = load_device_engine(pose_path, backend, device, allow_tf32=allow_tf32) \
                if backend == "torch-cuda" else load_device_engine(pose_path, backend, device)
        self._own_engines = [e for e, given in ((det_engine, det_given), (pose_engine, pose_given)) if not given]
        self.det_engine, self.pose_engine = det_engine, pose_engine
        self.det = detector_config(det_engine, det_path)
        if pose_engine.metadata is None and pose_path is not None and pose_path.suffix.lower() == ".onnx":
            from ..export import POSE_OUTPUTS
            from ..pose_models import pose_metadata

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
        self.camera = camera
        self.cuda_graphs = bool(cuda_graphs) and bool(getattr(pose_engine, "graph_capturable", False))
        self.quantize = 1 if match_cpu_rounding else 0
        self.profile, self.blocking_sync = bool(profile), bool(blocking_sync)
        self.timings = _Timings()
        self.kernels = R.KernelModules(self.device)
        self.graphs = R.GraphCache()
        self._graph_seen: set = set()

        # sizes
        self.num_keypoints = self.info.num_keypoints
        self.has_3d = self.info.task == "pose3d"
        if self.det.kind == "project":
            self.num_candidates = int(det_engine.output_shape(self.det.boxes_output, 1)[1])
        else:
            self.num_candidates = sum(int(np.prod(det_engine.output_shape(n, 1)[1:3])) for n, _ in self.det.levels)
        self.capacity = KK.pose_capacity(self.max_persons, pose_engine.max_batch, pose_engine.min_batch)
        det_outputs = {n: (det_engine.output_shape(n, 1), det_engine.output_dtype(n)) for n in det_engine.output_names}
        pose_outputs = {n: (pose_engine.output_shape(n, self.capacity), pose_engine.output_dtype(n))
                        for n in pose_engine.output_names}
        self.plan = KK.plan_slot(det_input_shape=det_engine.input_shape(1), det_outputs=det_outputs,
                                 num_candidates=self.num_candidates, max_persons=self.max_persons,
                                 pose_input_wh=self.info.input_size, pose_outputs=pose_outputs,
                                 num_keypoints=self.num_keypoints, capacity=self.capacity, has_3d=self.has_3d)
        self._pose_item_bytes = {n: int(np.prod(s[1:])) * np.dtype(d).itemsize for n, (s, d) in pose_outputs.items()}
        self.slots = [_Slot(self, i) for i in range(SLOTS)]
        self.tracker = None
        if track or smooth:
            from ..tracking import PoseTracker

            self.tracker = PoseTracker(smooth=smooth, **(smoothing or {}))

    # ------------------------------------------------------------------ stages
    def _enqueue_detect(self, slot: _Slot, item) -> None:
        """Upload (or adopt) the frame and enqueue letterbox → detector → select → header copy."""
        s = slot.stream
        slot.busy = True
        slot.mark("start")
        if isinstance(item, DeviceFrame):
            w, h = int(item.width), int(item.height)
            pitch = int(item.pitch or w * 3)
            src = R.as_device_pointer(item.ptr)
            if item.stream is not None:
                slot.ready.record(R.as_stream_handle(item.stream))
                s.wait(slot.ready)
            index, timestamp = item.index, item.timestamp
        else:
            from ..detectors import as_bgr_uint8

            image, index, timestamp = item
            image = as_bgr_uint8(image)
            h, w = image.shape[:2]
            pitch = w * 3
            slot.frame_buffers(image.nbytes, pinned=True)
            host = slot.frame_host.array(np.uint8, image.shape)
            np.copyto(host, image)
            R.copy_htod_async(slot.frame_dev.ptr, slot.frame_host.ptr, image.nbytes, s.handle)
            src = slot.frame_dev.ptr
        slot.mark("upload")
        slot.meta = {"src": src, "w": w, "h": h, "pitch": pitch, "index": index, "timestamp": timestamp}

        det, lb = self.det, KK.letterbox_args((h, w), self.det.input_size)
        self.kernels.launch("letterbox_bgr_to_nchw", KK.letterbox_launch(det.input_size), KK.pack_args(
            "letterbox_bgr_to_nchw", src=src, src_w=w, src_h=h, src_pitch=pitch, dst=slot.ptr["det_input"],
            dst_w=det.input_size[0], dst_h=det.input_size[1], new_w=lb["new_w"], new_h=lb["new_h"],
            scale_x=lb["resize_scale_x"], scale_y=lb["resize_scale_y"], **KK.normalisation(det.mean, det.std),
            swap_rb=int(det.swap_rb), pad_value=float(det.pad_value), quantize=self.quantize), s)
        slot.mark("letterbox")
        outputs = {n: slot.ptr[f"det:{n}"] for n in self.det_engine.output_names}
        self.det_engine.infer_async({self.det_engine.input_name: slot.ptr["det_input"]}, outputs, s.handle, 1)
        slot.mark("detector")
        if det.kind == "rtmdet-rawhead":
            args = {}
            for i, (name, stride) in enumerate(det.levels):
                shape = self.det_engine.output_shape(name, 1)
                args.update({f"level{i}": outputs[name], f"h{i}": shape[1], f"w{i}": shape[2], f"stride{i}": stride})
            self.kernels.launch("rtmdet_rawhead_decode", KK.rawhead_launch(self.num_candidates), KK.pack_args(
                "rtmdet_rawhead_decode", **args, boxes=slot.ptr["cand_boxes"], scores=slot.ptr["cand_scores"]), s)
            boxes, scores = slot.ptr["cand_boxes"], slot.ptr["cand_scores"]
        else:
            boxes, scores = outputs[det.boxes_output], outputs[det.scores_output]
        self.kernels.launch("detector_select", KK.select_launch(self.num_candidates), KK.pack_args(
            "detector_select", boxes=boxes, scores=scores, num_candidates=self.num_candidates,
            score_threshold=float(np.float32(self.det_threshold)), run_nms1=int(not det.has_nms),
            iou1=self.det_nms_iou, max_det1=self.det_max_detections, scale_x=float(lb["box_scale_x"]),
            scale_y=float(lb["box_scale_y"]), clip_w=lb["clip_w"], clip_h=lb["clip_h"], iou2=self.nms_iou,
            max_persons=self.max_persons, work=slot.ptr["nms_work"], out_boxes=slot.ptr["boxes"],
            out_scores=slot.ptr["scores"], header=slot.ptr["header"]), s)
        R.copy_dtoh_async(slot.host.ptr, slot.ptr["header"], 16, s.handle)
        slot.mark("select")
        slot.counted.record(s)

    def _pose_work(self, slot: _Slot, n: int) -> None:
        """crops → pose engine → decode → result copies for n persons (capturable as one CUDA graph)."""
        s, meta, info = slot.stream, slot.meta, self.info
        in_w, in_h = info.input_size
        slot.mark("pose_start")
        self.kernels.launch("crop_persons_bgr_to_nchw", KK.crop_launch(info.input_size, n), KK.pack_args(
            "crop_persons_bgr_to_nchw", src=meta["src"], src_w=meta["w"], src_h=meta["h"], src_pitch=meta["pitch"],
            boxes=slot.ptr["boxes"], num_persons=n, dst=slot.ptr["pose_input"], dst_w=in_w, dst_h=in_h,
            params=slot.ptr["params"], padding=G.BBOX_PADDING, aspect=float(np.float32(in_w / in_h)),
            **KK.normalisation(info.mean, info.std), swap_rb=int(info.swap_rb), quantize=self.quantize), s)
        slot.mark("crops")
        item_in = 3 * in_w * in_h * 4
        for start, _count, batch in KK.batch_chunks(n, self.pose_engine.max_batch, self.pose_engine.min_batch):
            outputs = {name: slot.ptr[f"pose:{name}"] + start * size for name, size in self._pose_item_bytes.items()}
            self.pose_engine.infer_async({self.pose_engine.input_name: slot.ptr["pose_input"] + start * item_in},
                                         outputs, s.handle, batch)
        slot.mark("pose")
        cam = self.camera or G.Camera(*(info.focal or (G.Camera.fx, G.Camera.fy)))
        cx = meta["w"] / 2 if cam.cx is None else cam.cx
        cy = meta["h"] / 2 if cam.cy is None else cam.cy
        f32 = np.float32
        common = dict(params=slot.ptr["params"], num_persons=n, num_keypoints=self.num_keypoints, in_w=float(in_w),
                      in_h=float(in_h), out=slot.ptr["keypoints"],
                      out3d=slot.ptr["keypoints_3d"] if self.has_3d else 0,
                      depth_half=float(f32(in_w / 2)), z_range=float(f32(info.z_range or 0.0)),
                      root_z=float(f32(info.root_z or 0.0)), fx=float(f32(cam.fx)), fy=float(f32(cam.fy)),
                      cx=float(f32(cx)), cy=float(f32(cy)))
        p = slot.ptr
        if info.decoded:
            self.kernels.launch("decoded_to_image", KK.decoded_launch(n, self.num_keypoints), KK.pack_args(
                "decoded_to_image", keypoints=p["pose:keypoints"], scores=p["pose:scores"],
                z=p.get("pose:z", 0) if self.has_3d else 0, **common), s)
        else:
            bins = {name: self.pose_engine.output_shape(name, 1)[2] for name in self.pose_engine.output_names}
            self.kernels.launch("simcc_decode_to_image", KK.simcc_decode_launch(n, self.num_keypoints), KK.pack_args(
                "simcc_decode_to_image", simcc_x=p["pose:simcc_x"], bins_x=bins["simcc_x"], simcc_y=p["pose:simcc_y"],
                bins_y=bins["simcc_y"], simcc_z=p.get("pose:simcc_z", 0) if self.has_3d else 0,
                bins_z=bins.get("simcc_z", 0), split_ratio=float(f32(info.split_ratio)), **common), s)
        slot.mark("decode")
        m, k = self.max_persons, self.num_keypoints
        R.copy_dtoh_async(slot.host.ptr + 16, p["boxes"], 16 * n, s.handle)
        R.copy_dtoh_async(slot.host.ptr + 16 + 16 * m, p["scores"], 4 * n, s.handle)
        R.copy_dtoh_async(slot.host.ptr + 16 + 20 * m, p["keypoints"], 12 * n * k, s.handle)
        if self.has_3d:
            R.copy_dtoh_async(slot.host.ptr + 16 + 20 * m + 12 * self.capacity * k, p["keypoints_3d"], 12 * n * k,
                              s.handle)
        slot.mark("download")

    def _enqueue_pose(self, slot: _Slot) -> int:
        """Wait for the person count (the one host read between the engines), then enqueue the pose part."""
        t = time.perf_counter()
        slot.counted.synchronize()
        if self.profile:
            self.timings.add("count_wait", (time.perf_counter() - t) * 1e3)
        n = int(slot.header[0])
        if n > 0:
            meta = slot.meta
            key = (slot.index, n, meta["src"], meta["w"], meta["h"], meta["pitch"])
            if self.cuda_graphs and key in self._graph_seen:  # captured after one eager run (TensorRT's rule)
                self.graphs.run(key, slot.stream, lambda _s: self._pose_work(slot, n))
            else:
                self._graph_seen.add(key)
                self._pose_work(slot, n)
        slot.done.record(slot.stream)
        return n

    def _collect(self, slot: _Slot) -> FrameResult:
        slot.done.synchronize()
        n, total = int(slot.header[0]), int(slot.header[1])
        kpts = slot.keypoints[:n].copy()
        k3d = slot.keypoints_3d[:n].copy() if self.has_3d else None
        persons = [Person(bbox=slot.boxes[i].copy(), score=float(slot.scores[i]), keypoints=kpts[i, :, :2].copy(),
                          keypoint_scores=kpts[i, :, 2].copy(), keypoints_3d=None if k3d is None else k3d[i])
                   for i in range(n)]
        if self.profile and slot.marks:
            chain = ("start", "upload", "letterbox", "detector", "select")
            if n > 0:
                chain += ("pose_start", "crops", "pose", "decode", "download")
            for a, b in zip(chain, chain[1:]):
                if b != "pose_start":  # select → pose_start is the host's count read and enqueue, not GPU work
                    self.timings.add(b, slot.marks[a].elapsed_ms(slot.marks[b]))
        meta = slot.meta
        slot.busy = False
        if self.tracker is not None:
            persons = self.tracker.update(persons, meta["timestamp"])
        return FrameResult(frame=int(meta["index"]), timestamp=float(meta["timestamp"]), width=meta["w"],
                           height=meta["h"], persons=persons, dropped_persons=max(0, total - n))

    # ------------------------------------------------------------------ public API
    def __call__(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0) -> FrameResult:
        """One frame to completion (no overlap; `stream` overlaps consecutive frames)."""
        slot = self.slots[0]
        self._enqueue_detect(slot, (image, frame, timestamp))
        self._enqueue_pose(slot)
        return self._collect(slot)

    def infer_device(self, frame: DeviceFrame) -> FrameResult:
        """One frame that already lives on the GPU."""
        slot = self.slots[0]
        self._enqueue_detect(slot, frame)
        self._enqueue_pose(slot)
        return self._collect(slot)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Person boxes (image pixels) and scores, best first, at most max_persons; + how many were cut
        (the same answer as PoseEstimator.detect)."""
        slot = self.slots[0]
        self._enqueue_detect(slot, (image, 0, 0.0))
        slot.counted.synchronize()
        n, total = int(slot.header[0]), int(slot.header[1])
        R.copy_dtoh_async(slot.host.ptr + 16, slot.ptr["boxes"], 16 * n, slot.stream.handle)
        R.copy_dtoh_async(slot.host.ptr + 16 + 16 * self.max_persons, slot.ptr["scores"], 4 * n, slot.stream.handle)
        slot.stream.synchronize()
        slot.busy = False
        return slot.boxes[:n].copy(), slot.scores[:n].copy(), max(0, total - n)

    def stream(self, frames: Iterable) -> Iterator[tuple[object, FrameResult]]:
        """(item, FrameResult) for each item, in order, with two frames in flight.

        Items: objects with .image/.index/.timestamp (rtmw_edge.sources frames), (image, index, timestamp)
        tuples, bare BGR arrays, or DeviceFrame. Timeline per new frame t+1: collect t−1 (its pose ran while
        frame t's detector ran), enqueue t+1's upload+detector, read t's count and enqueue t's pose, then hand
        t−1's result out — so the consumer's work on t−1 overlaps the GPU's work on t and t+1.
        """
        posed = detected = None   # (slot, item)
        counter = 0
        for item in frames:
            work = self._as_work(item, counter)
            counter += 1
            ready = None
            if posed is not None:
                ready = (posed[1], self._collect(posed[0]))
            slot = next(s for s in self.slots if detected is None or s is not detected[0])
            self._enqueue_detect(slot, work)
            if detected is not None:
                self._enqueue_pose(detected[0])
            posed, detected = detected, (slot, item)
            if ready is not None:
                yield ready
        if posed is not None:
            yield posed[1], self._collect(posed[0])
        if detected is not None:
            self._enqueue_pose(detected[0])
            yield detected[1], self._collect(detected[0])

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
        for slot in self.slots:
            slot.close()
        self.slots = []
        self.graphs.close()
        self.kernels.close()
        for engine in self._own_engines:  # engines handed in stay open: they belong to the caller
            if hasattr(engine, "close"):
                engine.close()
        self._own_engines = []

    def __enter__(self) -> GpuPoseEstimator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
