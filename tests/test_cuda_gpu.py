"""GPU checks that need CUDA itself (`pytest -m gpu` on a machine with an NVIDIA GPU; skipped elsewhere): CUDA
graph capture, the whole GPU pipeline on the torch-cuda engine against the CPU pipeline on the shared photos, the
absence of host synchronisation between detector and pose except the count read, the two-slot overlap, interop.

Each kernel against its numpy twin is in tests/test_cuda_kernel_twins.py (and the edge inputs in
tests/test_cuda_edge_inputs.py): they run on the host shim in every CI run and on the GPU with `-m gpu`.

Set RTMW_EDGE_GPU_REPORT=path.json to collect the measured numbers for docs/gpu-validation.md.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from conftest import SHARED
from kernel_devices import CudaDevice, gpu_or_skip, pipelines_agree, real_detector_export

from rtmw_edge import geometry as G
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.cuda import runtime as R
from rtmw_edge.zoo import DET_MEAN_BGR, DET_STD_BGR

pytestmark = pytest.mark.gpu

IMAGES = sorted((SHARED / "images").glob("*.jpg"))
RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
REPORT: dict = {}


def record(key: str, value) -> None:
    REPORT[key] = value
    path = os.environ.get("RTMW_EDGE_GPU_REPORT")
    if path:
        previous = {}
        if os.path.isfile(path):
            with open(path) as f:
                previous = json.load(f)
        with open(path, "w") as f:
            json.dump({**previous, **REPORT}, f, indent=2, default=float)


@pytest.fixture(scope="module")
def gpu():
    dev = CudaDevice()
    record("device", dev.device.describe())
    record("kernel_target", f"{dev.kernels.kind} {dev.kernels.arch}")
    yield dev
    dev.close()


def _images():
    if not IMAGES:
        pytest.skip("shared photos not found")
    return [cv2.imread(str(p)) for p in IMAGES]


# --------------------------------------------------------------------------- CUDA graphs
def test_graph_capture_replays_a_kernel(gpu):
    image = _images()[0]
    h, w = image.shape[:2]
    src, dst = gpu.put(image), gpu.empty(3 * 320 * 320 * 4)
    lb = KK.letterbox_args((h, w), (320, 320))
    args = KK.pack_args("letterbox_bgr_to_nchw", src=src, src_w=w, src_h=h, src_pitch=w * 3, dst=dst, dst_w=320,
                        dst_h=320, new_w=lb["new_w"], new_h=lb["new_h"], scale_x=lb["resize_scale_x"],
                        scale_y=lb["resize_scale_y"], **KK.normalisation(DET_MEAN_BGR, DET_STD_BGR), swap_rb=0,
                        pad_value=114.0, quantize=0)
    cache = R.GraphCache()
    graph = cache.capture("lb", gpu.stream, lambda s: gpu.kernels.launch("letterbox_bgr_to_nchw",
                                                                         KK.letterbox_launch((320, 320)), args, s))
    assert graph is not None and not cache.failed
    graph.launch(gpu.stream)
    first = gpu.get(dst, (1, 3, 320, 320))
    R.memset_async(dst, 0, 3 * 320 * 320 * 4, gpu.stream.handle)
    cache.get("lb").launch(gpu.stream)                         # replay, no capture
    np.testing.assert_array_equal(gpu.get(dst, (1, 3, 320, 320)), first)
    assert cache.captures == 1
    cache.close()


# --------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    gpu_or_skip()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the torch-cuda engine needs a CUDA build of PyTorch")
    if not RAWHEAD.is_file():
        pytest.skip("shared RTMDet raw-head detector not found")
    from rtmw_edge.export import export_onnx

    tmp = tmp_path_factory.mktemp("gpu_models")
    return {"pose": export_onnx("rtmw-m-256x192", tmp / "rtmw-m.onnx", random_init=True, progress=False),
            "pose3d": export_onnx("rtmw3d-l-384x288", tmp / "rtmw3d.onnx", random_init=True, decode=True,
                                  progress=False),
            "det_project": export_onnx("rtmdet-nano-person", tmp / "det.onnx", random_init=True, progress=False),
            "det": real_detector_export(tmp, RAWHEAD)}


def open_gpu(models, pose_key: str = "pose", **options):
    """The CUDA-stream pipeline on the PyTorch engines: the detector is the shared RTMDet-nano's weights as a
    project export (the PyTorch engine runs the model an export was made from, never a foreign graph)."""
    from rtmw_edge.backends.torch_cuda import TorchCudaEngine
    from rtmw_edge.cuda.gpu_pipeline import GpuPoseEstimator

    path, det_model = models["det"]
    return GpuPoseEstimator(path, models[pose_key], backend="torch-cuda",
                            det_engine=TorchCudaEngine(path, model=det_model, device=0), **options)


def _match(cpu_persons, gpu_persons):
    """Pairs by box IoU (the two detectors see ±1 gray level letterboxes: same boxes to a few 1e-3 px)."""
    pairs = []
    for p in cpu_persons:
        ious = [G.box_iou(p.bbox, q.bbox)[0, 0] for q in gpu_persons]
        j = int(np.argmax(ious))
        assert ious[j] > 0.99
        pairs.append((p, gpu_persons[j]))
    return pairs


@pytest.mark.parametrize("pose_key", ["pose", "pose3d"])
def test_gpu_pipeline_equals_the_cpu_pipeline_on_the_shared_photos(models, pose_key):
    from rtmw_edge.pipeline import PoseEstimator

    cpu = PoseEstimator(models["det"][0], models[pose_key])
    gpu = open_gpu(models, pose_key, match_cpu_rounding=True)
    pairs = []
    images = _images()
    streamed = [r for _, r in gpu.stream(images)]
    for image, from_stream in zip(images, streamed):
        want, got = cpu(image), gpu(image)
        assert len(got.persons) == len(want.persons) == len(from_stream.persons)
        assert (got.width, got.height) == (want.width, want.height)
        for a, b in zip(got.persons, from_stream.persons):  # overlapped frames give the same answers
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
        for p, q in _match(want.persons, got.persons):
            pairs.append((p, q))
            if p.keypoints_3d is not None:
                assert q.keypoints_3d is not None and q.keypoints_3d.shape == p.keypoints_3d.shape
    # random weights: median + p95 of the persons' medians (kernel_devices.pipelines_agree, docs/gpu-validation.md)
    record(f"pipeline {pose_key} vs CPU", pipelines_agree(pairs))
    gpu.close()


def test_project_detector_runs_on_the_gpu_path(models):
    from rtmw_edge.cuda.gpu_pipeline import GpuPoseEstimator

    with GpuPoseEstimator(models["det_project"], models["pose"], backend="torch-cuda") as est:
        assert est.det.kind == "project" and est.num_candidates == 1000
        result = est(_images()[0])
        assert result.width == _images()[0].shape[1]


def test_no_host_sync_between_detector_and_pose_except_the_count(models, monkeypatch):
    """Spy on every synchronising runtime call and make PyTorch raise on any synchronising op while frames run:
    per frame exactly two host waits — the person count and the finished results."""
    import torch


    est = open_gpu(models, profile=True)
    images = _images()
    list(est.stream(images))                                 # warm-up (cuDNN autotune, allocator, buffers)
    calls = []
    for cls, name in ((R.Event, "synchronize"), (R.Stream, "synchronize")):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, _o=original, _n=f"{cls.__name__}.{name}":
                            (calls.append((_n, self)), _o(self))[1])
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = list(est.stream(images))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    events = [(n, obj) for n, obj in calls]
    counted = {id(s.counted) for s in est.slots}
    done = {id(s.done) for s in est.slots}
    assert all(n == "Event.synchronize" for n, _ in events)
    assert sum(id(o) in counted for _, o in events) == len(images)
    assert sum(id(o) in done for _, o in events) == len(images)
    assert len(events) == 2 * len(images) and len(results) == len(images)
    timings = est.timings.summary()
    record("stage_ms (rtmw-m, torch-cuda, shared photos)", timings)
    est.close()


def test_two_slots_overlap_frames(models):
    """Frame t+1's upload/detector runs on the other stream while frame t's pose runs (event timestamps)."""

    est = open_gpu(models, profile=True)
    images = _images() * 3
    spans = []
    original = est._collect
    list(est.stream(images[:2]))                             # warm-up
    base = R.Event(timing=True).record(est.slots[0].stream)  # one fixed origin for every timestamp

    def collect(slot):
        result = original(slot)
        m = slot.marks
        spans.append({"slot": slot.index, "det": (base.elapsed_ms(m["start"]), base.elapsed_ms(m["select"])),
                      "pose": (base.elapsed_ms(m["pose_start"]), base.elapsed_ms(m["download"]))
                      if result.persons else None})
        return result

    est._collect = collect
    list(est.stream(images))
    overlaps = 0
    for a, b in zip(spans, spans[1:]):
        if a["pose"] is not None and b["det"][0] < a["pose"][1] and b["det"][1] > a["pose"][0]:
            overlaps += 1
    record("overlap", {"frames": len(spans), "pairs_overlapping": overlaps})
    assert overlaps >= 1
    est.close()


def test_device_frame_interop_with_pytorch(models):
    import torch

    from rtmw_edge.cuda.gpu_pipeline import DeviceFrame

    image = _images()[0]
    with open_gpu(models) as est:
        want = est(image)
        producer = torch.cuda.Stream()
        with torch.cuda.stream(producer):
            frame = torch.from_numpy(image).cuda(non_blocking=False)
        got = est.infer_device(DeviceFrame(frame, image.shape[1], image.shape[0], stream=producer))
        assert len(got.persons) == len(want.persons)
        for a, b in zip(got.persons, want.persons):
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
