"""Many cameras on one GPU with one pose call per tick: the CUDA-stream side of the daemon's camera scheduler.

`GpuCameraBatch(model, cameras)` gives each camera a *lane* — its own CUDA stream, detector execution context,
frame and detector buffers, events — and the batch one pose side: its own stream, pose execution context and
buffers for the persons of every camera. `tick({camera: frame})` runs one scheduler tick:

    lane k (stream k):   upload → letterbox → detector → select → D2H header, boxes, scores → ● counted k
    host:                counted k.synchronize() for every camera of the tick; n_k = header k[0]
    pose stream:         wait(counted k) for every camera → crops of every camera's persons into one batch
                         (person offsets o_k, segments cut at the pose engine's chunk boundaries) → pose engine once
                         per chunk of its max batch → decode → D2H keypoints → ● done
    host:                done.synchronize(); camera k's persons are boxes k[:n_k], keypoints[o_k : o_k + n_k]

The pose call count of a tick is ⌈Σ n_k / max batch⌉ — one when the people fit one batch. Every crop reads its
camera's frame and boxes after the pose stream waited for that camera's `counted` event (recorded after the
select and the copies on the lane's stream), so no lane work races the pose work; the host reads a lane's
header only after `counted`, the keypoints only after `done`. A tick ends with the host waiting for `done`, so the
next tick's uploads never overwrite a frame a crop still reads. Each lane's detector context is bound to its own
stream, the pose context to the pose stream (TensorRT: a context per concurrent stream).

The lanes run the same kernels as `GpuPoseStream` (`enqueue_detect`); results are the raw arrays of each camera
(`CameraArrays`), to be finished by that camera's own stream state (tracker, smoother) — the batch keeps none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import geometry as G
from ..errors import RtmwEdgeError
from . import kernels as KK
from . import runtime as R
from .gpu_pipeline import GpuPoseModel, StreamHolder, camera_args, enqueue_detect, read_count

LANE_MARKS = ("start", "upload", "letterbox", "detector", "select")   # the marks `enqueue_detect` records


@dataclass
class CameraArrays:
    """One camera's persons of a tick, as arrays (best detection first)."""

    boxes: np.ndarray                      # [n, 4] image pixels
    scores: np.ndarray                     # [n]
    keypoints: np.ndarray                  # [n, K, 2] (-1 where the score is <= 0)
    keypoint_scores: np.ndarray            # [n, K]
    keypoints_3d: np.ndarray | None        # [n, K, 3] (RTMW3D) or None
    dropped: int                           # persons cut by max_persons
    frame: int
    timestamp: float
    width: int
    height: int


class _Lane(StreamHolder):
    """One camera's detector side (the frame-slot fields `enqueue_detect` uses, without any pose context)."""

    def __init__(self, batch: GpuCameraBatch, index: int) -> None:
        model = batch.model
        self.index = index
        self.stream = R.Stream()
        self.counted = R.Event(blocking_sync=batch.blocking_sync)
        self.ready = R.Event()
        self.marks: dict = {}
        self.memory = R.DeviceBuffer(batch.lane_plan.total)
        self.ptr = {name: self.memory.ptr + off for name, off in batch.lane_plan.offsets().items()}
        scratch_bytes = KK.align(int(getattr(model.det_engine, "scratch_bytes", 0) or 0))
        self.scratch = R.DeviceBuffer(scratch_bytes) if scratch_bytes else None
        self.det_ctx = model.det_engine.create_context(self.stream.handle,
                                                       scratch=self.scratch.ptr if self.scratch else None)
        m = model.max_persons
        self.marks = {name: R.Event(timing=True) for name in LANE_MARKS} if batch.profile else {}
        self.out = {"header": 0, "boxes": 16, "scores": 16 + 16 * m}
        self.host = R.PinnedBuffer(16 + 20 * m, mapped=model.zero_copy)
        if model.zero_copy:
            self.ptr.update({name: self.host.device_ptr + off for name, off in self.out.items()})
        self.header = self.host.array(np.int32, (4,))
        self.boxes = self.host.array(np.float32, (m, 4), self.out["boxes"])
        self.scores = self.host.array(np.float32, (m,), self.out["scores"])
        self.frame_dev: R.DeviceBuffer | None = None
        self.frame_host: R.PinnedBuffer | None = None
        self.meta: dict = {}
        self.busy = False

    def close(self) -> None:
        self.stream.synchronize()
        if self.det_ctx is not None and hasattr(self.det_ctx, "close"):
            self.det_ctx.close()
        self.det_ctx = None
        for buf in (self.memory, self.scratch, self.frame_dev, self.frame_host, self.host):
            if buf is not None:
                buf.free()
        for ev in (self.counted, self.ready, *self.marks.values()):
            ev.close()
        self.stream.close()


class GpuCameraBatch:
    """`cameras` lanes and one batched pose side over a `GpuPoseModel` (see the module docstring)."""

    def __init__(self, model: GpuPoseModel, cameras: int, *, blocking_sync: bool | None = None,
                 camera_intrinsics: dict | None = None, profile: bool = False) -> None:
        if cameras < 1:
            raise RtmwEdgeError("a camera batch needs at least one camera")
        self.model = model
        R.use_device(model.device.index)
        self.blocking_sync = model.device.integrated if blocking_sync is None else bool(blocking_sync)
        self.cameras = int(cameras)
        self.profile = bool(profile)   # CUDA events per lane stage and around the pose side (`lane_timings`)
        self.intrinsics: dict[int, G.Camera | None] = dict(camera_intrinsics or {})
        k, m = model.num_keypoints, model.max_persons
        pose = model.pose_engine
        # the lanes: detector buffers only (the pose part of a slot plan, for one item, is never used)
        det_outputs = {n: (model.det_engine.output_shape(n, 1), model.det_engine.output_dtype(n))
                       for n in model.det_engine.output_names}
        self.lane_plan = KK.plan_slot(det_input_shape=model.det_engine.input_shape(1), det_outputs=det_outputs,
                                      num_candidates=model.num_candidates, max_persons=m,
                                      pose_input_wh=(1, 1), pose_outputs={}, num_keypoints=1, capacity=1,
                                      has_3d=False)
        # the batch: every camera's persons, chunk by chunk (each chunk 256-byte aligned for TensorRT)
        self.capacity = KK.pose_capacity(self.cameras * m, pose.max_batch, pose.min_batch)
        self.chunk = int(min(pose.max_batch or self.capacity, self.capacity))
        chunks = -(-self.capacity // self.chunk)
        in_w, in_h = model.info.input_size
        items = {"pose_input": 3 * in_w * in_h * 4}
        items.update({f"pose:{n}": int(np.prod(pose.output_shape(n, 1)[1:])) * np.dtype(pose.output_dtype(n)).itemsize
                      for n in pose.output_names})
        self.item_bytes = items
        self.chunk_stride = {name: KK.chunk_stride(self.chunk * b) for name, b in items.items()}
        sizes = {name: chunks * stride for name, stride in self.chunk_stride.items()}
        sizes["params"] = 16 * self.capacity
        self.plan = KK.SlotPlan(sizes)
        self.stream = R.Stream()
        self.done = R.Event(blocking_sync=self.blocking_sync)
        self.marks = {name: R.Event(timing=True) for name in ("pose_start", "pose_end")} if self.profile else {}
        self.memory = R.DeviceBuffer(self.plan.total)
        self.ptr = {name: self.memory.ptr + off for name, off in self.plan.offsets().items()}
        scratch_bytes = KK.align(int(getattr(pose, "scratch_bytes", 0) or 0))
        self.scratch = R.DeviceBuffer(scratch_bytes) if scratch_bytes else None
        self.pose_ctx = pose.create_context(self.stream.handle, scratch=self.scratch.ptr if self.scratch else None)
        # keypoints of every person of a tick: mapped (zero-copy) on an integrated GPU, else device + one copy
        self.kpt_bytes = 12 * self.capacity * k
        self.host = R.PinnedBuffer(self.kpt_bytes * (2 if model.has_3d else 1), mapped=model.zero_copy)
        if model.zero_copy:
            self.out_ptr = self.host.device_ptr
            self.out_dev = None
        else:
            self.out_dev = R.DeviceBuffer(self.kpt_bytes * (2 if model.has_3d else 1))
            self.out_ptr = self.out_dev.ptr
        self.keypoints = self.host.array(np.float32, (self.capacity, k, 3))
        self.keypoints_3d = self.host.array(np.float32, (self.capacity, k, 3), self.kpt_bytes) \
            if model.has_3d else None
        self.lanes = [_Lane(self, i) for i in range(self.cameras)]
        self.pose_batches: list[int] = []        # engine calls of the last tick (their batch sizes)
        self.pose_calls = 0                      # engine calls over all ticks
        self.ticks = 0

    # ------------------------------------------------------------------ one tick
    def tick(self, items: dict[int, object]) -> dict[int, CameraArrays]:
        """Run one tick over the frames given: {camera index: (image, index, timestamp) | DeviceFrame}."""
        if not self.lanes:
            raise RtmwEdgeError("this camera batch is closed")
        unknown = [c for c in items if not 0 <= int(c) < self.cameras]
        if unknown:
            raise RtmwEdgeError(f"camera(s) {unknown} outside 0..{self.cameras - 1}")
        model = self.model
        R.use_device(model.device.index)
        order = sorted(items)
        for cam in order:
            enqueue_detect(model, self.lanes[cam], items[cam], copy_boxes=True)
        counts, offset, offsets = {}, 0, {}
        for cam in order:
            lane = self.lanes[cam]
            lane.counted.synchronize()
            counts[cam] = read_count(model, lane.header)
            offsets[cam] = offset
            offset += counts[cam][0]
        total = offset
        self.pose_batches = []
        if total:
            if self.marks:
                self.marks["pose_start"].record(self.stream)
            self._enqueue_pose(order, counts, offsets, total)
            if self.marks:
                self.marks["pose_end"].record(self.stream)
        self._timed = {cam: counts[cam][0] for cam in order}
        self.done.record(self.stream)
        self.done.synchronize()
        self.ticks += 1
        self.pose_calls += len(self.pose_batches)
        out = {}
        for cam in order:
            lane, (n, all_) = self.lanes[cam], counts[cam]
            o = offsets[cam]
            kpts = self.keypoints[o:o + n].copy()
            k3d = self.keypoints_3d[o:o + n].copy() if self.keypoints_3d is not None else None
            meta = lane.meta
            out[cam] = CameraArrays(lane.boxes[:n].copy(), lane.scores[:n].copy(), kpts[..., :2].copy(),
                                    kpts[..., 2].copy(), k3d, max(0, all_ - n), int(meta["index"]),
                                    float(meta["timestamp"]), int(meta["w"]), int(meta["h"]))
            lane.busy = False
        return out

    def _enqueue_pose(self, order, counts, offsets, total: int) -> None:
        model, s = self.model, self.stream
        info, pose = model.info, model.pose_engine
        in_w, in_h = info.input_size
        k, f32 = model.num_keypoints, np.float32
        if total > self.capacity:
            raise RtmwEdgeError(f"{total} persons in one tick exceed the batch capacity {self.capacity}")
        chunks = KK.batch_chunks(total, pose.max_batch, pose.min_batch)
        for cam in order:                                  # every camera's boxes and frame are ready first
            if counts[cam][0]:
                s.wait(self.lanes[cam].counted)
        # crops: each camera's persons at its offset, cut at chunk boundaries (a chunk starts 256-aligned)
        for cam in order:
            n, lane, o = counts[cam][0], self.lanes[cam], offsets[cam]
            meta, start = lane.meta, 0
            while start < n:
                g = o + start                                  # global person index
                c, within = divmod(g, self.chunk)
                count = min(n - start, self.chunk - within)
                model.kernels.launch("crop_persons_bgr_to_nchw", KK.crop_launch(info.input_size, count), KK.pack_args(
                    "crop_persons_bgr_to_nchw", src=meta["src"], src_w=meta["w"], src_h=meta["h"],
                    src_pitch=meta["pitch"], boxes=lane.ptr["boxes"] + 16 * start, num_persons=count,
                    dst=self.ptr["pose_input"] + c * self.chunk_stride["pose_input"]
                    + within * self.item_bytes["pose_input"], dst_w=in_w, dst_h=in_h,
                    params=self.ptr["params"] + 16 * g, padding=G.BBOX_PADDING, aspect=float(f32(in_w / in_h)),
                    **KK.normalisation(info.mean, info.std), swap_rb=int(info.swap_rb), quantize=model.quantize), s)
                start += count
        # one engine call per chunk, then the decode of that chunk (per camera: its own intrinsics)
        for c, (start, count, batch) in enumerate(chunks):
            base = {name: self.ptr[name] + c * stride for name, stride in self.chunk_stride.items()}
            self.pose_ctx.infer_async({pose.input_name: base["pose_input"]},
                                      {n: base[f"pose:{n}"] for n in pose.output_names}, batch)
            self.pose_batches.append(batch)
            for cam in order:                              # the part of this chunk that is camera cam's
                n, o = counts[cam][0], offsets[cam]
                lo, hi = max(o, start), min(o + n, start + count)
                if lo >= hi:
                    continue
                fx, fy, cx, cy = camera_args(model, self.intrinsics.get(cam), self.lanes[cam].meta)
                common = dict(params=self.ptr["params"] + 16 * lo, num_persons=hi - lo, num_keypoints=k,
                              in_w=float(in_w), in_h=float(in_h), out=self.out_ptr + 12 * k * lo,
                              out3d=self.out_ptr + self.kpt_bytes + 12 * k * lo if model.has_3d else 0,
                              depth_half=float(f32(in_w / 2)), z_range=float(f32(info.z_range or 0.0)),
                              root_z=float(f32(info.root_z or 0.0)), fx=fx, fy=fy, cx=cx, cy=cy)
                within = lo - start

                def at(name: str, _base=base, _within=within) -> int:   # camera cam's first item in this chunk
                    return _base[name] + _within * self.item_bytes[name]
                if info.decoded:
                    model.kernels.launch("decoded_to_image", KK.decoded_launch(hi - lo, k), KK.pack_args(
                        "decoded_to_image", keypoints=at("pose:keypoints"), scores=at("pose:scores"),
                        z=at("pose:z") if model.has_3d else 0, **common), s)
                else:
                    bins = {name: pose.output_shape(name, 1)[2] for name in pose.output_names}
                    model.kernels.launch("simcc_decode_to_image", KK.simcc_decode_launch(hi - lo, k), KK.pack_args(
                        "simcc_decode_to_image", simcc_x=at("pose:simcc_x"), bins_x=bins["simcc_x"],
                        simcc_y=at("pose:simcc_y"), bins_y=bins["simcc_y"],
                        simcc_z=at("pose:simcc_z") if model.has_3d else 0, bins_z=bins.get("simcc_z", 0),
                        split_ratio=float(f32(info.split_ratio)), **common), s)
        if self.out_dev is not None:
            R.copy_dtoh_async(self.host.ptr, self.out_ptr, 12 * k * total, s.handle)
            if model.has_3d:
                R.copy_dtoh_async(self.host.ptr + self.kpt_bytes, self.out_ptr + self.kpt_bytes, 12 * k * total,
                                  s.handle)

    def lane_timings(self, camera: int) -> dict[str, float]:
        """Milliseconds of camera CAMERA's stages in the last tick (profile=True; else {}): its lane's upload,
        letterbox, detector and select, and `pose_segment` — the batched pose side every camera of the tick
        shared (crops, engine calls, decode, copy back) — when the tick had people."""
        if not self.profile or camera not in getattr(self, "_timed", {}):
            return {}
        marks = self.lanes[camera].marks
        chain = LANE_MARKS
        out = {b: marks[a].elapsed_ms(marks[b]) for a, b in zip(chain, chain[1:])}
        if any(self._timed.values()):
            out["pose_segment"] = self.marks["pose_start"].elapsed_ms(self.marks["pose_end"])
        return out

    def close(self) -> None:
        if not self.lanes:
            return
        R.use_device(self.model.device.index)
        for lane in self.lanes:
            lane.close()
        self.lanes = []
        self.stream.synchronize()
        if self.pose_ctx is not None and hasattr(self.pose_ctx, "close"):
            self.pose_ctx.close()
        self.pose_ctx = None
        for buf in (self.memory, self.scratch, self.out_dev, self.host):
            if buf is not None:
                buf.free()
        for ev in (self.done, *self.marks.values()):
            ev.close()
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
